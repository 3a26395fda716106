"""DAISY on a real single-node Slurm (scripts/slurm.sh: slurmctld + slurmd + munge, no accounting
database, status through squeue): the CT and XRD demos through `daisy run --profile slurm` give
outputs bit-identical to the workstation profile, every job is its own Slurm job with the plan's
CPUs and its record names its Slurm job id and node; a job cancelled with scancel is retried and
the run completes; a run stopped mid-way resumes with the same command without redoing finished jobs.

The session fixture starts Slurm when it is not running (root; installs Debian's packages if
missing) and stops it at the end only if it started it. Without root and without a running Slurm
the tests skip locally and fail under CI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from .conftest import require_image
from .workflow_helpers import REPO

pytestmark = [pytest.mark.apptainer, pytest.mark.snakemake, pytest.mark.slurm]
SLURM_SH = REPO / "scripts" / "slurm.sh"
SLABS = 4           # CT: 4 slabs (+ centre and gather: 6 jobs); XRD: 2 blocks (+ gather)
#: the plugin's line for each submission: rule and (indexed rules) the slab/block
SUBMITTED = r"submitted with SLURM jobid \d+ \(log: \S*/rule_([a-z]+_[a-z]+)/(?:(\d{4})/)?"


def _skip_or_fail(reason: str):
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


@pytest.fixture(scope="session")
def slurm():
    """A running Slurm; started here (and stopped at the end) only if it was not running."""
    if subprocess.run(["bash", str(SLURM_SH), "status"], capture_output=True).returncode == 0:
        yield "already running"
        return
    if os.geteuid() != 0:
        _skip_or_fail("Slurm is not running and starting it needs root (bash scripts/slurm.sh start)")
    proc = subprocess.run(["bash", str(SLURM_SH), "start"], capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"scripts/slurm.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    try:
        yield "started"
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop"], capture_output=True)
        # no client config naming the stopped controller is left: scontrol, which the Slurm plugin
        # runs whenever Snakemake starts, would wait ~9 s for it on every snakemake or daisy run
        clock = time.monotonic()
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=60)
        assert time.monotonic() - clock < 3, "scontrol waits for the stopped controller after slurm.sh stop"


def daisy_cmd(pipeline: str, config: Path, profile: str) -> list[str]:
    return [sys.executable, "-m", "daisy", "run", pipeline, "--config", str(config), "--profile", profile]


def run_daisy(workdir: Path, pipeline: str, config: Path, profile: str) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(daisy_cmd(pipeline, config, profile), cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, (f"daisy run {pipeline} --profile {profile} failed:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory, slurm):
    """CT phantom and Eiger CeO2 frames (the demo's small sizes) and their configs."""
    require_image("tomopy")
    require_image("pyfai")
    require_image("base")
    from daisy.demo import make_ct_data, make_xrd_data

    work = tmp_path_factory.mktemp("slurm")
    raw = make_ct_data(work / "data", "small")["nxtomo"].resolve()
    master, poni = make_xrd_data(work / "data", "small")
    configs = {}
    configs["ct"] = work / "ct.yaml"
    configs["ct"].write_text(yaml.safe_dump({
        "config_version": 1, "pipeline": "ct", "outdir": "results/ct", "threads": 2,
        "input": {"file": str(raw)}, "stripe": {"method": "fw"}, "slabs": {"count": SLABS, "per_job": 1, "read_once": "always"}}))
    configs["xrd"] = work / "xrd.yaml"
    configs["xrd"].write_text(yaml.safe_dump({
        "config_version": 1, "pipeline": "xrd", "outdir": "results/xrd", "threads": 2,
        "input": {"file": str(master.resolve())}, "blocks": {"count": 2},
        "integrate": {"geometry": {"poni": str(poni.resolve())}, "npt": 2000, "integrate_2d": True}}))
    return work, configs


@pytest.fixture(scope="module")
def workstation(data):
    """The reference outputs: the same configs through the workstation profile."""
    work, configs = data
    for name in ("ct", "xrd"):
        run_daisy(work / f"ws-{name}", name, configs[name], "workstation")
    return work


def ct_volume(run_dir: Path) -> np.ndarray:
    with h5py.File(run_dir / "results/ct/ct/volume.h5") as handle:
        return handle["/entry/data/data"][()]


def xrd_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    (result,) = (run_dir / "results/xrd/xrd").glob("*_integrated.h5")
    arrays = {}
    with h5py.File(result) as handle:
        for group in ("integrate_1d", "integrate_2d"):
            grp = handle[f"/entry/{group}"]
            for key, item in grp.items():
                if isinstance(item, h5py.Dataset):
                    arrays[f"{group}/{key}"] = item[()]
    return arrays


def records(run_dir: Path, pipeline: str) -> dict[str, dict]:
    folder = run_dir / "results" / pipeline / "records"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob(f"{pipeline}_*.json"))}


