"""Generic HDF5 load and save steps (numpy, h5py, hdf5plugin: every image)."""

from __future__ import annotations

import numpy as np

from .core import Step
from .errors import StepError
from .h5 import open_dataset, write_array
from .ports import ALL_IMAGES, Port


class LoadHDF5(Step):
    """Read one dataset (or a slice of its first axis) into the data store. Input slot
    ``source`` (``file.h5:/dataset``)."""

    name = "hdf5.load"
    version = "1.0.0"
    images = ALL_IMAGES
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires: dict[str, Port] = {}
    provides = {"{key}": Port("ndarray", "the dataset's rows start:stop, under the key named by parameter 'key'")}

    def execute(self) -> None:
        ref = self.ctx.input("source")
        start, stop = self.params["start"], self.params["stop"]
        with open_dataset(ref) as dset:
            stop = dset.shape[0] if stop is None else stop
            if not 0 <= start < stop <= dset.shape[0]:
                raise StepError(f"{ref}: rows {start}:{stop} outside the first axis of length {dset.shape[0]}")
            self.store.put(self.params["key"], np.asarray(dset[start:stop]))
        self.log.info("loaded %s rows %d:%d", ref, start, stop)


class SaveHDF5(Step):
    """Write one array of the data store to an HDF5 dataset (chunked, compressed). Output slot
    ``target`` (``file.h5:/dataset``)."""

    name = "hdf5.save"
    version = "1.0.0"
    images = ALL_IMAGES
    libraries = ("numpy", "h5py")
    requires = {"{key}": Port("ndarray", "the array to write, under the key named by parameter 'key'")}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        data = self.store.require(self.params["key"])
        ref = self.ctx.output("target")
        write_array(ref, np.asarray(data), compression=self.params["compression"])
        self.log.info("wrote %s %s %s", self.ctx.final_output("target"), data.shape, data.dtype)
