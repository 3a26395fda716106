"""Shared fixtures. Apptainer tests need the images built (``daisy containers build``);
they skip locally when an image is missing but fail under CI (``CI=true``), where the
README's test command has built them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4 etc., as any reader of DAISY volumes must)
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# every `daisy run` a test starts runs without the warm server (which would outlive the test);
# tests/test_server.py turns it on, in a runtime folder of its own, and stops it
os.environ["DAISY_SERVER"] = "0"


def require_image(name: str) -> Path:
    """Path of a built image, or skip (locally) / fail (CI) with the reason."""
    from daisy import images

    try:
        path = images.image_path(name)
    except Exception as exc:  # ImageError: not built
        reason = f"image {name!r} not available: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    if shutil.which("apptainer") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("apptainer is not installed")
    return path


def _servers_started_since(since: float) -> list[int]:
    """Pids of DAISY servers of this repository's Python started after ``since`` (epoch seconds)."""
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    tick = os.sysconf("SC_CLK_TCK")
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            started = boot + int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19]) / tick
        except (OSError, ValueError, IndexError):
            continue
        if b"daisy.server" in argv and argv[0].startswith(str(REPO).encode()) and started >= since - 1:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_tests():
    """A test whose `daisy run` built its environment from scratch (DAISY_SERVER unset) may have
    started a warm server: every one this session started is stopped at its end, by pid."""
    import signal
    import time

    since = time.time()
    yield
    for pid in _servers_started_since(since):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
