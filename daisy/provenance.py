"""The run's provenance: ``<outdir>/provenance.json`` and the RO-Crate rendered from it.

:func:`collect` gathers, once, what a later reader needs to trust, archive and repeat the
analysis; :func:`write` stores it as ``provenance.json`` (DAISY's machine-readable record) and
renders the same document as a Provenance Run Crate, ``ro-crate-metadata.json``
(:mod:`daisy.crate`). It runs when a run completes (the ``provenance`` rule) and when it fails
(``onerror``): then it takes whatever job records exist (failed jobs leave theirs under
``records/failed/``, see :func:`daisy_steps.core.run_job`) and never fails on a missing file.

The document (``provenance_version`` 2):

- ``status``: ``completed`` or ``failed``; ``error``: one line, for failed runs;
- ``created``, ``host``, ``workdir`` (the working directory: relative paths below are relative to
  it), ``outdir`` (absolute), ``repository`` (the workflow source's root);
- ``pipeline``, ``config`` (validated, every default filled in);
- ``code_sha256`` (the step-code pin) and ``code_files`` (``daisy_steps/`` + ``schemas/`` files
  it covers -> sha256);
- ``workflow_files``: ``{path relative to the repository: {"sha256", "size"}}`` of the workflow
  source that ran (:data:`WORKFLOW_FILES`): what ``daisy archive`` packs, refusing a changed file;
- ``images``: name -> ``version``, ``image_sha256``, ``definition_sha256``, ``file``, ... (lock);
- ``software``: DAISY, Snakemake, Apptainer, Python versions;
- ``inputs``, ``outputs``: ``{path: {"size", "sha256"}}`` (paths as the run named them);
- ``results``: ``{"<job>/<step>": results}`` (e.g. the rotation centre);
- ``jobs``: job name -> its record (``status`` completed or failed); ``jobs_not_run``: planned
  jobs without a record; ``plan``: the stages (image, step chain) and each job's stage, files;
- ``started``/``ended``: the first job's start and the last job's end.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from daisy_steps.core import failed_record_path
from daisy_steps.fileio import sha256_file, write_json_atomic
from daisy_steps.pin import code_files

from . import __version__
from .hashing import sha256_files
from .images import ImageError, load_lock
from .images.paths import apptainer_version

PROVENANCE_VERSION = 2
REPO = Path(__file__).resolve().parents[1]
PROVENANCE_NAME = "provenance.json"
#: the workflow source a run records (relative to the repository; ``**``: any depth)
WORKFLOW_FILES = ("Snakefile", "rules/**", "daisy/**/*.py", "daisy/crate_data/**", "daisy_steps/**/*.py",
                  "schemas/**/*.json", "profiles/**", "containers/images.lock.json", "pyproject.toml")


def _file_infos(paths) -> dict[str, dict[str, Any]]:
    """Size and sha256 of the files that exist, hashed in parallel and cached by (path, size,
    mtime, ctime, inode); missing ones are left out."""
    paths = [Path(p) for p in paths if Path(p).is_file()]
    digests = sha256_files(paths)
    return {str(p): {"size": p.stat().st_size, "sha256": digests[str(p.resolve())]} for p in paths}


def workflow_file_paths(root: Path = REPO) -> list[str]:
    """The workflow source files under ``root`` (:data:`WORKFLOW_FILES`), relative, sorted."""
    found: set[str] = set()
    for pattern in WORKFLOW_FILES:
        if "**" in pattern:
            top, _, name = pattern.partition("/**")
            name = name.lstrip("/") or "*"
            candidates = (root / top).rglob(name) if (root / top).is_dir() else []
        else:
            candidates = [root / pattern]
        for path in candidates:
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
                found.add(rel.as_posix())
    return sorted(found)


def workflow_files(root: Path = REPO) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "size"}}`` of the workflow source (stat-cached hashes)."""
    rels = workflow_file_paths(root)
    digests = sha256_files([root / rel for rel in rels])
    return {rel: {"sha256": digests[str((root / rel).resolve())], "size": (root / rel).stat().st_size}
            for rel in rels}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(record_file: str | os.PathLike) -> dict[str, Any] | None:
    """A job's record: the completed one at its path, or the failed one under ``failed/`` (the
    later of the two when both exist); None when the job left none."""
    found = [r for r in (_read_json(Path(record_file)), _read_json(failed_record_path(record_file))) if r]
    if not found:
        return None
    record = max(found, key=lambda r: str(r.get("started") or ""))
    record.setdefault("status", "completed")      # records before RECORD_VERSION 2
    return record


