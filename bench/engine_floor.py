"""The workflow engine's own floor: a one-job Snakemake workflow (the job runs ``touch``) against
a bare ``python -c pass``. Whatever DAISY does, a run through Snakemake costs at least this much
more than a script; it bounds what ``ct_vs_tomopy.py --size fixed`` (A − B) can reach.

    python3 bench/engine_floor.py [--repeats 5]

Snakemake runs from the project's venv, with its 1 s exit timer cancelled in ``onsuccess`` the
way DAISY cancels it (``daisy.workflow.release_scheduler_timers``); ``import snakemake.cli`` is
timed on its own too.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import alternate, median, report, run, timed

SNAKEFILE = '''import threading

rule all:
    input: "done.txt"

rule one:
    output: "done.txt"
    shell: "touch {output}"

onsuccess:
    for timer in threading.enumerate():     # Snakemake's 1 s exit timer, cancelled as DAISY does
        if isinstance(timer, threading.Timer):
            timer.cancel()
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    python = sys.executable
    snakemake = str(Path(python).with_name("snakemake"))
    with tempfile.TemporaryDirectory(prefix="daisy-bench-floor-") as work:
        work = Path(work)
        (work / "Snakefile").write_text(SNAKEFILE)

        def workflow():
            (work / "done.txt").unlink(missing_ok=True)
            shutil.rmtree(work / ".snakemake", ignore_errors=True)
            run([snakemake, "-q", "--cores", "2"], cwd=work)

        engine, bare = alternate(workflow, lambda: run([python, "-c", "pass"]), args.repeats)
        imports = [timed(lambda: run([python, "-c", "import snakemake.cli"])) for _ in range(args.repeats)]
    result = report("engine_floor", "one-job Snakemake workflow", engine, bare, mode="difference",
                    record=not args.no_record, extra={"import_snakemake_cli": imports})
    print(f"import snakemake.cli alone: {median(imports):.3f} s; the engine floor "
          f"{result['difference']:+.3f} s is what a DAISY run costs over a script before any of its own work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
