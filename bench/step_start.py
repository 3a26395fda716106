#!/usr/bin/env python3
"""Step start-up: one ``apptainer exec`` of a step that only imports its libraries, minus the
same command on the host (median of 20 each, alternating). Target: <= 0.1 s.

DAISY keeps a run's images mounted while the run lasts (``images.hold_images``: shared loop
devices and one holder container per image), so every job but the first starts on warm pages;
that is the figure reported against the target ("warm"). The same exec without a holder ("cold",
what the first job of a run and any bare ``apptainer exec`` pays) is printed and recorded beside.

The host venv has no tomopy, and its pyFAI and Python differ from the images'. So a second
baseline runs the *image's own files* natively: the SIF unpacked once on the host disk
(``apptainer build --sandbox``, kept under the bench data folder per digest, with the current
``daisy_steps`` copied in) and the same command run there with ``chroot``, no container runtime:
same interpreter, same libraries, host page cache. ``step_start_<image>_native`` rows report that
difference, which is the container's own cost, for every image (root only; ``--no-native`` skips).

The host venv has no tomopy or pyFAI: the host command imports the subset of the modules that the
host has (named in the output). For the tomopy and pyfai images the difference then also holds
those libraries' own import time, so it is an upper bound of the container's cost; the image
``base`` compares like with like. Each image is also timed running ``true`` (the bare container
start, no Python).

    python3 bench/step_start.py [--repeats 20] [--images base pyfai tomopy]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from common import REPO, bench_data_dir, loadavg, report

IMPORTS = {
    "base": ["daisy_steps.core", "numpy", "h5py", "hdf5plugin"],
    "pyfai": ["daisy_steps.core", "numpy", "h5py", "hdf5plugin", "pyFAI.integrator.azimuthal"],
    "tomopy": ["daisy_steps.core", "numpy", "h5py", "hdf5plugin", "tomopy"],
}


def on_host(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def native_tree(name: str) -> Path:
    """The image's files unpacked on the host disk (once per digest), with today's daisy_steps."""
    from daisy import images

    sif = images.image_path(name)
    tree = bench_data_dir() / "native" / sif.stem
    if not (tree / ".daisy-complete").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([images.APPTAINER, "build", "--sandbox", str(tree), str(sif)], check=True,
                       capture_output=True)
        (tree / ".daisy-complete").touch()
    for part in ("daisy_steps", "schemas"):
        target = tree / "opt" / "daisy" / part
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(REPO / part, target, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def native_argv(tree: Path, statement: str) -> list[str]:
    """``python3 -c STATEMENT`` run natively in ``tree`` (chroot), with the image's environment."""
    script = '. /.singularity.d/env/90-environment.sh; exec python3 -c "$0"'
    return ["chroot", str(tree), "/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin",
            "/bin/sh", "-c", script, statement]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--images", nargs="+", default=["base", "pyfai", "tomopy"])
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--no-native", action="store_true", help="skip the native (chroot) baseline")
    args = parser.parse_args()
    from daisy import images

    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def clock(cmd, out):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        out.append(time.perf_counter() - start)

    for name in args.images:
        modules = IMPORTS[name]
        host_modules = [m for m in modules if on_host(m)]
        inside = images.exec_argv(name, ["python3", "-c", "import " + ", ".join(modules)])
        host = [str(REPO / ".venv" / "bin" / "python"), "-c", "import " + ", ".join(host_modules)]
        bare = images.exec_argv(name, ["true"])
        images.verify_image(name)
        native = None
        if not args.no_native and os.geteuid() == 0 and shutil.which("chroot"):
            native = native_argv(native_tree(name), "import " + ", ".join(modules))
        a, b, c, cold, d = [], [], [], [], []
        for _ in range(args.repeats):
            clock(inside, cold)
        holders = images.hold_images({name: modules})
        if not holders.processes:
            print(f"  {name}: no holder (apptainer.conf lacks 'shared loop devices = yes'): warm = cold")
        time.sleep(1.0)  # let the holder mount the image
        try:
            for _ in range(args.repeats):
                clock(inside, a)
                clock(host, b)
                clock(bare, c)
                if native:
                    clock(native, d)
        finally:
            holders.release()
        diff = statistics.median(a) - statistics.median(b)
        missing = sorted(set(modules) - set(host_modules))
        print(f"  {name}: container {statistics.median(a):.3f} s warm ({statistics.median(cold):.3f} s cold), "
              f"host {statistics.median(b):.3f} s{f' (host lacks {missing})' if missing else ''}; "
              f"bare 'apptainer exec {name} true' {statistics.median(c):.3f} s; load average {loadavg()}")
        report(f"step_start_{name}", f"median of {args.repeats}, warm" + (", host subset" if missing else ""), a, b,
               mode="difference", target="<= 0.1 s" if not missing else "<= 0.1 s (not comparable: host lacks a library)",
               met=(diff <= 0.1) if not missing else None,
               extra={"modules": modules, "host_modules": host_modules, "bare_exec_runs": c,
                      "bare_exec_median": statistics.median(c), "cold_runs": cold,
                      "cold_median": statistics.median(cold), "held": bool(holders.processes)},
               record=not args.no_record)
        if native:
            diff = statistics.median(a) - statistics.median(d)
            print(f"  {name}: container {statistics.median(a):.3f} s warm, the image's own files run natively "
                  f"(chroot) {statistics.median(d):.3f} s")
            report(f"step_start_{name}_native", f"median of {args.repeats}, warm, vs the image's files natively", a, d,
                   mode="difference", target="<= 0.1 s", met=diff <= 0.1,
                   extra={"modules": modules, "native_runs": d, "cold_median": statistics.median(cold)},
                   record=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
