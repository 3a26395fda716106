#!/usr/bin/env python3
"""Per-call overhead of an interactive step in a warm image, against a cold ``apptainer exec``.

A (DAISY interactive): a :class:`daisy.interactive.Session` holds a long-lived
``daisy_steps.serve`` process in the tomopy image with a phantom scan loaded; each call runs one
step on data already in memory. Overhead = the call's wall time on the host minus the step's own
compute time (measured inside the step process): JSON over pipes, parameter validation against the
schema, the copy of an array the step may change in place, bookkeeping. Target: <= 0.05 s.

B (what it replaces): the same step as a job of its own, ``apptainer exec ... python3 -m
daisy_steps run --job job.json`` (``daisy.workflow.run_job_in_image``: digest verified, container
started, Python and the libraries imported, the input read from its file, the step run, the
record written). Overhead = wall time minus the step's compute time from the job's record.

Steps timed: ``ct.angles`` (no compute: the pure overhead), ``ct.minus_log`` (an in-place step on
the whole scan: its input is copied first so that it can be rerun) and ``ct.recon`` on two
sinogram rows (what a centre sweep calls). Median and 90th percentile of ``--calls`` warm calls,
median of ``--cold`` cold ones, alternating warm and cold rounds. Nothing is written to
docs/benchmarks.md; ``--json FILE`` writes the figures.

    python3 bench/interactive_overhead.py [--size 128] [--calls 50] [--cold 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def make_scan(folder: Path, size: int) -> Path:
    from daisy.workflow import run_job_in_image

    raw = folder / f"ct-daisy-{size}.h5"
    if not raw.exists():
        run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": [
            {"step": "sample.ct_phantom", "outputs": {"raw": str(raw)},
             "params": {"size": size, "n_angles": max(90, size + size // 2), "layout": "daisy", "seed": 0}}]},
            folder / "jobs" / "sample.json", folder)
    return raw


CASES = {
    # name: (step, params, bind_in, cold job steps after ct.load of the scan)
    "ct.angles": ("ct.angles", {}, {"proj": "mlog"}, ["ct.angles"]),
    "ct.minus_log": ("ct.minus_log", {}, {"proj": "norm"}, ["ct.normalize", "ct.minus_log"]),
    "ct.recon (2 rows)": ("ct.recon", {"center": None}, {"proj": "rows2", "theta": "theta"},
                          ["ct.normalize", "ct.angles", "ct.minus_log", "ct.recon"]),
}


def cold_call(raw: Path, work: Path, chain: list[str], center: float, rows: tuple[int, int] | None) -> tuple[float, float]:
    """(wall, compute of the last step) of one job run with apptainer exec."""
    from daisy.workflow import run_job_in_image

    load = {"step": "ct.load", "inputs": {"raw": str(raw)}, "params": {"layout": "daisy"}}
    if rows:
        load["params"].update(row_start=rows[0], row_stop=rows[1])
    steps = [load] + [{"step": s, "params": {"center": center} if s == "ct.recon" else {}} for s in chain]
    record = work / "record.json"
    started = time.perf_counter()
    run_job_in_image("tomopy", {"job": "cold", "threads": 2, "steps": steps, "record": str(record)},
                     work / "job.json", work, inputs=(raw,))
    wall = time.perf_counter() - started
    doc = json.loads(record.read_text())
    return wall, float(doc["steps"][-1]["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="phantom edge length (detector rows)")
    parser.add_argument("--calls", type=int, default=50, help="warm calls per step")
    parser.add_argument("--cold", type=int, default=5, help="cold apptainer exec runs per step")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--data", help="folder for the scan (default: a temporary folder)")
    args = parser.parse_args()

    from daisy.interactive import Session

    tmp = tempfile.TemporaryDirectory(prefix="daisy-bench-interactive-")
    data = Path(args.data) if args.data else Path(tmp.name)
    data.mkdir(parents=True, exist_ok=True)
    raw = make_scan(data, args.size)
    work = Path(tmp.name) / "cold"
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"size": args.size, "calls": args.calls, "cold_runs": args.cold, "host_cores": os.cpu_count(),
                     "loadavg": os.getloadavg()[0], "steps": {}}
    with Session(data=[raw], pipeline="ct", threads=2) as s:
        started = time.perf_counter()
        s.execute("ct.load", {"layout": "daisy"}, inputs={"raw": str(raw)})
        figures["first_call_with_process_start_s"] = time.perf_counter() - started
        figures["server_start_s"] = s.servers["tomopy"].start_seconds
        s.execute("ct.normalize", {}, bind_out={"proj": "norm"})
        s.execute("ct.angles", {}, bind_in={"proj": "norm"})
        s.execute("ct.minus_log", {}, bind_in={"proj": "norm"}, bind_out={"proj": "mlog"})
        shape = s.describe()["mlog"]["shape"]
        mid = shape[1] // 2
        s.copy("mlog", "rows2", index=(slice(None), slice(mid - 1, mid + 1)))
        center = shape[2] / 2.0
        pings = []
        for _ in range(args.calls):
            t = time.perf_counter()
            s.servers["tomopy"].request("ping")
            pings.append(time.perf_counter() - t)
        figures["ping_round_trip_median_s"] = statistics.median(pings)
        for name, (step, params, bind_in, chain) in CASES.items():
            params = {**params, "center": center} if step == "ct.recon" else params
            warm, cold = [], []
            rounds = max(1, args.cold)
            per_round = max(1, args.calls // rounds)
            for _ in range(rounds):              # alternate warm and cold rounds
                for _ in range(per_round):
                    call = s.execute(step, params, bind_in=bind_in, bind_out={"recon": "rec"} if step == "ct.recon" else
                                     {"proj": "out"} if step == "ct.minus_log" else {})
                    warm.append((call.seconds, call.compute_seconds))
                if args.cold:
                    cold.append(cold_call(raw, work, chain, center, (mid - 1, mid + 1) if step == "ct.recon" else None))
            over = [w - c for w, c in warm]
            row = {"warm_overhead_median_s": statistics.median(over), "warm_overhead_p90_s": percentile(over, 0.9),
                   "warm_compute_median_s": statistics.median(c for _, c in warm),
                   "warm_wall_median_s": statistics.median(w for w, _ in warm)}
            if cold:
                row.update(cold_wall_median_s=statistics.median(w for w, _ in cold),
                           cold_overhead_median_s=statistics.median(w - c for w, c in cold))
            figures["steps"][name] = row
    figures["target_s"] = 0.05
    figures["met"] = all(r["warm_overhead_median_s"] <= 0.05 for r in figures["steps"].values())

    print(f"interactive step overhead, phantom {args.size}, tomopy image, {args.calls} warm calls, "
          f"{args.cold} cold runs per step (load {figures['loadavg']:.2f}, {os.cpu_count()} cores)")
    print(f"  step process start {figures['server_start_s']:.2f} s; ping round trip "
          f"{figures['ping_round_trip_median_s'] * 1e3:.2f} ms")
    print(f"  {'step':<20} {'warm overhead (median / p90)':>30} {'warm compute':>13} {'cold exec wall':>15} {'cold overhead':>14}")
    for name, r in figures["steps"].items():
        cold_wall = f"{r['cold_wall_median_s']:.2f} s" if "cold_wall_median_s" in r else "-"
        cold_over = f"{r['cold_overhead_median_s']:.2f} s" if "cold_overhead_median_s" in r else "-"
        print(f"  {name:<20} {r['warm_overhead_median_s'] * 1e3:>14.2f} / {r['warm_overhead_p90_s'] * 1e3:.2f} ms"
              f"{r['warm_compute_median_s']:>12.3f} s {cold_wall:>15} {cold_over:>14}")
    print(f"  target: warm overhead <= 0.05 s: {'met' if figures['met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    tmp.cleanup()
    return 0 if figures["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
