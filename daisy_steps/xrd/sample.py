"""Simulated calibrant scans written as an Eiger detector writes them (step ``sample.xrd_eiger``).

Rings come from pyFAI's own calibrants (``Calibrant.fake_calibration_image``) on an Eiger 4M
(2167 x 2070 pixels of 75 µm, module gaps from ``pyFAI.detector_factory("Eiger4M")``),
optionally binned for fast tests; each frame gets Poisson noise from a seed fixed per frame.

Layouts:

* ``eiger``: ``scan_NNNNN_master.h5`` (NeXus /entry/instrument/detector/..., pixel_mask with
  DECTRIS bits, /entry/instrument/beam/incident_wavelength) whose /entry/data/data_000001, ...
  are external links to ``scan_NNNNN_data_000001.h5:/entry/data/data`` (bitshuffle/LZ4),
  ``frames_per_file`` frames each. Gap pixels hold the dtype's maximum, as on the detector.
* ``stack``: one HDF5 file with /entry/data/data and no mask (use the ``user_mask`` output).

With ``monitor_counts``, /entry/control/data (NXmonitor) holds each frame's incident-flux counts,
``monitor_counts`` times the frame's drift scale: monitor-normalized patterns are flat over the scan.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..core import Step
from ..errors import StepError
from ..h5 import compression_options
from ..ports import Port

EIGER4M_SHAPE = (2167, 2070)
PIXEL_UM = 75.0
# DECTRIS pixel_mask bits
GAP, DEAD, HOT = 1, 2, 8


def _nx(group, cls):
    group.attrs["NX_class"] = cls
    return group


def _value(group, name, value, units=None):
    dset = group.create_dataset(name, data=value)
    if units:
        dset.attrs["units"] = units
    return dset


def eiger_mask(binning: int) -> np.ndarray:
    """Module-gap mask (True = gap) of the Eiger 4M, binned (a binned pixel touching a gap is a gap)."""
    import pyFAI

    gaps = np.asarray(pyFAI.detector_factory("Eiger4M").mask, dtype=bool)
    if binning == 1:
        return gaps
    rows, cols = gaps.shape[0] // binning, gaps.shape[1] // binning
    gaps = gaps[:rows * binning, :cols * binning]
    return gaps.reshape(rows, binning, cols, binning).any(axis=(1, 3))


def integrator(geometry: dict, binning: int, shape):
    """The true geometry of the simulation for the (binned) detector."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    f = geometry["fit2d"]
    pixel_x, pixel_y = f["pixelX"] * binning, f["pixelY"] * binning
    det = Detector(pixel1=pixel_y * 1e-6, pixel2=pixel_x * 1e-6, max_shape=tuple(shape))
    ai = AzimuthalIntegrator(detector=det)
    ai.setFit2D(f["directDist"], f["centerX"] / binning, f["centerY"] / binning, tilt=f["tilt"],
                tiltPlanRotation=f["tiltPlanRotation"], pixelX=pixel_x, pixelY=pixel_y,
                wavelength=geometry["wavelength_angstrom"])
    return ai


