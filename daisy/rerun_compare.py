"""``daisy rerun``'s comparison of the archived outputs with the new ones, and its report.

Outputs are first compared bit for bit, by sha256: the archived digest from the bag's manifest,
the new one from the rerun's provenance.json (nothing is hashed again). An HDF5 output that differs
is then compared dataset by dataset (virtual datasets read through their sources, with
``hdf5plugin`` registered). Equal values and attributes everywhere except the fields that differ
between any two runs by design (the dates, results and input paths of NXprocess groups,
``daisy_steps.nxprocess.VOLATILE``; paths the rerun moved, compared after moving them back)
make it "identical except run-dependent fields", which counts as reproduced; equal values
with other metadata differences "data identical, metadata differs"; otherwise the report gives,
per dataset, the largest absolute difference and the largest relative difference
|a - b| / max(|a|, |b|).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:  # the NXprocess groups result files carry, and their fields that change from run to run
    from daisy_steps.nxprocess import PROCESS_NAME, VOLATILE
except ImportError:  # a DAISY whose result files carry none
    PROCESS_NAME, VOLATILE = re.compile(r"^process_(\d+)_(.+)$"), ("date", "end_date", "results", "inputs")

IDENTICAL, RUN_FIELDS, METADATA, DIFFERS, MISSING, EXTRA = (
    "identical", "identical except run-dependent fields", "data identical, metadata differs", "differs",
    "missing", "extra")
#: what differs between two runs by design, not by their analysis: the NXprocess fields that
#: record when and where a run happened, and paths that the rerun itself moved
RUN_DEPENDENT = ("run-dependent process field", "relocated paths")
#: the verdicts of a reproduced output
REPRODUCED = (IDENTICAL, RUN_FIELDS)
BLOCK_BYTES = 64 << 20


def compare_outputs(old_dir: Path, archived: dict[str, str], new_outdir: Path, cwd: Path, code: int,
                    relocated: list[tuple[str, str]], progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """One row per output (relative to the outdir) of either run, with its verdict. ``relocated``
    (rerun path, recorded path) pairs: strings that differ only by them are metadata differences."""
    new: dict[str, str] = {}
    prov = new_outdir / "provenance.json"
    if code == 0 and prov.is_file():
        for key, info in json.loads(prov.read_text())["outputs"].items():
            path = Path(os.path.normpath(key if os.path.isabs(key) else cwd / key))
            new[path.relative_to(new_outdir).as_posix()] = info.get("sha256")
    rows = []
    for rel in sorted(set(archived) | set(new)):
        row: dict[str, Any] = {"output": rel, "archived_sha256": archived.get(rel), "new_sha256": new.get(rel)}
        if rel not in new:
            row.update(verdict=MISSING, detail="not produced by the rerun" if code == 0 else "the rerun failed")
        elif rel not in archived:
            row.update(verdict=EXTRA, detail="only in the rerun")
        elif archived[rel] == new[rel]:
            row.update(verdict=IDENTICAL)
        else:
            a, b = old_dir / rel, new_outdir / rel
            if is_hdf5(a) and is_hdf5(b):
                progress(f"daisy rerun:   {rel} differs: comparing its datasets")
                row.update(compare_hdf5(a, b, relocated))
            else:
                row.update(verdict=DIFFERS, detail="bytes differ")
        rows.append(row)
    return rows


def is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return path.is_file() and h5py.is_hdf5(str(path))
    except OSError:
        return False


# -- HDF5 -------------------------------------------------------------------------------------

def _objects(handle) -> dict[str, Any]:
    found = {"/": handle}
    handle.visititems(lambda name, obj: found.__setitem__("/" + name, obj))
    return found


def _same(x, y) -> bool:
    try:
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            return x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))
        return x.shape == y.shape and bool(np.array_equal(x, y))
    except (TypeError, ValueError):
        return bool(x == y)


def unrelocate(value, relocated: list[tuple[str, str]]):
    """A rerun's string value (or array of them) with its relocated paths put back as recorded."""
    if isinstance(value, bytes):
        return unrelocate(value.decode("utf-8", "surrogateescape"), relocated).encode("utf-8", "surrogateescape")
    if isinstance(value, str):
        for new, old in relocated:
            value = value.replace(new, old)
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO":
        return np.array([unrelocate(v, relocated) for v in value.ravel()], dtype=object).reshape(value.shape)
    return value


