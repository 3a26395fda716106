"""One run per outdir at a time: an ``fcntl.flock`` on ``<outdir>/.daisy.lock``.

``daisy run`` takes the lock after planning and before it writes anything into the outdir, and
holds it until it exits; plain ``snakemake`` takes it in ``onstart``. A second run on the same
outdir is refused with a message naming the outdir and the process that holds it. The lock
belongs to the open file: the kernel drops it when the holding process exits, however it ends
(even SIGKILL), so a stale lock file from a dead process never blocks; its content (pid, host,
start, command) only informs the message. Taking the lock again in the same process is a no-op
(``daisy run`` holds it while its in-process Snakemake's ``onstart`` asks for it too). The file
descriptor is not inherited by child processes (Python opens files non-inheritable), so jobs
and image holders never keep it. On NFS, Linux emulates ``flock`` with a whole-file POSIX lock,
which also works across hosts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from daisy_steps.errors import StepError

LOCK_NAME = ".daisy.lock"
_held: dict[Path, "OutdirLock"] = {}


class OutdirBusy(StepError):
    """Another process holds the outdir's lock, or it cannot be taken (one line for the user;
    a StepError, so ``daisy`` prints it as one line and exits 2, and the Snakefile's setup and
    ``onstart`` handlers turn it into a WorkflowError)."""


class OutdirLock:
    """The lock of one outdir, held by this process."""

    def __init__(self, outdir: str | os.PathLike) -> None:
        self.outdir = Path(outdir).absolute()
        self.path = self.outdir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "OutdirLock":
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutdirBusy(f"cannot lock the outdir {self.outdir}: {exc.strerror or exc} ({self.path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise OutdirBusy(f"the outdir {self.outdir} is in use by another DAISY run{holder}; wait for it to "
                             f"finish or choose another outdir (the lock is {self.path}; it is released when "
                             f"that process ends)") from None
        except OSError as exc:
            os.close(fd)
            raise OutdirBusy(f"cannot lock the outdir {self.outdir}: {exc.strerror or exc} ({self.path})") from None
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)[:500]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass          # a full disk must not hide the lock itself; the message just says less
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "OutdirLock":
        return self

    def __exit__(self, *exc) -> None:
        release(self.outdir)


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(info, dict) or "pid" not in info:
        return ""
    return (f" (pid {info.get('pid')} on {info.get('host', '?')}, since {info.get('started', '?')}: "
            f"{info.get('command', '?')})")


def acquire(outdir: str | os.PathLike) -> OutdirLock:
    """Take ``outdir``'s lock for this process (a no-op if it holds it already); raises
    :class:`OutdirBusy` naming the outdir and the holder if another process has it."""
    key = Path(outdir).absolute().resolve()
    lock = _held.get(key)
    if lock is None or lock.fd is None:
        lock = _held[key] = OutdirLock(key).acquire()
    return lock


def release(outdir: str | os.PathLike) -> None:
    """Release this process's lock of ``outdir`` (if it holds it)."""
    lock = _held.pop(Path(outdir).absolute().resolve(), None)
    if lock is not None:
        lock.release()


def release_all() -> None:
    """Release every outdir lock this process holds (the end of a run)."""
    while _held:
        _held.popitem()[1].release()


def held(outdir: str | os.PathLike) -> bool:
    """Whether this process holds ``outdir``'s lock."""
    lock = _held.get(Path(outdir).absolute().resolve())
    return lock is not None and lock.fd is not None
