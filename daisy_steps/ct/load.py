"""ct.load: read a sinogram slab (detector rows) of a raw tomography file into the data store."""

from __future__ import annotations

from ..core import Step
from ..ports import Port
from .layouts import read_slab


class Load(Step):
    """Projections, flats, darks (rows ``row_start:row_stop`` only) and angles of one raw file.

    Input slot ``raw``: the raw HDF5 file (``file.h5`` or ``file.h5:/path/to/projections``, the
    latter overriding ``data_path``). Puts the slab and, if the file has angles, ``theta_file``
    in the store.
    """

    name = "ct.load"
    version = "1.0.0"
    images = ("tomopy", "base", "pyfai")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires: dict[str, Port] = {}
    provides = {
        "proj": Port("ndarray", "projections of the slab, (angles, rows, columns), raw counts"),
        "flat": Port("ndarray", "flat fields of the same rows, (frames, rows, columns)"),
        "dark": Port("ndarray", "dark fields of the same rows, (frames, rows, columns)"),
        "rows": Port("tuple", "(start, stop): the detector rows held, i.e. the sinogram slab"),
        "detector_rows": Port("int", "the detector's total row count"),
        "raw_file": Port("path", "the raw file read (for messages of later steps)"),
        "theta_file": Port("ndarray", "rotation angles read from the raw file, radians float32 "
                                      "(absent when the file has none)", optional=True),
    }

    def execute(self) -> None:
        ref = self.ctx.input("raw")
        params = dict(self.params)
        if ref.dataset and not params["data_path"]:
            params["data_path"] = ref.dataset
        slab = read_slab(ref.path, params)
        for key, value in (("proj", slab.proj), ("flat", slab.flat), ("dark", slab.dark), ("rows", slab.rows),
                           ("detector_rows", slab.detector_rows), ("raw_file", str(ref.path))):
            self.store.put(key, value)
        if slab.theta is not None:
            self.store.put("theta_file", slab.theta)
        else:
            self.store.discard("theta_file")
        self.ctx.results.update(slab.info)
        self.log.info("loaded %s (%s) rows %d:%d: projections %s, flats %s, darks %s, angles %s",
                      ref.path, slab.paths.layout, *slab.rows, slab.proj.shape, slab.flat.shape,
                      slab.dark.shape, "from file" if slab.theta is not None else "absent")
