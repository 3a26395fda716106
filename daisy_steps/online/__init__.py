"""Online mode: follow a scan while it is written, inside the same pinned image as the pipelines.

``python3 -m daisy_steps.online xrd|ct --job job.json`` is the long-lived process that
``daisy watch`` starts with ``daisy.images.exec_argv`` (inputs read-only, the watch folder
read-write, the step code at /opt/daisy). It runs the offline pipeline's own step classes on the
frames as they become readable: ``xrd.mask`` + ``xrd.integrate`` (one set-up, then
``Integrate.execute`` on each new batch of frames) and the CT chain ``ct.normalize ->
ct.angles -> ct.minus_log -> ct.stripe -> ct.find_center | ct.recon``, so online results are
those of the offline pipeline for the same frames.

Modules (numpy and h5py at top level only, like every step module; no Step subclasses here):

- ``follow``: which frames of a growing scan are readable now (Eiger master + growing data files,
  an HDF5 stack written frame by frame with SWMR or plain appends, a folder receiving images);
- ``live``: the live record (``live.json``, ``view.json``, ``frames.jsonl``), latency figures, the
  growing NeXus result file (h5py SWMR) and resuming from it;
- ``runner``: job loading, step chains in memory, the job record;
- ``xrd``, ``ct``: the two watchers. See ``docs/online.md``.
"""
