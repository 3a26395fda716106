#!/usr/bin/env python3
"""Step start-up: one ``apptainer exec`` of a step that only imports its libraries, minus the
same command on the host (median of 20 each, alternating). Target: <= 0.1 s.

    python3 bench/step_start.py [--repeats 20] [--images base pyfai]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess

from common import REPO, report

IMPORTS = {
    "base": "import daisy_steps.core, numpy, h5py, hdf5plugin",
    "pyfai": "import daisy_steps.core, numpy, h5py, hdf5plugin, pyFAI.integrator.azimuthal",
    "tomopy": "import daisy_steps.core, numpy, h5py, tomopy",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--images", nargs="+", default=["base", "pyfai"])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    from daisy import containers

    for name in args.images:
        code = IMPORTS[name]
        inside = containers.exec_argv(name, ["python3", "-c", code])
        host = [str(REPO / ".venv" / "bin" / "python"), "-c", code]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        containers.verify_image(name)
        a, b = [], []
        for _ in range(args.repeats):
            for cmd, out in ((inside, a), (host, b)):
                start = __import__("time").perf_counter()
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                out.append(__import__("time").perf_counter() - start)
        if name == "tomopy":  # no tomopy on the host: compare with the base image's imports on the host
            pass
        diff = statistics.median(a) - statistics.median(b)
        report(f"step_start_{name}", f"median of {args.repeats}", a, b, mode="difference",
               target="<= 0.1 s", met=diff <= 0.1, record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
