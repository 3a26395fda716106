#!/usr/bin/env python3
"""XRD: frames/s of ``daisy run xrd`` (A) against a direct h5py + pyFAI integrate1d script (B).

Same scan (bench/make_xrd_data.py: Eiger-4M master + bitshuffle/LZ4 data files of 100 frames,
made by the sample.xrd_eiger step), same image (pyfai), same geometry (the PONI file), same
method (full/csr/cython), npt, unit 2th_deg, mask (the master's pixel_mask), no polarization,
no error model, 1D only (DAISY: integrate_2d off, previews and .xy off). Same OpenMP threads:
DAISY jobs set OMP_NUM_THREADS to ``threads: T`` and run with ``--cores T`` (one block job at a
time); the direct script gets ``OMP_NUM_THREADS=T`` (the image's default is 1). Block results are
stored uncompressed (``save.compression: none``) — the direct script keeps them in memory and
writes one small .npz. A starts from an empty outdir every time; runs alternate A, B, A, B.

    python3 bench/xrd_vs_pyfai.py --frames 500                    # target A/B (frames/s) >= 0.95
    python3 bench/xrd_vs_pyfai.py --frames 4 --binning 8 --repeats 1   # the CI smoke size

frames/s = frames / wall time of the whole command (process and container start included on both
sides). After the runs the patterns of both are compared.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import h5py
import numpy as np
import yaml

from common import REFERENCE, alternate, bench_data_dir, daisy_runner, json_runner, loadavg, report
from ct_vs_tomopy import breakdown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--binning", type=int, default=1, choices=[1, 2, 4, 8])
    ap.add_argument("--frames-per-block", type=int, default=None,
                    help="frames per DAISY block job (default: the pipeline's default, as shipped)")
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--snakemake-args", default="", help="extra snakemake arguments for DAISY, e.g. --force-use-threads")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from daisy import images

    import make_xrd_data

    data_dir = (args.data_dir or bench_data_dir()).resolve()
    tag = f"{args.frames}" + (f"-bin{args.binning}" if args.binning > 1 else "")
    master, poni = make_xrd_data.make(data_dir / f"xrd-{tag}", args.frames, args.per_file, args.binning)
    work = data_dir / f"work-xrd-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    outdir, direct_dir = work / "daisy-out", work / "direct"
    direct_dir.mkdir(exist_ok=True)
    cfg = {"config_version": 1, "pipeline": "xrd", "outdir": str(outdir), "threads": args.threads,
           "input": {"file": str(master)},
           "integrate": {"geometry": {"poni": str(poni)}, "unit": "2th_deg", "npt": args.npt,
                         "method": ["full", "csr", "cython"], "integrate_2d": False},
           "blocks": {"frames_per_block": args.frames_per_block} if args.frames_per_block else {},
           "save": {"xy": False, "previews": False, "compression": "none"}}
    config = work / "xrd.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    images.verify_image("pyfai")
    daisy_run, stamps = daisy_runner("xrd", config, outdir, args.threads, work, args.snakemake_args)

    npz = direct_dir / "patterns.npz"
    direct_cmd = images.exec_argv(
        "pyfai", ["python3", REFERENCE / "direct_pyfai.py", master, "--poni", poni, "--npt", args.npt,
                  "--unit", "2th_deg", "--method", "full,csr,cython", "--out", npz],
        binds_ro=[REFERENCE, master.parent], binds_rw=[direct_dir], env={"OMP_NUM_THREADS": args.threads})
    direct_run, timings = json_runner(direct_cmd, before=lambda: npz.unlink(missing_ok=True))

    load_before = loadavg()
    print(f"XRD {tag}: {args.frames} frames (binning {args.binning}), npt {args.npt}, {args.threads} OpenMP threads "
          f"both sides, load average {load_before}", flush=True)
    a, b = alternate(daisy_run, direct_run, args.repeats)
    bd = breakdown(outdir, stamps["start"], stamps["end"])
    result = next((outdir / "xrd").glob("*_integrated.h5"))
    with h5py.File(result) as handle:
        ia = handle["/entry/integrate_1d/intensity"][()]
    ref = np.load(npz)
    ib = ref["intensity"]
    same = ia.shape == ib.shape and np.allclose(ia, ib, rtol=1e-5, atol=1e-6, equal_nan=True)
    exact = ia.shape == ib.shape and np.array_equal(ia.astype(np.float32), ib.astype(np.float32), equal_nan=True)
    print(f"  patterns equal: {same} (bit-identical as float32: {exact})")
    print(f"  breakdown of the last DAISY run ({bd['total_s']:.2f} s, {bd['jobs']} jobs): start to 1st job "
          f"{bd['before_first_job_s']:.2f} s, between jobs {bd['between_jobs_s']:.2f} s, after last "
          f"{bd['after_last_job_s']:.2f} s, output hashing {bd['output_hashing_s']:.2f} s; steps {bd['steps_s']}")
    print(f"  direct timing (last run, inside the script): {timings[-1]}")
    fps_a = [args.frames / t for t in a]
    fps_b = [args.frames / t for t in b]
    ratio = statistics.median(fps_a) / statistics.median(fps_b)
    report("xrd_fps" + ("_tiny" if args.frames < 50 else ""),
           f"{args.frames} Eiger-4M frames bin {args.binning}, npt {args.npt}, {args.threads} threads",
           fps_a, fps_b, mode="ratio", unit="frames/s", target=">= 0.95", met=ratio >= 0.95,
           extra={"seconds_a": a, "seconds_b": b, "patterns_equal": bool(same), "bit_identical": bool(exact),
                  "breakdown": bd, "direct_timing": timings, "load_before": load_before,
                  "load_after": loadavg(), "config": cfg},
           record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
