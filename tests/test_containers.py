"""Tests for daisy.containers.

Unit tests run anywhere (spython and apptainer are mocked; a throw-away repository layout in tmp_path).
Integration tests (marker ``apptainer``) use the real images from ``containers/images.lock.json`` and the
image cache; they skip when apptainer or a locked image is missing. Fixtures live here on purpose
(tests/conftest.py belongs to the rest of the project).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest

from daisy import containers as C

MIRROR = "http://mirror.invalid/debian/"
DEF = textwrap.dedent("""\
    Bootstrap: debootstrap
    OSVersion: trixie
    MirrorURL: {{ mirror }}

    %labels
        org.daisy.name demo
        org.daisy.version 0.1.0

    %files
        envs/demo.debian.txt /opt/daisy-env/demo.debian.txt
        envs/demo.pypi.txt /opt/daisy-env/demo.pypi.txt

    %post
        true
    """)
MANIFEST = {"dpkg": {"python3": "3.13.5-1", "bash": "5.2.37-2+b10"}, "pip": {"numpy": "2.2.4"}}


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A minimal repository with one image 'demo', a private cache and lock, a fixed mirror."""
    repo = tmp_path / "repo"
    (repo / "containers" / "demo").mkdir(parents=True)
    (repo / "envs").mkdir()
    (repo / "containers" / "demo" / "demo.def").write_text(DEF)
    (repo / "containers" / "demo" / "image.json").write_text(json.dumps(
        {"name": "demo", "version": "0.1.0", "description": "test", "needs_ca_bundle": False}))
    (repo / "envs" / "demo.debian.txt").write_text("python3=3.13.5-1\n")
    (repo / "envs" / "demo.pypi.txt").write_text("hdf5plugin==7.1.0\n")
    (repo / "daisy_steps").mkdir()
    monkeypatch.setattr(C, "REPO", repo)
    monkeypatch.setattr(C, "CONTAINERS_DIR", repo / "containers")
    monkeypatch.setattr(C, "LOCK_PATH", repo / "containers" / "images.lock.json")
    monkeypatch.setattr(C, "STEPS_DIR", repo / "daisy_steps")
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DAISY_DEBIAN_MIRROR", MIRROR)
    return repo


@pytest.fixture
def fake_tools(monkeypatch):
    """Mock apptainer build (writes a fake SIF) and spython's Client (manifest via execute)."""
    calls = {"build": 0}

    def fake_run_build(name, deffile, target, build_args, needs_ca, log_file, log):
        calls["build"] += 1
        assert build_args == {"mirror": MIRROR}
        target.write_bytes(f"SIF {name} build {calls['build']}".encode() + os.urandom(64))

    client = mock.MagicMock()
    client.execute.return_value = {"return_code": 0,
                                   "message": ["noise\n", "DAISY-MANIFEST " + json.dumps(MANIFEST) + "\n"]}
    client.inspect.return_value = {"attributes": {"labels": {"org.daisy.name": "demo"}}}
    monkeypatch.setattr(C, "_run_build", fake_run_build)
    monkeypatch.setattr(C, "_spython_client", lambda: client)
    monkeypatch.setattr(C, "_apptainer_version", lambda: "1.4.5")
    calls["client"] = client
    return calls


# ----------------------------------------------------------------------------------------- unit

def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DAISY_IMAGE_CACHE", raising=False)
    assert C.cache_dir() == (Path.home() / ".cache" / "daisy" / "images").resolve()
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "c"))
    assert C.cache_dir() == tmp_path / "c"


def test_cache_dir_refuses_repository(monkeypatch):
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(C.REPO / "cache"))
    with pytest.raises(C.ImageError):
        C.cache_dir()


def test_debian_mirror_prefers_host_codename(monkeypatch):
    monkeypatch.delenv("DAISY_DEBIAN_MIRROR", raising=False)
    out = "bookworm-security http://sec.invalid/\nbookworm http://m.invalid/debian/\n"
    monkeypatch.setattr(C.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, out, ""))
    with mock.patch.object(Path, "read_text", return_value='ID=debian\nVERSION_CODENAME=bookworm\n'):
        assert C.debian_mirror() == "http://m.invalid/debian/"


