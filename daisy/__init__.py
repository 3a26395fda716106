"""DAISY host-side tooling: command line, the run plan, images, Snakemake glue, provenance.

What runs inside the images is the separate package ``daisy_steps``.
"""

__version__ = "0.1.0"
