#!/usr/bin/env python3
"""XRD batches: one ``daisy run xrd`` over S scans (A) against the same S scans run one
``daisy run xrd`` at a time (B).

Data: one Eiger-4M scan of F frames (bench/make_xrd_data.py: bitshuffle/LZ4 data files made by
the sample.xrd_eiger step), and S-1 more master files that are copies of its master (same links,
so the same data files): S scans named scan_00001 ... that read identical frames. Same config on
both sides (PONI geometry, full/csr/cython, npt, 1D only, no previews, uncompressed results), same
``--cores C`` and ``threads: T`` per job; B runs its S configs one after the other, each a
complete ``daisy run`` (planning, image checks, Snakemake, provenance). A runs the batch config
(``input.scans: <folder>/*_master.h5``): scans' blocks in parallel, one gather per scan, the summary.
Runs alternate A, B(all S), A, B, ...; each starts from empty outdirs.

    python3 bench/xrd_batch.py --scans 20 --frames 50          # target A <= 0.8 x B
    python3 bench/xrd_batch.py --scans 3 --frames 2 --binning 8 --repeats 1   # smoke size

After the runs, every scan's patterns from A are compared with B's (they must be identical).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from common import alternate, bench_data_dir, daisy_python, loadavg, report, run


def make_scans(folder: Path, scans: int, frames: int, binning: int) -> list[Path]:
    """scan_00001_master.h5 (made once) and copies scan_00002_master.h5 ... linking its data files."""
    import make_xrd_data

    master, poni = make_xrd_data.make(folder, frames, min(frames, 100), binning)
    masters = [master]
    for i in range(2, scans + 1):
        copy = folder / f"scan_{i:05d}_master.h5"
        if not copy.exists() or copy.stat().st_mtime < master.stat().st_mtime:
            shutil.copy(master, copy)
        masters.append(copy)
    for extra in folder.glob("scan_*_master.h5"):
        if extra not in masters and extra.name != master.name:
            extra.unlink()
    return masters


def config(outdir: Path, poni: Path, threads: int, npt: int, **inp) -> dict:
    return {"config_version": 1, "pipeline": "xrd", "outdir": str(outdir), "threads": threads, "input": inp,
            "integrate": {"geometry": {"poni": str(poni)}, "unit": "2th_deg", "npt": npt,
                          "method": ["full", "csr", "cython"], "integrate_2d": False},
            "save": {"xy": False, "previews": False, "compression": "none"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--frames", type=int, default=50, help="frames per scan")
    ap.add_argument("--binning", type=int, default=1, choices=[1, 2, 4, 8])
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--cores", type=int, default=4, help="snakemake --cores on both sides")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads per job (config 'threads')")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from daisy import images

    data_dir = (args.data_dir or bench_data_dir()).resolve()
    tag = f"{args.scans}x{args.frames}" + (f"-bin{args.binning}" if args.binning > 1 else "")
    folder = data_dir / (f"xrd-batch-{args.frames}" + (f"-bin{args.binning}" if args.binning > 1 else ""))
    masters = make_scans(folder, args.scans, args.frames, args.binning)
    poni = folder / "scan_00001.poni"
    work = data_dir / f"work-xrd-batch-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    batch_out, single_root = work / "batch-out", work / "single-out"
    batch_cfg = work / "batch.yaml"
    batch_cfg.write_text(yaml.safe_dump(config(batch_out, poni, args.threads, args.npt,
                                               scans=str(folder / "scan_*_master.h5")), sort_keys=False))
    singles = []
    for master in masters:
        name = master.stem.removesuffix("_master")
        path = work / f"single-{name}.yaml"
        path.write_text(yaml.safe_dump(config(single_root / name, poni, args.threads, args.npt, file=str(master)),
                                       sort_keys=False))
        singles.append(path)
    images.verify_image("pyfai")

    def daisy(cfg: Path) -> None:
        run([daisy_python(), "-m", "daisy", "run", "xrd", "--config", cfg, "--cores", args.cores], cwd=work)

    def batch_run() -> None:
        shutil.rmtree(batch_out, ignore_errors=True)
        daisy(batch_cfg)

    def singles_run() -> None:
        shutil.rmtree(single_root, ignore_errors=True)
        for cfg in singles:
            daisy(cfg)

    load_before = loadavg()
    print(f"XRD batch {tag}: {args.scans} scans x {args.frames} frames (binning {args.binning}), npt {args.npt}, "
          f"--cores {args.cores}, threads {args.threads}; load average {load_before}", flush=True)
    clock = time.perf_counter()
    a, b = alternate(batch_run, singles_run, args.repeats)
    same = True
    for master in masters:
        name = master.stem.removesuffix("_master")
        with h5py.File(batch_out / "xrd" / f"{name}_integrated.h5") as ha, \
                h5py.File(single_root / name / "xrd" / f"{name}_integrated.h5") as hb:
            same &= np.array_equal(ha["/entry/integrate_1d/intensity"][()], hb["/entry/integrate_1d/intensity"][()])
    print(f"  every scan's patterns identical in A and B: {same}; bench took {time.perf_counter() - clock:.0f} s")
    ratio = statistics.median(a) / statistics.median(b)
    report("xrd_batch" + ("_tiny" if args.frames * args.scans < 100 else ""),
           f"{args.scans} scans x {args.frames} Eiger-4M frames bin {args.binning}, npt {args.npt}, "
           f"--cores {args.cores}, {args.threads} threads/job",
           a, b, mode="ratio", unit="s", target="<= 0.8", met=ratio <= 0.8,
           extra={"patterns_identical": bool(same), "load_before": load_before, "load_after": loadavg()},
           record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
