"""Lazy frame sources: Eiger master files, plain HDF5 stacks, fabio images, in-memory arrays.

A :class:`FrameSource` knows the frame shape, dtype and count from the file headers only; its
:meth:`FrameSource.frames` streams the frames one at a time, so a scan is never held in memory as
a whole. HDF5 frames are read ahead, one frame per read, by a reader thread into a ring of
buffers while the caller works on the previous frame (:func:`read_ahead`): single-frame reads
into a reused buffer are faster per frame than multi-frame reads of bitshuffle/LZ4 chunks, and
reading ahead hides them behind pyFAI (figures: docs/benchmarks.md, DEVELOPERS.md).
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from ..errors import StepError
from ..fileio import FileRef
from ..h5 import get_dataset, open_file

#: Eiger master files link their data files as /entry/data/data_000001, data_000002, ...
EIGER_LINK = re.compile(r"^data_(\d{6})$")
#: Where the detector's pixel mask may lie in a master file (NeXus, then DECTRIS' own place).
PIXEL_MASK_PATHS = ("/entry/instrument/detector/pixel_mask",
                    "/entry/instrument/detector/detectorSpecific/pixel_mask")
DEFAULT_STACK = "/entry/data/data"


def _scalar(handle: h5py.File, path: str):
    obj = handle.get(path)
    if not isinstance(obj, h5py.Dataset):
        return None
    value = obj[()]
    if isinstance(value, bytes):
        value = value.decode()
    elif isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value
    elif isinstance(value, np.generic):
        value = value.item()
    unit = obj.attrs.get("units")
    if isinstance(unit, bytes):
        unit = unit.decode()
    return value if unit is None else (value, str(unit))


class FrameSource:
    """Frames ``start`` to ``stop`` (global indices, stop exclusive) of a scan."""

    kind = "frames"

    def __init__(self, label: str, shape: tuple[int, int], dtype: np.dtype, n_total: int,
                 start: int = 0, stop: int | None = None, batch: int = 8) -> None:
        self.label = label
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.n_total = int(n_total)
        if self.n_total == 0:
            raise StepError(f"{label}: the scan holds no frames")
        if 0 in self.shape:
            raise StepError(f"{label}: its frames are empty (frame shape {self.shape})")
        if self.dtype.kind not in "biuf":
            raise StepError(f"{label}: its frames hold {self.dtype} values, not numbers")
        stop = self.n_total if stop is None else int(stop)
        if not 0 <= start < stop <= self.n_total:
            raise StepError(f"{label}: frames {start}:{stop} outside the scan's {self.n_total} frames")
        self.start, self.stop, self.batch = int(start), stop, max(1, int(batch))
        self.metadata: dict[str, Any] = {}
        self.files: list[str] = []

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.stop, dtype=np.int64)

    def pixel_mask(self) -> np.ndarray | None:
        """The detector's own pixel mask (nonzero = bad), if the source has one."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.label, "files": self.files, "n_total": self.n_total,
                "start": self.start, "stop": self.stop, "shape": list(self.shape), "dtype": str(self.dtype)}

    def batches(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_global_index, frames[n, rows, cols])`` in frame order (in-memory and
        fabio sources; HDF5 sources read frame by frame instead, :class:`HDF5Source`)."""
        raise NotImplementedError

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(global_index, frame)`` one at a time, in frame order.

        The frame array may be reused for a later frame: copy it to keep it.
        """
        for first, block in self.batches():
            for offset, frame in enumerate(block):
                yield first + offset, frame


#: What a reader yields: a frame's global index and a function that reads it into a buffer.
FrameRead = tuple[int, Callable[[np.ndarray], None]]


