#!/usr/bin/env python3
"""tests/reference/direct_tomopy.py with its volume written gzip level 4 + shuffle in slice chunks, as DAISY's
ct.save_slab does by default: the same script, h5py's create_dataset given those options."""

import runpy
import sys
from pathlib import Path

import h5py

_create = h5py.Group.create_dataset


def create_dataset(self, name, *args, **kwargs):
    kwargs.update(compression="gzip", compression_opts=4, shuffle=True)
    return _create(self, name, *args, **kwargs)


h5py.Group.create_dataset = create_dataset
script = Path(__file__).resolve().parents[1] / "tests" / "reference" / "direct_tomopy.py"
sys.argv[0] = str(script)
runpy.run_path(str(script), run_name="__main__")