def _plan(run) -> dict[str, Any]:
    """The stages and jobs of the run's plan (what the crate names its tools and steps after)."""
    stages, jobs = {}, {}
    for name, job in (getattr(run, "jobs", None) or {}).items():
        stage = getattr(job, "stage", None)
        if stage is None:
            continue
        stages.setdefault(stage.name, {"image": stage.image, "steps": list(stage.steps), "doc": stage.doc})
        jobs[name] = {"stage": stage.name, "image": stage.image, "index": getattr(job, "index", None),
                      "steps": [entry["step"] for entry in job.steps],
                      "inputs": list(job.inputs), "outputs": dict(job.outputs)}
    return {"stages": stages, "jobs": jobs}


def _one_line(text: Any, limit: int = 2000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _images(run, lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each image as it ran (file, digest, origin: published / bundle / local build, store,
    verified signature), from what the run recorded when its jobs started; else as planned."""
    try:
        ran = json.loads(Path(run.images_file()).read_text())
    except (OSError, ValueError, AttributeError):  # not recorded (jobs never started), or no plan
        ran = {}
    from .workflow import IMAGE_RECORD_KEYS

    keys = ("version", "image_sha256", "file", *IMAGE_RECORD_KEYS)
    out = {}
    for name in run.images():
        if name in ran:
            out[name] = ran[name]
            continue
        try:
            from .images import planned

            entry, path, origin = planned(name)
            out[name] = {**{k: entry.get(k) for k in keys}, "path": str(path), "origin": origin}
        except (ImageError, OSError, ValueError):
            out[name] = {k: lock.get(name, {}).get(k) for k in keys}
    return out


def collect(run, status: str = "completed", error: str | None = None) -> dict[str, Any]:
    """Build the provenance document of a run that completed or failed."""
    if status not in ("completed", "failed"):
        raise ValueError(f"status must be 'completed' or 'failed', not {status!r}")
    try:
        lock = load_lock().get("images", {})
    except (ImageError, OSError, ValueError):
        lock = {}
    records: dict[str, Any] = {}
    not_run = []
    for name in run.jobs:
        record = read_record(run.record_file(name))
        if record is None:
            not_run.append(name)
        else:
            records[name] = record
    outputs: dict[str, Any] = {}
    for record in records.values():
        if record.get("status") == "completed":
            outputs.update({p: info for p, info in record.get("outputs", {}).items() if Path(p).is_file()})
    for target in map(Path, run.targets):
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for path in files:
            if path.is_file():
                outputs.setdefault(str(path), {})
    # jobs leave files over their hash limit (CT slabs) to this one parallel pass
    unhashed = [p for p, info in outputs.items() if not info.get("sha256")]
    outputs.update(_file_infos(unhashed))
    results = {f"{name}/{step['step']}": step["results"]
               for name, record in records.items() for step in record.get("steps", []) if step.get("results")}
    images = _images(run, lock)
    try:
        apptainer = apptainer_version()
    except (ImageError, OSError):
        apptainer = None
    failed = {name: r for name, r in records.items() if r.get("status") == "failed"}
    if status == "failed" and not error:
        error = "; ".join(f"job {name} failed: {r.get('error') or 'no error recorded'}" for name, r in failed.items()) \
            or "the run failed before its jobs recorded an error"
    times = [r for r in records.values() if r.get("started")]
    outdir = getattr(run, "outdir", None)
    document = {
        "provenance_version": PROVENANCE_VERSION,
        "status": status,
        **({"error": _one_line(error)} if status == "failed" else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "workdir": os.getcwd(),
        "outdir": os.path.abspath(outdir) if outdir is not None else None,
        "repository": str(REPO),
        "pipeline": run.pipeline,
        "config": run.config,
        "code_sha256": run.code_sha256,
        "code_files": {name: sha256_file(path) for name, path in code_files()},
        "workflow_files": workflow_files(),
        "images": images,
        "engine": getattr(run, "engine", "snakemake"),
        "software": {"daisy": __version__, "snakemake": metadata.version("snakemake"),
                     "apptainer": apptainer, "python": platform.python_version()},
        "inputs": _file_infos(sorted(set(run.inputs))),
        "outputs": dict(sorted(outputs.items())),
        "results": results,
        "io": _io(records, run.inputs),
        "jobs": records,
        "jobs_not_run": not_run,
        "plan": _plan(run),
        "started": min((r["started"] for r in times), default=None),
        "ended": max((r.get("ended") or r["started"] for r in times), default=None),
    }
    return document


def _io(records: dict[str, Any], inputs) -> dict[str, int]:
    """Bytes the run's steps read from files (their ``bytes_read`` results: whole chunks count
    whole), beside the size of the run's inputs."""
    read = sum(int(step.get("results", {}).get("bytes_read", 0) or 0)
               for record in records.values() for step in record.get("steps", []))
    size = sum(Path(p).stat().st_size for p in set(inputs) if Path(p).is_file())
    return {"bytes_read": read, "input_bytes": size}


def _minimal(run, status: str, error: str | None, problem: BaseException) -> dict[str, Any]:
    """What a failed run's provenance holds when collecting the full document failed."""
    return {"provenance_version": PROVENANCE_VERSION, "status": status,
            "error": _one_line(error or "the run failed"),
            "collect_error": _one_line(f"{type(problem).__name__}: {problem}"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
            "workdir": os.getcwd(), "pipeline": getattr(run, "pipeline", None), "config": getattr(run, "config", None),
            "code_sha256": getattr(run, "code_sha256", None)}


def write(run, path: str | os.PathLike | None = None, status: str = "completed",
          error: str | None = None) -> dict[str, Any]:
    """Write ``<outdir>/provenance.json`` and ``<outdir>/ro-crate-metadata.json`` (both atomic)
    from one :func:`collect`, and return the document.

    ``path`` (default: the run's provenance file) names provenance.json; the crate goes beside
    it. For a failed run (``status="failed"``, from ``onerror``) it takes the job records that
    exist and never raises: a problem is reported on stderr.
    """
    path = Path(path) if path is not None else Path(run.provenance_file())
    if status != "failed":
        document = collect(run, status, error)
        write_json_atomic(path, document)
        from . import crate

        crate.write(document, path.parent, provenance_file=path)
        return document
    try:
        document = collect(run, status, error)
    except Exception as exc:  # noqa: BLE001 (onerror must not fail)
        document = _minimal(run, status, error, exc)
        print(f"daisy: provenance of the failed run is incomplete: {document['collect_error']}", file=sys.stderr)
    try:
        write_json_atomic(path, document)
    except OSError as exc:
        print(f"daisy: could not write {path}: {exc}", file=sys.stderr)
        return document
    if "collect_error" not in document:
        try:
            from . import crate

            crate.write(document, path.parent, provenance_file=path)
        except Exception as exc:  # noqa: BLE001
            print(f"daisy: could not write the RO-Crate of the failed run: {type(exc).__name__}: {exc}", file=sys.stderr)
    return document


def load(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The provenance document of a run folder (or of a provenance.json given directly)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / PROVENANCE_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: not a DAISY run folder") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a provenance document")
    return document

