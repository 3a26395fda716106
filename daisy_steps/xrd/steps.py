"""XRD pipeline steps (pyfai image): load frames, mask, integrate, save a block, gather a scan.

A block job is ``xrd.load_frames -> xrd.mask -> xrd.integrate -> xrd.save_block`` in one
process: the frames stream from the detector files through pyFAI and only the integrated
(frames x points) arrays are kept. ``xrd.gather`` joins the block files of a scan in frame order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core import Step, now
from ..errors import StepError
from ..nxprocess import own_process, processes, read_records, write_processes
from ..ports import Port
from . import FRAMES_KEY, MASK_KEY, RESULT_KEY
from .frames import ArraySource, FrameSource, open_source, read_image
from .results import UNITS, ResultFile, ResultWriter, XRDResult, mask_digest, write_result

PYFAI_LIBS = ("numpy", "h5py", "hdf5plugin", "pyFAI", "fabio")
FRAMES_IN = Port("frames", "the frames to process (xrd.load_frames, or an array from hdf5.load with key 'frames')")


def frame_source(store) -> FrameSource:
    frames = store.require(FRAMES_KEY)
    if isinstance(frames, FrameSource):
        return frames
    if isinstance(frames, np.ndarray):
        return ArraySource(frames)
    raise StepError(f"step {store.step}: '{FRAMES_KEY}' in the data store is a {type(frames).__name__}, "
                    f"not frames; put xrd.load_frames (or hdf5.load with key 'frames') first")


# ---------------------------------------------------------------------------------------------
# xrd.load_frames
# ---------------------------------------------------------------------------------------------

class LoadFrames(Step):
    """Open a scan lazily: Eiger master + data files, a plain HDF5 stack, or a fabio image."""

    name = "xrd.load_frames"
    version = "1.0.0"
    images = ("pyfai",)  # fabio
    libraries = ("numpy", "h5py", "hdf5plugin", "fabio")
    requires: dict[str, Port] = {}
    provides = {FRAMES_KEY: Port("frames", "the scan's frames start:stop, opened lazily (read while integrating)")}

    def execute(self) -> None:
        p = self.params
        from .series import source_from_slots  # a file series: input slots series_NNNNNN

        source = source_from_slots(self.ctx, p) or open_source(self.ctx.input("source"), p["format"], p["start"],
                                                               p["stop"], p["batch_frames"])
        self.store.put(FRAMES_KEY, source)
        self.ctx.results.update(source.describe())
        self.log.info("%s: %s frames %d:%d of %d, %s %s", source.kind, source.label, source.start,
                      source.stop, source.n_total, source.shape, source.dtype)


# ---------------------------------------------------------------------------------------------
# xrd.mask
# ---------------------------------------------------------------------------------------------

class Mask(Step):
    """Combine the detector's pixel mask with an optional user mask (1 = excluded pixel)."""

    name = "xrd.mask"
    version = "1.0.0"
    images = ("pyfai",)  # fabio (user masks)
    libraries = ("numpy", "h5py", "fabio")
    requires = {FRAMES_KEY: FRAMES_IN}
    provides = {MASK_KEY: Port("ndarray", "combined mask, uint8, 1 = pixel excluded (absent with neither a "
                                          "pixel mask nor a user mask: pyFAI then uses the detector's own)",
                               optional=True)}

    def execute(self) -> None:
        p = self.params
        source = frame_source(self.store)
        shape = source.shape
        mask = np.zeros(shape, dtype=bool)
        counts: dict[str, Any] = {}
        if p["use_pixel_mask"]:
            pixel = source.pixel_mask()
            if pixel is None:
                self.log.info("%s has no detector pixel mask", source.label)
                counts["pixel_mask"] = None
            else:
                if pixel.shape != shape:
                    raise StepError(f"pixel mask of {source.label} has shape {pixel.shape}, "
                                    f"but its frames have shape {shape}")
                bits = p["pixel_mask_bits"]
                bad = (pixel & bits) != 0 if bits is not None else pixel != 0
                counts["pixel_mask"] = int(bad.sum())
                mask |= bad
        if self.ctx.has_input("user_mask"):
            ref = self.ctx.input("user_mask")
            user = read_image(ref, "user mask")
            if user.shape != shape:
                raise StepError(f"user mask {ref} has shape {user.shape}, but the frames of "
                                f"{source.label} have shape {shape}")
            bad = user != 0 if p["user_mask_semantics"] == "nonzero_is_bad" else user == 0
            counts["user_mask"] = int(bad.sum())
            counts["user_mask_file"] = str(ref)
            mask |= bad
        counts["combined"] = int(mask.sum())
        counts["fraction"] = round(float(mask.mean()), 6)
        if counts.get("pixel_mask") is None and "user_mask" not in counts:
            # nothing to combine: leave the store without a mask, so that pyFAI applies the
            # detector's own mask (e.g. the module gaps of a PONI file's Eiger4M)
            self.log.warning("no pixel mask and no user mask: integrating with the detector's own mask, if any")
            self.store.discard(MASK_KEY)
        else:
            self.store.put(MASK_KEY, mask.astype(np.uint8))
        if self.ctx.has_output("mask"):
            from ..h5 import write_array

            ref = self.ctx.output("mask")
            write_array(ref if ref.dataset else type(ref)(ref.path, "/entry/mask"), mask.astype(np.uint8),
                        attrs={"long_name": "combined mask (1 = pixel excluded)"})
        self.ctx.results["masked_pixels"] = counts
        self.log.info("mask: %s", counts)


