"""Small greyscale previews without matplotlib: downsample, scale, PNG, data URI, montage."""

from __future__ import annotations

import base64

import numpy as np


def downsample(image: np.ndarray, max_size: int = 256) -> np.ndarray:
    """``image`` shrunk by an integer block mean so that neither side exceeds ``max_size``."""
    image = np.asarray(image, dtype=np.float32)
    factor = max(1, int(np.ceil(max(image.shape) / max_size)))
    if factor == 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    if h == 0 or w == 0:
        return image[::factor, ::factor]
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def to_png(image: np.ndarray, max_size: int = 256, low: float = 0.5, high: float = 99.5,
           limits: tuple[float, float] | None = None) -> bytes:
    """PNG bytes of a 2D array: downsampled, scaled between percentiles (or fixed ``limits``)."""
    from daisy_steps.png import encode_png, to_uint8

    small = downsample(image, max_size)
    if limits is not None:
        lo, hi = limits
        scaled = np.clip((np.nan_to_num(small, nan=lo) - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255)
        return encode_png(np.rint(scaled).astype(np.uint8))
    return encode_png(to_uint8(small, low, high))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def montage(images: list[np.ndarray], gap: int = 4, max_size: int = 256) -> np.ndarray:
    """Images side by side (each downsampled, padded to the tallest), NaN gaps between them."""
    small = [downsample(im, max_size) for im in images]
    height = max(im.shape[0] for im in small)
    parts = []
    for im in small:
        pad = np.full((height, im.shape[1]), np.nan, dtype=np.float32)
        pad[:im.shape[0]] = im
        parts += [pad, np.full((height, gap), np.nan, dtype=np.float32)]
    return np.concatenate(parts[:-1], axis=1)
