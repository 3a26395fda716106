"""What both watchers share: the job, its steps set up in memory, stop signals, the record.

A watch job file is a pipeline job file (``job_version``, ``job``, ``threads``, ``code_sha256``,
``image``, ``steps``, ``record``) plus an ``online`` object (the watch folder, the end-of-scan
rules, the writer's side file). Its steps are the offline pipeline's chain for the same config:
the code pin is checked, every step's parameters are validated against its schema and the chain
against the steps' ports and the image, before any frame is read, exactly as
``python3 -m daisy_steps run`` does. The one difference: the chain's first step (``xrd.load_frames``
/ ``ct.load``) is played by a follower of the growing scan, which puts the same data-store keys.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..core import (DataStore, JobContext, Step, _describe, check_code_pin, job_image, library_versions, load_job,
                    now, set_thread_pools, step_class, usable_cores, DEFAULT_HASH_LIMIT, RECORD_VERSION)
from ..errors import StepError
from ..fileio import FileRef, OutputSet, write_json_atomic
from ..params import resolve
from ..ports import check_chain

#: exit status of a watcher stopped before the scan ended (resumable)
EXIT_STOPPED = 3
ONLINE_DEFAULTS = {"end_marker": None, "expected": None, "idle_timeout": 60.0, "frame_timeout": 10.0,
                   "written_log": None, "poll": 0.01, "max_batch": 4, "pattern": "*", "stdin_guard": True,
                   "quicklook_rows": 32}


class Watch:
    """A watch job: validated steps, a stop event (SIGTERM, SIGINT, or the host closing stdin),
    the writer lock of the watch folder, and the record."""

    def __init__(self, job_path, pipeline: str) -> None:
        self.log = logging.getLogger(f"daisy.online.{pipeline}")
        self.job = load_job(job_path)
        self.pipeline = pipeline
        self.code = check_code_pin(self.job)
        self.threads = min(int(self.job.get("threads") or usable_cores()), usable_cores())
        set_thread_pools(self.threads)
        self.online = {**ONLINE_DEFAULTS, **(self.job.get("online") or {})}
        if not self.online.get("folder") or not self.online.get("source"):
            raise StepError(f"job file {job_path}: 'online' needs 'folder' and 'source'")
        self.folder = Path(self.online["folder"])
        self.folder.mkdir(parents=True, exist_ok=True)
        self.image = job_image(self.job)
        self.prepared: list[tuple[type[Step], dict, dict]] = []
        for index, entry in enumerate(self.job["steps"]):
            cls = step_class(entry.get("step"))
            params = resolve(f"steps/{cls.name}", entry.get("params", {}), what=f"step {cls.name} (#{index + 1})")
            self.prepared.append((cls, entry, params))
        check_chain(self.job["job"], self.image, [{**e, "params": p} for _, e, p in self.prepared])
        self.stop = threading.Event()
        self.started = now()
        self.steps_done: dict[str, dict[str, Any]] = {}
        self.libraries: dict[str, str] = {}
        self._lock_handle = None
        self.chain_seconds: dict[str, float] = {}   # the last run_chain's seconds per step

    # -- lifecycle -----------------------------------------------------------------------------
    def install_stop(self) -> None:
        """SIGTERM/SIGINT, or EOF on stdin (the host ``daisy watch`` died), end the watch after
        the frame in hand: the result file stays consistent and a restart resumes from it."""
        def handler(signum, _frame):
            self.log.warning("signal %d: stopping after the current frame", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if self.online["stdin_guard"] and not sys.stdin.isatty():
            def guard():
                try:  # os.read, not sys.stdin: a daemon thread must not hold the buffered reader's lock
                    while os.read(0, 1):
                        pass
                except OSError:
                    pass
                self.log.warning("the host process closed stdin: stopping")
                self.stop.set()

            threading.Thread(target=guard, name="daisy-stdin-guard", daemon=True).start()

    def lock(self, timeout: float = 60.0) -> None:
        """One writer per watch folder: wait for an earlier instance to let go (it may still be
        finishing its last frame after its host was killed)."""
        handle = open(self.folder / ".writer.lock", "a+")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StepError(f"another watcher is writing into {self.folder} (lock {handle.name})") from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} {os.getpid()} {now()}\n")
        handle.flush()
        self._lock_handle = handle

    # -- steps ---------------------------------------------------------------------------------
    def entry(self, name: str) -> tuple[type[Step], dict, dict]:
        for cls, entry, params in self.prepared:
            if cls.name == name:
                return cls, entry, params
        raise StepError(f"job {self.job['job']}: no step {name} in its chain")

    def make(self, name: str, store: DataStore, params: dict | None = None) -> Step:
        cls, entry, resolved = self.entry(name)
        ctx = JobContext(entry.get("inputs", {}), {}, OutputSet(), self.threads, cls.name,
                         job_name=self.job["job"], image=self.job.get("image"), code_sha256=self.code)
        return cls(resolved if params is None else params, store, ctx)

    def note_step(self, step: Step, started: str, seconds: float, results: dict | None = None) -> None:
        """Keep what the record says of one step (the last call wins; seconds add up)."""
        entry = next(e for c, e, _ in self.prepared if c.name == step.name)
        previous = self.steps_done.get(step.name)
        self.steps_done[step.name] = {
            "step": step.name, "version": step.version, "image": self.image, "params": step.params,
            "inputs": entry.get("inputs", {}), "outputs": {},
            "started": previous["started"] if previous else started, "ended": now(),
            "seconds": round(seconds + (previous["seconds"] if previous else 0.0), 6),
            "results": results if results is not None else dict(step.ctx.results)}
        self.libraries.update(library_versions(type(step).libraries))

    def run_chain(self, names: list[str], store: DataStore, params: dict[str, dict] | None = None,
                  record: bool = True) -> dict[str, Step]:
        """Run steps ``names`` of the job's chain on ``store``, in memory, as the job runner does
        (initialize, execute, finalize; declared provides checked)."""
        out = {}
        self.chain_seconds = {}
        for name in names:
            step = self.make(name, store, (params or {}).get(name))
            started, clock = now(), time.perf_counter()
            try:
                step.initialize()
                step.execute()
            finally:
                step.finalize()
            self.chain_seconds[name] = round(time.perf_counter() - clock, 3)
            missing = [k for k, port in step.store.provides.items() if not port.optional and k not in store]
            if missing:
                raise StepError(f"step {name} finished without putting {', '.join(missing)} in the data store")
            if record:
                self.note_step(step, started, time.perf_counter() - clock)
            out[name] = step
        return out

    # -- the record ----------------------------------------------------------------------------
    def record(self, status: str, results: dict[str, Any], error: str | None = None) -> dict[str, Any]:
        """The job record (the format of ``daisy_steps.core.run_job``'s), without files yet."""
        steps = [self.steps_done[c.name] for c, _, _ in self.prepared if c.name in self.steps_done]
        for step in steps:
            if step["step"] == self.prepared[0][0].name:
                step["results"] = {**step["results"], **results}
        record = {"record_version": RECORD_VERSION, "job": self.job.get("job"), "status": status,
                  "host": socket.gethostname(), "image": self.job.get("image"), "code_sha256": self.code,
                  "started": self.started, "ended": now(), "steps": steps, "libraries": self.libraries,
                  "online": {k: v for k, v in self.online.items() if k != "stdin_guard"}}
        if error:
            record["error"] = error
        return record

    def write_record(self, record: dict[str, Any], inputs: list[str], outputs: list[str]) -> None:
        limit = int(self.job.get("hash_limit", DEFAULT_HASH_LIMIT))
        record["inputs"] = {p: _describe(Path(p), limit) for p in sorted(set(inputs)) if Path(p).is_file()}
        record["outputs"] = {p: _describe(Path(p), limit) for p in sorted(set(outputs)) if Path(p).is_file()}
        if self.job.get("record"):
            write_json_atomic(self.job["record"], record)


class Ending:
    """When the scan is over: the end marker exists, the expected frame count is reached, or no
    new frame came for ``idle_timeout`` seconds (the writer died)."""

    def __init__(self, online: dict[str, Any], stop_index: int | None) -> None:
        self.marker = Path(online["end_marker"]) if online.get("end_marker") else None
        self.idle_timeout = float(online["idle_timeout"]) if online.get("idle_timeout") else None
        self.stop_index = stop_index
        self.last_progress = time.monotonic()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def marker_seen(self) -> bool:
        return self.marker is not None and self.marker.exists()

    def count_reached(self, next_index: int) -> bool:
        return self.stop_index is not None and next_index >= self.stop_index

    def idle(self) -> float:
        return time.monotonic() - self.last_progress

    def idle_over(self) -> bool:
        return self.idle_timeout is not None and self.idle() > self.idle_timeout


def input_path(text: str) -> str:
    return str(FileRef.parse(text).path) if text else text


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
