"""ct.load: read a sinogram slab (detector rows) of a raw tomography file into the data store."""

from __future__ import annotations

from ..core import Step
from .layouts import read_slab


class Load(Step):
    """Projections, flats, darks (rows ``row_start:row_stop`` only) and angles of one raw file.

    Input slot ``raw``: the raw HDF5 file (``file.h5`` or ``file.h5:/path/to/projections``, the
    latter overriding ``data_path``). Puts ``proj``, ``flat``, ``dark``, ``rows``,
    ``detector_rows`` and, if the file has angles, ``theta_file`` (radians) in the store.
    """

    name = "ct.load"
    version = "1.0.0"
    image = "tomopy"
    libraries = ("numpy", "h5py", "hdf5plugin")

    def execute(self) -> None:
        ref = self.ctx.input("raw")
        params = dict(self.params)
        if ref.dataset and not params["data_path"]:
            params["data_path"] = ref.dataset
        slab = read_slab(ref.path, params)
        self.store.update(proj=slab.proj, flat=slab.flat, dark=slab.dark, rows=slab.rows,
                          detector_rows=slab.detector_rows, raw_file=str(ref.path))
        if slab.theta is not None:
            self.store["theta_file"] = slab.theta
        else:
            self.store.pop("theta_file", None)
        self.ctx.extra.update(slab.info)
        self.log.info("loaded %s (%s) rows %d:%d: projections %s, flats %s, darks %s, angles %s",
                      ref.path, slab.paths.layout, *slab.rows, slab.proj.shape, slab.flat.shape,
                      slab.dark.shape, "from file" if slab.theta is not None else "absent")
