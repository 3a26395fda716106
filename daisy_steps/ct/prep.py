"""Pre-processing steps on projections: flat/dark normalization, angles, minus-log, stripes.

They work in place on the data-store key ``proj`` (projections, angles x rows x columns) so
that a slab job holds one copy of its slab; tomopy is imported only when a step runs.
"""

from __future__ import annotations

import numpy as np

from ..core import Step
from ..errors import StepError
from ..ports import Port
from .memory import in_blocks, value_range


def where(store) -> str:
    """``rows r0:r1 of FILE`` for messages (what the store knows of the slab)."""
    rows = store.get("rows")
    raw = store.get("raw_file")
    text = f"rows {rows[0]}:{rows[1]}" if rows else "the loaded rows"
    return f"{text} of {raw}" if raw else text


def _percent(part: int, total: int) -> str:
    return f"{100.0 * part / max(1, total):.3g}%"


def constant_frames(proj: np.ndarray, threads: int = 1) -> np.ndarray:
    """Indices of the projections whose values (in the loaded rows) are all equal, e.g. all
    zero: a dropped frame, a closed shutter. NaN frames are not counted here."""
    flat = proj.reshape(proj.shape[0], -1)
    low, high = np.empty(flat.shape[0], flat.dtype), np.empty(flat.shape[0], flat.dtype)

    def span(a0: int) -> None:                     # numpy reductions run outside the GIL
        np.min(flat[a0:a0 + 64], axis=1, out=low[a0:a0 + 64])
        np.max(flat[a0:a0 + 64], axis=1, out=high[a0:a0 + 64])

    in_blocks(span, flat.shape[0], 64, threads)
    return np.flatnonzero(low == high)


