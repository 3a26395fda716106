"""One entry path and one owner per job fact: ``daisy run`` resolves the config once and hands
Snakemake that file; rules take every path, image and resource from the plan; ``--lint`` and
``--dry-run`` need no image; the original design's dictionaries run end to end."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
import yaml

from daisy import plan as plans
from daisy import workflow
from daisy_steps.errors import StepError
from daisy_steps.fileio import sha256_file

from .conftest import require_image
from .workflow_helpers import REPO, daisy, snakemake


def _raw_ct(folder, frames=8, rows=6, cols=8):
    """A tiny raw scan in the daisy layout (host h5py: planning reads only its shape)."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "ct-daisy.h5", "w") as handle:
        handle["/entry/tomo"] = np.ones((frames, rows, cols), np.uint16)
        handle["/entry/flat"] = np.ones((2, rows, cols), np.uint16)
        handle["/entry/dark"] = np.zeros((2, rows, cols), np.uint16)
    return folder / "ct-daisy.h5"


def _ct_config(tmp_path, **changes):
    cfg = yaml.safe_load((REPO / ".test" / "ct-daisy" / "config.yaml").read_text())
    cfg["input"]["file"] = str(_raw_ct(tmp_path / "data"))
    cfg["outdir"] = str(tmp_path / "results")
    cfg.update(changes)
    return cfg


def test_rules_name_no_path_image_or_resource():
    """Every path, image and resource of a stage's rule comes from the plan."""
    for path in (REPO / "rules").glob("*.smk"):
        text = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert not re.search(r"[\"'][^\"']*\.(h5|json|png|tif|log|sif)[\"']", text), f"{path.name} names a file"
        assert not re.search(r"mem_mb\s*=|runtime\s*=|image\(", text), f"{path.name} names a resource or image"


def test_rule_directives_match_the_plan(tmp_path):
    run = plans.plan(_ct_config(tmp_path, slabs={"count": 3, "per_job": 1, "read_once": "always"}))
    # four jobs would read the raw file: ct_rows reads it once for them (slabs.read_once)
    assert [j for j in run.jobs] == ["ct_rows", "ct_center", "ct_slab_0000", "ct_slab_0001", "ct_slab_0002",
                                     "ct_gather"]
    for stage in run.stages:
        spec = workflow.rule_spec(run, stage)
        for job in run.stage_jobs(stage):
            wildcards = {"index": job.index} if job.index else {}
            outputs = {slot: str(p).format(**wildcards) for slot, p in spec.output.items()}
            assert outputs == {**job.outputs, "record": run.record_file(job.name)}
            assert spec.threads(wildcards) == job.threads
            assert spec.resources["mem_mb"](wildcards, 1) == job.mem_mb > 0   # gathers too
            assert spec.resources["mem_mb"](wildcards, 2) == 2 * job.mem_mb    # more on a retry
            assert spec.resources["runtime"](wildcards, 1) == job.runtime_min > 0
            assert spec.input(wildcards)["job"] == run.job_file(job.name)
            assert set(job.inputs) <= set(spec.input(wildcards)["data"])
            assert f"{job.image}-" in spec.container
    assert run.jobs["ct_gather"].image == "base" and run.jobs["ct_slab_0001"].image == "tomopy"
    assert set(run.targets) >= {run.path("ct", "volume.h5"), run.path("ct", "slabs", "slab_0002.h5")}
    assert not [t for t in run.targets if "/ct/rows/" in t]          # intermediate: not asked for, deleted


def test_read_once_auto_splits_files_worth_a_job(tmp_path, monkeypatch):
    """auto: only where reading the raw file once per slab would read 1 GiB more than twice it."""
    from daisy.pipelines import ct as ct_plan

    cfg = _ct_config(tmp_path, slabs={"count": 3, "per_job": 1})
    assert "ct_rows" not in plans.plan(cfg).jobs                    # a small file: re-read it
    monkeypatch.setattr(ct_plan, "READ_ONCE_MIN_EXTRA_BYTES", 1)
    assert "ct_rows" in plans.plan(cfg).jobs
    cfg["slabs"] = {"count": 1, "per_job": 1}                        # the centre and one slab: twice
    assert "ct_rows" not in plans.plan(cfg).jobs


