"""Ports: the data-store keys a step reads (``requires``) and writes (``provides``).

Every step class declares them (as ewokscore tasks declare input and output names)::

    class Recon(Step):
        requires = {"proj": Port("ndarray", "minus-logged projections"),
                    "center": Port("float", "rotation centre", optional=True)}
        provides = {"recon": Port("ndarray", "the reconstructed slab")}
        consumes = ("proj",)

A key written ``{field}`` is named by the step's parameter ``field`` (e.g. hdf5.save's
``{key}``). :func:`check_chain` checks a job's chain against these declarations before any data
is read; the data store lets a step touch only the keys it declares (``daisy_steps.core``).

This module imports no step library: the check needs only the step classes, whose modules
import numpy and h5py at most.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import StepError

#: The kinds a port may have, with what :meth:`Port.check` accepts.
KINDS: dict[str, str] = {
    "ndarray": "a numpy array",
    "float": "a real number (int or float, not bool)",
    "int": "an integer (not bool)",
    "str": "a string",
    "tuple": "a tuple",
    "dict": "a dict",
    "path": "a file path (str or os.PathLike)",
    "frames": "detector frames: a daisy_steps.xrd.frames.FrameSource (streamed) or a numpy array",
    "xrd_result": "a daisy_steps.xrd.results.XRDResult (integrated patterns of a block)",
}

#: Every image (``containers/<name>/``). numpy, h5py and hdf5plugin are in all of them, so a
#: step that needs no more declares ``images = ALL_IMAGES``.
ALL_IMAGES: tuple[str, ...] = ("base", "tomopy", "pyfai")

_TEMPLATE = re.compile(r"^\{(\w+)\}$")


def _is_number(value: Any, integral: bool) -> bool:
    import numbers

    if isinstance(value, bool):
        return False
    try:  # numpy's bool_ is no number either
        import numpy as np

        if isinstance(value, np.bool_):
            return False
    except ImportError:  # pragma: no cover - numpy is everywhere steps run
        pass
    return isinstance(value, numbers.Integral if integral else numbers.Real)


@dataclass(frozen=True)
class Port:
    """One data-store key of a step: its ``kind`` (one of :data:`KINDS`), what it holds, and
    whether the step can do without it (``optional``: a requirement no earlier step need
    provide, or a key the step may leave unwritten)."""

    kind: str
    doc: str
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"port kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def check(self, value: Any) -> bool:
        """Whether ``value`` is of this port's kind."""
        kind = self.kind
        if kind == "ndarray":
            import numpy as np

            return isinstance(value, np.ndarray)
        if kind == "float":
            return _is_number(value, integral=False)
        if kind == "int":
            return _is_number(value, integral=True)
        if kind == "str":
            return isinstance(value, str)
        if kind == "tuple":
            return isinstance(value, tuple)
        if kind == "dict":
            return isinstance(value, dict)
        if kind == "path":
            return isinstance(value, (str, os.PathLike))
        if kind == "frames":
            import numpy as np

            from .xrd.frames import FrameSource

            return isinstance(value, (FrameSource, np.ndarray))
        if kind == "xrd_result":
            from .xrd.results import XRDResult

            return isinstance(value, XRDResult)
        raise AssertionError(kind)  # pragma: no cover - __post_init__ checked the kind


def template_field(key: str) -> str | None:
    """``"{key}"`` -> ``"key"`` (a key named by a parameter); None for a fixed key."""
    match = _TEMPLATE.match(key)
    return match.group(1) if match else None


def bind(ports: Mapping[str, Port], params: Mapping[str, Any]) -> dict[str, Port]:
    """The ports with parameter-named keys (``{field}``) replaced by the parameter's value."""
    out = {}
    for key, port in ports.items():
        field = template_field(key)
        out[str(params[field]) if field else key] = port
    return out


def bind_keys(keys, params: Mapping[str, Any]) -> tuple[str, ...]:
    """Like :func:`bind` for a tuple of keys (``consumes``)."""
    return tuple(str(params[f]) if (f := template_field(k)) else k for k in keys)


def _template_params(name: str, cls, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters a step's templated keys name: given, else the schema's default."""
    params = dict(given or {})
    keys = [*cls.requires, *cls.provides, *cls.consumes]
    wanted = [f for k in keys if (f := template_field(k)) and f not in params]
    if wanted:
        from .params import load_schema

        props = load_schema(f"steps/{name}").get("properties", {})
        for field in wanted:
            if "default" not in props.get(field, {}):
                raise StepError(f"step {name}: parameter '{field}' names a data-store key but is "
                                f"neither given nor has a default in its schema")
            params[field] = props[field]["default"]
    return params


def _listing(available: Mapping[str, str]) -> str:
    if not available:
        return "nothing"
    return ", ".join(f"'{key}' ({step})" for key, step in sorted(available.items()))


def check_chain(job: str, image: str | None, steps: list[dict]) -> None:
    """Refuse a chain of steps that cannot run, before any data is read.

    ``steps`` are a job file's step entries (``{"step": name, "params": ..., "inputs": ...,
    "outputs": ...}``). Raises :class:`StepError` with one line naming the job, the step and
    the key when a step requires a key that no earlier step provides (listing what the earlier
    steps provide), or when ``image`` (the job's image; None: not checked) is not one of the
    images the step can run in. Optional requirements need no provider. A key a step consumes
    (e.g. ct.normalize's ``flat``) is gone for the steps after it.
    """
    from .core import step_class

    available: dict[str, str] = {}  # key -> the step that provides it
    gone: dict[str, str] = {}  # key -> the step that consumed it
    for index, entry in enumerate(steps):
        name = entry.get("step")
        cls = step_class(name)
        where = f"job {job}: step {name} (#{index + 1})"
        if image is not None and image not in cls.images:
            raise StepError(f"{where} cannot run in image '{image}'; it runs in {', '.join(cls.images)}")
        params = _template_params(name, cls, entry.get("params"))
        for key, port in bind(cls.requires, params).items():
            if not port.optional and key not in available:
                why = f"{gone[key]} consumed it" if key in gone else "no earlier step provides it"
                raise StepError(f"{where} requires '{key}' ({port.doc}) but {why}; "
                                f"the earlier steps provide {_listing(available)}")
        for key in bind_keys(cls.consumes, params):
            if available.pop(key, None) is not None:
                gone[key] = name
        for key in bind(cls.provides, params):
            available[key] = name
            gone.pop(key, None)
