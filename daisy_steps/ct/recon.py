"""ct.recon: tomographic reconstruction of the slab in the store with tomopy.recon."""

from __future__ import annotations

import json
import math

import numpy as np

from ..core import Step
from ..errors import StepError
from ..ports import Port
from .memory import release, to_sinogram_order, value_range
from .output import peak_rss_mib, write_slab
from .slab_writer import SlabWriter

ANALYTIC = ("gridrec", "fbp")
#: every CPU iterative algorithm of tomopy.recon, with the options each takes beyond num_iter
ITERATIVE = {
    "art": (), "bart": ("num_block", "ind_block"), "mlem": (), "osem": ("num_block", "ind_block"),
    "ospml_hybrid": ("reg_par", "num_block", "ind_block"), "ospml_quad": ("reg_par", "num_block", "ind_block"),
    "pml_hybrid": ("reg_par",), "pml_quad": ("reg_par",), "sirt": (), "tv": ("reg_par",), "grad": ("reg_par",),
    "tikh": ("reg_par",),
}
ALGORITHMS = (*ANALYTIC, *ITERATIVE)
#: algorithms whose multiplicative update diverges on negative data (clip_negative auto clips for them)
MULTIPLICATIVE = ("mlem", "osem", "ospml_hybrid", "ospml_quad", "pml_hybrid", "pml_quad")
#: how many reg_par values each algorithm reads (tomopy's C code; more are ignored)
REG_PAR_COUNT = {"ospml_hybrid": 2, "ospml_quad": 1, "pml_hybrid": 2, "pml_quad": 1, "tv": 1, "grad": 1, "tikh": 1}


def block_order(n_angles: int, order: str, seed: int) -> np.ndarray:
    """The order in which the ordered-subset algorithms visit the projections (tomopy's
    ind_block): sequential, or shuffled by numpy's default_rng(seed) (as tomopy's tests do)."""
    ind = np.arange(n_angles)
    if order == "shuffled":
        np.random.default_rng(seed).shuffle(ind)
    return ind.astype(np.int32)


