"""Provenance travels with the data: the NeXus NXprocess groups of the CT volume and the XRD
result file (``daisy_steps/nxprocess.py``, written by ct.gather and xrd.gather from the records of
the jobs that made their inputs).

Host tests: the plan gives the gather jobs the records as ``record_<job>`` inputs; records of one
stage merge into one process per step with a per-job table; a gather without records writes its
own process only and reruns keep the same content digest. Integration tests
(``@pytest.mark.apptainer``) run a small CT and XRD pipeline with ``daisy run`` and check every
step of the chain in order, the image digests against the lock, the code pin against the
provenance, the parameters against the resolved config and the gather's own process.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import yaml

from daisy import plan as plans
from daisy_steps.core import run_job
from daisy_steps.errors import StepError
from daisy_steps.nxprocess import content_digest, process_groups, processes

from .conftest import require_image
from .workflow_helpers import REPO, daisy

CT_CENTER = ["ct.load", "ct.normalize", "ct.angles", "ct.minus_log", "ct.stripe", "ct.find_center"]
CT_SLAB = ["ct.load", "ct.normalize", "ct.angles", "ct.minus_log", "ct.stripe", "ct.preview_sinogram",
           "ct.recon"]                                   # ct.recon writes the slab file itself
XRD_BLOCK = ["xrd.load_frames", "xrd.mask", "xrd.integrate", "xrd.save_block"]


def _text(dset) -> str:
    value = dset[()]
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(group, name):
    return json.loads(_text(group[name]["data"]))


def _lock() -> dict:
    return json.loads((REPO / "containers" / "images.lock.json").read_text())["images"]


# ------------------------------------------------------------------------------------------------
# host: the plan and the merging of records
# ------------------------------------------------------------------------------------------------

def _ct_config(tmp_path, **changes):
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    with h5py.File(data / "ct-daisy.h5", "w") as handle:
        handle["/entry/tomo"] = np.ones((8, 6, 8), np.uint16)
        handle["/entry/flat"] = np.ones((2, 6, 8), np.uint16)
        handle["/entry/dark"] = np.zeros((2, 6, 8), np.uint16)
    cfg = yaml.safe_load((REPO / ".test" / "ct-daisy" / "config.yaml").read_text())
    cfg.update(input={**cfg["input"], "file": str(data / "ct-daisy.h5")}, outdir=str(tmp_path / "results"), **changes)
    return cfg


def test_plan_gives_the_gather_jobs_the_records_of_the_jobs_that_made_their_inputs(tmp_path):
    run = plans.plan(_ct_config(tmp_path, slabs={"count": 3, "per_job": 1}))
    gather = run.jobs["ct_gather"]
    records = {k: v for k, v in gather.steps[0]["inputs"].items() if k.startswith("record_")}
    made_by = ["ct_center", "ct_slab_0000", "ct_slab_0001", "ct_slab_0002"]
    assert records == {f"record_{name}": run.record_file(name) for name in made_by}
    assert set(records.values()) <= set(gather.inputs)          # Snakemake orders the jobs by them
    manual = plans.plan(_ct_config(tmp_path, center={"method": "manual", "center": 4.0},
                                   slabs={"count": 2, "per_job": 1}))
    assert [k for k in manual.jobs["ct_gather"].steps[0]["inputs"] if k.startswith("record_")] == \
        ["record_ct_slab_0000", "record_ct_slab_0001"]           # no centre job, no centre record


def test_xrd_plan_gives_the_gather_the_block_records(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with h5py.File(data / "stack.h5", "w") as handle:
        handle["/entry/data/data"] = np.ones((5, 8, 8), np.uint16)
    cfg = {"config_version": 1, "pipeline": "xrd", "outdir": str(tmp_path / "results"),
           "input": {"file": str(data / "stack.h5"), "dataset": "/entry/data/data", "format": "hdf5"},
           "integrate": {"geometry": {"fit2d": {"directDist": 100.0, "centerX": 4.0, "centerY": 4.0,
                                                "pixelX": 75.0, "pixelY": 75.0}, "wavelength_angstrom": 1.0}},
           "blocks": {"count": 2}}
    run = plans.plan(cfg)
    inputs = run.jobs["xrd_gather"].steps[0]["inputs"]
    assert {k: v for k, v in inputs.items() if k.startswith("record_")} == {
        "record_xrd_block_0000": run.record_file("xrd_block_0000"),
        "record_xrd_block_0001": run.record_file("xrd_block_0001")}


def _record(job, steps, started="2030-01-01T00:00:00.000+00:00", image="tomopy"):
    return {"job": job, "image": {"name": image, "version": "1.0.0", "sha256": "ab" * 32}, "code_sha256": "cd" * 32,
            "started": started, "ended": started,
            "steps": [{"step": s, "version": "1.0.0", "params": p, "inputs": {}, "started": started,
                       "ended": started, "results": r} for s, p, r in steps]}


def test_records_of_one_stage_merge_into_one_process_per_step():
    center = _record("ct_center", [("ct.load", {"layout": "auto", "row_start": 3, "row_stop": 6}, {}),
                                   ("ct.find_center", {"method": "vo"}, {"center": 4.5})])
    slabs = [_record(f"ct_slab_{i:04d}", [("ct.load", {"layout": "auto", "row_start": a, "row_stop": b}, {}),
                                          ("ct.recon", {"algorithm": "gridrec"}, {"center": 4.5})],
                     started=f"2030-01-01T00:00:0{i}.000+00:00") for i, (a, b) in enumerate([(0, 4), (4, 8)])]
    procs = processes([center, *slabs])
    assert [(p.step, p.job) for p in procs] == [("ct.load", "ct_center"), ("ct.find_center", "ct_center"),
                                                ("ct.load", "ct_slab"), ("ct.recon", "ct_slab")]
    load = procs[2]
    assert load.params == {"layout": "auto"}                       # common to the jobs
    assert load.table == {"job": ["ct_slab_0000", "ct_slab_0001"], "started": [s["started"] for s in slabs],
                          "ended": [s["ended"] for s in slabs], "row_start": [0, 4], "row_stop": [4, 8]}
    assert load.date == slabs[0]["started"] and load.end_date == slabs[1]["ended"]
    assert procs[3].table.keys() == {"job", "started", "ended"} and procs[3].results == {"center": 4.5}
    assert procs[1].table is None and procs[1].results == {"center": 4.5}


def test_passes_of_a_job_merge_like_jobs_and_a_step_of_one_pass_keeps_its_place():
    """A slab job of several slabs runs the chain once per slab; only one pass writes the
    preview: still one process per step, in chain order, the passes as rows of its table."""
    def chain(a, b, preview=False):
        return [("ct.load", {"row_start": a, "row_stop": b}, {}), ("ct.minus_log", {}, {}),
                *([("ct.preview_sinogram", {"row": 5}, {})] if preview else []),
                ("ct.recon", {"algorithm": "gridrec", "file_rows": [0, 8]}, {"center": 4.5})]
    job = _record("ct_slab_0000", [*chain(0, 4), *chain(4, 8, preview=True)])
    other = _record("ct_slab_0001", chain(8, 12, preview=True))
    procs = processes([job, other])
    assert [(p.step, p.job) for p in procs] == [("ct.load", "ct_slab"), ("ct.minus_log", "ct_slab"),
                                                ("ct.preview_sinogram", "ct_slab"), ("ct.recon", "ct_slab")]
    assert procs[0].table["job"] == ["ct_slab_0000#1", "ct_slab_0000#2", "ct_slab_0001"]
    assert procs[0].table["row_start"] == [0, 4, 8]
    assert procs[2].table["job"] == ["ct_slab_0000#2", "ct_slab_0001"]
    assert procs[3].params == {"algorithm": "gridrec", "file_rows": [0, 8]}


def test_slabs_are_grouped_into_jobs_of_consecutive_slabs(tmp_path, monkeypatch):
    from daisy.pipelines import ct as ct_plan

    run = plans.plan(_ct_config(tmp_path, slabs={"height": 2, "per_job": 2}))   # 6 rows: 3 slabs
    slab_jobs = run.stage_jobs("ct_slab")
    assert [j.name for j in slab_jobs] == ["ct_slab_0000", "ct_slab_0001"]
    first = slab_jobs[0].steps
    assert [s["params"]["row_start"] for s in first if s["step"] == "ct.load"] == [0, 2]
    assert [s["params"]["file_rows"] for s in first if s["step"] == "ct.recon"] == [[0, 4], [0, 4]]
    assert [s["step"] for s in first].count("ct.preview_sinogram") == 1       # the pass holding row 2
    assert next(s for s in slab_jobs[1].steps if s["step"] == "ct.recon")["params"]["file_rows"] is None
    # null: a tiny scan's slabs fill as few jobs as keep this machine's cores busy
    monkeypatch.setattr(ct_plan, "usable_cores", lambda: 4)
    cfg = _ct_config(tmp_path, slabs={"height": 2}, threads=2)
    assert len(plans.plan(cfg).stage_jobs("ct_slab")) == 2
    # much work per slab: every slab its own job
    monkeypatch.setattr(ct_plan, "CHAIN_PIXELS_PER_THREAD_SECOND", 1e-3)
    assert len(plans.plan(cfg).stage_jobs("ct_slab")) == 3


def _slab_folder(tmp_path):
    run = tmp_path / "run"
    (run / "slabs").mkdir(parents=True)
    for i, (a, b) in enumerate([(0, 3), (3, 7)]):
        with h5py.File(run / "slabs" / f"slab_{i}.h5", "w") as handle:
            dset = handle.create_dataset("/entry/recon/data", data=np.full((b - a, 4, 4), i, np.float32))
            dset.attrs["row_offset"] = a
    return run


def _gather(run, out, records=()):
    inputs = {f"slab_{i}": str(run / "slabs" / f"slab_{i}.h5") for i in range(2)}
    inputs.update({f"record_{Path(r).stem}": str(r) for r in records})
    return {"job_version": 1, "job": "ct_gather", "threads": 1,
            "image": {"name": "base", "version": "1.0.0", "sha256": "ef" * 32},
            "steps": [{"step": "ct.gather", "inputs": inputs, "outputs": {"volume": str(run / out / "volume.h5")}}]}


def test_gather_writes_the_processes_and_reruns_keep_the_content(tmp_path):
    run = _slab_folder(tmp_path)
    records = []
    for i, (a, b) in enumerate([(0, 3), (3, 7)]):
        path = run / "records" / f"ct_slab_{i:04d}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(_record(path.stem, [("ct.load", {"row_start": a, "row_stop": b}, {}),
                                                        ("ct.save_slab", {"compression": "gzip"}, {})])))
        records.append(path)
    run_job(_gather(run, "a", records))
    run_job(_gather(run, "b", records))
    with h5py.File(run / "a" / "volume.h5") as handle:
        groups = process_groups(handle)
        assert [g.name for g in groups] == ["/entry/process_01_ct.load", "/entry/process_02_ct.save_slab",
                                            "/entry/process_03_ct.gather"]
        for k, group in enumerate(groups, 1):
            assert group.attrs["NX_class"] == "NXprocess" and group["sequence_index"][()] == k
            assert group["parameters"].attrs["NX_class"] == "NXparameters"
        load = groups[0]
        assert _text(load["program"]) == "ct.load" and _text(load["image_sha256"]) == "ab" * 32
        assert list(load["jobs/row_start"][()]) == [0, 3] and "row_start" not in load["parameters"]
        own = groups[2]
        assert _text(own["job"]) == "ct_gather" and _text(own["image"]) == "base"
        assert _text(own["image_sha256"]) == "ef" * 32
        assert _json(own, "parameters_json")["dataset"] == "/entry/recon/data"
        assert h5py.check_string_dtype(own["program"].dtype).encoding == "utf-8"
    # the same inputs twice: same arrays, attributes and provenance but for the dates
    assert content_digest(run / "a" / "volume.h5") == content_digest(run / "b" / "volume.h5")
    # without records (a hand-written job): the gather's own process only
    run_job(_gather(run, "c"))
    with h5py.File(run / "c" / "volume.h5") as handle:
        assert [g.name for g in process_groups(handle)] == ["/entry/process_01_ct.gather"]
    assert content_digest(run / "a" / "volume.h5", "skip") == content_digest(run / "c" / "volume.h5", "skip")
    # the record of a job that failed is no provenance: refused, naming the file, nothing written
    failed = run / "records" / "failed" / "ct_slab_0001.json"
    failed.parent.mkdir()
    failed.write_text(json.dumps({**json.loads(records[1].read_text()), "status": "failed"}))
    with pytest.raises(StepError, match=r"ct_slab_0001\.json.*did not complete"):
        run_job(_gather(run, "d", [records[0], failed]))
    assert not (run / "d" / "volume.h5").exists()


# ------------------------------------------------------------------------------------------------
# integration: a small CT and XRD run with daisy run
# ------------------------------------------------------------------------------------------------

def _daisy_run(work, pipeline, cfg):
    path = work / f"{pipeline}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = daisy("run", pipeline, "--config", str(path), cwd=work)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = work / cfg["outdir"]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    return out, resolved, json.loads((out / "provenance.json").read_text())


def _check_common(groups, chain, prov, images):
    lock = _lock()
    assert [_text(g["program"]) for g in groups] == chain
    assert [int(g["sequence_index"][()]) for g in groups] == list(range(1, len(chain) + 1))
    assert [g.name.rsplit("/", 1)[1] for g in groups] == [f"process_{i:02d}_{s}" for i, s in enumerate(chain, 1)]
    for group, image in zip(groups, images):
        assert group.attrs["NX_class"] == "NXprocess"
        assert _text(group["image"]) == image
        assert _text(group["image_sha256"]) == lock[image]["image_sha256"]
        assert _text(group["image_version"]) == lock[image]["version"]
        assert _text(group["code_sha256"]) == prov["code_sha256"]
        assert _text(group["date"]).startswith("20")
        assert _text(group["version"])


@pytest.mark.apptainer
def test_ct_volume_carries_its_processes(tmp_path):
    require_image("tomopy")
    require_image("base")
    from daisy.workflow import run_job_in_image

    steps = [{"step": "sample.ct_phantom", "outputs": {"raw": str(tmp_path / "data" / "ct.h5")},
              "params": {"size": 24, "n_angles": 30, "layout": "nxtomo", "seed": 3, "center_offset": 1.5}}]
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": steps}, tmp_path / "jobs" / "s.json", tmp_path)
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": "results/ct", "threads": 1,
           "input": {"file": "data/ct.h5"}, "recon": {"algorithm": "gridrec", "filter_name": "shepp"},
           "slabs": {"count": 2}, "save": {"previews": True}}
    out, resolved, prov = _daisy_run(tmp_path, "ct", cfg)
    chain = [*CT_CENTER, *CT_SLAB, "ct.gather"]
    with h5py.File(out / "ct" / "volume.h5") as handle:
        assert handle["/entry/data/data"].shape[0] == 24        # the data as before
        groups = process_groups(handle)
        _check_common(groups, chain, prov, ["tomopy"] * (len(chain) - 1) + ["base"])
        by = {g.name.rsplit("/", 1)[1]: g for g in groups}
        center_load, slab_load = by["process_01_ct.load"], by["process_07_ct.load"]
        assert _text(center_load["job"]) == "ct_center" and "jobs" not in center_load
        assert _text(slab_load["job"]) == "ct_slab"
        table = slab_load["jobs"]
        assert [_text_item(j) for j in table["job"][()]] == ["ct_slab_0000", "ct_slab_0001"]
        assert list(table["row_start"][()]) == [0, 12] and list(table["row_stop"][()]) == [12, 24]
        recon = by["process_13_ct.recon"]
        params = _json(recon, "parameters_json")
        set_by_pipeline = ("keep_volume", "compression", "gzip_level")   # from save, and streaming
        assert {k: params[k] for k in resolved["recon"] if k not in set_by_pipeline} == \
            {k: v for k, v in resolved["recon"].items() if k not in set_by_pipeline}
        assert params["keep_volume"] is False and params["compression"] == resolved["save"]["compression"]
        assert _text(recon["parameters/algorithm"]) == "gridrec" and _text(recon["parameters/filter_name"]) == "shepp"
        find = by["process_06_ct.find_center"]
        assert _json(find, "parameters_json") == resolved["center"]
        assert _json(find, "results")["center"] == prov["results"]["ct_center/ct.find_center"]["center"]
        stripe = by["process_11_ct.stripe"]
        assert _json(stripe, "parameters_json") == resolved["stripe"]
        own = by["process_14_ct.gather"]
        assert _text(own["job"]) == "ct_gather" and "end_date" not in own
        assert _json(own, "parameters_json") == prov["jobs"]["ct_gather"]["steps"][0]["params"]
        for name, group in by.items():                  # dates are the records' (the gather's: its start)
            if name != "process_14_ct.gather":
                job = _text(group["job"])
                jobs = [job] if job == "ct_center" else [j for j in prov["jobs"] if j.startswith("ct_slab_")]
                step = _text(group["program"])
                assert _text(group["date"]) == min(s["started"] for j in jobs for s in prov["jobs"][j]["steps"]
                                                   if s["step"] == step)


def _text_item(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.apptainer
def test_xrd_result_carries_its_processes(tmp_path):
    require_image("pyfai")
    from daisy.workflow import run_job_in_image

    data = tmp_path / "data" / "xrd"
    steps = [{"step": "sample.xrd_eiger", "params": {"n_frames": 4, "frames_per_file": 2, "binning": 8, "seed": 3},
              "outputs": {"scan": str(data / "scan_00001_master.h5"), "poni": str(data / "scan_00001.poni")}}]
    run_job_in_image("pyfai", {"job": "sample", "threads": 2, "steps": steps}, tmp_path / "jobs" / "s.json", tmp_path)
    cfg = {"config_version": 1, "pipeline": "xrd", "outdir": "results/xrd", "threads": 1,
           "input": {"file": "data/xrd/scan_00001_master.h5"},
           "integrate": {"geometry": {"poni": "data/xrd/scan_00001.poni"}, "npt": 300},
           "blocks": {"count": 2}, "save": {"previews": False, "xy": False}}
    out, resolved, prov = _daisy_run(tmp_path, "xrd", cfg)
    chain = [*XRD_BLOCK, "xrd.gather"]
    with h5py.File(out / "xrd" / "scan_00001_integrated.h5") as handle:
        assert handle["/entry/integrate_1d/intensity"].shape == (4, 300)
        assert handle["/entry/process/program"][()] == b"pyFAI"      # pyFAI's own process stays
        groups = process_groups(handle)
        _check_common(groups, chain, prov, ["pyfai"] * len(chain))
        by = {_text(g["program"]): g for g in groups}
        load = by["xrd.load_frames"]
        assert _text(load["job"]) == "xrd_block"
        assert list(load["jobs/start"][()]) == [0, 2] and list(load["jobs/stop"][()]) == [2, 4]
        integrate = by["xrd.integrate"]
        params = _json(integrate, "parameters_json")
        assert params == prov["jobs"]["xrd_block_0000"]["steps"][2]["params"]
        assert {k: params[k] for k in resolved["integrate"]} == resolved["integrate"]
        assert integrate["parameters/npt"][()] == 300
        assert json.loads(_text(integrate["parameters/geometry"])) == resolved["integrate"]["geometry"]
        own = by["xrd.gather"]
        assert _text(own["job"]) == "xrd_gather"
        assert _json(own, "parameters_json")["compression"] == resolved["save"]["compression"]
