"""The XRD pipeline end to end in the pyfai image, through plain Snakemake and through the
config translated from the original design's init_dict/cfg_dict."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from daisy_steps.fileio import sha256_file

from .conftest import require_image
from .workflow_helpers import REPO, daisy, snakemake

pytestmark = [pytest.mark.apptainer, pytest.mark.snakemake]


@pytest.fixture(scope="module")
def eiger_workdir(tmp_path_factory):
    require_image("pyfai")
    from daisy.workflow import run_job_in_image

    work = tmp_path_factory.mktemp("xrd")
    data = work / "data" / "xrd"
    steps = [{"step": "sample.xrd_eiger", "params": {"n_frames": 7, "frames_per_file": 3, "binning": 4, "seed": 3},
              "outputs": {"scan": str(data / "scan_00001_master.h5"), "poni": str(data / "scan_00001.poni")}}]
    run_job_in_image("pyfai", {"job": "sample", "threads": 2, "steps": steps}, work / "jobs" / "sample.json", work)
    return work


def test_xrd_eiger_scenario(eiger_workdir):
    work = eiger_workdir
    master = work / "data" / "xrd" / "scan_00001_master.h5"
    before = {p.name: sha256_file(p) for p in master.parent.glob("*.h5")}
    snakemake(work, REPO / ".test" / "xrd-eiger" / "config.yaml")
    out = work / "results" / "xrd-eiger" / "xrd"
    result = out / "scan_00001_integrated.h5"
    with h5py.File(result) as handle:
        one = handle["/entry/integrate_1d"]
        intensity = one[one.attrs["signal"]]
        assert intensity.shape == (7, 2000)
        axes = [a for a in one.attrs["axes"] if a != "."]
        assert any(one[a].attrs.get("units") in ("deg", "degrees") for a in axes)
        two = handle["/entry/integrate_2d"]
        assert two[two.attrs["signal"]].shape[0] == 7
    assert len(list((out / "xy").glob("*.xy"))) == 7
    assert (out / "previews" / "pattern.png").stat().st_size > 1000
    assert (out / "previews" / "cake.png").stat().st_size > 1000
    assert {p.name: sha256_file(p) for p in master.parent.glob("*.h5")} == before
    prov = json.loads((work / "results" / "xrd-eiger" / "provenance.json").read_text())
    assert set(prov["jobs"]) == {"xrd_block_0000", "xrd_block_0001", "xrd_block_0002", "xrd_gather"}
    assert prov["config"]["integrate"]["method"]  # defaults recorded
    assert prov["images"]["pyfai"]["image_sha256"]
    assert "pyFAI" in prov["jobs"]["xrd_block_0000"]["libraries"]


def test_xrd_from_design_dicts(tmp_path):
    """init_dict/cfg_dict -> daisy import-config -> daisy run, on data with the design's geometry."""
    require_image("pyfai")
    from daisy.workflow import run_job_in_image

    data = tmp_path / "data"
    steps = [{"step": "sample.xrd_eiger", "params": {"n_frames": 3, "frames_per_file": 3, "binning": 1, "seed": 1},
              "outputs": {"scan": str(data / "scan_00575_master.h5")}}]
    run_job_in_image("pyfai", {"job": "sample", "threads": 2, "steps": steps}, tmp_path / "jobs" / "s.json", tmp_path)
    assert (data / "scan_00575_data_000001.h5").exists()
    cfg = tmp_path / "imported.yaml"
    res = daisy("import-config", str(REPO / ".test" / "xrd-import" / "design.py"), "--data-dir", "data",
                "--outdir", "results/imported", "-o", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = daisy("run", "xrd", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = tmp_path / "results" / "imported" / "xrd" / "test_scan.h5"
    with h5py.File(result) as handle:
        one = handle["/entry/integrate_1d"]
        intensity = one[one.attrs["signal"]][()]
        radial = one[[a for a in one.attrs["axes"] if a != "."][-1]][()]
    assert intensity.shape == (3, 1000)
    assert radial.min() >= 10.0 and radial.max() <= 20.0   # radmin/radmax of the design
    assert np.nanmax(intensity) > 0
    prov = json.loads((tmp_path / "results" / "imported" / "provenance.json").read_text())
    assert prov["config"]["threads"] == 40                   # nth
    assert prov["config"]["integrate"]["geometry"]["fit2d"]["tiltPlanRotation"] == pytest.approx(64.66877)
