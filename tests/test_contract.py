"""The step contract: schemas with defaults and errors, atomic outputs, records, the job runner."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from daisy_steps import params
from daisy_steps.core import load_job, run_job
from daisy_steps.errors import ParamError, StepError
from daisy_steps.fileio import FileRef, OutputSet, sha256_file


def test_defaults_are_filled():
    assert params.resolve("steps/hdf5.save", {}) == {"key": "data", "compression": "gzip"}
    assert params.resolve("steps/hdf5.load", {"stop": 3}) == {"key": "data", "start": 0, "stop": 3}


@pytest.mark.parametrize("bad, words", [
    ({"compression": "zip"}, ["compression", "'zip'", "gzip", "lzf", "none"]),
    ({"key": 3}, ["key", "not of type", "string"]),
    ({"colour": "red"}, ["unknown key 'colour'", "allowed: compression, key"]),
])
def test_param_errors_name_the_field_and_allowed_values(bad, words):
    with pytest.raises(ParamError) as err:
        params.resolve("steps/hdf5.save", bad)
    for word in words:
        assert word in str(err.value)


def test_range_error_names_field():
    with pytest.raises(ParamError, match=r"field 'start': -1 is less than the minimum of 0"):
        params.resolve("steps/hdf5.load", {"start": -1})


def test_fileref_parse():
    assert FileRef.parse("raw.h5:/entry/tomo") == FileRef(__import__("pathlib").Path("raw.h5"), "/entry/tomo")
    assert FileRef.parse("dir/raw.h5").dataset is None


def test_outputset_commits_or_discards(tmp_path):
    outs = OutputSet()
    tmp = outs.temporary(tmp_path / "a.h5")
    tmp.write_text("x")
    assert not (tmp_path / "a.h5").exists()
    outs.commit()
    assert (tmp_path / "a.h5").read_text() == "x"
    outs = OutputSet()
    outs.temporary(tmp_path / "b.h5").write_text("y")
    outs.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def _raw(tmp_path):
    raw = tmp_path / "in" / "raw.h5"
    raw.parent.mkdir()
    with h5py.File(raw, "w") as handle:
        handle["/entry/tomo"] = np.arange(60, dtype=np.float32).reshape(5, 3, 4)
    return raw


def _job(raw, out, **extra):
    job = {"job_version": 1, "job": "t", "steps": [
        {"step": "hdf5.load", "inputs": {"source": f"{raw}:/entry/tomo"}, "params": {"start": 1, "stop": 4}},
        {"step": "hdf5.save", "outputs": {"target": f"{out}:/entry/data/data"}},
    ], "record": str(out.parent / "record.json")}
    job.update(extra)
    return job


def test_files_over_the_hash_limit_are_left_to_the_provenance(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    run_job(_job(raw, out, hash_limit=100))
    saved = json.loads((tmp_path / "out" / "record.json").read_text())
    for entry in (saved["outputs"][str(out)], saved["inputs"][str(raw)]):
        assert entry["sha256"] is None and "hashed once in the run's provenance" in entry["note"]
        assert entry["size"] > 100


def test_chain_runs_in_memory_and_records(tmp_path):
    raw = _raw(tmp_path)
    before = sha256_file(raw)
    out = tmp_path / "out" / "o.h5"
    record = run_job(_job(raw, out))
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["/entry/data/data"][()], np.arange(12, 48, dtype=np.float32).reshape(3, 3, 4))
    assert sha256_file(raw) == before
    saved = json.loads((tmp_path / "out" / "record.json").read_text())
    assert saved["outputs"][str(out)]["sha256"] == sha256_file(out)
    assert saved["inputs"][str(raw)]["sha256"] == before
    assert [s["step"] for s in saved["steps"]] == ["hdf5.load", "hdf5.save"]
    assert saved["steps"][1]["params"] == {"key": "data", "compression": "gzip"}
    assert {"numpy", "h5py", "python"} <= set(saved["libraries"])
    assert saved["code_sha256"] and saved["started"] <= saved["ended"]
    assert record["job"] == "t"


def test_failure_leaves_no_output(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    job = _job(raw, out)
    job["steps"].append({"step": "hdf5.load", "inputs": {"source": f"{raw}:/entry/missing"}})
    with pytest.raises(StepError, match=r"raw.h5: dataset /entry/missing does not exist"):
        run_job(job)
    assert not out.exists()
    # only the failed job's record is left: at the record path (a rule's output, which Snakemake
    # deletes) and beside it under failed/ (what the provenance of a failed run reads)
    left = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert left == ["failed/record.json", "record.json"]
    record = json.loads((tmp_path / "out" / "failed" / "record.json").read_text())
    assert record == json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["status"] == "failed" and record["record_version"] == 2
    assert record["error"].startswith("StepError: ") and "dataset /entry/missing does not exist" in record["error"]
    assert "\n" not in record["error"]
    assert [s["step"] for s in record["steps"]] == ["hdf5.load", "hdf5.save", "hdf5.load"]
    assert [s.get("status") for s in record["steps"]] == [None, None, "failed"]
    assert record["failed_step"] == "hdf5.load" and record["outputs"] == {}
    assert record["started"] <= record["steps"][0]["started"] <= record["ended"]
    assert record["inputs"][str(raw)]["sha256"] == sha256_file(raw)


def test_success_records_completed_and_clears_an_earlier_failure(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    stale = tmp_path / "out" / "failed" / "record.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"status": "failed"}')
    record = run_job(_job(raw, out))
    assert record["status"] == "completed" and record["record_version"] == 2 and "error" not in record
    assert json.loads((tmp_path / "out" / "record.json").read_text())["status"] == "completed"
    assert not stale.exists()


def test_params_checked_before_any_data(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    job = _job(raw, out)
    job["steps"][1]["params"] = {"compression": "zip"}
    with pytest.raises(ParamError, match="step hdf5.save"):
        run_job(job)
    assert not out.exists()
    record = json.loads((tmp_path / "out" / "failed" / "record.json").read_text())
    assert record["status"] == "failed" and record["steps"] == [] and "failed_step" not in record
    assert record["error"].startswith("ParamError: step hdf5.save")


def test_record_names_the_image_the_job_ran_in(tmp_path):
    raw = _raw(tmp_path)
    record = run_job(_job(raw, tmp_path / "out" / "o.h5", image={"name": "tomopy", "sha256": "0" * 64}))
    assert [s["image"] for s in record["steps"]] == ["tomopy", "tomopy"]
    record = run_job(_job(raw, tmp_path / "out2" / "o.h5"))  # a hand-written job names no image
    assert [s["image"] for s in record["steps"]] == [None, None]


def test_chain_is_checked_before_any_data(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    job = _job(raw, out)
    job["steps"][1]["params"] = {"key": "volume"}
    with pytest.raises(StepError, match=r"job t: step hdf5.save \(#2\) requires 'volume' .* the earlier steps "
                                        r"provide 'data' \(hdf5.load\)"):
        run_job(job)
    job = _job(raw, out, image={"name": "gpu"})
    with pytest.raises(StepError, match=r"job t: step hdf5.load \(#1\) cannot run in image 'gpu'"):
        run_job(job)
    assert not out.exists()
    record = json.loads((tmp_path / "out" / "failed" / "record.json").read_text())
    assert record["status"] == "failed" and "cannot run in image 'gpu'" in record["error"]


def test_output_may_not_overwrite_input(tmp_path):
    raw = _raw(tmp_path)
    with pytest.raises(StepError, match="would overwrite an input"):
        run_job(_job(raw, raw))


def test_a_later_step_reads_what_an_earlier_one_wrote(tmp_path):
    """A file an earlier step of the job wrote is read, before the job commits, from its
    temporary file; it is the job's output, not its input. A step may not write a file that a
    step before it (or itself) read."""
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    copy = tmp_path / "out" / "copy.h5"
    job = _job(raw, out)
    job["steps"] += [{"step": "hdf5.load", "inputs": {"source": f"{out}:/entry/data/data"},
                      "params": {"key": "again"}},
                     {"step": "hdf5.save", "params": {"key": "again"}, "outputs": {"target": f"{copy}:/c"}}]
    record = run_job(job)
    with h5py.File(out) as a, h5py.File(copy) as b:
        np.testing.assert_array_equal(a["/entry/data/data"][()], b["/c"][()])
    assert set(record["outputs"]) == {str(out), str(copy)} and set(record["inputs"]) == {str(raw)}
    assert not [p for p in (tmp_path / "out").iterdir() if ".part-" in p.name]
    job["steps"] = [job["steps"][2], job["steps"][0], job["steps"][1]]   # read o.h5, then write it
    with pytest.raises(StepError, match="would overwrite an input"):
        run_job(job)


def test_a_step_reading_an_earlier_steps_file_that_was_not_written_fails(tmp_path):
    from daisy_steps.core import JobContext

    out = tmp_path / "o.h5"
    ctx = JobContext({"source": str(out)}, {}, OutputSet(), 1, "hdf5.load")
    with pytest.raises(StepError, match="does not exist"):
        ctx.input("source")
    outset = OutputSet()
    outset.temporary(out)                         # declared by an earlier step, never written
    ctx = JobContext({"source": str(out)}, {}, outset, 1, "hdf5.load")
    with pytest.raises(StepError, match="earlier step of this job, which did not write it"):
        ctx.input("source")
    assert ctx.input_name("source").path == out


def test_a_step_reads_its_own_jobs_record_so_far(tmp_path):
    """A gather in the job that made its inputs reads the job's record so far: the steps before
    the first step of its own kind (the volume's processes, not the gather's own)."""
    from daisy_steps.core import JobContext
    from daisy_steps.nxprocess import read_records

    own = tmp_path / "records" / "job.json"
    other = tmp_path / "records" / "centre.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"job": "centre", "status": "completed", "steps": [{"step": "ct.find_center"}]}))
    record = {"job": "job", "status": "running", "steps": [{"step": "ct.load"}, {"step": "ct.recon"},
                                                           {"step": "ct.gather"}]}
    ctx = JobContext({"record_centre": str(other), "record_job": str(own)}, {}, OutputSet(), 1, "ct.gather",
                     record=record, record_path=str(own))
    assert ctx.own_record("record_centre") is None
    records = read_records(ctx)
    assert [r["job"] for r in records] == ["centre", "job"]
    assert [s["step"] for s in records[1]["steps"]] == ["ct.load", "ct.recon"]
    assert len(record["steps"]) == 3                                  # the job's record is not changed


def test_code_pin_mismatch_is_refused(tmp_path):
    raw = _raw(tmp_path)
    with pytest.raises(StepError, match="step code differs"):
        run_job(_job(raw, tmp_path / "out" / "o.h5", code_sha256="0" * 64))


def test_single_step_job_file_and_cli_exit_code(tmp_path, repo):
    raw = _raw(tmp_path)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"inputs": {"source": f"{raw}:/entry/nope"}}))
    loaded = load_job(job, single_step="hdf5.load")
    assert loaded["steps"][0]["step"] == "hdf5.load"
    proc = subprocess.run([sys.executable, "-m", "daisy_steps", "hdf5.load", "--job", str(job)],
                          cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "dataset /entry/nope does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_step_is_named(tmp_path):
    with pytest.raises(StepError, match="unknown step 'ct.nope'"):
        run_job({"job": "x", "steps": [{"step": "ct.nope"}]})


def test_provenance_hashes_what_the_jobs_left_unhashed(tmp_path, monkeypatch):
    """The run's provenance fills in the sha256 of outputs a job left to it (over its hash limit)."""
    from types import SimpleNamespace

    from daisy import provenance

    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(tmp_path / "cache"))
    raw = _raw(tmp_path)
    out = tmp_path / "out" / "o.h5"
    run_job(_job(raw, out, hash_limit=100))
    run = SimpleNamespace(jobs={"t": None}, record_file=lambda name: str(tmp_path / "out" / "record.json"),
                          targets=[str(out)], images=lambda: [], pipeline="copy", config={},
                          code_sha256="x", inputs=[str(raw)])
    doc = provenance.collect(run)
    assert doc["outputs"][str(out)] == {"size": out.stat().st_size, "sha256": sha256_file(out)}
    assert doc["inputs"][str(raw)]["sha256"] == sha256_file(raw)
    assert doc["jobs"]["t"]["outputs"][str(out)]["sha256"] is None  # the job's own record stays as written
