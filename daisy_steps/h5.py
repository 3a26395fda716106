"""HDF5 helpers shared by steps: open a dataset with clear errors, write arrays, NeXus groups."""

from __future__ import annotations

import contextlib
from typing import Iterator

import h5py
import numpy as np

from .errors import StepError
from .fileio import FileRef

try:  # registers the compression filters (bitshuffle/LZ4, Blosc, ...) with HDF5
    import hdf5plugin  # noqa: F401
except ImportError:  # pragma: no cover - every DAISY image ships it
    hdf5plugin = None


@contextlib.contextmanager
def open_file(path) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only, or fail naming it."""
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise StepError(f"input file {path} does not exist") from None
    except OSError as exc:
        raise StepError(f"input file {path} is not a readable HDF5 file ({exc})") from None
    with handle:
        yield handle


def get_dataset(handle: h5py.File, path: str, file_label=None) -> h5py.Dataset:
    """``handle[path]`` as a dataset, or a StepError naming file and dataset path."""
    label = file_label or handle.filename
    try:
        obj = handle[path]
    except KeyError:
        raise StepError(f"{label}: dataset {path} does not exist") from None
    if not isinstance(obj, h5py.Dataset):
        raise StepError(f"{label}: {path} is a group, not a dataset")
    return obj


@contextlib.contextmanager
def open_dataset(ref: FileRef) -> Iterator[h5py.Dataset]:
    """Open ``file.h5:/dataset`` read-only."""
    if not ref.dataset:
        raise StepError(f"input {ref.path}: no dataset path given (write it as {ref.path}:/path/to/data)")
    with open_file(ref.path) as handle:
        yield get_dataset(handle, ref.dataset, ref.path)


def nx_group(parent: h5py.Group, path: str, nx_class: str) -> h5py.Group:
    """The group ``path`` under ``parent`` (created, with its parents, if missing), with its
    NeXus class attribute ``NX_class`` set (a UTF-8 string, as every DAISY string)."""
    group = parent.require_group(path)
    group.attrs["NX_class"] = nx_class
    return group


def compression_options(name: str, level: int = 4) -> dict:
    """``create_dataset`` keyword arguments for a compression name used by the schemas:
    none, gzip (with byte shuffle), lzf, bitshuffle-lz4 (what Eiger detectors write)."""
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "bitshuffle-lz4":
        if hdf5plugin is None:  # pragma: no cover - every DAISY image ships it
            raise StepError("compression bitshuffle-lz4 needs hdf5plugin, which is not installed")
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise StepError(f"unknown compression '{name}' (allowed: none, gzip, lzf, bitshuffle-lz4)")


def chunk_shape(shape: tuple[int, ...], itemsize: int, target_bytes: int = 1 << 20) -> tuple[int, ...] | None:
    """Chunks of whole 2D planes of the last two axes, about ``target_bytes`` each."""
    if len(shape) < 2 or 0 in shape:
        return None
    plane = int(np.prod(shape[-2:])) * itemsize
    if plane >= target_bytes:
        rows = max(1, target_bytes // (shape[-1] * itemsize))
        return tuple([1] * (len(shape) - 2) + [min(rows, shape[-2]), shape[-1]])
    lead = max(1, target_bytes // plane)
    return tuple([1] * (len(shape) - 3) + [min(lead, shape[-3])] + list(shape[-2:])) if len(shape) >= 3 else tuple(shape)


def write_array(ref: FileRef, data: np.ndarray, compression: str = "gzip", attrs: dict | None = None) -> None:
    """Write ``data`` to ``ref`` (a new file), chunked for plane access, compressed."""
    dataset = ref.dataset or "/entry/data/data"
    opts = {}
    if compression != "none" and data.ndim >= 2:
        opts = {"chunks": chunk_shape(data.shape, data.dtype.itemsize), **compression_options(compression)}
    with h5py.File(ref.path, "w") as handle:
        dset = handle.create_dataset(dataset, data=data, **opts)
        for key, value in (attrs or {}).items():
            dset.attrs[key] = value
