"""sha256 of files, cached by file status, for provenance and image verification.

The cache (``sha256-cache.json`` in the image cache, :func:`daisy.images.cache_dir`) maps a
resolved path to its digest and the (size, mtime_ns, ctime_ns, inode) it had when hashed: any
rewrite, copy or touch of the file changes that key and forces a re-hash.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from daisy_steps.fileio import sha256_file as sha256_file_uncached
from daisy_steps.fileio import write_json_atomic

from . import hash_ahead
from .filelock import file_lock

CACHE_NAME = "sha256-cache.json"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    """Hex sha256 of one file, served from the cache while the file is unchanged."""
    return sha256_files([path])[str(Path(path).resolve())]


def sha256_files(paths: Iterable, workers: int | None = None) -> dict[str, str]:
    """Hex sha256 of several files, keyed by resolved path.

    Files missing from the cache are hashed in parallel threads (hashlib releases the GIL),
    one per core unless ``workers`` says otherwise; the cache is then written once.
    """
    resolved = sorted({Path(p).resolve() for p in paths})
    hash_ahead.wait_for(resolved)        # a file the run's watcher is hashing: its digest, not twice
    cache_file = _cache_file()
    cache = _read_cache(cache_file)
    digests: dict[str, str] = {}
    missing: dict[Path, list[int]] = {}
    for path in resolved:
        stat = _stat_key(path)
        hit = cache.get(str(path))
        if isinstance(hit, dict) and hit.get("stat") == stat:
            digests[str(path)] = hit["sha256"]
        else:
            missing[path] = stat          # taken before hashing: a change while hashing misses next time
    if not missing:
        return digests
    workers = max(1, min(len(missing), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for path, digest in zip(missing, pool.map(sha256_file_uncached, missing)):
            digests[str(path)] = digest
    _store({path: (stat, digests[str(path)]) for path, stat in missing.items()})
    return digests


def remember_sha256(path, digest: str) -> None:
    """Record ``digest`` for ``path`` as it is now (hashed by whoever wrote it, e.g. a pull)."""
    path = Path(path).resolve()
    _store({path: (_stat_key(path), digest)})


def _store(entries: dict[Path, tuple[list[int], str]]) -> None:
    """Add ``path -> (stat, sha256)`` entries to the cache."""
    cache_file = _cache_file()
    try:  # concurrent runs share the cache: re-read, merge and replace it under a lock
        with file_lock(cache_file.with_name(cache_file.name + ".lock")):
            cache = _read_cache(cache_file)
            cache = {p: entry for p, entry in cache.items() if Path(p).exists()}   # forget deleted files
            for path, (stat, digest) in entries.items():
                cache[str(path)] = {"stat": stat, "sha256": digest}
            write_json_atomic(cache_file, cache, mode=0o644)
    except OSError:
        pass                              # a read-only cache only costs speed


def _cache_file() -> Path:
    from daisy.images.paths import cache_dir   # here, not at the top: daisy.images imports this module

    return cache_dir() / CACHE_NAME


def _read_cache(cache_file: Path) -> dict:
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
