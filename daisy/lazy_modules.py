"""Modules loaded on their first use instead of at import.

``daisy run`` imports Snakemake in its own process. Snakemake's executor-plugin registry imports
every installed executor plugin, and the Slurm plugin imports pandas at the top of its efficiency
report module, though pandas is used only when that report is written: about 0.1-0.3 s of every
run's start, Slurm or not (``bench/engine_floor.py``). A deferred module stands in for it in
``sys.modules``: ``import pandas as pd`` gets the stand-in, and its first attribute looked up
imports the real module, in full, which then answers every lookup.

(``importlib.util.LazyLoader`` does not serve here: on Python 3.11 the next ``import`` statement
of the module reads its ``__spec__``, which loads it.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

#: modules ``daisy run`` defers (used by Snakemake or a plugin only inside a few functions)
DEFERRED = ("pandas",)

_lock = threading.RLock()


class DeferredModule(types.ModuleType):
    """Stands in for a module until an attribute other than its spec is looked up."""

    def __init__(self, name: str, spec) -> None:
        super().__init__(name)
        self.__spec__ = spec
        self.__dict__["_real"] = None

    def __getattr__(self, attr: str):   # only for attributes the stand-in does not have
        return getattr(self._load(), attr)

    def _load(self) -> types.ModuleType:
        with _lock:
            real = self.__dict__["_real"]
            if real is None:
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                real = importlib.import_module(self.__name__)
                self.__dict__["_real"] = real
            return real


def defer(name: str) -> bool:
    """Put a :class:`DeferredModule` in ``sys.modules`` for ``name``. Returns whether it did
    (not when the module is loaded already, or not installed)."""
    with _lock:
        if name in sys.modules:
            return False
        spec = importlib.util.find_spec(name)
        if spec is None:
            return False
        sys.modules[name] = DeferredModule(name, spec)
        return True


def defer_all() -> list[str]:
    """Defer every module of :data:`DEFERRED`; the names deferred."""
    return [name for name in DEFERRED if defer(name)]
