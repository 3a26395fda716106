#!/usr/bin/env python3
"""CT: wall time of ``daisy run ct`` (A) against a direct tomopy script in the same image (B).

Same raw file (bench/make_ct_data.py: Data Exchange, uint16, chunked one frame per chunk,
uncompressed), same thread count (DAISY: ``threads: T`` per job and ``--cores T``, so one slab job
at a time with T tomopy threads; direct: ``--threads T``), same operations: flat/dark normalize,
minus-log, gridrec (parzen) at the known rotation centre, float32 volume written to HDF5. DAISY's
centre job uses method ``manual`` (the direct script is given the centre), stripe removal, previews
and TIFF are off on both sides. Output compression is the same on both sides: ``none`` (default)
or ``gzip`` level 4 with shuffle (DAISY's slab default; the direct script is then run through
bench/direct_tomopy_gzip.py). A starts from an empty outdir every time; runs alternate A, B, A, B.

    python3 bench/ct_vs_tomopy.py --size full      # 1500 x 1024 x 1024: ratio, target <= 0.85 (#24)
    python3 bench/ct_vs_tomopy.py --size fixed     # 900 x 32 x 512: fixed cost A - B in seconds, target <= +1.0 s (#24)
    python3 bench/ct_vs_tomopy.py --size tiny --repeats 1   # the CI smoke size
    python3 bench/ct_vs_tomopy.py --size fixed --server off  # every run importing Snakemake itself

A's runs go through a warm DAISY server (daisy/server.py), started before the timed runs as a
user's earlier run would have (and stopped after them), unless ``--server off``.

After the runs the two volumes are compared (bit-identical expected) and the last DAISY run's
time is broken down from its job records (<outdir>/records/*.json) and the run's timestamps.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import yaml

from common import REFERENCE, REPO, DaisyServer, alternate, daisy_runner, json_runner, loadavg, report
from make_ct_data import SIZES



def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def volumes_equal(a: Path, b: Path, block: int = 64) -> tuple[bool, float]:
    """Compare two volumes slice block by slice block (memory stays small); max abs difference."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        da, db = fa["/entry/data/data"], fb["/entry/data/data"]
        if da.shape != db.shape:
            return False, float("inf")
        equal, diff = True, 0.0
        for i in range(0, da.shape[0], block):
            xa, xb = da[i:i + block], db[i:i + block]
            if not np.array_equal(xa, xb):
                equal = False
                diff = max(diff, float(np.nanmax(np.abs(xa.astype(np.float64) - xb))))
        return equal, diff


def breakdown(outdir: Path, t_start: float, t_end: float) -> dict:
    """Where DAISY's seconds went: from the job records' timestamps and per-step seconds."""
    records = []
    for path in sorted((outdir / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        records.append(rec)
    records.sort(key=lambda r: r["started"])
    steps: dict[str, float] = {}
    in_job_setup = hashing = 0.0
    gaps = []
    prev_end = t_start
    jobs = []
    for rec in records:
        s, e = parse_time(rec["started"]), parse_time(rec["ended"])
        gaps.append(s - prev_end)
        prev_end = e
        step_sum = 0.0
        for st in rec["steps"]:
            steps[st["step"]] = steps.get(st["step"], 0.0) + st["seconds"]
            step_sum += st["seconds"]
        first = parse_time(rec["steps"][0]["started"]) if rec["steps"] else s
        last = parse_time(rec["steps"][-1]["ended"]) if rec["steps"] else e
        in_job_setup += first - s
        hashing += e - last
        jobs.append({"job": rec["job"], "seconds": round(e - s, 3), "steps": round(step_sum, 3)})
    total = t_end - t_start
    out = {
        "total_s": round(total, 3),
        "before_first_job_s": round(gaps[0], 3) if gaps else None,
        "between_jobs_s": round(sum(gaps[1:]), 3),
        "after_last_job_s": round(t_end - prev_end, 3),
        "jobs": len(records),
        "in_job_setup_s": round(in_job_setup, 3),
        "output_hashing_s": round(hashing, 3),
        "steps_s": {k: round(v, 3) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])},
        "per_job": jobs,
    }
    return out


