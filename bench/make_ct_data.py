#!/usr/bin/env python3
"""A synthetic raw CT scan at any size, cheaply, on the host (h5py + numpy only).

tomopy.project is far too slow for 1500 x 1024 x 1024; the projections here are analytic: the
parallel-beam line integrals of a few spheres and one hollow cylinder (a sample in a capillary)
rotating about a vertical axis ``--offset`` pixels right of the detector centre. Counts are
``flat * exp(-line integral) + dark`` with a fixed pattern of noise (a pre-drawn table, shifted per
frame), stored as uint16.

Layout: Data Exchange (what APS tomography beamlines write with areaDetector):
``/exchange/data`` (projections), ``/exchange/data_white`` (flats), ``/exchange/data_dark``
(darks), ``/exchange/theta`` (degrees). Storage: chunked one frame per chunk, uncompressed, as
areaDetector's HDF5 plugin writes frame by frame. A slab of detector rows is then a partial read of
every chunk, which HDF5 does straight from the file for unfiltered chunks.

Frames are generated and written in blocks of ``--block`` frames, so memory stays small (a few
hundred MB at 1024 x 1024). The file is written to a temporary name and renamed, and an existing
file with the same parameters (attribute ``/bench_params``) is reused.

    python3 bench/make_ct_data.py /work/bench-data/ct-1500x1024x1024.h5 --angles 1500 --rows 1024 --cols 1024
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

FLAT_COUNTS = 20000.0
DARK_COUNTS = 100.0


def objects(rows: int, cols: int):
    """(x, y, z, radius, mu) spheres in pixels about the rotation axis, and the capillary."""
    s = cols / 2.0
    spheres = [(0.0, 0.0, 0.50, 0.42 * s, 0.0020),
               (0.20 * s, 0.10 * s, 0.35, 0.12 * s, 0.0060),
               (-0.25 * s, 0.05 * s, 0.60, 0.10 * s, -0.0015),
               (0.05 * s, -0.28 * s, 0.70, 0.07 * s, 0.0080),
               (-0.10 * s, -0.15 * s, 0.25, 0.05 * s, 0.0100)]
    spheres = [(x, y, z * rows, min(r, 0.45 * rows) if rows < cols else r, mu) for x, y, z, r, mu in spheres]
    capillary = (0.47 * s, 0.44 * s, 0.0010)  # outer radius, inner radius, mu (all rows)
    return spheres, capillary


def projection(theta: float, rows: int, cols: int, center: float, spheres, capillary) -> np.ndarray:
    """Line integrals through the objects at rotation angle ``theta`` (radians), rows x cols."""
    out = np.zeros((rows, cols), np.float32)
    u = np.arange(cols, dtype=np.float32)
    ro, ri, mu = capillary
    d = u - center
    ring = 2 * mu * (np.sqrt(np.maximum(ro * ro - d * d, 0)) - np.sqrt(np.maximum(ri * ri - d * d, 0)))
    out += ring[np.newaxis, :]
    c, s = np.cos(theta), np.sin(theta)
    for x, y, z, r, mu in spheres:
        uc = center + x * c - y * s
        u0, u1 = max(int(uc - r) - 1, 0), min(int(uc + r) + 2, cols)
        v0, v1 = max(int(z - r) - 1, 0), min(int(z + r) + 2, rows)
        if u0 >= u1 or v0 >= v1:
            continue
        du = (np.arange(u0, u1, dtype=np.float32) - uc) ** 2
        dv = (np.arange(v0, v1, dtype=np.float32) - z) ** 2
        out[v0:v1, u0:u1] += 2 * mu * np.sqrt(np.maximum(r * r - dv[:, None] - du[None, :], 0))
    return out


def beam(rows: int, cols: int) -> np.ndarray:
    """Flat-field profile: a broad Gaussian beam with a few fixed vertical stripes."""
    v = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    u = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    profile = np.exp(-(v ** 2) / 2.0 - (u ** 2) / 3.0)
    stripes = 1 + 0.02 * np.sin(np.arange(cols, dtype=np.float32) * 0.37)[None, :]
    return (FLAT_COUNTS * profile * stripes).astype(np.float32)


def make(path: Path, angles: int = 1500, rows: int = 1024, cols: int = 1024, flats: int = 20, darks: int = 20,
         offset: float = 7.25, block: int = 32, seed: int = 0, quiet: bool = False) -> Path:
    path = Path(path)
    params = {"angles": angles, "rows": rows, "cols": cols, "flats": flats, "darks": darks, "offset": offset,
              "seed": seed, "layout": "dxchange", "storage": "chunked (1, rows, cols), uncompressed", "version": 1}
    if path.exists():
        try:
            with h5py.File(path, "r") as handle:
                if json.loads(handle.attrs.get("bench_params", "{}")) == params:
                    return path
        except OSError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (rows, cols + 1021)).astype(np.float32)   # fixed table, shifted per frame
    center = cols / 2.0 + offset
    spheres, capillary = objects(rows, cols)
    flat_field = beam(rows, cols)
    theta = np.linspace(0.0, 180.0, angles, endpoint=False)
    start = time.perf_counter()

    def counts(signal: np.ndarray, k: int) -> np.ndarray:
        shift = (k * 389) % 1021
        sigma = np.sqrt(np.maximum(signal, 1.0))
        return np.clip(signal + sigma * noise[:, shift:shift + cols], 0, 65535).astype(np.uint16)

    with h5py.File(tmp, "w") as handle:
        handle.attrs["bench_params"] = json.dumps(params)
        ex = handle.create_group("exchange")
        opts = dict(chunks=(1, rows, cols), dtype=np.uint16, track_times=False)
        dset = ex.create_dataset("data", (angles, rows, cols), **opts)
        white = ex.create_dataset("data_white", (flats, rows, cols), **opts)
        dark = ex.create_dataset("data_dark", (darks, rows, cols), **opts)
        for k in range(flats):
            white[k] = counts(flat_field + DARK_COUNTS, 10_000 + k)
        for k in range(darks):
            dark[k] = counts(np.full((rows, cols), DARK_COUNTS, np.float32), 20_000 + k)
        buf = np.empty((block, rows, cols), np.uint16)
        for b0 in range(0, angles, block):
            b1 = min(b0 + block, angles)
            for k in range(b0, b1):
                line = projection(np.deg2rad(theta[k]), rows, cols, center, spheres, capillary)
                buf[k - b0] = counts(flat_field * np.exp(-line) + DARK_COUNTS, k)
            dset[b0:b1] = buf[:b1 - b0]
            if not quiet and (b0 // block) % 8 == 0:
                print(f"  frames {b1}/{angles} ({time.perf_counter() - start:.0f} s)", flush=True)
        th = ex.create_dataset("theta", data=theta, track_times=False)
        th.attrs["units"] = "deg"
        handle.create_dataset("implements", data="exchange")
        truth = handle.create_group("truth")
        truth.attrs["center"] = center
    os.replace(tmp, path)
    if not quiet:
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")
    return path


#: The benchmark scans by name: (angles, rows, cols).
SIZES = {"full": (1500, 1024, 1024), "fixed": (900, 32, 512), "tiny": (60, 16, 64)}


def bench_scan(size: str, work_name: str, data_dir: Path | None = None, quiet: bool = True,
               fresh: bool = False) -> tuple[Path, float, Path]:
    """The scan of benchmark size ``size`` (made once), its true rotation centre, and the
    benchmark's work folder ``<data>/work-<work_name>`` (emptied first when ``fresh``)."""
    import shutil

    raw, data = for_size(SIZES[size], data_dir, quiet=quiet)
    work = data / f"work-{work_name}"
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    return raw, true_center(raw), work


def for_size(size: tuple[int, int, int], data_dir: Path | None = None, quiet: bool = True) -> tuple[Path, Path]:
    """The benchmark scan of ``(angles, rows, cols)`` in the data folder (made once): (raw file, folder)."""
    from common import bench_data_dir

    angles, rows, cols = size
    data_dir = (data_dir or bench_data_dir()).resolve()
    return make(data_dir / f"ct-{angles}x{rows}x{cols}.h5", angles, rows, cols, quiet=quiet), data_dir


def true_center(path: Path) -> float:
    with h5py.File(path, "r") as handle:
        return float(handle["/truth"].attrs["center"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--angles", type=int, default=1500)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--flats", type=int, default=20)
    ap.add_argument("--darks", type=int, default=20)
    ap.add_argument("--offset", type=float, default=7.25, help="rotation axis, pixels right of the detector centre")
    ap.add_argument("--block", type=int, default=32, help="frames generated and written at once")
    args = ap.parse_args()
    make(Path(args.out), args.angles, args.rows, args.cols, args.flats, args.darks, args.offset, args.block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
