"""Tests for daisy.images (build, lock, verify, inspect, exec, holders, CLI) and daisy.hashing.

Unit tests run anywhere (spython and apptainer are mocked; a throw-away repository layout in tmp_path).
Integration tests (marker ``apptainer``) use the real images from ``containers/images.lock.json`` and the
image cache; they skip locally and fail under CI when apptainer or a locked image is missing
(``tests.conftest.require_image``).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import stat
import subprocess
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest

from daisy import hashing, images
from daisy.images import cli, execute, paths, reproducible
from daisy.images import inspect as image_inspect

from .conftest import require_image
from .workflow_helpers import alive

build_module = importlib.import_module("daisy.images.build")  # daisy.images.build is the function

MIRROR = "http://mirror.invalid/debian/"
DEF = textwrap.dedent("""\
    Bootstrap: debootstrap
    OSVersion: trixie
    MirrorURL: {{ mirror }}

    %labels
        org.daisy.name demo
        # a comment, not a label
        org.daisy.version 0.1.0

    %files
        envs/demo.debian.txt /opt/daisy-env/demo.debian.txt
        # envs/commented-out.txt /nowhere
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
    (repo / "schemas").mkdir()
    monkeypatch.setattr(paths, "REPO", repo)
    monkeypatch.setattr(paths, "CONTAINERS_DIR", repo / "containers")
    monkeypatch.setattr(paths, "LOCK_PATH", repo / "containers" / "images.lock.json")
    monkeypatch.setattr(paths, "STEPS_DIR", repo / "daisy_steps")
    monkeypatch.setattr(paths, "SCHEMAS_DIR", repo / "schemas")
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DAISY_DEBIAN_MIRROR", MIRROR)
    return repo


@pytest.fixture
def fake_tools(monkeypatch):
    """Mock apptainer build (writes a fake SIF, left as it is) and spython's Client (manifest via execute)."""
    calls = {"build": 0}

    def fake_run_build(name, deffile, target, build_args, needs_ca, log_file, log):
        calls["build"] += 1
        assert build_args == {"mirror": MIRROR, "source_date_epoch": str(paths.SOURCE_DATE_EPOCH)}
        target.write_bytes(f"SIF {name} build {calls['build']}".encode() + os.urandom(64))

    client = mock.MagicMock()
    client.execute.return_value = {"return_code": 0,
                                   "message": ["noise\n", "DAISY-MANIFEST " + json.dumps(MANIFEST) + "\n"]}
    client.inspect.return_value = {"attributes": {"labels": {"org.daisy.name": "demo"}}}
    monkeypatch.setattr(build_module, "run_apptainer_build", fake_run_build)
    monkeypatch.setattr(build_module, "normalise", lambda sif, deffile, workdir, log: False)
    monkeypatch.setattr(build_module, "apptainer_version", lambda: "1.4.5")
    monkeypatch.setattr(image_inspect, "spython_client", lambda: client)
    calls["client"] = client
    return calls


def _local(name: str) -> dict:
    return images.load_lock(images.local_lock_path())["images"][name]


def _publish_local(name: str) -> dict:
    """Pin the local build of ``name`` in the (test's) committed lock, as `publish` would."""
    entry = {k: v for k, v in _local(name).items() if k != "origin"}
    images.write_lock({"images": {name: entry}})
    return entry


def _tamper(sif: Path, data: bytes = b"tampered") -> None:
    sif.chmod(0o644)
    sif.write_bytes(data)


# ----------------------------------------------------------------------------------------- unit

def test_public_api_is_exported():
    for name in images.__all__:
        assert getattr(images, name) is not None, name
    assert images.register_cli is cli.register_cli
    assert images.build is build_module.build


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DAISY_IMAGE_CACHE", raising=False)
    assert images.cache_dir() == (Path.home() / ".cache" / "daisy" / "images").resolve()
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "c"))
    assert images.cache_dir() == tmp_path / "c"


def test_cache_dir_refuses_repository(monkeypatch):
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(paths.REPO / "cache"))
    with pytest.raises(images.ImageError):
        images.cache_dir()


def test_debian_mirror_prefers_host_codename(monkeypatch):
    monkeypatch.delenv("DAISY_DEBIAN_MIRROR", raising=False)
    out = "bookworm-security http://sec.invalid/\nbookworm http://m.invalid/debian/\n"
    monkeypatch.setattr(paths.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, out, ""))
    with mock.patch.object(Path, "read_text", return_value='ID=debian\nVERSION_CODENAME=bookworm\n'):
        assert paths.debian_mirror() == "http://m.invalid/debian/"


