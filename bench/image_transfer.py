"""Sharing an image: pull by digest from a local OCI registry and from a directory store, against
a plain ``cp`` of the SIF (what a user would do instead). Pull includes DAISY's verification (the
file's sha256 against the lock), so the ratio is the whole cost of a verified pull.

    python3 bench/image_transfer.py [--image tomopy] [--repeats 3]

Starts a throw-away registry with ``scripts/registry.sh`` (stopped at the end), pushes the image
once to it and to a directory store in a temporary folder, then alternates: cp, pull from the
registry into an empty cache, pull from the directory store into an empty cache, `apptainer pull`,
cp + sha256sum, and `curl` of the same blob from the same registry into a file with no
verification at all (the HTTP floor). Target: registry pull ≤ 1.5 × cp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, report

sys.path.insert(0, str(REPO))


def registry(action: str, state: Path) -> str:
    env = {**os.environ, "DAISY_REGISTRY_STATE": str(state)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "registry.sh"), action], env=env,
                          capture_output=True, text=True, check=action != "stop")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def pull_into(cache: Path, name: str, store: str) -> float:
    """Seconds of ``daisy containers pull NAME --from STORE`` into the empty ``cache`` (verified)."""
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env = {**os.environ, "DAISY_IMAGE_CACHE": str(cache), "DAISY_IMAGE_STORES": ""}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "daisy", "containers", "pull", name, "--from", store],
                   env=env, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="tomopy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from daisy import images

    source = images.image_path(args.image)
    size_mb = source.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="daisy-bench-transfer-") as scratch:
        scratch = Path(scratch)
        address = registry("start", scratch / "registry")
        try:
            oras, folder = f"oras://{address}/daisy", f"dir://{scratch / 'store'}"
            for store in (oras, folder):
                subprocess.run([sys.executable, "-m", "daisy", "containers", "push", args.image, "--to", store],
                               check=True, capture_output=True, cwd=REPO)
            copies, pulls, dir_pulls, apptainer_pulls, checked_copies, curls = [], [], [], [], [], []
            from daisy.images import paths as image_paths
            from daisy.images.stores import parse_store
            entry = images.published_entry(args.image)
            manifest = parse_store(oras).layer_digest(args.image, entry["version"])[0]
            ref = f"oras://{address}/daisy/{args.image}@{manifest}"
            blob = f"http://{address}/v2/daisy/{args.image}/blobs/sha256:{entry['image_sha256']}"
            for _ in range(args.repeats):
                target = scratch / "copy.sif"
                target.unlink(missing_ok=True)
                start = time.perf_counter()
                subprocess.run(["cp", str(source), str(target)], check=True)
                copies.append(time.perf_counter() - start)
                pulls.append(pull_into(scratch / "cache", args.image, oras))
                dir_pulls.append(pull_into(scratch / "cache", args.image, folder))
                target.unlink()
                start = time.perf_counter()
                subprocess.run([image_paths.APPTAINER, "pull", "--no-https", "--disable-cache", str(target), ref],
                               check=True, capture_output=True)
                apptainer_pulls.append(time.perf_counter() - start)
                target.unlink()
                start = time.perf_counter()
                subprocess.run(["cp", str(source), str(target)], check=True)
                subprocess.run(["sha256sum", str(target)], check=True, capture_output=True)
                checked_copies.append(time.perf_counter() - start)
                target.unlink()
                start = time.perf_counter()                 # the HTTP floor: no verification at all
                subprocess.run(["curl", "-sSf", "--noproxy", "*", "-o", str(target), blob], check=True)
                curls.append(time.perf_counter() - start)
        finally:
            registry("stop", scratch / "registry")
    report("image_pull_registry", f"{args.image} {size_mb:.0f} MB", pulls, copies, target="≤ 1.5",
           met=statistics.median(pulls) / statistics.median(copies) <= 1.5, record=not args.no_record,
           extra={"dir_store_pull": dir_pulls, "dir_store_ratio": statistics.median(dir_pulls) / statistics.median(copies),
                  "apptainer_pull": apptainer_pulls, "cp_then_sha256sum": checked_copies,
                  "curl_blob_unverified": curls})
    print(f"directory store pull: {statistics.median(dir_pulls):.3f} s, "
          f"ratio {statistics.median(dir_pulls) / statistics.median(copies):.3f} against cp")
    pull = statistics.median(pulls)
    for what, runs in (("apptainer pull (by manifest digest)", apptainer_pulls), ("cp + sha256sum", checked_copies),
                       ("curl of the blob into a file, unverified", curls)):
        print(f"{what}: {statistics.median(runs):.3f} s; DAISY's registry pull / it = {pull / statistics.median(runs):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
