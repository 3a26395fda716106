"""The CT pipeline end to end in the tomopy and base images, through plain Snakemake and `daisy run`:
every raw layout, chunked == unchunked, pipeline == direct tomopy script, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import yaml

from daisy_steps.fileio import sha256_file

from .conftest import require_image
from .workflow_helpers import REPO, daisy, snakemake

pytestmark = [pytest.mark.apptainer, pytest.mark.snakemake]
LAYOUTS = ("nxtomo", "dxchange", "daisy")
SIZE = 64


@pytest.fixture(scope="module")
def ct_workdir(tmp_path_factory):
    require_image("tomopy")
    require_image("base")
    from daisy.workflow import run_job_in_image

    work = tmp_path_factory.mktemp("ct")
    data = work / "data"
    steps = [{"step": "sample.ct_phantom", "outputs": {"raw": str(data / f"ct-{layout}.h5")},
              "params": {"size": SIZE, "n_angles": 120, "layout": layout, "seed": 7, "center_offset": 3.5}}
             for layout in LAYOUTS]
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": steps}, work / "jobs" / "sample.json", work)
    return work


def volume(path) -> np.ndarray:
    with h5py.File(path) as handle:
        return handle["/entry/data/data"][()]


def scenario(work, name, **changes):
    cfg = yaml.safe_load((REPO / ".test" / name / "config.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = work / f"{name}-{abs(hash(json.dumps(changes, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, work / cfg["outdir"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ct_scenarios(ct_workdir, layout):
    work = ct_workdir
    raw = work / "data" / f"ct-{layout}.h5"
    before = sha256_file(raw)
    snakemake(work, REPO / ".test" / f"ct-{layout}" / "config.yaml")
    out = work / "results" / f"ct-{layout}"
    vol = volume(out / "ct" / "volume.h5")
    width = vol.shape[-1]          # tomopy.project pads the detector to hold the rotated phantom
    assert vol.shape == (SIZE, width, width) and width >= SIZE and vol.dtype == np.float32
    assert np.isfinite(vol).all()
    with h5py.File(out / "ct" / "volume.h5") as handle:
        assert handle["/entry/data/data"].is_virtual            # gathered without copying
        assert handle["/entry/data"].attrs["NX_class"] == "NXdata"
    prov = json.loads((out / "provenance.json").read_text())
    slab_jobs = [name for name in prov["jobs"] if name.startswith("ct_slab_") or name == "ct_volume"]
    # 3 slabs, grouped into jobs (slabs.per_job null: a scan this small needs no more jobs than cores;
    # one job: ct_volume, which gathers too)
    passes = [s for j in slab_jobs for s in prov["jobs"][j]["steps"] if s["step"] == "ct.recon"]
    assert len(passes) == 3 and 1 <= len(slab_jobs) <= 3
    for name in ("xy", "xz", "yz", *(f"sinogram_slab_{i:04d}" for i in range(len(slab_jobs)))):
        assert (out / "ct" / "previews" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "ct" / "volume.tif").exists() == (layout == "daisy")
    centre = prov["results"]["ct_center/ct.find_center"]["center"]
    with h5py.File(raw) as handle:
        assert "/truth" in handle, f"{raw} has no /truth: sample.ct_phantom writes the true centre there"
        truth = float(handle["/truth"].attrs["center"])
    assert abs(centre - truth) <= 1.0
    assert sha256_file(raw) == before
    assert prov["inputs"][f"data/ct-{layout}.h5"]["sha256"] == before
    assert {recon["results"]["center"] for recon in passes} == {centre}   # every slab used the centre found


def test_chunked_equals_unchunked_and_direct_tomopy(ct_workdir):
    work = ct_workdir
    one, out_one = scenario(work, "ct-nxtomo", outdir="results/ct-one-slab", slabs={"count": 1})
    many, out_many = scenario(work, "ct-nxtomo", outdir="results/ct-five-slabs", slabs={"height": 14, "per_job": 1},
                              save={"stages": ["attenuation"]})
    # the same 5 slabs, two per job: each job reconstructs its slabs in turn into one file
    grouped, out_grouped = scenario(work, "ct-nxtomo", outdir="results/ct-five-slabs-grouped",
                                    slabs={"height": 14, "per_job": 2}, save={"stages": ["attenuation"]})
    snakemake(work, one)
    snakemake(work, many)
    snakemake(work, grouped)
    vol_one = volume(out_one / "ct" / "volume.h5")
    vol_many = volume(out_many / "ct" / "volume.h5")
    prov = json.loads((out_many / "provenance.json").read_text())
    assert len([j for j in prov["jobs"] if j.startswith("ct_slab_")]) == 5      # 14,14,14,14,8 rows
    assert np.array_equal(vol_one, vol_many)
    # one slab job gathers in its own process (ct_volume); the volume's processes are the same steps
    p_one = json.loads((out_one / "provenance.json").read_text())
    assert sorted(p_one["jobs"]) == ["ct_center", "ct_volume"]
    with h5py.File(out_one / "ct" / "volume.h5") as a, h5py.File(out_many / "ct" / "volume.h5") as b:
        steps = [[name.split("_", 2)[2] for name in f["/entry"] if name.startswith("process_")
                  and not name.endswith("ct.save_stage")] for f in (a, b)]     # many also keeps a stage
        assert steps[0] == steps[1] and steps[0][-1] == "ct.gather", steps
        assert a["/entry/data/data"].virtual_sources()[0].file_name == "slabs/slab_0000.h5"
    assert np.array_equal(volume(out_grouped / "ct" / "volume.h5"), vol_one)
    assert np.array_equal(volume(out_grouped / "ct" / "stages" / "attenuation.h5"),
                          volume(out_many / "ct" / "stages" / "attenuation.h5"))
    p_grouped = json.loads((out_grouped / "provenance.json").read_text())
    slab_jobs = {name: job for name, job in p_grouped["jobs"].items() if name.startswith("ct_slab_")}
    assert [sum(s["step"] == "ct.recon" for s in job["steps"]) for job in slab_jobs.values()] == [2, 2, 1]
    with h5py.File(out_grouped / "ct" / "slabs" / "slab_0001.h5") as handle:   # slabs 2 and 3: rows 28:56
        assert handle["/entry/recon/data"].shape[0] == 28 and handle["/entry/recon/data"].attrs["row_offset"] == 28
    with h5py.File(out_grouped / "ct" / "volume.h5") as handle:      # one process per step, passes in its table
        loads = [g for name, g in handle["/entry"].items() if name.endswith("_ct.load")]
        assert len(loads) == 2 and len(loads[1]["jobs/job"]) == 5      # the centre's load; the 5 slabs' loads
    # the same operations as one plain tomopy script, in the same image
    from daisy import images
    reference = REPO / "tests" / "reference"
    direct = work / "direct" / "volume.h5"
    direct.parent.mkdir(exist_ok=True)
    cmd = images.exec_argv("tomopy", ["python3", str(reference / "direct_tomopy.py"),
                                      str(work / "data" / "ct-nxtomo.h5"), str(direct),
                                      "--center", str(out_one / "ct" / "center.json"), "--stripe", "fw",
                                      "--threads", "2"],
                           binds_ro=[reference, work / "data", out_one / "ct"], binds_rw=[direct.parent])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(volume(direct), vol_one)


def test_read_once_gives_the_same_volume_reading_each_frame_once(ct_workdir):
    """5 slabs + the centre job: each would read every (one-frame) chunk of the raw file; with
    slabs.read_once one ct_rows job reads the frames once and hands each job its rows, in files
    deleted when done. Same volume; the provenance's bytes read stay within twice the file.
    (auto splits only where the extra reads would pass 1 GiB: not this 2 MB scan.)"""
    work = ct_workdir
    raw = work / "data" / "ct-dxchange.h5"
    never, out_never = scenario(work, "ct-dxchange", outdir="results/ct-read-each",
                                slabs={"height": 14, "read_once": "never", "per_job": 1})
    once, out_once = scenario(work, "ct-dxchange", outdir="results/ct-read-once",
                              slabs={"height": 14, "per_job": 1, "read_once": "always"})
    snakemake(work, never)
    snakemake(work, once)
    assert np.array_equal(volume(out_never / "ct" / "volume.h5"), volume(out_once / "ct" / "volume.h5"))
    p_never = json.loads((out_never / "provenance.json").read_text())
    p_once = json.loads((out_once / "provenance.json").read_text())
    assert "ct_rows" in p_once["jobs"] and "ct_rows" not in p_never["jobs"]
    size = raw.stat().st_size
    assert p_never["io"]["input_bytes"] == p_once["io"]["input_bytes"] == size
    split = p_once["results"]["ct_rows/ct.split_rows"]
    assert split["parts"] == 6 and split["frames"] == 120
    scan = split["bytes_read"]                                 # the raw frames, decompressed, read once
    assert p_never["io"]["bytes_read"] > 5 * scan * 0.9        # every job read every frame whole
    # once by ct_rows, once more in the parts (the centre job's 16 of 64 rows are a part of their own)
    assert p_once["io"]["bytes_read"] == scan + split["bytes_written"]
    assert split["bytes_written"] <= scan * (1 + 16 / 64)
    for name, record in p_once["jobs"].items():                               # jobs read their rows' file
        if name.startswith(("ct_slab_", "ct_center")):
            data = [p for p in record["inputs"] if p.endswith(".h5")]
            assert len(data) == 1 and "/ct/rows/rows_" in data[0], record["inputs"]
    assert not list((out_once / "ct" / "rows").glob("*.h5"))                  # intermediate: deleted
    assert not [p for p in p_once["outputs"] if "/ct/rows/" in p]


def _copy_with(work, name, edit):
    src = work / "data" / f"ct-{name}.h5"
    bad = work / "bad" / f"{edit.__name__}.h5"
    bad.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, bad)
    with h5py.File(bad, "r+") as handle:
        edit(handle)
    return bad


def darks_of_another_shape(handle):
    dark = handle["/entry/dark"][()]
    del handle["/entry/dark"]
    handle["/entry/dark"] = dark[:, :-2, :]


def angles_count_differs(handle):
    theta = handle["/exchange/theta"][()]
    del handle["/exchange/theta"]
    handle["/exchange/theta"] = theta[:-5]


@pytest.mark.parametrize("case, layout, words", [
    ("wrong_dataset", "nxtomo", ["/entry/nope"]),
    (darks_of_another_shape, "daisy", ["/entry/dark", "shape"]),
    (angles_count_differs, "dxchange", ["/exchange/theta", "115", "120"]),
])
def test_bad_inputs_fail_naming_them_and_leave_no_output(ct_workdir, case, layout, words):
    work = ct_workdir
    changes = {"outdir": f"results/bad-{getattr(case, '__name__', case)}"}
    if case == "wrong_dataset":
        changes["input"] = {"data_path": "/entry/nope"}
    else:
        changes["input"] = {"file": str(_copy_with(work, layout, case))}
    cfg, out = scenario(work, f"ct-{layout}", **changes)
    res = daisy("run", "ct", "--config", str(cfg), cwd=work)
    text = res.stdout + res.stderr
    assert res.returncode != 0
    for word in words:
        assert word in text, text[-3000:]
    left = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".h5", ".png", ".tif")] if out.exists() else []
    assert left == []
