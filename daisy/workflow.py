"""Glue between the Snakefile and DAISY: validated config, the run's plan, job files, images.

The Snakefile calls :func:`setup` once; everything a rule needs (paths, job documents,
image paths) comes from the returned :class:`Run`, so rules stay declarative and the logic
stays testable in Python.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daisy_steps.core import JOB_VERSION
from daisy_steps.pin import code_sha256

from . import config as configs

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """One Snakemake job: a chain of steps of one image, run in one process."""

    name: str
    image: str
    steps: list[dict[str, Any]]
    threads: int = 1
    mem_mb: int = 1024


@dataclass
class Run:
    """A validated config and everything derived from it."""

    config: dict[str, Any]
    pipeline: str
    outdir: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    slabs: list[tuple[int, int]] = field(default_factory=list)
    blocks: list[tuple[int, int]] = field(default_factory=list)
    code_sha256: str = ""

    def path(self, *parts: str) -> str:
        return str(self.outdir.joinpath(*parts))

    def job_file(self, name: str) -> str:
        return self.path("jobs", f"{name}.json")

    def record_file(self, name: str) -> str:
        return self.path("records", f"{name}.json")

    def log_file(self, name: str) -> str:
        return self.path("logs", f"{name}.log")

    def images(self) -> list[str]:
        return sorted({job.image for job in self.jobs.values()})

    def image(self, name: str) -> str:
        """Digest-bearing path of image ``name`` (from the lock)."""
        from . import containers

        return str(containers.image_path(name))

    def job_document(self, name: str) -> dict[str, Any]:
        """The job file's content: steps, record path, image digest and code pin."""
        from . import containers

        job = self.jobs[name]
        entry = containers.load_lock().get("images", {}).get(job.image, {})
        return {
            "job_version": JOB_VERSION, "job": name, "threads": job.threads, "steps": job.steps,
            "record": self.record_file(name), "code_sha256": self.code_sha256,
            "image": {"name": job.image, "version": entry.get("version"), "sha256": entry.get("image_sha256")},
        }


def pipeline_module(name: str):
    return importlib.import_module(f"daisy.pipelines.{name}")


def plan(config: dict[str, Any], source: str = "config", pipeline: str | None = None) -> Run:
    """Validate ``config`` (for ``pipeline``, if given) and plan its jobs (no image check)."""
    cfg = configs.validate(config, pipeline, source=source)
    run = Run(config=cfg, pipeline=cfg["pipeline"], outdir=Path(cfg["outdir"]), code_sha256=code_sha256())
    pipeline_module(run.pipeline).plan(run)
    return run


def bind_paths(run: Run) -> str:
    """APPTAINER_BIND value: input folders read-only, the output folder read-write, the step
    code and schemas read-only at /opt/daisy (where the images' PYTHONPATH points)."""
    from . import containers

    binds = [f"{containers.STEPS_DIR}:{containers.STEPS_TARGET}:ro", f"{containers.SCHEMAS_DIR}:{containers.SCHEMAS_TARGET}:ro"]
    outdir = run.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    binds.append(f"{outdir}:{outdir}")
    for folder in sorted({Path(p).resolve().parent for p in run.inputs}):
        binds.append(f"{folder}:{folder}:ro")
    return ",".join(binds)


def _setup_errors() -> tuple[type[Exception], ...]:
    from daisy_steps.errors import StepError

    from .containers import ImageError

    return (StepError, ImageError)


SETUP_ERRORS = _setup_errors()


def setup(config: dict[str, Any], verify_images: bool = True) -> Run:
    """Called by the Snakefile: validate, plan, verify image digests, set container binds."""
    from . import containers

    run = plan(config)
    if verify_images:
        for name in run.images():
            containers.verify_image(name)
    binds = bind_paths(run)
    previous = os.environ.get("DAISY_USER_BIND", os.environ.get("APPTAINER_BIND", ""))
    os.environ["DAISY_USER_BIND"] = previous
    os.environ["APPTAINER_BIND"] = ",".join(b for b in (previous, binds) if b)
    return run


_holders: list = []


def hold_run_images(run: Run) -> None:
    """Keep the run's images mounted and warm while it lasts (containers.ImageHolders), each
    warmed with the libraries its steps import; stopped by :func:`finish_run`."""
    from daisy_steps.core import step_class

    from . import containers

    if _holders:
        return
    modules: dict[str, set[str]] = {name: set() for name in run.images()}
    for job in run.jobs.values():
        for entry in job.steps:
            try:
                modules[job.image].update(step_class(entry["step"]).libraries)
            except Exception:  # a warm-up list is an optimisation: never fail a run for it
                pass
    _holders.append(containers.hold_images({name: sorted(mods) for name, mods in modules.items()}))


def start_run(run: Run, workflow) -> None:
    """Snakefile ``onstart``: hold the run's images (unless ``daisy run`` did already) when this
    process runs the jobs itself in Apptainer (not for a cluster executor, not in job processes)."""
    methods = {getattr(m, "name", str(m)).lower() for m in workflow.deployment_settings.deployment_method}
    if workflow.local_exec and workflow.is_main_process and "apptainer" in methods:
        hold_run_images(run)


def finish_run() -> None:
    """Snakefile ``onsuccess``/``onerror``: stop the image holders and let the process exit."""
    while _holders:
        _holders.pop().release()
    release_scheduler_timers()


def release_scheduler_timers() -> int:
    """Cancel Snakemake's pending scheduler timers, so that the process exits at once.

    After every scheduling pass Snakemake (9.x) arms a non-daemon ``threading.Timer`` of the
    ``--max-jobs-per-timespan`` timespan (1 s by default; the option cannot go below 1 s, and
    ``100/100ms`` parses as 100 *minutes*) and Python waits for it at exit: up to 1 s added to
    every run. Called from the Snakefile's ``onsuccess``/``onerror``, when scheduling is over.
    """
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    for timer in timers:
        timer.cancel()
    return len(timers)


def write_job(path: str, document: dict[str, Any]) -> None:
    """Write a job file atomically (run by the job-file rule on the host)."""
    from daisy_steps.fileio import write_json_atomic

    write_json_atomic(path, document)


def run_job_in_image(image: str, document: dict[str, Any], job_path: Path, outdir: Path,
                     inputs: tuple = (), quiet: bool = True) -> None:
    """Run one job document in ``image`` outside Snakemake (sample data, tests, benchmarks).

    The job file and outputs live under ``outdir`` (bound read-write); ``inputs`` are bound
    read-only; the digest is verified first.
    """
    import subprocess

    from daisy_steps.errors import StepError

    from . import containers

    document = {"job_version": JOB_VERSION, "code_sha256": code_sha256(), **document}
    job_path = Path(job_path)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_job(str(job_path), document)
    argv = ["python3", "-m", "daisy_steps", "run", "--job", str(job_path.resolve())]
    if quiet:
        argv.append("--quiet")
    containers.verify_image(image)
    folders = {Path(p).resolve().parent for p in inputs} | {job_path.resolve().parent}
    cmd = containers.exec_argv(image, argv, binds_ro=sorted(folders - {outdir.resolve()}), binds_rw=[outdir])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("daisy step")] or proc.stderr.splitlines()[-5:]
        raise StepError(f"job {document.get('job')} in image {image} failed: " + " | ".join(lines))
