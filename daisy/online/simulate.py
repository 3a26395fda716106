"""``daisy simulate xrd|ct``: write a scan the way a detector does, at a given frame rate.

The frames are made first, in the pinned images, by DAISY's sample steps (``sample.xrd_eiger``:
CeO2 rings on an Eiger 4M; ``sample.ct_phantom``: tomopy's Shepp-Logan phantom), into a hidden
staging folder; then they are *played*: written frame by frame at ``rate`` Hz, as the detector's
file writer would, so that only the timing is simulated.

- XRD (``layout eiger``): ``<scan>_master.h5`` first (metadata, pixel mask, ``nimages``, links
  ``/entry/data/data_NNNNNN`` to data files that do not exist yet), then
  ``<scan>_data_NNNNNN.h5`` appear one after the other and grow frame by frame (bitshuffle/LZ4
  chunks copied as they are, ``write_direct_chunk``). ``layout stack``: one ``<scan>.h5`` with a
  growing ``/entry/data/data`` (and ``<scan>_mask.h5``, a user mask). ``mode swmr``: the writer keeps
  the file open in SWMR mode and flushes each frame; ``mode plain``: it opens, appends, closes.
- CT: ``<scan>.h5`` in the Data Exchange layout: darks, flats and the angles first, then
  ``/exchange/data`` grows projection by projection (SWMR). The projections are a phantom made
  by ``sample.ct_phantom``, or (``source``) those of an existing Data Exchange raw scan, replayed
  frame by frame (e.g. bench/make_ct_data.py's 1500 x 1024 x 1024 scan: too big for a phantom).
  ``rate`` 0 writes as fast as it can.

Beside the scan: ``<scan>_written.jsonl``, one line ``{"frame": k, "t": unix time}`` per frame,
appended once the frame is flushed (the "fully written" time latency is measured from), and at the
end the end-of-scan marker ``<scan file>.done``. ``<scan>.yaml`` is a config to watch (and run) it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

LIBVER = ("v110", "v110")   # SWMR; readable by the images' HDF5 1.14 as well


def written_log(folder: Path, scan: str) -> Path:
    return Path(folder) / f"{scan}_written.jsonl"


def end_marker(scan_file: Path) -> Path:
    return Path(str(scan_file).rstrip("/") + ".done")


class Player:
    """Paces frames at ``rate`` Hz and records their "fully written" times."""

    def __init__(self, log_path: Path, rate: float, progress: Callable[[str], None] | None = None) -> None:
        self.rate = float(rate)
        self.log = open(log_path, "w")
        self.t0 = None
        self.progress = progress
        self.late = 0

    def wait(self, k: int) -> None:
        if self.t0 is None:
            self.t0 = time.time()
        target = self.t0 + k / self.rate if self.rate > 0 else time.time()
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0 / max(self.rate, 1e-9):
            self.late += 1

    def written(self, k: int, n: int) -> None:
        self.log.write(json.dumps({"frame": k, "t": time.time()}) + "\n")
        self.log.flush()
        if self.progress and (k + 1) % max(1, int(self.rate) or 1) == 0 or self.progress and k + 1 == n:
            self.progress(f"daisy simulate: {k + 1}/{n} frames written")

    def close(self) -> None:
        self.log.close()


# -- XRD ----------------------------------------------------------------------------------------

def generate_xrd(stage: Path, unique: int, binning: int, seed: int, threads: int = 2) -> dict[str, Path]:
    """Frames of a CeO2 scan made by sample.xrd_eiger in the pyfai image (one data file)."""
    from ..workflow import run_job_in_image

    stage.mkdir(parents=True, exist_ok=True)
    master, poni, mask = stage / "source_master.h5", stage / "source.poni", stage / "source_mask.h5"
    if not (master.exists() and poni.exists() and mask.exists()):
        steps = [{"step": "sample.xrd_eiger",
                  "params": {"n_frames": unique, "frames_per_file": unique, "binning": binning, "seed": seed},
                  "outputs": {"scan": str(master.resolve()), "poni": str(poni.resolve()),
                              "user_mask": f"{mask.resolve()}:/mask"}}]
        run_job_in_image("pyfai", {"job": "simulate_xrd", "threads": threads, "steps": steps},
                         stage / "jobs" / "simulate_xrd.json", stage)
    return {"master": master, "poni": poni, "mask": mask, "data": stage / "source_data_000001.h5"}


def play_xrd(source: dict[str, Path], out: Path, scan: str, frames: int, rate: float, frames_per_file: int = 100,
             layout: str = "eiger", mode: str = "swmr", progress=None, ready: Callable[[], None] | None = None) -> Path:
    """Write ``frames`` frames (source frames repeated) at ``rate`` Hz; returns the scan file."""
    out.mkdir(parents=True, exist_ok=True)
    src_file = h5py.File(source["data"], "r")
    src = src_file["/entry/data/data"]
    unique, shape, dtype = src.shape[0], src.shape[1:], src.dtype
    dcpl = src.id.get_create_plist()
    filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]
    comp = _compression_kwargs(filters)
    player = Player(written_log(out, scan), rate, progress)
    if layout == "eiger":
        scan_file = out / f"{scan}_master.h5"
        n_files = -(-frames // frames_per_file)
        partial = scan_file.with_name(f".{scan_file.name}.part")   # renamed into place when written
        with h5py.File(source["master"], "r") as src_master, h5py.File(partial, "w") as master:
            for name in src_master:
                src_master.copy(src_master[name], master, name=name)
            data = master["/entry/data"]
            for name in list(data):
                del data[name]
            for i in range(n_files):
                data[f"data_{i + 1:06d}"] = h5py.ExternalLink(f"{scan}_data_{i + 1:06d}.h5", "/entry/data/data")
            spec = master["/entry/instrument/detector/detectorSpecific"]
            del spec["nimages"]
            spec.create_dataset("nimages", data=frames)
        partial.replace(scan_file)
    else:
        scan_file = out / f"{scan}.h5"
        shutil.copyfile(source["mask"], out / f"{scan}_mask.h5")
    shutil.copyfile(source["poni"], out / f"{scan}.poni")
    if ready is not None:
        ready()
    handle = dset = None
    try:
        for k in range(frames):
            if layout == "eiger":
                part, local = divmod(k, frames_per_file)
                path = out / f"{scan}_data_{part + 1:06d}.h5"
                count = min(frames_per_file, frames - part * frames_per_file)
                attrs = {"image_nr_low": part * frames_per_file + 1, "image_nr_high": part * frames_per_file + count}
            else:
                path, local, attrs = scan_file, k, {}
            if local == 0:
                if handle is not None:
                    handle.close()
                handle = h5py.File(path, "w", libver=LIBVER if mode == "swmr" else "earliest")
                entry = handle.create_group("entry")
                entry.attrs["NX_class"] = "NXentry"
                group = entry.create_group("data")
                group.attrs["NX_class"] = "NXdata"
                dset = group.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape),
                                            dtype=dtype, **comp)
                dset.attrs.update(attrs)
                if mode == "swmr":
                    handle.swmr_mode = True
                else:
                    handle.close()
                    handle = None
            player.wait(k)
            filter_mask, chunk = src.id.read_direct_chunk((k % unique, 0, 0))
            if mode == "swmr":
                dset.resize(local + 1, axis=0)
                dset.id.write_direct_chunk((local, 0, 0), chunk, filter_mask)
                handle.flush()
            else:
                with h5py.File(path, "a") as plain:
                    d = plain["/entry/data/data"]
                    d.resize(local + 1, axis=0)
                    d.id.write_direct_chunk((local, 0, 0), chunk, filter_mask)
            player.written(k, frames)
    finally:
        if handle is not None:
            handle.close()
        src_file.close()
        player.close()
    end_marker(scan_file).write_text(json.dumps({"frames": frames, "ended": time.time(), "late": player.late}) + "\n")
    return scan_file


def _compression_kwargs(filters) -> dict:
    """create_dataset arguments for the source's filter pipeline (bitshuffle/LZ4, gzip, ...)."""
    import hdf5plugin

    for code, flags, values, _name in filters:
        if code == 32008:  # bitshuffle: stored (version, version, element size, block size, compressor)
            return {"compression": 32008, "compression_opts": tuple(values[3:])}
        if code == 1:
            return {"compression": "gzip", "compression_opts": values[0] if values else 4}
    del hdf5plugin
    return {}


