"""Memory of a slab job: hand back the pages of array parts the chain no longer needs.

A slab job holds its projections (float32, angles x rows x columns), then the same values in
sinogram order for the reconstruction, then the volume. Holding each whole while the next fills
would need all three at once; instead each part is released (``madvise(MADV_DONTNEED)``: the
kernel takes the pages back, the array keeps its address range) as soon as its values have moved
on, so the job's peak stays near one copy of its projections. A released part reads as zeros:
only parts that are never read again are released, and the store drops the array after.
"""
from __future__ import annotations

import ctypes
import mmap

import numpy as np

_MADV_DONTNEED = 4
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise


def release(part: np.ndarray) -> int:
    """Give the whole pages inside ``part`` (a C-contiguous array or slice) back to the kernel;
    the bytes released (0 when it cannot: not contiguous, or smaller than a page)."""
    if not part.flags.c_contiguous or part.nbytes < mmap.PAGESIZE:
        return 0
    start = part.ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE          # whole pages only: never a neighbour's
    last = (start + part.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return 0
    if _madvise()(first, last - first, _MADV_DONTNEED) != 0:
        return 0
    return last - first


def in_blocks(work, count: int, block: int, threads: int) -> None:
    """``work(start)`` for start = 0, block, 2 block, ... < count, on ``threads`` threads (numpy's
    copies and reductions run outside the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    starts = range(0, count, block)
    if threads <= 1 or len(starts) == 1:
        for start in starts:
            work(start)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, starts))


def to_sinogram_order(proj: np.ndarray, threads: int = 1, block: int = 16) -> np.ndarray:
    """(angles, rows, columns) -> a new C-contiguous (rows, angles, columns) array, copied
    ``block`` angles at a time by ``threads`` threads, each block of ``proj`` released once
    copied: the two never exist whole at once. ``proj`` is unusable afterwards."""
    out = np.empty((proj.shape[1], proj.shape[0], proj.shape[2]), dtype=proj.dtype)

    def move(a0: int) -> None:
        part = proj[a0:a0 + block]
        out[:, a0:a0 + block, :] = part.transpose(1, 0, 2)
        release(part)

    in_blocks(move, proj.shape[0], block, threads)
    return out


def value_range(values: np.ndarray, threads: int = 1, block: int = 64) -> tuple[float, float]:
    """(min, max) over the first axis in blocks on ``threads`` threads, no temporaries; NaN when
    any value is NaN, ±inf when any is infinite (so one pass answers "all finite?" too)."""
    if values.size == 0:
        return 0.0, 0.0
    parts: list[tuple[float, float]] = []

    def span(a0: int) -> None:
        part = values[a0:a0 + block]
        parts.append((float(np.min(part)), float(np.max(part))))

    in_blocks(span, values.shape[0], block, threads)
    lows, highs = zip(*parts)
    if any(np.isnan(lows)) or any(np.isnan(highs)):
        return float("nan"), float("nan")
    return min(lows), max(highs)