def check_params(p: dict, n_angles: int | None = None) -> None:
    """Refuse options that do not fit the algorithm, before any data is read (the planner calls
    it with the number of projections)."""
    algorithm = p["algorithm"]
    if algorithm not in ALGORITHMS:
        raise StepError(f"ct.recon: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    options = ITERATIVE.get(algorithm, ())
    if p.get("reg_par") is not None:
        if "reg_par" not in options:
            raise StepError(f"config field recon.reg_par: algorithm {algorithm} takes no regularisation "
                            f"(only {', '.join(REG_PAR_COUNT)})")
        if len(p["reg_par"]) < REG_PAR_COUNT[algorithm]:
            raise StepError(f"config field recon.reg_par: {algorithm} reads {REG_PAR_COUNT[algorithm]} values, "
                            f"{len(p['reg_par'])} given")
    if p.get("num_block", 1) != 1 and "num_block" not in options:
        raise StepError(f"config field recon.num_block: only the ordered-subset algorithms (bart, osem, "
                        f"ospml_hybrid, ospml_quad) take blocks, not {algorithm}")
    if n_angles is not None and "num_block" in options and p.get("num_block", 1) > n_angles:
        raise StepError(f"config field recon.num_block: {p['num_block']} blocks but only {n_angles} projections")
    if p.get("filter_par") is not None and algorithm not in ANALYTIC:
        raise StepError(f"config field recon.filter_par: only gridrec and fbp take a filter, not {algorithm}")


def tomopy_options(p: dict, n_angles: int) -> dict:
    """The keyword arguments of tomopy.recon for these parameters."""
    algorithm = p["algorithm"]
    if algorithm in ANALYTIC:
        kwargs = {"filter_name": p["filter_name"]}
        if p.get("filter_par") is not None:
            kwargs["filter_par"] = np.asarray(p["filter_par"], dtype=np.float32)
        return kwargs
    kwargs = {"num_iter": p["num_iter"]}
    options = ITERATIVE[algorithm]
    if "reg_par" in options and p.get("reg_par") is not None:
        kwargs["reg_par"] = np.asarray(p["reg_par"], dtype=np.float32)
    if "num_block" in options:
        kwargs["num_block"] = p["num_block"]
        kwargs["ind_block"] = block_order(n_angles, p["block_order"], p["block_seed"])
    return kwargs


def _recorded(kwargs: dict) -> dict:
    """The options as JSON-able values (for the record and the slab's attributes)."""
    out = {}
    for key, value in kwargs.items():
        if key == "ind_block":
            continue                      # recorded as block_order and block_seed
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def recon_chunk(rows: int, threads: int) -> int:
    """Slices per tomopy worker: an even number, so that gridrec (which reconstructs slices in
    pairs, packed as real and imaginary parts of one FFT) pairs the same detector rows whatever
    the slab or thread count, provided slabs start an even number of rows after the first row of
    the unchunked reconstruction they must match (ct.slabs.plan_slabs does that)."""
    per_thread = math.ceil(rows / max(1, threads))
    return max(2, per_thread + per_thread % 2)


def blank_gridrec_edges(recon: np.ndarray) -> np.ndarray:
    """tomopy 1.15.2's gridrec multiplies ``recon[:, 0, :]`` and ``recon[:, :, -1]`` by a float read
    one past its malloc'ed correction table (``winv[pdim-1]``) whenever the grid equals the FFT size
    (columns a power of two >= 16): uninitialised memory, so those two lines (and the corner, by its
    square) vary from process to process, up to inf. Set them to 0; every other pixel is exact and
    reproducible (DEVELOPERS.md, "Numerical facts")."""
    n = recon.shape[-1]
    if n >= 16 and n & (n - 1) == 0:
        recon[:, 0, :] = 0
        recon[:, :, -1] = 0
    return recon


def implausible(recon: np.ndarray, bound: float) -> str | None:
    """What is wrong with a reconstruction (non-finite values, or values beyond ``bound``:
    filtered backprojection stays within a small multiple of the largest sinogram value), or None."""
    low, high = value_range(recon)                 # NaN or inf show in the range: no mask unless needed
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{int(recon.size - np.count_nonzero(np.isfinite(recon)))} non-finite values"
    peak = max(-low, high)
    if peak > bound:
        return f"values up to {peak:.3g} (more than {bound:.3g})"
    return None


def recon_block(rows: int, threads: int) -> int:
    """Detector rows per tomopy.recon call: a few pairs per thread (even, so gridrec pairs the same
    rows as one call on the whole slab would), small enough that the sinograms of finished rows
    are released while the volume fills."""
    return min(rows + rows % 2, 16 * max(1, threads))


def read_center(path) -> float:
    """The ``center`` number of a ct.find_center JSON output."""
    try:
        data = json.loads(path.read_text())
        return float(data["center"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"centre file {path}: no number under 'center' ({exc})") from None


class Recon(Step):
    """Reconstruct ``proj`` (minus-logged, angles x rows x columns) with ``theta`` into ``recon``
    (rows x N x N float32, N = detector columns), optionally masked outside a circle.

    The centre is, first found of: the field ``center``; input slot ``center`` (ct.find_center's
    JSON); ``center`` in the store (ct.find_center earlier in this job).

    Gate: a reconstruction with non-finite values, or values beyond ``max_value_factor`` times
    the largest sinogram value, is computed once more (tomopy.recon leaves its input unchanged);
    a plausible second result completes with a warning, a second failure fails the job.

    Output slot ``slab`` (optional): the slab file (ct.save_slab's layout); with ``keep_volume``
    false each block of rows goes there while the next is reconstructed
    (:mod:`daisy_steps.ct.slab_writer`) and ``recon`` is neither held whole nor kept. With
    ``file_rows`` the slab is one part of the file (a job reconstructing several slabs in turn).
    """

    name = "ct.recon"
    version = "1.5.0"
    images = ("tomopy",)
    libraries = ("numpy", "tomopy")
    requires = {"proj": Port("ndarray", "minus-logged projections, float32 (angles, rows, columns)"),
                "theta": Port("ndarray", "rotation angles, radians (ct.angles)"),
                "center": Port("float", "rotation centre from ct.find_center earlier in the job (used when "
                                        "neither the field center nor the input slot center is given)",
                               optional=True),
                "rows": Port("tuple", "(start, stop): the detector rows held (named in messages; with output "
                                      "slot slab, its first row becomes row_offset)", optional=True),
                "detector_rows": Port("int", "the detector's total row count (saved with output slot slab)",
                                      optional=True),
                "raw_file": Port("path", "the raw file (named in messages)", optional=True)}
    provides = {"recon": Port("ndarray", "the reconstructed slab, (rows, N, N) float32 (not kept when output "
                                         "slot slab is given: written there as it is reconstructed)"),
                "recon_info": Port("dict", "algorithm, centre and options used (saved as attributes)")}
    consumes = ("proj",)

    @classmethod
    def bound_ports(cls, params):
        requires, provides, consumes = super().bound_ports(params)
        if params.get("keep_volume") is False:        # written to output slot slab only
            provides = {k: v for k, v in provides.items() if k != "recon"}
        return requires, provides, consumes

    def execute(self) -> None:
        import tomopy

        p = self.params
        if not p["keep_volume"] and not self.ctx.has_output("slab"):
            raise StepError(f"{self.name}: keep_volume false needs output slot 'slab' (else the volume is lost)")
        proj = self.store.require("proj")
        theta = self.store.require("theta")
        if proj.dtype != np.float32:
            raise StepError(f"{self.name}: projections are {proj.dtype}; reconstruct minus-logged float32 data")
        if theta.size != proj.shape[0]:
            raise StepError(f"{self.name}: {theta.size} angles but {proj.shape[0]} projections")
        center, source = self._center()
        algorithm = p["algorithm"]
        check_params(p, proj.shape[0])
        kwargs = tomopy_options(p, proj.shape[0])
        clip = p["clip_negative"] == "always" or (p["clip_negative"] == "auto" and algorithm in MULTIPLICATIVE)
        if clip:
            np.maximum(proj, np.float32(0), out=proj)
        rows, cols = proj.shape[1], proj.shape[2]
        low, high = value_range(proj, self.ctx.threads)
        bound = p["max_value_factor"] * max(-low, high, 1e-12)
        # tomopy.recon wants sinogram order and would copy the whole slab into it; done here block by
        # block, releasing the projections as they move, then the sinograms of each block of rows
        # once reconstructed: the slab's values are held about once, not three times
        sino = to_sinogram_order(proj, self.ctx.threads)
        del proj
        self.store.discard("proj")
        block = recon_block(rows, self.ctx.threads)
        slab_rows = tuple(self.store.get("rows", (0, rows)))
        file_rows = p["file_rows"]
        if file_rows is not None and (p["keep_volume"] or not self.ctx.has_output("slab")):
            raise StepError(f"{self.name}: file_rows needs output slot 'slab' and keep_volume false")
        # one part of a job's file is always streamed (open_part refuses a disk without room)
        stream = (self.ctx.has_output("slab") and not p["keep_volume"]
                  and (file_rows is not None or SlabWriter.fits(self.ctx, 4 * rows * cols * cols)))
        writer = SlabWriter(self.name, self.ctx, (rows, cols, cols), block, p["compression"],
                            p["gzip_level"], slab_rows, file_rows) if stream else None
        recon = None if writer else np.empty((rows, cols, cols), dtype=np.float32)
        warned = []
        try:
            for r0 in range(0, rows, block):
                part_in = sino[r0:r0 + block]
                part_out = writer.buffer(part_in.shape[0]) if writer else recon[r0:r0 + block]
                self._reconstruct(tomopy, part_in, part_out, theta, center, kwargs, bound, r0, warned)
                if p["circ_mask_ratio"] is not None:
                    part_out[...] = tomopy.circ_mask(part_out, axis=0, ratio=p["circ_mask_ratio"],
                                                     val=p["circ_mask_value"], ncore=self.ctx.threads)
                if writer:
                    writer.put(r0, part_out)
                release(part_in)
        except BaseException:
            if writer:
                writer.abort()
            raise
        del sino
        if warned:
            self.ctx.warn(f"tomopy.recon ({algorithm}) returned {'; '.join(warned)} on a first call; "
                          f"reconstructed again, the result is plausible")
        if "num_block" in kwargs:
            kwargs.update(block_order=p["block_order"], block_seed=p["block_seed"])
        info = {"algorithm": algorithm, "center": center, "center_source": source, **_recorded(kwargs),
                "clip_negative": clip, "circ_mask_ratio": p["circ_mask_ratio"]}
        self.store.put("recon_info", info)
        self.ctx.results.update(info, shape=[rows, cols, cols])
        if p["keep_volume"]:
            self.store.put("recon", recon)
        if not self.ctx.has_output("slab"):
            return
        detector_rows = int(self.store.get("detector_rows", slab_rows[1]))
        if writer:
            writer.finish(file_rows or slab_rows, detector_rows, info)
        else:                                    # too little room to stream: ct.save_slab's way, at the end
            write_slab(self.name, self.ctx, recon, slab_rows, detector_rows, info, p["compression"], p["gzip_level"])
        self.ctx.results.update(row_offset=int(slab_rows[0]), written=True, peak_rss_mib=peak_rss_mib())

    def _reconstruct(self, tomopy, sino, out, theta, center, kwargs, bound, r0, warned) -> None:
        """Rows ``sino`` (sinogram order) into ``out`` (a view of the volume), checked by the gate:
        an implausible result is computed once more (tomopy.recon leaves its input unchanged),
        then refused."""
        algorithm = self.params["algorithm"]

        def reconstruct():
            if algorithm != "gridrec":
                out[...] = np.float32(1e-6)          # tomopy's own start value (gridrec overwrites all)
            result = tomopy.recon(sino, theta, center=center, algorithm=algorithm, sinogram_order=True,
                                  ncore=self.ctx.threads, nchunk=recon_chunk(sino.shape[0], self.ctx.threads),
                                  init_recon=out, **kwargs)
            if not np.shares_memory(result, out):     # tomopy fills init_recon; copy if it ever does not
                out[...] = result
            if algorithm == "gridrec":
                blank_gridrec_edges(out)

        reconstruct()
        problem = implausible(out, bound)
        if not problem:
            return
        reconstruct()
        again = implausible(out, bound)
        rows = self.store.get("rows") or (0, 0)
        text = self._rows_text(rows[0] + r0, rows[0] + r0 + sino.shape[0])
        if again:
            raise StepError(f"{self.name}: tomopy.recon ({algorithm}) returned {again} for {text}, twice; "
                            f"the result would be meaningless (config field recon.max_value_factor "
                            f"{self.params['max_value_factor']:g} x the largest sinogram value)")
        warned.append(f"{problem} for {text}")

    def _rows_text(self, start: int | None = None, stop: int | None = None) -> str:
        rows = (start, stop) if start is not None else self.store.get("rows")
        raw = self.store.get("raw_file")
        text = f"rows {rows[0]}:{rows[1]}" if rows else "the slab"
        return f"{text} of {raw}" if raw else text

    def _center(self) -> tuple[float, str]:
        if self.params["center"] is not None:
            return float(self.params["center"]), "params"
        if self.ctx.has_input("center"):
            ref = self.ctx.input("center")
            return read_center(ref.path), str(ref.path)
        if "center" in self.store:
            return float(self.store.require("center")), "ct.find_center"
        raise StepError(f"{self.name}: no rotation centre: give the field 'center', the input slot 'center' "
                        f"(a ct.find_center output) or run ct.find_center earlier in the job")