class SampleXRDEiger(Step):
    """Write a simulated calibrant scan (CeO2, LaB6, ...) as Eiger master + data files or a stack."""

    name = "sample.xrd_eiger"
    version = "1.0.0"
    images = ("pyfai",)
    libraries = ("numpy", "h5py", "hdf5plugin", "pyFAI")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}

    def initialize(self) -> None:
        p = self.params
        final = Path(self.ctx.final_output("scan").path)
        if p["layout"] == "eiger" and not final.name.endswith("_master.h5"):
            raise StepError(f"output scan {final}: an Eiger master file's name must end in _master.h5 "
                            f"(its data files are named <prefix>_data_000001.h5 beside it)")

    def execute(self) -> None:
        import pyFAI.calibrant

        p = self.params
        b = p["binning"]
        gaps = eiger_mask(b)
        shape = gaps.shape
        ai = integrator(p["geometry"], b, shape)
        calibrant = pyFAI.calibrant.get_calibrant(p["calibrant"])
        calibrant.wavelength = ai.wavelength
        ideal = calibrant.fake_calibration_image(ai, Imax=p["peak_counts"], Imin=p["background_counts"],
                                                 resolution=p["fwhm_deg"])
        dtype = np.dtype(p["dtype"])
        top = np.iinfo(dtype).max
        # a few dead and hot pixels, flagged in the pixel mask like the detector does
        rng = np.random.default_rng([p["seed"], 1 << 30])
        pixel_mask = np.where(gaps, GAP, 0).astype(np.uint32)
        free = np.flatnonzero(~gaps)
        picks = rng.choice(free, size=2 * p["bad_pixels"], replace=False)
        dead, hot = picks[:p["bad_pixels"]], picks[p["bad_pixels"]:]
        pixel_mask.flat[dead] |= DEAD
        pixel_mask.flat[hot] |= HOT
        n = p["n_frames"]

        def scale_of(k: int) -> float:
            return 1.0 + (p["drift"] * (k / (n - 1) - 0.5) if n > 1 else 0.0)

        def frame(k: int) -> np.ndarray:
            scale = scale_of(k)
            counts = np.random.default_rng([p["seed"], k]).poisson(ideal * scale)
            counts = np.minimum(counts, top - 1).astype(dtype)
            counts[gaps] = top
            counts.flat[dead] = 0
            counts.flat[hot] = min(top - 1, 60000)
            return counts

        comp = compression_options(p["compression"])
        master = self.ctx.output("scan").path
        final = Path(self.ctx.final_output("scan").path)
        files = []
        if p["layout"] == "eiger":
            prefix = final.name[: -len("_master.h5")]
            per = p["frames_per_file"]
            n_files = -(-n // per)
            for i in range(n_files):
                name = f"{prefix}_data_{i + 1:06d}.h5"
                lo, hi = i * per, min(n, (i + 1) * per)
                with h5py.File(self.ctx.extra_output(final.parent / name), "w") as handle:
                    entry = _nx(handle.create_group("entry"), "NXentry")
                    data = _nx(entry.create_group("data"), "NXdata")
                    dset = data.create_dataset("data", shape=(hi - lo,) + shape, dtype=dtype,
                                               chunks=(1,) + shape, **comp)
                    dset.attrs.update({"image_nr_low": lo + 1, "image_nr_high": hi})
                    for k in range(lo, hi):
                        dset[k - lo] = frame(k)
                files.append(name)
            with h5py.File(master, "w") as handle:
                self._write_master(handle, p, ai, shape, pixel_mask, files, dtype)
        else:
            with h5py.File(master, "w") as handle:
                entry = _nx(handle.create_group("entry"), "NXentry")
                data = _nx(entry.create_group("data"), "NXdata")
                data.attrs["signal"] = "data"
                dset = data.create_dataset("data", shape=(n,) + shape, dtype=dtype, chunks=(1,) + shape, **comp)
                for k in range(n):
                    dset[k] = frame(k)
                _nx(entry.create_group("sample"), "NXsample").create_dataset("name", data=p["calibrant"])
        if p["monitor_counts"] is not None:  # the incident flux that made the drift: NXmonitor per frame
            with h5py.File(master, "a") as handle:
                control = _nx(handle["entry"].require_group("control"), "NXmonitor")
                _value(control, "mode", "monitor")
                _value(control, "data", np.array([p["monitor_counts"] * scale_of(k) for k in range(n)]), "counts")
        if self.ctx.has_output("poni"):
            from .geometry import poni_text

            Path(self.ctx.output("poni").path).write_text(poni_text(ai))
        if self.ctx.has_output("user_mask"):
            ref = self.ctx.output("user_mask")
            with h5py.File(ref.path, "w") as handle:
                dset = handle.create_dataset(ref.dataset or "/mask", data=(pixel_mask != 0).astype(np.uint8),
                                             chunks=True, compression="gzip")
                dset.attrs["long_name"] = "1 = pixel excluded (module gaps, dead and hot pixels)"
        tth = np.degrees(calibrant.get_2th())
        self.ctx.results.update({
            "shape": list(shape), "frames": n, "data_files": files, "calibrant": p["calibrant"],
            "masked_pixels": int((pixel_mask != 0).sum()),
            "calibrant_2theta_deg_first": [round(float(t), 5) for t in tth[:6]],
        })
        self.log.info("wrote %s: %d frames %s of %s", final, n, shape, p["calibrant"])

    @staticmethod
    def _write_master(handle, p, ai, shape, pixel_mask, files, dtype) -> None:
        f2d = ai.getFit2D()
        entry = _nx(handle.create_group("entry"), "NXentry")
        entry.attrs["default"] = "data"
        data = _nx(entry.create_group("data"), "NXdata")
        for i, name in enumerate(files):
            data[f"data_{i + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        inst = _nx(entry.create_group("instrument"), "NXinstrument")
        beam = _nx(inst.create_group("beam"), "NXbeam")
        _value(beam, "incident_wavelength", float(p["geometry"]["wavelength_angstrom"]), "angstrom")
        det = _nx(inst.create_group("detector"), "NXdetector")
        _value(det, "description", "Dectris EIGER 4M (simulated by DAISY sample.xrd_eiger)")
        _value(det, "detector_distance", float(f2d.directDist) * 1e-3, "m")
        _value(det, "x_pixel_size", float(f2d.pixelX) * 1e-6, "m")
        _value(det, "y_pixel_size", float(f2d.pixelY) * 1e-6, "m")
        _value(det, "beam_center_x", float(f2d.centerX), "pixel")
        _value(det, "beam_center_y", float(f2d.centerY), "pixel")
        _value(det, "count_time", 0.1, "s")
        _value(det, "frame_time", 0.1, "s")
        _value(det, "bit_depth_image", np.dtype(dtype).itemsize * 8)
        _value(det, "saturation_value", int(np.iinfo(dtype).max - 1))
        _value(det, "sensor_material", "Si")
        _value(det, "sensor_thickness", 450e-6, "m")
        spec = _nx(det.create_group("detectorSpecific"), "NXcollection")
        spec.create_dataset("pixel_mask", data=pixel_mask, chunks=True, compression="gzip")
        spec["pixel_mask"].attrs["description"] = "nonzero = bad: 1 gap, 2 dead, 4 under-, 8 over-responding, 16 noisy"
        _value(spec, "nimages", int(p["n_frames"]))
        _value(spec, "ntrigger", 1)
        _value(spec, "x_pixels_in_detector", int(shape[1]))
        _value(spec, "y_pixels_in_detector", int(shape[0]))
        det["pixel_mask"] = h5py.SoftLink("/entry/instrument/detector/detectorSpecific/pixel_mask")
        sample = _nx(entry.create_group("sample"), "NXsample")
        _value(sample, "name", p["calibrant"])
        sim = _nx(entry.create_group("simulation"), "NXnote")
        _value(sim, "type", "application/json")
        _value(sim, "data", json.dumps({"step": "sample.xrd_eiger", "params": p,
                                        "fit2d_binned": {k: float(v) for k, v in f2d._asdict().items()
                                                         if isinstance(v, (int, float))}}, sort_keys=True))
