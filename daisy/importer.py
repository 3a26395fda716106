"""Translate the original DAISY design's ``init_dict``/``cfg_dict`` into a DAISY pipeline config.

The original workflows were configured by two dictionaries: ``init_dict`` names algorithm
instances and their class (``class_name``) with constructor parameters (``init_paras``);
``cfg_dict`` holds each instance's run parameters. :data:`CLASSES` is the one mapping table
(``docs/import-config.md`` shows it). Unknown classes and keys are errors that name them.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from daisy_steps.errors import ParamError

HEADER = "# DAISY config translated by `daisy import-config` from {source} (init_dict/cfg_dict)\n"


class DesignConfigError(ParamError):
    """A design dictionary that cannot be translated."""


def _float(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DesignConfigError(f"{where}: {value!r} is not a number") from None


def _int(value, where: str) -> int:
    number = _float(value, where)
    if number != int(number):
        raise DesignConfigError(f"{where}: {value!r} is not a whole number")
    return int(number)


def _set(config: dict, dotted: str, value) -> None:
    node = config
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


#: class_name -> {"pipeline": which pipeline it implies (or None),
#:                "init_paras": {key: (target field, converter)},
#:                "cfg": {key: (target field, converter)}}
#: Targets starting with "@" are roles resolved by :func:`translate` (file names of loaders).
CLASSES: dict[str, dict[str, Any]] = {
    "LoadHDF5": {
        "pipeline": None,
        "init_paras": {"inputfile_name": ("@input", str)},
        "cfg": {"input_path": ("@dataset", str)},
    },
    "AlgFAIIntegrate": {
        "pipeline": "xrd",
        "fixed": {"integrate.unit": "2th_deg"},   # radmin/radmax are 2theta in degrees
        "init_paras": {"wavelength": ("integrate.geometry.wavelength_angstrom", _float)},
        "cfg": {
            "directDist": ("integrate.geometry.fit2d.directDist", _float),      # mm
            "centerX": ("integrate.geometry.fit2d.centerX", _float),            # pixels
            "centerY": ("integrate.geometry.fit2d.centerY", _float),            # pixels
            "pixelX": ("integrate.geometry.fit2d.pixelX", _float),              # µm
            "pixelY": ("integrate.geometry.fit2d.pixelY", _float),              # µm
            "tilt": ("integrate.geometry.fit2d.tilt", _float),                  # degrees
            "PlanRotation": ("integrate.geometry.fit2d.tiltPlanRotation", _float),  # degrees
            "azimin": ("integrate.azimuth_range[0]", _float),                   # chi, degrees
            "azimax": ("integrate.azimuth_range[1]", _float),
            "radmin": ("integrate.radial_range[0]", _float),                    # 2theta, degrees
            "radmax": ("integrate.radial_range[1]", _float),
            "nth": ("threads", _int),                                           # number of threads
        },
    },
    "SaveHDF5": {
        "pipeline": None,
        "init_paras": {"outputfile_name": ("save.filename", str)},
        "cfg": {"output_path": ("@ignored", str)},
    },
    "AlgTomopyRecon": {
        "pipeline": "ct",
        "init_paras": {},
        "cfg": {"center": ("@center", _float), "alg_type": ("recon.algorithm", str)},
    },
    "AlgNormalize": {"pipeline": "ct", "init_paras": {}, "cfg": {}},
    "AlgMinusLog": {"pipeline": "ct", "init_paras": {}, "cfg": {}},
    "AlgAngles": {"pipeline": "ct", "init_paras": {}, "cfg": {}},
}

MASTER = re.compile(r"^(?P<scan>.+)_master\.h5$")
DATA = re.compile(r"^(?P<scan>.+)_data_\d{6}\.h5$")


def translate(init_dict: dict, cfg_dict: dict | None = None, *, outdir: str | None = None,
              data_dir: str | Path | None = None) -> dict[str, Any]:
    """Return a DAISY config (not yet validated) for the design's dictionaries."""
    cfg_dict = cfg_dict or {}
    if not isinstance(init_dict, dict) or not init_dict:
        raise DesignConfigError("init_dict must be a non-empty dict of {instance: {'class_name': ..., 'init_paras': {...}}}")
    for name in cfg_dict:
        if name not in init_dict:
            raise DesignConfigError(f"cfg_dict: key '{name}' names no algorithm of init_dict ({', '.join(init_dict)})")
    config: dict[str, Any] = {"config_version": 1}
    pipelines, loads, ranges = set(), [], {}
    for name, entry in init_dict.items():
        where = f"init_dict['{name}']"
        if not isinstance(entry, dict):
            raise DesignConfigError(f"{where}: expected a dict with 'class_name' and 'init_paras'")
        unknown = set(entry) - {"class_name", "init_paras"}
        if unknown:
            raise DesignConfigError(f"{where}: unknown key {', '.join(map(repr, sorted(unknown)))} (allowed: class_name, init_paras)")
        cls = entry.get("class_name")
        if cls not in CLASSES:
            raise DesignConfigError(f"{where}: unknown class_name {cls!r} (known: {', '.join(sorted(CLASSES))})")
        spec = CLASSES[cls]
        for target, value in spec.get("fixed", {}).items():
            _set(config, target, value)
        if spec["pipeline"]:
            pipelines.add(spec["pipeline"])
        load = {"name": name}
        for section, values in (("init_paras", entry.get("init_paras") or {}), ("cfg", cfg_dict.get(name) or {})):
            label = f"{where}['init_paras']" if section == "init_paras" else f"cfg_dict['{name}']"
            for key, value in values.items():
                if key not in spec[section]:
                    allowed = ", ".join(spec[section]) or "none"
                    raise DesignConfigError(f"{label}: unknown key '{key}' for {cls} (allowed: {allowed})")
                target, convert = spec[section][key]
                value = convert(value, f"{label}['{key}']") if convert not in (str,) else str(value)
                if target.startswith("@"):
                    load[target[1:]] = value
                elif target.endswith("]"):
                    field, index = target[:-1].split("[")
                    ranges.setdefault(field, [None, None])[int(index)] = value
                else:
                    _set(config, target, value)
        if cls == "LoadHDF5":
            if "input" not in load:
                raise DesignConfigError(f"{where}: LoadHDF5 needs init_paras 'inputfile_name'")
            loads.append(load)
        if "center" in load:
            _set(config, "center.method", "manual")
            _set(config, "center.center", load["center"])
    for field, (low, high) in ranges.items():
        if low is None or high is None:
            raise DesignConfigError(f"{field}: both ends are needed (the design's *min and *max keys)")
        _set(config, field, [low, high])
    if len(pipelines) != 1:
        raise DesignConfigError("cannot tell the pipeline: init_dict needs exactly one of AlgFAIIntegrate (xrd) "
                           "or AlgTomopyRecon (ct)" if not pipelines else
                           f"init_dict mixes pipelines {sorted(pipelines)}")
    pipeline = pipelines.pop()
    config["pipeline"] = pipeline
    config["outdir"] = outdir or f"results/{pipeline}-imported"
    base = Path(data_dir) if data_dir is not None else None
    _inputs(config, pipeline, loads, base)
    return config


