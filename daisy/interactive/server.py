"""The host's end of a long-lived step process (``daisy_steps.serve``) in one pinned image.

:class:`StepServer` verifies the image's sha256 (``daisy.images.verify_image``), starts
``python3 -m daisy_steps.serve`` in it with ``daisy.images.exec_argv`` (``--containall
--cleanenv``, the step code read-only at /opt/daisy, data folders read-only, the outdir and the
session's scratch folder read-write: the isolation of a pipeline job) and exchanges one JSON line
per request with it. The process keeps its data store until :meth:`close`; arrays come back only
when asked for, through ``.npy`` files in the scratch folder.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from daisy_steps.errors import StepError


class ServerError(StepError):
    """A request the step process refused or could not carry out (one line, naming the cause)."""


class StepServer:
    """One ``daisy_steps.serve`` process in image ``image``."""

    def __init__(self, image: str, scratch: Path, binds_ro: Iterable = (), binds_rw: Iterable = (),
                 threads: int | None = None, warm: Iterable[str] = ()) -> None:
        from daisy import images
        from daisy_steps.pin import code_sha256

        self.image = image
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.binds_ro = sorted({Path(p).resolve() for p in binds_ro})
        self.binds_rw = sorted({Path(p).resolve() for p in binds_rw} | {self.scratch.resolve()})
        self.sif = images.verify_image(image)  # sha256 against the lock, before anything runs in it
        argv = ["python3", "-m", "daisy_steps.serve", "--scratch", str(self.scratch.resolve()), "--image", image,
                "--code-sha256", code_sha256()]
        if threads:
            argv += ["--threads", str(threads)]
        warm = list(warm)
        if warm:
            argv += ["--warm", *warm]
        self.argv = images.exec_argv(image, argv, binds_ro=[p for p in self.binds_ro if p not in self.binds_rw],
                                     binds_rw=self.binds_rw, pwd=self.scratch)
        self.log_path = self.scratch / f"serve-{image}.log"
        self._log = open(self.log_path, "ab")
        self._lock = threading.Lock()
        self._next = 0
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, encoding="utf-8", bufsize=1)
        self.hello = self.request("hello")
        self.start_seconds = time.perf_counter() - started

    # -- requests -------------------------------------------------------------------------------
    def request(self, op: str, **fields: Any) -> Any:
        """Send one request and wait for its answer; :class:`ServerError` when it failed."""
        reply = self.exchange(op, **fields)
        if not reply.get("ok"):
            raise ServerError(f"{reply.get('error')} (image {self.image}, op {op})")
        return reply["result"]

    def exchange(self, op: str, **fields: Any) -> dict[str, Any]:
        """The raw answer (``ok``, ``result`` or ``error``, ``seconds``) of one request."""
        with self._lock:
            if self.proc.poll() is not None:
                raise ServerError(f"the step process in image {self.image} has exited ({self.proc.returncode}); "
                                  f"{self.log_tail()}")
            self._next += 1
            line = json.dumps({"id": self._next, "op": op, **fields})
            try:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
                answer = self.proc.stdout.readline()
            except (BrokenPipeError, OSError) as exc:
                raise ServerError(f"lost the step process in image {self.image} ({exc}); {self.log_tail()}") from None
            if not answer:
                self.proc.wait(timeout=10)
                raise ServerError(f"the step process in image {self.image} died ({self.proc.returncode}) during "
                                  f"'{op}'; {self.log_tail()}")
            reply = json.loads(answer)
            if reply.get("id") != self._next:
                raise ServerError(f"step process in image {self.image}: answer {reply.get('id')} to request {self._next}")
            return reply

    def fetch(self, key: str, index: list | None = None) -> Any:
        """The value of ``key``: an array (read from its .npy, then deleted), or a small value."""
        result = self.request("get", key=key, index=index)
        if result["kind"] == "value":
            return result["value"]
        path = Path(result["path"])
        try:
            if result["kind"] == "npy":
                return np.load(path, allow_pickle=False)
            with np.load(path, allow_pickle=False) as data:
                return {**result["fields"], **{name: data[name] for name in data.files}}
        finally:
            path.unlink(missing_ok=True)

    def send(self, key: str, value: Any) -> Any:
        """Put ``value`` (an array, through a .npy file; or a JSON value) under ``key``."""
        if isinstance(value, np.ndarray):
            path = self.scratch / f"put-{key}-{self._next + 1}.npy"
            np.save(path, value, allow_pickle=False)
            try:
                return self.request("put", key=key, path=str(path))
            finally:
                path.unlink(missing_ok=True)
        if isinstance(value, tuple):
            return self.request("put", key=key, value=list(value), as_tuple=True)
        return self.request("put", key=key, value=value)

    def bound(self, path: Path, write: bool = False) -> bool:
        """Whether ``path`` is inside a folder this process sees (read-write, for ``write``)."""
        path = Path(path).resolve()
        folders = self.binds_rw if write else [*self.binds_ro, *self.binds_rw]
        return any(path.is_relative_to(folder) for folder in folders)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "no log"
        return f"log {self.log_path}: " + " | ".join(text) if text else f"log {self.log_path} is empty"

    # -- lifetime -------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Ask the process to exit (its data store goes with it); kill it after 10 s."""
        if self.proc.poll() is None:
            try:
                self.exchange("shutdown")
            except (ServerError, ValueError):
                pass
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout,):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()

    def __repr__(self) -> str:
        state = "running" if self.alive else "closed"
        return f"<StepServer {self.image} pid {self.proc.pid} {state}>"
