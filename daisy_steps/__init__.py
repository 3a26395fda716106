"""DAISY analysis steps: the code that runs *inside* the Apptainer images.

Only numpy, h5py, jsonschema and each step's own library (tomopy, pyFAI, ...)
may be imported here: nothing host-only (no snakemake, no spython).

Run a step or a chain of steps with::

    python3 -m daisy_steps <step-name> --job job.json
    python3 -m daisy_steps run --job job.json
"""

__version__ = "0.1.0"