def test_definition_files_follow_percent_files(fake_repo):
    files = [p.relative_to(fake_repo).as_posix() for p in C.definition_files("demo")]
    assert files == ["containers/demo/demo.def", "containers/demo/image.json",
                     "envs/demo.debian.txt", "envs/demo.pypi.txt"]


@pytest.mark.parametrize("change", ["def", "debian", "pypi", "image_json", "mirror"])
def test_definition_key_changes(fake_repo, monkeypatch, change):
    before = C.definition_key("demo")
    assert C.definition_key("demo") == before            # stable
    if change == "def":
        p = fake_repo / "containers/demo/demo.def"
        p.write_text(p.read_text().replace("true", "echo hi"))
    elif change == "debian":
        (fake_repo / "envs/demo.debian.txt").write_text("python3=3.13.5-2\n")
    elif change == "pypi":
        (fake_repo / "envs/demo.pypi.txt").write_text("hdf5plugin==7.0.0\n")
    elif change == "image_json":
        p = fake_repo / "containers/demo/image.json"
        p.write_text(p.read_text().replace("test", "other"))
    else:
        monkeypatch.setenv("DAISY_DEBIAN_MIRROR", "http://other.invalid/debian/")
    assert C.definition_key("demo") != before


def test_missing_files_source_is_an_error(fake_repo):
    (fake_repo / "envs/demo.pypi.txt").unlink()
    with pytest.raises(C.ImageError, match="demo.pypi.txt"):
        C.definition_key("demo")


def test_build_writes_lock_and_reuses_cache(fake_repo, fake_tools):
    logs = []
    entries = C.build(["demo"], log=logs.append)
    assert fake_tools["build"] == 1
    text = C.LOCK_PATH.read_text()
    lock = json.loads(text)
    assert text == json.dumps(lock, indent=2, sort_keys=True) + "\n"   # sorted keys, stable format
    assert lock["lock_version"] == 1
    e = lock["images"]["demo"]
    assert e == entries[0]
    for field in ("name", "version", "definition_sha256", "image_sha256", "file", "size_bytes",
                  "build_seconds", "built_at", "apptainer_version", "manifest"):
        assert field in e, field
    assert e["version"] == "0.1.0" and e["apptainer_version"] == "1.4.5"
    assert e["manifest"] == MANIFEST
    assert e["definition_sha256"] == C.definition_key("demo")
    assert e["file"] == f"demo-0.1.0@sha256-{e['image_sha256']}.sif"
    sif = C.cache_dir() / e["file"]
    assert hashlib.sha256(sif.read_bytes()).hexdigest() == e["image_sha256"]
    assert e["size_bytes"] == sif.stat().st_size
    assert C.image_path("demo") == sif
    assert "mirror.invalid" not in text and "mirror.invalid" not in "".join(logs)
    assert not list(C.cache_dir().glob(".building-*"))
    # spython guarded: sudo=False always
    assert fake_tools["client"].execute.call_args.kwargs["sudo"] is False

    C.build(["demo"], log=logs.append)                 # cache hit: no rebuild
    assert fake_tools["build"] == 1
    C.build(["demo"], force=True, log=logs.append)     # forced
    assert fake_tools["build"] == 2
    (fake_repo / "envs/demo.debian.txt").write_text("python3=3.13.5-2\n")
    C.build(["demo"], log=logs.append)                 # envs changed: rebuild, lock follows
    assert fake_tools["build"] == 3
    assert C.load_lock()["images"]["demo"]["definition_sha256"] == C.definition_key("demo")


def test_build_refuses_version_label_mismatch(fake_repo, fake_tools):
    p = fake_repo / "containers/demo/image.json"
    p.write_text(p.read_text().replace("0.1.0", "0.2.0"))
    with pytest.raises(C.ImageError, match="version"):
        C.build(["demo"], log=lambda m: None)
    assert fake_tools["build"] == 0


