"""Faults and concurrent use: a killed job resumes to the same bits, a full or read-only disk is a
named error with nothing half-written, one run per outdir, four runs at once equal serial runs,
and the isolation of a job (read-only inputs, no host home, clean environment, no network).

End-to-end through ``daisy run`` in the images on a small phantom; the disk tests mount a small
tmpfs (root only; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest
import yaml

from daisy import outdir_lock
from daisy_steps.nxprocess import content_digest

from .conftest import require_image
from .workflow_helpers import REPO, alive, image_cache_with, process_argvs

pytestmark = [pytest.mark.apptainer, pytest.mark.snakemake]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def daisy_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "daisy", *args]


def run_daisy(cwd: Path, config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(daisy_cmd("run", "ct", "--config", str(config)), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def ct_config(folder: Path, name: str, outdir: str, **changes) -> Path:
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": outdir, "threads": 1,
           "input": {"file": "data/ct.h5"}, "slabs": {"count": 2, "per_job": 1}}
    cfg.update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def outputs(outdir: Path, process: str = "stable") -> dict[str, str]:
    """Every result of a CT run: HDF5 by content (``content_digest``: per-run dates left out, or
    the NXprocess groups altogether with ``process="skip"`` when the outdirs differ), the rest
    (centre JSON, PNG previews) byte for byte."""
    import hashlib

    found = {}
    for path in sorted((outdir / "ct").rglob("*")):
        if not path.is_file():
            continue
        key = str(path.relative_to(outdir))
        found[key] = (content_digest(path, process) if path.suffix == ".h5"
                      else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def partials(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".part" in p.name)


def step_processes(marker: bytes) -> list[int]:
    """Host pids of the job processes (``python3 -m daisy_steps run --job ...marker...``)."""
    return [pid for pid, argv in process_argvs()
            if argv and argv[0].endswith(b"python3") and b"daisy_steps" in argv and any(marker in a for a in argv)]


def make_phantom(folder: Path, size: int, n_angles: int) -> Path:
    from daisy.workflow import run_job_in_image

    require_image("tomopy")
    require_image("base")
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": [
        {"step": "sample.ct_phantom", "outputs": {"raw": str(folder / "data" / "ct.h5")},
         "params": {"size": size, "n_angles": n_angles, "center_offset": 2.5, "seed": 5, "layout": "nxtomo"}}]},
        folder / "jobs" / "sample.json", folder)
    return folder / "data" / "ct.h5"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    make_phantom(folder, 48, 90)
    return folder


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems under tmp_path (root only); unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(name: str, size: str, read_only: bool = False, prepare=None) -> Path:
        point = tmp_path / name
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        mounted.append(point)
        if prepare:
            prepare(point)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


# ------------------------------------------------------------------------------------------------
# SIGKILL of a running job, then the same command again
# ------------------------------------------------------------------------------------------------

def test_sigkill_of_a_slab_job_then_the_same_command_resumes_bit_identical(work):
    # sirt makes each slab job last a second or two: long enough to be killed while it runs
    config = ct_config(work, "kill.yaml", "out_kill", recon={"algorithm": "sirt", "num_iter": 60})
    reference = run_daisy(work, config)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = outputs(work / "out_kill")
    shutil.move(work / "out_kill", work / "out_kill_reference")       # the same paths for the rerun

    proc = subprocess.Popen(daisy_cmd("run", "ct", "--config", str(config), "--cores", "1"), cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        pids = step_processes(b"ct_slab_0001.json")
        if pids:
            time.sleep(0.3)                                            # mid-run: imports done, reconstructing
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
        time.sleep(0.01)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, f"the slab job was never seen running (exit {proc.returncode}):\n{err[-2000:]}"
    assert proc.returncode == 2, f"the killed run exited {proc.returncode}:\n{err[-2000:]}"
    assert "ct_slab" in out + err and "Traceback" not in out + err
    outdir = work / "out_kill"
    assert not (outdir / "ct" / "slabs" / "slab_0001.h5").exists() and not (outdir / "ct" / "volume.h5").exists()
    center_record = json.loads((outdir / "records" / "ct_center.json").read_text())

    again = run_daisy(work, config)                                    # the same command again
    assert again.returncode == 0, f"the resumed run exited {again.returncode}:\n{again.stderr[-2000:]}"
    assert json.loads((outdir / "records" / "ct_center.json").read_text())["started"] == center_record["started"]
    assert outputs(outdir) == expected                                 # bit-identical content
    with h5py.File(outdir / "ct" / "volume.h5", "r") as handle:
        assert handle["/entry/data/data"].shape[0] == 48


def test_a_killed_job_leaves_no_temporary_after_the_resume(work):
    """The temporary of a job killed by SIGKILL (``.slab_0001.h5.part-PID``: its cleanup never
    ran) must not survive the resume. Relies on the kill test's outdir."""
    outdir = work / "out_kill"
    if not (outdir / "ct" / "volume.h5").exists():
        pytest.skip("needs the SIGKILL test's resumed run")
    assert partials(outdir) == [], ("temporaries of the killed job are left; fix: OutputSet.temporary removes "
                                    "stale '.NAME.part-*' siblings of its own outputs (daisy_steps/fileio.py)")