def read_ahead(reads: Callable[[], Iterator[FrameRead]], shape: tuple[int, ...], dtype: np.dtype,
               depth: int, label: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` while a reader thread fills the next frames into ``depth`` buffers.

    ``reads()`` runs in the reader thread (it opens and closes its files there). A buffer is
    refilled only after the caller asks for the next frame. A read error is raised here, naming
    the frame; if the caller stops early, the reader stops and its files are closed.
    """
    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()
    for _ in range(max(1, depth)):
        free.put(np.empty(shape, dtype))

    def reader() -> None:
        index = None
        try:
            with contextlib.closing(reads()) as jobs:
                for index, read_into in jobs:
                    buffer = free.get()
                    if buffer is None or stop.is_set():
                        return
                    read_into(buffer)
                    ready.put((index, buffer))
        except StepError as exc:
            ready.put(exc)
            return
        except Exception as exc:  # h5py raises OSError/KeyError/... for damaged chunks or links
            where = f"frame {index}" if index is not None else "its frames"
            ready.put(StepError(f"{label}: cannot read {where}: {exc}"))
            return
        ready.put(None)

    thread = threading.Thread(target=reader, name="daisy-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            free.put(item[1])
    finally:
        stop.set()
        free.put(None)
        thread.join()


class ArraySource(FrameSource):
    """Frames already in memory (e.g. from ``hdf5.load``)."""

    kind = "array"

    def __init__(self, data: np.ndarray, label: str = "data store", start: int = 0, batch: int = 8) -> None:
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise StepError(f"{label}: frames must be 2D or a 3D stack, got shape {data.shape}")
        super().__init__(label, data.shape[1:], data.dtype, start + data.shape[0], start, None, batch)
        self._data = data
        self._offset = start

    def batches(self, size=None):
        size = size or self.batch
        for first in range(self.start, self.stop, size):
            last = min(first + size, self.stop)
            yield first, self._data[first - self._offset:last - self._offset]


class HDF5Source(FrameSource):
    """A source read from HDF5: its frames are read one by one, ahead of the caller."""

    def _reads(self) -> Iterator[FrameRead]:
        raise NotImplementedError

    def frames(self):
        return read_ahead(self._reads, self.shape, self.dtype, self.batch, self.label)


class HDF5StackSource(HDF5Source):
    """A 3D dataset (frames, rows, cols) or a single 2D frame in an HDF5 file."""

    kind = "hdf5"

    def __init__(self, path: Path, dataset: str, start=0, stop=None, batch=8) -> None:
        with open_file(path) as handle:
            dset = get_dataset(handle, dataset, path)
            shape = dset.shape
            dtype = dset.dtype
        if len(shape) not in (2, 3):
            raise StepError(f"{path}: dataset {dataset} has shape {shape}; expected frames (n, rows, cols) or one 2D frame")
        self.path, self.dataset, self._single = Path(path), dataset, len(shape) == 2
        n = 1 if self._single else shape[0]
        super().__init__(f"{path}:{dataset}", shape[-2:], dtype, n, start, stop, batch)
        self.files = [str(path)]

    def _reads(self) -> Iterator[FrameRead]:
        with open_file(self.path) as handle:
            dset = handle[self.dataset]
            for index in range(self.start, self.stop):
                where = np.s_[...] if self._single else np.s_[index]
                yield index, lambda buffer, where=where: dset.read_direct(buffer, where, np.s_[...])


class EigerSource(HDF5Source):
    """An Eiger master file whose /entry/data/data_NNNNNN link the data files' frames."""

    kind = "eiger"

    def __init__(self, path: Path, links: list[str], start=0, stop=None, batch=8) -> None:
        self.path = Path(path)
        parts, shape, dtype, files = [], None, None, []
        with open_file(path) as handle:
            for name in links:
                where = f"/entry/data/{name}"
                link = handle["/entry/data"].get(name, getlink=True)
                target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else where
                try:
                    dset = handle[where]
                except (KeyError, OSError):
                    raise StepError(f"{path}: {where} links to {target}, which cannot be opened "
                                    f"(data file missing or dataset path wrong)") from None
                if not isinstance(dset, h5py.Dataset) or dset.ndim != 3:
                    raise StepError(f"{path}: {where} ({target}) is not a 3D frame stack")
                if shape is None:
                    shape, dtype = dset.shape[1:], dset.dtype
                elif dset.shape[1:] != shape:
                    raise StepError(f"{path}: {where} has frames of shape {dset.shape[1:]}, "
                                    f"but data_{links[0][5:]} has {shape}")
                parts.append((where, int(dset.shape[0])))
                files.append(str(Path(path).parent / Path(dset.file.filename).name))
            metadata = self._read_metadata(handle)
        self._parts = parts
        super().__init__(str(path), shape, dtype, sum(n for _, n in parts), start, stop, batch)
        self.files = [str(path)] + files
        self.metadata = metadata

    @staticmethod
    def _read_metadata(handle: h5py.File) -> dict[str, Any]:
        det = "/entry/instrument/detector"
        keys = {
            "detector_distance": f"{det}/detector_distance",
            "x_pixel_size": f"{det}/x_pixel_size",
            "y_pixel_size": f"{det}/y_pixel_size",
            "beam_center_x": f"{det}/beam_center_x",
            "beam_center_y": f"{det}/beam_center_y",
            "description": f"{det}/description",
            "incident_wavelength": "/entry/instrument/beam/incident_wavelength",
        }
        out = {}
        for key, where in keys.items():
            value = _scalar(handle, where)
            if value is not None:
                out[key] = value
        for where in PIXEL_MASK_PATHS:
            if isinstance(handle.get(where), h5py.Dataset):
                out["pixel_mask_path"] = where
                break
        return out

    def pixel_mask(self) -> np.ndarray | None:
        where = self.metadata.get("pixel_mask_path")
        if where is None:
            return None
        with open_file(self.path) as handle:
            return np.asarray(handle[where][()])

    def describe(self):
        return {**super().describe(), "pixel_mask": self.metadata.get("pixel_mask_path")}

    def _blocks(self, handle: h5py.File) -> Iterator[tuple[h5py.Dataset, int, int, int]]:
        """(data file's dataset, its first global frame, lo, hi) for the frames of this source."""
        offset = 0
        for where, n in self._parts:
            lo, hi = max(self.start, offset), min(self.stop, offset + n)
            if lo < hi:
                yield handle[where], offset, lo, hi
            offset += n

    def _reads(self) -> Iterator[FrameRead]:
        with open_file(self.path) as handle:
            for dset, offset, lo, hi in self._blocks(handle):
                for index in range(lo, hi):
                    yield index, lambda buffer, dset=dset, i=index - offset: dset.read_direct(buffer, np.s_[i], np.s_[...])


class FabioSource(FrameSource):
    """Any 2D format fabio reads (EDF, CBF, TIFF, ...), single or multi-frame."""

    kind = "fabio"

    def __init__(self, path: Path, start=0, stop=None, batch=8) -> None:
        import fabio

        self.path = Path(path)
        try:
            with fabio.open(str(path)) as image:
                n, shape, dtype = int(getattr(image, "nframes", 1) or 1), image.shape, image.data.dtype
        except Exception as exc:  # fabio raises IOError/ValueError/... for unknown formats
            raise StepError(f"input file {path} is neither HDF5 nor a format fabio reads ({exc})") from None
        if len(shape) != 2:
            raise StepError(f"{path}: frames have shape {shape}; expected 2D")
        super().__init__(str(path), shape, dtype, n, start, stop, batch)
        self.files = [str(path)]

    def batches(self, size=None):
        import fabio

        size = size or self.batch
        with fabio.open(str(self.path)) as image:
            for first in range(self.start, self.stop, size):
                last = min(first + size, self.stop)
                frames = [image.data if (i == 0 and image.nframes <= 1) else image.getframe(i).data
                          for i in range(first, last)]
                yield first, np.stack(frames)


def eiger_links(handle: h5py.File) -> list[str]:
    group = handle.get("/entry/data")
    if not isinstance(group, h5py.Group):
        return []
    return sorted(name for name in group if EIGER_LINK.match(name))


def open_source(ref: FileRef, fmt: str = "auto", start: int = 0, stop: int | None = None,
                batch: int = 8) -> FrameSource:
    """Detect the layout of ``ref`` and return a lazy frame source."""
    path = ref.path
    if not path.is_file():
        raise StepError(f"input file {path} does not exist")
    is_hdf5 = h5py.is_hdf5(path)
    if fmt in ("eiger", "hdf5") and not is_hdf5:
        raise StepError(f"input file {path} is not an HDF5 file (format '{fmt}' was asked for)")
    if fmt == "fabio" or (fmt == "auto" and not is_hdf5):
        return FabioSource(path, start, stop, batch)
    if ref.dataset and fmt != "eiger":
        return HDF5StackSource(path, ref.dataset, start, stop, batch)
    with open_file(path) as handle:
        links = eiger_links(handle)
        has_stack = isinstance(handle.get(DEFAULT_STACK), h5py.Dataset)
    if fmt == "eiger" or (fmt == "auto" and links):
        if not links:
            raise StepError(f"{path}: not an Eiger master file (no links /entry/data/data_NNNNNN)")
        return EigerSource(path, links, start, stop, batch)
    if has_stack:
        return HDF5StackSource(path, DEFAULT_STACK, start, stop, batch)
    raise StepError(f"{path}: no dataset path given, and neither Eiger links /entry/data/data_NNNNNN "
                    f"nor {DEFAULT_STACK} found; write the input as {path}:/path/to/frames")


def read_image(ref: FileRef, what: str, average: bool = False) -> np.ndarray:
    """One 2D image (mask, dark, flat) from HDF5 (``file.h5:/dataset``), .npy or a fabio format.

    A 3D stack is averaged over its first axis when ``average`` (darks, flats), else refused.
    """
    path = ref.path
    if not path.is_file():
        raise StepError(f"{what} file {path} does not exist")
    if h5py.is_hdf5(path):
        if not ref.dataset:
            raise StepError(f"{what} {path}: no dataset path given (write it as {path}:/path/to/{what.split()[-1]})")
        with open_file(path) as handle:
            dset = get_dataset(handle, ref.dataset, path)
            if dset.ndim == 3 and average:
                total = np.zeros(dset.shape[1:], np.float64)
                for i in range(dset.shape[0]):
                    total += dset[i]
                return total / max(1, dset.shape[0])
            data = np.asarray(dset[()])
    elif path.suffix == ".npy":
        data = np.load(path)
    else:
        import fabio

        try:
            with fabio.open(str(path)) as image:
                data = np.asarray(image.data)
        except Exception as exc:
            raise StepError(f"{what} file {path} is neither HDF5, .npy nor a format fabio reads ({exc})") from None
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise StepError(f"{what} {ref}: expected a 2D image, got shape {data.shape}")
    return data
