"""The warm DAISY server (daisy/server.py): a run through it is the run ``daisy run`` makes
without it (outputs, exit status, messages); Ctrl-C reaches the run; changed code gets a new
server. Each test has its own runtime folder and stops its server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from daisy import server

from .test_faults import ct_config, make_phantom, outputs, step_processes
from .workflow_helpers import REPO


def _daisy(env: dict, cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daisy", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def _status(env: dict) -> dict | None:
    code = ("import json, sys; from daisy import server; "
            "print(json.dumps(server.request(server.socket_path(), {'stop': False})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _wait_for_server(env: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = _status(env)
        if reply:
            return reply
        time.sleep(0.2)
    raise AssertionError("no DAISY server came up")


@pytest.fixture
def served():
    """An environment whose runs use a server of their own; the server is stopped afterwards."""
    runtime = Path(tempfile.mkdtemp(prefix="daisy-rt-"))     # short: a socket's path has 107 bytes at most
    env = {**os.environ, server.SERVER_ENV: "1", "XDG_RUNTIME_DIR": str(runtime)}
    yield env
    reply = _status(env)
    if reply:
        _daisy(env, REPO, "server", "stop")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{reply['pid']}").exists():
            time.sleep(0.1)
        assert not Path(f"/proc/{reply['pid']}").exists(), "the server did not stop"
    assert not list(runtime.glob("daisy-server-*.sock"))
    shutil.rmtree(runtime)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    make_phantom(folder, 48, 90)
    return folder


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_a_run_through_the_server_is_the_plain_run(served, phantom):
    config = ct_config(phantom, "same.yaml", "out_same")
    first = _daisy(served, phantom, "run", "ct", "--config", str(config))   # no server yet: starts one
    assert first.returncode == 0, first.stderr[-3000:]
    assert _wait_for_server(served)["served"] == 0
    (phantom / "out_same").rename(phantom / "out_plain")   # the same outdir (files name it) for both runs
    second = _daisy(served, phantom, "run", "ct", "--config", str(config))
    assert second.returncode == 0, second.stderr[-3000:]
    assert _status(served)["served"] == 1                    # this run was the server's
    assert "daisy: outputs in" in second.stdout and "steps (100%) done" in second.stdout + second.stderr
    assert outputs(phantom / "out_same") == outputs(phantom / "out_plain")
    prov = json.loads((phantom / "out_same" / "provenance.json").read_text())
    assert prov["status"] == "completed" and prov["workdir"] == str(phantom)
    # a bad config: the same one-line error and exit status as without the server
    bad = ct_config(phantom, "bad.yaml", "out_bad", threads=0)
    through = _daisy(served, phantom, "run", "ct", "--config", str(bad))
    alone = _daisy({**served, server.SERVER_ENV: "0"}, phantom, "run", "ct", "--config", str(bad))
    assert _status(served)["served"] == 2
    assert through.returncode == alone.returncode == 2
    assert through.stderr == alone.stderr and "threads" in through.stderr and "Traceback" not in through.stderr


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_ctrl_c_reaches_a_run_in_the_server(served, phantom):
    warmup = _daisy(served, phantom, "run", "ct", "--config", str(ct_config(phantom, "up.yaml", "out_up")))
    assert warmup.returncode == 0, warmup.stderr[-3000:]
    _wait_for_server(served)
    config = ct_config(phantom, "long.yaml", "out_long", recon={"algorithm": "sirt", "num_iter": 400})
    client = subprocess.Popen([sys.executable, "-m", "daisy", "run", "ct", "--config", str(config)], cwd=phantom,
                              env=served, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not step_processes(b"out_long") and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert step_processes(b"out_long"), "the run's job never started"
    assert _status(served)["runs"], "the run is not the server's"
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=120)
    assert client.returncode != 0
    deadline = time.monotonic() + 30
    while (step_processes(b"out_long") or _status(served)["runs"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not step_processes(b"out_long") and not _status(served)["runs"]
    assert not (phantom / "out_long" / "ct" / "volume.h5").exists()
    # the outdir is free again: the same command runs (and is not left to the stopped run)
    again = _daisy(served, phantom, "run", "ct", "--config", str(ct_config(phantom, "long.yaml", "out_long")))
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_runtime_folder_too_long_for_a_socket_falls_back_to_the_temporary_folder(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/" + "x" * 120)
    path = server.socket_path()
    assert path.parent == Path(tempfile.gettempdir()) and len(str(path)) <= server.SOCKET_PATH_MAX


def test_changed_code_gets_its_own_server(tmp_path, monkeypatch):
    tree = tmp_path / "daisy"
    tree.mkdir()
    (tree / "a.py").write_text("A = 1\n")
    monkeypatch.setattr(server, "_SOURCES", (tree,))
    before = server.socket_path()
    assert server.socket_path() == before                    # stable while nothing changes
    (tree / "a.py").write_text("A = 22\n")
    assert server.socket_path() != before
    monkeypatch.setattr(server, "confinement", lambda: "0::/system.slice/slurmstepd.scope/job_42")
    assert server.socket_path() != before                    # another cgroup or limits: another server
    monkeypatch.setenv(server.SERVER_ENV, "0")
    assert not server.enabled()
