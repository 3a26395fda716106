"""File series: one single-frame image file per frame (Pilatus CBF, EDF, TIFF, anything fabio reads).

A beamline writes a scan as ``lab6_0000.cbf``, ``lab6_0001.cbf``, ...; DAISY takes the series
from a glob pattern (``data/lab6_*.cbf``) or a folder, orders it naturally (``_0009`` before
``_0010``), names gaps in the numbering and files it cannot read. Frame ``k`` of the scan is the
``k``-th file in that order. The planner (``daisy/pipelines/xrd.py``) lists every file as an
input of the block job that reads it: ``xrd.load_frames`` gets them as input slots
``series_<frame>`` (``series_000123``) and builds a :class:`SeriesSource`.

Host side (planning) and image side (jobs) use the same functions; only headers are read when
planning (:func:`fabio.openheader`), frames only when integrating.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import StepError
from .frames import FrameRead, FrameSource, read_ahead

#: what a series may hold: single-frame formats fabio reads (compressed variants too)
IMAGE_SUFFIXES = (".cbf", ".edf", ".tif", ".tiff", ".img", ".mccd", ".sfrm", ".mar2300", ".mar3450",
                  ".mar2560", ".mar3600", ".gfrm", ".kcd", ".pnm", ".pgm", ".xrdml", ".raw", ".esperanto",
                  ".jpg", ".jpeg", ".png", ".h5.edf", ".edf.gz", ".edf.bz2", ".cbf.gz", ".cbf.bz2", ".img.gz")
GLOB_CHARS = frozenset("*?[")
#: input slots of a series' frames: series_<global frame index>
SLOT = re.compile(r"^series_(\d+)$")
#: a frame file's name: <prefix><separator><number>.<suffix>
NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<sep>[_\-.]?)(?P<number>\d+)$")


def slot_name(frame: int) -> str:
    return f"series_{frame:06d}"


def natural_key(path: str | os.PathLike) -> list:
    """Sort key: digit runs compare as numbers (``_0009`` before ``_0010``, ``_9`` before ``_10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(_suffix(path))] if _suffix(path) else path.stem


def is_series_spec(spec: str) -> bool:
    """Is ``spec`` (``input.file``) a series: a glob pattern or a folder?"""
    path = Path(spec)
    return path.is_dir() or (bool(GLOB_CHARS & set(str(spec))) and not path.is_file())


def expand(spec: str) -> list[Path]:
    """The image files of ``spec`` (a glob pattern or a folder), in natural order."""
    path = Path(spec)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and _suffix(p) in IMAGE_SUFFIXES]
        what = f"folder {path}"
    else:
        files = [Path(p) for p in glob.glob(str(spec)) if Path(p).is_file()]
        what = f"pattern {spec}"
    if not files:
        raise StepError(f"input {what}: no image files found"
                        + (f" (a series holds {', '.join(IMAGE_SUFFIXES[:6])}, ... files)" if path.is_dir() else ""))
    return sorted(files, key=natural_key)


def split_number(path: Path) -> tuple[str, int | None]:
    """``lab6_0012.cbf`` -> (``lab6``, 12); a name without a trailing number -> (stem, None)."""
    match = NUMBERED.match(_stem(path))
    if not match:
        return _stem(path), None
    return match["prefix"], int(match["number"])


def group_scans(files: list[Path]) -> dict[str, list[Path]]:
    """Files of several series (one folder, many scans) grouped by their name without the frame
    number, each group in natural order; the key is the scan's name."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        prefix, _ = split_number(path)
        groups.setdefault(f"{path.parent}/{prefix}", []).append(path)
    out: dict[str, list[Path]] = {}
    for key in sorted(groups, key=natural_key):
        files_ = sorted(groups[key], key=natural_key)
        out[series_name(files_)] = files_
    return out


def series_name(files: list[Path]) -> str:
    """A series' scan name: the files' common name without the frame number (``lab6``), else
    their folder's name."""
    prefix, number = split_number(files[0])
    if number is None or not prefix.strip("_-."):
        return files[0].parent.resolve().name or "series"
    return prefix.rstrip("_-.")


def gaps(files: list[Path]) -> list[str]:
    """Names of files missing from a numbered series (``lab6_0003.cbf`` between 0002 and 0004)."""
    numbered = [(split_number(p), p) for p in files]
    if any(n is None for (_, n), _ in numbered):
        return []
    missing = []
    for ((prefix, a), pa), ((_, b), _) in zip(numbered, numbered[1:]):
        match = NUMBERED.match(_stem(pa))
        width = len(match["number"])
        for n in range(a + 1, b):
            missing.append(f"{prefix}{match['sep']}{n:0{width}d}{_suffix(pa)}")
    return missing


def check_files(files: list[Path], label: str) -> None:
    """Refuse, naming them, files that are empty or cannot be opened for reading."""
    bad = []
    for path in files:
        try:
            size = path.stat().st_size
            with open(path, "rb"):
                pass
        except OSError as exc:
            bad.append(f"{path.name} ({exc.strerror or exc})")
            continue
        if size == 0:
            bad.append(f"{path.name} (empty)")
    if bad:
        raise StepError(f"{label}: {len(bad)} unreadable file(s): {', '.join(bad[:20])}"
                        + (" ..." if len(bad) > 20 else ""))