# ------------------------------------------------------------------------------------------------
# a full disk, a read-only outdir: named errors, nothing half-written
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("read_once, step", [("always", "ct.split_rows"), ("never", "ct.recon")])
def test_a_full_disk_is_a_named_error_and_leaves_nothing_half_written(work, tmpfs, read_once, step):
    """The rows files (ct_rows, refused before writing) or, read directly, the slab (ct.recon,
    too little room to write it while reconstructing: written at the end, HDF5's core driver)."""
    disk = tmpfs(f"full-{read_once}", "160k")           # room for the config, jobs and records, not a slab
    config = ct_config(work, f"full-{read_once}.yaml", str(disk / "out"),
                       save={"previews": False, "compression": "none"},
                       slabs={"count": 2, "read_once": read_once, "per_job": 1})
    before = (work / "data" / "ct.h5").stat().st_mtime_ns
    res = run_daisy(work, config)
    text = res.stdout + res.stderr
    assert res.returncode == 2, text[-3000:]
    assert "no space left on the device" in text and f"{step}: cannot write" in text, text[-4000:]
    assert "Traceback" not in text
    left = [p for p in (disk / "out").rglob("*") if p.is_file() and (p.suffix == ".h5" or ".part" in p.name)]
    assert left == [], left
    assert (work / "data" / "ct.h5").stat().st_mtime_ns == before


@pytest.mark.parametrize("exists", [False, True])
def test_a_read_only_outdir_is_refused_before_anything_runs(work, tmpfs, exists):
    disk = tmpfs("ro", "1m", read_only=True, prepare=(lambda p: (p / "out").mkdir()) if exists else None)
    config = ct_config(work, "ro.yaml", str(disk / "out"))
    res = run_daisy(work, config)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "field 'outdir'" in res.stderr and "read-only file system" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert list((disk / "out").rglob("*")) == [] if exists else not (disk / "out").exists()


# ------------------------------------------------------------------------------------------------
# one run per outdir
# ------------------------------------------------------------------------------------------------

HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from daisy import outdir_lock; "
        "outdir_lock.acquire({outdir!r}); print('held', flush=True); time.sleep(60)")


def test_the_outdir_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    outdir = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), outdir=str(outdir))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(outdir_lock.OutdirBusy) as err:
            outdir_lock.acquire(outdir)
        assert str(outdir) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        assert err.value.exit_code == 2
    finally:
        holder.send_signal(signal.SIGKILL)                # a stale lock file from a dead process ...
        holder.wait()
    lock = outdir_lock.acquire(outdir)                    # ... does not block
    assert outdir_lock.acquire(outdir) is lock            # the same process: a no-op
    outdir_lock.release_all()
    assert not outdir_lock.held(outdir)


