"""The run's plan: the one owner of every job's files, image, steps and resources.

A pipeline module (``daisy/pipelines/<name>.py``) declares its :class:`Stage` s (one Snakemake
rule each: image, step chain) and, given a validated config, adds the run's output patterns and
jobs to a :class:`Run`. The rules (``rules/*.smk``, through :mod:`daisy.workflow`), the job files
and the provenance all read the plan; nothing else names a job's paths, image or resources.
Every job is checked when it is added: its steps belong to its stage, in order; each step can run
in the job's image and finds what it requires in the data store (``daisy_steps.ports``); the files
its steps write are exactly the job's declared outputs.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from daisy_steps.core import JOB_VERSION, external_inputs
from daisy_steps.errors import StepError
from daisy_steps.fileio import FileRef
from daisy_steps.pin import code_sha256
from daisy_steps.ports import check_chain

from . import config as configs

PIPELINES = configs.PIPELINES
#: wildcard of the stages that have one job per slab / block (``ct_slab_0003``), or per scan and
#: block of a batch (``xrd_block_scan_00001_0003``, ``xrd_gather_scan_00001``): a number (4 digits)
#: or a name of letters, digits, ``_ . + -`` (no ``/``, so it never spans folders)
INDEX = "index"
INDEX_PATTERN = r"\d{4}|[A-Za-z0-9][A-Za-z0-9_.+-]*"


@dataclass(frozen=True)
class Stage:
    """A kind of job, run by one Snakemake rule: all its jobs run in ``image`` and chain (a
    subset of) ``steps`` in this order. ``indexed`` stages have one job per slab or block;
    in a ``repeats`` stage a job may run the chain several times over (one pass per slab)."""

    pipeline: str
    name: str
    image: str
    steps: tuple[str, ...]
    indexed: bool = False
    doc: str = ""
    repeats: bool = False

    def job_name(self, index: int | str | None = None) -> str:
        if not self.indexed:
            return self.name
        return f"{self.name}_{{{INDEX}}}" if index is None else f"{self.name}_{_index(index)}"


@dataclass(frozen=True)
class Output:
    """An output of a stage's jobs: a path pattern relative to the outdir (``{index}`` for
    indexed stages); ``directory`` for outputs that are folders (e.g. the .xy files); ``temp``
    for intermediate files Snakemake deletes when their readers are done (never in the provenance)."""

    pattern: str
    directory: bool = False
    temp: bool = False              # an intermediate file, deleted once every job reading it is done


@dataclass
class Job:
    """One Snakemake job: a chain of steps of one image, run in one process."""

    name: str
    stage: Stage
    steps: list[dict[str, Any]]
    inputs: list[str]
    outputs: dict[str, str]
    threads: int = 1
    mem_mb: int = 1024
    runtime_min: int = 60
    index: str | None = None

    @property
    def image(self) -> str:
        return self.stage.image


def _index(index: int | str) -> str:
    return f"{index:04d}" if isinstance(index, int) else str(index)


@dataclass
class Run:
    """A validated config and its plan."""

    config: dict[str, Any]
    pipeline: str
    outdir: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    stages: dict[str, Stage] = field(default_factory=dict)
    outputs: dict[str, dict[str, Output]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    code_sha256: str = ""
    #: what ran the jobs: "snakemake" (daisy run, plain snakemake) or "daisy watch" (online mode)
    engine: str = "snakemake"

    # -- paths: every one is named here or by a stage's output patterns -------------------------
    def path(self, *parts: str) -> str:
        return str(self.outdir.joinpath(*parts))

    def job_file(self, name: str) -> str:
        return self.path("jobs", f"{name}.json")

    def record_file(self, name: str) -> str:
        return self.path("records", f"{name}.json")

    def log_file(self, name: str) -> str:
        return self.path("logs", f"{name}.log")

    def provenance_file(self) -> str:
        return self.path("provenance.json")

    def crate_file(self) -> str:
        """The run's Provenance Run Crate (rendered from the provenance document)."""
        return self.path("ro-crate-metadata.json")

    def output(self, stage: str, slot: str, index: int | str | None = None) -> str:
        """The path of output ``slot`` of ``stage``'s job (``index`` for indexed stages)."""
        pattern = self.outputs[stage][slot].pattern
        return self.path(pattern.format(**({INDEX: _index(index)} if index is not None else {})))

    # -- what the planners call -----------------------------------------------------------------
    def add_stage(self, stage: Stage, outputs: dict[str, Output | str]) -> None:
        """Declare a stage of this run and its outputs (slot -> pattern), the ones this config
        asks for (e.g. previews only when ``save.previews``)."""
        self.stages[stage.name] = stage
        self.outputs[stage.name] = {slot: o if isinstance(o, Output) else Output(o) for slot, o in outputs.items()}

    def add_job(self, stage: str, steps: list[dict[str, Any]], index: int | str | None = None, threads: int = 1,
                mem_mb: int = 1024, runtime_min: int = 60, extra_inputs: tuple[str, ...] = ()) -> Job:
        """Add a job of ``stage`` running ``steps``; its inputs are the files its steps read (plus
        ``extra_inputs``, e.g. the data files an Eiger master links), its outputs the stage's."""
        st = self.stages[stage]
        if index is not None and not re.fullmatch(INDEX_PATTERN, _index(index)):
            raise StepError(f"stage {stage}: index {_index(index)!r} is not a block number or a name of letters, "
                            f"digits, '_', '.', '+', '-'")
        name = st.job_name(index)
        if name in self.jobs:
            raise StepError(f"job {name} is planned twice (two scans or blocks with one name)")
        outputs = {slot: self.output(stage, slot, index) for slot in self.outputs[stage]}
        inputs = list(dict.fromkeys([*external_inputs(steps, self.record_file(name)), *map(str, extra_inputs)]))
        job = Job(name, st, steps, inputs, outputs, threads, mem_mb, runtime_min,
                  _index(index) if index is not None else None)
        _check_job(job)
        self.jobs[name] = job
        return job

    # -- what the rules and the provenance read -------------------------------------------------
    @property
    def targets(self) -> list[str]:
        """Every output of every job (what ``rule all`` asks for), in job order."""
        return self._outputs(temp=False)

    def temp_files(self) -> list[str]:
        """Intermediate outputs (``Output.temp``): deleted by Snakemake once read, by a failed run at its end."""
        return self._outputs(temp=True)

    def _outputs(self, temp: bool) -> list[str]:
        return [path for job in self.jobs.values() for slot, path in job.outputs.items()
                if self.outputs[job.stage.name][slot].temp == temp]

    def images(self) -> list[str]:
        return sorted({job.image for job in self.jobs.values()})

    def stage_jobs(self, stage: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.stage.name == stage]

    def images_file(self) -> str:
        """Which file, digest and origin each image of the run had (written when jobs start)."""
        return self.path("records", "run", "images.json")  # beside, not among, the job records

    def job_document(self, name: str) -> dict[str, Any]:
        """The job file's content: steps, record path, threads, the image the run will use (its
        digest: published, or a local build's) and the step-code pin."""
        from . import images

        job = self.jobs[name]
        entry = images.planned(job.image)[0]
        return {
            "job_version": JOB_VERSION, "job": name, "threads": job.threads, "steps": job.steps,
            "record": self.record_file(name), "code_sha256": self.code_sha256,
            "image": {"name": job.image, "version": entry.get("version"), "sha256": entry.get("image_sha256")},
        }