# ---------------------------------------------------------------------------------------------
# xrd.integrate
# ---------------------------------------------------------------------------------------------

class Integrate(Step):
    """Azimuthal integration with pyFAI, frame by frame: 1D patterns and optional 2D cakes."""

    name = "xrd.integrate"
    version = "1.0.0"
    images = ("pyfai",)
    libraries = PYFAI_LIBS
    requires = {FRAMES_KEY: FRAMES_IN,
                MASK_KEY: Port("ndarray", "pixels to exclude, 1 = excluded (xrd.mask); absent: the "
                                          "detector's own mask", optional=True),
                "normalization": Port("ndarray", "per-frame normalization factors (xrd.normalize)", optional=True),
                "normalization_info": Port("dict", "their origin (xrd.normalize)", optional=True)}
    provides = {RESULT_KEY: Port("xrd_result", "the integrated 1D patterns (and 2D cakes) of the frames")}

    def initialize(self) -> None:
        # OpenMP threads (pyFAI) are the job's: the runner sets them before any library loads
        from .geometry import build_integrator

        self.source = frame_source(self.store)
        shape = self.source.shape
        self.ai, self.geometry = build_integrator(self.params["geometry"], shape, self.log)
        self.mask = self.store.get(MASK_KEY)
        if self.mask is not None and self.mask.shape != shape:
            raise StepError(f"mask in the data store has shape {self.mask.shape}, but the frames of "
                            f"{self.source.label} have shape {shape}")
        self.images = {}
        for slot in ("dark", "flat"):
            if self.ctx.has_input(slot):
                ref = self.ctx.input(slot)
                image = read_image(ref, slot, average=True).astype(np.float32)
                if image.shape != shape:
                    raise StepError(f"{slot} {ref} has shape {image.shape}, but the frames of "
                                    f"{self.source.label} have shape {shape}")
                self.images[slot] = (str(ref), image)

    def _kwargs(self) -> dict[str, Any]:
        p = self.params
        return {
            "unit": p["unit"],
            "radial_range": tuple(p["radial_range"]) if p["radial_range"] else None,
            "azimuth_range": tuple(p["azimuth_range"]) if p["azimuth_range"] else None,
            "mask": self.mask,
            "polarization_factor": p["polarization_factor"],
            "dark": self.images["dark"][1] if "dark" in self.images else None,
            "flat": self.images["flat"][1] if "flat" in self.images else None,
            "method": tuple(p["method"]),
            "correctSolidAngle": p["correct_solid_angle"],
            "error_model": None if p["error_model"] == "none" else p["error_model"],
        }

    def execute(self) -> None:
        import pyFAI

        p, source = self.params, self.source
        kwargs = self._kwargs()
        kwargs2 = {**kwargs, "method": tuple(p["method_2d"])}
        n, npt = len(source), p["npt"]
        two_d = p["integrate_2d"]
        npt_rad_2d = p["npt_rad_2d"] or npt
        want_sigma = kwargs["error_model"] is not None
        intensity = np.empty((n, npt), np.float32)
        sigma = np.empty((n, npt), np.float32) if want_sigma else None
        cake = np.empty((n, p["npt_azim"], npt_rad_2d), np.float32) if two_d else None
        sigma_2d = np.empty_like(cake) if (two_d and want_sigma) else None
        radial = radial_2d = chi = None
        from .options import extra_settings, factor_kwargs, frame_arrays, integrate_1d, method_1d

        norm, norm_info = self.store.get("normalization"), self.store.get("normalization_info")
        used: dict[str, str] = {}
        clock, first_seconds = time.perf_counter(), None
        for k, (index, frame) in enumerate(source.frames()):
            r1 = integrate_1d(self.ai, frame, npt, kwargs, p, norm, k)
            intensity[k] = r1.intensity
            if want_sigma:
                sigma[k] = r1.sigma
            if two_d:
                r2 = self.ai.integrate2d(frame, npt_rad_2d, p["npt_azim"], **kwargs2, **factor_kwargs(norm, k))
                cake[k] = r2.intensity
                if want_sigma:
                    sigma_2d[k] = r2.sigma
            if k == 0:
                first_seconds = time.perf_counter() - clock
                radial = np.asarray(r1.radial, dtype=np.float64)
                used["1d"] = self._method_used(r1.method, method_1d(p))
                if two_d:
                    radial_2d = np.asarray(r2.radial, dtype=np.float64)
                    chi = np.asarray(r2.azimuthal, dtype=np.float64)
                    used["2d"] = self._method_used(r2.method, p["method_2d"])
        seconds = time.perf_counter() - clock
        settings = {
            "unit": p["unit"], "npt": npt, "radial_range": p["radial_range"],
            "azimuth_range": p["azimuth_range"], "integrate_2d": two_d,
            "npt_rad_2d": npt_rad_2d if two_d else None, "npt_azim": p["npt_azim"] if two_d else None,
            "method_requested": list(p["method"]), "method_2d_requested": list(p["method_2d"]) if two_d else None,
            "method_used_1d": used.get("1d"),
            "method_used_2d": used.get("2d"), "polarization_factor": p["polarization_factor"],
            "correct_solid_angle": p["correct_solid_angle"], "error_model": p["error_model"],
            "dark": self.images.get("dark", (None,))[0], "flat": self.images.get("flat", (None,))[0],
            "mask_sha256": mask_digest(self.mask), "masked_pixels": None if self.mask is None else int(self.mask.sum()),
            "pyfai_version": pyFAI.version,
            **extra_settings(p, norm_info),
        }
        self.store.put(RESULT_KEY, XRDResult(
            frames=source.indices, unit=p["unit"], radial=radial, intensity=intensity, sigma=sigma,
            radial_2d=radial_2d, chi=chi, cake=cake, sigma_2d=sigma_2d, geometry=self.geometry,
            settings=settings, source=source.describe(), mask=self.mask, frame_arrays=frame_arrays(norm, norm_info)))
        self.ctx.results.update({
            "frames": n, "method_used_1d": used.get("1d"), "method_used_2d": used.get("2d"),
            "geometry": {k: self.geometry[k] for k in ("source", "fit2d", "wavelength_angstrom")},
            "seconds_first_frame": round(first_seconds or 0.0, 4),
            "seconds_per_frame_after_first": round((seconds - (first_seconds or 0)) / max(1, n - 1), 5),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        })
        self.log.info("integrated %d frames in %.2f s (%s)", n, seconds, used.get("1d"))

    def _method_used(self, method, requested) -> str:
        text = f"{method.split_lower},{method.algo_lower},{method.impl_lower}"
        wanted = ",".join(requested)
        if text != wanted:
            if self.params["require_method"]:
                raise StepError(f"method {wanted} is not available here; pyFAI would use {text} "
                                f"(set require_method false to accept it)")
            self.log.warning("method %s not available: pyFAI uses %s", wanted, text)
        return text


