"""Apptainer for an ordinary user (not root): exec and --fakeroot build work after the installer."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .conftest import require_image

pytestmark = pytest.mark.apptainer
USER = "daisy-ci-user"


@pytest.fixture(scope="module")
def base_image():
    """The base image (checked before the user is made: skip or fail early without it)."""
    return require_image("base")


@pytest.fixture(scope="module")
def ordinary_user():
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root to create an ordinary user")
    if subprocess.run(["id", USER], capture_output=True).returncode:
        subprocess.run(["useradd", "--create-home", USER], check=True)
        # the installer gives every ordinary user subordinate ids; re-run it for the new one
        subprocess.run(["bash", "scripts/install-apptainer.sh"], check=True, capture_output=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    return USER


def as_user(user: str, command: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["su", user, "-c", f"cd {cwd} && {command}"], capture_output=True, text=True, timeout=600)


@pytest.fixture
def shared_tmp():
    """A folder the ordinary user can enter (pytest's own tmp folders are root-only)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="daisy-user-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_ordinary_user_can_exec_and_build(base_image, ordinary_user, shared_tmp):
    tmp_path = shared_tmp
    copy = tmp_path / "base.sif"
    shutil.copyfile(base_image, copy)
    copy.chmod(0o644)
    res = as_user(ordinary_user, f"apptainer exec --containall --cleanenv {copy} python3 -c 'import numpy, h5py; print(7*6)'",
                  str(tmp_path))
    assert res.returncode == 0 and res.stdout.strip().endswith("42"), res.stderr
    (tmp_path / "t.def").write_text(f"Bootstrap: localimage\nFrom: {copy}\n%post\n    echo built > /opt/marker\n")
    res = as_user(ordinary_user, "apptainer build --fakeroot t.sif t.def", str(tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = as_user(ordinary_user, "apptainer exec t.sif cat /opt/marker", str(tmp_path))
    assert res.stdout.strip() == "built"
