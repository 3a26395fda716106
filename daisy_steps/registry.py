"""Every step, by name: found by importing the modules of ``daisy_steps``.

A step is a :class:`~daisy_steps.core.Step` subclass that sets its own ``name``; adding one to
any module of the package needs no edit here. Step modules import only numpy and h5py (and the
standard library) at top level and their heavy libraries (tomopy, pyFAI, ...) inside the methods
that use them, so discovery works in every image and on the host.

``CLASSES``: name -> class; ``STEPS``: name -> ``"module:Class"`` (what ``python3 -m
daisy_steps list`` and ``daisy steps`` show).
"""

from __future__ import annotations

import importlib
import pkgutil

import daisy_steps

from .core import Step
from .errors import StepError

#: modules that hold no steps and must not be imported for discovery
SKIP = frozenset({"daisy_steps.__main__"})


def discover() -> dict[str, type[Step]]:
    """Import every module of the package; return its step classes by name, sorted."""
    found: dict[str, type[Step]] = {}
    for info in pkgutil.walk_packages(daisy_steps.__path__, "daisy_steps."):
        if info.name in SKIP:
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, Step) and obj is not Step
                    and obj.__module__ == module.__name__ and "name" in obj.__dict__):
                continue
            other = found.get(obj.name)
            if other is not None and other is not obj:
                raise StepError(f"step name '{obj.name}' is used by both {other.__module__}:{other.__qualname__} "
                                f"and {obj.__module__}:{obj.__qualname__}")
            found[obj.name] = obj
    return dict(sorted(found.items()))


CLASSES: dict[str, type[Step]] = discover()
STEPS: dict[str, str] = {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in CLASSES.items()}
