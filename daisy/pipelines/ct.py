"""The CT pipeline's plan: a centre job, one reconstruction job per sinogram slab, a gather job.

    ct_center          (tomopy)  load rows around the centre row -> normalize -> angles -> minus-log
                                 -> stripe -> find centre -> sinogram preview
    ct_slab_NNNN x N   (tomopy)  load slab rows -> normalize -> angles -> minus-log -> stripe
                                 -> reconstruct with the centre found -> save slab
    ct_gather          (base)    HDF5 virtual dataset over the slabs (no copy) + previews (+ TIFF);
                                 the records of the jobs above become the volume's NXprocess groups

Each job is one process in one image; arrays pass in memory between its steps.
"""

from __future__ import annotations

import math
import os

from daisy_steps.ct.layouts import resolve_paths
from daisy_steps.ct.slabs import plan_slabs
from daisy_steps.errors import StepError
from daisy_steps.h5 import get_dataset, open_file

from ..plan import Run, Stage

LOAD_KEYS = ("layout", "entry", "data_path", "flat_path", "dark_path", "image_key_path", "angles_path", "angle_units")


def raw_shape(cfg: dict) -> tuple[int, int, int]:
    """(frames, detector rows, detector columns) of the raw projection dataset (metadata only)."""
    params = {k: cfg["input"][k] for k in LOAD_KEYS}
    with open_file(cfg["input"]["file"]) as handle:
        paths = resolve_paths(handle, params)
        dset = get_dataset(handle, paths.data)
        if dset.ndim != 3:
            raise StepError(f"{cfg['input']['file']}: dataset {paths.data} has shape {dset.shape}, "
                            f"expected 3 axes (frames, rows, columns)")
        return tuple(int(n) for n in dset.shape)


def job_memory_mb(shape: tuple[int, int, int], rows: int) -> int:
    """Peak memory of a job holding ``rows`` sinogram rows, calibrated on 1500 x 1024 x 1024
    (bench/peak_memory.py): ~8 bytes per projection pixel (raw, float32 slab, normalize's copy)
    plus the float32 volume slab, plus the interpreter and tomopy (~200 MiB)."""
    frames, _, cols = shape
    return int(200 + rows * (8 * frames * cols + 4 * cols * cols) / 2**20)


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


def _load(cfg: dict, start: int, stop: int) -> dict:
    params = {k: cfg["input"][k] for k in LOAD_KEYS}
    params.update(row_start=start, row_stop=stop)
    return {"step": "ct.load", "inputs": {"raw": cfg["input"]["file"]}, "params": params}


PREPARE = ("ct.normalize", "ct.angles", "ct.minus_log", "ct.stripe")


def _prepare(cfg: dict) -> list[dict]:
    return [{"step": "ct.normalize", "params": cfg["normalize"]},
            {"step": "ct.angles", "params": cfg["angles"]},
            {"step": "ct.minus_log", "params": {}},
            {"step": "ct.stripe", "params": cfg["stripe"]}]


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
    Stage("ct", "ct_center", "tomopy", ("ct.load", *PREPARE, "ct.find_center"),
          doc="rows around the centre row -> rotation centre"),
    Stage("ct", "ct_slab", "tomopy", ("ct.load", *PREPARE, "ct.preview_sinogram", "ct.recon", "ct.save_slab"),
          indexed=True, doc="one sinogram slab -> one slab of the volume"),
    Stage("ct", "ct_gather", "base", ("ct.gather",), doc="slabs -> virtual volume, previews, TIFF"),
)
CENTER, SLAB, GATHER = STAGES


def add_stages(run: Run) -> None:
    """The run's stages and the outputs this config asks for."""
    save = run.config["save"]
    run.add_stage(CENTER, {"center": "ct/center.json"})
    run.add_stage(SLAB, {"slab": "ct/slabs/slab_{index}.h5",
                         **({"preview": "ct/previews/sinogram_slab_{index}.png"} if save["previews"] else {})})
    gather = {"volume": "ct/volume.h5"}
    if save["previews"]:
        gather.update({f"preview_{axes}": f"ct/previews/{axes}.png" for axes in ("xy", "xz", "yz")})
    if save["tiff"]:
        gather["tiff"] = "ct/volume.tif"
    run.add_stage(GATHER, gather)


def plan(run: Run) -> None:
    cfg = run.config
    shape = raw_shape(cfg)
    run.inputs = [cfg["input"]["file"]]
    threads = cfg["threads"]
    save = cfg["save"]
    manual = cfg["center"]["method"] == "manual"
    if manual and cfg["center"]["center"] is None:
        raise StepError("config field 'center.center' is required when 'center.method' is manual")
    add_stages(run)

    if not manual:  # a manual centre needs no job: it goes straight into every slab's ct.recon
        start, stop = center_rows(cfg, shape[1])
        center_steps = [_load(cfg, start, stop), *_prepare(cfg),
                        {"step": "ct.find_center", "params": cfg["center"],
                         "outputs": {"center": run.output("ct_center", "center")}}]
        run.add_job("ct_center", center_steps, threads=threads, mem_mb=job_memory_mb(shape, stop - start))

    recon = {**cfg["recon"], "center": cfg["center"]["center"] if manual else None}
    center_input = {} if manual else {"center": run.output("ct_center", "center")}
    slab_params = {"compression": save["compression"], "gzip_level": save["gzip_level"]}
    bounds = slab_bounds(cfg, shape)
    for index, (r0, r1) in enumerate(bounds):
        steps = [_load(cfg, r0, r1), *_prepare(cfg)]
        if save["previews"]:  # the slab's middle sinogram, minus-logged, is in memory here already
            steps.append({"step": "ct.preview_sinogram", "params": {"row": (r0 + r1) // 2},
                          "outputs": {"png": run.output("ct_slab", "preview", index)}})
        steps += [{"step": "ct.recon", "params": recon, "inputs": center_input},
                  {"step": "ct.save_slab", "params": slab_params, "outputs": {"slab": run.output("ct_slab", "slab", index)}}]
        run.add_job("ct_slab", steps, index, threads=threads, mem_mb=job_memory_mb(shape, r1 - r0))

    slabs = {f"slab_{i:04d}": run.output("ct_slab", "slab", i) for i in range(len(bounds))}
    # the records of the jobs that made the volume: its NXprocess groups (daisy_steps/nxprocess.py)
    made_by = [*([] if manual else ["ct_center"]), *(SLAB.job_name(i) for i in range(len(bounds)))]
    records = {f"record_{name}": run.record_file(name) for name in made_by}
    outputs = {slot: run.output("ct_gather", slot) for slot in run.outputs["ct_gather"]}
    gather = {"step": "ct.gather", "params": {}, "inputs": {**slabs, **records}, "outputs": outputs}
    run.add_job("ct_gather", [gather], threads=1, mem_mb=512, runtime_min=15)
