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


def to_sinogram_order(proj: np.ndarray, threads: int = 1, block: int = 16) -> np.ndarray:
    """(angles, rows, columns) -> a new C-contiguous (rows, angles, columns) array, copied
    ``block`` angles at a time by ``threads`` threads, each block of ``proj`` released once
    copied: the two never exist whole at once. ``proj`` is unusable afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty((proj.shape[1], proj.shape[0], proj.shape[2]), dtype=proj.dtype)

    def move(a0: int) -> None:
        part = proj[a0:a0 + block]
        out[:, a0:a0 + block, :] = part.transpose(1, 0, 2)
        release(part)

    with ThreadPoolExecutor(max(1, threads)) as pool:      # numpy copies outside the GIL
        list(pool.map(move, range(0, proj.shape[0], block)))
    return out


def value_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) without temporaries; NaN if any value is NaN (numpy propagates it)."""
    if values.size == 0:
        return 0.0, 0.0
    return float(np.min(values)), float(np.max(values))
