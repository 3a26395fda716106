"""The XRD pipeline's plan: one integration job per frame block, one gather job per scan.

    xrd_block_NNNN x N  (pyfai)  load frames (streamed) -> mask -> [normalize] -> integrate -> save block
    xrd_gather          (pyfai)  blocks in frame order -> one NeXus file per scan (+ .xy, exports,
                                 previews); the block jobs' records become its NXprocess groups

A scan is an Eiger master (+ the data files it links), an HDF5 stack, a (multi-frame) image file,
or a **file series**: one single-frame image per frame (``input.file`` a glob pattern or a folder,
``daisy_steps/xrd/series.py``), every file of which is an input of the block job that reads it.

A **batch** (``input.scans``: a list, or one glob, of masters / stacks / series) runs many scans
with one geometry and mask in one workflow: block jobs ``xrd_block_<scan>_NNNN`` (scans in
parallel, blocks inside each), a gather job ``xrd_gather_<scan>`` per scan (``xrd/<scan>_integrated.h5``)
and ``xrd_gather_summary`` (``xrd/summary_integrated.h5``: every scan's mean pattern and a table).
Job names hang on scan names, not positions, so a rerun with more scans adds only their jobs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from daisy_steps.errors import StepError
from daisy_steps.fileio import FileRef
from daisy_steps.xrd import series as series_mod
from daisy_steps.xrd.frames import open_source

from ..plan import Output, Run, Stage

#: the index of the batch's summary job (``xrd_gather_summary``)
SUMMARY = "summary"
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]")


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
    file = cfg["input"]["file"]
    if series_mod.is_series_spec(file):
        return series_mod.series_name(series_mod.expand(file))
    return Path(file).stem.removesuffix("_master")


# -- scans ----------------------------------------------------------------------------------------

@dataclass
class Scan:
    """One scan of the run: where its frames are and which of them to integrate."""

    name: str
    file: str                       # master / stack / image file; a series' first file
    start: int
    stop: int
    files: list[str]                # every file holding frames
    series: list[str] | None = None  # a file series: one file per frame, in frame order
    dataset: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.file}:{self.dataset}" if self.dataset else self.file


def _frame_range(inp: dict, n: int, label: str) -> tuple[int, int]:
    start, stop = inp["start"], n if inp["stop"] is None else inp["stop"]
    if not 0 <= start < stop <= n:
        raise StepError(f"{label}: frames {start}:{stop} outside the scan's {n} frames")
    return start, stop


def plan_series(inp: dict, files: list[Path], label: str, name: str | None = None) -> Scan:
    """A file series: natural order, gaps and unreadable files named, the first file's header read."""
    missing = series_mod.gaps(files)
    notes = []
    if missing:
        text = (f"{label}: {len(missing)} file(s) missing from the numbering: {', '.join(missing[:20])}"
                + (" ..." if len(missing) > 20 else ""))
        if not inp["allow_gaps"]:
            raise StepError(text + " (set input.allow_gaps to integrate the files that exist)")
        notes.append(text)
    series_mod.check_files(files, label)
    hdf5 = [p.name for p in files if p.suffix.lower() in (".h5", ".hdf5", ".nxs")]
    if hdf5:
        raise StepError(f"{label}: {', '.join(hdf5[:5])} are HDF5 files; a series holds single-frame images "
                        f"(give HDF5 scans as input.file, or several as input.scans)")
    shape, _, nframes, _ = series_mod.frame_header(files[0])
    if nframes > 1:
        raise StepError(f"{label}: {files[0]} holds {nframes} frames; a series has one frame per file")
    start, stop = _frame_range(inp, len(files), label)
    name = name or series_mod.series_name(files)
    return Scan(name, str(files[0]), start, stop, [str(p) for p in files], [str(p) for p in files], notes=notes)


def plan_file(inp: dict, file: str, dataset: str | None, name: str | None = None) -> Scan:
    ref = f"{file}:{dataset}" if dataset else file
    source = open_source(FileRef.parse(ref), inp["format"], inp["start"], inp["stop"])
    files = [str(f) for f in (getattr(source, "files", None) or [file])]
    name = name or Path(file).stem.removesuffix("_master")
    return Scan(name, file, inp["start"], inp["start"] + len(source), files, dataset=dataset)