class Normalize(Step):
    """``(proj - dark) / (flat - dark)`` with tomopy.normalize, then the DAISY guard and the
    quality gates.

    Guard (documented in docs/ct-steps.md): detector pixels whose averaged flat minus averaged
    dark is below ``min_flat_minus_dark`` (zero, negative or not finite) are *dead*: their
    normalized value is set to ``dead_value`` in every projection. Remaining values are clipped
    below at ``min_transmission`` (and above at ``cutoff`` if given), and any non-finite value
    becomes ``dead_value``, so the output is finite and positive and minus-log is safe.

    Gates (docs/troubleshooting.md): a slab whose share of dead pixels exceeds
    ``max_dead_fraction``, whose share of non-finite projection values exceeds
    ``max_non_finite_fraction``, or whose share of constant projections (every value equal, e.g.
    all zero) exceeds ``max_constant_fraction`` fails, naming the file, rows and field; below
    the limits, any dead pixel, non-finite value or constant projection is a warning (the job
    record's ``warnings``, printed at the end of the run).
    """

    name = "ct.normalize"
    version = "1.2.0"
    images = ("tomopy",)
    libraries = ("numpy", "tomopy", "numexpr")
    requires = {"proj": Port("ndarray", "raw projections, (angles, rows, columns)"),
                "flat": Port("ndarray", "flat fields of the same rows"),
                "dark": Port("ndarray", "dark fields of the same rows"),
                "rows": Port("tuple", "(start, stop): the detector rows held (named in messages)", optional=True),
                "raw_file": Port("path", "the raw file (named in messages)", optional=True),
                "raw_dtype": Port("str", "the file's type of the projections: integer counts skip the "
                                         "finiteness count", optional=True)}
    provides = {"proj": Port("ndarray", "transmission, float32, finite and positive (in place when the "
                                        "projections are float32)")}
    consumes = ("flat", "dark")

    def _gate(self, count: int, total: int, limit_field: str, what: str, hint: str) -> None:
        """Fail above the limit, warn below it (when ``count``)."""
        if not count:
            return
        limit = self.params[limit_field]
        share = count / max(1, total)
        text = f"{count} of {total} {what} ({_percent(count, total)}) in {where(self.store)}"
        if share > limit:
            raise StepError(f"{self.name}: {text}: more than {limit_field} {limit:g} "
                            f"(config field normalize.{limit_field}); {hint}")
        self.ctx.warn(f"{text}; {hint.split(';')[0]}")

    def execute(self) -> None:
        import tomopy

        proj = self.store.require("proj")
        flat = self.store.require("flat")
        dark = self.store.require("dark")
        p = self.params
        if flat.shape[1:] != proj.shape[1:] or dark.shape[1:] != proj.shape[1:]:
            raise StepError(f"{self.name}: flats {flat.shape} / darks {dark.shape} do not have the frame shape "
                            f"of the projections {proj.shape} ({where(self.store)})")
        if proj.size == 0 or flat.shape[0] == 0 or dark.shape[0] == 0:
            raise StepError(f"{self.name}: nothing to normalize in {where(self.store)}: projections {proj.shape}, "
                            f"flats {flat.shape}, darks {dark.shape}")
        constant = constant_frames(proj, self.ctx.threads)
        integer = np.dtype(self.store.get("raw_dtype", proj.dtype.name)).kind in "biu"
        raw_bad = {name: int(np.count_nonzero(~np.isfinite(a))) if a.dtype.kind == "f" and not (integer and a is proj)
                   else 0 for name, a in (("projections", proj), ("flats", flat), ("darks", dark))}
        if p["averaging"] == "mean":
            flat_avg = np.mean(flat, axis=0, dtype=np.float32)
            dark_avg = np.mean(dark, axis=0, dtype=np.float32)
        else:
            flat_avg = np.median(flat, axis=0).astype(np.float32)
            dark_avg = np.median(dark, axis=0).astype(np.float32)
        # mean: tomopy averages the stacks itself (faster, and the same numbers as our float32
        # means); median: the 2D medians, which tomopy's mean over one frame returns unchanged.
        # tomopy converts integer counts to float32 before it subtracts: no integer wrap-around;
        # ct.load already did for 8/16-bit counts (exact), so it works in place here.
        flat_in, dark_in = (flat, dark) if p["averaging"] == "mean" else (flat_avg, dark_avg)
        out = tomopy.normalize(proj, flat_in, dark_in, cutoff=p["cutoff"], ncore=self.ctx.threads,
                               out=proj if proj.dtype == np.float32 else None)
        out = np.asarray(out, dtype=np.float32)
        dead = ~(flat_avg - dark_avg >= np.float32(p["min_flat_minus_dark"]))
        n_dead = int(np.count_nonzero(dead))
        self._gate(n_dead, dead.size, "max_dead_fraction", "detector pixels are dead",
                   f"their averaged flat minus dark is below {p['min_flat_minus_dark']:g} (flats equal to or "
                   f"below the darks?) and they are set to {p['dead_value']:g} in every projection; "
                   f"check the flats and darks, or raise the limit to accept")
        if n_dead:
            out[:, dead] = np.float32(p["dead_value"])
        self._gate(raw_bad["projections"], proj.size, "max_non_finite_fraction",
                   "projection values are NaN or inf",
                   f"they are set to {p['dead_value']:g}; check the raw data, or raise the limit to accept")
        if raw_bad["flats"] or raw_bad["darks"]:
            self.ctx.warn(f"{raw_bad['flats']} flat and {raw_bad['darks']} dark values in {where(self.store)} are "
                          f"NaN or inf (their pixels count as dead where the average is not finite)")
        self._gate(int(constant.size), proj.shape[0], "max_constant_fraction",
                   f"projections are constant (every value equal, e.g. all zero; first: "
                   f"{', '.join(map(str, constant[:5].tolist()))})",
                   "dropped frames or a closed shutter? check the raw data, or raise the limit to accept")
        # the guard: non-finite values become dead_value, values below min_transmission are raised to it;
        # one threaded (min, max) pass tells whether either is needed (masks only then)
        low, high = value_range(out, self.ctx.threads)
        n_bad = 0
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = ~np.isfinite(out)
            n_bad = int(np.count_nonzero(bad))
            out[bad] = np.float32(p["dead_value"])
            del bad
            low = float(np.min(out))
        floor = np.float32(p["min_transmission"])
        n_low = 0
        if low < floor:
            low_mask = out < floor
            n_low = int(np.count_nonzero(low_mask))
            out[low_mask] = floor
            del low_mask
        self.store.discard("flat")
        self.store.discard("dark")
        self.store.put("proj", out)
        self.ctx.results.update(dead_pixels=n_dead, non_finite_values=n_bad, clipped_low=n_low,
                                dead_fraction=round(n_dead / max(1, dead.size), 6),
                                non_finite_raw=raw_bad, constant_projections=int(constant.size))
        if n_dead or n_bad:
            self.log.info("%d dead detector pixels (flat - dark < %g) and %d non-finite values set to %g",
                          n_dead, p["min_flat_minus_dark"], n_bad, p["dead_value"])


def range_angles(params: dict, count: int) -> np.ndarray:
    """ct.angles' angles for ``count`` projections when they come from a range, radians float32."""
    return np.linspace(np.deg2rad(params["start_deg"]), np.deg2rad(params["end_deg"]), count,
                       endpoint=params["endpoint"]).astype(np.float32)


