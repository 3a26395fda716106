"""Hashing the large outputs of finished jobs while the later jobs run.

The provenance names every output's sha256. Jobs hash their outputs up to their hash limit
themselves (``daisy_steps.core.DEFAULT_HASH_LIMIT``); larger ones, a CT slab file of several GiB,
were left to the provenance, after the last job, on the run's critical path (3.1 s for the 4 GiB
slab of a 1500 x 1024 x 1024 scan). While a run lasts, a thread of the Snakemake process that
runs it (:func:`start`, from ``daisy.workflow.start_run``) watches the records folder: when a
job's record appears, the job's final outputs that it left unhashed are hashed into the
stat-keyed cache of :mod:`daisy.hashing` while the next jobs (the gather) run. The provenance
then finds them cached; a file still being hashed is waited for, not hashed twice. The same
thread imports what the provenance will need (:data:`PRELOAD`) while the first job runs.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterable

#: how often the records folder is looked at (a record appears when its job has finished)
POLL_SECONDS = 0.2


#: what the provenance imports when it is written (the RO-Crate library: about 0.13 s), imported
#: by the watching thread while the first job runs, off the run's critical path
PRELOAD = ("rocrate.rocrate",)


def preload() -> None:
    """Import :data:`PRELOAD` (best effort: the provenance imports, and reports, what fails)."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            pass


class HashAhead:
    """The watching thread of one run (see the module's text)."""

    def __init__(self, records: Path, targets: Iterable[str]) -> None:
        self.records = Path(records)
        self.targets = {str(Path(t).resolve()) for t in targets}
        self.busy: set[str] = set()
        self.hashed: list[str] = []
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="daisy-hash-ahead", daemon=True)

    def _watch(self) -> None:
        seen: set[Path] = set()
        if not self.stopping.wait(POLL_SECONDS):  # the first job under way: the provenance's imports
            preload()
        while not self.stopping.wait(POLL_SECONDS):
            for path in sorted(self.records.glob("*.json")):
                if path in seen:
                    continue
                seen.add(path)
                try:
                    record = json.loads(path.read_text())      # written atomically: whole or absent
                except (OSError, ValueError):
                    continue
                if record.get("status") != "completed":
                    continue
                for output, info in (record.get("outputs") or {}).items():
                    if isinstance(info, dict) and not info.get("sha256") and str(Path(output).resolve()) in self.targets:
                        self._hash(str(Path(output).resolve()))
                        if self.stopping.is_set():
                            return

    def _hash(self, path: str) -> None:
        from .hashing import sha256_files

        with self.changed:
            self.busy.add(path)
        try:
            sha256_files([path], workers=1)
            self.hashed.append(path)
        except OSError:
            pass                       # gone or unreadable: the provenance will say so itself
        finally:
            with self.changed:
                self.busy.discard(path)
                self.changed.notify_all()

    def wait_for(self, paths: Iterable) -> None:
        """Return once none of ``paths`` (resolved) is being hashed by this thread."""
        if threading.current_thread() is self.thread:
            return
        wanted = {str(p) for p in paths}
        with self.changed:
            self.changed.wait_for(lambda: not (self.busy & wanted))

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()


_current: HashAhead | None = None


def start(records: Path, targets: Iterable[str]) -> HashAhead:
    """Start watching ``records`` for the run whose final outputs are ``targets``."""
    global _current
    stop()
    _current = HashAhead(records, targets)
    _current.thread.start()
    return _current


def wait_for(paths: Iterable) -> None:
    """Wait until the running watcher (if any) is not hashing any of ``paths`` (resolved)."""
    if _current is not None:
        _current.wait_for(paths)


def stop() -> None:
    """Stop the watcher (at the end of the run; a file it is hashing is finished first)."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None