def _batch_entries(scans) -> list[tuple[str, Path | list[Path]]]:
    """(label, file or series files) of each scan of ``input.scans``."""
    specs = [scans] if isinstance(scans, str) else list(scans)
    out: list[tuple[str, Path | list[Path]]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            out.append((f"input.scans {spec}", series_mod.expand(spec)))
        elif series_mod.GLOB_CHARS & set(spec):
            import glob

            matches = sorted((Path(p) for p in glob.glob(spec)), key=series_mod.natural_key)
            if not matches:
                raise StepError(f"input.scans: pattern {spec} matches no file or folder")
            images = [p for p in matches if p.is_file() and series_mod._suffix(p) in series_mod.IMAGE_SUFFIXES]
            for p in matches:
                if p.is_dir():
                    out.append((f"input.scans {p}", series_mod.expand(str(p))))
                elif p not in images:
                    out.append((f"input.scans {p}", p))
            for group in series_mod.group_scans(images).values():
                out.append((f"input.scans {spec} ({group[0].name}, ...)", group))
        else:
            out.append((f"input.scans {spec}", path))
    return out


def plan_scans(cfg: dict) -> list[Scan]:
    """Every scan of the config: ``input.file`` (one scan: a file or a series) or ``input.scans``."""
    inp = cfg["input"]
    if inp.get("scans") is None:
        file = inp["file"]
        if series_mod.is_series_spec(file):
            files = series_mod.expand(file)
            groups = series_mod.group_scans(files)
            if len(groups) > 1:
                raise StepError(f"input.file {file}: the files belong to {len(groups)} series "
                                f"({', '.join(list(groups)[:5])}); give one series, or several as input.scans")
            return [plan_series(inp, files, f"input.file {file}")]
        return [plan_file(inp, file, inp["dataset"])]
    scans: list[Scan] = []
    for label, what in _batch_entries(inp["scans"]):
        if isinstance(what, list):
            scans.append(plan_series(inp, what, label))
        else:
            if not what.is_file():
                raise StepError(f"{label}: no such file")
            scans.append(plan_file(inp, str(what), inp["dataset"]))
    from ..config import input_problem

    for scan in scans:  # what config.check_paths does for input.file: folders Apptainer can bind
        problem = input_problem("input.scans", scan.file)
        if problem:
            raise StepError(problem)
    seen: dict[str, Scan] = {}
    for scan in scans:
        scan.name = SAFE_NAME.sub("_", scan.name)
        if scan.name == SUMMARY:
            raise StepError(f"input.scans: a scan may not be named '{SUMMARY}' ({scan.file}): the batch's summary is")
        if scan.name in seen:
            raise StepError(f"input.scans: two scans are named {scan.name}: {seen[scan.name].file} and {scan.file}; "
                            f"scans of a batch need distinct names")
        seen[scan.name] = scan
    if not scans:
        raise StepError("input.scans: no scans")
    return scans


# -- stages ---------------------------------------------------------------------------------------

STAGES = (
    Stage("xrd", "xrd_block", "pyfai",
          ("xrd.load_frames", "xrd.mask", "xrd.normalize", "xrd.integrate", "xrd.save_block"),
          indexed=True, doc="one block of frames -> integrated patterns"),
    Stage("xrd", "xrd_gather", "pyfai", ("xrd.gather", "xrd.summary"),
          doc="blocks in frame order -> the scan's result file (a batch: one per scan, and the summary)"),
)
BLOCK, GATHER = STAGES


def is_batch(cfg: dict) -> bool:
    return cfg["input"].get("scans") is not None


def gather_outputs(cfg: dict, batch: bool) -> dict[str, Output | str]:
    """The gather stage's outputs this config asks for (a batch: one set per scan, by index)."""
    save = cfg["save"]
    scan, folder = ("{index}_", "/{index}") if batch else ("", "")   # a batch: one set per scan
    result = "xrd/{index}_integrated.h5" if batch else f"xrd/{save['filename'] or scan_name(cfg) + '_integrated.h5'}"
    out: dict[str, Output | str] = {"result": result}
    if save["previews"]:
        out["pattern_png"] = f"xrd/previews/{scan}pattern.png"
        if cfg["integrate"].get("integrate_2d"):
            out["cake_png"] = f"xrd/previews/{scan}cake.png"
    if save["xy"]:
        out["xy"] = Output(f"xrd/xy{folder}", directory=True)
    if save["exports"]:
        out["exports"] = Output(f"xrd/exports{folder}", directory=True)
    return out


def add_stages(run: Run) -> None:
    """The run's stages and the outputs this config asks for."""
    cfg = run.config
    batch = is_batch(cfg)
    run.add_stage(BLOCK, {"block": "xrd/blocks/block_{index}.h5"})
    run.add_stage(dataclasses.replace(GATHER, indexed=True) if batch else GATHER, gather_outputs(cfg, batch))


# -- checks the schema cannot make ------------------------------------------------------------------

def check_config(cfg: dict) -> None:
    inp, save, integ = cfg["input"], cfg["save"], cfg["integrate"]
    if (inp.get("file") is None) == (inp.get("scans") is None):
        raise StepError("input: give either 'file' (one scan) or 'scans' (a batch), not both" if inp.get("file")
                        else "input: give 'file' (one scan: a file, a pattern or a folder) or 'scans' (a batch)")
    if inp.get("scans") is not None and save["filename"]:
        raise StepError("save.filename names one scan's result; a batch names each after its scan "
                        "(xrd/<scan>_integrated.h5): remove save.filename")
    from daisy_steps.xrd.exports import NEEDS_2THETA, NEEDS_SIGMA

    for fmt in save["exports"]:
        if fmt in NEEDS_SIGMA and integ["error_model"] == "none":
            raise StepError(f"save.exports '{fmt}' holds standard deviations: set integrate.error_model "
                            f"to poisson or azimuthal")
        if fmt in NEEDS_2THETA and integ["unit"] != "2th_deg":
            raise StepError(f"save.exports '{fmt}' holds 2θ: set integrate.unit to 2th_deg")


def _value_source(value, scan: Scan, field_name: str) -> tuple[str | None, str | None, float | None]:
    """(input ref, header key, number) of a normalize.monitor / normalize.exposure value."""
    if value is None:
        return None, None, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None, None, float(value)
    text = str(value)
    if text.startswith("header:"):
        if scan.series is None:
            raise StepError(f"normalize.{field_name} {text}: per-file headers exist only for a file series; "
                            f"{scan.file} is one file (give a dataset /path/in/the/file or a side file)")
        return None, text.split(":", 1)[1], None
    if text.startswith("/"):
        if scan.series is not None:
            raise StepError(f"normalize.{field_name} {text}: a dataset of the scan's own file, but scan {scan.name} "
                            f"is a file series (give header:KEY or a side file)")
        return f"{scan.file}:{text}", None, None
    return text.replace("{scan}", scan.name), None, None


def normalize_step(cfg: dict, scan: Scan) -> dict | None:
    norm = cfg["normalize"]
    monitor, monitor_header, _ = _value_source(norm["monitor"], scan, "monitor")
    exposure, exposure_header, seconds = _value_source(norm["exposure"], scan, "exposure")
    if not (monitor or monitor_header or exposure or exposure_header or seconds):
        return None
    inputs = {k: v for k, v in (("monitor", monitor), ("exposure", exposure)) if v}
    params = {"monitor_header": monitor_header, "monitor_reference": norm["monitor_reference"],
              "exposure_header": exposure_header, "exposure_seconds": seconds}
    return {"step": "xrd.normalize", "params": params, "inputs": inputs}


# -- the plan ---------------------------------------------------------------------------------------

def plan(run: Run) -> None:
    cfg = run.config
    check_config(cfg)
    inp, mask = cfg["input"], cfg["mask"]
    batch = is_batch(cfg)
    scans = plan_scans(cfg)
    extra = [str(FileRef.parse(p).path) for p in (inp["dark"], inp["flat"], mask["file"]) if p]
    poni = cfg["integrate"].get("geometry", {}).get("poni")
    norm_steps = {scan.name: normalize_step(cfg, scan) for scan in scans}
    side = [str(FileRef.parse(v).path) for s in norm_steps.values() if s for v in s["inputs"].values()]
    run.inputs = list(dict.fromkeys([*(f for scan in scans for f in scan.files), *side, *extra,
                                     *([poni] if poni else [])]))
    if not batch and scans[0].series is None:  # one file: the inputs as they always were
        linked = [f for f in scans[0].files if f != inp["file"]]
        run.inputs = [inp["file"], *linked, *extra, *([poni] if poni else [])]
        run.inputs += [f for f in side if f not in run.inputs]
    add_stages(run)
    for scan in scans:
        plan_scan(run, scan, batch, norm_steps[scan.name], poni)
    if batch:
        plan_summary(run, scans)


def block_steps(run: Run, scan: Scan, f0: int, f1: int, index, norm_step: dict | None) -> list[dict]:
    cfg = run.config
    inp, mask = cfg["input"], cfg["mask"]
    load = {"format": inp["format"], "start": f0, "stop": f1, "batch_frames": inp["batch_frames"]}
    if scan.series is not None:
        load["series_frames"] = len(scan.series)
        sources = {series_mod.slot_name(i): scan.series[i] for i in range(f0, f1)}
    else:
        sources = {"source": scan.ref}
    mask_params = {k: v for k, v in mask.items() if k != "file"}
    integrate_inputs = {k: inp[k] for k in ("dark", "flat") if inp[k]}
    return [
        {"step": "xrd.load_frames", "inputs": sources, "params": load},
        {"step": "xrd.mask", "params": mask_params, "inputs": {"user_mask": mask["file"]} if mask["file"] else {}},
        *([norm_step] if norm_step else []),
        {"step": "xrd.integrate", "params": cfg["integrate"], "inputs": integrate_inputs},
        {"step": "xrd.save_block", "params": {"compression": cfg["save"]["compression"]},
         "outputs": {"block": run.output("xrd_block", "block", index)}},
    ]


def plan_scan(run: Run, scan: Scan, batch: bool, norm_step: dict | None, poni: str | None) -> None:
    cfg = run.config
    bounds = block_bounds(cfg, scan.start, scan.stop)
    indices = [f"{scan.name}_{i:04d}" if batch else i for i in range(len(bounds))]
    linked = [f for f in scan.files if f != scan.file] if scan.series is None else []
    for index, (f0, f1) in zip(indices, bounds):
        run.add_job("xrd_block", block_steps(run, scan, f0, f1, index, norm_step), index, threads=cfg["threads"],
                    mem_mb=2048, extra_inputs=(*linked, *([poni] if poni else [])))
    blocks = {f"block_{i:04d}": run.output("xrd_block", "block", index) for i, index in enumerate(indices)}
    # the block jobs' records: the result file's NXprocess groups (daisy_steps/nxprocess.py)
    records = {f"record_{BLOCK.job_name(index)}": run.record_file(BLOCK.job_name(index)) for index in indices}
    gather_index = scan.name if batch else None
    outputs = {slot: run.output("xrd_gather", slot, gather_index) for slot in run.outputs["xrd_gather"]}
    params = {"compression": cfg["save"]["compression"]}
    if cfg["save"]["exports"]:
        params.update(exports=list(cfg["save"]["exports"]), export_prefix=scan.name)
    gather = {"step": "xrd.gather", "params": params, "inputs": {**blocks, **records}, "outputs": outputs}
    run.add_job("xrd_gather", [gather], gather_index, threads=1, mem_mb=1024, runtime_min=15)


def plan_summary(run: Run, scans: list[Scan]) -> None:
    cfg = run.config
    results = {f"scan_{i:04d}": run.output("xrd_gather", "result", scan.name) for i, scan in enumerate(scans)}
    outputs = {slot: run.output("xrd_gather", slot, SUMMARY) for slot in run.outputs["xrd_gather"]}
    params = {"compression": cfg["save"]["compression"], "exports": list(cfg["save"]["exports"])}
    step = {"step": "xrd.summary", "params": params, "inputs": results, "outputs": outputs}
    run.add_job("xrd_gather", [step], SUMMARY, threads=1, mem_mb=1024, runtime_min=15)
