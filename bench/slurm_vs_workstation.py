#!/usr/bin/env python3
"""DAISY through Slurm (profiles/slurm) against the workstation profile, on the same data.

A = `daisy run ct --profile slurm` (the plan's jobs, or a variant: see --variants; per_slab: each
slab its own Slurm job), B = `daisy run ct --profile workstation`, alternating B, A, B, A on the
same raw scan, each run in a fresh working directory. Scans: the CT demo (phantom 128 x 181 x 184,
or --raw FILE), in 2 slabs, and cut into 64 slabs (grouped into jobs by the plan, slabs.per_job
null, unless the variant says otherwise). Reports the medians, the ratio A/B, the per-job overhead
(A - B) / jobs, and checks that every volume is bit-identical to the workstation's.
Target: the 64-slab scan through Slurm <= 1.3 x the workstation wall time on one node.

Needs a running Slurm (`bash scripts/slurm.sh start`) and the images. Records nothing in
docs/benchmarks.md; `--json FILE` writes every run.

    python3 bench/slurm_vs_workstation.py                       # demo + 64 slabs, 2 repeats
    python3 bench/slurm_vs_workstation.py --scans 64 --variants jobs,group16 --repeats 1
    python3 bench/slurm_vs_workstation.py --scans demo --variants jobs,init40   # before/after tuning
    python3 bench/slurm_vs_workstation.py --scans 64 --variants jobs,per_slab --raw /data/ct-1500x1024x1024.h5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: CPUs of a node (one node here): a group job may use this many; without ``--cores`` Snakemake sums
#: the threads of all slabs of a group (16 x 2 = 32 CPUs) and the job never starts
NODE_CPUS = str(os.cpu_count() or 1)
#: Slurm variants: extra snakemake arguments after the profile's, changes to the config's ``slabs``
#: section (the workstation runs the config unchanged: slabs grouped into jobs by the plan), and
#: environment variables of the run
VARIANTS = {
    "jobs": ([], {}, {}),                                                    # the profile as committed
    "per_slab": ([], {"per_job": 1}, {}),                                    # every slab its own Slurm job
    "init40": (["--slurm-init-seconds-before-status-checks", "40"], {}, {}),  # the plugin's default (before)
    "poll2": ([], {}, {"DAISY_SLURM_MAX_STATUS_SECONDS": "2"}),              # a status check every 2 s
    "unbounded": (["--slurm-init-seconds-before-status-checks", "2"], {}, {"DAISY_SLURM_MAX_STATUS_SECONDS": "0"}),
    "group16": (["--groups", "ct_slab=slabs", "--group-components", "slabs=16", "--cores", NODE_CPUS],
                {"per_job": 1}, {}),
    "array": (["--slurm-array-jobs", "ct_slab"], {"per_job": 1}, {}),
}
SCANS = {"demo": 2, "64": 64}


def make_data(folder: Path) -> Path:
    from daisy.demo import make_ct_data

    return make_ct_data(folder, "small")["nxtomo"].resolve()


def write_config(path: Path, raw: Path, slabs: int, changes: dict | None = None) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"config_version": 1, "pipeline": "ct", "outdir": "results/ct", "threads": 2,
                                    "input": {"file": str(raw)}, "stripe": {"method": "fw"},
                                    "slabs": {"count": slabs, **(changes or {})}}))
    return path


def run(config: Path, workdir: Path, profile: str, extra: list[str], env_changes: dict | None = None) -> dict:
    """One `daisy run ct` in a fresh ``workdir``; its wall time and the slurm job ids."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "daisy", "run", "ct", "--config", str(config), "--profile", profile]
    if extra:
        cmd += ["--", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_changes or {})}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{profile} {' '.join(extra)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in sorted((workdir / "results/ct/records").glob("ct_*.json"))]
    slurm_ids = sorted({r.get("slurm", {}).get("job_id") for r in records} - {None})
    busy = sum((r.get("slurm") or {}).get("used", {}).get("elapsed_seconds") or 0 for r in records)
    return {"profile": profile, "extra": extra, "wall_s": round(wall, 2), "jobs": len(records),
            "slurm_jobs": len(slurm_ids), "runner_seconds": round(busy, 2)}


def volume(workdir: Path):
    import h5py
    import hdf5plugin  # noqa: F401

    with h5py.File(workdir / "results/ct/ct/volume.h5") as handle:
        return handle["/entry/data/data"][()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", default="demo,64", help="comma list of: " + ", ".join(SCANS))
    parser.add_argument("--variants", default="jobs,group16", help="Slurm variants: " + ", ".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--raw", help="a raw scan to use instead of the demo phantom (e.g. bench/make_ct_data.py's "
                                      "1500 x 1024 x 1024: 64 slabs of 16 rows)")
    parser.add_argument("--json", help="write every run here")
    args = parser.parse_args()
    import numpy as np

    from bench.common import machine

    if subprocess.run(["bash", str(REPO / "scripts/slurm.sh"), "status"], capture_output=True).returncode:
        raise SystemExit("Slurm is not running: bash scripts/slurm.sh start")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="daisy-slurm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = Path(args.raw).resolve() if args.raw else make_data(work / "data")
    results = {"machine": machine(), "runs": [], "summary": []}
    print(f"machine: {results['machine']['cores']} cores, load {results['machine']['load_avg']}; work {work}")
    for scan in args.scans.split(","):
        walls: dict[str, list[float]] = {}
        reference = None
        for repeat in range(args.repeats):
            for name in ["workstation", *args.variants.split(",")]:
                profile, (extra, changes, env_changes) = ("workstation", ([], {}, {})) if name == "workstation" \
                    else ("slurm", VARIANTS[name])
                config = write_config(work / f"ct-{scan}-{name}.yaml", raw, SCANS[scan], changes)
                out = run(config, work / "runs" / f"{scan}-{name}", profile, extra, env_changes)
                vol = volume(work / "runs" / f"{scan}-{name}")
                if reference is None:
                    reference = vol
                out["identical"] = bool(np.array_equal(vol, reference) and vol.dtype == reference.dtype)
                out.update(scan=scan, variant=name, repeat=repeat)
                results["runs"].append(out)
                walls.setdefault(name, []).append(out["wall_s"])
                print(f"  {scan:>4} {name:11s} #{repeat}: {out['wall_s']:7.1f} s  {out['jobs']} jobs, "
                      f"{out['slurm_jobs']} Slurm jobs, identical={out['identical']}", flush=True)
        base = statistics.median(walls["workstation"])
        for name, values in walls.items():
            med = statistics.median(values)
            jobs = next(r["jobs"] for r in results["runs"] if r["scan"] == scan and r["variant"] == name)
            row = {"scan": scan, "variant": name, "median_s": round(med, 1), "ratio": round(med / base, 2),
                   "overhead_per_job_s": round((med - base) / jobs, 2)}
            results["summary"].append(row)
    print("\n| scan | variant | median wall (s) | / workstation | overhead per job (s) |\n|---|---|---|---|---|")
    for row in results["summary"]:
        print(f"| {row['scan']} | {row['variant']} | {row['median_s']} | {row['ratio']} "
              f"| {row['overhead_per_job_s']} |")
    if not all(r["identical"] for r in results["runs"]):
        print("NOT bit-identical: some Slurm volume differs from the workstation's", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
