"""A tiny, dependency-free PNG writer (numpy + zlib) for preview images.

Only what previews need: 8- or 16-bit greyscale, no interlace, filter type 0 on every row.
The output is a deterministic function of the pixels (no time stamps, fixed zlib level).
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a 2D ``uint8`` or ``uint16`` greyscale image."""
    image = np.asarray(image)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"PNG preview needs a non-empty 2D image, got shape {image.shape}")
    if image.dtype == np.uint8:
        depth = 8
    elif image.dtype == np.uint16:
        depth = 16
        image = image.astype(">u2")  # PNG stores 16-bit samples big-endian
    else:
        raise ValueError(f"PNG preview needs uint8 or uint16 pixels, got {image.dtype}")
    height, width = image.shape
    rows = np.ascontiguousarray(image).view(np.uint8).reshape(height, -1)
    raw = np.zeros((height, rows.shape[1] + 1), dtype=np.uint8)  # filter byte 0 (None) per row
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)  # greyscale, no interlace
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``image`` (2D uint8/uint16) as a PNG file."""
    with open(path, "wb") as handle:
        handle.write(encode_png(image))


def to_uint8(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale a float image to 0..255 between its ``low`` and ``high`` percentiles.

    Non-finite pixels are ignored for the scale and drawn black; a flat image is drawn mid-grey.
    """
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint8)
    lo, hi = np.percentile(image[finite], [low, high])
    if not hi > lo:
        out = np.full(image.shape, 128, dtype=np.uint8)
    else:
        scaled = (np.where(finite, image, lo) - lo) * (255.0 / (hi - lo))
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    out[~finite] = 0
    return out
