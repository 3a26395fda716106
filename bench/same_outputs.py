"""Do two versions of DAISY compute the same results? Runs ``daisy demo`` (CT + XRD + copy, the
same generated data) with this checkout and with another source tree, then compares every
result array bit for bit and every output file byte for byte.

    git archive OLD_COMMIT | tar -x -C /tmp/old && cp containers/images.lock.json /tmp/old/containers/
    python3 bench/same_outputs.py /tmp/old [--size small|medium]

Both trees run with this checkout's .venv and images (copy the lock into the other tree when
only the image definitions' comments differ). Exit status 1 if any result differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: result files compared array by array (the rest byte by byte); logs, records, job files and
#: provenance hold times and paths and are not results
SKIP_DIRS = {"logs", "records", "jobs", "configs"}
SKIP_NAMES = {"provenance.json", "config.resolved.yaml"}


def run_demo(tree: Path, out: Path, size: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "daisy", "demo", "--out", str(out), "--size", size,
           "--pipelines", "ct", "xrd", "copy"]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)


def results(out: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and not SKIP_DIRS & set(rel.parts) and path.name not in SKIP_NAMES:
            files[str(rel)] = path
    return files


def h5_arrays(path: Path) -> dict[str, str]:
    """sha256 of every dataset's values (virtual datasets read through their sources)."""
    import h5py
    import hdf5plugin  # noqa: F401
    import numpy as np

    digests = {}
    with h5py.File(path, "r") as handle:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                raw = value if isinstance(value, bytes) else np.asarray(value).tobytes()
                digests[name] = hashlib.sha256(raw).hexdigest()
        handle.visititems(visit)
    return digests


def h5_attrs(path: Path) -> dict[str, str]:
    """Every attribute, as text, by object path."""
    import h5py

    found = {}
    with h5py.File(path, "r") as handle:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                found[f"{name}@{key}"] = repr(value)
        visit("/", handle)
        handle.visititems(visit)
    return found


def compare(a: Path, b: Path) -> list[str]:
    ra, rb = results(a), results(b)
    problems = [f"only in one run: {name}" for name in sorted(set(ra) ^ set(rb))]
    for name in sorted(set(ra) & set(rb)):
        same_bytes = ra[name].read_bytes() == rb[name].read_bytes()
        if name.endswith(".h5"):
            arrays = h5_arrays(ra[name]) == h5_arrays(rb[name])
            if not arrays:
                problems.append(f"{name}: arrays differ")
            note = ""
            if arrays and not same_bytes:
                aa, ab = h5_attrs(ra[name]), h5_attrs(rb[name])
                keys = sorted(k for k in set(aa) | set(ab) if aa.get(k) != ab.get(k))
                note = f" ({', '.join(keys) or 'layout only'})"
            print(f"  {name:52s} arrays {'identical' if arrays else 'DIFFER'}; "
                  f"file bytes {'identical' if same_bytes else 'differ'}{note}")
        elif not same_bytes:
            problems.append(f"{name}: bytes differ")
            print(f"  {name:52s} DIFFER")
        else:
            print(f"  {name:52s} identical")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the other DAISY source tree")
    parser.add_argument("--size", choices=["small", "medium"], default="small")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="daisy-same-"))
    runs = {"this": (REPO, work / "this"), "other": (args.other.resolve(), work / "other")}
    shared = work / "run"  # both run in the same folder (results name their paths), then move
    for label, (tree, out) in runs.items():
        print(f"daisy demo with {label} tree ({tree}) in {shared} -> {out}", flush=True)
        run_demo(tree, shared, args.size)
        shared.rename(out)
    problems = compare(runs["this"][1], runs["other"][1])
    print(json.dumps({"identical": not problems, "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
