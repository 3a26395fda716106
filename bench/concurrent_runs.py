#!/usr/bin/env python3
"""Concurrent runs: N ``daisy run ct`` at once on different outdirs, sharing one image cache and
its hash cache (A: wall time of all N together), against the same N runs one after the other
(B: their total wall time). Reports A/B (below 1: running them together gains) and checks that
every concurrent run's outputs equal the serial runs' (HDF5 by content without the NXprocess
groups, previews byte for byte) and that the shared hash cache is whole afterwards.

Uses the CT benchmark scan (bench/make_ct_data.py; ``fixed`` is 900 x 32 x 512) with the true
centre given (``center.method manual``: the outputs then name no outdir path, so runs in
different outdirs are comparable). ``--fresh-cache``: a new image cache holding hard links to
the images, so that every run hashes them and writes the one hash cache at the same time (the
worst case for the cache; otherwise the digests come from the user's warm cache).

    python3 bench/concurrent_runs.py [--size fixed|tiny|full] [--runs 4] [--fresh-cache] [--algorithm fbp] [--no-record]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import REPO, daisy_python, report


def outputs(outdir: Path) -> dict[str, str]:
    from daisy_steps.nxprocess import content_digest

    found = {}
    for path in sorted((outdir / "ct").rglob("*")):
        if path.is_file():
            found[str(path.relative_to(outdir))] = (content_digest(path, "skip") if path.suffix == ".h5"
                                                    else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def fresh_cache(folder: Path) -> Path:
    """A fresh image cache with the images hard-linked in (the tests' helper)."""
    sys.path.insert(0, str(REPO))
    from tests.workflow_helpers import image_cache_with

    return image_cache_with(folder / "shared-cache")


def start(config: Path, cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([daisy_python(), "-m", "daisy", "run", "ct", "--config", str(config)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(procs: list[subprocess.Popen], what: str) -> None:
    for i, proc in enumerate(procs):
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{what} run {i} failed ({proc.returncode}):\n{err[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "fixed", "full"], default="fixed")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--slabs", type=int, default=2)
    ap.add_argument("--fresh-cache", action="store_true")
    ap.add_argument("--algorithm", default="gridrec", help="ct.recon algorithm (gridrec, fbp, sirt, mlem)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import make_ct_data

    raw, center, work = make_ct_data.bench_scan(args.size, f"concurrent-{args.size}", args.data_dir, fresh=True)
    configs = []
    for i in range(args.runs):
        cfg = {"config_version": 1, "pipeline": "ct", "outdir": f"run{i}", "threads": 1,
               "input": {"file": str(raw), "layout": "dxchange"}, "slabs": {"count": args.slabs},
               "center": {"method": "manual", "center": center}, "recon": {"algorithm": args.algorithm}}
        path = work / f"run{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        configs.append(path)
    env = dict(os.environ)

    serial_times = []
    for config in configs:                                  # B: one after the other
        clock = time.perf_counter()
        finish([start(config, work, env)], "serial")
        serial_times.append(time.perf_counter() - clock)
    expected = outputs(work / "run0")
    serial_same = all(outputs(work / f"run{i}") == expected for i in range(args.runs))
    for i in range(args.runs):
        shutil.rmtree(work / f"run{i}")

    if args.fresh_cache:
        env["DAISY_IMAGE_CACHE"] = str(fresh_cache(work))
    clock = time.perf_counter()                             # A: all at once
    finish([start(config, work, env) for config in configs], "concurrent")
    concurrent = time.perf_counter() - clock
    same = all(outputs(work / f"run{i}") == expected for i in range(args.runs))
    cache = Path(env.get("DAISY_IMAGE_CACHE") or Path.home() / ".cache" / "daisy" / "images")
    try:
        cache_ok = isinstance(json.loads((cache / "sha256-cache.json").read_text()), dict)
    except (OSError, ValueError):
        cache_ok = False
    print(f"{args.runs} runs of {args.size}: serial total {sum(serial_times):.2f} s "
          f"(each {', '.join(f'{t:.2f}' for t in serial_times)} s), concurrent {concurrent:.2f} s; "
          f"outputs equal to the serial runs: {same} (serial runs agree: {serial_same}); "
          f"hash cache whole: {cache_ok}; fresh cache: {args.fresh_cache}")
    report("concurrent_runs", f"{args.size} x{args.runs} {args.algorithm}{' fresh-cache' if args.fresh_cache else ''}",
           concurrent, sum(serial_times), target="A/B <= 1, outputs identical",
           met=bool(same and cache_ok and concurrent <= sum(serial_times)), record=not args.no_record,
           extra={"serial_runs": serial_times, "outputs_identical": same, "hash_cache_whole": cache_ok})
    return 0 if same and cache_ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