def test_one_slab_job_runs_the_gather_too(tmp_path):
    """Slabs that fit one job: ct_volume runs the slab chain and the gather in one process. Its
    outputs are the slab job's (same names) and the gather's; it reads no file it makes itself,
    and its gather reads its own record (the steps so far) besides the centre job's."""
    run = plans.plan(_ct_config(tmp_path))
    assert list(run.jobs) == ["ct_center", "ct_volume"]
    job = run.jobs["ct_volume"]
    assert job.image == "tomopy" and not run.stage_jobs("ct_slab") and not run.stage_jobs("ct_gather")
    assert {run.path("ct", "slabs", "slab_0000.h5"), run.path("ct", "volume.h5")} <= set(job.outputs.values())
    assert not set(job.inputs) & {*job.outputs.values(), run.record_file("ct_volume")}
    gather = next(s for s in job.steps if s["step"] == "ct.gather")
    assert gather["inputs"]["slab_0000"] == run.path("ct", "slabs", "slab_0000.h5")
    assert {gather["inputs"]["record_ct_center"], gather["inputs"]["record_ct_volume"]} == \
        {run.record_file("ct_center"), run.record_file("ct_volume")}
    spec = workflow.rule_spec(run, "ct_volume")
    assert spec.output == {**job.outputs, "record": run.record_file("ct_volume")}
    assert workflow.rule_spec(run, "ct_slab").output == {"record": run.record_file("ct_slab_{index}")}
    two = plans.plan(_ct_config(tmp_path, slabs={"count": 2, "per_job": 1}))
    assert list(two.jobs) == ["ct_center", "ct_slab_0000", "ct_slab_0001", "ct_gather"]
    assert workflow.rule_spec(two, "ct_volume").output == {"record": two.record_file("ct_volume")}


def test_plan_refuses_a_job_against_its_stage_or_ports(tmp_path):
    run = plans.plan(_ct_config(tmp_path, slabs={"count": 2, "per_job": 1}))
    slab = run.jobs["ct_slab_0000"]
    with pytest.raises(StepError, match="not a chain of stage ct_slab"):
        run.add_job("ct_slab", [*slab.steps, {"step": "ct.gather"}], 9)
    with pytest.raises(StepError, match="ct_slab_0009.*ct.normalize"):   # no producer of the projections
        run.add_job("ct_slab", slab.steps[1:], 9)
    with pytest.raises(StepError, match="unwritten"):
        run.add_job("ct_slab", [s for s in slab.steps if s["step"] != "ct.recon"], 9)   # it writes the slab
    wrong = plans.Stage("ct", "ct_slab", "pyfai", plans.pipeline_module("ct").SLAB.steps, indexed=True, repeats=True)
    run.stages["ct_slab"] = wrong
    with pytest.raises(StepError, match="ct_slab_0009.*pyfai"):
        run.add_job("ct_slab", slab.steps, 9)


def test_lint_and_dry_run_need_no_images(tmp_path):
    """On a machine with no image built: --lint is clean, -n plans every job; a real run stops
    before any job, naming the missing image."""
    cfg_path = tmp_path / "ct.yaml"
    cfg_path.write_text(yaml.safe_dump(_ct_config(tmp_path)))
    env = {"DAISY_IMAGE_CACHE": str(tmp_path / "no-images")}
    lint = snakemake(tmp_path, cfg_path, "--lint", env=env, check=False)
    assert "Congratulations, your workflow is in a good condition" in lint.stdout + lint.stderr, lint.stderr[-3000:]
    dry = snakemake(tmp_path, cfg_path, "-n", env=env, check=False)
    assert dry.returncode == 0, dry.stderr[-3000:]
    for name in ("ct_center", "ct_volume", "provenance"):
        assert re.search(rf"\b{name}\b", dry.stdout + dry.stderr)
    real = daisy("run", "ct", "--config", str(cfg_path), cwd=tmp_path, env=env)
    assert real.returncode != 0
    assert "image 'tomopy'" in real.stdout + real.stderr or "image 'base'" in real.stdout + real.stderr
    assert not list((tmp_path / "results").rglob("*.h5")) and not (tmp_path / "results" / "records").exists()


