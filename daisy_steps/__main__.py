"""``python3 -m daisy_steps <step> --job job.json`` | ``run --job job.json`` | ``list``."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from .core import load_job, run_job
from .errors import StepError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m daisy_steps", description=__doc__)
    parser.add_argument("step", help="a step name (see 'list'), or 'run' for a job file with a chain of steps")
    parser.add_argument("--job", help="job file (JSON): steps, params, inputs, outputs, record")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.step == "list":
        from .registry import STEPS
        print("\n".join(sorted(STEPS)))
        return 0
    if not args.job:
        parser.error("--job is required")
    try:
        job = load_job(args.job, single_step=None if args.step == "run" else args.step)
        run_job(job)
    except StepError as exc:
        logging.getLogger("daisy").error("%s", exc)
        print(f"daisy step error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # an unexpected failure: keep the traceback in the job's log
        traceback.print_exc()
        print(f"daisy step failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
