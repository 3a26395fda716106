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
    """

    name = "ct.find_center"
    version = "1.0.0"
    images = ("tomopy",)
    libraries = ("numpy", "tomopy", "scipy")
    requires = {"proj": Port("ndarray", "minus-logged projections, float32 (not read by method manual)"),
                "rows": Port("tuple", "(start, stop): the detector rows held (default: all of proj)",
                             optional=True),
                "theta": Port("ndarray", "rotation angles, radians (method entropy only)", optional=True)}
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
        result["center"] = center
        self.store.put("center", center)
        self.ctx.results["center"] = center
        self.ctx.results["center_search"] = {k: v for k, v in result.items() if k != "center"}
        if self.ctx.has_output("center"):
            ref = self.ctx.output("center")
            ref.path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
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
        if method == "vo":
            info.update(smin=smin, smax=smax)
        return center, info
