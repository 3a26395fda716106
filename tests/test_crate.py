"""The run's provenance as a standard crate: provenance.json (provenance_version 2) and the
Provenance Run Crate rendered from it, for completed and failed runs, validated by roc-validator
offline (in a network namespace without interfaces); ``daisy provenance show|diff``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from daisy_steps.core import run_job
from daisy_steps.errors import StepError
from daisy_steps.fileio import sha256_file

from .conftest import require_image
from .workflow_helpers import REPO, daisy

PROFILE_URIS = {"https://w3id.org/ro/wfrun/process/0.5", "https://w3id.org/ro/wfrun/workflow/0.5",
                "https://w3id.org/ro/wfrun/provenance/0.5", "https://w3id.org/workflowhub/workflow-ro-crate/1.0"}
SIF = "https://w3id.org/ro/terms/workflow-run#SIFImage"
VALIDATE = ("import json, sys\nfrom daisy import crate_validate\n"
            "print(json.dumps(crate_validate.validate(sys.argv[1], severity='REQUIRED')))\n")
GUARD = ("import socket\n"
         "def _refuse(*a, **k):\n    raise OSError('network use refused by the test')\n"
         "socket.socket.connect = _refuse\nsocket.getaddrinfo = _refuse\nsocket.create_connection = _refuse\n")


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0


def validate_offline(crate_dir: Path) -> list[str]:
    """roc-validator at REQUIRED severity on ``crate_dir`` with no network: in a network namespace
    without interfaces (``unshare -n``, as root), else with every socket connect refused."""
    pytest.importorskip("rocrate_validator", reason="roc-validator (a test dependency) is not installed")
    if _unshare_works():
        cmd = [shutil.which("unshare"), "-n", sys.executable, "-c", VALIDATE, str(crate_dir)]
    else:
        cmd = [sys.executable, "-c", GUARD + VALIDATE, str(crate_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def graph(run_dir: Path) -> dict[str, dict]:
    document = json.loads((run_dir / "ro-crate-metadata.json").read_text())
    assert document["@context"] == ["https://w3id.org/ro/crate/1.1/context", "https://w3id.org/ro/terms/workflow-run/context"]
    return {entity["@id"]: entity for entity in document["@graph"]}


def ids(value) -> list[str]:
    return [v["@id"] for v in (value if isinstance(value, list) else [value] if value else [])]


def types(entity) -> list[str]:
    return entity["@type"] if isinstance(entity["@type"], list) else [entity["@type"]]


def check_crate(run_dir: Path, prov: dict) -> dict[str, dict]:
    """What every crate holds, checked against provenance.json."""
    from daisy.images import load_lock

    g = graph(run_dir)
    root = g["./"]
    assert set(ids(root["conformsTo"])) == PROFILE_URIS
    workflow = g[root["mainEntity"]["@id"]]
    assert {"File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"} <= set(types(workflow))
    assert workflow["sha256"] == prov["workflow_files"]["Snakefile"]["sha256"]
    assert g[workflow["softwareRequirements"]["@id"]]["identifier"] == f"sha256:{prov['code_sha256']}"
    # every output: a File under the outdir, by its relative path, with provenance.json's sha256
    outdir = Path(prov["outdir"])
    for path, info in prov["outputs"].items():
        rel = Path(os.path.normpath(os.path.join(prov["workdir"], path))).relative_to(outdir).as_posix()
        assert g[rel]["@type"] == "File" and g[rel]["sha256"] == info["sha256"], rel
        assert g[rel]["contentSize"] == str(info["size"])
    for path, info in prov["inputs"].items():
        iri = "file://" + os.path.normpath(os.path.join(prov["workdir"], path))
        assert g[iri]["sha256"] == info["sha256"] == sha256_file(os.path.join(prov["workdir"], path))
    assert g["provenance.json"]["sha256"] == sha256_file(run_dir / "provenance.json")
    # one CreateAction per job that ran, its tool a part of the workflow, its image the lock's
    lock = load_lock()["images"]
    actions = {e["identifier"]: e for e in g.values() if types(e) == ["CreateAction"] and "identifier" in e}
    assert set(actions) == set(prov["jobs"]) | set(prov["jobs_not_run"])
    for name, action in actions.items():
        tool = action["instrument"]["@id"]
        assert tool in ids(workflow["hasPart"]) and types(g[tool]) == ["SoftwareApplication"]
        assert g[tool]["name"] == prov["plan"]["jobs"][name]["stage"]
        image = g[action["containerImage"]["@id"]]
        assert image["@type"] == "ContainerImage" and image["additionalType"] == {"@id": SIF}
        assert image["sha256"] == lock[image["name"]]["image_sha256"] == prov["images"][image["name"]]["image_sha256"]
        assert image["tag"] == lock[image["name"]]["version"] == prov["images"][image["name"]]["version"]
        if name in prov["jobs_not_run"]:
            assert action["actionStatus"] == "http://schema.org/PotentialActionStatus"
            assert not {"startTime", "result", "error"} & set(action)
            continue
        record = prov["jobs"][name]
        steps = [g[i]["name"] for i in ids(g[tool]["hasPart"])]
        chain = iter(steps)  # the job's steps: an ordered subsequence of its tool's chain (a step may repeat)
        assert all(s["step"] in chain for s in record["steps"]), (record["steps"], steps)
        assert image["sha256"] == record["image"]["sha256"]
        assert action["startTime"] == record["started"] and action["endTime"] == record["ended"]
        # every step parameter: a PropertyValue linked to a FormalParameter of the tool
        values = [g[i] for i in ids(action["object"]) if g[i]["@type"] == "PropertyValue"]
        assert len(values) == sum(len(s["params"]) for s in record["steps"])
        for value in values:
            formal = g[value["exampleOfWork"]["@id"]]
            assert formal["@type"] == "FormalParameter" and formal["additionalType"]
            assert formal["@id"] in ids(g[tool]["input"])
        for result in ids(action.get("result")):
            assert g[result]["@type"] == "File" and g[result]["sha256"]
        status = "http://schema.org/CompletedActionStatus" if record["status"] == "completed" else \
            "http://schema.org/FailedActionStatus"
        assert action["actionStatus"] == status
        assert ("error" in action) == (record["status"] == "failed")
    # the engine run and the steps
    organize = [e for e in g.values() if e["@type"] == "OrganizeAction"]
    assert len(organize) == 1
    assert g[organize[0]["instrument"]["@id"]]["name"] == "Snakemake"
    assert g[organize[0]["result"]["@id"]]["instrument"]["@id"] == workflow["@id"]
    controls = [g[i] for i in ids(organize[0]["object"])]
    assert sorted(g[c["object"]["@id"]]["identifier"] for c in controls) == sorted([*prov["jobs"], *prov["jobs_not_run"]])
    for control in controls:
        howto = g[control["instrument"]["@id"]]
        assert howto["@type"] == "HowToStep" and howto["@id"] in ids(workflow["step"])
        assert howto["workExample"] == g[control["object"]["@id"]]["instrument"]
    return g


# -- without images: a job run on the host, its provenance and crate ----------------------------

def _host_run(tmp_path, fail: bool = False):
    import h5py
    import numpy as np

    raw = tmp_path / "data" / "raw.h5"
    raw.parent.mkdir()
    with h5py.File(raw, "w") as handle:
        handle["/entry/tomo"] = np.arange(60, dtype=np.float32).reshape(5, 3, 4)
    outdir = tmp_path / "results" / "copy"
    out = outdir / "copy" / "data.h5"
    job = {"job_version": 1, "job": "copy", "image": {"name": "base"}, "record": str(outdir / "records" / "copy.json"),
           "steps": [{"step": "hdf5.load", "inputs": {"source": f"{raw}:/entry/tomo"}},
                     {"step": "hdf5.save", "outputs": {"target": f"{out}:/entry/data/data"}}]}
    if fail:
        job["steps"][0]["inputs"]["source"] = f"{raw}:/entry/missing"
        with pytest.raises(StepError):
            run_job(job)
    else:
        run_job(job)
    stage = SimpleNamespace(name="copy", image="base", steps=("hdf5.load", "hdf5.save"), doc="one dataset -> a new file")
    plan_job = SimpleNamespace(stage=stage, steps=job["steps"], inputs=[str(raw)], outputs={"data": str(out)}, index=None)
    run = SimpleNamespace(jobs={"copy": plan_job}, record_file=lambda name: str(outdir / "records" / f"{name}.json"),
                          targets=[str(out)], images=lambda: ["base"], pipeline="copy",
                          config={"pipeline": "copy", "outdir": str(outdir)}, code_sha256="0" * 64, inputs=[str(raw)],
                          outdir=outdir, provenance_file=lambda: str(outdir / "provenance.json"))
    return run, outdir, out


def test_host_run_provenance_and_crate(tmp_path, monkeypatch):
    from daisy import provenance

    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    run, outdir, out = _host_run(tmp_path)
    doc = provenance.write(run)
    assert doc == json.loads((outdir / "provenance.json").read_text())
    assert doc["provenance_version"] == 2 and doc["status"] == "completed" and "error" not in doc
    assert doc["outputs"][str(out)]["sha256"] == sha256_file(out)
    assert doc["jobs"]["copy"]["status"] == "completed" and doc["jobs_not_run"] == []
    assert doc["plan"]["jobs"]["copy"]["stage"] == "copy"
    wf = doc["workflow_files"]
    for rel in ("Snakefile", "rules/common.smk", "daisy/provenance.py", "daisy_steps/core.py",
                "schemas/ct.schema.json", "profiles/workstation/config.yaml", "containers/images.lock.json",
                "pyproject.toml", "daisy/crate_data/workflow-run-context.json"):
        assert wf[rel] == {"sha256": sha256_file(REPO / rel), "size": (REPO / rel).stat().st_size}, rel
    assert not [rel for rel in wf if "__pycache__" in rel or rel.endswith(".pyc")]
    g = graph(outdir)
    assert g["copy/data.h5"]["sha256"] == sha256_file(out)
    assert validate_offline(outdir) == []


def test_host_failed_run_provenance_and_crate(tmp_path, monkeypatch):
    """onerror's call: the failed job's record (under records/failed/) is read, nothing raises."""
    from daisy import provenance

    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    run, outdir, out = _host_run(tmp_path, fail=True)
    (outdir / "records" / "copy.json").unlink()           # what Snakemake does with a failed job's outputs
    doc = provenance.write(run, status="failed")
    assert doc["status"] == "failed" and "job copy failed" in doc["error"] and "/entry/missing" in doc["error"]
    assert doc["jobs"]["copy"]["status"] == "failed" and doc["outputs"] == {}
    g = graph(outdir)
    action = next(e for e in g.values() if e.get("identifier") == "copy")
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus" and "/entry/missing" in action["error"]
    assert validate_offline(outdir) == []
    # a run whose jobs never ran at all (e.g. an image missing): still a document, no crate error
    shutil.rmtree(outdir / "records")
    doc = provenance.write(run, status="failed", error="image 'base' is missing")
    assert doc["error"] == "image 'base' is missing" and doc["jobs"] == {} and doc["jobs_not_run"] == ["copy"]
    assert validate_offline(outdir) == []


def test_old_positional_path_is_accepted(tmp_path, monkeypatch):
    from daisy import provenance

    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    run, outdir, _ = _host_run(tmp_path)
    provenance.write(run, str(outdir / "provenance.json"))
    assert (outdir / "provenance.json").is_file() and (outdir / "ro-crate-metadata.json").is_file()


# -- real runs in the images ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    require_image("tomopy")
    require_image("base")
    require_image("pyfai")
    from daisy.workflow import run_job_in_image

    work = tmp_path_factory.mktemp("crate")
    data = work / "data"
    ct = [{"step": "sample.ct_phantom", "outputs": {"raw": str(data / "ct.h5")},
           "params": {"size": 32, "n_angles": 60, "layout": "nxtomo", "seed": 7, "center_offset": 2.5}}]
    run_job_in_image("tomopy", {"job": "sample_ct", "threads": 2, "steps": ct}, work / "jobs" / "ct.json", work)
    xrd = [{"step": "sample.xrd_eiger", "params": {"n_frames": 4, "frames_per_file": 2, "binning": 4, "seed": 3},
            "outputs": {"scan": str(data / "xrd" / "scan_00001_master.h5"), "poni": str(data / "xrd" / "scan_00001.poni")}}]
    run_job_in_image("pyfai", {"job": "sample_xrd", "threads": 2, "steps": xrd}, work / "jobs" / "xrd.json", work)
    return work


def ct_config(work: Path, outdir: str, **sections) -> Path:
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": f"results/{outdir}", "threads": 1,
           "input": {"file": "data/ct.h5", "layout": "nxtomo"}, "slabs": {"count": 2, "per_job": 1, "read_once": "always"}, **sections}
    path = work / f"{outdir}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_daisy(work: Path, pipeline: str, config: Path, ok: bool = True) -> subprocess.CompletedProcess:
    res = daisy("run", pipeline, "--config", str(config), cwd=work)
    assert (res.returncode == 0) == ok, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def ct_run(work):
    run_daisy(work, "ct", ct_config(work, "ct"))
    return work / "results" / "ct"


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_ct_run_crate(ct_run):
    prov = json.loads((ct_run / "provenance.json").read_text())
    assert prov["provenance_version"] == 2 and prov["status"] == "completed"
    # three jobs would read the raw scan: ct_rows reads it once for them (slabs.read_once)
    assert set(prov["jobs"]) == {"ct_rows", "ct_center", "ct_slab_0000", "ct_slab_0001", "ct_gather"}
    assert not prov["jobs_not_run"]
    assert all(r["status"] == "completed" and r["record_version"] == 2 for r in prov["jobs"].values())
    g = check_crate(ct_run, prov)
    assert validate_offline(ct_run) == []
    # the rows job: its input is the raw scan (outside the outdir)
    rows = next(e for e in g.values() if e.get("identifier") == "ct_rows")
    raw = "file://" + str(ct_run.parent.parent / "data" / "ct.h5")
    assert raw in ids(rows["object"])
    names = {g[i]["name"]: g[i].get("value") for i in ids(rows["object"]) if g[i]["@type"] == "PropertyValue"}
    assert names["ct.split_rows.layout"] == "nxtomo"
    # the centre job: its rows (an intermediate file, deleted once read) and its result (inside the outdir)
    center = next(e for e in g.values() if e.get("identifier") == "ct_center")
    assert ids(center["result"]) == ["ct/center.json"]
    assert g[center["containerImage"]["@id"]]["name"] == "tomopy"
    names = {g[i]["name"]: g[i].get("value") for i in ids(center["object"]) if g[i]["@type"] == "PropertyValue"}
    assert names["ct.find_center.method"] == "vo" and names["ct.load.layout"] == "daisy"


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_xrd_run_crate(work):
    cfg = yaml.safe_load((REPO / ".test" / "xrd-eiger" / "config.yaml").read_text())
    cfg.update(outdir="results/xrd", threads=1, blocks={"count": 2})
    path = work / "xrd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_daisy(work, "xrd", path)
    run_dir = work / "results" / "xrd"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["status"] == "completed" and set(prov["jobs"]) == {"xrd_block_0000", "xrd_block_0001", "xrd_gather"}
    g = check_crate(run_dir, prov)
    assert validate_offline(run_dir) == []
    xy = [i for i in g if i.startswith("xrd/xy/") and i.endswith(".xy")]
    assert len(xy) == 4 and all(g[i]["sha256"] for i in xy)
    gather = next(e for e in g.values() if e.get("identifier") == "xrd_gather")
    assert set(xy) <= set(ids(gather["result"]))
    assert g[gather["containerImage"]["@id"]]["name"] == "pyfai"
    # the Eiger data files the master links are inputs of the run, outside the outdir
    assert len([i for i in ids(g["./"]["hasPart"]) if i.startswith("file://") and "scan_00001_data_" in i]) == 2


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_failed_run_crate(work):
    """A config that plans but fails in a job (a centre given to the vo method): the centre job
    fails, its slabs and the gather never run; provenance (from onerror) and crate say so."""
    run_daisy(work, "ct", ct_config(work, "ct-failed", center={"method": "vo", "center": 5}), ok=False)
    run_dir = work / "results" / "ct-failed"
    assert not (run_dir / "records" / "ct_center.json").exists()        # removed by Snakemake
    failed = json.loads((run_dir / "records" / "failed" / "ct_center.json").read_text())
    assert failed["status"] == "failed" and failed["failed_step"] == "ct.find_center"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["status"] == "failed" and "only used with method 'manual'" in prov["error"]
    assert sorted(prov["jobs"]) == ["ct_center", "ct_rows"] and prov["jobs"]["ct_center"]["status"] == "failed"
    assert prov["jobs"]["ct_rows"]["status"] == "completed"
    assert sorted(prov["jobs_not_run"]) == ["ct_gather", "ct_slab_0000", "ct_slab_0001"]
    g = check_crate(run_dir, prov)
    assert validate_offline(run_dir) == []
    action = next(e for e in g.values() if e.get("identifier") == "ct_center")
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert action["error"] == failed["error"] and "result" not in action
    run = next(e for e in g.values() if e.get("@type") == "CreateAction" and e["instrument"]["@id"] == g["./"]["mainEntity"]["@id"])
    assert run["actionStatus"] == "http://schema.org/FailedActionStatus" and run["error"] == prov["error"]
    res = daisy("provenance", "show", str(run_dir), cwd=work)
    assert res.returncode == 0, res.stderr
    assert "[failed]" in res.stdout and "ct_slab_0000  not run" in res.stdout
    assert "center.center = 5  (default null)" in res.stdout


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_show_and_diff(work, ct_run):
    res = daisy("provenance", "show", str(ct_run), cwd=work)
    assert res.returncode == 0, res.stderr
    prov = json.loads((ct_run / "provenance.json").read_text())
    centre = prov["results"]["ct_center/ct.find_center"]["center"]
    for text in ("[completed]", "ct_slab_0001  completed  tomopy", f"sha256:{prov['images']['tomopy']['image_sha256']}",
                 "input.layout = 'nxtomo'  (default 'auto')", "slabs.count = 2  (default null)",
                 f"ct_center/ct.find_center: center = {centre}", "inputs    1 file,", "outputs   "):
        assert text in res.stdout, (text, res.stdout)
    assert "recon.filter_name" not in res.stdout           # a default is not listed

    res = daisy("provenance", "diff", str(ct_run), str(ct_run), cwd=work)
    assert res.returncode == 0 and "=> the runs are the same" in res.stdout, res.stdout + res.stderr

    run_daisy(work, "ct", ct_config(work, "ct-hann", recon={"filter_name": "hann"}))
    other = work / "results" / "ct-hann"
    assert validate_offline(other) == []
    res = daisy("provenance", "diff", str(ct_run), str(other), cwd=work)
    assert res.returncode == 1, res.stdout + res.stderr
    config = res.stdout.split("config: ", 1)[1].split("\nimages", 1)[0]
    assert config.startswith("1 field differs") and "recon.filter_name: 'parzen' -> 'hann'" in config
    assert "(outdir: results/ct -> results/ct-hann" in config
    assert "images: same" in res.stdout and "code: step-code pin same" in res.stdout
    assert "inputs: 1 same, 0 differ" in res.stdout
    assert "differs   ct/volume.h5" in res.stdout and "same" in res.stdout.split("outputs: ", 1)[1]
    assert "=> the runs differ: config" in res.stdout

    res = daisy("provenance", "diff", str(ct_run), str(work / "nowhere"), cwd=work)
    assert res.returncode == 2 and "nowhere does not exist" in res.stderr
