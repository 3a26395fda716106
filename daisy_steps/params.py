"""Parameter schemas (JSON Schema draft 2020-12): fill defaults, validate, explain errors.

Schemas live in ``schemas/`` at the repository root (``schemas/steps/<step>.schema.json`` for
steps, ``schemas/<pipeline>.schema.json`` for pipeline configs). Each has an ``$id`` of the form
``urn:daisy:<relative path without .schema.json>`` so that schemas can ``$ref`` each other.
Inside an image the folder is bound at ``/opt/daisy/schemas``; ``DAISY_SCHEMAS`` overrides.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

from .errors import ParamError

SCHEMA_URN = "urn:daisy:"


def schemas_dir() -> Path:
    """Folder holding the schemas (env ``DAISY_SCHEMAS``, else ``<repo>/schemas``)."""
    env = os.environ.get("DAISY_SCHEMAS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "schemas"


@functools.lru_cache(maxsize=None)
def _load_all(folder: str) -> dict[str, dict]:
    schemas = {}
    for path in sorted(Path(folder).rglob("*.schema.json")):
        try:
            schema = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ParamError(f"schema file {path} is not valid JSON: {exc}") from None
        # "$schema" is dropped: jsonschema would pick its stock validator class for a
        # subschema that names a dialect, and that class does not fill in defaults.
        schema.pop("$schema", None)
        schemas[schema.get("$id", SCHEMA_URN + str(path.relative_to(folder)))] = schema
    return schemas


def schema_id(name: str) -> str:
    """``steps/ct.normalize`` -> ``urn:daisy:steps/ct.normalize``."""
    return SCHEMA_URN + name


def load_schema(name: str) -> dict:
    """The schema with id ``urn:daisy:<name>``; a clear error if there is none."""
    folder = schemas_dir()
    schemas = _load_all(str(folder))
    try:
        return schemas[schema_id(name)]
    except KeyError:
        raise ParamError(f"no schema '{name}' under {folder} (expected {folder}/{name}.schema.json)") from None


def _registry():
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schemas = _load_all(str(schemas_dir()))
    return Registry().with_resources(
        (sid, Resource.from_contents(s, default_specification=DRAFT202012)) for sid, s in schemas.items()
    )


def field_name(path) -> str:
    """``deque(['recon', 'num_iter'])`` -> ``recon.num_iter``; list indices as ``[i]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def explain(error) -> str:
    """One line naming the field, the bad value and what is allowed."""
    where = field_name(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(repr(k) for k in extra)
        prefix = f"field '{where}'" if error.absolute_path else "config"
        return f"{prefix}: unknown key {keys} (allowed: {', '.join(allowed)})"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        full = f"{where}.{missing}" if error.absolute_path else missing
        return f"field '{full}' is required"
    if kind == "enum":
        return f"field '{where}': {error.instance!r} is not one of the allowed values {error.validator_value}"
    if kind == "type":
        return f"field '{where}': {error.instance!r} is not of type {error.validator_value}"
    return f"field '{where}': {error.message}"


def resolve(name: str, params: dict[str, Any] | None, *, what: str = "") -> dict[str, Any]:
    """Return ``params`` with defaults filled in, validated against schema ``name``.

    Raises :class:`ParamError` listing every violation, each naming its field.
    """
    filling = _filling_validator()
    schema = load_schema(name)
    instance = copy.deepcopy(params) if params is not None else {}
    validator = filling(schema, registry=_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        label = f"{what}: " if what else ""
        raise ParamError(label + "; ".join(dict.fromkeys(explain(e) for e in errors)))
    return instance


@functools.lru_cache(maxsize=None)
def _filling_validator():
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def default_of(validator, sub):
        """The property's default, also when the property is only a ``$ref``."""
        if not isinstance(sub, dict):
            return None, False
        if "default" in sub:
            return sub["default"], True
        if "$ref" in sub:
            target = validator._resolver.lookup(sub["$ref"]).contents
            if isinstance(target, dict) and "default" in target:
                return target["default"], True
        return None, False

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for prop, sub in properties.items():
                if prop not in instance:
                    value, found = default_of(validator, sub)
                    if found:
                        instance[prop] = copy.deepcopy(value)
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(base, {"properties": properties_with_defaults})
