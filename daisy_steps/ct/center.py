"""ct.find_center: the rotation centre, found on a few sinograms (or given), for every slab."""

from __future__ import annotations

import json

import numpy as np

from ..core import Step
from ..errors import StepError
from ..ports import Port


class FindCenter(Step):
    """Rotation-axis position in pixels (tomopy's convention: column of the axis on the detector).

    ``vo``: Vo's Fourier method (tomopy.find_center_vo); ``entropy``: Donath's entropy method
    (tomopy.find_center, Nelder-Mead on gridrec slices); ``manual``: the value ``center``.
    Each of ``n_rows`` sinograms around detector row ``row`` gives a centre; the median is the
    result. Expects minus-logged projections in ``proj`` (ct.minus_log before it). Puts
    ``center`` in the store and in the job record; output slot ``center`` (JSON), if given,
    lets later jobs (every slab) use the same value via ct.recon's input slot ``center``.

    Gate: a centre found outside the detector, not finite, or (vo) within ``edge_margin``
    pixels of the ends of its search range (or beyond them) is no result: the true centre lies
    outside the range or the sinograms hold no usable signal. ``on_edge`` fail (default) ends
    the job naming the range and the fields to change; warn completes it with a warning.
    """

    name = "ct.find_center"
    version = "1.1.0"
    images = ("tomopy",)
    libraries = ("numpy", "tomopy", "scipy")
    requires = {"proj": Port("ndarray", "minus-logged projections, float32 (not read by method manual)"),
                "rows": Port("tuple", "(start, stop): the detector rows held (default: all of proj)",
                             optional=True),
                "theta": Port("ndarray", "rotation angles, radians (method entropy only)", optional=True),
                "raw_file": Port("path", "the raw file (named in messages)", optional=True)}
    provides = {"center": Port("float", "rotation centre, pixels (tomopy's convention)")}

    def execute(self) -> None:
        p = self.params
        method = p["method"]
        result: dict = {"method": method}
        if method == "manual":
            if p["center"] is None:
                raise StepError(f"{self.name}: method 'manual' needs the field 'center'")
            center = float(p["center"])
        else:
            if p["center"] is not None:
                raise StepError(f"{self.name}: field 'center' is only used with method 'manual', not '{method}'")
            center, result = self._search(method)
            self._check(center, result)
        result["center"] = center
        self.store.put("center", center)
        self.ctx.results["center"] = center
        self.ctx.results["center_search"] = {k: v for k, v in result.items() if k != "center"}
        if self.ctx.has_output("center"):
            ref = self.ctx.output("center")
            saved = {k: v for k, v in result.items() if k not in ("columns", "search_range")}  # the record has them
            from .output import writing

            with writing(self.name, self.ctx.final_output("center").path):
                ref.path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        self.log.info("rotation centre %.3f (%s)", center, method)

    def _search(self, method: str) -> tuple[float, dict]:
        import tomopy

        p = self.params
        proj = self.store.require("proj")
        if proj.dtype != np.float32:
            raise StepError(f"{self.name}: projections are {proj.dtype}; the centre is searched on "
                            f"minus-logged data (ct.normalize and ct.minus_log before ct.find_center)")
        r0, r1 = self.store.get("rows", (0, proj.shape[1]))
        row = (r0 + r1) // 2 if p["row"] is None else p["row"]
        half = p["n_rows"] // 2
        wanted = list(range(row - half, row - half + p["n_rows"]))
        if wanted[0] < r0 or wanted[-1] >= r1:
            raise StepError(f"{self.name}: rows {wanted[0]}..{wanted[-1]} around row {row} are not all among the "
                            f"loaded detector rows {r0}:{r1}; load them (ct.load row_start/row_stop) or move 'row'")
        reach = min(50.0, proj.shape[2] / 4.0)
        smin = -reach if p["vo_smin"] is None else p["vo_smin"]
        smax = reach if p["vo_smax"] is None else p["vo_smax"]
        per_row = []
        for absolute in wanted:
            ind = absolute - r0
            if method == "vo":
                c = tomopy.find_center_vo(proj, ind=ind, smin=smin, smax=smax, srad=p["vo_srad"],
                                          step=p["vo_step"], ratio=p["vo_ratio"], drop=p["vo_drop"],
                                          ncore=self.ctx.threads)
            else:
                theta = self.store.require("theta")
                c = tomopy.find_center(proj, theta, ind=ind, init=p["entropy_init"], tol=p["entropy_tol"],
                                       mask=True, ratio=p["entropy_ratio"])
            per_row.append(float(np.asarray(c).reshape(-1)[0]))
        center = float(np.median(per_row))
        info = {"method": method, "rows": wanted, "per_row": per_row}
        info["columns"] = int(proj.shape[2])
        if method == "vo":
            info.update(smin=smin, smax=smax, search_range=list(vo_search_range(proj.shape[0], proj.shape[2], smin, smax)))
        return center, info

    def _check(self, center: float, info: dict) -> None:
        """The gate: a centre outside the detector, not finite, or on the edge of its search range."""
        p = self.params
        rows = info["rows"]
        raw = self.store.get("raw_file")
        what = (f"the centre {center:.3f} found by {info['method']} in rows {rows[0]}..{rows[-1]}"
                + (f" of {raw}" if raw else ""))
        columns = info["columns"]
        if not np.isfinite(center) or not 0 <= center <= columns - 1:
            raise StepError(f"{self.name}: {what} is outside the detector's columns 0..{columns - 1}: no usable "
                            f"result; check the data, or give the centre (config field center.method manual)")
        if "search_range" not in info:
            return
        lo, hi = info["search_range"]
        margin = p["edge_margin"]
        if lo + margin < center < hi - margin:
            return
        text = (f"{what} lies on the edge of its search range {lo:g}..{hi:g} (within edge_margin {margin:g} px; "
                f"vo_smin {info['smin']:g}, vo_smax {info['smax']:g} from the detector centre): the true centre "
                f"is probably outside the range, or the sinograms hold no usable signal")
        if p["on_edge"] == "fail":
            raise StepError(f"{self.name}: {text}; widen center.vo_smin/center.vo_smax, check the data, or give the "
                            f"centre (center.method manual); config field center.on_edge: warn accepts it")
        self.ctx.warn(text)


def vo_search_range(n_angles: int, columns: int, smin: float, smax: float) -> tuple[float, float]:
    """First and last centre (columns) of tomopy.find_center_vo's coarse search, computed as
    tomopy 1.15 computes them (its search is on a 4x downsampled sinogram above 4e6 pixels)."""
    scale = 4 if n_angles * columns > 4e6 else 1
    ncol = columns // scale
    smin, smax = smin / scale, smax / scale
    cen = (ncol - 1.0) / 2.0
    lo = int(np.int16(np.clip(smin + cen, 0, ncol - 1) - cen))
    hi = int(np.int16(np.clip(smax + cen, 0, ncol - 1) - cen))
    return float((ncol // 2 + lo) * scale), float((ncol // 2 + hi) * scale)
