"""X-ray powder diffraction steps (pyfai image): load frames -> mask -> integrate -> save.

A block job chains ``xrd.load_frames -> xrd.mask -> xrd.integrate -> xrd.save_block`` in one
process; ``xrd.gather`` joins the block files of a scan into one NeXus file with previews.
``sample.xrd_eiger`` writes simulated calibrant scans as an Eiger detector would.
See ``docs/xrd-steps.md``.

The data-store keys each step reads and writes (``frames``, ``mask``, ``xrd``) are declared on
its class (``requires``, ``provides``) and listed in ``docs/steps.md``.
"""

FRAMES_KEY = "frames"
MASK_KEY = "mask"
RESULT_KEY = "xrd"
