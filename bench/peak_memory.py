#!/usr/bin/env python3
"""Peak memory: peak RSS of one CT reconstruction (slab) job divided by the size of its slab.

The job is the first slab job DAISY plans for the scan with its default slab sizing
(``slabs.max_memory_mb`` 2048), run in the tomopy image through bench/maxrss.py (ru_maxrss of the
job's Python process). "Slab size" (B) is the raw uint16 slab the job reads: projections + flats +
darks of its detector rows. Also printed: the float32 projections and the volume slab, and the
planner's own estimate (the job's ``mem_mb``, used as Snakemake's ``resources.mem_mb``).

    python3 bench/peak_memory.py --size full
    python3 bench/peak_memory.py --size tiny     # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from common import REPO, first_slab_job, loadavg, report, slab_job
from make_ct_data import SIZES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from daisy import images
    from daisy.workflow import plan

    import make_ct_data

    angles, rows, cols = SIZES[args.size]
    raw, center, work = make_ct_data.bench_scan(args.size, f"peak-{args.size}", args.data_dir, fresh=True)
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": str(work), "threads": args.threads,
           "input": {"file": str(raw), "layout": "dxchange"}, "center": {"method": "manual", "center": center},
           "save": {"previews": False, "compression": "none"}}
    run = plan(cfg)
    name = first_slab_job(run)     # ct_volume when the slabs fit one job (it gathers too)
    doc, (r0, r1) = slab_job(run, center, name)  # the centre as a parameter: no centre job needed
    job = work / "jobs" / f"{name}.json"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(json.dumps(doc))
    h = r1 - r0
    flats = darks = 20
    raw_slab = (angles + flats + darks) * h * cols * 2
    proj32 = angles * h * cols * 4
    vol = h * cols * cols * 4
    rss_file = work / "maxrss.json"
    cmd = images.exec_argv("tomopy", ["python3", REPO / "bench" / "maxrss.py", rss_file, "-m", "daisy_steps",
                                      "run", "--job", job],
                           binds_ro=[REPO / "bench", raw.parent], binds_rw=[work])
    peaks = []
    for _ in range(args.repeats):
        (work / "ct").exists() and shutil.rmtree(work / "ct")
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
        peaks.append(json.loads(rss_file.read_text())["maxrss_bytes"])
    peak = max(peaks)
    mib = 2**20
    print(f"slab {r0}:{r1} ({h} rows of {rows}): raw uint16 slab {raw_slab / mib:.0f} MiB, float32 projections "
          f"{proj32 / mib:.0f} MiB, volume slab {vol / mib:.0f} MiB; planner's mem_mb {run.jobs[name].mem_mb}; "
          f"peak RSS {peak / mib:.0f} MiB = {peak / raw_slab:.2f} x raw slab = {peak / (proj32 + vol):.2f} x "
          f"(float32 projections + volume); load average {loadavg()}")
    report("peak_memory" + ("_tiny" if args.size == "tiny" else ""),
           f"slab {h} rows of {angles}x{rows}x{cols}", [peak / mib], [raw_slab / mib], mode="ratio", unit="MiB",
           target="report", extra={"peak_rss_bytes": peaks, "raw_slab_bytes": raw_slab, "proj_float32_bytes": proj32,
                                   "volume_slab_bytes": vol, "planner_mem_mb": run.jobs[name].mem_mb,
                                   "rows": [r0, r1]},
           record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
