"""``python3 -m daisy_steps.online xrd|ct --job job.json``: the long-lived watcher in the image."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..errors import StepError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m daisy_steps.online", description=__doc__)
    parser.add_argument("pipeline", choices=("xrd", "ct"))
    parser.add_argument("--job", required=True, help="watch job file (JSON), written by daisy watch")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    from .runner import setup_logging

    setup_logging(args.quiet)
    try:
        if args.pipeline == "xrd":
            from .xrd import main as run
        else:
            from .ct import main as run
        return run(args.job, quiet=args.quiet)
    except StepError as exc:
        logging.getLogger("daisy").error("%s", exc)
        print(f"daisy step error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"daisy watch failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
