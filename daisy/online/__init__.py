"""Online mode on the host: ``daisy watch`` (follow a scan as it is written, in the pinned image,
with a live page and the run's provenance) and ``daisy simulate`` (write a scan as a detector
would). The in-image side is ``daisy_steps.online``. See ``docs/online.md``."""
