"""Provenance that travels with the data: NeXus ``NXprocess`` groups in a result file.

A gather step (``ct.gather``, ``xrd.gather``) gets the records of the jobs that made its inputs
as input slots ``record_<job>`` (the plan passes them). :func:`processes` turns them into one
process per distinct step of the chain, in chain order: jobs of one stage (``ct_slab_0000``,
``ct_slab_0001``, ...) that ran the same steps in the same image with the same code are merged,
their common parameters written once and what differs per job (e.g. ``row_start``/``row_stop``)
in a small table. :func:`write_processes` writes them, plus the gather step's own, under the
result file's NXentry::

    /entry/process_01_ct.load           NXprocess
      program          "ct.load"               the step
      version          "1.0.0"                 the step's version
      sequence_index   1                       its place in the chain (1-based)
      date             ISO 8601 start (the earliest of its jobs)
      end_date         ISO 8601 end (the latest of its jobs; absent for the gather's own)
      job              the job's name; for merged jobs the stage (``ct_slab``)
      image, image_version, image_sha256       the Apptainer image it ran in, and its digest
      code_sha256      the step-code pin (daisy_steps + schemas)
      parameters       NXparameters: one field per parameter common to all its jobs (scalars
                       as numbers/strings; lists and objects as JSON, attribute encoding=json;
                       null values only in parameters_json)
      parameters_json  NXnote, type application/json: the common parameters, exactly
      inputs           NXnote (JSON): the input files common to all its jobs, by slot
      results          NXnote (JSON): what the step reported (for merged jobs that differ: by job)
      jobs             NXcollection (merged jobs only), one row per job: job, started, ended and
                       each parameter that differs between them (row_start, row_stop, ...)

Dates, results and input paths change from run to run; the result arrays do not.
:func:`content_digest` hashes a file's datasets and attributes without those fields (or without
the process groups at all), for tests and comparisons that check a rerun bit for bit.

Only json, re, hashlib, numpy and h5py: this runs in every image.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import StepError
from .h5 import nx_group

#: input slots of a gather step that hold the records of the jobs that made its inputs
RECORD_SLOT_PREFIX = "record_"
#: names of the process groups this module writes: process_01_ct.load, ...
PROCESS_NAME = re.compile(r"^process_(\d+)_(.+)$")
#: fields of a process group that change from run to run (times, host-dependent figures, paths)
VOLATILE = ("date", "end_date", "results", "inputs", "jobs/started", "jobs/ended")
_INDEX_SUFFIX = re.compile(r"_\d{4,}(#\d+)?$|#\d+$")


def record_slots(ctx) -> list[str]:
    """The input slots of ``ctx`` that hold job records, in the job file's (the plan's) order."""
    return [s for s in ctx.input_slots() if s.startswith(RECORD_SLOT_PREFIX)]


def read_records(ctx) -> list[dict[str, Any]]:
    """The job records given to a step as ``record_*`` input slots, checked enough to use."""
    records = []
    for slot in record_slots(ctx):
        own = ctx.own_record(slot) if hasattr(ctx, "own_record") else None
        if own is not None:          # the job that made the inputs is this one: its steps so far
            records.append(own)
            continue
        path = ctx.input(slot).path
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StepError(f"step {ctx.step}: input '{slot}' ({path}) is not a readable job record ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("steps"), list):
            raise StepError(f"step {ctx.step}: input '{slot}' ({path}) is not a job record (no 'steps' list)")
        if record.get("status", "completed") != "completed":
            raise StepError(f"step {ctx.step}: input '{slot}' ({path}) is the record of a job that did not "
                            f"complete (status {record.get('status')!r}); rerun that job first")
        records.append(record)
    return records


@dataclass
class Process:
    """One NXprocess: a step as run by one job or by several jobs of one stage."""

    step: str
    version: str
    job: str
    image: dict[str, Any] | None
    code_sha256: str | None
    params: dict[str, Any]
    date: str | None = None
    end_date: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    results: Any = None
    #: ``results`` is {job: results} (merged jobs that reported different results)
    results_by_job: bool = False
    #: merged jobs: one row per job (job, started, ended, and the parameters that differ)
    table: dict[str, list] | None = None


def _stage(job: str) -> str:
    return _INDEX_SUFFIX.sub("", job)


def _same(values: list) -> bool:
    first = json.dumps(values[0], sort_keys=True)
    return all(json.dumps(v, sort_keys=True) == first for v in values[1:])


def processes(records: list[dict[str, Any]]) -> list[Process]:
    """One :class:`Process` per step of the chain that made the data, in chain order.

    Records of one stage (job name without its ``_NNNN`` index) that ran in the same image with
    the same code are merged, and so are the passes of a job (:func:`_passes`): a step (its
    name, version and which occurrence of it in the chain) is one process over every job or pass
    that ran it, also when some ran a step the others did not (the one pass that writes a
    preview); the stages keep the order of ``records`` (the plan's: centre, then slabs)."""
    groups: dict[tuple, dict[tuple, list[tuple[dict, dict]]]] = {}
    for record in (part for whole in records for part in _passes(whole)):
        image = record.get("image") if isinstance(record.get("image"), dict) else None
        key = (_stage(str(record.get("job", ""))), json.dumps(image, sort_keys=True), record.get("code_sha256"))
        steps = groups.setdefault(key, {})
        seen: dict[tuple, int] = {}
        previous = None
        for entry in record["steps"]:
            name = (entry.get("step"), entry.get("version"))
            seen[name] = seen.get(name, 0) + 1
            step = (*name, seen[name])
            if step not in steps:                  # a step new to the stage: after the one before it
                order = list(steps)
                at = order.index(previous) + 1 if previous in steps else 0
                moved = {k: steps.pop(k) for k in order[at:]}
                steps[step] = []
                steps.update(moved)
            steps[step].append((record, entry))
            previous = step
    out = []
    for (stage, image_json, code), steps in groups.items():
        image = json.loads(image_json)
        for (step, version, _), pairs in steps.items():
            members, entries = [m for m, _ in pairs], [e for _, e in pairs]
            out.append(_merge(stage, step, version, image, code, members, entries))
    return out


def _passes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's record cut into its passes over the chain (a slab job reconstructing several
    slabs in turn runs the chain once per slab; each pass starts with the job's first step):
    passes merge like jobs do, so a step is one process however slabs were grouped into jobs."""
    steps = record.get("steps") or []
    starts = [i for i, s in enumerate(steps) if steps and s.get("step") == steps[0].get("step")]
    if len(starts) < 2:
        return [record]
    job = str(record.get("job", ""))
    return [{**record, "job": f"{job}#{n}", "steps": steps[a:b]}
            for n, (a, b) in enumerate(zip(starts, [*starts[1:], len(steps)]), start=1)]


def _merge(stage, step, version, image, code, members, entries) -> Process:
    params = [e.get("params") or {} for e in entries]
    keys = list(dict.fromkeys(k for p in params for k in p))
    common = {k: params[0][k] for k in keys if all(k in p for p in params) and _same([p[k] for p in params])}
    started = [e.get("started") or m.get("started") for e, m in zip(entries, members)]
    ended = [e.get("ended") or m.get("ended") for e, m in zip(entries, members)]
    inputs = [e.get("inputs") or {} for e in entries]
    slots = list(dict.fromkeys(k for i in inputs for k in i))
    common_inputs = {k: inputs[0][k] for k in slots if all(k in i for i in inputs) and _same([i[k] for i in inputs])}
    results = [e.get("results") or {} for e in entries]
    proc = Process(step=step, version=str(version), job=str(members[0].get("job", stage)), image=image,
                   code_sha256=code, params=common, inputs=common_inputs,
                   date=min((s for s in started if s), default=None),
                   end_date=max((e for e in ended if e), default=None))
    if len(members) == 1:
        proc.results = results[0] or None
        return proc
    proc.job = stage
    if _same(results):
        proc.results = results[0] or None
    else:
        proc.results, proc.results_by_job = {m.get("job"): r for m, r in zip(members, results)}, True
    proc.table = {"job": [str(m.get("job")) for m in members], "started": started, "ended": ended}
    for k in keys:
        if k not in common:
            proc.table[k] = [p.get(k) for p in params]
    return proc


def own_process(step, started: str | None) -> Process:
    """The process of the (gather) step that writes the file, from its job context."""
    ctx = step.ctx
    return Process(step=step.name, version=str(step.version), job=getattr(ctx, "job_name", None) or "",
                   image=getattr(ctx, "image", None), code_sha256=getattr(ctx, "code_sha256", None),
                   params=dict(step.params), date=started)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def _text(group: h5py.Group, name: str, value: str) -> h5py.Dataset:
    return group.create_dataset(name, data=str(value), dtype=h5py.string_dtype("utf-8"))


def _note(group: h5py.Group, name: str, value: Any, description: str) -> None:
    note = nx_group(group, name, "NXnote")
    _text(note, "type", "application/json")
    _text(note, "description", description)
    _text(note, "data", json.dumps(value, sort_keys=True))


def _scalar(group: h5py.Group, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        _text(group, name, value)
    elif isinstance(value, (bool, int, float)):
        group.create_dataset(name, data=value)
    else:
        _text(group, name, json.dumps(value, sort_keys=True)).attrs["encoding"] = "json"


def _column(group: h5py.Group, name: str, values: list) -> None:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        group.create_dataset(name, data=np.asarray(values, dtype=np.int64))
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        group.create_dataset(name, data=np.asarray(values, dtype=np.float64))
    else:
        text = [v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values]
        group.create_dataset(name, data=np.array(text, dtype=object), dtype=h5py.string_dtype("utf-8"))


def write_process(entry: h5py.Group, index: int, proc: Process, width: int = 2) -> h5py.Group:
    """Write ``proc`` as ``entry/process_<index>_<step>`` (NXprocess)."""
    group = nx_group(entry, f"process_{index:0{width}d}_{proc.step}", "NXprocess")
    _text(group, "program", proc.step)
    _text(group, "version", proc.version)
    group.create_dataset("sequence_index", data=np.int64(index))
    if proc.date:
        _text(group, "date", proc.date)
    if proc.end_date:
        _text(group, "end_date", proc.end_date)
    if proc.job:
        _text(group, "job", proc.job)
    image = proc.image or {}
    for name, key in (("image", "name"), ("image_version", "version"), ("image_sha256", "sha256")):
        if image.get(key):
            _text(group, name, image[key])
    if proc.code_sha256:
        _text(group, "code_sha256", proc.code_sha256)
    params = nx_group(group, "parameters", "NXparameters")
    for key, value in proc.params.items():
        _scalar(params, key, value)
    _note(group, "parameters_json", proc.params, f"parameters of {proc.step} (after defaults)")
    if proc.inputs:
        _note(group, "inputs", proc.inputs, f"input files of {proc.step}, by slot")
    if proc.results:
        _note(group, "results", proc.results, f"what {proc.step} reported" +
              (", by job" if proc.results_by_job else ""))
    if proc.table:
        table = nx_group(group, "jobs", "NXcollection")
        table.attrs["description"] = "one row per job: its times and the parameters that differ between jobs"
        for key, values in proc.table.items():
            _column(table, key, values)
    return group


def write_processes(entry: h5py.Group, made_by: list[Process], own: Process | None = None) -> list[str]:
    """Write the processes that made the data, then ``own`` (the writing step's), numbered in
    chain order; returns the group names."""
    chain = [*made_by, *([own] if own is not None else [])]
    width = max(2, len(str(len(chain))))
    return [write_process(entry, i, proc, width).name for i, proc in enumerate(chain, 1)]


def write_provenance(entry: h5py.Group, step, started: str | None) -> list[str]:
    """What a gather step calls: the records of its ``record_*`` inputs and its own job."""
    return write_processes(entry, processes(read_records(step.ctx)), own_process(step, started))


# ---------------------------------------------------------------------------------------------
# reading and comparing
# ---------------------------------------------------------------------------------------------

def process_groups(handle: h5py.File, entry: str = "/entry") -> list[h5py.Group]:
    """The NXprocess groups this module wrote under ``entry``, by sequence_index."""
    groups = [g for name, g in handle[entry].items()
              if PROCESS_NAME.match(name) and isinstance(g, h5py.Group) and _attr(g, "NX_class") == "NXprocess"]
    return sorted(groups, key=lambda g: int(g["sequence_index"][()]))


def _attr(obj, name: str):
    value = obj.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else value


def _in_process(name: str) -> tuple[str, str] | None:
    """(process group, path inside it) when ``name`` lies under a process group."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        if PROCESS_NAME.match(part):
            return "/".join(parts[:i + 1]), "/".join(parts[i + 1:])
    return None


def content_digest(path, process: str = "stable") -> str:
    """sha256 over every dataset (name, dtype, shape, values; virtual datasets read through
    their sources) and every attribute of an HDF5 file, in name order. ``process``: "stable"
    leaves out the fields of the NXprocess groups that change from run to run (:data:`VOLATILE`),
    "skip" leaves out the process groups altogether (e.g. to compare two code versions)."""
    digest = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else repr(part).encode()
            digest.update(len(data).to_bytes(8, "little") + data)

    def attrs(obj) -> list:
        return [(k, _bytes(obj.attrs[k])) for k in sorted(obj.attrs)]

    with h5py.File(path, "r") as handle:
        names: list[str] = []
        handle.visit(names.append)
        add("/", attrs(handle))
        for name in sorted(names):
            inside = _in_process(name)
            if inside and (process == "skip" or inside[1] in VOLATILE
                           or any(inside[1].startswith(v + "/") for v in VOLATILE)):
                continue
            obj = handle[name]
            if isinstance(obj, h5py.Dataset):
                raw = _bytes(obj[()])
                add(name, str(obj.dtype), obj.shape, raw, attrs(obj))
            else:
                add(name, "group", attrs(obj))
    return digest.hexdigest()


def _bytes(value) -> bytes:
    """A value read from HDF5 as bytes, the same for equal values (object arrays by content)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    array = np.asarray(value)
    if array.dtype.kind == "O":
        return repr([v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]).encode()
    return str(array.dtype).encode() + array.tobytes()
