"""Which frames of a scan that is still being written can be read now.

Three kinds of growing scans (:func:`open_follower` tells them apart):

- an **Eiger master** whose ``/entry/data/data_NNNNNN`` links name data files that appear one
  after the other and grow (DECTRIS' layout, as ``daisy simulate xrd`` writes it);
- an **HDF5 stack** (``/entry/data/data`` or a given dataset) written frame by frame, with SWMR
  (resize + write + flush) or with plain appends (open, resize, write, close);
- a **folder** receiving one image file per frame (any format fabio reads), in name order.

HDF5 files are opened with ``swmr=True, locking=False``: that reads SWMR-written files
consistently and plain files too, and never takes a lock that would block the writer. A frame
is *readable* when the dataset has grown past it **and** every chunk holding it is allocated and
lies inside the file as it is on disk now (a pre-allocated dataset reads fill values for frames
not yet written; a truncated file has chunk addresses beyond its end). Anything else is "not
yet": the caller decides when waiting turns into a warning, a skipped frame or the end of the scan.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StepError
from ..h5 import hdf5plugin  # noqa: F401,I001  (registers bitshuffle/LZ4 for the data files)

DEFAULT_STACK = "/entry/data/data"
EIGER_LINK = re.compile(r"^data_(\d{6})$")
#: names in a watched folder that are never frames (partial or hidden files)
SKIP_SUFFIXES = (".tmp", ".part", ".partial", ".lock", ".done", ".jsonl", ".json", ".poni")


class NotYet(Exception):
    """The scan (or the part asked for) is not there yet; try again later."""


def open_h5(path) -> h5py.File:
    """Open a file that may be being written: SWMR read, no file lock."""
    return h5py.File(path, "r", swmr=True, locking=False)


class GrowingDataset:
    """A 3D frame stack in one HDF5 file that may still grow (or be pre-allocated and filled)."""

    def __init__(self, path, dataset: str) -> None:
        self.path, self.dataset = Path(path), dataset
        self._file: h5py.File | None = None
        self._dset: h5py.Dataset | None = None
        self._stat: tuple | None = None
        self.frames = 0          # frames in the dataset's current shape
        self.file_size = 0
        self.problem: str | None = None   # why the last frame asked for was not readable

    # -- opening and refreshing ----------------------------------------------------------------
    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001
                pass
        self._file = self._dset = None

    def exists(self) -> bool:
        return self.path.is_file()

    def refresh(self) -> int:
        """The dataset's current frame count (0 while the file or dataset is not there)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.close()
            self.frames = 0
            return 0
        changed = self._stat is not None and (st.st_size, st.st_mtime_ns) != self._stat
        try:
            if self._dset is None:
                self._file = open_h5(self.path)
                self._dset = self._file[self.dataset]
            else:
                self._dset.refresh()
                if changed and self._dset.shape[0] == self.frames:
                    # a plain (non-SWMR) writer changed the file: the cached metadata may be stale
                    self.close()
                    self._file = open_h5(self.path)
                    self._dset = self._file[self.dataset]
        except Exception as exc:  # noqa: BLE001  a file mid-write: try again at the next poll
            self.problem = f"cannot open {self.path}:{self.dataset} yet ({type(exc).__name__}: {exc})"
            self.close()
            return self.frames
        if self._dset.ndim != 3:
            raise StepError(f"{self.path}: dataset {self.dataset} has shape {self._dset.shape}; "
                            f"expected frames (n, rows, cols)")
        self._stat = (st.st_size, st.st_mtime_ns)
        self.file_size = st.st_size
        self.frames = int(self._dset.shape[0])
        return self.frames

    @property
    def dset(self) -> h5py.Dataset:
        if self._dset is None:
            self.refresh()
        if self._dset is None:
            raise NotYet(self.problem or f"{self.path} is not there yet")
        return self._dset

    # -- frames --------------------------------------------------------------------------------
    def _chunks_written(self, k: int) -> bool:
        """Whether frame ``k``'s storage is allocated and inside the file (first and last chunk)."""
        d = self._dset
        if d.chunks is None:
            offset = d.id.get_offset()
            frame_bytes = int(np.prod(d.shape[1:])) * d.dtype.itemsize
            if offset is None or offset + (k + 1) * frame_bytes > self.file_size:
                self.problem = f"{self.path}: frame {k} is not on disk yet (file has {self.file_size} bytes)"
                return False
            return True
        rows, cols = d.shape[1:]
        for coord in ((k, 0, 0), (k, rows - 1, cols - 1)):
            corner = tuple(c - c % n for c, n in zip(coord, d.chunks))
            info = d.id.get_chunk_info_by_coord(corner)
            if info.byte_offset is None:
                self.problem = f"{self.path}: frame {k} is not written yet (no chunk at {corner})"
                return False
            if info.byte_offset + info.size > self.file_size:
                self.problem = (f"{self.path}: frame {k} lies beyond the end of the file "
                                f"({info.byte_offset + info.size} > {self.file_size} bytes: truncated or mid-write)")
                return False
        return True

    def read(self, k: int, out: np.ndarray, rows: Any = None) -> bool:
        """Read frame ``k`` into ``out`` if it is readable now (``rows``: a row selection)."""
        if (self._dset is None or k >= self.frames) and self.refresh() <= k:
            self.problem = f"{self.path}: frame {k} not written yet ({self.frames} frames)"
            return False
        if self._dset is None:
            return False
        try:
            if not self._chunks_written(k):
                self.refresh()
                return False
            if rows is None:
                self._dset.read_direct(out, np.s_[k], np.s_[...])
            else:
                out[...] = self._dset[k][rows]
        except Exception as exc:  # noqa: BLE001  a chunk mid-write or cut short
            self.problem = f"{self.path}: frame {k} cannot be read yet ({type(exc).__name__}: {exc})"
            self.close()
            return False
        self.problem = None
        return True


