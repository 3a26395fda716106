"""The CT pipeline's plan: a centre job, reconstruction jobs of one or more sinogram slabs, a gather job.

    ct_center          (tomopy)  load rows around the centre row -> normalize -> angles -> minus-log
                                 -> stripe -> find centre -> sinogram preview
    ct_slab_NNNN x N   (tomopy)  per slab of the job, one after another (slabs.per_job):
                                 load slab rows -> normalize -> angles -> minus-log -> stripe
                                 -> reconstruct with the centre found, writing the job's file as it goes
                                 (+ save.stages: the projections after normalize / minus-log / stripe)
    ct_gather          (base)    HDF5 virtual dataset over the slabs (no copy) + previews (+ TIFF)
                                 (+ one stage file per save.stages entry, gathered the same way);
                                 the records of the jobs above become the files' NXprocess groups
    ct_volume          (tomopy)  instead of ct_slab_0000 and ct_gather when there is one slab job: its
                                 chain, then the gather, in one process (no second job's start; the
                                 gather reads the slab file before the job commits it)

input.stage decides where the chain starts: raw (ct.load, normalize, minus-log), normalized
(ct.load_processed, minus-log only) or attenuation (ct.load_processed, neither); the stage is
checked against the file when the run is planned (daisy_steps.ct.layouts.resolve_stage).

Each job is one process in one image; arrays pass in memory between its steps.
"""

from __future__ import annotations

import math
import os

from daisy_steps.core import usable_cores
from daisy_steps.ct.chunk_rows import ChunkRows
from daisy_steps.ct.layouts import READ_BLOCK_BYTES, resolve_paths, resolve_stage
from daisy_steps.ct.recon import ANALYTIC, check_params
from daisy_steps.ct.slabs import plan_slabs
from daisy_steps.errors import StepError
from daisy_steps.h5 import get_dataset, open_file

from ..plan import Output, Run, Stage

LOAD_KEYS = ("layout", "entry", "data_path", "flat_path", "dark_path", "image_key_path", "angles_path", "angle_units")


def raw_shape(cfg: dict) -> tuple[int, int, int]:
    """(frames, detector rows, detector columns) of the projection dataset (metadata only)."""
    return inspect_input(cfg)[0]


def inspect_input(cfg: dict) -> tuple[tuple[int, int, int], str, dict]:
    """Shape (frames, rows, columns), stage and what the file says of its origin: reads the
    metadata and, for processed stages, one detector row (to refuse values that contradict the
    stage asked for)."""
    params = {k: cfg["input"][k] for k in LOAD_KEYS}
    file = cfg["input"]["file"]
    with open_file(file) as handle:
        label = str(file)
        paths = resolve_paths(handle, params, check=False)
        stage, how = resolve_stage(handle, paths, cfg["input"].get("stage", "raw"), label)
        paths = resolve_paths(handle, params, stage=stage)
        dset = get_dataset(handle, paths.data)
        if dset.ndim != 3:
            raise StepError(f"{file}: dataset {paths.data} has shape {dset.shape}, "
                            f"expected 3 axes (frames, rows, columns)")
        shape = tuple(int(n) for n in dset.shape)
        origin = {"stage": stage, "stage_from": how, "layout": paths.layout,
                  # a slab job reads only its rows of each frame (unfiltered frame chunks), not whole frames
                  "band_reads": paths.layout != "stage" and ChunkRows.readable(dset)}
        if paths.layout == "stage":
            shape = (shape[1], shape[0], shape[2])   # sinogram order on disk
            origin["stripe_removed"] = str(dset.attrs.get("stripe_removed", "none"))
            if "provenance" in dset.attrs:
                origin["provenance"] = str(dset.attrs["provenance"])
        return shape, stage, origin


def source_run(origin: dict, file: str) -> dict | None:
    """The provenance of the run that wrote a stage file (path; sha256 when it exists)."""
    from pathlib import Path

    from daisy_steps.fileio import sha256_file

    if "provenance" not in origin:
        return None
    path = Path(origin["provenance"])
    if not path.is_absolute():
        path = (Path(file).parent / path)
    entry: dict = {"provenance": str(path), "file": str(file)}
    if path.is_file():
        entry["sha256"] = sha256_file(path)
    return entry


