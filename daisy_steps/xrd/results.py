"""Integration results in memory and in NeXus/HDF5 files (block files and gathered scans).

File layout (block and gathered files alike)::

    /entry                      NXentry, default=integrate_1d
      integrate_1d              NXdata  intensity[frame, radial] (+ intensity_errors),
                                        frame, two_theta (deg) | q (1/nm)
      integrate_2d              NXdata  intensity[frame, chi, radial] (+ intensity_errors),
                                        frame, chi (deg), two_theta | q      (when computed)
      process                   NXprocess program=pyFAI, version
        parameters              NXparameters  poni (text), wavelength (angstrom),
                                              fit2d/* (with units), geometry, integration (JSON)
        mask                    uint8 [rows, cols], 1 = pixel excluded
      input                     NXcollection  source (JSON list, one entry per block)
      process_NN_<step>         NXprocess  gathered files only: one per step that made the
                                           data, in chain order, and xrd.gather's own
                                           (daisy_steps/nxprocess.py)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ..errors import StepError
from ..h5 import compression_options, nx_group

UNITS = {
    "2th_deg": ("two_theta", "deg", "2θ"),
    "q_nm^-1": ("q", "1/nm", "q"),
}
FIT2D_UNITS = {"directDist": "mm", "centerX": "pixel", "centerY": "pixel", "tilt": "deg",
               "tiltPlanRotation": "deg", "pixelX": "um", "pixelY": "um"}


@dataclass
class XRDResult:
    """Integrated frames of one block (frames in order)."""

    frames: np.ndarray
    unit: str
    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None = None
    radial_2d: np.ndarray | None = None
    chi: np.ndarray | None = None
    cake: np.ndarray | None = None
    sigma_2d: np.ndarray | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    #: per-frame values kept beside the patterns (/entry/integrate_1d/<name>): normalization
    #: factor, monitor, exposure time (absent for runs without normalization)
    frame_arrays: dict[str, np.ndarray] = field(default_factory=dict)


#: units and meaning of the per-frame values of XRDResult.frame_arrays
FRAME_ARRAYS = {
    "normalization_factor": ("", "normalization factor pyFAI divided the frame's pattern by"),
    "monitor": ("counts", "incident-flux monitor counts of the frame"),
    "exposure_time": ("s", "exposure time of the frame"),
}


def mask_digest(mask: np.ndarray | None) -> str:
    if mask is None:
        return "none"
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ResultWriter:
    """Create the NeXus layout for ``n_frames`` frames, then fill it slab by slab."""

    def __init__(self, handle: h5py.File, n_frames: int, *, unit: str, radial, radial_2d=None, chi=None,
                 sigma: bool, sigma_2d: bool, geometry: dict, settings: dict, sources: list,
                 mask: np.ndarray | None, compression: str = "gzip") -> None:
        if unit not in UNITS:
            raise StepError(f"unknown radial unit {unit}")
        rad_name, rad_units, rad_label = UNITS[unit]
        comp = compression_options(compression)
        entry = nx_group(handle, "entry", "NXentry")
        entry.attrs["default"] = "integrate_1d"
        self.handle, self.n = handle, n_frames

        def axis(group, name, values, units, label, dtype=np.float64):
            dset = group.create_dataset(name, data=np.asarray(values, dtype=dtype))
            if units:
                dset.attrs["units"] = units
            dset.attrs["long_name"] = f"{label} ({units})" if units else label
            return dset

        npt = len(radial)
        g1 = nx_group(entry, "integrate_1d", "NXdata")
        g1.attrs.update({"signal": "intensity", "axes": ["frame", rad_name], "frame_indices": 0,
                         f"{rad_name}_indices": 1, "pyfai_unit": unit})
        self.frame1 = g1.create_dataset("frame", shape=(n_frames,), dtype=np.int64)
        self.frame1.attrs["long_name"] = "frame index in the scan (0-based)"
        axis(g1, rad_name, radial, rad_units, rad_label)
        chunk1 = (max(1, min(n_frames, max(1, (1 << 20) // (4 * npt)))), npt)
        self.i1 = g1.create_dataset("intensity", shape=(n_frames, npt), dtype=np.float32, chunks=chunk1, **comp)
        self.i1.attrs.update({"units": "counts", "long_name": "intensity (solid-angle corrected counts)",
                              "interpretation": "spectrum"})
        self.s1 = None
        if sigma:
            self.s1 = g1.create_dataset("intensity_errors", shape=(n_frames, npt), dtype=np.float32,
                                        chunks=chunk1, **comp)
            self.s1.attrs.update({"units": "counts", "long_name": "standard deviation of intensity"})
        self.frame2 = self.i2 = self.s2 = None
        if radial_2d is not None:
            g2 = nx_group(entry, "integrate_2d", "NXdata")
            g2.attrs.update({"signal": "intensity", "axes": ["frame", "chi", rad_name], "frame_indices": 0,
                             "chi_indices": 1, f"{rad_name}_indices": 2, "pyfai_unit": unit})
            self.frame2 = g2.create_dataset("frame", shape=(n_frames,), dtype=np.int64)
            self.frame2.attrs["long_name"] = "frame index in the scan (0-based)"
            axis(g2, "chi", chi, "deg", "χ (azimuthal angle)")
            axis(g2, rad_name, radial_2d, rad_units, rad_label)
            shape = (n_frames, len(chi), len(radial_2d))
            self.i2 = g2.create_dataset("intensity", shape=shape, dtype=np.float32, chunks=(1,) + shape[1:], **comp)
            self.i2.attrs.update({"units": "counts", "long_name": "intensity (solid-angle corrected counts)",
                                  "interpretation": "image"})
            if sigma_2d:
                self.s2 = g2.create_dataset("intensity_errors", shape=shape, dtype=np.float32,
                                            chunks=(1,) + shape[1:], **comp)
                self.s2.attrs.update({"units": "counts", "long_name": "standard deviation of intensity"})
        proc = nx_group(entry, "process", "NXprocess")
        proc.create_dataset("program", data="pyFAI")
        proc.create_dataset("version", data=str(settings.get("pyfai_version", "unknown")))
        proc.create_dataset("sequence_index", data=1)
        params = nx_group(proc, "parameters", "NXparameters")
        params.create_dataset("poni", data=geometry.get("poni", ""))
        params["poni"].attrs["description"] = "pyFAI PONI geometry used (comment lines removed)"
        wl = params.create_dataset("wavelength", data=float(geometry["wavelength_angstrom"]))
        wl.attrs["units"] = "angstrom"
        f2d = nx_group(params, "fit2d", "NXcollection")
        for key, value in geometry.get("fit2d", {}).items():
            f2d.create_dataset(key, data=float(value)).attrs["units"] = FIT2D_UNITS[key]
        params.create_dataset("geometry", data=json.dumps(geometry, sort_keys=True))
        params.create_dataset("integration", data=json.dumps(settings, sort_keys=True))
        params.create_dataset("method", data=str(settings.get("method_used_1d", "")))
        if settings.get("method_used_2d"):
            params.create_dataset("method_2d", data=str(settings["method_used_2d"]))
        if mask is not None:
            m = proc.create_dataset("mask", data=np.asarray(mask, dtype=np.uint8),
                                    chunks=True, compression="gzip", compression_opts=4)
            m.attrs["long_name"] = "combined mask used (1 = pixel excluded)"
        proc.attrs["mask_sha256"] = mask_digest(mask)
        inp = nx_group(entry, "input", "NXcollection")
        inp.create_dataset("source", data=json.dumps(sources, sort_keys=True))

    def write(self, offset: int, frames, intensity, sigma=None, cake=None, sigma_2d=None,
              extras: dict[str, np.ndarray] | None = None) -> None:
        n = len(frames)
        sl = slice(offset, offset + n)
        for name, values in (extras or {}).items():  # per-frame values, created at their first write
            g1 = self.handle["/entry/integrate_1d"]
            if name not in g1:
                units, doc = FRAME_ARRAYS.get(name, ("", name))
                dset = g1.create_dataset(name, shape=(self.n,), dtype=np.float64)
                dset.attrs["long_name"] = doc
                if units:
                    dset.attrs["units"] = units
            g1[name][sl] = values
        self.frame1[sl] = frames
        self.i1[sl] = intensity
        if self.s1 is not None:
            self.s1[sl] = sigma
        if self.i2 is not None and cake is not None:
            self.frame2[sl] = frames
            for i in range(n):  # one frame (chunk) at a time
                self.i2[offset + i] = cake[i]
                if self.s2 is not None:
                    self.s2[offset + i] = sigma_2d[i]


def write_result(path, result: XRDResult, compression: str = "gzip") -> None:
    with h5py.File(path, "w") as handle:
        writer = ResultWriter(
            handle, len(result.frames), unit=result.unit, radial=result.radial, radial_2d=result.radial_2d,
            chi=result.chi, sigma=result.sigma is not None, sigma_2d=result.sigma_2d is not None,
            geometry=result.geometry, settings=result.settings, sources=[result.source], mask=result.mask,
            compression=compression)
        writer.write(0, result.frames, result.intensity, result.sigma, result.cake, result.sigma_2d,
                     extras=result.frame_arrays)


class ResultFile:
    """Read access to a block or gathered result file, with clear errors."""

    def __init__(self, path) -> None:
        from ..h5 import open_file

        self.path = path
        self._cm = open_file(path)
        self.handle = self._cm.__enter__()
        h = self.handle
        if not isinstance(h.get("/entry/integrate_1d/intensity"), h5py.Dataset):
            self.close()
            raise StepError(f"{path}: not an XRD result file (no /entry/integrate_1d/intensity)")
        g1 = h["/entry/integrate_1d"]
        self.unit = _str(g1.attrs["pyfai_unit"])
        self.rad_name = UNITS[self.unit][0]
        self.frames = np.asarray(g1["frame"][()])
        self.radial = np.asarray(g1[self.rad_name][()])
        self.g2 = h.get("/entry/integrate_2d")
        self.radial_2d = None if self.g2 is None else np.asarray(self.g2[self.rad_name][()])
        self.chi = None if self.g2 is None else np.asarray(self.g2["chi"][()])
        params = h["/entry/process/parameters"]
        self.geometry = json.loads(_str(params["geometry"][()]))
        self.settings = json.loads(_str(params["integration"][()]))
        self.mask_sha256 = _str(h["/entry/process"].attrs["mask_sha256"])
        self.sources = json.loads(_str(h["/entry/input/source"][()]))
        self.has_sigma = "intensity_errors" in g1
        self.has_sigma_2d = self.g2 is not None and "intensity_errors" in self.g2

    def frame_arrays(self) -> dict[str, np.ndarray]:
        """The per-frame values beside the patterns (normalization factor, monitor, exposure)."""
        g1 = self.handle["/entry/integrate_1d"]
        return {name: np.asarray(g1[name][()]) for name in FRAME_ARRAYS if name in g1}

    def mask(self):
        m = self.handle.get("/entry/process/mask")
        return None if m is None else np.asarray(m[()])

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