def frame_header(path: Path) -> tuple[tuple[int, int], np.dtype, int, dict[str, Any]]:
    """Shape, dtype, frame count and header of one image file (header only where fabio can)."""
    import fabio

    try:
        with fabio.open(str(path)) as image:
            nframes = int(getattr(image, "nframes", 1) or 1)
            return tuple(image.shape), np.dtype(image.data.dtype), nframes, dict(image.header)
    except Exception as exc:  # fabio raises IOError/ValueError/... for unknown or damaged files
        raise StepError(f"series file {path} cannot be read by fabio ({exc})") from None


def header_value(header: dict[str, Any], key: str, path: Path) -> float:
    """A number from an image header: the key itself, or a ``# key value`` line of a Pilatus CBF
    header (``_array_data.header_contents``)."""
    if key in header:
        text = str(header[key])
    else:
        text = None
        for value in header.values():
            for line in str(value).splitlines():
                words = line.lstrip("# ").split()
                if words and words[0].rstrip(":=") == key and len(words) > 1:
                    text = words[1].lstrip("=:")
                    break
            if text is not None:
                break
        if text is None:
            raise StepError(f"{path}: its header has no '{key}' (keys: {', '.join(list(header)[:12])})")
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        raise StepError(f"{path}: header '{key}' is {text!r}, not a number") from None


def header_values(files: list[Path], key: str) -> np.ndarray:
    """``key`` from the header of each file (fabio reads only the header)."""
    import fabio

    out = np.empty(len(files), np.float64)
    for i, path in enumerate(files):
        try:
            header = dict(fabio.openheader(str(path)).header)
        except Exception as exc:
            raise StepError(f"series file {path}: cannot read its header ({exc})") from None
        out[i] = header_value(header, key, path)
    return out


class SeriesSource(FrameSource):
    """Frames of a file series: ``files`` maps a global frame index to its file (the block's
    frames ``start:stop``; every one must be given). Frames are read ahead, file by file."""

    kind = "series"

    def __init__(self, files: dict[int, Path], start: int, stop: int | None, batch: int = 8,
                 n_total: int | None = None, label: str | None = None) -> None:
        if not files:
            raise StepError("file series: no frame files given (input slots series_NNNNNN)")
        indices = sorted(files)
        stop = indices[-1] + 1 if stop is None else int(stop)
        missing = [i for i in range(start, stop) if i not in files]
        if missing:
            raise StepError(f"file series: frames {missing[:10]} of {start}:{stop} have no file "
                            f"(input slots {slot_name(missing[0])}, ...)")
        first = Path(files[start]) if start in files else Path(files[indices[0]])
        shape, dtype, nframes, _ = frame_header(first)
        if len(shape) != 2:
            raise StepError(f"series file {first}: frames have shape {shape}; expected 2D")
        if nframes > 1:
            raise StepError(f"series file {first} holds {nframes} frames: a series has one frame per file "
                            f"(give a multi-frame file as input.file)")
        self._files = {i: Path(files[i]) for i in range(start, stop)}
        super().__init__(label or f"series {first.parent}/{split_number(first)[0]}*", shape, dtype,
                         max(n_total or 0, stop), start, stop, batch)
        self.files = [str(self._files[i]) for i in range(start, stop)]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["files"] = [Path(f).name for f in self.files]
        out["folder"] = str(Path(self.files[0]).parent)
        return out

    def _reads(self) -> Iterator[FrameRead]:
        import fabio

        def read(path: Path, index: int):
            def into(buffer: np.ndarray) -> None:
                try:
                    with fabio.open(str(path)) as image:
                        data = image.data
                except Exception as exc:
                    raise StepError(f"series file {path} (frame {index}) cannot be read ({exc})") from None
                if data.shape != buffer.shape:
                    raise StepError(f"series file {path} (frame {index}) has shape {data.shape}, but the "
                                    f"series' frames have shape {buffer.shape}")
                buffer[...] = data
            return into

        for index in range(self.start, self.stop):
            yield index, read(self._files[index], index)

    def frames(self):
        return read_ahead(self._reads, self.shape, self.dtype, self.batch, self.label)

    def batches(self, size=None):
        size = size or self.batch
        block: list[np.ndarray] = []
        first = self.start
        for index, frame in self.frames():
            block.append(frame.copy())
            if len(block) == size:
                yield first, np.stack(block)
                block, first = [], index + 1
        if block:
            yield first, np.stack(block)


def source_from_slots(ctx, params: dict[str, Any]) -> SeriesSource | None:
    """The series of a job's ``series_NNNNNN`` input slots (None without any)."""
    slots = {int(m[1]): s for s in ctx.input_slots() if (m := SLOT.match(s))}
    if not slots:
        return None
    files = {i: ctx.input(s).path for i, s in slots.items()}
    return SeriesSource(files, params["start"], params["stop"], params["batch_frames"],
                        n_total=params.get("series_frames"))
