"""The original design's algorithm names and keyword arguments, mapped onto DAISY's steps.

The design (HEPiX 2021) drives algorithms as ``engine['normalize'].execute(projs_dataobj=...,
darks_dataobj=..., flats_dataobj=..., output_dataobj='normdata')``; its ``init_dict`` names
each algorithm instance with a ``class_name`` and ``init_paras``, its ``cfg_dict`` holds their run
parameters. Here each design class is a DAISY step; its ``*_dataobj`` keywords bind the step's
data-store ports to the design's names; other keywords are the step's parameters (a few under
their design names, e.g. ``alg_type``). The table is the one of ``docs/notebook.md``.
"""

from __future__ import annotations

from typing import Any

#: design class_name -> DAISY step
CLASSES: dict[str, str] = {
    "LoadHDF5": "hdf5.load",
    "SaveHDF5": "hdf5.save",
    "AlgNormalize": "ct.normalize",
    "AlgAngles": "ct.angles",
    "AlgMinusLog": "ct.minus_log",
    "AlgStripe": "ct.stripe",
    "AlgFindCenter": "ct.find_center",
    "AlgTomopyRecon": "ct.recon",
    "AlgFAIIntegrate": "xrd.integrate",
    "AlgMask": "xrd.mask",
    "LoadFrames": "xrd.load_frames",
}

#: engine names that need no init_dict entry (the design's examples use these)
DEFAULT_NAMES: dict[str, str] = {
    "loadhdf5": "LoadHDF5", "savehdf5": "SaveHDF5", "normalize": "AlgNormalize", "angles": "AlgAngles",
    "minuslog": "AlgMinusLog", "stripe": "AlgStripe", "findcenter": "AlgFindCenter",
    "reconstruct": "AlgTomopyRecon", "azintalg": "AlgFAIIntegrate", "mask": "AlgMask", "loadframes": "LoadFrames",
}

#: per step: design keyword -> the port it binds (besides input_dataobj / output_dataobj)
PORT_KEYWORDS: dict[str, dict[str, str]] = {
    "ct.normalize": {"projs_dataobj": "proj", "flats_dataobj": "flat", "darks_dataobj": "dark"},
    "ct.recon": {"theta_dataobj": "theta", "center_dataobj": "center"},
    "ct.find_center": {"theta_dataobj": "theta"},
    "xrd.integrate": {"mask_dataobj": "mask"},
}

#: per step: design keyword -> step parameter (a dotted path for nested ones)
PARAM_KEYWORDS: dict[str, dict[str, str]] = {
    "ct.recon": {"alg_type": "algorithm", "filter": "filter_name"},
    "xrd.integrate": {
        "directDist": "geometry.fit2d.directDist", "centerX": "geometry.fit2d.centerX",
        "centerY": "geometry.fit2d.centerY", "pixelX": "geometry.fit2d.pixelX", "pixelY": "geometry.fit2d.pixelY",
        "tilt": "geometry.fit2d.tilt", "PlanRotation": "geometry.fit2d.tiltPlanRotation",
        "wavelength": "geometry.wavelength_angstrom", "azimin": "azimuth_range[0]", "azimax": "azimuth_range[1]",
        "radmin": "radial_range[0]", "radmax": "radial_range[1]",
    },
}

#: design keywords that are accepted and ignored (with the reason, for the docs)
IGNORED: dict[str, str] = {"nth": "threads are the session's (Session(threads=...))"}

#: init_paras -> their role: the file a loader reads or a saver writes
FILE_PARAS = {"inputfile_name": "input", "outputfile_name": "output"}


def set_param(params: dict[str, Any], path: str, value: Any) -> None:
    """Set ``geometry.fit2d.centerX`` or ``azimuth_range[0]`` in a nested parameter dict."""
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    if last.endswith("]"):
        name, index = last[:-1].split("[")
        seq = list(node.get(name) or [None, None])
        seq[int(index)] = value
        node[name] = seq
    else:
        node[last] = value


def number(value: Any) -> Any:
    """The design wrote numbers as strings ('0.7293'): make them numbers where they are."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value
