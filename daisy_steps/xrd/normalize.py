"""Per-frame intensity normalization (step ``xrd.normalize``): incident-flux monitor and exposure time.

pyFAI divides each frame's pattern by its ``normalization_factor``; DAISY computes the factor of
frame *k* as ``monitor[k] / monitor_reference`` (when a monitor is given) times
``exposure[k]`` (when an exposure time is given), so patterns come out in counts per
``monitor_reference`` monitor counts (per second with an exposure time). The monitor comes from a
dataset of the master file or of a side file (input slot ``monitor``: ``file.h5:/dataset``,
``.npy``, or a text file with one value per line or per row's last column), or from each series
file's header (``monitor_header``, e.g. a Pilatus CBF's ``Flux``); the exposure from a dataset
(input slot ``exposure``, a scalar or one value per frame, e.g. an Eiger's
``/entry/instrument/detector/count_time``), a header key or a number. The factors, monitor and
exposure values are put in the data store for ``xrd.integrate`` and end up in the result file
(``/entry/integrate_1d/normalization_factor``, ``monitor``, ``exposure_time``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core import Step
from ..errors import StepError
from ..fileio import FileRef
from ..ports import Port
from . import FRAMES_KEY
from .steps import FRAMES_IN, frame_source

NORM_KEY = "normalization"
NORM_INFO_KEY = "normalization_info"


def read_values(ref: FileRef, what: str) -> np.ndarray:
    """One value per frame (or one scalar) from ``file.h5:/dataset``, ``.npy`` or a text file."""
    import h5py

    path = ref.path
    if not path.is_file():
        raise StepError(f"{what} file {path} does not exist")
    if h5py.is_hdf5(path):
        if not ref.dataset:
            raise StepError(f"{what} {path}: no dataset path given (write it as {path}:/path/to/{what})")
        from ..h5 import get_dataset, open_file

        with open_file(path) as handle:
            values = np.asarray(get_dataset(handle, ref.dataset, path)[()])
    elif path.suffix == ".npy":
        values = np.load(path)
    else:
        try:
            table = np.loadtxt(path, ndmin=2, comments="#")
        except ValueError as exc:
            raise StepError(f"{what} file {path}: not a table of numbers ({exc})") from None
        values = table[:, -1]
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise StepError(f"{what} {ref}: holds no values")
    return values


def per_frame(values: np.ndarray, source, ref: str, what: str) -> np.ndarray:
    """The values of the source's frames ``start:stop`` (a scalar applies to every frame)."""
    if values.size == 1:
        return np.full(len(source), float(values[0]))
    if values.size < source.stop:
        raise StepError(f"{what} {ref} holds {values.size} values, but the scan has frames up to {source.stop - 1} "
                        f"({source.n_total} frames): one value per frame is needed")
    if values.size != source.n_total:
        raise StepError(f"{what} {ref} holds {values.size} values, but the scan has {source.n_total} frames")
    return values[source.start:source.stop].copy()


def series_header(source, key: str) -> np.ndarray:
    from .series import SeriesSource, header_values

    if not isinstance(source, SeriesSource):
        raise StepError(f"header '{key}': only a file series has per-frame headers; {source.label} is a "
                        f"{source.kind} source (give a dataset or a side file instead)")
    return header_values([Path(f) for f in source.files], key)


class Normalize(Step):
    """Per-frame normalization factors from a monitor and/or the exposure time."""

    name = "xrd.normalize"
    version = "1.0.0"
    images = ("pyfai",)  # fabio (series headers)
    libraries = ("numpy", "h5py", "fabio")
    requires = {FRAMES_KEY: FRAMES_IN}
    provides = {NORM_KEY: Port("ndarray", "per-frame normalization factor (float64, the block's frames): pyFAI "
                                          "divides each pattern by it"),
                NORM_INFO_KEY: Port("dict", "where the factors came from (monitor, reference, exposure) and their "
                                            "per-frame monitor and exposure values")}

    def execute(self) -> None:
        p = self.params
        source = frame_source(self.store)
        n = len(source)
        factor = np.ones(n, np.float64)
        info: dict[str, Any] = {"monitor": None, "monitor_reference": p["monitor_reference"], "exposure": None}
        arrays: dict[str, np.ndarray] = {}
        if self.ctx.has_input("monitor") or p["monitor_header"]:
            if self.ctx.has_input("monitor"):
                ref = self.ctx.input("monitor")
                monitor = per_frame(read_values(ref, "monitor"), source, str(ref), "monitor")
                info["monitor"] = str(ref)
            else:
                monitor = series_header(source, p["monitor_header"])
                info["monitor"] = f"header:{p['monitor_header']}"
            arrays["monitor"] = monitor
            factor *= monitor / p["monitor_reference"]
        if self.ctx.has_input("exposure") or p["exposure_header"] or p["exposure_seconds"] is not None:
            if self.ctx.has_input("exposure"):
                ref = self.ctx.input("exposure")
                exposure = per_frame(read_values(ref, "exposure"), source, str(ref), "exposure")
                info["exposure"] = str(ref)
            elif p["exposure_header"]:
                exposure = series_header(source, p["exposure_header"])
                info["exposure"] = f"header:{p['exposure_header']}"
            else:
                exposure = np.full(n, float(p["exposure_seconds"]))
                info["exposure"] = f"{p['exposure_seconds']} s"
            arrays["exposure_time"] = exposure
            factor *= exposure
        bad = np.flatnonzero(~np.isfinite(factor) | (factor <= 0))
        if bad.size:
            k = int(bad[0])
            raise StepError(f"normalization factor of frame {source.start + k} is {factor[k]:g} "
                            f"(monitor {info['monitor']}, exposure {info['exposure']}): it must be a positive number"
                            + (f"; {bad.size} frames are affected" if bad.size > 1 else ""))
        info["arrays"] = arrays
        self.store.put(NORM_KEY, factor)
        self.store.put(NORM_INFO_KEY, info)
        self.ctx.results.update({"monitor": info["monitor"], "exposure": info["exposure"],
                                 "monitor_reference": p["monitor_reference"],
                                 "factor_min": float(factor.min()), "factor_max": float(factor.max())})
        self.log.info("normalization: factors %.6g..%.6g (monitor %s, exposure %s)", factor.min(), factor.max(),
                      info["monitor"], info["exposure"])