def test_a_second_run_on_the_same_outdir_is_refused(work):
    config = ct_config(work, "twice.yaml", "out_twice", recon={"algorithm": "sirt", "num_iter": 12})
    first = subprocess.Popen(daisy_cmd("run", "ct", "--config", str(config)), cwd=work,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not step_processes(b"out_twice") and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_daisy(work, config)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert "is in use by another DAISY run" in second.stderr and "out_twice" in second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    prov = json.loads((work / "out_twice" / "provenance.json").read_text())
    assert prov["status"] == "completed"


# ------------------------------------------------------------------------------------------------
# four runs at once: one image cache and hash cache, outputs equal to a serial run
# ------------------------------------------------------------------------------------------------

def shared_cache(folder: Path) -> Path:
    """A fresh image cache holding the images (hard links): every run must hash them, so the
    four runs read and write one hash cache at the same time."""
    return image_cache_with(folder / "shared-cache")


def test_four_runs_at_once_complete_and_equal_a_serial_run(tmp_path):
    """The same four configs run one after the other, then all at once with one fresh image cache
    (so all four hash the images and write one hash cache together): every output is the same.
    HDF5 outputs are compared without their NXprocess groups (dates, the step-code pin); the
    outdirs have the same names in both rounds (the slabs name their centre file's path)."""
    make_phantom(tmp_path, 32, 60)
    configs = [ct_config(tmp_path, f"c{i}.yaml", f"c{i}") for i in range(4)]
    expected = {}
    for i, config in enumerate(configs):
        serial = run_daisy(tmp_path, config)
        assert serial.returncode == 0, serial.stderr[-3000:]
        expected[i] = outputs(tmp_path / f"c{i}", process="skip")
        shutil.rmtree(tmp_path / f"c{i}")
    cache = shared_cache(tmp_path)
    env = {**os.environ, "DAISY_IMAGE_CACHE": str(cache)}
    procs = [subprocess.Popen(daisy_cmd("run", "ct", "--config", str(config)), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for config in configs]
    results = [p.communicate(timeout=900) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, results)):
        assert p.returncode == 0, f"run c{i}: {err[-3000:]}"
        assert outputs(tmp_path / f"c{i}", process="skip") == expected[i], f"run c{i} differs from its serial run"
        assert json.loads((tmp_path / f"c{i}" / "provenance.json").read_text())["status"] == "completed"
    cached = json.loads((cache / "sha256-cache.json").read_text())   # written whole, never torn
    assert isinstance(cached, dict) and cached
    assert not [p for p in cache.iterdir() if ".part" in p.name]


# ------------------------------------------------------------------------------------------------
# isolation: what a job cannot do
# ------------------------------------------------------------------------------------------------

PROBE = r"""
import os, socket, sys
inp, out, secret, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def attempt(what, fn):
    try:
        fn()
        print(what, "ALLOWED")
    except Exception as exc:
        print(what, "denied", type(exc).__name__)
attempt("write-input", lambda: open(os.path.join(inp, "written-by-job"), "w").write("x"))
attempt("modify-input", lambda: open(os.path.join(inp, "raw.txt"), "a").write("x"))
attempt("read-home", lambda: print(open(secret).read()))
attempt("network", lambda: socket.create_connection(("127.0.0.1", port), timeout=3).close())
attempt("write-output", lambda: open(os.path.join(out, "ok.txt"), "w").write("ok"))
print("env", os.environ.get("DAISY_ISOLATION_SECRET"))
"""


def _network_isolated() -> bool:
    from daisy.images import paths

    profile = yaml.safe_load((REPO / "profiles" / "workstation" / "config.yaml").read_text())
    return any("--network" in o or o == "--net" for o in paths.EXEC_OPTIONS) and "--net" in profile["apptainer-args"]


def test_a_job_cannot_write_its_inputs_or_read_the_home(tmp_path, monkeypatch):
    results = _probe(tmp_path, monkeypatch)
    assert results["write-input"].startswith("denied") and results["modify-input"].startswith("denied")
    assert results["read-home"].startswith("denied")
    assert results["write-output"] == "ALLOWED" and results["env"] == "None"
    assert (tmp_path / "in" / "raw.txt").read_text() == "raw" and not (tmp_path / "in" / "written-by-job").exists()


def test_a_job_cannot_reach_the_network(tmp_path, monkeypatch):
    assert _network_isolated()  # pipeline jobs (profiles) and direct runs (exec_argv) alike
    results = _probe(tmp_path, monkeypatch)
    assert results["network"].startswith("denied"), results


def _probe(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """Run PROBE with the pipelines' binds (``daisy.images.bind_specs``: input folder read-only,
    outdir read-write) and options (``exec_argv``: --containall --cleanenv --no-home), while a
    TCP server listens on the host's loopback and a secret lies in the host's home."""
    from daisy import images

    require_image("base")
    profile = yaml.safe_load((REPO / "profiles" / "workstation" / "config.yaml").read_text())
    assert "--containall" in profile["apptainer-args"] and "--cleanenv" in profile["apptainer-args"]
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    (inp / "raw.txt").write_text("raw")
    secret = Path.home() / f".daisy-isolation-{uuid.uuid4().hex}"
    secret.write_text("host secret")
    monkeypatch.setenv("DAISY_ISOLATION_SECRET", "leaked")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        argv = images.exec_argv("base", ["python3", "-c", PROBE, str(inp), str(out), str(secret),
                                         str(server.getsockname()[1])], binds_ro=[inp], binds_rw=[out])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        server.close()
        secret.unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "host secret" not in proc.stdout
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines() if " " in line}
