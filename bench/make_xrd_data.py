#!/usr/bin/env python3
"""An Eiger-4M calibrant scan for the XRD benchmark, made by DAISY's own ``sample.xrd_eiger`` step
in the pyfai image: master file ``scan_00001_master.h5`` (geometry, pixel_mask) linking data files
``scan_00001_data_NNNNNN.h5`` of ``--per-file`` frames each, bitshuffle/LZ4 chunks of one frame,
uint32, Poisson noise per frame, and the PONI file of the true geometry.

The step draws every frame (about 0.3 s per full 2167 x 2070 frame), so 500 frames take a few
minutes once; an existing scan with the same parameters is reused.

    python3 bench/make_xrd_data.py /work/bench-data/xrd-500 --frames 500 [--binning 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import REPO  # noqa: F401  (puts the repository on sys.path)


def make(folder: Path, frames: int = 500, per_file: int = 100, binning: int = 1, seed: int = 0,
         quiet: bool = False) -> tuple[Path, Path]:
    from daisy.workflow import run_job_in_image

    folder = Path(folder).resolve()
    master, poni = folder / "scan_00001_master.h5", folder / "scan_00001.poni"
    params = {"n_frames": frames, "frames_per_file": per_file, "binning": binning, "seed": seed,
              "compression": "bitshuffle-lz4", "dtype": "uint32"}
    stamp = folder / "bench_params.json"
    if master.exists() and poni.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return master, poni
    for old in folder.glob("scan_00001_*"):
        old.unlink()
    start = time.perf_counter()
    steps = [{"step": "sample.xrd_eiger", "outputs": {"scan": str(master), "poni": str(poni)}, "params": params}]
    run_job_in_image("pyfai", {"job": "bench_xrd_data", "threads": 2, "steps": steps,
                               "record": str(folder / "records" / "bench_xrd_data.json")},
                     folder / "jobs" / "bench_xrd_data.json", folder)
    stamp.write_text(json.dumps(params))
    if not quiet:
        size = sum(p.stat().st_size for p in folder.glob("scan_00001_*.h5")) / 2**30
        print(f"wrote {master} (+ data files, {size:.2f} GiB) in {time.perf_counter() - start:.0f} s")
    return master, poni


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--binning", type=int, default=1, choices=[1, 2, 4, 8])
    args = ap.parse_args()
    make(Path(args.folder), args.frames, args.per_file, args.binning)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
