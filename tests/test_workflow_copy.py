"""End to end through Snakemake and a real image: the minimal load -> save pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from daisy_steps.fileio import sha256_file

from .conftest import require_image
from .workflow_helpers import REPO, daisy, holder_processes, snakemake

pytestmark = [pytest.mark.apptainer, pytest.mark.snakemake]


def image_python(name: str) -> str:
    """The Python version inside image ``name`` (what a job's record must name, not the host's)."""
    from daisy import images

    proc = subprocess.run(images.exec_argv(name, ["python3", "-c", "import sys; print(sys.version.split()[0])"]),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def workdir(tmp_path):
    require_image("base")
    (tmp_path / "data").mkdir()
    with h5py.File(tmp_path / "data" / "raw.h5", "w") as handle:
        handle["/entry/tomo"] = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    return tmp_path


def test_plain_snakemake_runs_copy_in_image(workdir):
    raw = workdir / "data" / "raw.h5"
    before = sha256_file(raw)
    snakemake(workdir, REPO / ".test" / "copy" / "config.yaml")
    out = workdir / "results" / "copy" / "copy" / "data.h5"
    with h5py.File(out) as handle, h5py.File(raw) as source:
        np.testing.assert_array_equal(handle["/entry/data/data"][()], source["/entry/tomo"][()])
    assert sha256_file(raw) == before
    prov = json.loads((workdir / "results" / "copy" / "provenance.json").read_text())
    from daisy import images
    used = images.planned("base")[0]                  # the published entry, or a local build's
    assert prov["images"]["base"]["image_sha256"] == used["image_sha256"]
    assert {k: prov["images"]["base"][k] for k in ("reproducible", "mksquashfs_version")} == \
        {k: used[k] for k in ("reproducible", "mksquashfs_version")}            # can it be rebuilt, with what
    assert prov["outputs"][str(out.relative_to(workdir))]["sha256"] == sha256_file(out)
    assert prov["inputs"]["data/raw.h5"]["sha256"] == before
    record = prov["jobs"]["copy"]
    assert record["image"]["name"] == "base" and record["libraries"]["python"] == image_python("base")
    # a second run has nothing to do
    again = snakemake(workdir, REPO / ".test" / "copy" / "config.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert holder_processes() == []  # plain snakemake holds the images in onstart, releases them at the end


def test_daisy_run_and_validate(workdir):
    cfg = REPO / ".test" / "copy" / "config.yaml"
    ok = daisy("validate", str(cfg), cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    res = daisy("run", "copy", "--config", str(cfg), "--cores", "1", cwd=workdir)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "provenance" in res.stdout
    assert (workdir / "results" / "copy" / "provenance.json").is_file()
    assert holder_processes() == []  # the images held during the run are released at its end


def test_corrupted_image_refuses_the_run(workdir, tmp_path_factory):
    from daisy import images

    entry = images.load_lock()["images"]["base"]
    cache = tmp_path_factory.mktemp("cache")
    copy = cache / images.image_path("base").name
    shutil.copyfile(images.image_path("base"), copy)
    with open(copy, "r+b") as handle:  # flip one byte in the middle of the image
        handle.seek(copy.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    env = {"DAISY_IMAGE_CACHE": str(cache)}
    proc = snakemake(workdir, REPO / ".test" / "copy" / "config.yaml", env=env, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "base" in text and entry["image_sha256"] in text
    assert not (workdir / "results" / "copy" / "copy" / "data.h5").exists()
    res = daisy("run", "copy", "--config", str(REPO / ".test" / "copy" / "config.yaml"), cwd=workdir, env=env)
    assert res.returncode == 2 and "base" in res.stderr and "Traceback" not in res.stderr


def test_step_cannot_write_into_its_input_folder(workdir):
    """Inputs are bound read-only inside the container: a job told to write beside its input
    fails naming the folder, and the input folder is unchanged."""
    from daisy.workflow import run_job_in_image
    from daisy_steps.errors import StepError

    data = workdir / "data"
    before = {p.name: sha256_file(p) for p in data.iterdir()}
    job = {"job": "sneaky", "steps": [
        {"step": "hdf5.load", "inputs": {"source": f"{data / 'raw.h5'}:/entry/tomo"}},
        {"step": "hdf5.save", "outputs": {"target": f"{data / 'written.h5'}:/x"}}]}
    with pytest.raises(StepError, match=r"output folder .*data is not writable"):
        run_job_in_image("base", job, workdir / "jobs" / "sneaky.json", workdir / "out", inputs=[data / "raw.h5"])
    assert {p.name: sha256_file(p) for p in data.iterdir()} == before