def print_breakdown(bd: dict) -> None:
    print(f"  breakdown of the last DAISY run ({bd['total_s']:.2f} s, {bd['jobs']} jobs):")
    print(f"    daisy CLI + snakemake start/DAG + job-file rules + 1st container start/imports: {bd['before_first_job_s']:.2f} s")
    print(f"    between jobs (snakemake scheduling, container start, imports, validation): {bd['between_jobs_s']:.2f} s")
    print(f"    after the last job (provenance rule, snakemake exit): {bd['after_last_job_s']:.2f} s")
    print(f"    inside jobs, before the first step: {bd['in_job_setup_s']:.2f} s; output sha256 + record: {bd['output_hashing_s']:.2f} s")
    for name, sec in bd["steps_s"].items():
        print(f"    step {name:20s} {sec:8.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="fixed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compression", choices=["none", "gzip"], default="none")
    ap.add_argument("--slabs", type=int, default=None, help="slab count (default: DAISY's max_memory_mb sizing)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--mode", choices=["ratio", "difference"], default=None,
                    help="default: ratio for full, difference for fixed and tiny")
    ap.add_argument("--snakemake-args", default="", help="extra snakemake arguments for DAISY, e.g. --force-use-threads")
    ap.add_argument("--server", choices=["on", "off"], default="on",
                    help="A's runs through a warm DAISY server (started before the timed runs, as an earlier run "
                         "would have) or each importing Snakemake itself")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from daisy import images

    import make_ct_data

    angles, rows, cols = SIZES[args.size]
    tag = f"{args.size}-{args.compression}" + ("-sm" if args.snakemake_args else "")
    raw, center, work = make_ct_data.bench_scan(args.size, f"ct-{tag}", args.data_dir, quiet=False)
    outdir = work / "daisy-out"
    direct_dir = work / "direct"
    direct_dir.mkdir(exist_ok=True)
    gzip = args.compression == "gzip"
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": str(outdir), "threads": args.threads,
           "input": {"file": str(raw), "layout": "dxchange"}, "stripe": {"method": "none"},
           "center": {"method": "manual", "center": center}, "recon": {"algorithm": "gridrec"},
           "save": {"previews": False, "tiff": False, "compression": args.compression, "gzip_level": 4}}
    if args.slabs:
        cfg["slabs"] = {"count": args.slabs}
    config = work / "ct.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in ("tomopy", "base"):
        images.verify_image(name)

    daisy_run, stamps = daisy_runner("ct", config, outdir, args.threads, work, args.snakemake_args)

    script = REPO / "bench" / "direct_tomopy_gzip.py" if gzip else REFERENCE / "direct_tomopy.py"
    direct_out = direct_dir / "volume.h5"
    rss_file = direct_dir / "maxrss.json"
    direct_cmd = images.exec_argv(
        "tomopy", ["python3", REPO / "bench" / "maxrss.py", rss_file, script, raw, direct_out,
                   "--center", repr(center), "--threads", args.threads],
        binds_ro=[REPO / "bench", REFERENCE, raw.parent], binds_rw=[direct_dir])
    direct_run, direct_phases = json_runner(direct_cmd, before=lambda: direct_out.unlink(missing_ok=True))

    load_before = loadavg()
    print(f"CT {tag}: {raw.name} ({raw.stat().st_size / 2**30:.2f} GiB), centre {center}, {args.threads} threads "
          f"both sides, compression {args.compression}, DAISY server {args.server}, load average {load_before}",
          flush=True)
    with DaisyServer(args.server == "on"):
        a, b = alternate(daisy_run, direct_run, args.repeats)
    bd = breakdown(outdir, stamps["start"], stamps["end"])
    equal, diff = volumes_equal(outdir / "ct" / "volume.h5", direct_out)
    print(f"  volumes bit-identical: {equal}" + ("" if equal else f" (max abs difference {diff:.3g})"))
    print_breakdown(bd)
    print(f"  direct phases (last run): {direct_phases[-1]['seconds']}")
    direct_rss = json.loads(rss_file.read_text())["maxrss_bytes"]
    mode = args.mode or ("ratio" if args.size == "full" else "difference")
    if mode == "ratio":
        ratio = statistics.median(a) / statistics.median(b)
        target, met = "<= 0.85", ratio <= 0.85
    elif args.size == "fixed":
        diff = statistics.median(a) - statistics.median(b)
        target, met = "<= +1.0 s", diff <= 1.0
    else:
        target, met = "report", None
    name = f"ct_{'ratio' if mode == 'ratio' else 'fixed_cost'}" + ("_gzip" if gzip else "")
    if args.snakemake_args:
        name += "_" + "".join(c for c in args.snakemake_args if c.isalnum() or c == "-").strip("-").replace("--", "_")
    if args.size == "tiny":
        name += "_tiny"
    if args.server == "off":
        name += "_no_server"
    report(name, f"{angles}x{rows}x{cols} uint16, {args.threads} threads, {args.compression}", a, b, mode=mode,
           target=target, met=met,
           extra={"volumes_identical": equal, "snakemake_args": args.snakemake_args, "breakdown": bd, "direct_phases": direct_phases,
                  "direct_peak_rss_bytes": direct_rss, "load_before": load_before, "load_after": loadavg(),
                  "daisy_server": args.server,
                  "config": cfg},
           record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