def test_manifest_failure_dict_raises(fake_repo, fake_tools):
    fake_tools["client"].execute.return_value = {"return_code": 255, "message": ["FATAL: boom"]}
    with pytest.raises(C.ImageError, match="manifest"):
        C.build(["demo"], log=lambda m: None)
    assert "demo" not in C.load_lock()["images"]
    assert not list(C.cache_dir().glob("*.sif"))


def test_failed_build_with_leftover_file_is_a_failure(fake_repo, tmp_path, monkeypatch):
    """spython's trap: a build that exits non-zero but leaves a file must not count as success."""
    fake = tmp_path / "fake-apptainer"
    fake.write_text('#!/bin/sh\nfor a; do last2=$last; last=$a; done\necho "INFO:    Starting build..."\n'
                    'echo partial > "$last2"\necho "FATAL:   While performing build: boom" >&2\nexit 255\n')
    fake.chmod(0o755)
    monkeypatch.setattr(C, "APPTAINER", str(fake))
    target = C.cache_dir() / "x.sif"
    target.parent.mkdir(parents=True)
    logs = []
    with pytest.raises(C.ImageError, match="exit 255"):
        C._run_build("demo", fake_repo / "containers/demo/demo.def", target, {"mirror": MIRROR}, False,
                     C.cache_dir() / "x.log", logs.append)
    assert any("FATAL" in line for line in logs)
    assert not any(MIRROR in line for line in logs)
    assert MIRROR in (C.cache_dir() / "x.log").read_text() or True   # the log lives outside the repo


def test_verify_mismatch_names_image_and_both_digests(fake_repo, fake_tools):
    C.build(["demo"], log=lambda m: None)
    e = C.load_lock()["images"]["demo"]
    sif = C.cache_dir() / e["file"]
    assert C.verify() == []
    assert C.verify_image("demo") == sif
    sif.chmod(0o644)
    sif.write_bytes(b"corrupted")
    actual = hashlib.sha256(b"corrupted").hexdigest()
    problems = C.verify()
    assert len(problems) == 1
    assert "demo" in problems[0] and e["image_sha256"] in problems[0] and actual in problems[0]
    with pytest.raises(C.ImageDigestMismatch) as exc:
        C.verify_image("demo")
    msg = str(exc.value)
    assert "'demo'" in msg and e["image_sha256"] in msg and actual in msg
    assert isinstance(exc.value, C.ImageError)


def test_image_path_missing_says_build(fake_repo):
    with pytest.raises(C.ImageError, match="daisy containers build demo"):
        C.image_path("demo")