# ---------------------------------------------------------------------------------------------
# xrd.save_block
# ---------------------------------------------------------------------------------------------

class SaveBlock(Step):
    """Write the integrated frames of this job to a block file (NeXus layout of results.py)."""

    name = "xrd.save_block"
    version = "1.0.0"
    images = ("pyfai", "base", "tomopy")  # numpy, h5py, hdf5plugin
    libraries = ("numpy", "h5py")
    requires = {RESULT_KEY: Port("xrd_result", "the integrated patterns of the block (xrd.integrate)")}
    provides: dict[str, Port] = {}

    def execute(self) -> None:
        result = self.store.require(RESULT_KEY)
        ref = self.ctx.output("block")
        write_result(ref.path, result, compression=self.params["compression"])
        self.ctx.results.update({"frames": [int(result.frames[0]), int(result.frames[-1]) + 1]})
        self.log.info("wrote block %s frames %d:%d", self.ctx.final_output("block"), result.frames[0],
                      result.frames[-1] + 1)


# ---------------------------------------------------------------------------------------------
# xrd.gather
# ---------------------------------------------------------------------------------------------

class Gather(Step):
    """Join block files in frame order into one NeXus file per scan; .xy files and PNG previews.
    The file carries one NeXus NXprocess per step that made it (``/entry/process_NN_<step>``),
    from the records of the block jobs, and one for itself (``daisy_steps.nxprocess``).

    Inputs ``block*`` and ``record_<job>`` (the block jobs' records; optional); outputs
    ``result`` (required), ``xy`` (a folder), ``pattern_png``, ``cake_png`` (optional)."""

    name = "xrd.gather"
    version = "1.0.0"
    images = ("pyfai",)  # matplotlib
    libraries = ("numpy", "h5py", "matplotlib")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}

    def initialize(self) -> None:
        self.started = now()
        self.made_by = processes(read_records(self.ctx))
        slots = sorted(s for s in self.ctx.input_slots() if s.startswith("block"))
        if not slots:
            raise StepError(f"step {self.name}: no input slots named block* (block_0000, block_0001, ...)")
        self.blocks: list[ResultFile] = []
        for slot in slots:
            self.blocks.append(ResultFile(self.ctx.input(slot).path))
        for b in self.blocks:
            if len(b.frames) == 0:
                raise StepError(f"block {b.path} holds no frames")
        self.blocks.sort(key=lambda b: int(b.frames[0]))
        self._check()

    def _check(self) -> None:
        first = self.blocks[0]
        for b in self.blocks[1:]:
            for what, mine, theirs in (("geometry", b.geometry, first.geometry),
                                       ("integration settings", b.settings, first.settings),
                                       ("mask", b.mask_sha256, first.mask_sha256),
                                       ("radial unit", b.unit, first.unit)):
                if mine != theirs:
                    raise StepError(f"blocks {first.path} and {b.path} differ in {what}; "
                                    f"gather only blocks of one integration")
            if not np.array_equal(b.radial, first.radial) or (
                    first.chi is not None and not (np.array_equal(b.chi, first.chi)
                                                   and np.array_equal(b.radial_2d, first.radial_2d))):
                raise StepError(f"blocks {first.path} and {b.path} have different radial or χ axes")
        frames = np.concatenate([b.frames for b in self.blocks])
        if np.any(np.diff(frames) <= 0):
            bad = int(np.argmax(np.diff(frames) <= 0))
            owner = next(b for b in self.blocks if frames[bad + 1] in b.frames)
            raise StepError(f"frame {int(frames[bad + 1])} of block {owner.path} overlaps an earlier block")
        if not self.params["allow_gaps"]:
            for a, b in zip(self.blocks, self.blocks[1:]):
                if int(b.frames[0]) != int(a.frames[-1]) + 1:
                    raise StepError(f"frames {int(a.frames[-1]) + 1}:{int(b.frames[0])} are missing between "
                                    f"blocks {a.path} and {b.path} (set allow_gaps to accept)")
        self.frames = frames

    def execute(self) -> None:
        p = self.params
        first = self.blocks[0]
        n = len(self.frames)
        two_d = first.g2 is not None
        if self.ctx.has_output("cake_png") and not two_d:
            raise StepError("output cake_png needs 2D results: integrate with integrate_2d true")
        ref = self.ctx.output("result")
        sources = [s for b in self.blocks for s in b.sources]
        import h5py

        npt = len(first.radial)
        # the 1D results are small (frames x points): keep them for .xy files and the preview
        all_1d = np.empty((n, npt), np.float32)
        all_sigma = np.empty((n, npt), np.float32) if first.has_sigma else None
        cake_sum = None if not two_d else np.zeros((len(first.chi), len(first.radial_2d)), np.float64)
        cake_pick = None
        with h5py.File(ref.path, "w") as handle:
            writer = ResultWriter(handle, n, unit=first.unit, radial=first.radial, radial_2d=first.radial_2d,
                                  chi=first.chi, sigma=first.has_sigma, sigma_2d=first.has_sigma_2d,
                                  geometry=first.geometry, settings=first.settings, sources=sources,
                                  mask=first.mask(), compression=p["compression"])
            offset = 0
            for b in self.blocks:
                g1 = b.handle["/entry/integrate_1d"]
                m = len(b.frames)
                i1 = np.asarray(g1["intensity"][()])
                s1 = np.asarray(g1["intensity_errors"][()]) if b.has_sigma else None
                all_1d[offset:offset + m] = i1
                if s1 is not None:
                    all_sigma[offset:offset + m] = s1
                writer.write(offset, b.frames, i1, s1, extras=b.frame_arrays())
                if two_d:
                    for i in range(m):  # one cake at a time: a scan's 2D results may not fit in memory
                        c = np.asarray(b.g2["intensity"][i])
                        writer.i2[offset + i] = c
                        writer.frame2[offset + i] = b.frames[i]
                        if writer.s2 is not None:
                            writer.s2[offset + i] = b.g2["intensity_errors"][i]
                        cake_sum += c
                        if p["preview_frame"] is not None and int(b.frames[i]) == p["preview_frame"]:
                            cake_pick = c.astype(np.float64)
                offset += m
            # after the data: its chunks lie where they did before (run-dependent lengths follow)
            write_processes(handle["entry"], self.made_by, own_process(self, self.started))
        for b in self.blocks:
            b.close()
        self.blocks = []
        if p["preview_frame"] is not None and p["preview_frame"] not in set(self.frames.tolist()):
            raise StepError(f"preview_frame {p['preview_frame']} is not among the gathered frames "
                            f"{int(self.frames[0])}..{int(self.frames[-1])}")
        rad_name, rad_units, rad_label = UNITS[first.unit]
        if self.ctx.has_output("xy"):
            self._write_xy(first, all_1d, all_sigma)
        if self.ctx.has_output("exports"):  # .xy/.xye/.chi/.fxye per frame (daisy_steps/xrd/exports.py)
            from .exports import write_exports

            self.ctx.results["export_files"] = write_exports(self.ctx, p, first, self.frames, all_1d, all_sigma)
        if self.ctx.has_output("pattern_png"):
            self._pattern_png(first, all_1d, rad_label, rad_units)
        if self.ctx.has_output("cake_png"):
            cake = cake_pick if cake_pick is not None else cake_sum / n
            self._cake_png(first, cake, rad_label, rad_units)
        self.ctx.results.update({"frames": n, "blocks": len(sources), "first": int(self.frames[0]),
                               "last": int(self.frames[-1])})

    def finalize(self) -> None:
        for b in getattr(self, "blocks", []):
            b.close()

    # -- text and previews ---------------------------------------------------------------------

    def _write_xy(self, first: ResultFile, all_1d, all_sigma) -> None:
        folder = Path(self.ctx.final_output("xy").path)
        prefix = self.params["xy_prefix"] or Path(self.ctx.final_output("result").path).stem
        unit = first.unit
        head = [f"DAISY xrd.gather: pyFAI {first.settings.get('pyfai_version')}, "
                f"method {first.settings.get('method_used_1d')}",
                f"wavelength_angstrom: {first.geometry['wavelength_angstrom']}"]
        head += [f"poni {line}" for line in first.geometry.get("poni", "").splitlines()]
        columns = f"{unit} I" + (" sigma" if all_sigma is not None else "")
        for k, frame in enumerate(self.frames):
            target = self.ctx.extra_output(folder / f"{prefix}_{int(frame):05d}.xy")
            cols = [first.radial, all_1d[k]] + ([all_sigma[k]] if all_sigma is not None else [])
            header = "\n".join(head + [f"frame: {int(frame)}", columns])
            np.savetxt(target, np.column_stack(cols), fmt="%.8g", header=header)
        self.ctx.results["xy_files"] = len(self.frames)

    def _figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt

    def _pattern_png(self, first: ResultFile, all_1d, rad_label, rad_units) -> None:
        plt = self._figure()
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, layout="constrained",
                                          gridspec_kw={"height_ratios": [1, 1.3]})
        x = first.radial
        top.plot(x, all_1d.mean(axis=0), lw=1, label=f"mean of {len(self.frames)} frames")
        if self.params["preview_frame"] is not None:
            k = int(np.searchsorted(self.frames, self.params["preview_frame"]))
            top.plot(x, all_1d[k], lw=0.8, alpha=0.7, label=f"frame {self.params['preview_frame']}")
        top.set_ylabel("intensity (counts)")
        top.legend(loc="upper right", fontsize=8)
        top.set_title(Path(self.ctx.final_output("result").path).name, fontsize=9)
        step = max(1, len(self.frames) // 2000)  # at most ~2000 rows in the image
        shown = all_1d[::step]
        vmin, vmax = np.percentile(shown, [1, 99.5]) if shown.size else (0, 1)
        image = bottom.imshow(shown, aspect="auto", origin="lower", interpolation="nearest",
                              extent=[x[0], x[-1], self.frames[0], self.frames[-1] + 1], vmin=vmin, vmax=vmax)
        bottom.set_ylabel("frame")
        bottom.set_xlabel(f"{rad_label} ({rad_units})")
        top.tick_params(labelbottom=True)
        fig.colorbar(image, ax=bottom, label="counts", orientation="horizontal", pad=0.12, fraction=0.06)
        fig.savefig(self.ctx.output("pattern_png").path, dpi=self.params["dpi"], format="png")
        plt.close(fig)

    def _cake_png(self, first: ResultFile, cake, rad_label, rad_units) -> None:
        plt = self._figure()
        from matplotlib.colors import LogNorm, Normalize

        fig, ax = plt.subplots(figsize=(8, 5))
        positive = cake[cake > 0]
        if self.params["cake_log"] and positive.size:
            norm = LogNorm(vmin=max(positive.min(), np.percentile(positive, 1)), vmax=positive.max())
        else:
            norm = Normalize(*np.percentile(cake, [1, 99.5]))
        x, chi = first.radial_2d, first.chi
        image = ax.imshow(np.where(cake > 0, cake, np.nan) if self.params["cake_log"] else cake,
                          aspect="auto", origin="lower", interpolation="nearest", norm=norm,
                          extent=[x[0], x[-1], chi[0], chi[-1]])
        what = (f"frame {self.params['preview_frame']}" if self.params["preview_frame"] is not None
                else f"mean of {len(self.frames)} frames")
        ax.set_title(f"{Path(self.ctx.final_output('result').path).name}: cake, {what}", fontsize=9)
        ax.set_xlabel(f"{rad_label} ({rad_units})")
        ax.set_ylabel("χ (deg)")
        fig.colorbar(image, ax=ax, label="counts")
        fig.tight_layout()
        fig.savefig(self.ctx.output("cake_png").path, dpi=self.params["dpi"], format="png")
        plt.close(fig)