class Angles(Step):
    """Rotation angles (radians) for the projections: from the raw file or from a range."""

    name = "ct.angles"
    version = "1.0.0"
    images = ("tomopy", "base", "pyfai")  # numpy only
    libraries = ("numpy",)
    requires = {"proj": Port("ndarray", "projections (only their count is used)"),
                "theta_file": Port("ndarray", "angles read from the raw file, radians", optional=True),
                "raw_file": Port("path", "the raw file (named in messages)", optional=True)}
    provides = {"theta": Port("ndarray", "the rotation angles the reconstruction uses, radians float32")}

    def execute(self) -> None:
        proj = self.store.require("proj")
        count = proj.shape[0]
        p = self.params
        source = p["source"]
        from_file = self.store.get("theta_file")
        if source == "auto":
            source = "file" if from_file is not None else "range"
        if source == "file":
            if from_file is None:
                raise StepError(f"{self.name}: source 'file' but the raw file {self.store.get('raw_file', '?')} has "
                                f"no angle dataset (see ct.load's angles_path); use source 'range'")
            if from_file.size != count:
                raise StepError(f"{self.name}: {from_file.size} angles from the file but {count} projections")
            theta = np.asarray(from_file, dtype=np.float32)
        else:
            theta = range_angles(p, count)
        self.store.put("theta", theta)
        self.ctx.results.update(angle_source=source, n_angles=int(count),
                              first_deg=float(np.rad2deg(theta[0])), last_deg=float(np.rad2deg(theta[-1])))


class MinusLog(Step):
    """Attenuation ``-log(transmission)`` with tomopy.minus_log, in place."""

    name = "ct.minus_log"
    version = "1.1.0"
    images = ("tomopy",)
    libraries = ("numpy", "tomopy", "numexpr")
    requires = {"proj": Port("ndarray", "transmission, float32 (ct.normalize)")}
    provides = {"proj": Port("ndarray", "attenuation -log(transmission), float32, in place")}

    def execute(self) -> None:
        import tomopy

        proj = self.store.require("proj")
        if proj.dtype != np.float32:
            raise StepError(f"{self.name}: projections are {proj.dtype}, not normalized float32; "
                            f"put ct.normalize before ct.minus_log")
        out = tomopy.minus_log(proj, ncore=self.ctx.threads, out=proj)
        low, high = value_range(out, self.ctx.threads)
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = int(np.count_nonzero(~np.isfinite(out)))
            raise StepError(f"{self.name}: {bad} non-finite values after minus-log (transmission <= 0); "
                            f"ct.normalize's guard prevents this")
        self.store.put("proj", out)


def fw_level(shape) -> int:
    """Wavelet levels for remove_stripe_fw from a projection stack's angles and columns."""
    return int(np.ceil(np.log2(max(shape[0], shape[2]))))


class Stripe(Step):
    """Stripe (ring-artefact) removal on the sinograms: none, fw (Fourier-wavelet, Munch),
    ti (Titarenko) or sf (smoothing filter) from tomopy.prep.stripe."""

    name = "ct.stripe"
    version = "1.0.0"
    images = ("tomopy",)
    libraries = ("numpy", "tomopy", "pywt")
    requires = {"proj": Port("ndarray", "attenuation, float32 (ct.minus_log)")}
    provides = {"proj": Port("ndarray", "attenuation with stripes removed (unchanged for method none)")}

    def execute(self) -> None:
        proj = self.store.require("proj")
        p = self.params
        method = p["method"]
        self.ctx.results["method"] = method
        if method == "none":
            return
        import tomopy

        n = self.ctx.threads
        if method == "fw":
            # tomopy's default level counts the slab height too (max of the 3D shape), so slabs of
            # different heights would be filtered differently: use the sinogram's size only
            level = p["fw_level"] or fw_level(proj.shape)
            self.ctx.results["fw_level"] = level
            out = tomopy.remove_stripe_fw(proj, level=level, wname=p["fw_wname"], sigma=p["fw_sigma"],
                                          pad=p["fw_pad"], ncore=n)
        elif method == "ti":
            out = tomopy.remove_stripe_ti(proj, nblock=p["ti_nblock"], alpha=p["ti_alpha"], ncore=n)
        else:
            out = tomopy.remove_stripe_sf(proj, size=p["sf_size"], ncore=n)
        self.store.put("proj", np.asarray(out, dtype=np.float32))
