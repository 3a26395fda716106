"""Pipeline configs: read (YAML or JSON), migrate to the current version, validate with defaults.

A config names its pipeline (``pipeline: ct|xrd|copy``) and carries ``config_version``; its
schema is ``schemas/<pipeline>.schema.json``. Older versions are migrated by the functions in
:data:`MIGRATIONS` before validation, so an archived config still runs.

After the schema, :func:`check_paths` checks what a schema cannot: every output name a config
gives stays inside the outdir (a plain file name, no ``/``, ``..`` or absolute path), the outdir
holds no character that Snakemake patterns, job shell commands or Apptainer binds would
misread, its nearest existing folder is writable, and no input lies in a folder Apptainer
cannot bind. Each problem names its field; nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from daisy_steps.errors import ParamError
from daisy_steps.params import resolve

CONFIG_VERSION = 1
PIPELINES = ("ct", "xrd", "copy")

#: version -> function migrating a config of that version to version + 1
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


class ConfigError(ParamError):
    """A config file that cannot be read or does not validate."""


def read_config(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a dict (no validation)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def migrate(config: dict[str, Any]) -> dict[str, Any]:
    """Bring ``config`` up to :data:`CONFIG_VERSION`."""
    version = config.get("config_version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION or version < 1:
        raise ConfigError(f"field 'config_version': {version!r} is not supported (this DAISY reads 1..{CONFIG_VERSION})")
    while version < CONFIG_VERSION:
        config = MIGRATIONS[version](config)
        version += 1
        config["config_version"] = version
    return config


def validate(config: dict[str, Any], pipeline: str | None = None, source: str = "config") -> dict[str, Any]:
    """Return the config migrated, validated and with every default filled in."""
    config = migrate(dict(config))
    name = config.get("pipeline", pipeline)
    if pipeline and name != pipeline:
        raise ConfigError(f"{source}: field 'pipeline' is {name!r} but the {pipeline!r} pipeline was asked for")
    if name not in PIPELINES:
        raise ConfigError(f"{source}: field 'pipeline': {name!r} is not one of the allowed values {list(PIPELINES)}")
    config.setdefault("pipeline", name)
    try:
        resolved = resolve(name, config)
    except ParamError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    check_paths(resolved, source)
    return resolved


# -- paths: what a schema cannot check ---------------------------------------------------------

#: fields that name an output inside the outdir (pipeline -> dotted field -> names it may not take:
#: the folders the pipeline writes beside it)
OUTPUT_NAME_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "xrd": {"save.filename": ("blocks", "previews", "xy")},
}
#: fields that name input files (``file`` or ``file.h5:/dataset``)
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "ct": ("input.file",),
    "xrd": ("input.file", "input.dark", "input.flat", "mask.file", "integrate.geometry.poni"),
    "copy": ("input",),
}
#: characters an outdir may not hold: Snakemake patterns ({ }), Apptainer bind specs (, :), and
#: what a shell would interpret in a job's command line (the outdir is in it: the job file and
#: log). An output *name* may hold any of them but braces: it never reaches a shell.
UNSAFE_CHARS = frozenset("{},:;&|$`'\"<>()*?[]!#~\\")


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _unsafe(text: str) -> list[str]:
    return sorted({c for c in text if c in UNSAFE_CHARS or c.isspace() or not c.isprintable()}, key=text.index)


def output_name_problem(field: str, name: str, reserved: tuple[str, ...] = ()) -> str | None:
    """Why ``name`` (the value of output-name ``field``) cannot be a file in its outdir folder; None if it can."""
    if (not name or "/" in name or "\\" in name or name in (".", "..") or os.path.isabs(name)
            or name.startswith("~")):
        return (f"field '{field}': {name!r} is not a plain file name; output names must stay inside the "
                f"outdir (no '/', '..' or absolute path)")
    bad = sorted({c for c in name if c in "{}" or not c.isprintable()}, key=name.index)
    if bad:
        return (f"field '{field}': {name!r} contains {' '.join(map(repr, bad))}, which output names may not "
                f"hold (Snakemake reads braces as wildcards)")
    if name in reserved:
        return f"field '{field}': {name!r} is the name of a folder the pipeline writes beside it"
    return None


def outdir_problem(outdir: str) -> str | None:
    """Why ``outdir`` cannot be the run's folder; None if it can."""
    bad = _unsafe(outdir)
    if bad:
        return (f"field 'outdir': {outdir!r} contains {' '.join(map(repr, bad))}: the outdir is used in Snakemake "
                f"patterns, job command lines and Apptainer binds, which cannot hold {{ }} , : whitespace or "
                f"shell metacharacters; choose another folder")
    path = Path(outdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return f"field 'outdir': {path} exists and is not a folder"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"field 'outdir': {path} cannot be created ({existing} is not a folder)"
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(existing) else "is not writable"
        return f"field 'outdir': {path} cannot be written: {existing} {why}"
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def input_problem(field: str, value: str) -> str | None:
    """Why input ``value`` (field ``field``) cannot be used: a folder Apptainer cannot bind (``,``
    ``:``), braces (Snakemake wildcards), control characters; None if it can. Any other character (spaces, quotes, ``;``, ``$(...)``) is harmless: input names travel in
    JSON job files, never through a shell."""
    from daisy_steps.fileio import FileRef

    if not isinstance(value, str) or not value:
        return None
    if any(not c.isprintable() for c in value):
        return f"field '{field}': {value!r} contains a control character"
    path = Path(FileRef.parse(value).path).expanduser().absolute()
    braces = sorted({c for c in str(path) if c in "{}"})
    if braces:
        return (f"field '{field}': {value!r} contains {' '.join(map(repr, braces))}, which Snakemake reads as "
                f"wildcards in a job's input files; rename or link the file")
    folder = str(path.parent)
    bad = [c for c in ",:" if c in folder]
    if bad:
        return (f"field '{field}': the folder {folder} of {value!r} contains {' '.join(map(repr, bad))}, which "
                f"Apptainer bind paths cannot hold; move or link the file")
    return None


def check_paths(cfg: dict[str, Any], source: str = "config") -> None:
    """Refuse, naming each field, output names that would leave the outdir, an outdir that
    cannot be used or written, and inputs in folders that cannot be bound (see the module doc)."""
    pipeline = cfg.get("pipeline")
    problems = [outdir_problem(str(cfg.get("outdir", "")))]
    for field, reserved in OUTPUT_NAME_FIELDS.get(pipeline, {}).items():
        value = _get(cfg, field)
        if value is not None:
            problems.append(output_name_problem(field, str(value), reserved))
    for field in INPUT_FIELDS.get(pipeline, ()):
        problems.append(input_problem(field, _get(cfg, field)))
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def check_plan_paths(run) -> None:
    """Refuse a plan with a file outside its outdir (every job's outputs, job file, record and
    log): the planner's own guard, after :func:`check_paths` checked the config's fields."""
    root = Path(run.outdir).absolute().resolve()
    for job in run.jobs.values():
        files = [*job.outputs.values(), run.job_file(job.name), run.record_file(job.name), run.log_file(job.name)]
        for path in files:
            if not Path(path).absolute().resolve().is_relative_to(root):
                raise ConfigError(f"job {job.name}: {path} lies outside the outdir {root}")


def load(path: str | Path, pipeline: str | None = None) -> dict[str, Any]:
    """Read and validate a config file."""
    return validate(read_config(path), pipeline, source=str(path))