def test_dry_run_leaves_nothing(tmp_path):
    cfg_path = tmp_path / "ct.yaml"
    cfg_path.write_text(yaml.safe_dump(_ct_config(tmp_path, outdir=str(tmp_path / "dry"))))
    res = daisy("run", "ct", "--config", str(cfg_path), "-n", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "dry" / workflow.RESOLVED_CONFIG).exists()


def test_bad_config_writes_nothing(tmp_path):
    cfg = _ct_config(tmp_path, outdir=str(tmp_path / "bad"))
    cfg["slabs"] = {"count": 0}
    cfg_path = tmp_path / "ct.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = daisy("run", "ct", "--config", str(cfg_path), cwd=tmp_path)
    assert res.returncode == 2 and "slabs.count" in res.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_design_dicts_run_end_to_end_and_replay(tmp_path):
    """`daisy run xrd --config design.py` with the original init_dict/cfg_dict (README), then the
    resolved config it left in the outdir replays through plain Snakemake: nothing to do."""
    require_image("pyfai")
    data = tmp_path / "beamtime"
    steps = [{"step": "sample.xrd_eiger", "params": {"n_frames": 3, "frames_per_file": 3, "binning": 1, "seed": 1},
              "outputs": {"scan": str(data / "scan_00575_master.h5")}}]
    workflow.run_job_in_image("pyfai", {"job": "sample", "threads": 2, "steps": steps},
                              tmp_path / "jobs" / "s.json", tmp_path)
    shutil.copy(REPO / ".test" / "xrd-import" / "design.py", data / "design.py")
    before = {p.name: sha256_file(p) for p in data.iterdir()}
    res = daisy("run", "xrd", "--config", str(data / "design.py"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    outdir = tmp_path / "results" / "xrd-imported"
    with h5py.File(outdir / "xrd" / "test_scan.h5") as handle:
        one = handle["/entry/integrate_1d"]
        assert one[one.attrs["signal"]].shape == (3, 1000)
    resolved = outdir / workflow.RESOLVED_CONFIG
    cfg = yaml.safe_load(resolved.read_text())
    prov = json.loads((outdir / "provenance.json").read_text())
    assert cfg == prov["config"] and cfg["integrate"]["geometry"]["fit2d"]["directDist"] == 169
    assert {p.name: sha256_file(p) for p in data.iterdir()} == before
    replay = snakemake(tmp_path, resolved)
    assert "Nothing to be done" in replay.stdout + replay.stderr


def test_daisy_run_passes_targets_after_double_dash_to_snakemake(tmp_path):
    """`daisy run ct --config C -- --until ct_center` and `-- TARGET`: Snakemake's --configfile
    takes every word after it, so the user's arguments must reach Snakemake before it."""
    from snakemake.cli import get_argument_parser

    from daisy.cli import snakemake_args

    config = tmp_path / "config.resolved.yaml"
    for extra, check in ((["results/ct/center.json"], lambda a: set(a.targets) == {"results/ct/center.json"}),
                         (["--until", "ct_center"], lambda a: set(a.until) == {"ct_center"} and not a.targets)):
        for cores in (None, 2):
            parsed = get_argument_parser().parse_args(snakemake_args(config, "workstation", cores, False, extra))
            assert check(parsed), parsed
            assert [str(c) for c in parsed.configfile] == [str(config)]