def check_slurm_records(recs: dict[str, dict], plan_jobs: dict) -> None:
    """Every job ran as its own Slurm job, on this node, with the plan's threads as its CPUs and
    the plan's memory (times the attempt, plus the wrappers' allowance) as its --mem."""
    from daisy.workflow import WRAPPER_MB

    plan_threads = {name: job.threads for name, job in plan_jobs.items()}
    ids = [r["slurm"]["job_id"] for r in recs.values()]
    assert len(set(ids)) == len(recs), f"jobs share Slurm jobs: {ids}"
    for name, rec in recs.items():
        info = rec["slurm"]
        assert info["job_id"].isdigit() and info["node"] and info["partition"], info
        assert info["requested"]["cpus"] == plan_threads[name], (name, info)
        assert info["used"]["cpus"] == plan_threads[name], (name, info)     # the CPUs it may run on
        assert info["used"]["max_rss_mb"] > 0 and info["used"]["elapsed_seconds"] is not None
        asked = [(plan_jobs[name].mem_mb + WRAPPER_MB) * attempt for attempt in (1, 2, 3)]
        assert info["requested"]["mem_mb"] in asked, (name, info, asked)
        assert f"@sha256-{rec['image']['sha256']}.sif" in info.get("image_file", ""), info  # the locked SIF ran


def plan_jobs(config: Path) -> dict:
    from daisy.plan import plan
    from daisy.workflow import read_config

    cfg = read_config(config)
    return plan(cfg, source=str(config)).jobs


def test_ct_through_slurm_is_identical(data, workstation):
    work, configs = data
    out = run_daisy(work / "sl-ct", "ct", configs["ct"], "slurm")
    submitted = {f"{rule}_{index}" if index else rule for rule, index in re.findall(SUBMITTED, out)}
    # ct_rows: the raw frames read once for the centre and slab jobs (slabs.read_once always)
    assert submitted == {"ct_rows", "ct_center", "ct_gather", *(f"ct_slab_{i:04d}" for i in range(SLABS))}, out[-3000:]
    assert np.array_equal(ct_volume(work / "sl-ct"), ct_volume(workstation / "ws-ct"))
    recs = records(work / "sl-ct", "ct")
    assert set(recs) == {"ct_rows", "ct_center", "ct_gather", *(f"ct_slab_{i:04d}" for i in range(SLABS))}
    check_slurm_records(recs, plan_jobs(configs["ct"]))
    prov = json.loads((work / "sl-ct/results/ct/provenance.json").read_text())
    assert prov["status"] == "completed"
    assert all(job["slurm"]["job_id"] for job in prov["jobs"].values())
    assert prov["jobs"]["ct_slab_0000"]["slurm"]["node"] == os.uname().nodename.split(".")[0]


def test_xrd_through_slurm_is_identical(data, workstation):
    work, configs = data
    run_daisy(work / "sl-xrd", "xrd", configs["xrd"], "slurm")
    ours, theirs = xrd_arrays(work / "sl-xrd"), xrd_arrays(workstation / "ws-xrd")
    assert ours.keys() == theirs.keys() and ours
    for key in ours:
        assert np.array_equal(ours[key], theirs[key]), key
    check_slurm_records(records(work / "sl-xrd", "xrd"), plan_jobs(configs["xrd"]))


def _state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
                          capture_output=True, text=True).stdout.strip()


def _submitted(log: Path, rule: str) -> list[tuple[str, str]]:
    """(Slurm job id, slab/block index) of each submission of ``rule`` so far."""
    return re.findall(rf"submitted with SLURM jobid (\d+) \(log: \S*/rule_{rule}/(\d{{4}})/", log.read_text())


