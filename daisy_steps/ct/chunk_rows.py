"""Reading a band of detector rows of each frame without reading the frames whole.

HDF5 reads a chunk whole whatever part of it is asked, even an uncompressed one: a job reading
16 rows of a frame-chunked 1024-row scan reads all 1024 rows of every frame. Where the frames lie
whole and unfiltered in their chunks, :class:`ChunkRows` reads each frame's band itself, at the
offset HDF5's chunk index gives (``get_chunk_info_by_coord``). Used by
:func:`daisy_steps.ct.layouts.read_frames`; the plan asks :meth:`ChunkRows.readable` whether the
slab jobs of a scan read it once between them (``slabs.read_once``).
"""
from __future__ import annotations

import os

import h5py
import numpy as np

from ..errors import StepError


class ChunkRows:
    """Rows of frames read straight from the file, where each frame lies whole and unfiltered in
    its chunk (chunks of ``(k, rows, columns)``, no compression: a detector file written without
    compression). HDF5 itself reads every chunk whole whatever rows are asked (a band of 16 rows
    of a 1024-row frame reads all 1024), so N slab jobs would read the scan N times; here a job
    reads its band of each frame (one ``pread`` of rows x columns values at the chunk's offset
    plus the band's) and N jobs read the scan once between them. Compressed chunks must be read
    whole: there ``slabs.read_once`` splits the scan once for all jobs (ct.split_rows)."""

    def __init__(self, dset: h5py.Dataset, fd: int, rows: tuple[int, int]) -> None:
        self.dset, self.fd, self.rows = dset, fd, rows
        self.per_chunk = dset.chunks[0]
        self.dtype = dset.dtype
        self.frame_bytes = dset.shape[1] * dset.shape[2] * dset.dtype.itemsize
        self.row_bytes = dset.shape[2] * dset.dtype.itemsize

    @staticmethod
    def readable(dset: h5py.Dataset) -> bool:
        """Whether rows of ``dset`` 's frames can be read without reading the frames whole."""
        try:
            if dset.ndim != 3 or not dset.chunks or dset.is_virtual or dset.chunks[1:] != dset.shape[1:]:
                return False
            if dset.id.get_create_plist().get_nfilters() or dset.file.driver != "sec2":
                return False
            return hasattr(dset.id, "get_chunk_info_by_coord") and dset.dtype.kind in "uif"
        except Exception:  # noqa: BLE001 (anything unusual: HDF5 reads it, whole chunks)
            return False

    @classmethod
    def open(cls, dset: h5py.Dataset, rows: tuple[int, int]) -> "ChunkRows | None":
        """A reader for ``dset`` (None where HDF5 must read: see :meth:`readable`, and whole
        frames, which HDF5 reads as fast)."""
        if rows[1] - rows[0] >= dset.shape[1] or not cls.readable(dset):
            return None
        try:
            return cls(dset, os.open(dset.file.filename, os.O_RDONLY), rows)
        except OSError:
            return None

    def read(self, a: int, b: int, target: np.ndarray) -> None:
        """Frames ``a:b`` of the band into ``target`` (contiguous, the dataset's type)."""
        r0, r1 = self.rows
        length = (r1 - r0) * self.row_bytes
        for i, frame in enumerate(range(a, b)):
            first = frame - frame % self.per_chunk
            info = self.dset.id.get_chunk_info_by_coord((first, 0, 0))
            view = memoryview(target[i]).cast("B")
            if info.byte_offset is None or info.size != self.per_chunk * self.frame_bytes:
                self.dset.read_direct(target, np.s_[frame:frame + 1, r0:r1, :], np.s_[i:i + 1])  # not written
                continue
            offset = info.byte_offset + (frame - first) * self.frame_bytes + r0 * self.row_bytes
            done = 0
            while done < length:
                got = os.preadv(self.fd, [view[done:]], offset + done)
                if got <= 0:
                    raise StepError(f"{self.dset.file.filename}: {self.dset.name}: frame {frame} ends early "
                                    f"(the file is shorter than HDF5 says)")
                done += got

    def close(self) -> None:
        os.close(self.fd)