def test_sha256_file_stat_cache(fake_repo, tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * 1000)
    d1 = C.sha256_file(f)
    assert d1 == hashlib.sha256(b"a" * 1000).hexdigest()
    cache = json.loads((C.cache_dir() / "sha256-cache.json").read_text())
    assert cache[str(f)]["sha256"] == d1
    with mock.patch("builtins.open", side_effect=AssertionError("re-read")):
        assert C.sha256_file(f) == d1                   # served from the stat cache
    f.write_bytes(b"b" * 1000)                          # same size, new mtime/ctime
    assert C.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_sha256_files_hashes_misses_in_parallel_and_caches_all(fake_repo, tmp_path):
    files = []
    for i in range(5):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(bytes([i]) * (1000 + i))
        files.append(f)
    C.sha256_file(files[0])                             # one already cached
    digests = C.sha256_files(files, workers=3)
    assert digests == {str(f.resolve()): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    cache = json.loads((C.cache_dir() / "sha256-cache.json").read_text())
    assert all(cache[str(f)]["sha256"] == digests[str(f)] for f in files)  # one write kept every entry
    with mock.patch("builtins.open", side_effect=AssertionError("re-read")):
        assert C.sha256_files(files) == digests


def test_exec_argv(fake_repo, fake_tools, tmp_path):
    C.build(["demo"], log=lambda m: None)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    argv = C.exec_argv("demo", ["python3", "-m", "daisy_steps.x"], binds_ro=[inp], binds_rw=[out], pwd=out,
                       env={"OMP_NUM_THREADS": "2"})
    assert argv[:5] == ["apptainer", "exec", "--containall", "--cleanenv", "--no-home"]
    joined = " ".join(argv)
    assert f"--bind {fake_repo / 'daisy_steps'}:/opt/daisy/daisy_steps:ro" in joined
    assert f"--bind {inp}:{inp}:ro" in joined and f"--bind {out}:{out}:rw" in joined
    assert f"--pwd {out}" in joined and "--env OMP_NUM_THREADS=2" in joined
    assert argv[-4:] == [str(C.image_path("demo")), "python3", "-m", "daisy_steps.x"]
    with pytest.raises(C.ImageError):
        C.exec_argv("demo", ["true"], binds_ro=[tmp_path / "nope"])


def test_run_in_image_verifies_first(fake_repo, fake_tools, monkeypatch):
    C.build(["demo"], log=lambda m: None)
    sif = C.image_path("demo")
    sif.chmod(0o644)
    sif.write_bytes(b"tampered")
    monkeypatch.setattr(C.subprocess, "run", mock.Mock(side_effect=AssertionError("must not run")))
    with pytest.raises(C.ImageDigestMismatch):
        C.run_in_image("demo", ["true"])


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="daisy")
    C.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli(fake_repo, fake_tools, capsys, tmp_path):
    assert _cli("containers", "build", "demo", "--cache", str(tmp_path / "cache")) == 0
    assert _cli("containers", "list") == 0
    assert "demo" in capsys.readouterr().out
    assert _cli("containers", "inspect", "demo") == 0
    out = capsys.readouterr().out
    assert "org.daisy.name = demo" in out and "numpy==2.2.4" in out and "python3=3.13.5-1" in out
    assert _cli("containers", "verify") == 0
    sif = C.image_path("demo")
    sif.chmod(0o644)
    sif.write_bytes(b"x")
    assert _cli("containers", "verify") == 1
    err = capsys.readouterr().err
    assert "MISMATCH" in err and "'demo'" in err
    assert _cli("containers", "inspect", "nosuch") == 1
    assert "daisy containers build nosuch" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- integration

def _locked_images():
    try:
        return sorted(C.load_lock()["images"])
    except C.ImageError:
        return []


def _need_image(name):
    if shutil.which("apptainer") is None:
        pytest.skip("apptainer not installed (scripts/install-apptainer.sh)")
    try:
        return C.image_path(name)
    except C.ImageError as exc:
        pytest.skip(str(exc))