class Follower:
    """Frames of a growing scan by global index. Subclasses set ``shape``, ``dtype``, ``label``,
    ``files``, ``metadata`` and ``expected`` (the frame count the scan announces, or None)."""

    kind = "follower"
    shape: tuple[int, int]
    dtype: np.dtype
    label: str
    expected: int | None = None

    def __init__(self) -> None:
        self.files: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.problem: str | None = None

    def read(self, index: int, out: np.ndarray) -> bool:
        raise NotImplementedError

    def known(self) -> int:
        """How many frames exist so far (some may not be readable yet)."""
        raise NotImplementedError

    def pixel_mask(self) -> np.ndarray | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.label, "files": list(self.files), "shape": list(self.shape),
                "dtype": str(self.dtype), "expected": self.expected}

    def close(self) -> None:
        pass


class StackFollower(Follower):
    kind = "hdf5"

    def __init__(self, path, dataset: str = DEFAULT_STACK, expected: int | None = None) -> None:
        super().__init__()
        self.part = GrowingDataset(path, dataset)
        self.part.refresh()
        if self.part._dset is None:
            raise NotYet(self.part.problem or f"{path}:{dataset} is not there yet")
        self.shape = tuple(int(s) for s in self.part.dset.shape[1:])
        self.dtype = self.part.dset.dtype
        self.label = f"{path}:{dataset}"
        self.files = [str(path)]
        self.expected = expected

    def read(self, index, out):
        ok = self.part.read(index, out)
        self.problem = self.part.problem
        return ok

    def known(self):
        return self.part.frames

    def close(self):
        self.part.close()


