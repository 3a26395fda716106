"""``daisy archive`` and ``daisy rerun``: a CT and an XRD run archived with images and inputs, a
valid BagIt bag, rerun with an empty image cache and no network to identical outputs; corrupted,
incomplete and hostile archives refused, naming what is wrong; a changed checkout refused.

One CT and one XRD run (module fixtures) serve every test; negative tests corrupt copies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from .conftest import require_image
from .workflow_helpers import REPO, daisy

#: what ran, as provenance v2 records it (``workflow_files``); the fallback below is for v1 only
WORKFLOW_PARTS = ("Snakefile", "rules", "daisy", "daisy_steps", "schemas", "profiles",
                  "containers/images.lock.json", "pyproject.toml")
IMAGE_TESTS = [pytest.mark.apptainer, pytest.mark.snakemake]


def daisy_cli(*args: str, cwd: Path, env: dict | None = None, prefix: tuple = ()) -> subprocess.CompletedProcess:
    """``daisy archive|rerun`` as a subprocess (the subcommands' own entry point)."""
    return subprocess.run([*prefix, sys.executable, "-m", "daisy.archive_cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def ensure_workflow_files(outdir: Path) -> None:
    """Provenance version 1 has no ``workflow_files``/``status``: record them the way v2 does
    (this checkout, right after the run). A no-op once the run side records them."""
    path = outdir / "provenance.json"
    prov = json.loads(path.read_text())
    if prov.get("workflow_files"):
        return
    files = {}
    for part in WORKFLOW_PARTS:
        top = REPO / part
        for f in [top] if top.is_file() else sorted(top.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                data = f.read_bytes()
                files[f.relative_to(REPO).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    prov.update(workflow_files=files, status=prov.get("status", "completed"))
    path.write_text(json.dumps(prov, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small CT and XRD run by ``daisy run``, configs with paths relative to the working directory."""
    for image in ("tomopy", "base", "pyfai"):
        require_image(image)
    from daisy.workflow import run_job_in_image

    work = tmp_path_factory.mktemp("archive-runs")
    data = work / "data"
    ct = [{"step": "sample.ct_phantom", "outputs": {"raw": str(data / "ct.h5")},
           "params": {"size": 32, "n_angles": 60, "layout": "nxtomo", "seed": 7}}]
    run_job_in_image("tomopy", {"job": "sample_ct", "threads": 2, "steps": ct}, work / "jobs" / "ct.json", work)
    xrd = [{"step": "sample.xrd_eiger", "params": {"n_frames": 4, "frames_per_file": 2, "binning": 8, "seed": 3},
            "outputs": {"scan": str(data / "xrd" / "scan_00001_master.h5"), "poni": str(data / "xrd" / "scan_00001.poni")}}]
    run_job_in_image("pyfai", {"job": "sample_xrd", "threads": 2, "steps": xrd}, work / "jobs" / "xrd.json", work)
    configs = {
        "ct": {"config_version": 1, "pipeline": "ct", "outdir": "results/ct", "threads": 2,
               "input": {"file": "data/ct.h5"}, "slabs": {"count": 2, "per_job": 1}},
        "xrd": {"config_version": 1, "pipeline": "xrd", "outdir": "results/xrd", "threads": 2,
                "input": {"file": "data/xrd/scan_00001_master.h5"}, "blocks": {"count": 2}, "save": {"xy": True},
                "integrate": {"geometry": {"poni": "data/xrd/scan_00001.poni"}, "npt": 500, "integrate_2d": True}},
    }
    for name, cfg in configs.items():
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = daisy("run", name, "--config", str(path), cwd=work)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        ensure_workflow_files(work / "results" / name)
    return work


@pytest.fixture(scope="module")
def archives(runs, tmp_path_factory):
    """Each run archived ``--with-images --with-inputs``, and the XRD run without either."""
    out = tmp_path_factory.mktemp("archives")
    made = {}
    for name, options in (("ct", ["--with-images", "--with-inputs"]), ("xrd", ["--with-images", "--with-inputs"]),
                          ("xrd-bare", [])):
        made[name] = out / f"{name}.tar"
        res = daisy_cli("archive", f"results/{name.split('-')[0]}", "-o", str(made[name]), *options, cwd=runs)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "daisy archive: wrote" in res.stdout
    return made


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive, "r:") as tar:     # uncompressed
        return {m.name.split("/", 1)[1]: m for m in tar if "/" in m.name}


def report_of(workdir: Path) -> dict:
    return json.loads((workdir / "rerun-report.json").read_text())


def assert_reproduced(report: dict, allowed: frozenset = frozenset()) -> None:
    """Every output reproduced: identical bit for bit, or result files that differ only in the
    NXprocess fields that change from run to run (dates) and in ``allowed`` kinds of metadata."""
    assert report["snakemake_exit"] == 0 and report["outputs"] and report["verdict"] == "identical"
    for row in report["outputs"]:
        if row["verdict"] == "identical":
            continue
        assert row["verdict"] == "identical except run-dependent fields", row
        kinds = {item["kind"] for item in row["metadata"]}
        assert kinds <= {"run-dependent process field", *allowed}, row


# -- the bag -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ct", "xrd"])
@pytest.mark.apptainer
@pytest.mark.snakemake
def test_archive_is_a_valid_bag(runs, archives, name, tmp_path):
    import bagit

    import daisy

    with tarfile.open(archives[name], "r:") as tar:
        assert all(m.isreg() for m in tar)
        tops = {m.name.split("/")[0] for m in tar}
        tar.extractall(tmp_path, filter="data")
    assert tops == {name}
    bag = bagit.Bag(str(tmp_path / name))
    bag.validate()                                             # completeness and every sha256
    assert bag.info["DAISY-Version"] == daisy.__version__ and bag.info["Bagging-Date"]
    assert "Payload-Oxum" in bag.info and "sha256" in bag.algorithms
    assert (tmp_path / name / "tagmanifest-sha256.txt").is_file()
    prov = json.loads((runs / "results" / name / "provenance.json").read_text())
    data = tmp_path / name / "data"
    for rel in ("provenance.json", "config.resolved.yaml", "records", "logs", "jobs"):
        assert (data / "run" / rel).exists(), rel
    for rel in prov["workflow_files"]:
        assert (data / "workflow" / rel).is_file(), rel
    assert (data / "workflow" / "Snakefile").is_file() and (data / "workflow" / "containers" / "images.lock.json").is_file()
    for info in prov["images"].values():
        assert bag.entries[f"data/images/{info['file']}"]["sha256"] == info["image_sha256"]
    for key, info in prov["inputs"].items():
        path = (runs / key).resolve()
        assert bag.entries[f"data/inputs/{str(path).lstrip('/')}"]["sha256"] == info["sha256"]
    for key, info in prov["outputs"].items():         # the manifest carries the run's own digests
        rel = Path(key).relative_to(f"results/{name}").as_posix()
        assert bag.entries[f"data/run/{rel}"]["sha256"] == info["sha256"]


# -- reruns --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ct", "xrd"])
@pytest.mark.apptainer
@pytest.mark.snakemake
def test_rerun_offline_with_an_empty_image_cache(archives, name, tmp_path):
    """The archive alone suffices: no image cache, no network; every output identical."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    work = tmp_path / "rerun"
    res = daisy_cli("rerun", str(archives[name]), "--workdir", str(work), "--offline", cwd=tmp_path,
                    env={"DAISY_IMAGE_CACHE": str(empty)}, prefix=("unshare", "--net"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    assert "[2/5] extracting and validating" in res.stdout and "verdict: IDENTICAL" in res.stdout
    assert "bit for bit" in res.stdout
    report = report_of(work)
    assert report["verdict"] == "identical" and report["offline"] and report["software"] == "archived"
    assert_reproduced(report)
    assert {info["from"] for info in report["images"].values()} == {"archive"}
    assert {info["from"] for info in report["inputs"].values()} == {"archive"}
    assert (work / "rerun-report.txt").read_text() in res.stdout
    assert not any(empty.iterdir())
    assert (work / "workflow" / "Snakefile").is_file()
    assert report["outdir"] == str(work / "work" / "results" / name)       # relative paths stay relative
    assert (work / "work" / "results" / name / "provenance.json").is_file()


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_rerun_with_current_software(archives, tmp_path):
    work = tmp_path / "rerun"
    res = daisy_cli("rerun", str(archives["xrd"]), "--workdir", str(work), "--current-software", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    report = report_of(work)
    assert report["software"] == "current" and report["workflow"] == str(REPO)
    assert_reproduced(report)


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_rerun_takes_images_from_the_cache_and_inputs_from_their_paths(archives, tmp_path):
    """An archive without images and inputs: images hard-linked from the image cache by digest,
    inputs read where the run read them (rewritten to absolute paths: outputs that record an
    input's path differ in that metadata only)."""
    work = tmp_path / "rerun"
    res = daisy_cli("rerun", str(archives["xrd-bare"]), "--workdir", str(work), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    report = report_of(work)
    assert {info["from"] for info in report["images"].values()} <= {"image cache (hard link)", "image cache (copy)"}
    assert {info["from"] for info in report["inputs"].values()} == {"recorded path"}
    assert_reproduced(report, allowed=frozenset({"relocated paths"}))


# -- corrupted and incomplete archives -------------------------------------------------------------

def flip_byte(archive: Path, member: str, dest: Path) -> Path:
    shutil.copyfile(archive, dest)
    info = members(dest)[member]
    with open(dest, "r+b") as handle:
        handle.seek(info.offset_data + info.size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return dest


def rewrite(archive: Path, dest: Path, drop: str | None = None, add: tuple[str, bytes] | None = None) -> Path:
    with tarfile.open(archive, "r:") as src, tarfile.open(dest, "w") as out:
        top = ""
        for m in src:
            top = m.name.split("/")[0]
            if m.name != f"{top}/{drop}":
                out.addfile(m, src.extractfile(m))
        if add:
            info = tarfile.TarInfo(f"{top}/{add[0]}")
            info.size = len(add[1])
            out.addfile(info, io.BytesIO(add[1]))
    return dest


def refused(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in res.stderr, res.stderr
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("what", ["output", "image", "input"])
@pytest.mark.apptainer
@pytest.mark.snakemake
def test_a_flipped_byte_is_caught_and_named(archives, what, tmp_path):
    names = members(archives["xrd"])
    member = {"output": "data/run/xrd/scan_00001_integrated.h5",
              "image": next(n for n in names if n.startswith("data/images/")),
              "input": next(n for n in names if n.endswith("scan_00001_data_000001.h5"))}[what]
    bad = flip_byte(archives["xrd"], member, tmp_path / "bad.tar")
    work = tmp_path / "rerun"
    res = daisy_cli("rerun", str(bad), "--workdir", str(work), cwd=tmp_path)
    refused(res, "changed member", member)
    assert not work.exists()                  # the extracted files are removed again


@pytest.mark.parametrize("change", ["missing", "extra"])
@pytest.mark.apptainer
@pytest.mark.snakemake
def test_a_missing_or_extra_member_is_named(archives, change, tmp_path):
    member = "data/run/xrd/previews/pattern.png" if change == "missing" else "data/run/xrd/notes.txt"
    bad = rewrite(archives["xrd-bare"], tmp_path / "bad.tar", drop=member if change == "missing" else None,
                  add=(member, b"not in the manifest\n") if change == "extra" else None)
    res = daisy_cli("rerun", str(bad), "--workdir", str(tmp_path / "rerun"), cwd=tmp_path)
    refused(res, f"{change} member", member)
    assert not (tmp_path / "rerun").exists()


# -- hostile archives (no image needed) -----------------------------------------------------------

def hostile(path: Path, kind: str, outside: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        def add(name, data=b"x\n", **attrs):
            info = tarfile.TarInfo(name)
            info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)

        add("bag/bagit.txt", b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
        if kind == "dotdot":
            add(f"bag/data/../../{outside.name}")
        elif kind == "absolute":
            add(str(outside))
        elif kind == "symlink":
            add("bag/data/link", type=tarfile.SYMTYPE, linkname=str(outside.parent))
            add("bag/data/link/" + outside.name)
        elif kind == "hardlink":
            add("bag/data/hard", type=tarfile.LNKTYPE, linkname=str(outside))
        elif kind == "device":
            add("bag/data/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        elif kind == "fifo":
            add("bag/data/pipe", type=tarfile.FIFOTYPE)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
@pytest.mark.parametrize("existing", [False, True])
def test_hostile_archives_are_refused_before_anything_is_written(kind, existing, tmp_path):
    outside = tmp_path / "outside.txt"
    archive = hostile(tmp_path / "hostile.tar", kind, outside)
    work = tmp_path / "rerun"
    if existing:
        work.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = daisy_cli("rerun", str(archive), "--workdir", str(work), cwd=tmp_path)
    refused(res, "unsafe archive, nothing extracted")
    assert {"dotdot": "escapes", "absolute": "absolute", "symlink": "symbolic link", "hardlink": "hard link",
            "device": "character device", "fifo": "FIFO"}[kind] in res.stderr
    assert not outside.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before   # nothing, inside or out


# -- refusals at archive time --------------------------------------------------------------------

@pytest.mark.apptainer
@pytest.mark.snakemake
def test_archive_refuses_a_changed_checkout_and_a_changed_output(runs, tmp_path):
    for change in ("workflow", "output"):
        copy = tmp_path / change / "results" / "xrd"
        shutil.copytree(runs / "results" / "xrd", copy)
        prov_path = copy / "provenance.json"
        prov = json.loads(prov_path.read_text())
        if change == "workflow":   # as if Snakefile and a step had been edited since the run
            for rel in ("Snakefile", "daisy_steps/core.py"):
                prov["workflow_files"][rel]["sha256"] = "0" * 64
            prov_path.write_text(json.dumps(prov))
        else:
            xy = copy / "xrd" / "xy" / "scan_00001_integrated_00001.xy"
            text = bytearray(xy.read_bytes())
            text[-3] = ord("7") if text[-3] != ord("7") else ord("8")
            xy.write_bytes(bytes(text))
        out = tmp_path / change / "run.tar"
        res = daisy_cli("archive", str(copy), "-o", str(out), cwd=tmp_path / change)
        if change == "workflow":
            refused(res, "workflow file Snakefile", "workflow file daisy_steps/core.py", "check out the run's commit")
        else:
            refused(res, "output xrd/xy/scan_00001_integrated_00001.xy", "changed since the run")
        assert sorted(p.name for p in out.parent.iterdir()) == ["results"]     # no archive, no partial file


# -- comparison of HDF5 outputs (no image needed) ---------------------------------------------------

def test_hdf5_comparison_verdicts(tmp_path):
    from daisy.rerun_compare import DIFFERS, METADATA, RUN_FIELDS, compare_hdf5

    def make(path, data, attr="a", date="2026-01-01", source="/old/in.h5"):
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / "slab.h5", "w") as f:
            f["data"] = data
        with h5py.File(path, "w") as f:
            layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
            layout[:] = h5py.VirtualSource("slab.h5", "data", shape=data.shape)
            f.create_virtual_dataset("entry/volume", layout)
            f["entry"].attrs["note"] = attr
            f["entry/process_01_ct.load/date"] = date
            f["entry/input/source"] = source
        return path

    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = make(tmp_path / "a" / "v.h5", data)
    same = compare_hdf5(a, make(tmp_path / "b" / "v.h5", data, attr="b", date="2027-01-01"))
    assert same["verdict"] == METADATA
    assert {m["kind"] for m in same["metadata"]} == {"attribute differs", "run-dependent process field"}
    later = compare_hdf5(a, make(tmp_path / "f" / "v.h5", data, date="2027-01-01"))
    assert later["verdict"] == RUN_FIELDS and later["metadata"] == [
        {"object": "/entry/process_01_ct.load/date", "kind": "run-dependent process field"}]
    moved = compare_hdf5(a, make(tmp_path / "c" / "v.h5", data, source="/new/in.h5"), [("/new/in.h5", "/old/in.h5")])
    assert moved["verdict"] == RUN_FIELDS and moved["metadata"] == [{"object": "/entry/input/source", "kind": "relocated paths"}]
    assert compare_hdf5(a, make(tmp_path / "d" / "v.h5", data, source="/new/in.h5"))["verdict"] == DIFFERS
    changed = data.copy()
    changed[1, 2] += 0.5                      # 6 -> 6.5: abs 0.5, rel 0.5 / 6.5
    diff = compare_hdf5(a, make(tmp_path / "e" / "v.h5", changed))   # read through the virtual dataset
    assert diff["verdict"] == DIFFERS and diff["max_abs"] == pytest.approx(0.5)
    assert diff["max_rel"] == pytest.approx(0.5 / 6.5) and "/entry/volume" in diff["datasets"]


def test_cli_registers_archive_and_rerun():
    """daisy/cli.py adds the subcommands: ``archive_cli.register_cli(sub)``."""
    from daisy.cli import build_parser

    args = build_parser().parse_args(["rerun", "run.tar", "--workdir", "w", "--offline"])
    assert args.command == "rerun" and args.offline and callable(args.func)
    args = build_parser().parse_args(["archive", "results/ct", "-o", "ct.tar", "--with-images", "--with-inputs"])
    assert args.with_images and args.with_inputs


@pytest.mark.parametrize("problem", ["failed", "no workflow_files"])
def test_archive_refuses_failed_runs_and_provenance_without_workflow_files(problem, tmp_path):
    run_dir = tmp_path / "results" / "ct"
    run_dir.mkdir(parents=True)
    prov = {"provenance_version": 2, "status": "failed" if problem == "failed" else "completed", "pipeline": "ct",
            "config": {"outdir": "results/ct"}, "inputs": {}, "outputs": {}, "images": {},
            "workflow_files": {} if problem == "no workflow_files" else {"Snakefile": {"sha256": "0" * 64, "size": 1}}}
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    res = daisy_cli("archive", str(run_dir), "-o", str(tmp_path / "run.tar"), cwd=tmp_path)
    refused(res, "did not complete" if problem == "failed" else "records no workflow_files")
    assert not (tmp_path / "run.tar").exists()