def job_memory_mb(shape: tuple[int, int, int], rows: int) -> int:
    """Peak memory of a job holding ``rows`` sinogram rows (bench/peak_memory.py): the interpreter
    and tomopy (~200 MiB), then the larger of two moments. Moving the float32 projections into
    sinogram order: the projections, plus one 2 MiB huge page per sinogram row that the first
    angle block touches (numpy asks for transparent huge pages). Reconstructing: the sinograms
    still held and the volume filling, which peaks at the volume when a volume row outweighs a
    sinogram row. Raw rows are read 64 MiB at a time; flats and darks are a few frames."""
    frames, _, cols = shape
    mib = 2**20
    projections = 4 * frames * rows * cols / mib
    volume = 4 * rows * cols * cols / mib
    moving = projections + 2 * rows
    reconstructing = max(projections, volume + 4 * 32 * frames * cols / mib)
    return int(200 + 64 + max(moving, reconstructing))


#: tomopy.find_center_vo searches in child processes (tomopy's distribute_jobs, one per thread)
#: whose own arrays come on top of the job's: without this a Slurm centre job of a 1500 x 1024
#: x 1024 scan (719 MB asked) was killed on its first attempt and passed on the retry (1182 MB)
CENTER_WORKER_MB = 256


def memory_budget_mb(threads: int) -> float:
    """Default slab budget: 40 % of this machine's available memory, shared by the jobs that can
    run at once. Slab sizes never change the result (chunked runs are bit-identical), so they
    may follow the machine."""
    try:
        avail = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable:")) / 1024
    except (OSError, StopIteration):
        avail = 4096
    parallel = max(1, (os.cpu_count() or 1) // max(1, threads))
    return max(512.0, 0.4 * avail / parallel)


def slab_bounds(cfg: dict, shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    frames, rows, cols = shape
    slabs = cfg["slabs"]
    if slabs["height"]:
        return plan_slabs(0, rows, height=slabs["height"])
    if slabs["count"]:
        return plan_slabs(0, rows, count=slabs["count"])
    budget = slabs["max_memory_mb"] or memory_budget_mb(cfg["threads"])
    per_row = (job_memory_mb(shape, 1000) - 200) / 1000
    height = max(2, int((budget - 200) // max(per_row, 1e-9)))
    # as few slabs as the budget allows, of equal height: jobs take equally long and memory
    return plan_slabs(0, rows, count=math.ceil(rows / height))


#: projection pixels (angles x rows x columns) one thread takes through a slab's chain per second
#: with gridrec (load, normalize, minus-log, stripe, reconstruct, write: about 39 s for 1500 x 1024
#: x 1024 on 2 threads, docs/benchmarks.md); other algorithms cost about columns / 16 times more
#: per iteration
CHAIN_PIXELS_PER_THREAD_SECOND = 2.0e7
#: slabs.per_job null: a job gets at least this much estimated work, so that its start (about 1 s
#: on a workstation, a few seconds through Slurm: docs/slurm.md) stays a small part of it
JOB_WORK_SECONDS = 30.0


def slab_seconds(cfg: dict, shape: tuple[int, int, int], rows: int) -> float:
    """A rough estimate of one slab's time through its job's chain (only for grouping slabs)."""
    frames, _, cols = shape
    recon = cfg["recon"]
    factor = 1.0 if recon.get("algorithm", "gridrec") == "gridrec" else \
        cols / 16 * (1 if recon.get("algorithm") in ANALYTIC else max(1, recon.get("num_iter") or 1))
    return frames * rows * cols * factor / (CHAIN_PIXELS_PER_THREAD_SECOND * max(1, cfg["threads"]))


def job_groups(cfg: dict, shape: tuple[int, int, int], bounds: list[tuple[int, int]]) -> list[list[int]]:
    """The slabs of each slab job (consecutive indices; as equal in number as possible, the larger
    groups first). A job reconstructs its slabs one after another in one process, so its memory
    is one slab's; ``slabs.per_job`` null groups slabs until a job holds JOB_WORK_SECONDS of
    estimated work, keeping at least as many jobs as this machine runs at once."""
    count = len(bounds)
    per_job = cfg["slabs"]["per_job"]
    if per_job is None:
        longest = max(slab_seconds(cfg, shape, r1 - r0) for r0, r1 in bounds)
        per_job = max(1, int(JOB_WORK_SECONDS // max(longest, 1e-9)))
        parallel = max(1, usable_cores() // max(1, cfg["threads"]))
        per_job = min(per_job, math.ceil(count / parallel))
    # the slab indices split as the rows are, as evenly as possible, the larger groups first
    return [list(range(a, b)) for a, b in plan_slabs(0, count, count=math.ceil(count / per_job), align=1)]


def _load(cfg: dict, start: int, stop: int, stage: str = "raw") -> dict:
    params = {k: cfg["input"][k] for k in LOAD_KEYS}
    params.update(row_start=start, row_stop=stop)
    if stage == "raw":
        return {"step": "ct.load", "inputs": {"raw": cfg["input"]["file"]}, "params": params}
    return {"step": "ct.load_processed", "inputs": {"raw": cfg["input"]["file"]}, "params": {"stage": stage, **params}}


PREPARE = ("ct.normalize", "ct.angles", "ct.minus_log", "ct.stripe")
#: the slab chain with a ct.save_stage after each step whose result save.stages may keep
SLAB_PREPARE = ("ct.normalize", "ct.angles", "ct.save_stage", "ct.minus_log", "ct.save_stage", "ct.stripe",
                "ct.save_stage")
#: which stages a run starting at input.stage computes (and so can save)
COMPUTED = {"raw": ("normalized", "attenuation", "destriped"), "normalized": ("attenuation", "destriped"),
            "attenuation": ("destriped",)}


def _prepare(cfg: dict, stage: str = "raw", save: dict | None = None) -> list[dict]:
    """The preparation steps for input.stage ``stage``; ``save``: stage name -> ct.save_stage
    entry, put right after the step whose result it keeps."""
    save = save or {}
    steps = []
    if stage == "raw":
        steps.append({"step": "ct.normalize", "params": cfg["normalize"]})
    steps.append({"step": "ct.angles", "params": cfg["angles"]})
    if "normalized" in save:
        steps.append(save["normalized"])
    if stage in ("raw", "normalized"):
        steps.append({"step": "ct.minus_log", "params": {}})
    if "attenuation" in save:
        steps.append(save["attenuation"])
    steps.append({"step": "ct.stripe", "params": cfg["stripe"]})
    if "destriped" in save:
        steps.append(save["destriped"])
    return steps


def check_stages(cfg: dict, stage: str, origin: dict) -> None:
    """Refuse, before any job, stage settings that cannot hold."""
    wanted = cfg["save"]["stages"]
    bad = [s for s in wanted if s not in COMPUTED[stage]]
    if bad:
        raise StepError(f"config field save.stages: {', '.join(bad)} cannot be saved by a run starting at "
                        f"input.stage {stage} (it computes {', '.join(COMPUTED[stage])})")
    removed = origin.get("stripe_removed", "none")
    if removed != "none" and cfg["stripe"]["method"] != "none":
        raise StepError(f"{cfg['input']['file']}: stripes were already removed ({removed}, attribute stripe_removed); "
                        f"set stripe.method none to start from it")


def center_rows(cfg: dict, rows: int) -> tuple[int, int]:
    """Detector rows the centre job loads: n_rows around 'row' (default: the middle row)."""
    row = rows // 2 if cfg["center"]["row"] is None else cfg["center"]["row"]
    n = cfg["center"]["n_rows"]
    start = row - n // 2
    if start < 0 or start + n > rows:
        raise StepError(f"config field 'center.row': rows {start}..{start + n - 1} around row {row} "
                        f"are outside the detector's {rows} rows")
    return start, start + n


STAGES = (
    Stage("ct", "ct_rows", "tomopy", ("ct.split_rows",),
          doc="the raw frames read once -> each slab's (and the centre's) rows in a file of its own"),
    Stage("ct", "ct_center", "tomopy", ("ct.load", "ct.load_processed", *PREPARE, "ct.find_center"),
          doc="rows around the centre row -> rotation centre"),
    Stage("ct", "ct_slab", "tomopy", ("ct.load", "ct.load_processed", *SLAB_PREPARE, "ct.preview_sinogram",
                                      "ct.recon", "ct.save_slab"),
          indexed=True, repeats=True,
          doc="sinogram slabs, one after another -> one file of the volume's rows (+ the stages save.stages keeps)"),
    Stage("ct", "ct_gather", "base", ("ct.gather",) * 4,
          doc="slabs -> virtual volume, previews, TIFF (+ one virtual stage file per save.stages entry)"),
)
ROWS, CENTER, SLAB, GATHER = STAGES
VOLUME = Stage("ct", "ct_volume", "tomopy", (*SLAB.steps, *GATHER.steps), repeats=True,
               doc="one slab job's chain, then the gather, in one process (when the slabs fit one job)")
STAGES = (*STAGES, VOLUME)

#: the slots of a ct_slab job's outputs among the ct_volume job's (where the gather's take the plain names)
VOLUME_SLAB_SLOTS = {"slab": "slab", "preview": "preview_sinogram"}


def volume_slot(slot: str) -> str:
    """The ct_volume slot of ct_slab output ``slot`` (``stage_<name>`` becomes ``slab_stage_<name>``)."""
    return VOLUME_SLAB_SLOTS.get(slot, f"slab_{slot}")


def add_stages(run: Run, parts: dict[str, tuple[int, int]] | None = None, one_job: bool = False) -> list[str]:
    """The run's stages and the outputs this config asks for (``parts``: the row files of
    ct_rows, when the raw frames are read once; ``one_job``: one slab job, run with the gather
    as ct_volume, whose outputs are the slab job's (index 0000) and the gather's). Returns the
    gather's output slots."""
    save = run.config["save"]
    run.add_stage(ROWS, {slot: Output(f"ct/rows/{slot}.h5", temp=True) for slot in parts or {}})
    run.add_stage(CENTER, {"center": "ct/center.json"})
    slab = {"slab": "ct/slabs/slab_{index}.h5",
            **({"preview": "ct/previews/sinogram_slab_{index}.png"} if save["previews"] else {}),
            **{f"stage_{name}": f"ct/stages/{name}/slab_{{index}}.h5" for name in save["stages"]}}
    gather = {"volume": "ct/volume.h5"}
    if save["previews"]:
        gather.update({f"preview_{axes}": f"ct/previews/{axes}.png" for axes in ("xy", "xz", "yz")})
    if save["tiff"]:
        gather["tiff"] = "ct/volume.tif"
    gather.update({f"stage_{name}": f"ct/stages/{name}.h5" for name in save["stages"]})
    if one_job:
        run.add_stage(SLAB, {})
        run.add_stage(GATHER, {})
        run.add_stage(VOLUME, {**{volume_slot(s): p.format(index="0000") for s, p in slab.items()}, **gather})
    else:
        run.add_stage(SLAB, slab)
        run.add_stage(GATHER, gather)
        run.add_stage(VOLUME, {})
    return list(gather)


#: slabs.read_once auto: the raw file is split for its readers when reading it whole once per
#: reader would read at least this much more than twice the file (a job costs about 1 s on a
#: workstation and several through Slurm; re-reading 1 GiB from the page cache about 0.3 s)
READ_ONCE_MIN_EXTRA_BYTES = 1 << 30


def read_once(cfg: dict, layout: str, stage: str, readers: int, raw_bytes: int, band_reads: bool = False) -> bool:
    """Whether a ct_rows job reads the raw frames once for all jobs (``slabs.read_once``; auto:
    when ``readers`` (the slabs and the centre job), each reading every frame, would read more
    than twice the file, and at least READ_ONCE_MIN_EXTRA_BYTES more; never when each reader
    reads only its rows of each frame, ``band_reads``: the readers read the scan once together)."""
    mode = cfg["slabs"]["read_once"]
    if layout == "stage" or stage != "raw" or mode == "never":
        return False               # stage files are in sinogram order: a slab reads only its rows
    if mode == "always":
        return readers > 1
    return not band_reads and readers > 2 and (readers - 2) * raw_bytes >= READ_ONCE_MIN_EXTRA_BYTES


def plan(run: Run) -> None:
    cfg = run.config
    shape, stage, origin = inspect_input(cfg)
    check_stages(cfg, stage, origin)
    check_params(cfg["recon"], shape[0])
    cfg["input"]["source_run"] = source_run(origin, cfg["input"]["file"])
    run.inputs = [cfg["input"]["file"]]
    threads = cfg["threads"]
    save = cfg["save"]
    manual = cfg["center"]["method"] == "manual"
    if manual and cfg["center"]["center"] is None:
        raise StepError("config field 'center.center' is required when 'center.method' is manual")
    bounds = slab_bounds(cfg, shape)
    groups = job_groups(cfg, shape, bounds)
    centre = None if manual else center_rows(cfg, shape[1])
    parts: dict[str, tuple[int, int]] = {}
    # every slab reads the raw file (a job of several slabs reads it once per slab)
    if read_once(cfg, origin["layout"], stage, len(bounds) + (centre is not None), os.path.getsize(cfg["input"]["file"]),
                 origin["band_reads"]):
        parts = {f"rows_{i:04d}": b for i, b in enumerate(bounds)}
        if centre:
            parts["rows_center"] = centre
    one_job = len(groups) == 1
    gather_slots = add_stages(run, parts, one_job)

    def slab_output(slot: str, index: int) -> str:
        return run.output("ct_volume", volume_slot(slot)) if one_job else run.output("ct_slab", slot, index)

    def load(slot: str, start: int, stop: int) -> dict:
        if not parts:
            return _load(cfg, start, stop, stage)
        params = {**{k: None for k in LOAD_KEYS}, "layout": "daisy", "angle_units": "auto",
                  "row_start": start, "row_stop": stop}
        return {"step": "ct.load", "inputs": {"raw": run.output("ct_rows", slot)}, "params": params}

    if parts:
        frame_bytes = shape[1] * shape[2] * 2          # one frame of 16-bit counts, the usual raw type
        run.add_job("ct_rows", [{"step": "ct.split_rows", "inputs": {"raw": cfg["input"]["file"]},
                                 "params": {**{k: cfg["input"][k] for k in LOAD_KEYS},
                                            "parts": {k: list(v) for k, v in parts.items()}},
                                 "outputs": {slot: run.output("ct_rows", slot) for slot in parts}}],
                    threads=1, mem_mb=int(300 + 2 * (READ_BLOCK_BYTES + frame_bytes) / 2**20))

    if centre:  # a manual centre needs no job: it goes straight into every slab's ct.recon
        start, stop = centre
        center_steps = [load("rows_center", start, stop), *_prepare(cfg, stage),
                        {"step": "ct.find_center", "params": cfg["center"],
                         "outputs": {"center": run.output("ct_center", "center")}}]
        run.add_job("ct_center", center_steps, threads=threads,
                    mem_mb=job_memory_mb(shape, stop - start) + CENTER_WORKER_MB * threads)

    recon = {**cfg["recon"], "center": cfg["center"]["center"] if manual else None}
    center_input = {} if manual else {"center": run.output("ct_center", "center")}
    slab_params = {"compression": save["compression"], "gzip_level": save["gzip_level"]}
    for index, members in enumerate(groups):
        file_rows = (bounds[members[0]][0], bounds[members[-1]][1])
        # one file per job: with several slabs, each writes its rows into it (param file_rows)
        in_file = {"file_rows": list(file_rows) if len(members) > 1 else None}
        middle = sum(file_rows) // 2
        steps = []
        for member in members:
            r0, r1 = bounds[member]
            keep = {name: {"step": "ct.save_stage",
                           "outputs": {"slab": slab_output(f"stage_{name}", index)},
                           "params": {"stage": name, "stripe_method": cfg["stripe"]["method"],
                                      "source_provenance": "../../provenance.json", **slab_params, **in_file}}
                    for name in save["stages"]}
            steps += [load(f"rows_{member:04d}", r0, r1), *_prepare(cfg, stage, keep)]
            if save["previews"] and r0 <= middle < r1:  # the job's middle sinogram, minus-logged, in memory here
                steps.append({"step": "ct.preview_sinogram", "params": {"row": middle},
                              "outputs": {"png": slab_output("preview", index)}})
            # ct.recon writes the job's file block by block while it reconstructs (no ct.save_slab)
            steps.append({"step": "ct.recon", "params": {**recon, **slab_params, "keep_volume": False, **in_file},
                          "inputs": center_input, "outputs": {"slab": slab_output("slab", index)}})
        tallest = max(bounds[m][1] - bounds[m][0] for m in members)
        slab_steps, slab_mem = steps, job_memory_mb(shape, tallest)
        if not one_job:
            run.add_job("ct_slab", steps, index, threads=threads, mem_mb=slab_mem)

    slabs = {f"slab_{i:04d}": slab_output("slab", i) for i in range(len(groups))}
    # the records of the jobs that made the volume: its NXprocess groups (daisy_steps/nxprocess.py);
    # in ct_volume the gather reads its own job's record so far
    made_by = [*([] if manual else ["ct_center"]),
               *([VOLUME.job_name()] if one_job else (SLAB.job_name(i) for i in range(len(groups))))]
    records = {f"record_{name}": run.record_file(name) for name in made_by}
    gather_stage = "ct_volume" if one_job else "ct_gather"
    outputs = {slot: run.output(gather_stage, slot) for slot in gather_slots}
    volume_outputs = {slot: path for slot, path in outputs.items() if not slot.startswith("stage_")}
    gathers = [{"step": "ct.gather", "params": {}, "inputs": {**slabs, **records}, "outputs": volume_outputs}]
    for name in save["stages"]:
        parts = {f"slab_{i:04d}": slab_output(f"stage_{name}", i) for i in range(len(groups))}
        gathers.append({"step": "ct.gather", "params": {"dataset": "/entry/data/data"},
                        "inputs": {**parts, **records}, "outputs": {"volume": outputs[f"stage_{name}"]}})
    if one_job:
        run.add_job("ct_volume", [*slab_steps, *gathers], threads=threads, mem_mb=max(slab_mem, 512))
    else:
        run.add_job("ct_gather", gathers, threads=1, mem_mb=512, runtime_min=15)
