"""From an interactive session to a pipeline config: what was tried last becomes a run.

Each pipeline section takes the parameters of the last (non-sweep) call of its step; values
picked in sweeps (``Sweep.choose``) go on top. Steps the session never ran keep the pipeline's
defaults, except ct.stripe, which is switched off (``method: none``) when the session did not
remove stripes: the run then does what the session did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daisy_steps.errors import StepError

from . import design

#: step -> the pipeline config section of its parameters
SECTIONS: dict[str, str] = {
    "ct.normalize": "normalize", "ct.angles": "angles", "ct.stripe": "stripe", "ct.find_center": "center",
    "ct.recon": "recon", "xrd.integrate": "integrate", "xrd.mask": "mask",
}
#: parameters a section does not take from the step (the pipeline sets them)
SKIP = {"ct.recon": ("center",), "xrd.mask": ()}


def apply_choice(config: dict, step: str, param: str, value: Any) -> None:
    """Write a value picked for ``step``'s ``param`` into a pipeline config dict."""
    if step == "ct.recon" and param == "center":
        config["center"] = {**{k: v for k, v in (config.get("center") or {}).items()
                               if k in ("row", "n_rows")}, "method": "manual", "center": float(value)}
        return
    if step not in SECTIONS:
        raise StepError(f"step {step} has no section in a pipeline config")
    design.set_param(config.setdefault(SECTIONS[step], {}), param, value)


def _last(session, step: str):
    for call in reversed(session.history):
        if call.step == step and not (call.name or "").startswith("sweep"):
            return call
    return None


def _ct_input(session) -> dict[str, Any]:
    load = _last(session, "ct.load")
    if load is not None:
        from daisy_steps.fileio import FileRef

        ref = FileRef.parse(load.inputs["raw"])
        keep = ("layout", "data_path", "flat_path", "dark_path", "image_key_path", "angles_path", "angle_units")
        out = {"file": str(ref.path), **{k: load.params[k] for k in keep if k in load.params}}
        if ref.dataset:
            out["data_path"] = ref.dataset
        return out
    norm = _last(session, "ct.normalize")
    if norm is None:
        raise StepError("the session loaded no scan (ct.load, or hdf5.load feeding ct.normalize): give input_file")
    from daisy_steps.fileio import FileRef

    paths, files = {}, set()
    for port, field in (("proj", "data_path"), ("flat", "flat_path"), ("dark", "dark_path")):
        key = norm.bind_in.get(port, port)
        loader = next((c for c in reversed(session.history) if c.step == "hdf5.load" and c.params.get("key") == key), None)
        if loader is None:
            raise StepError(f"cannot tell which file '{key}' came from: give input_file")
        ref = FileRef.parse(loader.inputs["source"])
        files.add(str(ref.path))
        paths[field] = ref.dataset
    if len(files) != 1:
        raise StepError(f"projections, flats and darks come from several files ({', '.join(sorted(files))})")
    return {"file": files.pop(), "layout": "daisy", **paths}


def session_config(session, pipeline: str | None, input_file, outdir, extra: dict) -> dict[str, Any]:
    pipeline = pipeline or ("xrd" if any(c.step.startswith("xrd.") for c in session.history) else "ct")
    config: dict[str, Any] = {"config_version": 1, "pipeline": pipeline, "threads": session.threads}
    if pipeline == "ct":
        config["input"] = {"file": str(input_file)} if input_file else _ct_input(session)
        for step in ("ct.normalize", "ct.angles", "ct.stripe", "ct.find_center", "ct.recon"):
            call = _last(session, step)
            if call is not None:
                config[SECTIONS[step]] = {k: v for k, v in call.params.items() if k not in SKIP.get(step, ())}
        if _last(session, "ct.stripe") is None:
            config["stripe"] = {"method": "none"}
        recon = _last(session, "ct.recon")
        if recon is not None and recon.params.get("center") is not None and ("ct.recon", "center") not in session.chosen:
            apply_choice(config, "ct.recon", "center", recon.params["center"])
    elif pipeline == "xrd":
        load = _last(session, "xrd.load_frames")
        if input_file:
            config["input"] = {"file": str(input_file)}
        elif load is not None:
            config["input"] = {"file": str(Path(load.inputs["source"].split(":/")[0])),
                               "format": load.params.get("format", "auto")}
        else:
            raise StepError("the session loaded no frames (xrd.load_frames): give input_file")
        for step in ("xrd.mask", "xrd.integrate"):
            call = _last(session, step)
            if call is not None:
                config[SECTIONS[step]] = dict(call.params)
    else:
        raise StepError(f"pipeline {pipeline!r}: sessions make ct and xrd configs")
    for (step, param), value in session.chosen.items():
        apply_choice(config, step, param, value)
    config["outdir"] = str(outdir) if outdir else str((session.outdir or Path.cwd()) / f"{pipeline}-run")
    _merge(config, extra)
    return config


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
