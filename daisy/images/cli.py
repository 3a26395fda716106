"""``daisy containers build|list|inspect|verify|prune``, and pruning the image cache."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import paths
from .build import build
from .inspect import inspect_labels
from .lock import image_path, load_lock, lock_entry, verify
from .paths import DEFAULT_ORDER, ImageError, available_images, cache_dir, definition_key, image_meta


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``containers {build,list,inspect,verify,prune}`` to argparse subparsers (run: ``args.func(args)``)."""
    p = subparsers.add_parser("containers", help="build, list, inspect and verify the Apptainer images")
    sub = p.add_subparsers(dest="containers_command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("build", help="build images whose definition changed (all by default)")
    b.add_argument("names", nargs="*", metavar="NAME")
    b.add_argument("--force", action="store_true", help="rebuild even if an up-to-date image is cached")
    b.add_argument("--cache", metavar="DIR", help="image cache directory (default $DAISY_IMAGE_CACHE "
                   "or ~/.cache/daisy/images)")
    b.set_defaults(func=_cmd_build)
    ls = sub.add_parser("list", help="list locked images and whether they are in the cache")
    ls.set_defaults(func=_cmd_list)
    i = sub.add_parser("inspect", help="labels and package manifest of an image")
    i.add_argument("name", metavar="NAME")
    i.set_defaults(func=_cmd_inspect)
    v = sub.add_parser("verify", help="check cached images against the lock's sha256")
    v.add_argument("names", nargs="*", metavar="NAME")
    v.set_defaults(func=_cmd_verify)
    pr = sub.add_parser("prune", help="delete cached images the lock no longer names (older builds)")
    pr.add_argument("-n", "--dry-run", action="store_true", help="only list what would be removed")
    pr.set_defaults(func=_cmd_prune)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daisy.images.cli COMMAND ...``: the same as ``daisy containers COMMAND ...``."""
    parser = argparse.ArgumentParser(prog="python -m daisy.images.cli")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["containers", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


def prune(dry_run: bool = False) -> list[Path]:
    """Remove cached SIFs (and their sidecar records) that the lock no longer names; return them."""
    keep = {entry["file"] for entry in load_lock().get("images", {}).values()}
    removed = []
    for sif in sorted(cache_dir().glob("*.sif")):
        if sif.name in keep:
            continue
        removed.append(sif)
        if not dry_run:
            for path in (sif, sif.with_name(sif.name + ".json")):
                if path.exists():
                    path.chmod(0o644)
                    path.unlink()
    return removed


def _err(msg: str) -> int:
    print(f"daisy containers: error: {msg}", file=sys.stderr)
    return 1


def _cmd_build(args) -> int:
    if args.cache:
        os.environ["DAISY_IMAGE_CACHE"] = str(Path(args.cache).resolve())
    try:
        build(args.names or None, force=args.force)
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_list(args) -> int:
    try:
        lock = load_lock()
        cache = cache_dir()
    except ImageError as exc:
        return _err(str(exc))
    defined = available_images()
    order = {n: i for i, n in enumerate(DEFAULT_ORDER)}
    names = sorted(set(defined) | set(lock["images"]), key=lambda n: (order.get(n, 99), n))
    print(f"{'IMAGE':8} {'VERSION':8} {'SIZE':>8} {'BUILT':20} {'STATE':9} FILE")
    for name in names:
        e = lock["images"].get(name)
        if not e:
            version = image_meta(name)["version"] if name in defined else "-"
            print(f"{name:8} {version:8} {'-':>8} {'-':20} {'unbuilt':9} -")
            continue
        state = "cached" if (cache / e["file"]).is_file() else "missing"
        if state == "cached" and name in defined and definition_key(name) != e["definition_sha256"]:
            state = "stale"
        print(f"{name:8} {e['version']:8} {e['size_bytes'] / 1e6:7.0f}M {e['built_at'][:19]:20} {state:9} "
              f"{e['file']}")
    return 0


def _cmd_inspect(args) -> int:
    try:
        entry = lock_entry(args.name)
        path = image_path(args.name)
        labels = inspect_labels(path)
    except ImageError as exc:
        return _err(str(exc))
    print(f"image:      {args.name} {entry['version']}")
    print(f"file:       {path}")
    print(f"sha256:     {entry['image_sha256']}")
    print(f"definition: {entry.get('definition')} (sha256 {entry['definition_sha256']})")
    print(f"built:      {entry['built_at']} in {entry['build_seconds']} s with apptainer {entry['apptainer_version']}")
    print("labels:")
    for k in sorted(labels):
        print(f"  {k} = {labels[k]}")
    manifest = entry.get("manifest", {})
    print(f"python distributions ({len(manifest.get('pip', {}))}):")
    for k, v in sorted(manifest.get("pip", {}).items(), key=lambda kv: kv[0].lower()):
        print(f"  {k}=={v}")
    print(f"debian packages ({len(manifest.get('dpkg', {}))}):")
    for k, v in sorted(manifest.get("dpkg", {}).items()):
        print(f"  {k}={v}")
    return 0


def _cmd_verify(args) -> int:
    try:
        lock = load_lock()
        names = args.names or sorted(lock["images"])
        if not names:
            return _err(f"no images in {paths.LOCK_PATH.name}; run `daisy containers build`")
        problems = verify(names)
    except ImageError as exc:
        return _err(str(exc))
    for p in problems:
        print(f"MISMATCH {p}", file=sys.stderr)
    for name in names:
        if not any(f"'{name}'" in p for p in problems):
            print(f"ok {name} sha256:{lock['images'][name]['image_sha256']}")
    return 1 if problems else 0


def _cmd_prune(args) -> int:
    try:
        removed = prune(args.dry_run)
    except ImageError as exc:
        return _err(str(exc))
    for path in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path.name}")
    if not removed:
        print("nothing to prune: every cached image is in the lock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
