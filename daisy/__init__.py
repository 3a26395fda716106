"""DAISY host-side tooling: command line, containers, workflow glue, provenance, archive.

What runs inside the images is the separate package ``daisy_steps``.
"""

__version__ = "0.1.0"
