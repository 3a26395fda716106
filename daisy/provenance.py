"""The run's provenance record (``<outdir>/provenance.json``), written when a run completes.

It gathers what a later reader needs to trust and repeat the analysis: the validated config,
the step-code pin and per-file hashes, each image's digest and build record, the job records
(step versions, parameters after defaults, library versions, times, results such as the
rotation centre), and the sha256 of every input and output.
"""

from __future__ import annotations

import json
import platform
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from daisy_steps.fileio import sha256_file, write_json_atomic
from daisy_steps.pin import code_files

from . import __version__
from .hashing import sha256_files
from .images import ImageError, load_lock
from .images.paths import apptainer_version

PROVENANCE_VERSION = 1


def _file_infos(paths) -> dict[str, dict[str, Any]]:
    """Size and sha256 of files, hashed in parallel and cached by (path, size, mtime, ctime, inode)."""
    paths = [Path(p) for p in paths]
    digests = sha256_files(paths)
    return {str(p): {"size": p.stat().st_size, "sha256": digests[str(p.resolve())]} for p in paths}


def collect(run) -> dict[str, Any]:
    """Build the provenance document of a finished run."""
    lock = load_lock().get("images", {})
    records = {}
    for name in run.jobs:
        records[name] = json.loads(Path(run.record_file(name)).read_text())
    outputs: dict[str, Any] = {}
    for record in records.values():
        outputs.update(record.get("outputs", {}))
    for target in map(Path, run.targets):
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for path in files:
            outputs.setdefault(str(path), {})
    # jobs leave files over their hash limit (CT slabs) to this one parallel pass
    unhashed = [p for p, info in outputs.items() if not info.get("sha256")]
    outputs.update(_file_infos(unhashed))
    results = {f"{name}/{step['step']}": step["results"]
               for name, record in records.items() for step in record["steps"] if step.get("results")}
    images = {name: {k: lock.get(name, {}).get(k) for k in
                     ("version", "image_sha256", "definition_sha256", "file", "size_bytes", "apptainer_version", "built_at")}
              for name in run.images()}
    try:
        apptainer = apptainer_version()
    except ImageError:
        apptainer = None
    return {
        "provenance_version": PROVENANCE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pipeline": run.pipeline,
        "config": run.config,
        "code_sha256": run.code_sha256,
        "code_files": {name: sha256_file(path) for name, path in code_files()},
        "images": images,
        "software": {"daisy": __version__, "snakemake": metadata.version("snakemake"),
                     "apptainer": apptainer, "python": platform.python_version()},
        "inputs": _file_infos(sorted(set(run.inputs))),
        "outputs": dict(sorted(outputs.items())),
        "results": results,
        "jobs": records,
    }


def write(run, path: str) -> dict[str, Any]:
    document = collect(run)
    write_json_atomic(path, document)
    return document