def test_def_sections_is_the_one_parser(fake_repo):
    sections = paths.def_sections(fake_repo / "containers/demo/demo.def")
    assert sections[""] == ["Bootstrap: debootstrap", "OSVersion: trixie", "MirrorURL: {{ mirror }}"]
    assert sections["%labels"] == ["org.daisy.name demo", "org.daisy.version 0.1.0"]
    assert sections["%post"] == ["true"]
    assert paths.def_label("demo", "org.daisy.version") == "0.1.0"
    assert paths.def_label("demo", "org.daisy.nosuch") is None


def test_definition_files_follow_percent_files(fake_repo):
    files = [p.relative_to(fake_repo).as_posix() for p in paths.definition_files("demo")]
    assert files == ["containers/demo/demo.def", "containers/demo/image.json",
                     "envs/demo.debian.txt", "envs/demo.pypi.txt"]


@pytest.mark.parametrize("change", ["def", "debian", "pypi", "image_json", "mirror"])
def test_definition_key_changes(fake_repo, monkeypatch, change):
    before = images.definition_key("demo")
    assert images.definition_key("demo") == before            # stable
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
    assert images.definition_key("demo") != before


def test_missing_files_source_is_an_error(fake_repo):
    (fake_repo / "envs/demo.pypi.txt").unlink()
    with pytest.raises(images.ImageError, match="demo.pypi.txt"):
        images.definition_key("demo")


def test_build_writes_local_lock_never_the_committed_one(fake_repo, fake_tools):
    logs = []
    entries = images.build(["demo"], log=logs.append)
    assert fake_tools["build"] == 1
    assert not paths.LOCK_PATH.exists()                        # the committed lock is not touched
    local_lock = images.local_lock_path()
    assert local_lock == images.cache_dir() / "local-lock.json"
    text = local_lock.read_text()
    locked = json.loads(text)
    assert text == json.dumps(locked, indent=2, sort_keys=True) + "\n"   # sorted keys, stable format
    assert stat.S_IMODE(local_lock.stat().st_mode) == 0o644
    assert locked["lock_version"] == 1
    e = locked["images"]["demo"]
    assert e == dict(entries[0], origin="local build")
    for field in ("name", "version", "definition_sha256", "image_sha256", "file", "size_bytes",
                  "build_seconds", "built_at", "apptainer_version", "manifest"):
        assert field in e, field
    assert e["version"] == "0.1.0" and e["apptainer_version"] == "1.4.5"
    assert e["manifest"] == MANIFEST
    assert e["definition_sha256"] == images.definition_key("demo")
    assert e["file"] == f"demo-0.1.0@sha256-{e['image_sha256']}.sif"
    sif = images.cache_dir() / e["file"]
    assert hashlib.sha256(sif.read_bytes()).hexdigest() == e["image_sha256"]
    assert e["size_bytes"] == sif.stat().st_size
    assert images.image_path("demo") == sif == images.locked_path("demo") == images.planned_path("demo")
    assert json.loads((sif.parent / (sif.name + ".json")).read_text()) == entries[0]   # the sidecar record
    assert "mirror.invalid" not in text and "mirror.invalid" not in "".join(logs)
    assert not list(images.cache_dir().glob(".building-*"))
    # spython guarded: sudo=False always
    assert fake_tools["client"].execute.call_args.kwargs["sudo"] is False

    images.build(["demo"], log=logs.append)                 # cache hit: no rebuild
    assert fake_tools["build"] == 1
    images.build(["demo"], force=True, log=logs.append)     # forced
    assert fake_tools["build"] == 2
    (fake_repo / "envs/demo.debian.txt").write_text("python3=3.13.5-2\n")
    images.build(["demo"], log=logs.append)                 # envs changed: rebuild, local lock follows
    assert fake_tools["build"] == 3
    assert _local("demo")["definition_sha256"] == images.definition_key("demo")
    assert not paths.LOCK_PATH.exists()


