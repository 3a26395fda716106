"""The XRD pipeline's plan: one integration job per frame block, one gather job.

    xrd_block_NNNN x N  (pyfai)  load frames (streamed) -> mask -> integrate -> save block
    xrd_gather          (pyfai)  blocks in frame order -> one NeXus file per scan (+ .xy, previews)
"""

from __future__ import annotations

import math
from pathlib import Path

from daisy_steps.fileio import FileRef
from daisy_steps.xrd.frames import open_source

from ..workflow import Job, Run


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


def block_file(run: Run, index: int) -> str:
    return run.path("xrd", "blocks", f"block_{index:04d}.h5")


def scan_name(cfg: dict) -> str:
    stem = Path(cfg["input"]["file"]).stem
    return stem.removesuffix("_master")


def result_file(run: Run) -> str:
    name = run.config["save"]["filename"] or f"{scan_name(run.config)}_integrated.h5"
    return run.path("xrd", name)


def preview_files(run: Run) -> dict[str, str]:
    out = {"pattern_png": run.path("xrd", "previews", "pattern.png")}
    if run.config["integrate"].get("integrate_2d"):
        out["cake_png"] = run.path("xrd", "previews", "cake.png")
    return out


def xy_dir(run: Run) -> str:
    return run.path("xrd", "xy")


def plan(run: Run) -> None:
    cfg = run.config
    inp, mask = cfg["input"], cfg["mask"]
    start, stop, files = scan_files(cfg)
    extra = [str(FileRef.parse(p).path) for p in (inp["dark"], inp["flat"], mask["file"]) if p]
    poni = cfg["integrate"].get("geometry", {}).get("poni")
    run.inputs = [inp["file"], *[f for f in files if f != inp["file"]], *extra, *([poni] if poni else [])]
    mask_params = {k: v for k, v in mask.items() if k != "file"}
    integrate_inputs = {k: inp[k] for k in ("dark", "flat") if inp[k]}
    bounds = block_bounds(cfg, start, stop)
    for index, (f0, f1) in enumerate(bounds):
        name = f"xrd_block_{index:04d}"
        steps = [
            {"step": "xrd.load_frames", "inputs": {"source": source_ref(cfg)},
             "params": {"format": inp["format"], "start": f0, "stop": f1, "batch_frames": inp["batch_frames"]}},
            {"step": "xrd.mask", "params": mask_params,
             "inputs": {"user_mask": mask["file"]} if mask["file"] else {}},
            {"step": "xrd.integrate", "params": cfg["integrate"], "inputs": integrate_inputs},
            {"step": "xrd.save_block", "params": {"compression": cfg["save"]["compression"]},
             "outputs": {"block": block_file(run, index)}},
        ]
        run.jobs[name] = Job(name, "pyfai", steps, cfg["threads"], 2048)
    outputs = {"result": result_file(run)}
    if cfg["save"]["previews"]:
        outputs.update(preview_files(run))
    if cfg["save"]["xy"]:
        outputs["xy"] = xy_dir(run)
    gather = {"step": "xrd.gather", "params": {"compression": cfg["save"]["compression"]},
              "inputs": {f"block_{i}": block_file(run, i) for i in range(len(bounds))}, "outputs": outputs}
    run.jobs["xrd_gather"] = Job("xrd_gather", "pyfai", [gather], 1, 1024)
    run.blocks = bounds
    run.targets = list(outputs.values())
