"""Glue between Snakemake and DAISY's plan: the one entry path of every run.

``daisy run`` resolves the config (design dictionaries translated, defaults filled), writes it
into the outdir and hands Snakemake that file; plain ``snakemake --configfile`` comes through the
same :func:`setup`. Rules read their patterns, image and resources from :func:`rule_spec`; image
digests are verified and images held warm in :func:`start_run` (``onstart``: only when jobs will
run, so ``--lint`` and ``--dry-run`` need no images).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from daisy_steps.errors import StepError

from . import config as configs
from . import hash_ahead, images
from .plan import INDEX, INDEX_PATTERN, Job, Run, plan

#: the name of the resolved config ``daisy run`` writes into the outdir and runs
RESOLVED_CONFIG = "config.resolved.yaml"
SETUP_ERRORS = (StepError, images.ImageError)
_runs: dict[str, Run] = {}


def read_config(path: Path) -> dict[str, Any]:
    """A config file, or the original design's init_dict/cfg_dict translated (not validated)."""
    from . import importer

    if importer.looks_like_design_dicts(path):
        return importer.translate_file(path)
    return configs.read_config(path)


def _plan_key(config: dict[str, Any], pipeline: str | None) -> str:
    return json.dumps([config, pipeline], sort_keys=True, default=str)


def cached_plan(config: dict[str, Any], source: str = "config", pipeline: str | None = None) -> Run:
    """:func:`daisy.plan.plan`, once per config in this process (``daisy run`` plans before it
    starts Snakemake in the same process; the Snakefile then finds the same plan)."""
    key = _plan_key(config, pipeline)
    if key not in _runs:
        _runs[key] = plan(config, source=source, pipeline=pipeline)
    return _runs[key]


def resolve(path: Path, pipeline: str | None = None) -> Run:
    """Read, translate, validate and plan the config at ``path`` (once per process)."""
    return cached_plan(read_config(path), source=str(path), pipeline=pipeline)


def write_resolved(run: Run, source: Path, folder: Path | None = None) -> Path:
    """Write the run's resolved config (every default filled in) into ``folder`` (default: the
    outdir) and let the Snakefile, given that file, find this plan. Returns the file."""
    resolved = Path(folder or run.outdir) / RESOLVED_CONFIG
    write_resolved_config(run.config, resolved, source=source)
    _runs[_plan_key(run.config, None)] = run
    return resolved


def write_resolved_config(cfg: dict[str, Any], path: Path, source: Path) -> None:
    import yaml

    from daisy_steps.fileio import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"# Resolved by daisy run from {Path(source).resolve()} (every default filled in).\n"
            f"# Rerun exactly this: snakemake --workflow-profile profiles/workstation --configfile {path.name}\n")
    write_text_atomic(path, head + yaml.safe_dump(cfg, sort_keys=False))


def setup(config: dict[str, Any]) -> Run:
    """Called by the Snakefile: validate and plan (no image needed), set the container binds."""
    run = cached_plan(config)
    set_container_binds(run)
    return run


def set_container_binds(run: Run) -> None:
    """APPTAINER_BIND for the jobs Snakemake starts: the step code read-only at /opt/daisy,
    input folders read-only, the outdir read-write (the same binds as :func:`run_job_in_image`)."""
    run.outdir.mkdir(parents=True, exist_ok=True)
    binds = images.bind_specs(binds_ro=sorted({Path(p).resolve().parent for p in run.inputs}),
                              binds_rw=[run.outdir])
    previous = os.environ.get("DAISY_USER_BIND", os.environ.get("APPTAINER_BIND", ""))
    os.environ["DAISY_USER_BIND"] = previous  # re-parsing must not accumulate our binds
    os.environ["APPTAINER_BIND"] = ",".join(b for b in (previous, ",".join(binds)) if b)


# -- what the rules read ------------------------------------------------------------------------

@dataclass
class RuleSpec:
    """The directives of one stage's rule, all taken from the plan."""

    output: dict[str, Any]
    log: str
    container: str
    input: Callable[[Any], dict[str, Any]]
    threads: Callable[[Any], int]
    resources: dict[str, Callable[[Any], int]]
    wildcard_constraints: dict[str, str]