def _inputs(config: dict, pipeline: str, loads: list[dict], base: Path | None) -> None:
    """Give the loaders' files their roles: the scan's input (and, for XRD, its master file)."""
    def where(name: str) -> str:
        return str(base / name) if base is not None else name

    if not loads:
        raise DesignConfigError("init_dict has no LoadHDF5: nothing to read")
    if pipeline == "ct":
        if len(loads) != 1:
            raise DesignConfigError(f"CT: expected one LoadHDF5 (the raw scan), got {len(loads)}")
        config["input"] = {"file": where(loads[0]["input"]), "layout": "daisy"}
        return
    masters = [ld for ld in loads if MASTER.match(Path(ld["input"]).name)]
    data = [ld for ld in loads if DATA.match(Path(ld["input"]).name)]
    others = [ld for ld in loads if ld not in masters and ld not in data]
    if len(masters) > 1 or len(others) > 1 or (others and (masters or data)):
        raise DesignConfigError("XRD: expected an Eiger master file (scan_NNNNN_master.h5, which also gives the pixel mask) "
                           "with its data files, or one plain HDF5 stack; got " + ", ".join(ld["input"] for ld in loads))
    if others:
        config["input"] = {"file": where(others[0]["input"])}
        if others[0].get("dataset"):
            config["input"]["dataset"] = others[0]["dataset"]
        return
    if masters:
        master = masters[0]["input"]
    else:  # only data files: their master is named after the scan
        master = DATA.match(Path(data[0]["input"]).name)["scan"] + "_master.h5"
    scan = MASTER.match(Path(master).name)["scan"]
    for ld in data:
        if DATA.match(Path(ld["input"]).name)["scan"] != scan:
            raise DesignConfigError(f"XRD: data file {ld['input']} belongs to another scan than {master}")
    # The master links every data file, so the pipeline reads the frames through it.
    config["input"] = {"file": where(master), "format": "eiger"}


# -- reading the design's files -----------------------------------------------------------------

def _literal_dicts(source: str, path: Path) -> dict[str, Any]:
    """``init_dict = {...}`` / ``cfg_dict = {...}`` from Python source, without executing it."""
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise DesignConfigError(f"{path}: not valid Python: {exc.msg} (line {exc.lineno})") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("init_dict", "cfg_dict"):
                try:
                    found[name] = ast.literal_eval(node.value)
                except ValueError:
                    raise DesignConfigError(f"{path}: {name} must be a literal dict (no code)") from None
    return found


def read_design(path: str | Path) -> tuple[dict, dict]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DesignConfigError(f"file {path} does not exist") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DesignConfigError(f"{path}: not valid JSON: {exc}") from None
    else:
        data = _literal_dicts(text, path)
    if "init_dict" not in data:
        raise DesignConfigError(f"{path}: defines no init_dict")
    unknown = set(data) - {"init_dict", "cfg_dict"} if path.suffix == ".json" else set()
    if unknown:
        raise DesignConfigError(f"{path}: unknown key {', '.join(map(repr, sorted(unknown)))} (allowed: init_dict, cfg_dict)")
    return data["init_dict"], data.get("cfg_dict") or {}


def looks_like_design_dicts(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix not in (".py", ".json") or not path.is_file():
        return False
    return "init_dict" in path.read_text(errors="replace")


def translate_file(path: str | Path, outdir: str | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
    init_dict, cfg_dict = read_design(path)
    base = Path(data_dir) if data_dir else Path(path).parent
    return translate(init_dict, cfg_dict, outdir=outdir, data_dir=base)


def mapping_rows() -> list[tuple[str, str, str, str]]:
    """(class_name, section, key, DAISY field) for the docs."""
    rows = []
    for cls, spec in CLASSES.items():
        for section in ("init_paras", "cfg"):
            for key, (target, _) in spec[section].items():
                rows.append((cls, section, key, target))
    return rows