class EigerFollower(Follower):
    """An Eiger master and its data files, which appear one after the other and grow."""

    kind = "eiger"

    def __init__(self, master, expected: int | None = None) -> None:
        super().__init__()
        from ..xrd.frames import EigerSource

        self.master = Path(master)
        self.label = str(master)
        self.parts: list[GrowingDataset] = []
        self.bounds: list[int | None] = []     # frames per part, once known
        self._links_read = 0.0
        with open_h5(self.master) as handle:
            self.metadata = EigerSource._read_metadata(handle)
            spec = "/entry/instrument/detector/detectorSpecific"
            n_images = _int(handle, f"{spec}/nimages")
            n_trigger = _int(handle, f"{spec}/ntrigger") or 1
            self._mask_path = self.metadata.get("pixel_mask_path")
            self._read_links(handle)
            rows, cols = _int(handle, f"{spec}/y_pixels_in_detector"), _int(handle, f"{spec}/x_pixels_in_detector")
            depth = _int(handle, "/entry/instrument/detector/bit_depth_image")
        self.expected = expected if expected is not None else (n_images * n_trigger if n_images else None)
        if rows and cols and depth in (8, 16, 32):
            # the master, written when the detector is armed, tells the frames' shape and type:
            # the watcher sets up (mask, integrator) before the first data file exists
            self.shape, self.dtype = (rows, cols), np.dtype(f"uint{depth}")
            return
        if not self.parts or not self.parts[0].exists():
            raise NotYet(f"{self.master}: no data file yet")
        first = self.parts[0]
        first.refresh()
        if first._dset is None:
            raise NotYet(first.problem or f"{first.path} is not readable yet")
        self.shape = tuple(int(s) for s in first.dset.shape[1:])
        self.dtype = first.dset.dtype

    def _read_links(self, handle=None) -> None:
        self._links_read = time.monotonic()
        own = handle is None
        handle = open_h5(self.master) if own else handle
        try:
            group = handle.get("/entry/data")
            names = sorted(n for n in (group or {}) if EIGER_LINK.match(n))
            for name in names[len(self.parts):]:
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    target = Path(link.filename)
                    path = target if target.is_absolute() else self.master.parent / target
                    self.parts.append(GrowingDataset(path, link.path))
                else:
                    self.parts.append(GrowingDataset(self.master, f"/entry/data/{name}"))
                self.bounds.append(None)
        finally:
            if own:
                handle.close()
        self.files = [str(self.master)] + [str(p.path) for p in self.parts]

    def _frames_in(self, i: int) -> int | None:
        """Frames part ``i`` will hold: its image_nr_low/high, else its size once part i+1 exists."""
        if self.bounds[i] is not None:
            return self.bounds[i]
        part = self.parts[i]
        part.refresh()
        if part._dset is not None:
            low, high = part._dset.attrs.get("image_nr_low"), part._dset.attrs.get("image_nr_high")
            if low is not None and high is not None:
                self.bounds[i] = int(high) - int(low) + 1
                return self.bounds[i]
        if i + 1 < len(self.parts) and self.parts[i + 1].exists():
            self.bounds[i] = part.refresh()
            return self.bounds[i]
        return None

    def _locate(self, index: int) -> tuple[int, int] | None:
        lo = 0
        i = 0
        while True:
            if i >= len(self.parts):
                if time.monotonic() - self._links_read > 0.5:
                    self._read_links()
                if i >= len(self.parts):
                    return None
            n = self._frames_in(i)
            if n is None or index < lo + n:
                return i, index - lo
            lo += n
            i += 1

    def read(self, index, out):
        where = self._locate(index)
        if where is None:
            self.problem = f"{self.master}: frame {index} is beyond the data files linked so far"
            return False
        i, local = where
        ok = self.parts[i].read(local, out)
        self.problem = None if ok else f"frame {index}: {self.parts[i].problem}"
        return ok

    def known(self):
        total = 0
        for i, part in enumerate(self.parts):
            n = self.bounds[i]
            if n is None:
                return total + part.frames
            total += n
        return total

    def pixel_mask(self):
        if self._mask_path is None:
            return None
        with open_h5(self.master) as handle:
            return np.asarray(handle[self._mask_path][()])

    def describe(self):
        return {**super().describe(), "pixel_mask": self._mask_path, "data_files": len(self.parts)}

    def close(self):
        for part in self.parts:
            part.close()