#: memory a job needs beyond the plan's estimate when a cluster executor wraps it: the Slurm plugin
#: runs two Snakemake processes per job (the batch step's and the srun step's) inside the job's
#: memory limit (measured 60-180 MB together; docs/slurm.md)
WRAPPER_MB = 256


def rule_spec(run: Run, stage: str, wrapper_mb: Callable[[], int] = lambda: 0) -> RuleSpec:
    """Patterns, image, inputs and resources of ``stage``'s rule, from the plan."""
    from snakemake.io import directory, temp

    st = run.stages[stage]
    name = st.job_name()

    def job(wildcards) -> Job:
        return run.jobs[st.job_name(wildcards.get(INDEX))] if st.indexed else run.jobs[name]

    output = {slot: (directory if out.directory else temp if out.temp else str)(run.path(out.pattern))
              for slot, out in run.outputs[stage].items()}
    output["record"] = run.record_file(name)
    return RuleSpec(
        output=output,
        log=run.log_file(name),
        container=str(images.locked_path(st.image)),
        input=lambda wildcards: {"job": run.job_file(job(wildcards).name), "data": job(wildcards).inputs},
        threads=lambda wildcards: job(wildcards).threads,
        # a retried job (profile ``retries``) asks for more: an out-of-memory kill is the usual cause
        resources={"mem_mb": lambda wildcards, attempt: (job(wildcards).mem_mb + wrapper_mb()) * attempt,
                   "runtime": lambda wildcards, attempt: job(wildcards).runtime_min * attempt},
        wildcard_constraints={INDEX: INDEX_PATTERN} if st.indexed else {},
    )


def rule_specs(run: Run, wrapper_mb: Callable[[], int] = lambda: 0) -> dict[str, RuleSpec]:
    """:func:`rule_spec` of every stage of the run (``STAGE`` in rules/common.smk); ``wrapper_mb()``
    is added to every job's memory (asked when jobs are made: the executor is known only then)."""
    return {stage: rule_spec(run, stage, wrapper_mb) for stage in run.stages}


# -- run lifecycle (rules/common.smk: onstart, onsuccess, onerror) ------------------------------

_holders: list = []


#: what a run records of each image's build, besides where it came from (docs/image-reproducibility.md)
IMAGE_RECORD_KEYS = ("definition_sha256", "size_bytes", "apptainer_version", "mksquashfs_version", "reproducible",
                     "built_at")


def resolve_images(run: Run) -> dict[str, dict[str, Any]]:
    """Every image of the run, as it will run: the published one from the cache, a bundle or a
    store (pulled by digest), else a local build (with a warning); sha256 checked, signature
    policy applied. Refuses an image other than the one the jobs were planned with."""
    found = {}
    for name in run.images():
        resolved = images.resolve(name)
        fingerprint = images.check_signature(resolved)
        planned = images.planned_path(name)
        if resolved.path.resolve() != planned.resolve():
            raise images.ImageError(f"image '{name}': the run was planned with {planned} but {resolved.path} "
                                    f"({resolved.origin}) is what is available now; run the command again")
        entry = resolved.entry
        found[name] = {"version": resolved.version, "image_sha256": resolved.sha256, "file": resolved.path.name,
                       "path": str(resolved.path), "origin": resolved.origin, "store": resolved.store,
                       "signature": fingerprint, **{k: entry.get(k) for k in
                                                    IMAGE_RECORD_KEYS}}
    return found


def start_run(run: Run, workflow) -> None:
    """``onstart`` (jobs will run): take the outdir's lock (one run per outdir; a no-op under
    ``daisy run``, which took it already), resolve and verify every image (sha256, signature
    policy), record which ones run (``records/run/images.json``, read by the provenance), then,
    when this process runs the jobs itself, keep the images mounted and warm while the run lasts."""
    from daisy_steps.fileio import write_json_atomic

    from . import outdir_lock

    outdir_lock.acquire(run.outdir)
    write_json_atomic(run.images_file(), resolve_images(run))
    if workflow.is_main_process:   # finished jobs' large outputs hashed while later jobs run
        hash_ahead.start(Path(run.path("records")), run.targets)
    methods = {getattr(m, "name", str(m)).lower() for m in workflow.deployment_settings.deployment_method}
    if workflow.local_exec and workflow.is_main_process and "apptainer" in methods and not _holders:
        _holders.append(images.hold_images(warm_modules(run)))


