"""X-ray powder diffraction steps (pyfai image): load frames -> mask -> integrate -> save.

A block job chains ``xrd.load_frames -> xrd.mask -> xrd.integrate -> xrd.save_block`` in one
process; ``xrd.gather`` joins the block files of a scan into one NeXus file with previews.
``sample.xrd_eiger`` writes simulated calibrant scans as an Eiger detector would.
See ``docs/xrd-steps.md``.

Data-store keys: ``frames`` (a :class:`~daisy_steps.xrd.frames.FrameSource`, streamed, never
read whole), ``mask`` (uint8 array, 1 = excluded pixel) and ``xrd`` (an
:class:`~daisy_steps.xrd.results.XRDResult`).
"""

FRAMES_KEY = "frames"
MASK_KEY = "mask"
RESULT_KEY = "xrd"