def volatile(name: str) -> bool:
    """A field of an NXprocess group that changes from run to run (dates, results, input paths:
    ``daisy_steps.nxprocess.VOLATILE``)."""
    parts = name.strip("/").split("/")
    for i, part in enumerate(parts):
        if PROCESS_NAME.match(part):
            rest = "/".join(parts[i + 1:])
            return any(rest == v or rest.startswith(v + "/") for v in VOLATILE)
    return False


def _attr_differences(name: str, a, b, relocated: list[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for key in sorted(set(a.attrs) | set(b.attrs)):
        where = f"{name}@{key}"
        if key not in b.attrs or key not in a.attrs:
            out.append({"object": where, "kind": f"only in the {'archived run' if key in a.attrs else 'rerun'}"})
            continue
        try:
            va, vb = a.attrs[key], b.attrs[key]
        except OSError as exc:           # an attribute of a type h5py cannot read
            out.append({"object": where, "kind": f"unreadable ({exc})"})
            continue
        if not _same(va, vb):
            kind = "relocated paths" if relocated and _same(va, unrelocate(vb, relocated)) else "attribute differs"
            out.append({"object": where, "kind": kind})
    return out


def compare_dataset(a, b, relocated: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """Values of two datasets, read in blocks along the first axis: equal, or max abs/rel difference."""
    if a.shape != b.shape:
        return {"equal": False, "detail": f"shape {a.shape} vs {b.shape}"}
    numeric = a.dtype.kind in "biuf" and b.dtype.kind in "biuf"
    result: dict[str, Any] = {"equal": True}
    if a.dtype != b.dtype:
        result["dtype"] = f"{a.dtype} vs {b.dtype}"
    if a.shape == () or a.size == 0 or not numeric:
        va, vb = a[()], b[()]
        if not _same(va, vb):
            if relocated and _same(va, unrelocate(vb, relocated)):
                result["relocated"] = True
            else:
                result.update(equal=False, detail="values differ")
        return result
    row = max(1, int(np.prod(a.shape[1:])) * 8)
    step = max(1, BLOCK_BYTES // row)
    max_abs = max_rel = 0.0
    for start in range(0, a.shape[0], step):
        x = np.asarray(a[start:start + step], dtype=np.float64)
        y = np.asarray(b[start:start + step], dtype=np.float64)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        if same.all():
            continue
        result["equal"] = False
        x, y = x[~same], y[~same]
        diff = np.abs(x - y)
        finite = np.isfinite(diff)
        if not finite.all():
            result["nonfinite"] = result.get("nonfinite", 0) + int((~finite).sum())
        if finite.any():
            max_abs = max(max_abs, float(diff[finite].max()))
            scale = np.maximum(np.abs(x), np.abs(y))[finite]
            max_rel = max(max_rel, float((diff[finite] / scale).max()))
    if not result["equal"]:
        result.update(max_abs=max_abs, max_rel=max_rel)
    return result


def compare_hdf5(path_a: Path, path_b: Path, relocated: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """The verdict of two HDF5 files whose bytes differ: dataset values, then metadata. Differences
    that are metadata: attributes; strings that differ only by the ``relocated`` (rerun, recorded)
    paths; the run-dependent fields of NXprocess groups (:func:`volatile`)."""
    import h5py
    import hdf5plugin  # noqa: F401  (bitshuffle/LZ4 outputs)

    relocated = list(relocated)
    datasets: dict[str, Any] = {}
    metadata: list[dict[str, str]] = []
    with h5py.File(path_a, "r") as fa, h5py.File(path_b, "r") as fb:
        oa, ob = _objects(fa), _objects(fb)
        for name in sorted(set(oa) | set(ob)):
            if name not in oa or name not in ob:
                parent = name.rsplit("/", 1)[0] or "/"
                if parent in oa and parent in ob:    # name only the top-most object missing on one side
                    datasets[name] = {"equal": False, "detail": f"only in the {'archived run' if name in oa else 'rerun'}"}
                continue
            a, b = oa[name], ob[name]
            metadata += _attr_differences(name, a, b, relocated)
            if isinstance(a, h5py.Dataset) != isinstance(b, h5py.Dataset):
                datasets[name] = {"equal": False, "detail": "a dataset in one run, a group in the other"}
            elif isinstance(a, h5py.Dataset):
                try:
                    result = compare_dataset(a, b, relocated)
                except OSError as exc:   # e.g. a virtual dataset whose sources are missing
                    result = {"equal": False, "detail": f"cannot read: {exc}"}
                if result.pop("relocated", False):
                    metadata.append({"object": name, "kind": "relocated paths"})
                elif not result["equal"] and volatile(name):
                    metadata.append({"object": name, "kind": "run-dependent process field"})
                    result = {"equal": True}
                datasets[name] = result
    differing = {name: d for name, d in datasets.items() if not d["equal"]}
    if not differing:
        kinds: dict[str, list[str]] = {}
        for item in metadata:
            kinds.setdefault(item["kind"], []).append(item["object"])
        detail = "; ".join(f"{kind}: {', '.join(objs[:4])}{' ...' if len(objs) > 4 else ''}"
                           for kind, objs in kinds.items()) or "the HDF5 bytes differ, every dataset and attribute is equal"
        run_fields = bool(metadata) and all(item["kind"] in RUN_DEPENDENT for item in metadata)
        return {"verdict": RUN_FIELDS if run_fields else METADATA, "detail": detail, "metadata": metadata}
    numbers = [d for d in differing.values() if "max_abs" in d]
    summary = {}
    if numbers:
        summary = {"max_abs": max(d["max_abs"] for d in numbers), "max_rel": max(d["max_rel"] for d in numbers)}
    lines = [f"{name}: " + (f"max abs {d['max_abs']:.3g}, max rel {d['max_rel']:.3g}" if "max_abs" in d
                            else d.get("detail", "differs")) for name, d in differing.items()]
    return {"verdict": DIFFERS, **summary, "detail": "; ".join(lines[:6]) + (" ..." if len(lines) > 6 else ""),
            "datasets": differing, "metadata": metadata}


# -- the report -------------------------------------------------------------------------------

def label(row: dict[str, Any]) -> str:
    if row["verdict"] == DIFFERS and "max_abs" in row:
        return f"differs (max abs {row['max_abs']:.3g}, rel {row['max_rel']:.3g})"
    return row["verdict"]


def write_report(workdir: Path, report: dict[str, Any]) -> str:
    """``rerun-report.json`` and ``rerun-report.txt`` in ``workdir``; sets ``report["verdict"]``."""
    from daisy_steps.fileio import write_json_atomic, write_text_atomic

    rows = report["outputs"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    failed = report["snakemake_exit"] != 0
    identical = not failed and rows and all(r["verdict"] in REPRODUCED for r in rows)
    report["verdict"] = "identical" if identical else "pipeline failed" if failed else "different"
    report["counts"] = counts
    t = report["timings"]
    lines = [
        f"daisy rerun of {report['archive']}",
        f"  {report['pipeline']} run of {report.get('run_created')}, archived with DAISY {report.get('archived_with')}",
        f"  software: {'the current DAISY and images' if report['software'] == 'current' else 'the archived workflow and images'}"
        f" ({report['workflow']}){', no network' if report['offline'] else ''}",
        *[f"  image {name} changed since the run: sha256:{info['archived_sha256'][:12]}... -> "
          f"sha256:{str(info['current_sha256'])[:12]}..." for name, info in report["images"].items()
          if info.get("current_sha256", info.get("archived_sha256")) != info.get("archived_sha256")],
        f"  pipeline: snakemake exit {report['snakemake_exit']} in {t.get('pipeline_s', 0):.1f} s"
        + (f" (log: {report['workdir']}/rerun-snakemake.log)" if failed else ""),
        f"  outputs: {report['outdir']}; {len(rows)} compared: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())),
        "",
    ]
    width = max([len(label(r)) for r in rows] + [9])
    for row in rows:
        lines.append(f"  {label(row):<{width}}  {row['output']}")
        if row["verdict"] != IDENTICAL and row.get("detail"):
            lines.append(f"  {'':<{width}}    {row['detail']}")
    exact = counts.get(IDENTICAL, 0)
    verdict = ((f"IDENTICAL: every output of the archived run was reproduced, {exact} bit for bit"
                + (f", {len(rows) - exact} identical except run-dependent fields" if exact < len(rows) else ""))
               if identical else
               "PIPELINE FAILED: see the log above" if failed else
               f"DIFFERENT: {sum(r['verdict'] not in REPRODUCED for r in rows)} of {len(rows)} outputs not reproduced")
    lines += ["", f"verdict: {verdict}",
              f"report: {report['workdir']}/rerun-report.json, {report['workdir']}/rerun-report.txt", ""]
    text = "\n".join(lines)
    write_json_atomic(Path(workdir) / "rerun-report.json", report)
    write_text_atomic(Path(workdir) / "rerun-report.txt", text)
    return text
