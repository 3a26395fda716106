"""``daisy provenance show|diff|validate``: read a run's provenance.json (and its RO-Crate).

- ``show RUN_DIR``: status, pipeline, jobs (status, image, seconds), images and digests, the config
  fields that differ from the schema defaults, results (e.g. the rotation centre), timings, inputs
  and outputs (counts, sizes).
- ``diff A B``: what differs between two runs: config field by field, images (digests), code
  (step-code pin, workflow files), inputs and outputs by sha256 (same / differs / only in one),
  results, job statuses. Exit status 0: the same; 1: they differ. ``outdir`` (where a run wrote)
  is shown, not compared; outputs are matched by their path under the outdir.
- ``validate RUN_DIR``: the run's ro-crate-metadata.json against the Provenance Run Crate profile
  with roc-validator, offline (a test dependency: ``pip install roc-validator``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import provenance


def register_cli(subparsers) -> None:
    """Add ``daisy provenance ...`` to the ``daisy`` command's subparsers."""
    p = subparsers.add_parser("provenance", help="show a run's provenance, diff two runs, validate a run's RO-Crate")
    sub = p.add_subparsers(dest="provenance_command", required=True, metavar="ACTION")
    s = sub.add_parser("show", help="a readable summary of a run (its provenance.json)")
    s.add_argument("run_dir", help="the run's outdir (or its provenance.json)")
    s.set_defaults(func=cmd_show)
    d = sub.add_parser("diff", help="what differs between two runs (exit 0: the same, 1: they differ)")
    d.add_argument("a", help="first run's outdir (or provenance.json)")
    d.add_argument("b", help="second run's outdir (or provenance.json)")
    d.add_argument("--all", action="store_true", help="list every file and result, the same ones too")
    d.set_defaults(func=cmd_diff)
    v = sub.add_parser("validate", help="check the run's RO-Crate against the Provenance Run Crate profile (offline)")
    v.add_argument("run_dir")
    v.add_argument("--severity", choices=["REQUIRED", "RECOMMENDED", "OPTIONAL"], default="REQUIRED")
    v.set_defaults(func=cmd_validate)


# -- reading ------------------------------------------------------------------------------------

def _load(path: str) -> tuple[dict[str, Any], Path]:
    from .cli import DaisyError

    try:
        document = provenance.load(path)
    except (FileNotFoundError, ValueError) as exc:
        raise DaisyError(str(exc)) from None
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    return document, run_dir


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}


def _skeleton(value: Any) -> Any:
    return {k: _skeleton(v) for k, v in value.items() if isinstance(v, dict)} if isinstance(value, dict) else value