class FolderFollower(Follower):
    """One image file per frame, in name order; a file counts once fabio reads it and its size
    and modification time have not changed for ``settle`` seconds (or it was renamed into place)."""

    kind = "folder"

    def __init__(self, folder, pattern: str = "*", settle: float = 0.2, expected: int | None = None) -> None:
        super().__init__()
        self.folder, self.pattern, self.settle = Path(folder), pattern, settle
        self.label = str(folder)
        self.expected = expected
        self.names: list[Path] = []
        self._listed = 0.0
        self._list(force=True)
        if not self.names:
            raise NotYet(f"{self.folder}: no image file yet")
        first = self._load(self.names[0])
        if first is None:
            raise NotYet(f"{self.names[0]} is not complete yet")
        self.shape, self.dtype = first.shape, first.dtype
        self.files = [str(self.folder)]

    def _list(self, force=False) -> None:
        if not force and time.monotonic() - self._listed < 0.05:
            return
        self._listed = time.monotonic()
        self.names = sorted(p for p in self.folder.glob(self.pattern)
                            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(SKIP_SUFFIXES))

    def _load(self, path: Path) -> np.ndarray | None:
        import fabio

        try:
            st = path.stat()
            if time.time() - st.st_mtime < self.settle:
                self.problem = f"{path} was modified less than {self.settle} s ago"
                return None
            with fabio.open(str(path)) as image:
                data = np.asarray(image.data)
            if path.stat().st_mtime_ns != st.st_mtime_ns:
                return None
            return data
        except Exception as exc:  # noqa: BLE001  a file still being written
            self.problem = f"{path}: not readable yet ({type(exc).__name__}: {exc})"
            return None

    def read(self, index, out):
        self._list()
        if index >= len(self.names):
            self._list(force=True)
            if index >= len(self.names):
                self.problem = f"{self.folder}: frame {index} (file {index + 1} in name order) is not there yet"
                return False
        data = self._load(self.names[index])
        if data is None:
            return False
        if data.shape != tuple(self.shape):
            raise StepError(f"{self.names[index]}: frame of shape {data.shape}, but the scan's frames have "
                            f"shape {tuple(self.shape)}")
        out[...] = data
        return True

    def known(self):
        self._list()
        return len(self.names)

    def name(self, index: int) -> str | None:
        return str(self.names[index]) if index < len(self.names) else None


def _int(handle, path) -> int | None:
    obj = handle.get(path)
    if not isinstance(obj, h5py.Dataset):
        return None
    try:
        return int(np.asarray(obj[()]).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def open_follower(path, dataset: str | None = None, fmt: str = "auto", pattern: str = "*",
                  expected: int | None = None) -> Follower:
    """A follower for the scan at ``path`` (file or folder); :class:`NotYet` while it is not there."""
    path = Path(path)
    if path.is_dir():
        return FolderFollower(path, pattern, expected=expected)
    if not path.is_file():
        raise NotYet(f"{path} does not exist yet")
    if fmt == "fabio":
        raise StepError(f"{path}: a single image file is not a growing scan; watch the folder it lands in")
    try:
        with open_h5(path) as handle:
            group = handle.get("/entry/data")
            links = [n for n in (group or {}) if EIGER_LINK.match(n)] if isinstance(group, h5py.Group) else []
    except Exception as exc:  # noqa: BLE001  OSError, RuntimeError, ...: a file mid-write
        raise NotYet(f"{path} is not a readable HDF5 file yet ({type(exc).__name__}: {exc})") from None
    try:
        if fmt == "eiger" or (fmt == "auto" and links and not dataset):
            if not links:
                raise NotYet(f"{path}: no Eiger links /entry/data/data_NNNNNN yet")
            return EigerFollower(path, expected)
        return StackFollower(path, dataset or DEFAULT_STACK, expected)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:  # metadata still being written
        raise NotYet(f"{path}: not readable yet ({type(exc).__name__}: {exc})") from None


def wait_for(make, stop, poll: float = 0.1, timeout: float | None = None, on_wait=None):
    """Call ``make()`` until it stops raising :class:`NotYet` (or ``stop()`` / ``timeout``)."""
    started = time.monotonic()
    while True:
        try:
            return make()
        except NotYet as exc:
            if stop() or (timeout is not None and time.monotonic() - started > timeout):
                raise
            if on_wait is not None:
                on_wait(str(exc))
            time.sleep(poll)


def file_size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1
