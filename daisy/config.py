"""Pipeline configs: read (YAML or JSON), migrate to the current version, validate with defaults.

A config names its pipeline (``pipeline: ct|xrd|copy``) and carries ``config_version``; its
schema is ``schemas/<pipeline>.schema.json``. Older versions are migrated by the functions in
:data:`MIGRATIONS` before validation, so an archived config still runs.
"""

from __future__ import annotations

import json
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
        return resolve(name, config)
    except ParamError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load(path: str | Path, pipeline: str | None = None) -> dict[str, Any]:
    """Read and validate a config file."""
    return validate(read_config(path), pipeline, source=str(path))
