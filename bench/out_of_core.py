#!/usr/bin/env python3
"""Out of core: ``daisy run ct`` on a scan 3x larger than each job's enforced memory limit must
complete and give a volume bit-identical to an in-memory run (the direct tomopy script, one
process holding the whole scan).

Enforcement: the kernel's address-space limit (RLIMIT_AS, ``ulimit -v``) on every job's process
inside its container. ``prlimit`` cannot go on snakemake or on ``apptainer`` itself (the Go
starter reserves more address space than the limit and aborts), and apptainer's ``--memory``
needs a systemd cgroup manager this host lacks. So a shim named ``apptainer`` is put first on
PATH: it calls the real apptainer with ``prlimit --as=LIMIT --`` inserted after the image, so the
job's shell and its ``python3 -m daisy_steps`` (and tomopy's threads) run under the limit; every
call is logged. RLIMIT_AS counts all mapped memory (libraries, thread stacks, malloc arenas), so
it is stricter than a resident-memory (cgroup) limit. A negative control runs one slab job planned
by DAISY's default sizing (max_memory_mb 2048) under the same limit and must fail.

    python3 bench/out_of_core.py --size full --limit-mib 1024 --slab-height 16
    python3 bench/out_of_core.py --size tiny --limit-mib 1024 --slab-height 4   # smoke

Reported: A = DAISY wall time under the limit, B = the same DAISY run in memory (default slab
sizing, no limit), in the same session; ratio; the bytes the run read (provenance ``io``) against
the raw file; met = completed, bit-identical, ratio ≤ 1.3 and bytes read ≤ 2 x the raw file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import yaml

from common import daisy_python, loadavg, report, run, slab_job, timed
from ct_vs_tomopy import volumes_equal
from make_ct_data import SIZES

SHIM = """#!/bin/bash
# apptainer shim (bench/out_of_core.py): run the container's command under prlimit --as
args=()
done=0
for a in "$@"; do
  args+=("$a")
  if [ $done = 0 ] && [[ "$a" == *.sif ]]; then args+=(prlimit "--as=$DAISY_BENCH_AS_LIMIT" --); done=1; fi