def xrd_config(out: Path, scan: str, layout: str, outdir: str, threads: int = 2) -> dict:
    inp = {"file": str((out / (f"{scan}_master.h5" if layout == "eiger" else f"{scan}.h5")).resolve())}
    cfg = {"config_version": 1, "pipeline": "xrd", "outdir": outdir, "threads": threads, "input": inp,
           "integrate": {"geometry": {"poni": str((out / f"{scan}.poni").resolve())}, "npt": 1000}}
    if layout != "eiger":
        cfg["mask"] = {"file": f"{(out / f'{scan}_mask.h5').resolve()}:/mask"}
    return cfg


# -- CT -----------------------------------------------------------------------------------------

def generate_ct(stage: Path, size: int, angles: int, seed: int, threads: int = 2) -> Path:
    from ..workflow import run_job_in_image

    stage.mkdir(parents=True, exist_ok=True)
    raw = stage / "source_ct.h5"
    if not raw.exists():
        steps = [{"step": "sample.ct_phantom", "outputs": {"raw": str(raw.resolve())},
                  "params": {"size": size, "n_angles": angles, "layout": "dxchange", "seed": seed,
                             "compression": "none"}}]
        run_job_in_image("tomopy", {"job": "simulate_ct", "threads": threads, "steps": steps},
                         stage / "jobs" / "simulate_ct.json", stage)
    return raw


