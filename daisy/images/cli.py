"""``daisy containers ...``: build, ensure, list, inspect, verify, reproduce, prune; push, pull,
fetch, publish; sign, verify-signature (docs/images.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import paths
from .build import build
from .inspect import inspect_labels
from .lock import image_path, load_lock, planned, verify
from .paths import DEFAULT_ORDER, ImageError, available_images, cache_dir, definition_key, image_meta


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``containers {build,list,inspect,verify,prune}`` to argparse subparsers (run: ``args.func(args)``)."""
    p = subparsers.add_parser("containers", help="get, build, share, sign and verify the Apptainer images")
    sub = p.add_subparsers(dest="containers_command", metavar="COMMAND")
    sub.required = True
    e = sub.add_parser("ensure", help="get the published images (cache, bundle or stores), else build "
                       "them locally (set-up; never writes the committed lock)")
    e.add_argument("names", nargs="*", metavar="NAME")
    e.set_defaults(func=_cmd_ensure)
    b = sub.add_parser("build", help="build images whose definition changed (all by default) into the "
                       "local lock (<cache>/local-lock.json)")
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
    rp = sub.add_parser("reproduce", help="rebuild images from nothing and check they are the committed "
                        "lock's digests, bit for bit (exit 1 if not)")
    rp.add_argument("names", nargs="*", metavar="NAME")
    rp.set_defaults(func=_cmd_reproduce)
    pr = sub.add_parser("prune", help="delete cached images the lock no longer names (older builds)")
    pr.add_argument("-n", "--dry-run", action="store_true", help="only list what would be removed")
    pr.set_defaults(func=_cmd_prune)
    ps = sub.add_parser("push", help="push the image a run uses to a store (dir:///path or oras://host/ns)")
    ps.add_argument("names", nargs="+", metavar="NAME")
    ps.add_argument("--to", required=True, metavar="STORE")
    ps.set_defaults(func=_cmd_push)
    pl = sub.add_parser("pull", help="pull the published image by digest (from STORE, else the configured stores)")
    pl.add_argument("names", nargs="+", metavar="NAME")
    pl.add_argument("--from", dest="store", metavar="STORE")
    pl.set_defaults(func=_cmd_pull)
    f = sub.add_parser("fetch", help="write an offline bundle: a pipeline's images, signatures, public keys, index")
    f.add_argument("--pipeline", required=True, choices=["ct", "xrd", "all"])
    f.add_argument("--to", required=True, metavar="DIR")
    f.add_argument("--key", action="append", default=[], metavar="PUB.pem", help="public key to include (repeatable)")
    f.add_argument("--policy", choices=["off", "warn", "require"],
                   help="the bundle's signature policy (default: require if every image is signed, else warn)")
    f.set_defaults(func=_cmd_fetch)
    pb = sub.add_parser("publish", help="maintainers: build, sign, push and pin the digest in the committed lock")
    pb.add_argument("names", nargs="+", metavar="NAME")
    pb.add_argument("--to", metavar="STORE", help="push there too (needed for signed or non-reproducible "
                    "builds); without it the digest is only pinned: any machine rebuilds it bit for bit")
    pb.add_argument("--sign-key", metavar="PRIV.pem", help="sign with this PEM private key first")
    pb.set_defaults(func=_cmd_publish)
    sg = sub.add_parser("sign", help="sign (a copy of) an image with a PEM private key: a local build with a new digest")
    sg.add_argument("name", metavar="NAME")
    sg.add_argument("--key", required=True, metavar="PRIV.pem")
    sg.set_defaults(func=_cmd_sign)
    vs = sub.add_parser("verify-signature", help="check the image a run uses against a PEM public key (offline)")
    vs.add_argument("name", metavar="NAME")
    vs.add_argument("--key", required=True, metavar="PUB.pem")
    vs.set_defaults(func=_cmd_verify_signature)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daisy.images.cli COMMAND ...``: the same as ``daisy containers COMMAND ...``."""
    parser = argparse.ArgumentParser(prog="python -m daisy.images.cli")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["containers", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


def prune(dry_run: bool = False) -> list[Path]:
    """Remove cached SIFs (and their sidecar records) that neither lock names; return them."""
    keep = {entry["file"] for lock in (load_lock(), load_lock(paths.local_lock_path()))
            for entry in lock.get("images", {}).values()}
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


def _cmd_reproduce(args) -> int:
    from .reproducible import reproduce

    try:
        problems = reproduce(args.names or sorted(load_lock()["images"]))
    except ImageError as exc:
        return _err(str(exc))
    for problem in problems:
        _err(problem)
    return 1 if problems else 0


def _cmd_list(args) -> int:
    try:
        lock = load_lock()
        local = load_lock(paths.local_lock_path())
        cache = cache_dir()
    except ImageError as exc:
        return _err(str(exc))
    defined = available_images()
    order = {n: i for i, n in enumerate(DEFAULT_ORDER)}
    names = sorted(set(defined) | set(lock["images"]) | set(local["images"]), key=lambda n: (order.get(n, 99), n))
    print(f"{'IMAGE':8} {'VERSION':8} {'SIZE':>8} {'PUBLISHED':10} {'LOCAL BUILD':12} {'A RUN USES':12} FILE")
    for name in names:
        pub, loc = lock["images"].get(name), local["images"].get(name)
        pstate = "-" if not pub else ("cached" if (cache / pub["file"]).is_file() else "not here")
        lstate = "-" if not loc else ("cached" if (cache / loc["file"]).is_file() else "missing")
        if loc and name in defined and lstate == "cached" and definition_key(name) != loc["definition_sha256"]:
            lstate = "stale"
        try:
            entry, path, origin = planned(name)
        except ImageError:
            entry, path, origin = {"version": image_meta(name)["version"] if name in defined else "-"}, None, "nothing"
        size = f"{entry['size_bytes'] / 1e6:7.0f}M" if entry.get("size_bytes") else f"{'-':>8}"
        print(f"{name:8} {entry['version']:8} {size} {pstate:10} {lstate:12} {origin:12} {path or '-'}")
    return 0


def _cmd_inspect(args) -> int:
    try:
        entry, _, origin = planned(args.name)
        path = image_path(args.name)
        labels = inspect_labels(path)
    except ImageError as exc:
        return _err(str(exc))
    print(f"image:      {args.name} {entry['version']} ({origin})")
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
            return _err(f"no images in {paths.LOCK_PATH.name}; run `daisy containers ensure`")
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
        print("nothing to prune: every cached image is in a lock")
    return 0


def _cmd_ensure(args) -> int:
    from .resolve import ensure

    try:
        ensure(args.names or None)
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_push(args) -> int:
    from .resolve import push

    try:
        for name in args.names:
            print(push(name, args.to))
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_pull(args) -> int:
    from .resolve import pull

    try:
        for name in args.names:
            r = pull(name, args.store)
            print(f"{name}: {r.path} sha256:{r.sha256}" + (f" (from {r.store})" if r.store else " (already in the cache)"))
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_fetch(args) -> int:
    from .bundle import fetch_bundle

    try:
        fetch_bundle(args.pipeline, Path(args.to), keys=[Path(k) for k in args.key], policy=args.policy)
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_publish(args) -> int:
    from .resolve import publish

    try:
        publish(args.names, args.to, sign_key=Path(args.sign_key) if args.sign_key else None)
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_sign(args) -> int:
    from .resolve import sign_local

    try:
        sign_local(args.name, Path(args.key))
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_verify_signature(args) -> int:
    from .resolve import resolve
    from .signing import fingerprint, verify as verify_sig

    try:
        r = resolve(args.name, fetch=False)
        ok, reason = verify_sig(r.path, Path(args.key))
        fp = fingerprint(Path(args.key))
    except ImageError as exc:
        return _err(str(exc))
    if not ok:
        return _err(f"image '{args.name}' sha256:{r.sha256} ({r.origin}) is not signed by {fp}: {reason}")
    print(f"ok {args.name} sha256:{r.sha256} ({r.origin}) signed by {fp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
