"""The image lock (``containers/images.lock.json``) and the digest check of cached images.

The lock names, per image, the SIF file (``<name>-<version>@sha256-<hex>.sif`` in the cache),
its sha256 and its build record. Every run verifies the cached SIF against it first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from daisy.hashing import sha256_file
from daisy_steps.fileio import write_json_atomic

from . import paths
from .paths import LOCK_VERSION, ImageDigestMismatch, ImageError, cache_dir


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


def lock_entry(name: str) -> dict:
    """The lock's entry of image ``name``; ImageError (saying how to build it) if absent."""
    entry = load_lock()["images"].get(name)
    if not entry:
        raise ImageError(f"image '{name}' is not in {paths.LOCK_PATH.name}; run `daisy containers build {name}`")
    return entry


def locked_path(name: str) -> Path:
    """Where the locked image ``name`` belongs in the cache, whether or not it is there yet."""
    return cache_dir() / lock_entry(name)["file"]


def image_path(name: str) -> Path:
    """Digest-bearing path of the locked image in the cache, which must exist (not verified:
    see :func:`verify_image`)."""
    entry = lock_entry(name)
    path = cache_dir() / entry["file"]
    if not path.is_file():
        raise ImageError(f"image '{name}' ({entry['file']}) is not in the cache {cache_dir()}; "
                         f"run `daisy containers build {name}`")
    return path


def verify_image(name: str) -> Path:
    """Check the cached SIF against the lock; return its path or raise ImageDigestMismatch."""
    entry = lock_entry(name)
    path = image_path(name)
    actual = sha256_file(path)
    if actual != entry["image_sha256"]:
        raise ImageDigestMismatch(
            f"image '{name}' digest mismatch: lock expects sha256:{entry['image_sha256']}, "
            f"{path} has sha256:{actual}")
    return path


def verify(names: Iterable[str] | None = None) -> list[str]:
    """Verify locked images (all, or ``names``); return one message per problem (empty: all good)."""
    names = list(names) if names else sorted(load_lock()["images"])
    problems = []
    for name in names:
        try:
            verify_image(name)
        except ImageError as exc:
            problems.append(str(exc))
    return problems