def play_ct(source: Path, out: Path, scan: str, rate: float, progress=None,
            ready: Callable[[], None] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    scan_file = out / f"{scan}.h5"
    player = Player(written_log(out, scan), rate, progress)
    with h5py.File(source, "r") as src, h5py.File(scan_file, "w", libver=LIBVER) as handle:
        proj = src["/exchange/data"]
        n, shape = proj.shape[0], proj.shape[1:]
        ex = handle.create_group("exchange")
        for name in ("data_white", "data_dark", "theta"):
            src.copy(src[f"/exchange/{name}"], ex, name=name)
        handle.create_dataset("implements", data="exchange")
        if "truth" in src:
            truth = handle.create_group("truth")
            truth.attrs.update(dict(src["truth"].attrs))
        dset = ex.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape),
                                 dtype=proj.dtype)
        handle.swmr_mode = True
        if ready is not None:
            ready()
        frame = np.empty(shape, proj.dtype)
        for k in range(n):
            proj.read_direct(frame, np.s_[k], np.s_[...])
            player.wait(k)
            dset.resize(k + 1, axis=0)
            dset[k] = frame
            handle.flush()
            player.written(k, n)
    player.close()
    end_marker(scan_file).write_text(json.dumps({"frames": n, "ended": time.time(), "late": player.late}) + "\n")
    return scan_file


def ct_config(out: Path, scan: str, outdir: str, threads: int = 2) -> dict:
    return {"config_version": 1, "pipeline": "ct", "outdir": outdir, "threads": threads,
            "input": {"file": str((out / f"{scan}.h5").resolve())}, "slabs": {"count": 2}}


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text("# written by daisy simulate: watch it with daisy watch "
                    f"{cfg['pipeline']} --config {path.name}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def simulate(kind: str, out: Path, rate: float, frames: int | None = None, unique: int = 20, binning: int = 1,
             frames_per_file: int = 100, layout: str = "eiger", mode: str = "swmr", scan: str | None = None,
             size: int = 64, angles: int = 128, seed: int = 0, outdir: str | None = None,
             progress=print, ready=None, source: Path | None = None) -> Path:
    """Generate (in the image) and play a scan; returns the scan file. ``ready`` is called once
    the config is written and before the first frame. CT with ``source``: replay that raw scan
    (Data Exchange layout) frame by frame instead of generating a phantom."""
    out = Path(out)
    stage = out / ".daisy-simulate"
    if kind == "xrd":
        scan = scan or "scan_00001"
        frames = frames or 50
        progress(f"daisy simulate: making {min(unique, frames)} distinct Eiger frames (binning {binning}) in the pyfai image")
        source = generate_xrd(stage, min(unique, frames), binning, seed)
        config = write_config(out / f"{scan}.yaml", xrd_config(out, scan, layout, outdir or f"results/{scan}"))
        progress(f"daisy simulate: writing {frames} frames at {rate} Hz into {out} ({layout}, {mode}); config {config}")
        return play_xrd(source, out, scan, frames, rate, frames_per_file, layout, mode, progress, ready)
    scan = scan or "ct_00001"
    if source is None:
        progress(f"daisy simulate: making a {size}^3 phantom scan, {angles} projections, in the tomopy image")
        source = generate_ct(stage, size, angles, seed)
    else:
        source = Path(source)
        with h5py.File(source, "r") as handle:
            if "/exchange/data" not in handle:
                raise ValueError(f"{source}: no /exchange/data: --source replays a Data Exchange raw scan")
            angles = int(handle["/exchange/data"].shape[0])
        progress(f"daisy simulate: replaying {source} ({angles} projections)")
    config = write_config(out / f"{scan}.yaml", ct_config(out, scan, outdir or f"results/{scan}"))
    progress(f"daisy simulate: writing {angles} projections at {rate} Hz into {out}; config {config}")
    return play_ct(source, out, scan, rate, progress, ready)