def test_a_cache_hit_is_the_newest_build_of_the_definition(fake_repo, fake_tools, monkeypatch):
    """After `build --force`, two builds of one definition are cached; the next build (a cache hit,
    and what `publish` pins) is the later one, even where its digest sorts last."""
    contents = [b"SIF first build", b"SIF second build"]
    while hashlib.sha256(contents[1]).hexdigest() < hashlib.sha256(contents[0]).hexdigest():
        contents[1] += b"."                                     # the later build's file name sorts last
    monkeypatch.setattr(build_module, "run_apptainer_build",
                        lambda name, deffile, target, *args: target.write_bytes(contents.pop(0)))
    images.build(["demo"], log=lambda m: None)
    [later] = images.build(["demo"], force=True, log=lambda m: None)
    assert len(list(images.cache_dir().glob("demo-*.sif"))) == 2
    [hit] = images.build(["demo"], log=lambda m: None)
    assert not contents and hit["file"] == later["file"] == images.local_entry("demo")["file"]
    assert later["image_sha256"] == max(p.name for p in images.cache_dir().glob("demo-*.sif")).split("@sha256-")[1][:-4]


def test_build_refuses_version_label_mismatch(fake_repo, fake_tools):
    p = fake_repo / "containers/demo/image.json"
    p.write_text(p.read_text().replace("0.1.0", "0.2.0"))
    with pytest.raises(images.ImageError, match="version"):
        images.build(["demo"], log=lambda m: None)
    assert fake_tools["build"] == 0


def test_manifest_failure_dict_raises(fake_repo, fake_tools):
    fake_tools["client"].execute.return_value = {"return_code": 255, "message": ["FATAL: boom"]}
    with pytest.raises(images.ImageError, match="manifest"):
        images.build(["demo"], log=lambda m: None)
    assert "demo" not in images.load_lock()["images"]
    assert images.local_entry("demo") is None
    assert not list(images.cache_dir().glob("*.sif"))


def test_failed_build_with_leftover_file_is_a_failure(fake_repo, tmp_path, monkeypatch):
    """spython's trap: a build that exits non-zero but leaves a file must not count as success."""
    fake = tmp_path / "fake-apptainer"
    fake.write_text('#!/bin/sh\nfor a; do last2=$last; last=$a; done\necho "INFO:    Starting build..."\n'
                    'echo partial > "$last2"\necho "FATAL:   While performing build: boom" >&2\nexit 255\n')
    fake.chmod(0o755)
    monkeypatch.setattr(paths, "APPTAINER", str(fake))
    target = images.cache_dir() / "x.sif"
    target.parent.mkdir(parents=True)
    log_file = images.cache_dir() / "x.log"
    logs = []
    with pytest.raises(images.ImageError, match="exit 255"):
        build_module.run_apptainer_build("demo", fake_repo / "containers/demo/demo.def", target,
                                         {"mirror": MIRROR}, False, log_file, logs.append)
    assert any("FATAL" in line for line in logs)
    assert not any(MIRROR in line for line in logs)
    assert "mirror=<host mirror>" in logs[0]
    text = log_file.read_text()                                # the full output, outside the repository
    assert "Starting build" in text and "FATAL:   While performing build: boom" in text
    assert not log_file.resolve().is_relative_to(fake_repo)
    assert not (images.cache_dir() / "build-tmp" / "demo").exists()   # private /tmp removed


def test_verify_mismatch_names_image_and_both_digests(fake_repo, fake_tools):
    images.build(["demo"], log=lambda m: None)
    e = _publish_local("demo")
    sif = images.cache_dir() / e["file"]
    assert images.verify() == []
    assert images.verify_image("demo") == sif
    _tamper(sif, b"corrupted")
    actual = hashlib.sha256(b"corrupted").hexdigest()
    problems = images.verify()
    assert len(problems) == 1
    assert "demo" in problems[0] and e["image_sha256"] in problems[0] and actual in problems[0]
    with pytest.raises(images.ImageDigestMismatch) as exc:
        images.verify_image("demo")
    msg = str(exc.value)
    assert "'demo'" in msg and e["image_sha256"] in msg and actual in msg
    assert isinstance(exc.value, images.ImageError)


def test_image_path_missing_says_ensure(fake_repo):
    with pytest.raises(images.ImageError, match="daisy containers ensure demo"):
        images.image_path("demo")


