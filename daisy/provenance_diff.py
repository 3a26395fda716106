"""``daisy provenance diff A B``: what differs between two runs — config field by field, images
(digests), code (step-code pin, workflow files), inputs and outputs by sha256, results, job
statuses (:mod:`daisy.provenance_cli` registers the command)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .provenance_cli import _fmt, flatten


def _base(document: dict[str, Any], run_dir: Path) -> tuple[str, str]:
    """(working directory, absolute outdir) of a run: relative paths are relative to the first."""
    workdir = document.get("workdir")
    outdir = document.get("outdir")
    if not workdir:  # provenance_version 1: the run folder minus the config's relative outdir
        named = Path((document.get("config") or {}).get("outdir", ""))
        resolved = run_dir.resolve()
        parts = [part for part in named.parts if part != "."]
        workdir = str(Path(*resolved.parts[:-len(parts)])) if parts and not named.is_absolute() \
            and list(resolved.parts[-len(parts):]) == parts else os.getcwd()
    if not outdir:
        outdir = os.path.normpath(os.path.join(workdir, (document.get("config") or {}).get("outdir", str(run_dir))))
    return workdir, outdir


def _by_location(document: dict[str, Any], run_dir: Path, key: str, relative: bool) -> dict[str, dict[str, Any]]:
    workdir, outdir = _base(document, run_dir)
    out = {}
    for path, info in (document.get(key) or {}).items():
        absolute = os.path.normpath(os.path.join(workdir, path))
        name = os.path.relpath(absolute, outdir) if relative and Path(absolute).is_relative_to(outdir) else absolute
        out[name] = info
    return out


#: result fields that measure the run (memory), not the analysis: shown, not compared
MEASUREMENTS = {"peak_rss_mib"}


#: lines a section of ``diff`` lists before it summarizes (``--all``: every line)
LIST_LIMIT = 30


def _capped(lines: list[str], everything: bool) -> list[str]:
    if everything or len(lines) <= LIST_LIMIT:
        return lines
    return lines[:LIST_LIMIT] + [f"  ... and {len(lines) - LIST_LIMIT} more (--all lists them)"]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _results(document: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The flattened results, with the run's own outdir in paths written as ``<outdir>``."""
    workdir, outdir = _base(document, run_dir)
    named = (document.get("config") or {}).get("outdir")
    out = {}
    for key, value in flatten(document.get("results") or {}).items():
        if isinstance(value, str):
            for prefix in filter(None, (outdir, named and os.path.normpath(named))):
                if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
                    value = "<outdir>" + value[len(prefix.rstrip("/")):]
                    break
        out[key] = value
    return out


def compare_files(a: dict[str, dict], b: dict[str, dict]) -> dict[str, list[str]]:
    """Files by name: same / differs (sha256) / only_a / only_b."""
    out: dict[str, list[str]] = {"same": [], "differs": [], "only_a": [], "only_b": []}
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out["only_a"].append(name)
        elif name not in a:
            out["only_b"].append(name)
        elif a[name].get("sha256") and a[name].get("sha256") == b[name].get("sha256"):
            out["same"].append(name)
        else:
            out["differs"].append(name)
    return out


