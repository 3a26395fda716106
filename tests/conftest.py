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


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