def test_scancel_mid_run_is_retried(data, workstation):
    work, configs = data
    run_dir = work / "sl-scancel"
    run_dir.mkdir()
    log = run_dir / "daisy.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(daisy_cmd("ct", configs["ct"], "slurm"), cwd=run_dir, stdout=handle,
                                stderr=subprocess.STDOUT)
    cancelled = None
    try:
        deadline = time.monotonic() + 400
        while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
            for job_id, index in _submitted(log, "ct_slab"):
                if _state(job_id) == "RUNNING":
                    subprocess.run(["scancel", job_id], check=True)
                    cancelled = (job_id, index)
                    break
            time.sleep(0.2)
        assert cancelled, f"no slab job was seen running:\n{log.read_text()[-3000:]}"
        assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    text = log.read_text()
    assert re.search(rf"SLURM-job '{cancelled[0]}' failed, SLURM status is: 'CANCELLED'", text), text[-4000:]
    attempts = [jid for jid, index in _submitted(log, "ct_slab") if index == cancelled[1]]
    assert cancelled[0] in attempts[:-1], attempts              # resubmitted after the scancel
    assert records(run_dir, "ct")[f"ct_slab_{cancelled[1]}"]["slurm"]["job_id"] == attempts[-1]
    assert np.array_equal(ct_volume(run_dir), ct_volume(workstation / "ws-ct"))


def _finished(log: Path, rule: str) -> set[str]:
    """Indexes of ``rule``'s jobs Snakemake reported finished."""
    text = log.read_text()
    jobids = {}
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", text):
        found = re.search(rf"rule {rule}:.*?records/{rule}_(\d{{4}})\.json.*?jobid: (\d+)", block, re.S)
        if found:
            jobids[found.group(2)] = found.group(1)
    done = re.findall(rf"Finished jobid: (\d+) \(Rule: {rule}\)", text)
    return {jobids[j] for j in done if j in jobids}


def test_stopped_run_resumes_without_redoing_finished_jobs(data, workstation):
    """Ctrl-C (SIGINT) to `daisy run` mid-run: Snakemake cancels its Slurm jobs and exits; the same
    command again runs only what had not finished (finished records untouched)."""
    work, configs = data
    run_dir = work / "sl-resume"
    run_dir.mkdir()
    log = run_dir / "daisy.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(daisy_cmd("ct", configs["ct"], "slurm"), cwd=run_dir, stdout=handle,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while not _finished(log, "ct_slab") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        done = _finished(log, "ct_slab")
        assert done and proc.poll() is None, f"no slab finished while the run went on:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _finished(log, "ct_slab")
    assert len(done) < SLABS, "the run finished before it could be stopped"
    kept = {i: run_dir / f"results/ct/records/ct_slab_{i}.json" for i in done}
    before = {i: (p.stat().st_mtime_ns, p.read_bytes()) for i, p in kept.items()}
    with log.open("a") as handle:
        handle.write("\n===== the same command again =====\n")
    again = run_daisy(run_dir, "ct", configs["ct"], "slurm")
    again_slabs = set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_ct_slab/(\d{4})/", again))
    assert not again_slabs & done, f"finished slabs {sorted(done)} ran again: {sorted(again_slabs)}"
    # a slab whose Slurm job completed while Snakemake was stopping is complete too (the job's own
    # Snakemake records it in .snakemake on the shared filesystem): neither list need name it
    assert again_slabs <= {f"{i:04d}" for i in range(SLABS)} - done
    assert {i: (p.stat().st_mtime_ns, p.read_bytes()) for i, p in kept.items()} == before
    assert json.loads((run_dir / "results/ct/provenance.json").read_text())["status"] == "completed"
    assert len(records(run_dir, "ct")) == SLABS + 3                  # + ct_rows, ct_center, ct_gather
    assert np.array_equal(ct_volume(run_dir), ct_volume(workstation / "ws-ct"))


def test_status_check_interval_is_bounded(monkeypatch):
    """The plugin's interval grows by 10 s per check while no job ends; DAISY keeps it at most
    DAISY_SLURM_MAX_STATUS_SECONDS (no cluster needed)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm import Executor

    from daisy import slurm_status

    monkeypatch.setenv(slurm_status.ENV, "5")
    assert slurm_status.bound_status_checks()
    executor = object.__new__(Executor)           # only its interval attribute is used
    executor.next_seconds_between_status_checks = 2
    assert executor.next_seconds_between_status_checks == 2
    executor.next_seconds_between_status_checks = 2 + 10
    assert executor.next_seconds_between_status_checks == 5
    monkeypatch.setenv(slurm_status.ENV, "0")          # off: the plugin's own growth
    assert not slurm_status.bound_status_checks()
    executor.next_seconds_between_status_checks = 42
    assert executor.next_seconds_between_status_checks == 42
    monkeypatch.setenv(slurm_status.ENV, "soon")
    with pytest.raises(ValueError, match="DAISY_SLURM_MAX_STATUS_SECONDS"):
        slurm_status.bound_status_checks()
    monkeypatch.setenv(slurm_status.ENV, "5")
    assert slurm_status.bound_status_checks()