def schema_defaults(pipeline: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config a pipeline's schema gives when nothing is set (required fields left out); with
    ``config``, its sections (e.g. the required ``input``) are filled with their defaults too."""
    from daisy_steps import params

    instance: dict[str, Any] = _skeleton(config or {})
    try:
        validator = params._filling_validator()(params.load_schema(pipeline), registry=params._registry())
        for _ in validator.iter_errors(instance):   # fills defaults while it looks; errors: the required fields
            pass
    except Exception:  # noqa: BLE001 (an unknown pipeline: no defaults)
        return {}
    return instance


def config_changes(document: dict[str, Any]) -> list[tuple[str, Any, bool, Any]]:
    """(field, value, has a default, default) of the config fields that differ from the schema
    defaults (fields without a default, such as ``input.file``, included)."""
    config = flatten(document.get("config") or {})
    defaults = flatten(schema_defaults(document.get("pipeline") or "", document.get("config") or {}))
    return [(key, value, key in defaults, defaults.get(key))
            for key, value in config.items() if key not in defaults or defaults[key] != value]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _fmt(value: Any, width: int = 70) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _seconds(record: dict[str, Any]) -> float | None:
    steps = record.get("steps") or []
    if not steps:
        return None
    return sum(float(s.get("seconds") or 0) for s in steps)


def _when(text: str | None):
    from datetime import datetime

    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _image_name(record: dict[str, Any]) -> str:
    image = record.get("image")
    return (image.get("name") if isinstance(image, dict) else image) or "-"


# -- show ---------------------------------------------------------------------------------------

def show(document: dict[str, Any], run_dir: Path) -> str:
    lines = []
    status = document.get("status", "completed")
    software = document.get("software", {})
    lines.append(f"run       {run_dir}  [{status}]")
    if document.get("error"):
        lines.append(f"error     {document['error']}")
    lines.append(f"pipeline  {document.get('pipeline')}  (provenance_version {document.get('provenance_version')}, "
                 f"created {document.get('created')} on {document.get('host')})")
    lines.append(f"software  DAISY {software.get('daisy')}, Snakemake {software.get('snakemake')}, "
                 f"Apptainer {software.get('apptainer')}, Python {software.get('python')}")
    code = document.get("code_sha256") or "-"
    wf = document.get("workflow_files") or {}
    lines.append(f"code      step-code pin {code[:16]}...; {len(wf)} workflow files recorded")

    jobs = document.get("jobs", {})
    not_run = document.get("jobs_not_run", [])
    counts: dict[str, int] = {}
    for record in jobs.values():
        counts[record.get("status", "completed")] = counts.get(record.get("status", "completed"), 0) + 1
    if not_run:
        counts["not run"] = len(not_run)
    lines.append("")
    lines.append(f"jobs      {len(jobs) + len(not_run)} ({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'})")
    width = max([len(n) for n in [*jobs, *not_run]] or [4])
    for name, record in jobs.items():
        seconds = _seconds(record)
        line = f"  {name:<{width}}  {record.get('status', 'completed'):<9}  {_image_name(record):<8}  " \
               f"{f'{seconds:8.2f} s' if seconds is not None else '       - s'}"
        slurm = record.get("slurm") or {}
        if slurm.get("job_id"):
            used = slurm.get("used") or {}
            line += (f"  slurm {slurm['job_id']} on {slurm.get('node') or '?'}/{slurm.get('partition') or '?'}, "
                     f"{used.get('cpus') or '?'} CPUs, max RSS {used.get('max_rss_mb') or '?'} MB")
        if record.get("status") == "failed":
            line += f"  {record.get('failed_step') or ''}: {record.get('error')}"
        lines.append(line)
    for name in not_run:
        lines.append(f"  {name:<{width}}  {'not run':<9}")

    lines.append("")
    lines.append("images")
    for name, info in sorted((document.get("images") or {}).items()):
        lines.append(f"  {name:<8} {info.get('version') or '-':<8} sha256:{info.get('image_sha256') or '-'}")

    lines.append("")
    changes = config_changes(document)
    lines.append(f"config    {len(changes)} fields differ from the defaults")
    for key, value, has_default, default in changes:
        lines.append(f"  {key} = {_fmt(value)}" + (f"  (default {_fmt(default)})" if has_default else ""))

    results = summarize_results(document)
    if results:
        lines.append("")
        lines.append("results")
        lines += [f"  {line}" for line in results]

    lines.append("")
    started, ended = _when(document.get("started")), _when(document.get("ended"))
    busy = sum(s for s in (_seconds(r) for r in jobs.values()) if s)
    wall = f"{(ended - started).total_seconds():.1f} s" if started and ended else "-"
    lines.append(f"timings   first job started {document.get('started') or '-'}, last ended {document.get('ended') or '-'}; "
                 f"wall {wall}, step time {busy:.1f} s")
    inputs, outputs = document.get("inputs") or {}, document.get("outputs") or {}
    for label, files in (("inputs", inputs), ("outputs", outputs)):
        lines.append(f"{label:<9} {len(files)} file{'' if len(files) == 1 else 's'}, "
                     f"{_size(sum(i.get('size') or 0 for i in files.values()))}")
    crate = run_dir / "ro-crate-metadata.json"
    lines.append(f"crate     {crate if crate.is_file() else 'none (written by DAISY from provenance_version 2)'}")
    return "\n".join(lines) + "\n"


def summarize_results(document: dict[str, Any]) -> list[str]:
    """The jobs' results, one line per stage, step and value: a value all jobs of a stage share
    once, one that varies (e.g. a slab's rows) as such."""
    stage_of = {name: info.get("stage") for name, info in (document.get("plan") or {}).get("jobs", {}).items()}
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for where, values in (document.get("results") or {}).items():
        job, _, step = where.partition("/")
        for key, value in flatten(values).items():
            grouped.setdefault((stage_of.get(job) or job, step, key), {})[job] = value
    lines = []
    for (stage, step, key), by_job in grouped.items():
        values = list(by_job.values())
        if all(v == values[0] for v in values):
            jobs = f" ({len(by_job)} jobs)" if len(by_job) > 1 else ""
            lines.append(f"{stage}/{step}: {key} = {_fmt(values[0])}{jobs}")
        else:
            lines.append(f"{stage}/{step}: {key} varies over {len(by_job)} jobs (e.g. {_fmt(values[0], 40)})")
    return lines


def cmd_show(args) -> int:
    document, run_dir = _load(args.run_dir)
    print(show(document, run_dir), end="")
    return 0


# -- diff ---------------------------------------------------------------------------------------

def cmd_diff(args) -> int:
    from .provenance_diff import diff

    a, a_dir = _load(args.a)
    b, b_dir = _load(args.b)
    text, differ = diff(a, a_dir, b, b_dir, show_same=args.all)
    print(text, end="")
    return 1 if differ else 0


# -- validate -----------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    from . import crate, crate_validate
    from .cli import DaisyError

    run_dir = Path(args.run_dir)
    if not (run_dir / crate.CRATE_NAME).is_file():
        raise DaisyError(f"{run_dir} has no {crate.CRATE_NAME}")
    try:
        issues = crate_validate.validate(run_dir, severity=args.severity)
    except RuntimeError as exc:
        raise DaisyError(str(exc)) from None
    for issue in issues:
        print(issue)
    print(f"{run_dir / crate.CRATE_NAME}: {'valid' if not issues else f'{len(issues)} issues'} "
          f"({crate.VALIDATOR_PROFILE}, {args.severity}, offline)")
    return 1 if issues else 0
