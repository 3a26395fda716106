"""Which image file a run uses, checked and fetched: ``resolve``, ``ensure``, push/pull, publish.

Order (the committed lock is the published truth, :mod:`daisy.images.lock`):

1. the published image in the cache, if its sha256 is the locked one;
2. its copy in a configured offline bundle (used in place, verified);
3. (``fetch=True``) pulled by digest from a configured store into the cache;
4. the local build recorded in the local lock, with a warning on stderr;
5. else ImageError naming the image, its digest and what to do.

A digest mismatch anywhere is fatal (never silently replaced by another source).
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from daisy.hashing import sha256_file
from daisy_steps.fileio import write_json_atomic

from . import paths
from .lock import (ENSURE_HINT, local_entry, planned, published_entry, record_local_build, update_lock)
from .paths import ImageDigestMismatch, ImageError, cache_dir
from .stores import DirStore, configured_stores, parse_store, sif_name

ORIGINS = ("published", "bundle", "local build")      # ResolvedImage.origin
_warned: set[tuple[str, str]] = set()


@dataclass
class ResolvedImage:
    """An image a run can use: its file, verified against the recorded sha256, and where it came from."""
    name: str
    version: str
    sha256: str
    path: Path
    origin: str                      # "published" | "bundle" | "local build"
    store: str | None = None         # the store URL it was pulled from / the bundle; None: the cache
    signature: str | None = None     # signer fingerprint: recorded by the publisher; verified by check_signature
    entry: dict = field(default_factory=dict, repr=False)   # the lock entry (published or local)


def planned_path(name: str) -> Path:
    """The path a run of image ``name`` will use; no network, no hashing (parse time, lint, dry-run)."""
    return planned(name)[1]


def _verified(path: Path, entry: dict, what: str) -> None:
    actual = sha256_file(path)
    if actual != entry["image_sha256"]:
        hint = (f"; delete it and run `daisy containers ensure {entry['name']}`"
                if path.parent == cache_dir() else "")
        raise ImageDigestMismatch(f"image '{entry['name']}' digest mismatch: {what} expects "
                                  f"sha256:{entry['image_sha256']}, {path} has sha256:{actual}{hint}")


def _result(entry: dict, path: Path, origin: str, store: str | None) -> ResolvedImage:
    return ResolvedImage(entry["name"], entry["version"], entry["image_sha256"], path, origin, store,
                         (entry.get("signature") or {}).get("fingerprint"), entry)


def resolve(name: str, fetch: bool = True, allow_local: bool = True) -> ResolvedImage:
    """The image a run of ``name`` uses (see the module doc); the file's sha256 is checked."""
    pub, errors = published_entry(name), []
    if pub:
        cached = cache_dir() / pub["file"]
        if cached.is_file():
            _verified(cached, pub, "the lock")
            return _result(pub, cached, "published", None)
        for store in configured_stores(pub):
            if isinstance(store, DirStore) and store.is_bundle:
                found = store.file_for(pub)
                if found.is_file():
                    _verified(found, pub, "the lock")
                    return _result(pub, found, "bundle", store.url)
                errors.append(f"bundle {store.url} has no {found.name}")
                continue
            if not fetch:
                continue
            try:
                store.pull(pub, cached)
            except ImageDigestMismatch:
                raise
            except ImageError as exc:
                errors.append(str(exc))
                continue
            write_json_atomic(cached.with_name(cached.name + ".json"), pub, mode=0o644)
            return _result(pub, cached, "published", store.url)
    loc = local_entry(name) if allow_local else None
    if loc and (cache_dir() / loc["file"]).is_file():
        path = cache_dir() / loc["file"]
        _verified(path, loc, "the local lock")
        if (name, loc["image_sha256"]) not in _warned:
            _warned.add((name, loc["image_sha256"]))
            why = (f"instead of the published sha256:{pub['image_sha256']} ({'; '.join(errors) or 'not in the cache, no store configured'})"
                   if pub else f"(no published image in {paths.LOCK_PATH.name})")
            print(f"daisy: warning: image '{name}': using a LOCAL BUILD sha256:{loc['image_sha256']} "
                  f"(built {loc.get('built_at', '?')} on this machine) {why}", file=sys.stderr)
        return _result(loc, path, "local build", None)
    if pub:
        tried = "; ".join(errors) if errors else (
            "no store configured ($DAISY_IMAGE_STORES)" if fetch else "not fetched (fetch=False)")
        raise ImageError(f"image '{name}' {pub['version']} sha256:{pub['image_sha256']} is not in the cache "
                         f"{cache_dir()} ({tried}) and there is no local build; {ENSURE_HINT.format(name=name)}")
    raise ImageError(f"image '{name}' is neither in {paths.LOCK_PATH.name} nor built on this machine; "
                     f"{ENSURE_HINT.format(name=name)}")


def check_signature(resolved: ResolvedImage, policy: str | None = None) -> str | None:
    """:func:`daisy.images.signing.check_signature` (the policy runs honour before any job)."""
    from .signing import check_signature as check

    return check(resolved, policy)