def test_write_hashed_copies_and_hashes_through_reused_buffers(tmp_path, monkeypatch):
    from daisy.images import transfer
    import io

    monkeypatch.setattr(transfer, "CHUNK", 1000)
    data = os.urandom(transfer.BUFFERS * 1000 * 3 + 123)         # buffers reused many times, a short tail

    class Trickle(io.RawIOBase):                                 # short reads, as sockets give
        def __init__(self):
            self.pos = 0

        def readinto(self, view):
            n = min(len(view), 333, len(data) - self.pos)
            view[:n] = data[self.pos:self.pos + n]
            self.pos += n
            return n

    for source in (io.BytesIO(data), Trickle()):
        target = tmp_path / "copy"
        assert transfer.write_hashed(source, target) == hashlib.sha256(data).hexdigest()
        assert target.read_bytes() == data


def test_sha256_file_stat_cache(fake_repo, tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * 1000)
    d1 = hashing.sha256_file(f)
    assert d1 == hashlib.sha256(b"a" * 1000).hexdigest() == hashing.sha256_bytes(b"a" * 1000)
    cache_file = images.cache_dir() / "sha256-cache.json"
    assert json.loads(cache_file.read_text())[str(f)]["sha256"] == d1
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o644
    with mock.patch("builtins.open", side_effect=AssertionError("re-read")):
        assert hashing.sha256_file(f) == d1                   # served from the stat cache
    f.write_bytes(b"b" * 1000)                                # same size, new mtime/ctime
    assert hashing.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_large_files_are_hashed_with_read_ahead(tmp_path, monkeypatch):
    from daisy_steps import fileio

    monkeypatch.setattr(fileio, "OVERLAP_BYTES", 1000)
    monkeypatch.setattr(fileio, "HASH_CHUNK", 4096)
    for size in (0, 999, 1000, 4096 * 3, 4096 * 3 + 17):
        f = tmp_path / f"f{size}.bin"
        f.write_bytes(os.urandom(size))
        assert fileio.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest(), size


