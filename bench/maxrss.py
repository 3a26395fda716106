#!/usr/bin/env python3
"""Run a Python script or module in this process and write its peak RSS (ru_maxrss) as JSON.

Used inside the images, where /usr/bin/time is not guaranteed and the apptainer starter hides the
child's rusage:   python3 bench/maxrss.py OUT.json -m daisy_steps run --job job.json
                  python3 bench/maxrss.py OUT.json tests/reference/direct_tomopy.py raw.h5 vol.h5 ...
"""

import json
import resource
import runpy
import sys
import time


def main() -> int:
    out, rest = sys.argv[1], sys.argv[2:]
    code, start = 0, time.perf_counter()
    try:
        if rest[0] == "-m":
            sys.argv = [rest[1], *rest[2:]]
            runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = rest
            runpy.run_path(rest[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        with open(out, "w") as handle:
            json.dump({"maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                       "seconds": time.perf_counter() - start, "exit": code}, handle)
    return code


if __name__ == "__main__":
    sys.exit(main())