def diff(a: dict[str, Any], a_dir: Path, b: dict[str, Any], b_dir: Path, show_same: bool = False
         ) -> tuple[str, list[str]]:
    """The text of ``daisy provenance diff`` and the names of the parts that differ."""
    lines, differ = [], []
    for tag, doc, where in (("A", a, a_dir), ("B", b, b_dir)):
        lines.append(f"{tag}: {where}  [{doc.get('status', 'completed')}, {doc.get('pipeline')}, created {doc.get('created')}]")
    if a.get("status", "completed") != b.get("status", "completed"):
        differ.append("status")
        lines.append(f"status: {a.get('status', 'completed')} -> {b.get('status', 'completed')}")
    if a.get("pipeline") != b.get("pipeline"):
        differ.append("pipeline")
        lines.append(f"pipeline: {a.get('pipeline')} -> {b.get('pipeline')}")

    ca, cb = flatten(a.get("config") or {}), flatten(b.get("config") or {})
    fields = [k for k in sorted(set(ca) | set(cb)) if k != "outdir" and ca.get(k, ...) != cb.get(k, ...)]
    lines.append(f"config: {'same' if not fields else _count(len(fields), 'field differs', 'fields differ')}")
    missing = "(not set)"
    for key in fields:
        lines.append(f"  {key}: {_fmt(ca[key]) if key in ca else missing} -> {_fmt(cb[key]) if key in cb else missing}")
    if ca.get("outdir") != cb.get("outdir"):
        lines.append(f"  (outdir: {ca.get('outdir')} -> {cb.get('outdir')}; where each run wrote, not compared)")
    if fields:
        differ.append("config")

    ia, ib = a.get("images") or {}, b.get("images") or {}
    changed = [n for n in sorted(set(ia) | set(ib)) if (ia.get(n) or {}).get("image_sha256") != (ib.get(n) or {}).get("image_sha256")]
    lines.append(f"images: {'same' if not changed else f'{len(changed)} differ'} "
                 f"({', '.join(sorted(set(ia) | set(ib))) or 'none'})")
    for name in changed:
        da, db = (ia.get(name) or {}).get("image_sha256"), (ib.get(name) or {}).get("image_sha256")
        lines.append(f"  {name}: {('sha256:' + da) if da else '(not used)'} -> {('sha256:' + db) if db else '(not used)'}")
    if changed:
        differ.append("images")

    code_same = a.get("code_sha256") == b.get("code_sha256")
    wa, wb = a.get("workflow_files") or {}, b.get("workflow_files") or {}
    wf = compare_files(wa, wb) if (wa and wb) else None
    wf_changed = wf and (wf["differs"] or wf["only_a"] or wf["only_b"])
    lines.append(f"code: step-code pin {'same' if code_same else 'differs'} "
                 f"({(a.get('code_sha256') or '-')[:12]}... -> {(b.get('code_sha256') or '-')[:12]}...); "
                 + ("workflow files not recorded by both" if wf is None else
                    "workflow files same" if not wf_changed else
                    f"workflow files: {len(wf['differs'])} differ, {len(wf['only_a'])} only in A, {len(wf['only_b'])} only in B"))
    if wf_changed:
        for kind, label in (("differs", "differs"), ("only_a", "only in A"), ("only_b", "only in B")):
            lines += [f"  {label:<9} {name}" for name in wf[kind]]
    if not code_same or wf_changed:
        differ.append("code")

    for key, relative in (("inputs", False), ("outputs", True)):
        files = compare_files(_by_location(a, a_dir, key, relative), _by_location(b, b_dir, key, relative))
        bad = files["differs"] or files["only_a"] or files["only_b"]
        lines.append(f"{key}: {len(files['same'])} same, {len(files['differs'])} differ, "
                     f"{len(files['only_a'])} only in A, {len(files['only_b'])} only in B")
        listed = [f"  {label:<9} {name}" for kind, label in (("differs", "differs"), ("only_a", "only in A"),
                                                              ("only_b", "only in B"),
                                                              *((("same", "same"),) if show_same else ()))
                  for name in files[kind]]
        lines += _capped(listed, show_same)
        if bad:
            differ.append(key)

    ra, rb = _results(a, a_dir), _results(b, b_dir)
    rdiff = [k for k in sorted(set(ra) | set(rb)) if ra.get(k, ...) != rb.get(k, ...)
             and k.rsplit(".", 1)[-1] not in MEASUREMENTS]
    measured = [k for k in sorted(set(ra) | set(rb)) if ra.get(k, ...) != rb.get(k, ...) and k not in rdiff]
    lines.append(f"results: {'same' if not rdiff else f'{len(rdiff)} differ'}"
                 + (f" ({len(measured)} measurements such as peak memory differ, not compared)" if measured else ""))
    lines += _capped([f"  {key}: {_fmt(ra[key]) if key in ra else missing} -> {_fmt(rb[key]) if key in rb else missing}"
                      for key in rdiff], show_same)
    if rdiff:
        differ.append("results")

    sa = {n: r.get("status", "completed") for n, r in (a.get("jobs") or {}).items()}
    sb = {n: r.get("status", "completed") for n, r in (b.get("jobs") or {}).items()}
    sa.update({n: "not run" for n in a.get("jobs_not_run", [])})
    sb.update({n: "not run" for n in b.get("jobs_not_run", [])})
    jdiff = [n for n in sorted(set(sa) | set(sb)) if sa.get(n) != sb.get(n)]
    lines.append(f"jobs: {'same' if not jdiff else f'{len(jdiff)} differ'} ({len(sa)} in A, {len(sb)} in B)")
    for name in jdiff:
        lines.append(f"  {name}: {sa.get(name, '(not planned)')} -> {sb.get(name, '(not planned)')}")
    if jdiff:
        differ.append("jobs")

    lines.append(f"=> the runs differ: {', '.join(differ)}" if differ else "=> the runs are the same")
    return "\n".join(lines) + "\n", differ