def test_finished_jobs_outputs_are_hashed_while_the_run_goes_on(fake_repo, tmp_path, monkeypatch):
    """daisy.hash_ahead: a completed job's record names an output it left unhashed (over its
    hash limit): the run's watcher hashes it into the cache; the provenance's later call finds it
    there, or waits for the hash in progress. Outputs that are not targets, or already hashed, and
    failed jobs' records are left alone."""
    from daisy import hash_ahead

    records = tmp_path / "records"
    records.mkdir()
    slab, other, small = (tmp_path / n for n in ("slab.h5", "not-a-target.h5", "small.json"))
    slab.write_bytes(b"s" * 300_000)
    other.write_bytes(b"o" * 1000)
    small.write_bytes(b"{}")
    calls = []
    real = hashing.sha256_file_uncached

    def counted(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file_uncached", counted)
    monkeypatch.setattr(hash_ahead, "POLL_SECONDS", 0.01)
    watcher = hash_ahead.start(records, [slab, small])
    try:
        (records / "failed.json").write_text(json.dumps({"status": "failed", "outputs": {str(small): {"size": 2}}}))
        (records / "ct_slab_0000.json").write_text(json.dumps({"status": "completed", "outputs": {
            str(slab): {"size": 300_000}, str(other): {"size": 1000},
            str(small): {"size": 2, "sha256": "ab" * 32}}}))
        deadline = time.monotonic() + 10
        while not watcher.hashed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.hashed == [str(slab.resolve())]
    finally:
        hash_ahead.stop()
    assert hashing.sha256_file(slab) == hashlib.sha256(slab.read_bytes()).hexdigest()
    assert calls == [str(slab.resolve())]                     # hashed once, by the watcher


def test_sha256_files_hashes_misses_in_parallel_and_caches_all(fake_repo, tmp_path):
    files = []
    for i in range(5):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(bytes([i]) * (1000 + i))
        files.append(f)
    hashing.sha256_file(files[0])                             # one already cached
    digests = hashing.sha256_files(files, workers=3)
    assert digests == {str(f.resolve()): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    cache = json.loads((images.cache_dir() / "sha256-cache.json").read_text())
    assert all(cache[str(f)]["sha256"] == digests[str(f)] for f in files)  # one write kept every entry
    with mock.patch("builtins.open", side_effect=AssertionError("re-read")):
        assert hashing.sha256_files(files) == digests


def test_bind_specs(fake_repo, tmp_path, monkeypatch):
    inp, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    for folder in (inp, other, out):
        folder.mkdir()
    monkeypatch.chdir(tmp_path)
    specs = images.bind_specs(binds_ro=["in", inp, other / ".." / "in", other, out],
                              binds_rw=[out, "out"])
    assert specs == [
        f"{fake_repo / 'daisy_steps'}:/opt/daisy/daisy_steps:ro",   # the code first, read-only
        f"{fake_repo / 'schemas'}:/opt/daisy/schemas:ro",
        f"{inp}:{inp}:ro",                                         # relative and '..' paths made absolute,
        f"{other}:{other}:ro",                                     # each folder once
        f"{out}:{out}:rw",                                         # read-write wins over read-only
    ]
    assert all(Path(spec.split(":")[0]).is_absolute() for spec in specs)
    assert images.bind_specs()[:2] == specs[:2]
    with pytest.raises(images.ImageError, match="does not exist"):
        images.bind_specs(binds_ro=[tmp_path / "nope"])
    (tmp_path / "a,b").mkdir()
    with pytest.raises(images.ImageError, match="may not contain"):
        images.bind_specs(binds_rw=[tmp_path / "a,b"])


def test_exec_argv(fake_repo, fake_tools, tmp_path):
    images.build(["demo"], log=lambda m: None)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    argv = images.exec_argv("demo", ["python3", "-m", "daisy_steps.x"], binds_ro=[inp], binds_rw=[out], pwd=out,
                            env={"OMP_NUM_THREADS": "2"})
    assert argv[:5] == ["apptainer", "exec", "--containall", "--cleanenv", "--no-home"]
    binds = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--bind"]
    assert binds == images.bind_specs(binds_ro=[inp], binds_rw=[out])
    joined = " ".join(argv)
    assert f"--pwd {out}" in joined and "--env OMP_NUM_THREADS=2" in joined
    assert argv[-4:] == [str(images.image_path("demo")), "python3", "-m", "daisy_steps.x"]
    with pytest.raises(images.ImageError):
        images.exec_argv("demo", ["true"], binds_ro=[tmp_path / "nope"])


def test_run_job_in_image_verifies_first(fake_repo, fake_tools, tmp_path, monkeypatch):
    from daisy import workflow

    images.build(["demo"], log=lambda m: None)
    _tamper(images.image_path("demo"))
    monkeypatch.setattr(subprocess, "run", mock.Mock(side_effect=AssertionError("must not run")))
    with pytest.raises(images.ImageDigestMismatch):
        workflow.run_job_in_image("demo", {"job": "j", "steps": []}, tmp_path / "out" / "j.json", tmp_path / "out")


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="daisy")
    images.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli(fake_repo, fake_tools, capsys, tmp_path):
    assert _cli("containers", "build", "demo", "--cache", str(tmp_path / "cache")) == 0
    _publish_local("demo")
    assert _cli("containers", "list") == 0
    assert "demo" in capsys.readouterr().out
    assert _cli("containers", "inspect", "demo") == 0
    out = capsys.readouterr().out
    assert "org.daisy.name = demo" in out and "numpy==2.2.4" in out and "python3=3.13.5-1" in out
    assert _cli("containers", "verify") == 0
    _tamper(images.image_path("demo"), b"x")
    assert _cli("containers", "verify") == 1
    err = capsys.readouterr().err
    assert "MISMATCH" in err and "'demo'" in err
    assert _cli("containers", "inspect", "nosuch") == 1
    assert "daisy containers ensure nosuch" in capsys.readouterr().err


def test_prune_keeps_images_of_both_locks(fake_repo, fake_tools, capsys):
    images.build(["demo"], log=lambda m: None)
    old = _local("demo")["file"]
    images.build(["demo"], force=True, log=lambda m: None)
    new = _local("demo")["file"]
    assert old != new and (images.cache_dir() / old).exists()
    assert cli.prune(dry_run=True) == [images.cache_dir() / old] and (images.cache_dir() / old).exists()
    assert _cli("containers", "prune") == 0
    assert f"removed {old}" in capsys.readouterr().out
    assert not (images.cache_dir() / old).exists() and not (images.cache_dir() / (old + ".json")).exists()
    assert (images.cache_dir() / new).exists()


def test_inspect_redacts_mirror_label(fake_repo, fake_tools, capsys):
    fake_tools["client"].inspect.return_value = {"attributes": {"labels": {
        "org.daisy.name": "demo", "org.label-schema.usage.singularity.deffile.mirrorurl": MIRROR}}}
    images.build(["demo"], log=lambda m: None)
    assert _cli("containers", "inspect", "demo") == 0
    out = capsys.readouterr().out
    assert "mirror.invalid" not in out and "redacted" in out


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


# ----------------------------------------------------------------------------------------- integration

def _run_verified(name: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    images.verify_image(name)
    return subprocess.run(images.exec_argv(name, argv), capture_output=True, text=True, **kwargs)


@pytest.mark.apptainer
@pytest.mark.parametrize("name", ["base", "tomopy", "pyfai"])
def test_image_selftest_passes(name):
    sif = require_image(name)
    images.verify_image(name)
    proc = subprocess.run(["apptainer", "test", str(sif)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{name} ok" in proc.stdout


@pytest.mark.apptainer
def test_two_builds_of_one_definition_give_the_same_sha256(capfd):
    """`daisy containers reproduce base` rebuilds base from nothing in a scratch cache: it is the
    cached build bit for bit, and the committed lock's digest wherever the cached build is (any
    machine with these tools rebuilds the pinned image)."""
    if os.geteuid() != 0:
        pytest.skip("reproducible builds need root (unsquashfs restores file owners)")
    [cached] = images.build(["base"], log=lambda m: None)
    pinned = images.published_entry("base")
    assert cached["reproducible"] is True
    rc = _cli("containers", "reproduce", "base")
    out, err = capfd.readouterr()
    assert "[base] building 1.0.0" in out                      # really rebuilt, not a cache hit
    assert not list(images.cache_dir().glob("reproduce-*"))    # the scratch cache is gone
    if cached["image_sha256"] == pinned["image_sha256"]:        # the pin was made with tools like these
        assert rc == 0
        assert f"[base] reproduced: sha256:{cached['image_sha256']} is the committed lock's, bit for bit" in out
    else:                                                       # other tools: the rebuild is still the cached build
        assert rc == 1
        assert f"built sha256:{cached['image_sha256']}, the lock pins sha256:{pinned['image_sha256']}" in err
    sif = images.cache_dir() / cached["file"]
    labels = json.loads(subprocess.run([paths.APPTAINER, "inspect", "--json", str(sif)], capture_output=True,
                                       text=True, check=True).stdout)["data"]["attributes"]["labels"]
    assert labels["org.label-schema.build-date"] == reproducible.build_date()
    assert labels["org.label-schema.usage.singularity.deffile.mirrorurl"] == "{{ mirror }}"   # no host in it
    deffile = subprocess.run([paths.APPTAINER, "sif", "dump", "1", str(sif)], capture_output=True, check=True).stdout
    assert deffile == (paths.REPO / "containers" / "base" / "base.def").read_bytes()


def test_publish_without_a_store_pins_only_reproducible_unsigned_builds(fake_repo, fake_tools, monkeypatch, capsys,
                                                                         tmp_path):
    assert _cli("containers", "publish", "demo") == 1             # the fake build is not normalised
    assert "was not built reproducibly" in capsys.readouterr().err and not paths.LOCK_PATH.exists()
    assert _cli("containers", "publish", "demo", "--sign-key", str(tmp_path / "key.pem")) == 1
    assert "publish it to a store" in capsys.readouterr().err and not paths.LOCK_PATH.exists()

    monkeypatch.setattr(build_module, "normalise", lambda sif, deffile, workdir, log: True)
    monkeypatch.setattr(build_module, "_self_test", lambda name, sif, log_file: None)
    assert _cli("containers", "build", "demo", "--force") == 0
    assert _cli("containers", "publish", "demo") == 0
    pinned = images.published_entry("demo")
    assert pinned["image_sha256"] == images.local_entry("demo")["image_sha256"]
    assert pinned["stores"] == [] and pinned["reproducible"] is True
    assert "at no store (rebuilds reproduce it)" in capsys.readouterr().out


def test_shadow_last_changed_days_are_the_epochs_not_the_build_day():
    built_today = "root:*:20788:0:99999:7:::\nnobody:!::0:99999:7:::\n_apt:*:20789:0:99999:7:::\n"
    day = str(paths.SOURCE_DATE_EPOCH // 86400)
    assert reproducible.fixed_shadow(built_today) == (f"root:*:{day}:0:99999:7:::\nnobody:!::0:99999:7:::\n"
                                                      f"_apt:*:{day}:0:99999:7:::\n")   # unset stays unset


def test_reproduce_names_both_digests_when_the_rebuild_differs(fake_repo, fake_tools, monkeypatch, capsys):
    images.build(["demo"], log=lambda m: None)
    _publish_local("demo")
    pinned = images.published_entry("demo")["image_sha256"]

    def rebuild(cmd, cwd=None):               # the subprocess `daisy containers build --cache SCRATCH demo`
        scratch = Path(cmd[cmd.index("--cache") + 1])
        scratch.mkdir(parents=True)
        entry = dict(images.local_entry("demo"), image_sha256="f" * 64, mksquashfs_version="4.6.1")
        (scratch / paths.LOCAL_LOCK_NAME).write_text(json.dumps({"lock_version": 1, "images": {"demo": entry}}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(reproducible.subprocess, "run", rebuild)
    assert _cli("containers", "reproduce", "demo") == 1
    err = capsys.readouterr().err
    assert f"built sha256:{'f' * 64}, the lock pins sha256:{pinned}" in err
    assert "tools differ: mksquashfs_version" in err and "→ 4.6.1" in err
    assert not list(images.cache_dir().glob("reproduce-*"))


@pytest.mark.apptainer
def test_corrupted_copy_is_refused(tmp_path, monkeypatch):
    from daisy import workflow

    sif = require_image("base")
    entry = images.load_lock()["images"]["base"]
    cache = tmp_path / "cache"
    cache.mkdir()
    copy = cache / sif.name
    shutil.copyfile(sif, copy)
    lock_file = tmp_path / "images.lock.json"
    lock_file.write_text(json.dumps({"lock_version": 1, "images": {"base": entry}}))
    monkeypatch.setattr(paths, "LOCK_PATH", lock_file)
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(cache))
    assert images.verify_image("base") == copy                  # intact copy passes
    with open(copy, "r+b") as fh:                                # flip one byte in the middle
        fh.seek(copy.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(images.ImageDigestMismatch, match=entry["image_sha256"]):
        images.verify_image("base")
    with pytest.raises(images.ImageDigestMismatch):
        workflow.run_job_in_image("base", {"job": "j", "steps": []}, tmp_path / "out" / "j.json", tmp_path / "out")


@pytest.mark.apptainer
def test_readonly_input_and_writable_output(tmp_path):
    require_image("base")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir(), out.mkdir()
    (inp / "data.txt").write_text("raw")
    script = (f"cat {inp}/data.txt > {out}/copy.txt; "
              f"if touch {inp}/new 2>/dev/null; then echo WROTE; exit 3; fi; "
              f"if echo x >> {inp}/data.txt 2>/dev/null; then echo APPENDED; exit 4; fi; echo RO-OK")
    proc = subprocess.run(images.exec_argv("base", ["bash", "-c", script], binds_ro=[inp], binds_rw=[out], pwd=out),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RO-OK" in proc.stdout
    assert (out / "copy.txt").read_text() == "raw"
    assert (inp / "data.txt").read_text() == "raw" and not (inp / "new").exists()


@pytest.mark.apptainer
def test_daisy_steps_visible_and_env_clean(tmp_path, monkeypatch):
    require_image("base")
    steps = tmp_path / "daisy_steps"
    steps.mkdir()
    (steps / "__init__.py").write_text("")
    (steps / "probe.py").write_text(
        "import os, sys, numpy\n"
        "print('PROBE', __file__, os.environ.get('DAISY_SECRET_PROBE'), os.environ.get('MKL_THREADING_LAYER'))\n")
    monkeypatch.setattr(paths, "STEPS_DIR", steps)
    monkeypatch.setenv("DAISY_SECRET_PROBE", "leaked")
    proc = _run_verified("base", ["python3", "-m", "daisy_steps.probe"])
    assert "PROBE /opt/daisy/daisy_steps/probe.py None SEQUENTIAL" in proc.stdout, proc.stderr
    # read-only: the container cannot modify step code
    proc = subprocess.run(images.exec_argv("base", ["touch", "/opt/daisy/daisy_steps/x"]), capture_output=True)
    assert proc.returncode != 0 and not (steps / "x").exists()


@pytest.mark.apptainer
def test_real_repo_daisy_steps_bound():
    require_image("base")
    proc = _run_verified("base", ["ls", "/opt/daisy/daisy_steps"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == sorted(p.name for p in images.STEPS_DIR.iterdir())


def _loops(sif: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(sif)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _process_tree(roots: list[int]) -> set[int]:
    """``roots`` and all their descendants now running (from /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


@pytest.mark.apptainer
def test_image_holder_keeps_one_shared_mount_and_stops():
    """While held, containers of the image share the holder's loop device (warm page cache);
    released, every holder process is gone and the image detached."""
    sif = require_image("base")
    if os.geteuid() != 0 or not execute.loop_devices_shared() or shutil.which("losetup") is None:
        pytest.skip("holders need root and 'shared loop devices = yes' (scripts/install-apptainer.sh)")
    if _loops(sif):  # another DAISY run on this machine holds the image: the counts below need it unheld
        pytest.skip(f"another process holds {sif.name} mounted")
    holders = images.hold_images({"base": ["numpy"]})
    try:
        assert len(holders.processes) == 1
        captured = list(holders.processes)
        for _ in range(100):
            if _loops(sif):
                break
            time.sleep(0.05)
        assert len(_loops(sif)) == 1
        job = subprocess.Popen(images.exec_argv("base", ["sleep", "1"]))
        time.sleep(0.5)
        assert len(_loops(sif)) == 1  # the job shares the holder's loop device
        assert job.wait(timeout=30) == 0
        held_pids = _process_tree([p.pid for p in captured])   # apptainer, starter, the container's sleep
        assert all(alive(pid) for pid in (p.pid for p in captured))
    finally:
        holders.release()
    assert all(p.returncode is not None for p in captured)       # exited and reaped by release()
    for _ in range(100):
        if not any(alive(pid) for pid in held_pids) and not _loops(sif):
            break
        time.sleep(0.05)
    assert [pid for pid in held_pids if alive(pid)] == []
    assert _loops(sif) == []


def _push_fake(args):
    root, i = args
    from daisy.images import stores as st

    sif = Path(root) / f"src-{i}.sif"
    sif.write_bytes(f"image {i}".encode() * 1000)
    digest = hashlib.sha256(sif.read_bytes()).hexdigest()
    entry = {"name": f"img{i % 4}", "version": f"1.{i // 4}", "image_sha256": digest,
             "file": st.sif_name(f"img{i % 4}", f"1.{i // 4}", digest)}
    st.parse_store(f"dir://{root}/store").push(sif, entry)
    return entry


def test_dir_store_concurrent_writers_keep_every_entry(tmp_path, monkeypatch):
    """Eight processes push at once into one dir:// store: the index (lock file + rename) has them all."""
    import multiprocessing

    from daisy.images import stores

    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    with multiprocessing.get_context("fork").Pool(8) as pool:
        entries = pool.map(_push_fake, [(str(tmp_path), i) for i in range(8)])
    store = stores.parse_store(f"dir://{tmp_path}/store")
    index = store.index()
    assert sum(len(v) for v in index["images"].values()) == 8
    for e in entries:
        assert index["images"][e["name"]][e["version"]]["sha256"] == e["image_sha256"]
        assert hashlib.sha256(store.file_for(e).read_bytes()).hexdigest() == e["image_sha256"]
    assert not [p for p in (tmp_path / "store").rglob(".pushing-*")]
    other = dict(entries[0], image_sha256="0" * 64)
    (tmp_path / "other.sif").write_bytes(b"other")
    with pytest.raises(images.ImageError, match="refusing other content"):
        store.push(tmp_path / "other.sif", other)


def test_store_urls_and_insecure_registries(monkeypatch):
    from daisy.images import stores

    monkeypatch.delenv("DAISY_INSECURE_REGISTRIES", raising=False)
    assert stores.parse_store("oras://127.0.0.1:5000/daisy").insecure
    assert not stores.parse_store("oras://registry.invalid:5000/daisy").insecure
    monkeypatch.setenv("DAISY_INSECURE_REGISTRIES", "registry.invalid:5000")
    s = stores.parse_store("oras://registry.invalid:5000/ns/sub")
    assert s.insecure and s.ref("base", "1.0.0") == "oras://registry.invalid:5000/ns/sub/base:1.0.0"
    assert s.ref("base", "sha256:" + "a" * 64).endswith("/ns/sub/base@sha256:" + "a" * 64)
    assert isinstance(stores.parse_store("dir:///srv/images"), stores.DirStore)
    for bad in ("http://x/y", "dir://relative"):
        with pytest.raises(images.ImageError):
            stores.parse_store(bad)
    monkeypatch.setenv("DAISY_IMAGE_STORES", "dir:///a, oras://127.0.0.1:1/x")
    urls = [s.url for s in stores.configured_stores({"stores": ["dir:///a", "dir:///b"]})]
    assert urls == ["dir:///a", "oras://127.0.0.1:1/x", "dir:///b"]
