"""The two locks and where a run's image file is.

- The **committed lock** (``containers/images.lock.json``) is the published truth: per image the
  SIF its maintainers published (``<name>-<version>@sha256-<hex>.sif``), its sha256, its build
  record and where it was published (``stores``, ``signature``). Only
  ``daisy containers publish`` writes it.
- The **local lock** (``<cache>/local-lock.json``, :func:`paths.local_lock_path`) records images
  built on this machine (``daisy containers build``). A run uses a local build only when the
  published image can be neither found nor fetched, and says so.

:func:`planned` answers, without network or hashing, which file a run will use;
:func:`daisy.images.resolve.resolve` checks it (sha256) and fetches it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from daisy_steps.fileio import write_json_atomic

from . import paths
from ..filelock import file_lock
from .paths import LOCK_VERSION, ImageError, cache_dir

ENSURE_HINT = "run `daisy containers ensure {name}` (gets the published image, else builds it locally)"


def load_lock(path: Path | None = None) -> dict:
    """The lock (default ``paths.LOCK_PATH``); an empty one if the file does not exist."""
    path = Path(path) if path else paths.LOCK_PATH
    if not path.exists():
        return {"lock_version": LOCK_VERSION, "images": {}}
    try:
        lock = json.loads(path.read_text())
    except ValueError as exc:
        raise ImageError(f"{path} is not valid JSON: {exc}") from None
    if lock.get("lock_version") != LOCK_VERSION:
        raise ImageError(f"{path}: unsupported lock_version {lock.get('lock_version')!r} (expected {LOCK_VERSION})")
    lock.setdefault("images", {})
    return lock


def write_lock(lock: dict, path: Path | None = None) -> None:
    """Write the lock atomically, sorted keys, mode 0644."""
    write_json_atomic(Path(path) if path else paths.LOCK_PATH, dict(lock, lock_version=LOCK_VERSION), mode=0o644)


def update_lock(path: Path, name: str, entry: dict | None, guard: Path | None = None) -> None:
    """Set (or, with None, remove) image ``name``'s entry of the lock at ``path``, holding the file
    lock ``guard`` (default ``<path>.lock``)."""
    with file_lock(guard or path.with_name(path.name + ".lock")):
        lock = load_lock(path)
        if entry is None:
            lock["images"].pop(name, None)
        else:
            lock["images"][name] = entry
        write_lock(lock, path)


# ------------------------------------------------------------------------------ the two locks

def published_entry(name: str) -> dict | None:
    """Image ``name``'s entry of the committed lock, or None."""
    return load_lock()["images"].get(name)


def local_entry(name: str) -> dict | None:
    """Image ``name``'s entry of the local lock (built on this machine), or None."""
    return load_lock(paths.local_lock_path())["images"].get(name)


def record_local_build(entry: dict) -> None:
    """Record a local build in the local lock (atomic, safe against concurrent builds)."""
    update_lock(paths.local_lock_path(), entry["name"], dict(entry, origin="local build"))


def lock_entry(name: str) -> dict:
    """The committed lock's entry of image ``name``; ImageError (saying what to do) if absent."""
    entry = published_entry(name)
    if not entry:
        raise ImageError(f"image '{name}' is not in {paths.LOCK_PATH.name}; "
                         f"{ENSURE_HINT.format(name=name)} or publish it (`daisy containers publish {name}`)")
    return entry


def planned(name: str) -> tuple[dict, Path, str]:
    """``(lock entry, path, origin)`` of the image a run of ``name`` will use; no network, no hashing.

    The published file if it is in the cache; its copy in an offline bundle (a ``dir://`` store
    marked as bundle) if one is configured; its cache path if any store is configured (a run
    will pull it); else the local build if one is recorded; else the published file's path.
    """
    from .stores import bundle_file, configured_stores

    pub, loc = published_entry(name), local_entry(name)
    if pub:
        path = cache_dir() / pub["file"]
        if path.is_file():
            return pub, path, "published"
        found = bundle_file(pub)
        if found:
            return pub, found, "bundle"
        if configured_stores(pub):
            return pub, path, "published"
    if loc and ((cache_dir() / loc["file"]).is_file() or not pub):
        return loc, cache_dir() / loc["file"], "local build"
    if pub:
        return pub, cache_dir() / pub["file"], "published"
    raise ImageError(f"image '{name}' is neither in {paths.LOCK_PATH.name} nor built on this machine; "
                     f"{ENSURE_HINT.format(name=name)}")


def locked_path(name: str) -> Path:
    """The path a run of image ``name`` will use, whether or not the file is there yet
    (:func:`planned`; for Snakemake's ``container:`` at parse time, lint and dry-run)."""
    return planned(name)[1]


def image_path(name: str) -> Path:
    """The path of image ``name`` a run uses, which must exist (not verified: see
    :func:`verify_image`)."""
    entry, path, origin = planned(name)
    if not path.is_file():
        raise ImageError(f"image '{name}' ({entry['file']}) is not in the cache {cache_dir()}; "
                         f"{ENSURE_HINT.format(name=name)}")
    return path


def verify_image(name: str) -> Path:
    """The verified path of image ``name`` (:func:`daisy.images.resolve.resolve` without fetching):
    ImageDigestMismatch (naming both digests) if its sha256 is not the recorded one."""
    from .resolve import resolve

    return resolve(name, fetch=False).path


def verify(names: Iterable[str] | None = None) -> list[str]:
    """Verify images (all of the committed lock, or ``names``); one message per problem."""
    names = list(names) if names else sorted(load_lock()["images"])
    problems = []
    for name in names:
        try:
            verify_image(name)
        except ImageError as exc:
            problems.append(str(exc))
    return problems
