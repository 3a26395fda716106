"""The summary of a batch of scans (step ``xrd.summary``, the batch's last job ``xrd_gather_summary``).

Reads every scan's result file (input slots ``scan_NNNN``) and writes one NeXus file::

    /entry                NXentry, default=scans
      scans               NXdata  mean_intensity[scan, radial] (+ mean_intensity_errors), radial axis
      table               NXcollection  name, file, frames, first/last frame, sha256 of each result,
                                        mean monitor and normalization factor (if any), method

plus, as the gather stage's other outputs: ``pattern_png`` (the mean patterns of all scans),
``cake_png`` (mean cake over every scan, with 2D), ``xy`` and ``exports`` folders (each scan's
mean pattern, ``<scan>_mean.<format>``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import Step
from ..errors import StepError
from ..fileio import sha256_file
from ..h5 import compression_options, nx_group
from ..ports import Port
from .results import UNITS, ResultFile


def scan_of(path: str | Path) -> str:
    return Path(path).stem.removesuffix("_integrated")


class Summary(Step):
    """One file over a batch's scans: each scan's mean pattern, frames and checksums."""

    name = "xrd.summary"
    version = "1.0.0"
    images = ("pyfai",)  # matplotlib
    libraries = ("numpy", "h5py", "matplotlib")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        p = self.params
        slots = sorted(s for s in self.ctx.input_slots() if s.startswith("scan_"))
        if not slots:
            raise StepError(f"step {self.name}: no input slots scan_NNNN (the scans' result files)")
        rows, means, sigmas, cakes, radial, unit, first_settings = [], [], [], [], None, None, None
        for slot in slots:
            ref = self.ctx.input(slot)
            with ResultFile(ref.path) as res:
                if radial is None:
                    radial, unit, first_settings, geometry = res.radial, res.unit, res.settings, res.geometry
                elif res.unit != unit or len(res.radial) != len(radial):
                    raise StepError(f"{ref.path}: its patterns ({res.unit}, {len(res.radial)} points) differ from "
                                    f"the first scan's ({unit}, {len(radial)} points)")
                intensity = np.asarray(res.handle["/entry/integrate_1d/intensity"][()], np.float64)
                means.append(intensity.mean(axis=0))
                if res.has_sigma:
                    s = np.asarray(res.handle["/entry/integrate_1d/intensity_errors"][()], np.float64)
                    sigmas.append(np.sqrt((s ** 2).sum(axis=0)) / len(s))
                if self.ctx.has_output("cake_png") and res.g2 is not None:
                    total = None
                    for i in range(res.g2["intensity"].shape[0]):
                        c = np.asarray(res.g2["intensity"][i], np.float64)
                        total = c if total is None else total + c
                    cakes.append((total / res.g2["intensity"].shape[0], res.radial_2d, res.chi))
                extras = res.frame_arrays()
                rows.append({
                    "name": scan_of(ref.path), "file": Path(ref.path).name, "frames": int(len(res.frames)),
                    "first": int(res.frames[0]), "last": int(res.frames[-1]), "sha256": sha256_file(ref.path),
                    "radial_max_difference": float(np.abs(res.radial - radial).max()),
                    "mean_monitor": float(extras["monitor"].mean()) if "monitor" in extras else None,
                    "mean_normalization_factor": (float(extras["normalization_factor"].mean())
                                                  if "normalization_factor" in extras else None),
                    "method": res.settings.get("method_used_1d"),
                })
        mean = np.asarray(means, np.float32)
        sigma = np.asarray(sigmas, np.float32) if len(sigmas) == len(means) else None
        rad_name, rad_units, rad_label = UNITS[unit]
        import h5py

        comp = compression_options(p["compression"])
        with h5py.File(self.ctx.output("result").path, "w") as handle:
            entry = nx_group(handle, "entry", "NXentry")
            entry.attrs["default"] = "scans"
            g = nx_group(entry, "scans", "NXdata")
            g.attrs.update({"signal": "mean_intensity", "axes": ["scan", rad_name], f"{rad_name}_indices": 1,
                            "scan_indices": 0, "pyfai_unit": unit})
            g.create_dataset("scan", data=np.array([r["name"] for r in rows], dtype=h5py.string_dtype()))
            ax = g.create_dataset(rad_name, data=np.asarray(radial, np.float64))
            ax.attrs.update({"units": rad_units, "long_name": f"{rad_label} ({rad_units})"})
            d = g.create_dataset("mean_intensity", data=mean, **comp)
            d.attrs.update({"units": "counts", "long_name": "mean pattern of the scan's frames"})
            if sigma is not None:
                e = g.create_dataset("mean_intensity_errors", data=sigma, **comp)
                e.attrs["long_name"] = "standard deviation of the mean pattern"
            table = nx_group(entry, "table", "NXcollection")
            for key in ("name", "file", "sha256", "method"):
                table.create_dataset(key, data=np.array([str(r[key]) for r in rows], dtype=h5py.string_dtype()))
            for key in ("frames", "first", "last"):
                table.create_dataset(key, data=np.array([r[key] for r in rows], np.int64))
            for key in ("mean_monitor", "mean_normalization_factor", "radial_max_difference"):
                table.create_dataset(key, data=np.array([np.nan if r[key] is None else r[key] for r in rows]))
            table.create_dataset("json", data=json.dumps(rows, sort_keys=True))
        names = [r["name"] for r in rows]
        if self.ctx.has_output("xy"):
            self._texts("xy", ["xy"], names, unit, radial, mean, sigma, geometry, first_settings)
        if self.ctx.has_output("exports"):
            self._texts("exports", list(p["exports"]), names, unit, radial, mean, sigma, geometry, first_settings)
        if self.ctx.has_output("pattern_png"):
            self._pattern_png(names, radial, mean, rad_label, rad_units)
        if self.ctx.has_output("cake_png"):
            if not cakes:
                raise StepError("output cake_png needs 2D results in the scans' files (integrate_2d true)")
            self._cake_png(cakes, rad_label, rad_units)
        self.ctx.results.update({"scans": len(rows), "frames": int(sum(r["frames"] for r in rows)),
                                 "names": names})
        self.log.info("summary of %d scans (%d frames)", len(rows), sum(r["frames"] for r in rows))

    def _texts(self, slot, formats, names, unit, radial, mean, sigma, geometry, settings) -> None:
        from .exports import check_formats, write_pattern

        check_formats(formats, unit, sigma is not None)
        folder = Path(self.ctx.final_output(slot).path)
        head = [f"DAISY xrd.summary: mean pattern of a scan, pyFAI {settings.get('pyfai_version')}",
                f"wavelength_angstrom: {geometry['wavelength_angstrom']}"]
        for k, name in enumerate(names):
            for fmt in formats:
                target = self.ctx.extra_output(folder / f"{name}_mean.{fmt}")
                write_pattern(target, fmt, unit, radial, mean[k], None if sigma is None else sigma[k],
                              head + [f"scan: {name}"], f"{name} mean (DAISY)")

    def _pattern_png(self, names, radial, mean, rad_label, rad_units) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, layout="constrained")
        for name, m in list(zip(names, mean))[:20]:
            top.plot(radial, m, lw=0.8, label=name)
        top.legend(fontsize=6, loc="upper right")
        top.set_ylabel("mean intensity")
        top.set_title(f"{len(names)} scans", fontsize=9)
        vmin, vmax = np.percentile(mean, [1, 99.5])
        image = bottom.imshow(mean, aspect="auto", origin="lower", interpolation="nearest",
                              extent=[radial[0], radial[-1], 0, len(names)], vmin=vmin, vmax=vmax)
        bottom.set_ylabel("scan")
        bottom.set_xlabel(f"{rad_label} ({rad_units})")
        top.tick_params(labelbottom=True)
        fig.colorbar(image, ax=bottom, orientation="horizontal", pad=0.12, fraction=0.06)
        fig.savefig(self.ctx.output("pattern_png").path, dpi=100, format="png")
        plt.close(fig)

    def _cake_png(self, cakes, rad_label, rad_units) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cake = np.mean([c for c, _, _ in cakes], axis=0)
        _, x, chi = cakes[0]
        fig, ax = plt.subplots(figsize=(8, 5))
        vmin, vmax = np.percentile(cake, [1, 99.5])
        image = ax.imshow(cake, aspect="auto", origin="lower", interpolation="nearest", vmin=vmin, vmax=vmax,
                          extent=[x[0], x[-1], chi[0], chi[-1]])
        ax.set_title(f"mean cake of {len(cakes)} scans", fontsize=9)
        ax.set_xlabel(f"{rad_label} ({rad_units})")
        ax.set_ylabel("χ (deg)")
        fig.colorbar(image, ax=ax)
        fig.savefig(self.ctx.output("cake_png").path, dpi=100, format="png")
        plt.close(fig)