done
[ $done = 1 ] && echo "$(date +%T) limited to $DAISY_BENCH_AS_LIMIT bytes: ${args[*]: -3}" >> "$DAISY_BENCH_SHIM_LOG"
exec @REAL@ "${args[@]}"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--limit-mib", type=int, default=1024, help="RLIMIT_AS of each job (MiB)")
    ap.add_argument("--slab-height", type=int, default=16, help="detector rows per slab job")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--no-control", action="store_true", help="skip the negative control")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from daisy import images

    import make_ct_data

    angles, rows, cols = SIZES[args.size]
    raw, center, work = make_ct_data.bench_scan(args.size, f"ooc-{args.size}", args.data_dir)
    limit = args.limit_mib * 2**20
    raw_bytes = raw.stat().st_size
    shutil.rmtree(work / "daisy-out", ignore_errors=True)
    shim_dir = work / "shim"
    shim_dir.mkdir(exist_ok=True)
    shim = shim_dir / "apptainer"
    shim.write_text(SHIM.replace("@REAL@", shutil.which("apptainer")))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log = work / "shim.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}", "DAISY_BENCH_AS_LIMIT": str(limit),
           "DAISY_BENCH_SHIM_LOG": str(log)}
    print(f"out of core: {raw.name} {raw_bytes / 2**30:.2f} GiB raw = {raw_bytes / limit:.1f} x the per-job limit "
          f"(RLIMIT_AS {args.limit_mib} MiB); slabs of {args.slab_height} rows; load average {loadavg()}", flush=True)

    # negative control: a slab job of DAISY's default size under the same limit must fail
    control = None
    if not args.no_control:
        from daisy.workflow import plan

        cfg0 = {"config_version": 1, "pipeline": "ct", "outdir": str(work / "control"), "threads": args.threads,
                "input": {"file": str(raw), "layout": "dxchange"}, "center": {"method": "manual", "center": center},
                "save": {"previews": False, "compression": "none"}}
        doc, (r0, r1) = slab_job(plan(cfg0), center)
        job = work / "control" / "jobs" / "control.json"
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(json.dumps(doc))
        cmd = images.exec_argv("tomopy", ["prlimit", f"--as={limit}", "--", "python3", "-m", "daisy_steps", "run",
                                          "--job", job], binds_ro=[raw.parent], binds_rw=[work / "control"])
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "Memory" in ln or "daisy step" in ln]
        control = {"rows": r1 - r0, "exit": proc.returncode, "message": (lines or ["(none)"])[-1][:300]}
        print(f"  negative control: default-size slab ({r1 - r0} rows) under the limit -> exit {proc.returncode}: "
              f"{control['message']}", flush=True)

    cfg = {"config_version": 1, "pipeline": "ct", "outdir": str(work / "daisy-out"), "threads": args.threads,
           "input": {"file": str(raw), "layout": "dxchange"}, "stripe": {"method": "none"},
           "center": {"method": "manual", "center": center}, "recon": {"algorithm": "gridrec"},
           "slabs": {"height": args.slab_height}, "save": {"previews": False, "tiff": False, "compression": "none"}}
    config = work / "ct.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    a = timed(lambda: run([daisy_python(), "-m", "daisy", "run", "ct", "--config", config, "--cores", args.threads],
                          cwd=work, env=env))
    limited = log.read_text().splitlines() if log.exists() else []
    print(f"  DAISY under the limit: {a:.1f} s, {len(limited)} container calls limited (log {log})", flush=True)

    # B: the same run in memory (DAISY's default slab sizing, no limit), in the same session
    mem_cfg = dict(cfg, outdir=str(work / "daisy-mem"), slabs={})
    mem_config = work / "ct-in-memory.yaml"
    mem_config.write_text(yaml.safe_dump(mem_cfg, sort_keys=False))
    shutil.rmtree(work / "daisy-mem", ignore_errors=True)
    b = timed(lambda: run([daisy_python(), "-m", "daisy", "run", "ct", "--config", mem_config, "--cores",
                           args.threads], cwd=work))
    mem_slabs = len(list((work / "daisy-mem" / "ct" / "slabs").glob("slab_*.h5")))
    print(f"  DAISY in memory: {b:.1f} s, {mem_slabs} slab jobs", flush=True)
    equal, diff = volumes_equal(work / "daisy-out" / "ct" / "volume.h5", work / "daisy-mem" / "ct" / "volume.h5")
    ref = work.parent / f"work-ct-{args.size}-none" / "direct" / "volume.h5"   # the direct script's, if there
    direct_equal = volumes_equal(work / "daisy-out" / "ct" / "volume.h5", ref)[0] if ref.exists() else None
    slabs = len(list((work / "daisy-out" / "ct" / "slabs").glob("slab_*.h5")))
    io = json.loads((work / "daisy-out" / "provenance.json").read_text())["io"]
    mem_io = json.loads((work / "daisy-mem" / "provenance.json").read_text())["io"]
    read_ratio = io["bytes_read"] / raw_bytes
    print(f"  {slabs} slab jobs; volume bit-identical to the in-memory run: {equal}"
          + ("" if equal else f" (max abs difference {diff:.3g})")
          + ("" if direct_equal is None else f"; to the direct script's: {direct_equal}"))
    print(f"  bytes read: {io['bytes_read'] / 2**30:.2f} GiB = {read_ratio:.2f} x the raw file "
          f"(in memory: {mem_io['bytes_read'] / 2**30:.2f} GiB)", flush=True)
    control_ok = control is None or control["exit"] != 0
    report("out_of_core" + ("_tiny" if args.size == "tiny" else ""),
           f"{angles}x{rows}x{cols} raw {raw_bytes / 2**30:.2f} GiB, RLIMIT_AS {args.limit_mib} MiB/job, "
           f"{slabs} slabs vs {mem_slabs} in memory", a, b, mode="ratio", target="≤ 1.3, identical, read ≤ 2 x raw",
           met=bool(equal and control_ok and a / b <= 1.3 and read_ratio <= 2),
           extra={"identical": equal, "identical_to_direct": direct_equal, "limit_bytes": limit,
                  "raw_bytes": raw_bytes, "bytes_read": io["bytes_read"], "read_ratio": read_ratio,
                  "in_memory_bytes_read": mem_io["bytes_read"], "slab_jobs": slabs, "in_memory_slab_jobs": mem_slabs,
                  "limited_calls": len(limited), "negative_control": control},
           record=not args.no_record)
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