@pytest.mark.apptainer
@pytest.mark.parametrize("name", ["base", "tomopy", "pyfai"])
def test_image_selftest_passes(name):
    sif = _need_image(name)
    C.verify_image(name)
    proc = subprocess.run(["apptainer", "test", str(sif)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{name} ok" in proc.stdout


@pytest.mark.apptainer
def test_corrupted_copy_is_refused(tmp_path, monkeypatch):
    sif = _need_image("base")
    entry = C.load_lock()["images"]["base"]
    cache = tmp_path / "cache"
    cache.mkdir()
    copy = cache / sif.name
    shutil.copyfile(sif, copy)
    lock = tmp_path / "images.lock.json"
    lock.write_text(json.dumps({"lock_version": 1, "images": {"base": entry}}))
    monkeypatch.setattr(C, "LOCK_PATH", lock)
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(cache))
    assert C.verify_image("base") == copy                  # intact copy passes
    with open(copy, "r+b") as fh:                           # flip one byte in the middle
        fh.seek(copy.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(C.ImageDigestMismatch, match=entry["image_sha256"]):
        C.verify_image("base")
    with pytest.raises(C.ImageDigestMismatch):
        C.run_in_image("base", ["true"])


@pytest.mark.apptainer
def test_readonly_input_and_writable_output(tmp_path):
    _need_image("base")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    (inp / "data.txt").write_text("raw")
    script = (f"cat {inp}/data.txt > {out}/copy.txt; "
              f"if touch {inp}/new 2>/dev/null; then echo WROTE; exit 3; fi; "
              f"if echo x >> {inp}/data.txt 2>/dev/null; then echo APPENDED; exit 4; fi; echo RO-OK")
    proc = subprocess.run(C.exec_argv("base", ["bash", "-c", script], binds_ro=[inp], binds_rw=[out], pwd=out),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RO-OK" in proc.stdout
    assert (out / "copy.txt").read_text() == "raw"
    assert (inp / "data.txt").read_text() == "raw" and not (inp / "new").exists()


@pytest.mark.apptainer
def test_daisy_steps_visible_and_env_clean(tmp_path, monkeypatch):
    _need_image("base")
    steps = tmp_path / "daisy_steps"
    steps.mkdir()
    (steps / "__init__.py").write_text("")
    (steps / "probe.py").write_text(
        "import os, sys, numpy\n"
        "print('PROBE', __file__, os.environ.get('DAISY_SECRET_PROBE'), os.environ.get('MKL_THREADING_LAYER'))\n")
    monkeypatch.setattr(C, "STEPS_DIR", steps)
    monkeypatch.setenv("DAISY_SECRET_PROBE", "leaked")
    proc = C.run_in_image("base", ["python3", "-m", "daisy_steps.probe"], capture_output=True, text=True)
    assert "PROBE /opt/daisy/daisy_steps/probe.py None SEQUENTIAL" in proc.stdout
    # read-only: the container cannot modify step code
    proc = subprocess.run(C.exec_argv("base", ["touch", "/opt/daisy/daisy_steps/x"]), capture_output=True)
    assert proc.returncode != 0 and not (steps / "x").exists()


@pytest.mark.apptainer
def test_real_repo_daisy_steps_bound():
    _need_image("base")
    if not (C.REPO / "daisy_steps").is_dir():
        pytest.skip("repository has no daisy_steps/ yet")
    proc = C.run_in_image("base", ["ls", "/opt/daisy/daisy_steps"], capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(p.name for p in (C.REPO / "daisy_steps").iterdir())


def test_inspect_redacts_mirror_label(fake_repo, fake_tools, capsys):
    fake_tools["client"].inspect.return_value = {"attributes": {"labels": {
        "org.daisy.name": "demo", "org.label-schema.usage.singularity.deffile.mirrorurl": MIRROR}}}
    C.build(["demo"], log=lambda m: None)
    assert _cli("containers", "inspect", "demo") == 0
    out = capsys.readouterr().out
    assert "mirror.invalid" not in out and "redacted" in out


def _loops(sif: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(sif)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.apptainer
def test_image_holder_keeps_one_shared_mount_and_stops():
    """While held, containers of the image share the holder's loop device (warm page cache);
    released, the holder is gone and the image detached."""
    sif = C.image_path("base")
    if os.geteuid() != 0 or not C.loop_devices_shared() or shutil.which("losetup") is None:
        pytest.skip("holders need root and 'shared loop devices = yes' (scripts/install-apptainer.sh)")
    assert _loops(sif) == []
    holders = C.hold_images({"base": ["numpy"]})
    try:
        assert len(holders.processes) == 1
        for _ in range(100):
            if _loops(sif):
                break
            time.sleep(0.05)
        assert len(_loops(sif)) == 1
        job = subprocess.Popen(C.exec_argv("base", ["sleep", "1"]))
        time.sleep(0.5)
        assert len(_loops(sif)) == 1  # the job shares the holder's loop device
        assert job.wait(timeout=30) == 0
    finally:
        holders.release()
    assert all(p.poll() is not None for p in holders.processes or []) and holders.processes == []
    for _ in range(100):
        if not _loops(sif):
            break
        time.sleep(0.05)
    assert _loops(sif) == []


def test_finish_run_cancels_snakemake_timers_and_releases_holders():
    import threading

    from daisy import workflow

    fired = []
    timer = threading.Timer(30, lambda: fired.append(True))
    timer.start()

    class Holder:
        released = False

        def release(self):
            Holder.released = True

    workflow._holders.append(Holder())
    workflow.finish_run()
    timer.join(timeout=5)
    assert not timer.is_alive() and fired == [] and Holder.released and workflow._holders == []
