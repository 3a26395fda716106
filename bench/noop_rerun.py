#!/usr/bin/env python3
"""No-op rerun: ``daisy run ct`` again when every output is up to date (A), against the floor of
any ``daisy`` command, ``python -m daisy --version`` (B). Target: A <= 2 s.

Uses the CT fixed-cost scan (900 x 32 x 512, bench/make_ct_data.py); one full run first.
Also times, once each, the parts of A: the CLI's planning (config validation, plan, image
digests) alone, and snakemake's start (``snakemake --version``).

    python3 bench/noop_rerun.py [--size fixed|tiny] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

from common import REPO, alternate, daisy_python, loadavg, report, run, timed



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["fixed", "tiny"], default="fixed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    import make_ct_data

    angles, rows, cols = make_ct_data.SIZES[args.size]
    raw, center, work = make_ct_data.bench_scan(args.size, f"noop-{args.size}", args.data_dir)
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": str(work / "daisy-out"), "threads": 2,
           "input": {"file": str(raw), "layout": "dxchange"},
           "center": {"method": "manual", "center": center}}
    config = work / "ct.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    daisy = [daisy_python(), "-m", "daisy"]
    first = timed(lambda: run([*daisy, "run", "ct", "--config", config, "--cores", 2], cwd=work))
    print(f"first run (computes everything): {first:.2f} s; load average {loadavg()}", flush=True)
    outputs = {"out": ""}

    def noop():
        proc = run([*daisy, "run", "ct", "--config", config, "--cores", 2], cwd=work)
        outputs["out"] = proc.stdout + proc.stderr

    a, b = alternate(noop, lambda: run([*daisy, "--version"]), args.repeats)
    if "Nothing to be done" not in outputs["out"] and "nothing to be done" not in outputs["out"].lower():
        print("  warning: snakemake did not report 'Nothing to be done':\n" + outputs["out"][-1500:])
    plan_s = timed(lambda: run([daisy_python(), "-c",
                                "import sys; sys.path.insert(0, sys.argv[1]); from daisy import images, workflow; "
                                "from pathlib import Path; "
                                "r = workflow.plan(workflow.read_config(Path(sys.argv[2])), pipeline='ct'); "
                                "[images.verify_image(n) for n in r.images()]",
                                REPO, config], cwd=work))
    snakemake_s = timed(lambda: run([daisy_python(), "-m", "snakemake", "--version"]))
    dry_s = timed(lambda: run([*daisy, "run", "ct", "--config", config, "--cores", 2, "--dry-run"], cwd=work))
    parts = {"cli_plan_and_verify_s": round(plan_s, 3), "snakemake_version_s": round(snakemake_s, 3),
             "dry_run_s": round(dry_s, 3)}
    print(f"  parts (once each): CLI plan + image verify {plan_s:.2f} s (python start included), "
          f"snakemake --version {snakemake_s:.2f} s, daisy run --dry-run {dry_s:.2f} s")
    med = statistics.median(a)
    report("noop_rerun" + ("_tiny" if args.size == "tiny" else ""), f"ct {angles}x{rows}x{cols}, up to date",
           a, b, mode="difference", target="A <= 2 s", met=med <= 2.0,
           extra={"parts": parts, "first_run_s": first}, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