def ensure(names: Sequence[str] | None = None, log: Callable[[str], None] = print) -> list[ResolvedImage]:
    """Set-up: per image the published one (cache, bundle or a store), else a local build (recorded
    in the local lock, never in the committed lock). Works offline with no store configured."""
    from .build import build

    names = list(names) if names else paths.available_images()
    results = []
    for name in names:
        try:
            r = resolve(name, fetch=True, allow_local=False)
            log(f"[{name}] {r.origin}: {r.path.name}" + (f" (from {r.store})" if r.store else ""))
        except ImageDigestMismatch:
            raise
        except ImageError as exc:
            log(f"[{name}] {exc}")
            log(f"[{name}] building it locally (recorded in {paths.local_lock_path()}, not in the committed lock)")
            build([name], log=log)
            r = resolve(name, fetch=False)
            log(f"[{name}] runs use: {r.origin} {r.path.name}")
        results.append(r)
    return results


def pull(name: str, store_url: str | None = None) -> ResolvedImage:
    """Pull the published image ``name`` by digest (from ``store_url``, else the configured stores)."""
    if store_url:
        pub = published_entry(name)
        if not pub:
            raise ImageError(f"image '{name}' is not in {paths.LOCK_PATH.name}: nothing published to pull")
        dest = cache_dir() / pub["file"]
        store = parse_store(store_url)
        if dest.is_file():
            _verified(dest, pub, "the lock")
            return _result(pub, dest, "published", None)
        store.pull(pub, dest)
        write_json_atomic(dest.with_name(dest.name + ".json"), pub, mode=0o644)
        return _result(pub, dest, "published", store.url)
    return resolve(name, fetch=True, allow_local=False)


def push(name: str, store_url: str) -> str:
    """Push the image a run of ``name`` uses (published or local build) to a store."""
    r = resolve(name, fetch=True)
    return parse_store(store_url).push(r.path, r.entry, signer=r.signature)


def sign_local(name: str, key: Path, log: Callable[[str], None] = print) -> dict:
    """Sign (a copy of) the image a run of ``name`` uses with PEM key ``key``: the signed file has a
    new sha256, so it is recorded as this machine's local build (publish it to make it the published one)."""
    from .signing import SIGNATURE_FORMAT, sign

    entry, path, _ = planned(name)
    if not path.is_file():
        raise ImageError(f"image '{name}' ({path.name}) is not here; {ENSURE_HINT.format(name=name)}")
    signed, fp = _signed_copy(entry, path, key, sign)
    entry = dict(entry, image_sha256=signed["sha256"], file=signed["file"], size_bytes=signed["size"],
                 signature={"fingerprint": fp, "format": SIGNATURE_FORMAT})
    entry.pop("stores", None)
    record_local_build(entry)
    write_json_atomic(cache_dir() / (entry["file"] + ".json"), entry, mode=0o644)
    log(f"[{name}] signed by {fp}: {entry['file']} (local build; sha256 changed by the signature)")
    return entry


def _signed_copy(entry: dict, path: Path, key: Path, sign) -> tuple[dict, str]:
    tmp = cache_dir() / f".signing-{entry['name']}-{os.getpid()}.sif"
    try:
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o644)
        fp = sign(tmp, key)
        digest = sha256_file(tmp)
        final = cache_dir() / sif_name(entry["name"], entry["version"], digest)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return {"sha256": digest, "file": final.name, "size": final.stat().st_size}, fp


def publish(names: Sequence[str], to: str | None, sign_key: Path | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
    """The maintainer's action: build (reusing an up-to-date local build), sign, push to ``to`` and
    pin the pushed digest (and the store) in the committed lock. Without ``to``, only pin: for a
    reproducible build, which any machine rebuilds to the same digest (docs/image-reproducibility.md)."""
    from .build import build
    from .signing import SIGNATURE_FORMAT, sign

    store = parse_store(to) if to else None
    if store is None and sign_key:
        raise ImageError("a signed image changes its digest: publish it to a store (--to STORE)")
    results = []
    for name in names:
        [entry] = build([name], log=log)
        path = cache_dir() / entry["file"]
        if store is None and not entry.get("reproducible"):
            raise ImageError(f"image '{name}' was not built reproducibly (see its build log): only a store "
                             f"can share it (--to STORE)")
        entry = {k: v for k, v in entry.items() if k not in ("origin", "stores", "signature")}
        if sign_key:
            signed, fp = _signed_copy(entry, path, Path(sign_key), sign)
            entry.update(image_sha256=signed["sha256"], file=signed["file"], size_bytes=signed["size"],
                         signature={"fingerprint": fp, "format": SIGNATURE_FORMAT})
            path = cache_dir() / entry["file"]
            write_json_atomic(path.with_name(path.name + ".json"), entry, mode=0o644)
        if store is not None:
            log(f"[{name}] {store.push(path, entry, signer=(entry.get('signature') or {}).get('fingerprint'))}")
        old = published_entry(name) or {}
        stores = old.get("stores", []) if old.get("image_sha256") == entry["image_sha256"] else []
        entry["stores"] = list(dict.fromkeys([*stores, *([store.url] if store else [])]))
        entry["published_at"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        update_lock(paths.LOCK_PATH, name, entry, guard=cache_dir() / "committed-lock.lock")  # no junk in the repo
        where = ", ".join(entry["stores"]) or "no store (rebuilds reproduce it)"
        log(f"[{name}] {paths.LOCK_PATH.name}: pinned sha256:{entry['image_sha256']} at {where}")
        results.append(entry)
    return results
