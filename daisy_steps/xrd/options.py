"""Optional parts of ``xrd.integrate``: per-frame normalization factors and sigma-clipping.

Kept apart from ``steps.py`` so that a config without them runs exactly the calls it always did
(``ai.integrate1d(frame, npt, **kwargs)``, the same settings in the result file).

Sigma-clipping uses pyFAI's ``sigma_clip_ng`` (pyFAI >= 0.21; 2026.9 also keeps the legacy 2D-based
``sigma_clip_legacy``): per radial bin, pixels further than ``threshold`` standard deviations
from the bin's mean are rejected, iterating up to ``max_iter`` times (single crystal spots,
zingers on powder rings). pyFAI requires an error model and no pixel splitting for it, hence its
own ``method`` (default no/csr/cython) and ``error_model`` (default azimuthal). 2D cakes are
never clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ERROR_MODELS = {"azimuthal": "azimuthal", "poisson": "poisson"}


def clip_enabled(params: dict[str, Any]) -> bool:
    return bool((params.get("sigma_clip") or {}).get("enabled"))


def method_1d(params: dict[str, Any]) -> list[str]:
    """The method requested for the 1D patterns (sigma-clipping has its own)."""
    return list(params["sigma_clip"]["method"]) if clip_enabled(params) else list(params["method"])


def factor_kwargs(norm: np.ndarray | None, k: int) -> dict[str, Any]:
    """pyFAI's ``normalization_factor`` of the k-th frame of the block (nothing without one)."""
    return {} if norm is None else {"normalization_factor": float(norm[k])}


def integrate_1d(ai, frame: np.ndarray, npt: int, kwargs: dict[str, Any], params: dict[str, Any],
                 norm: np.ndarray | None, k: int):
    """The 1D pattern of one frame: plain ``integrate1d`` or ``sigma_clip_ng``."""
    if not clip_enabled(params):
        return ai.integrate1d(frame, npt, **kwargs, **factor_kwargs(norm, k))
    clip = params["sigma_clip"]
    clip_kwargs = {key: kwargs[key] for key in ("unit", "radial_range", "azimuth_range", "mask",
                                                "polarization_factor", "dark", "flat", "correctSolidAngle")}
    return ai.sigma_clip_ng(frame, npt, method=tuple(clip["method"]), thres=clip["threshold"],
                            max_iter=clip["max_iter"], error_model=ERROR_MODELS[clip["error_model"]],
                            **clip_kwargs, **factor_kwargs(norm, k))


def extra_settings(params: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    """Settings recorded in the result file for the options in use (none for plain runs)."""
    out: dict[str, Any] = {}
    if clip_enabled(params):
        clip = params["sigma_clip"]
        out["sigma_clip"] = {"function": "sigma_clip_ng", "threshold": clip["threshold"],
                             "max_iter": clip["max_iter"], "error_model": clip["error_model"],
                             "method": list(clip["method"])}
    if info is not None:
        out["normalization"] = {k: v for k, v in info.items() if k != "arrays"}
    return out


def frame_arrays(norm: np.ndarray | None, info: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """Per-frame values kept beside the patterns (/entry/integrate_1d/<name>)."""
    if norm is None:
        return {}
    return {"normalization_factor": np.asarray(norm, np.float64), **(info or {}).get("arrays", {})}
