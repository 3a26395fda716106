"""sample.ct_phantom: a synthetic raw tomography scan of tomopy's 3D Shepp-Logan phantom.

Projections (tomopy.project, axis ``center_offset`` pixels right of the detector centre),
flats with a smooth beam profile, darks, Poisson photon noise, a few columns with a gain error
(stripes in the sinograms, rings in the reconstruction) and optional dead pixels (reading 0 in
every frame), written in one of the three raw layouts. The ground truth goes into ``/truth``:
``/truth/phantom`` (attenuation per pixel, i.e. what a perfect reconstruction returns) and the
attributes ``center`` (true rotation axis, pixels), ``attenuation_scale`` and the defects.
Deterministic for a given seed (numpy's PCG64 generator; HDF5 written without time stamps).
"""

from __future__ import annotations

import h5py
import numpy as np

from ..core import Step
from ..h5 import compression_options
from ..ports import Port

DARK_LEVEL = 100.0


def _write(group: h5py.Group, name: str, data: np.ndarray, compression: str, **attrs) -> h5py.Dataset:
    opts = {}
    if data.ndim == 3 and compression != "none":
        opts = dict(chunks=(1,) + data.shape[1:], **compression_options(compression))
    dset = group.create_dataset(name, data=data, track_times=False, **opts)
    for key, value in attrs.items():
        dset.attrs[key] = value
    return dset


class CTPhantom(Step):
    """Write a raw CT scan of a 3D phantom (output slot ``raw``) with its ground truth."""

    name = "sample.ct_phantom"
    version = "1.0.0"
    images = ("tomopy",)
    libraries = ("numpy", "h5py", "tomopy", "hdf5plugin")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        import tomopy

        p = self.params
        rng = np.random.default_rng(p["seed"])
        n = p["size"]
        phantom = np.asarray(tomopy.shepp3d(n), dtype=np.float32)
        theta = np.linspace(0.0, np.deg2rad(p["end_deg"]), p["n_angles"], endpoint=p["endpoint"])
        # tomopy.project pads the detector to the object's diagonal (an even width dx)
        dx = int(2 * np.ceil((np.sqrt(2.0) * n + 2) / 2))
        center = dx / 2.0 + p["center_offset"]
        lines = np.asarray(tomopy.project(phantom, theta, center=center, emission=True, pad=True,
                                          ncore=self.ctx.threads), dtype=np.float64)
        if lines.shape[2] != dx:  # guard the width formula against tomopy changes
            center = lines.shape[2] / 2.0 + p["center_offset"]
            lines = np.asarray(tomopy.project(phantom, theta, center=center, emission=True, pad=True,
                                              ncore=self.ctx.threads), dtype=np.float64)
            dx = lines.shape[2]
        scale = p["max_attenuation"] / float(lines.max())
        n_ang, rows = lines.shape[:2]

        # beam profile of the flats: smooth, brighter in the middle
        yy, xx = np.mgrid[0:rows, 0:dx]
        profile = 0.8 + 0.2 * np.exp(-(((xx - dx / 2) / (0.6 * dx)) ** 2 + ((yy - rows / 2) / (0.8 * rows)) ** 2))
        beam = p["photons"] * profile
        gain = np.ones(dx)
        lo, hi = int(dx / 2 - 0.35 * n), int(dx / 2 + 0.35 * n)
        stripe_cols = np.sort(rng.choice(np.arange(lo, hi), size=min(p["stripes"], hi - lo), replace=False))
        for i, col in enumerate(stripe_cols):
            gain[col] = 1 + p["stripe_strength"] * (1 if i % 2 == 0 else -1)

        proj = rng.poisson(beam * gain * np.exp(-scale * lines)) + rng.poisson(DARK_LEVEL, size=lines.shape)
        flats = rng.poisson(beam, size=(p["n_flats"], rows, dx)) + rng.poisson(DARK_LEVEL, size=(p["n_flats"], rows, dx))
        darks = rng.poisson(DARK_LEVEL, size=(p["n_darks"], rows, dx))
        dead = [(int(rng.integers(0, rows)), int(rng.integers(lo, hi))) for _ in range(p["dead_pixels"])]
        for r, c in dead:
            proj[:, r, c] = flats[:, r, c] = darks[:, r, c] = 0
        proj, flats, darks = (np.clip(a, 0, 65535).astype(np.uint16) for a in (proj, flats, darks))
        deg = np.rad2deg(theta)

        out = self.ctx.output("raw")
        with h5py.File(out.path, "w") as handle:
            write_layout(handle, p["layout"], proj, flats, darks, deg if p["write_angles"] else None,
                         p["compression"])
            truth = handle.create_group("truth")
            _write(truth, "phantom", (phantom * np.float32(scale)).astype(np.float32), "gzip",
                   description="attenuation per pixel (1/pixel): the ideal reconstruction, rows x y x")
            _write(truth, "angles_deg", deg.astype(np.float64), "none")
            truth.attrs.update(center=center, attenuation_scale=scale, detector_columns=dx,
                               center_offset=p["center_offset"], seed=p["seed"], layout=p["layout"],
                               stripe_columns=stripe_cols.astype(np.int64),
                               dead_pixels=np.array(dead, dtype=np.int64).reshape(-1, 2))
        self.ctx.results.update(center=center, detector_shape=[rows, dx], n_angles=n_ang,
                              stripe_columns=stripe_cols.tolist(), dead_pixels=dead, attenuation_scale=scale)


def write_layout(handle: h5py.File, layout: str, proj, flats, darks, deg=None, compression: str = "gzip") -> None:
    """Write projections, flats, darks and angles (degrees; None: no angle dataset) in a raw layout.

    NXtomo gets one frame stack: darks, half the flats, projections, the other flats.
    """
    comp = compression
    if layout == "dxchange":
        ex = handle.create_group("exchange")
        _write(ex, "data", proj, comp)
        _write(ex, "data_white", flats, comp)
        _write(ex, "data_dark", darks, comp)
        if deg is not None:
            _write(ex, "theta", np.asarray(deg), "none", units="deg")
        handle.create_dataset("implements", data="exchange")
    elif layout == "daisy":
        entry = handle.create_group("entry")
        _write(entry, "tomo", proj, comp)
        _write(entry, "flat", flats, comp)
        _write(entry, "dark", darks, comp)
        if deg is not None:
            _write(entry, "angles", np.asarray(deg), "none", units="degree")
    elif layout == "nxtomo":
        half = flats.shape[0] // 2
        frames = np.concatenate([darks, flats[:half], proj, flats[half:]])
        keys = np.concatenate([np.full(len(darks), 2), np.full(half, 1), np.zeros(len(proj)),
                               np.full(len(flats) - half, 1)]).astype(np.int32)
        entry = handle.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("definition", data="NXtomo")
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        data = _write(det, "data", frames, comp)
        key = _write(det, "image_key", keys, "none")
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        nxdata = entry.create_group("data")
        nxdata.attrs.update(NX_class="NXdata", signal="data")
        nxdata["data"], nxdata["image_key"] = data, key
        if deg is not None:
            deg = np.asarray(deg)
            angles = np.concatenate([np.zeros(len(darks) + half), deg, np.full(len(flats) - half, deg[-1])])
            nxdata["rotation_angle"] = _write(sample, "rotation_angle", angles, "none", units="degree")
    else:
        raise ValueError(f"unknown layout {layout}")
