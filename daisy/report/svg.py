"""Line plots as small inline SVG (no matplotlib, no external assets): XRD patterns, waterfalls,
timings. Curves are reduced to at most ``max_points`` points (min/max per bin, so peaks stay)."""

from __future__ import annotations

import html

import numpy as np

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def reduce(x: np.ndarray, y: np.ndarray, max_points: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a curve, keeping each bin's minimum and maximum."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size <= max_points:
        return x, y
    bins = max_points // 2
    edges = np.linspace(0, x.size, bins + 1).astype(int)
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        seg = y[a:b]
        i, j = int(np.nanargmin(seg)), int(np.nanargmax(seg))
        for k in sorted({i, j}):
            xs.append(x[a + k])
            ys.append(seg[k])
    return np.array(xs), np.array(ys)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(start, hi + step * 1e-9, step)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def line_plot(curves: list[tuple[np.ndarray, np.ndarray, str]], xlabel: str = "", ylabel: str = "",
              width: int = 640, height: int = 300, title: str = "", offset: float = 0.0,
              markers: list[tuple[float, str]] = (), max_points: int = 800) -> str:
    """An SVG with one polyline per ``(x, y, label)``; ``offset`` shifts curve k up by k*offset
    (a waterfall); ``markers`` are labelled vertical lines (peaks)."""
    left, right, top, bottom = 56, 12, 24 if title else 10, 38
    pw, ph = width - left - right, height - top - bottom
    reduced = [(*reduce(x, y, max_points), label) for x, y, label in curves]
    shifted = [(x, y + k * offset, label) for k, (x, y, label) in enumerate(reduced)]
    xs = np.concatenate([c[0] for c in shifted]) if shifted else np.array([0.0, 1.0])
    ys = np.concatenate([c[1] for c in shifted]) if shifted else np.array([0.0, 1.0])
    x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
    y0, y1 = float(np.nanmin(ys)), float(np.nanmax(ys))
    if x1 <= x0:
        x1 = x0 + 1
    if y1 <= y0:
        y1 = y0 + 1
    pad = 0.04 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(v):
        return left + (v - x0) / (x1 - x0) * pw

    def py(v):
        return top + ph - (v - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="white" stroke="#888"/>']
    if title:
        out.append(f'<text x="{left}" y="15" font-weight="bold">{html.escape(title)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" y1="{top + ph}" x2="{px(t):.1f}" y2="{top + ph + 4}" stroke="#444"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{_fmt(t)}</text>')
    if not offset:
        for t in _ticks(y0, y1, 4):
            out.append(f'<line x1="{left - 4}" y1="{py(t):.1f}" x2="{left}" y2="{py(t):.1f}" stroke="#444"/>'
                       f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for value, label in markers:
        if x0 <= value <= x1:
            out.append(f'<line x1="{px(value):.1f}" y1="{top}" x2="{px(value):.1f}" y2="{top + ph}" '
                       f'stroke="#d62728" stroke-dasharray="3,3" stroke-width="0.8"/>'
                       f'<text x="{px(value) + 2:.1f}" y="{top + 10}" fill="#d62728" font-size="9">{html.escape(label)}</text>')
    for k, (x, y, label) in enumerate(shifted):
        ok = np.isfinite(x) & np.isfinite(y)
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x[ok], y[ok]))
        colour = COLOURS[k % len(COLOURS)] if len(shifted) <= len(COLOURS) or not offset else "#1f77b4"
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1" points="{points}">'
                   f'<title>{html.escape(label)}</title></polyline>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {top + ph / 2})">'
               f'{html.escape(ylabel)}</text>')
    if 1 < len(shifted) <= 6 and not offset:
        for k, (_, _, label) in enumerate(shifted):
            out.append(f'<text x="{left + pw - 4}" y="{top + 14 + 13 * k}" text-anchor="end" '
                       f'fill="{COLOURS[k % len(COLOURS)]}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