def _check_job(job: Job) -> None:
    """Refuse a job that contradicts its stage or its steps' ports (before any data is read)."""
    names = [entry["step"] for entry in job.steps]
    if not _follows(names, job.stage.steps, job.stage.repeats):
        raise StepError(f"job {job.name}: steps {names} are not a chain of stage {job.stage.name} "
                        f"({', '.join(job.stage.steps)}{', repeated' if job.stage.repeats else ''})")
    check_chain(job.name, job.image, job.steps)
    written = {str(FileRef.parse(v).path) for s in job.steps for v in s.get("outputs", {}).values()}
    declared = set(job.outputs.values())
    if written != declared:
        raise StepError(f"job {job.name}: its steps write {sorted(written - declared)} beyond the stage's "
                        f"outputs, or leave {sorted(declared - written)} unwritten")


def _follows(names: list[str], chain: tuple[str, ...], repeats: bool) -> bool:
    """Whether ``names`` is an ordered subsequence of ``chain`` (with ``repeats``: several such
    passes one after another, each starting where the chain starts again)."""
    pos = 0
    for name in names:
        try:
            pos = chain.index(name, pos) + 1
        except ValueError:
            if not repeats or name not in chain:
                return False
            pos = chain.index(name) + 1
    return True


def pipeline_module(name: str):
    return importlib.import_module(f"daisy.pipelines.{name}")


def all_stages() -> list[Stage]:
    """Every stage of every pipeline (for the docs: which jobs run a step)."""
    return [stage for name in PIPELINES for stage in pipeline_module(name).STAGES]


def plan(config: dict[str, Any], source: str = "config", pipeline: str | None = None) -> Run:
    """Validate ``config`` (for ``pipeline``, if given) and plan its jobs. Reads the inputs'
    metadata (e.g. a scan's shape); needs no image."""
    cfg = configs.validate(config, pipeline, source=source)
    run = Run(config=cfg, pipeline=cfg["pipeline"], outdir=Path(cfg["outdir"]), code_sha256=code_sha256())
    plan_fn: Callable[[Run], None] = pipeline_module(run.pipeline).plan
    plan_fn(run)
    configs.check_plan_paths(run)     # every file of every job inside the outdir
    return run
