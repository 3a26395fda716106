"""Writing a reconstructed slab while it is reconstructed (ct.recon with output slot ``slab``).

ct.recon hands each block of rows, once it passes the gate, to a writer thread that puts it in
the slab file (the layout of ct.save_slab) while the next block is reconstructed: the file is
written during the computation, not after it, the page cache flushes it as it goes, and the job
never holds the whole volume. Blocks travel in a few reused buffers. Where the disk has less room
than the slab, the caller keeps the volume and writes it at the end instead (HDF5 cannot recover
from a full disk mid-file; ct.save_slab's fallback then applies).
"""
from __future__ import annotations

import queue
import threading

import h5py
import numpy as np

from ..errors import StepError
from .output import METADATA_BYTES, SLAB_DATASET, free_bytes, open_part, os_reason, slab_attributes, slab_dataset

BUFFERS = 3


class SlabWriter:
    """A slab file filled block by block from a thread; ``buffer(n)`` gives a free block buffer,
    ``put(r0, block)`` queues it, ``finish(info)`` writes the attributes and closes. With
    ``file_rows``, the slab (detector ``rows``) is one part of a job's file (ct.recon's param)."""

    def __init__(self, step: str, ctx, shape: tuple[int, int, int], block: int, compression: str,
                 gzip_level: int, rows=None, file_rows=None) -> None:
        self.step, self.final = step, ctx.final_output("slab").path
        self.thread: threading.Thread | None = None
        ref = ctx.output("slab")
        dataset = ref.dataset or SLAB_DATASET
        self.offset = 0                  # of the slab's first row in the file
        if file_rows is None:
            self.handle = h5py.File(ref.path, "w", track_order=False)
            self.dset = slab_dataset(self.handle, dataset, shape, np.float32, compression, gzip_level)
        else:                            # one slab of a job's file (ct.recon's file_rows)
            self.handle, first = open_part(step, ctx, "slab", rows, file_rows, 4 * int(np.prod(shape)))
            if first:
                full = (file_rows[1] - file_rows[0], *shape[1:])
                self.dset = slab_dataset(self.handle, dataset, full, np.float32, compression, gzip_level)
            else:
                self.dset = self.handle[dataset]
            if self.dset.shape[1:] != tuple(shape[1:]):
                self.abort()
                raise StepError(f"{step}: slices {shape[1:]} do not fit {self.final}'s {self.dset.shape[1:]}")
            self.offset = rows[0] - file_rows[0]
        blocks = -(-shape[0] // block)
        self.free: queue.Queue = queue.Queue()
        for _ in range(min(BUFFERS, blocks)):
            self.free.put(np.empty((min(block, shape[0]), shape[1], shape[2]), dtype=np.float32))
        self.full: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        # one block: nothing to overlap, written in this thread (a thread costs address space: a
        # malloc arena and a stack, which counts under a job's RLIMIT_AS)
        self.thread = threading.Thread(target=self._write, name="daisy-slab-writer", daemon=True) \
            if blocks > 1 else None
        if self.thread:
            self.thread.start()

    @staticmethod
    def fits(ctx, nbytes: int) -> bool:
        """Whether the output's file system has room for the slab (else: write it at the end)."""
        return free_bytes(ctx.output("slab").path.parent) >= nbytes + METADATA_BYTES

    def buffer(self, rows: int) -> np.ndarray:
        self._check()
        return self.free.get()[:rows]

    def put(self, r0: int, block: np.ndarray) -> None:
        self._check()
        self.full.put((r0, block))
        if self.thread is None:
            self.full.put(None)
            self._write()

    def _write(self) -> None:
        while (item := self.full.get()) is not None:
            r0, block = item
            try:
                if self.error is None:
                    self.dset[self.offset + r0:self.offset + r0 + block.shape[0]] = block
            except BaseException as exc:       # reported to the step by _check / finish
                self.error = exc
            self.free.put(block.base if block.base is not None else block)

    def _check(self) -> None:
        if self.error is not None:
            self.abort()
            exc = self.error
            reason = os_reason(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            raise StepError(f"{self.step}: cannot write {self.final}: {reason}") from None

    def finish(self, rows, detector_rows: int, info: dict) -> None:
        if self.thread:
            self.full.put(None)
            self.thread.join()
        self._check()
        try:
            slab_attributes(self.dset, rows, detector_rows, info)
            self.handle.close()
        except OSError as exc:
            raise StepError(f"{self.step}: cannot write {self.final}: {os_reason(exc)}") from None

    def abort(self) -> None:
        """Stop the thread and close the file (the job runner removes the temporary)."""
        if self.thread and self.thread.is_alive():
            self.full.put(None)
            self.thread.join()
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001 - closing a failed file is best effort
            pass
