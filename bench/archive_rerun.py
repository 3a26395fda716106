#!/usr/bin/env python3
"""Archive and rerun: what ``daisy archive --with-images --with-inputs`` and ``daisy rerun`` cost
on the CT demo run (``daisy demo`` data: tomopy's Shepp-Logan phantom, small 128^3 x 181 angles
or medium 256^3 x 361).

One ``daisy run ct`` (timed), its archive with images and inputs (timed; size against the
outputs, images and inputs it holds), and one ``daisy rerun`` of it in a new folder (timed, split
into extraction + validation, restoring, pipeline and comparison, from the rerun's report). Prints
one JSON object; the ratio ``rerun_pipeline_over_run`` compares the rerun's pipeline with the
original run. Records nothing in docs/benchmarks.md.

    python3 bench/archive_rerun.py [--size small|medium] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from common import REPO, bench_data_dir, daisy_python, machine, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["small", "medium"], default="small")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: $DAISY_BENCH_DATA/archive-rerun")
    ap.add_argument("--keep", action="store_true", help="keep the archive and the rerun folder")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from daisy.demo import make_ct_data

    work = (args.data_dir or bench_data_dir() / "archive-rerun") / args.size
    raw = make_ct_data(work / "data", args.size)["nxtomo"]          # made once, then reused
    config = work / "ct.yaml"
    config.write_text(yaml.safe_dump({"config_version": 1, "pipeline": "ct", "outdir": "results/ct", "threads": 2,
                                      "input": {"file": str(raw.relative_to(work))}, "stripe": {"method": "fw"},
                                      "slabs": {"count": 2}}))
    outdir, archive, rerun_dir = work / "results" / "ct", work / "ct-run.tar", work / "rerun"
    for path in (outdir, rerun_dir):
        shutil.rmtree(path, ignore_errors=True)
    archive.unlink(missing_ok=True)

    python = daisy_python()
    start = time.perf_counter()
    run([python, "-m", "daisy", "run", "ct", "--config", config, "--cores", 2], cwd=work)
    run_s = time.perf_counter() - start
    prov = json.loads((outdir / "provenance.json").read_text())

    start = time.perf_counter()
    run([python, "-m", "daisy.archive_cli", "archive", outdir, "-o", archive, "--with-images", "--with-inputs"], cwd=work)
    archive_s = time.perf_counter() - start

    start = time.perf_counter()
    proc = run([python, "-m", "daisy.archive_cli", "rerun", archive, "--workdir", rerun_dir, "--cores", 2], cwd=work)
    rerun_s = time.perf_counter() - start
    report = json.loads((rerun_dir / "rerun-report.json").read_text())
    t = report["timings"]

    outputs = sum(info["size"] for info in prov["outputs"].values())
    images = sum(info.get("size_bytes") or 0 for info in prov["images"].values())
    inputs = sum(info["size"] for info in prov["inputs"].values())
    workflow = sum(info["size"] for info in prov["workflow_files"].values())
    run_folder = sum(p.stat().st_size for p in outdir.rglob("*") if p.is_file())
    size = archive.stat().st_size
    result = {
        "benchmark": "archive_rerun", "size": args.size, "scan": str(raw), "jobs": len(prov["jobs"]),
        "run_s": round(run_s, 2),
        "archive_s": round(archive_s, 2),
        "archive_bytes": size,
        "contents_bytes": {"outputs": outputs, "run_folder": run_folder, "images": images, "inputs": inputs,
                           "workflow": workflow},
        "archive_over_outputs_images_inputs": round(size / (outputs + images + inputs), 4),
        "archive_overhead_bytes": size - (run_folder + images + inputs + workflow),   # tar headers, tag files
        "rerun_s": round(rerun_s, 2),
        "rerun_split_s": {"extract_validate": round(t["extract_validate_s"], 2), "restore": round(t["restore_s"], 2),
                          "pipeline": round(t["pipeline_s"], 2), "compare": round(t["compare_s"], 2)},
        "rerun_pipeline_over_run": round(t["pipeline_s"] / run_s, 3),
        "verdict": report["verdict"], "counts": report["counts"],
        "machine": machine(),
    }
    if not args.keep:
        shutil.rmtree(rerun_dir, ignore_errors=True)
        archive.unlink(missing_ok=True)
    print(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    return 0 if report["verdict"] == "identical" else 1


if __name__ == "__main__":
    sys.exit(main())
