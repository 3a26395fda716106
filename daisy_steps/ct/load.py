"""ct.load and ct.load_processed: read a sinogram slab (detector rows) of a tomography file into
the data store, at its processing stage.

Two steps, so that their ports say exactly what each provides: ``ct.load`` reads raw counts with
their flats and darks (for ct.normalize); ``ct.load_processed`` reads projections that are
already transmission (``normalized``: ct.minus_log follows) or line integrals (``attenuation``:
neither ct.normalize nor ct.minus_log follows) and provides no flats or darks, so a chain that
puts ct.normalize after it is refused before any data is read.
"""

from __future__ import annotations

from ..core import Step
from ..errors import StepError
from ..ports import Port
from .layouts import check_values, read_slab

_COMMON = {
    "rows": Port("tuple", "(start, stop): the detector rows held, i.e. the sinogram slab"),
    "detector_rows": Port("int", "the detector's total row count"),
    "raw_file": Port("path", "the file read (for messages of later steps)"),
    "theta_file": Port("ndarray", "rotation angles read from the file, radians float32 "
                                  "(absent when the file has none)", optional=True),
}


class Load(Step):
    """Projections, flats, darks (rows ``row_start:row_stop`` only) and angles of one raw file.

    Input slot ``raw``: the raw HDF5 file (``file.h5`` or ``file.h5:/path/to/projections``, the
    latter overriding ``data_path``). Puts the slab and, if the file has angles, ``theta_file``
    in the store.
    """

    name = "ct.load"
    version = "1.2.0"
    images = ("tomopy", "base", "pyfai")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires: dict[str, Port] = {}
    provides = {
        "proj": Port("ndarray", "projections of the slab, (angles, rows, columns), raw counts (float32 when "
                                "the file's integer type fits it exactly: uint8/16, int8/16)"),
        "raw_dtype": Port("str", "the file's type of the projections (integer counts need no finiteness check)"),
        "flat": Port("ndarray", "flat fields of the same rows, (frames, rows, columns)"),
        "dark": Port("ndarray", "dark fields of the same rows, (frames, rows, columns)"),
        **_COMMON,
    }
    stage = "raw"

    def execute(self) -> None:
        ref = self.ctx.input("raw")
        params = dict(self.params)
        stage = params.pop("stage", self.stage)
        if ref.dataset and not params["data_path"]:
            params["data_path"] = ref.dataset
        slab = read_slab(ref.path, params, stage=stage)
        check_values(slab.proj, stage, f"{ref.path} rows {slab.rows[0]}:{slab.rows[1]}")
        self.store.put("proj", slab.proj)
        if stage == "raw":
            self.store.put("flat", slab.flat)
            self.store.put("dark", slab.dark)
            self.store.put("raw_dtype", slab.info["dtype"])
        # a ct.split_rows file names the scan it came from: messages name that scan
        raw_file = slab.info.get("rows_of", str(ref.path))
        for key, value in (("rows", slab.rows), ("detector_rows", slab.detector_rows), ("raw_file", raw_file)):
            self.store.put(key, value)
        if slab.theta is not None:
            self.store.put("theta_file", slab.theta)
        else:
            self.store.discard("theta_file")
        self.ctx.results.update(slab.info)
        self.log.info("loaded %s (%s, stage %s) rows %d:%d: projections %s, flats %s, darks %s, angles %s",
                      ref.path, slab.paths.layout, stage, *slab.rows, slab.proj.shape, slab.flat.shape,
                      slab.dark.shape, "from file" if slab.theta is not None else "absent")


class LoadProcessed(Load):
    """Projections already flat-field corrected (``stage`` normalized: transmission in (0, 1])
    or already line integrals (``stage`` attenuation), rows ``row_start:row_stop`` only, and
    their angles; no flats or darks. Reads the raw layouts (flats and darks ignored) and DAISY
    stage files (``save.stages``: sinogram order, layout ``stage``). Values that contradict the
    stage (integer counts; transmission far above 1 for normalized) are refused by name.

    Input slot ``raw``: the file (``file.h5`` or ``file.h5:/path/to/projections``).
    """

    name = "ct.load_processed"
    version = "1.0.0"
    images = ("tomopy", "base", "pyfai")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py", "hdf5plugin")
    requires: dict[str, Port] = {}
    consumes: tuple[str, ...] = ()
    provides = {
        "proj": Port("ndarray", "projections of the slab, (angles, rows, columns) float32: transmission "
                                "(stage normalized) or line integrals (stage attenuation)"),
        **_COMMON,
    }

    def execute(self) -> None:
        if self.params["stage"] not in ("normalized", "attenuation"):
            raise StepError(f"{self.name}: stage {self.params['stage']!r} is not normalized or attenuation")
        super().execute()