def warm_modules(run: Run) -> dict[str, list[str]]:
    """Per image, the libraries its jobs' steps import (what the holders warm)."""
    from daisy_steps.core import step_class

    modules: dict[str, set[str]] = {name: set() for name in run.images()}
    for job in run.jobs.values():
        for entry in job.steps:
            modules[job.image].update(step_class(entry["step"]).libraries)
    return {name: sorted(mods) for name, mods in modules.items()}


def end_run(run: Run, failed: bool = False) -> None:
    """``onsuccess``/``onerror``: a failed run still writes its provenance and crate; the jobs'
    warnings (from their records) are printed on the console; then :func:`finish_run`."""
    from .run_report import print_warnings

    if failed:
        from . import provenance

        _drop_or_keep_intermediates(run)
        provenance.write(run, status="failed")
    print_warnings(run)
    finish_run()


def _drop_or_keep_intermediates(run: Run) -> None:
    """A failed run keeps its intermediate files (e.g. ct/rows) only when a job that read them has
    finished: the same command then resumes without recomputing it (remaking them would make every
    reader out of date). Otherwise nothing is saved by keeping them: they go."""
    temp = set(run.temp_files())
    readers = [name for name, job in run.jobs.items() if temp & set(job.inputs)]
    finished = [name for name in readers if Path(run.record_file(name)).is_file()]
    if not finished:
        for path in temp:
            Path(path).unlink(missing_ok=True)
        return
    kept = [p for p in temp if Path(p).is_file()]
    if kept:
        size = sum(Path(p).stat().st_size for p in kept) / 2**20
        print(f"daisy: kept {len(kept)} intermediate files ({size:.0f} MiB, e.g. {kept[0]}) so that the same "
              f"command resumes without redoing {len(finished)} finished jobs; they go when the run completes",
              file=sys.stderr)


def write_provenance(run: Run) -> None:
    """The ``provenance`` rule: every job is done, so the image holders are asked to stop (they
    exit while the provenance is written; :func:`finish_run` waits for them), then
    :func:`daisy.provenance.write`."""
    from . import provenance

    for holders in _holders:
        holders.stop()
    provenance.write(run)


def finish_run() -> None:
    """``onsuccess``/``onerror``: stop the image holders and let the process exit."""
    from . import outdir_lock

    hash_ahead.stop()
    while _holders:
        _holders.pop().release()
    outdir_lock.release_all()
    release_scheduler_timers()


def release_scheduler_timers() -> None:
    """Cancel Snakemake's pending scheduler timers so that the process exits at once (it arms a
    non-daemon 1 s ``threading.Timer`` after every pass; DEVELOPERS.md)."""
    for timer in [t for t in threading.enumerate() if isinstance(t, threading.Timer)]:
        timer.cancel()


def write_job(path: str, document: dict[str, Any]) -> None:
    """Write a job file atomically (the job-file rule, on the host)."""
    from daisy_steps.fileio import write_json_atomic

    write_json_atomic(path, document)


def run_job_in_image(image: str, document: dict[str, Any], job_path: Path, outdir: Path,
                     inputs: tuple = (), quiet: bool = True) -> None:
    """Run one job document in ``image`` outside Snakemake (sample data, tests, benchmarks), with
    the isolation of a pipeline job: digest verified, inputs read-only, ``outdir`` (which holds
    the job file and outputs) read-write, the step code at /opt/daisy."""
    import subprocess

    from daisy_steps.core import JOB_VERSION
    from daisy_steps.pin import code_sha256

    document = {"job_version": JOB_VERSION, "code_sha256": code_sha256(),
                "image": {"name": image}, **document}
    job_path, outdir = Path(job_path), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_job(str(job_path), document)
    argv = ["python3", "-m", "daisy_steps", "run", "--job", str(job_path.resolve())]
    if quiet:
        argv.append("--quiet")
    images.verify_image(image)
    folders = {Path(p).resolve().parent for p in inputs} | {job_path.resolve().parent}
    cmd = images.exec_argv(image, argv, binds_ro=sorted(folders - {outdir.resolve()}), binds_rw=[outdir])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("daisy step")] or proc.stderr.splitlines()[-5:]
        raise StepError(f"job {document.get('job')} in image {image} failed: " + " | ".join(lines))
