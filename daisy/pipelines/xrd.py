"""The XRD pipeline's plan: one integration job per frame block, one gather job.

    xrd_block_NNNN x N  (pyfai)  load frames (streamed) -> mask -> integrate -> save block
    xrd_gather          (pyfai)  blocks in frame order -> one NeXus file per scan (+ .xy, previews);
                                 the block jobs' records become its NXprocess groups
"""

from __future__ import annotations

import math
from pathlib import Path

from daisy_steps.fileio import FileRef
from daisy_steps.xrd.frames import open_source

from ..plan import Output, Run, Stage


def source_ref(cfg: dict) -> str:
    dataset = cfg["input"]["dataset"]
    return f"{cfg['input']['file']}:{dataset}" if dataset else cfg["input"]["file"]


def scan_files(cfg: dict) -> tuple[int, int, list[str]]:
    """First and one-past-last frame to integrate, and every file holding frames (an Eiger
    master and the data files it links). Reads only metadata."""
    inp = cfg["input"]
    source = open_source(FileRef.parse(source_ref(cfg)), inp["format"], inp["start"], inp["stop"])
    files = getattr(source, "files", None) or [inp["file"]]
    return inp["start"], inp["start"] + len(source), [str(f) for f in files]


def block_bounds(cfg: dict, start: int, stop: int) -> list[tuple[int, int]]:
    n = stop - start
    count = cfg["blocks"]["count"] or math.ceil(n / cfg["blocks"]["frames_per_block"])
    count = max(1, min(count, n))
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    bounds, pos = [], start
    for size in sizes:
        bounds.append((pos, pos + size))
        pos += size
    return bounds


def scan_name(cfg: dict) -> str:
    stem = Path(cfg["input"]["file"]).stem
    return stem.removesuffix("_master")


STAGES = (
    Stage("xrd", "xrd_block", "pyfai", ("xrd.load_frames", "xrd.mask", "xrd.integrate", "xrd.save_block"),
          indexed=True, doc="one block of frames -> integrated patterns"),
    Stage("xrd", "xrd_gather", "pyfai", ("xrd.gather",), doc="blocks in frame order -> the scan's result file"),
)
BLOCK, GATHER = STAGES


def add_stages(run: Run) -> None:
    """The run's stages and the outputs this config asks for."""
    cfg = run.config
    run.add_stage(BLOCK, {"block": "xrd/blocks/block_{index}.h5"})
    gather: dict[str, Output | str] = {"result": f"xrd/{cfg['save']['filename'] or scan_name(cfg) + '_integrated.h5'}"}
    if cfg["save"]["previews"]:
        gather["pattern_png"] = "xrd/previews/pattern.png"
        if cfg["integrate"].get("integrate_2d"):
            gather["cake_png"] = "xrd/previews/cake.png"
    if cfg["save"]["xy"]:
        gather["xy"] = Output("xrd/xy", directory=True)
    run.add_stage(GATHER, gather)


def plan(run: Run) -> None:
    cfg = run.config
    inp, mask = cfg["input"], cfg["mask"]
    start, stop, files = scan_files(cfg)
    extra = [str(FileRef.parse(p).path) for p in (inp["dark"], inp["flat"], mask["file"]) if p]
    poni = cfg["integrate"].get("geometry", {}).get("poni")
    linked = [f for f in files if f != inp["file"]]  # an Eiger master's data files
    run.inputs = [inp["file"], *linked, *extra, *([poni] if poni else [])]
    add_stages(run)
    mask_params = {k: v for k, v in mask.items() if k != "file"}
    integrate_inputs = {k: inp[k] for k in ("dark", "flat") if inp[k]}
    bounds = block_bounds(cfg, start, stop)
    for index, (f0, f1) in enumerate(bounds):
        steps = [
            {"step": "xrd.load_frames", "inputs": {"source": source_ref(cfg)},
             "params": {"format": inp["format"], "start": f0, "stop": f1, "batch_frames": inp["batch_frames"]}},
            {"step": "xrd.mask", "params": mask_params,
             "inputs": {"user_mask": mask["file"]} if mask["file"] else {}},
            {"step": "xrd.integrate", "params": cfg["integrate"], "inputs": integrate_inputs},
            {"step": "xrd.save_block", "params": {"compression": cfg["save"]["compression"]},
             "outputs": {"block": run.output("xrd_block", "block", index)}},
        ]
        run.add_job("xrd_block", steps, index, threads=cfg["threads"], mem_mb=2048,
                    extra_inputs=(*linked, *([poni] if poni else [])))
    blocks = {f"block_{i:04d}": run.output("xrd_block", "block", i) for i in range(len(bounds))}
    # the block jobs' records: the result file's NXprocess groups (daisy_steps/nxprocess.py)
    records = {f"record_{BLOCK.job_name(i)}": run.record_file(BLOCK.job_name(i)) for i in range(len(bounds))}
    outputs = {slot: run.output("xrd_gather", slot) for slot in run.outputs["xrd_gather"]}
    gather = {"step": "xrd.gather", "params": {"compression": cfg["save"]["compression"]},
              "inputs": {**blocks, **records}, "outputs": outputs}
    run.add_job("xrd_gather", [gather], threads=1, mem_mb=1024, runtime_min=15)
