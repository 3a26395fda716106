"""Sinogram slabs: how a reconstruction's detector rows are split over jobs (scatter).

Used by the pipeline (host side) to plan slab jobs; ct.gather joins them again (gather).
Slab boundaries lie an even number of rows from the first row, because gridrec reconstructs
rows in pairs: with even boundaries every row is paired exactly as in an unchunked run, so the
chunked volume is bit-identical to the unchunked one.
"""

from __future__ import annotations

import math

ALIGN = 2


def plan_slabs(row_start: int, row_stop: int, count: int | None = None, height: int | None = None,
               align: int = ALIGN) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering detector rows ``row_start:row_stop`` in order.

    Give either ``count`` (that many slabs, heights as equal as alignment allows, the larger
    first) or ``height`` (rows per slab, rounded up to a multiple of ``align``; the last slab
    takes the remainder). Every boundary but the end is ``row_start`` plus a multiple of ``align``.
    """
    n = row_stop - row_start
    if n <= 0:
        raise ValueError(f"empty row range {row_start}:{row_stop}")
    if (count is None) == (height is None):
        raise ValueError("give exactly one of count and height")
    units = math.ceil(n / align)
    if count is not None:
        if count < 1:
            raise ValueError(f"slab count must be at least 1, not {count}")
        count = min(count, units)
        sizes = [units // count + (1 if i < units % count else 0) for i in range(count)]
    else:
        if height < 1:
            raise ValueError(f"slab height must be at least 1, not {height}")
        per = math.ceil(height / align)
        sizes = [per] * (units // per) + ([units % per] if units % per else [])
    bounds, pos = [], row_start
    for size in sizes:
        stop = min(pos + size * align, row_stop)
        bounds.append((pos, stop))
        pos = stop
    return bounds
