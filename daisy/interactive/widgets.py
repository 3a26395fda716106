"""Notebook views: a slice viewer for volumes, a pattern plot and a waterfall for XRD.

Each view is an object whose rich display carries an ipywidgets widget (sliders for the axis,
the slice, the contrast, the frame) *and* a static image (PNG for slices, SVG for patterns), so a
notebook shows something useful where widgets do not render (nbconvert, GitHub, a kernel without
ipywidgets). Data is read lazily: an h5py dataset is indexed one slice or frame at a time.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .images2d import montage, to_png

AXES = {"xy": 0, "xz": 1, "yz": 2}


def _widgets():
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _take(volume, axis: int, index: int) -> np.ndarray:
    key = [slice(None)] * 3
    key[axis] = int(index)
    return np.asarray(volume[tuple(key)], dtype=np.float32)


class SliceViewer:
    """Slices of a 3D volume (array or h5py dataset) along three axes, with contrast."""

    def __init__(self, volume, title: str = "", max_size: int = 384) -> None:
        volume = getattr(volume, "volume", volume)  # a daisy Result
        if len(getattr(volume, "shape", ())) != 3:
            raise ValueError(f"a slice viewer needs a 3D volume, got shape {getattr(volume, 'shape', None)}")
        self.volume, self.title, self.max_size = volume, title, max_size

    def central(self) -> list[np.ndarray]:
        """The three central orthogonal slices (xy, xz, yz)."""
        return [_take(self.volume, axis, self.volume.shape[axis] // 2) for axis in range(3)]

    def static_png(self) -> bytes:
        return to_png(montage(self.central(), max_size=256), max_size=4 * 256)

    def widget(self):
        w = _widgets()
        if w is None:
            return None
        axis = w.ToggleButtons(options=list(AXES), value="xy", description="plane")
        index = w.IntSlider(value=self.volume.shape[0] // 2, min=0, max=self.volume.shape[0] - 1, description="slice",
                            continuous_update=False)
        contrast = w.FloatRangeSlider(value=(0.5, 99.5), min=0.0, max=100.0, step=0.5, description="contrast %",
                                      continuous_update=False)
        image = w.Image(format="png", width=self.max_size)
        info = w.Label()

        def redraw(change=None):
            a = AXES[axis.value]
            index.max = self.volume.shape[a] - 1
            data = _take(self.volume, a, min(index.value, index.max))
            image.value = to_png(data, self.max_size, *contrast.value)
            lo, hi = np.percentile(data, contrast.value)
            info.value = f"{axis.value} slice {index.value} of {self.volume.shape[a]}: shown {lo:.4g} .. {hi:.4g}"

        def new_axis(change):
            index.value = self.volume.shape[AXES[axis.value]] // 2
            redraw()

        axis.observe(new_axis, names="value")
        index.observe(redraw, names="value")
        contrast.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HBox([axis]), index, contrast, image, info])

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self),
                                  "image/png": base64.b64encode(self.static_png()).decode("ascii")}
        widget = self.widget()
        if widget is not None:
            view = widget._repr_mimebundle_()
            bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle

    def __repr__(self) -> str:
        return f"<SliceViewer {self.title or 'volume'} {tuple(self.volume.shape)} {getattr(self.volume, 'dtype', '')}>"


class PatternPlot:
    """1D patterns (frames x points) against the radial axis: one frame (slider) or their mean."""

    def __init__(self, radial, intensity, unit: str = "2θ (deg)", title: str = "", peaks=()) -> None:
        self.radial = np.asarray(radial)
        self.intensity = intensity          # (frames, points): array or h5py dataset
        self.unit, self.title, self.peaks = unit, title, list(peaks)

    def _frame(self, index: int | None) -> np.ndarray:
        if index is None:
            return np.asarray(self.intensity[()], dtype=np.float64).reshape(-1, self.radial.size).mean(axis=0)
        return np.asarray(self.intensity[int(index)], dtype=np.float64)

    def svg(self, index: int | None = None) -> str:
        from daisy.report.svg import line_plot

        label = "mean of all frames" if index is None else f"frame {index}"
        markers = [(float(p), f"{p:.3g}") for p in self.peaks]
        return line_plot([(self.radial, self._frame(index), label)], xlabel=self.unit, ylabel="intensity",
                         title=f"{self.title} {label}".strip(), markers=markers)

    def widget(self):
        w = _widgets()
        if w is None:
            return None
        frames = len(self.intensity)
        choice = w.IntSlider(value=0, min=0, max=max(0, frames - 1), description="frame", continuous_update=False)
        mean = w.Checkbox(value=True, description="mean of all frames")
        view = w.HTML()

        def redraw(change=None):
            view.value = self.svg(None if mean.value else choice.value)

        choice.observe(redraw, names="value")
        mean.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HBox([mean, choice]), view])

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self), "image/svg+xml": self.svg()}
        widget = self.widget()
        if widget is not None:
            bundle.update({k: v for k, v in widget._repr_mimebundle_().items() if k != "text/plain"})
        return bundle

    def __repr__(self) -> str:
        return f"<PatternPlot {self.title or ''} {len(self.intensity)} frames x {self.radial.size} points>"


class Waterfall(PatternPlot):
    """Every frame's pattern, offset upwards by frame (at most ``max_frames`` drawn)."""

    def __init__(self, radial, intensity, unit: str = "2θ (deg)", title: str = "", max_frames: int = 40) -> None:
        super().__init__(radial, intensity, unit, title)
        self.max_frames = max_frames

    def svg(self, index: int | None = None, offset: float | None = None) -> str:
        from daisy.report.svg import line_plot

        frames = len(self.intensity)
        chosen = np.unique(np.linspace(0, frames - 1, min(frames, self.max_frames)).astype(int))
        curves = [(self.radial, np.asarray(self.intensity[int(i)], dtype=np.float64), f"frame {i}") for i in chosen]
        if offset is None:
            span = max(float(np.nanpercentile(c[1], 99.5) - np.nanmin(c[1])) for c in curves)
            offset = 0.35 * span
        return line_plot(curves, xlabel=self.unit, ylabel="intensity + offset per frame",
                         title=f"{self.title} waterfall ({len(chosen)} of {frames} frames)".strip(), offset=offset,
                         height=360)

    def widget(self):
        w = _widgets()
        if w is None:
            return None
        spread = w.FloatSlider(value=0.35, min=0.0, max=2.0, step=0.05, description="offset", continuous_update=False)
        view = w.HTML()
        frames = len(self.intensity)
        chosen = np.unique(np.linspace(0, frames - 1, min(frames, self.max_frames)).astype(int))
        span = max(float(np.nanpercentile(self.intensity[int(i)], 99.5) - np.nanmin(self.intensity[int(i)]))
                   for i in chosen)

        def redraw(change=None):
            view.value = self.svg(offset=spread.value * span)

        spread.observe(redraw, names="value")
        redraw()
        return w.VBox([spread, view])


def slice_viewer(volume, title: str = "", max_size: int = 384) -> SliceViewer:
    """A slice viewer (three axes, slice slider, contrast) of a volume, array or h5py dataset."""
    return SliceViewer(volume, title, max_size)


def pattern_plot(radial, intensity=None, unit: str = "2θ (deg)", title: str = "", peaks=()) -> PatternPlot:
    """A pattern plot; ``radial`` may be a daisy Result or ``(radial, intensity)`` arrays."""
    if intensity is None and hasattr(radial, "patterns"):
        p = radial.patterns
        return PatternPlot(p.radial, p.intensity, p.unit_label, title or p.name, peaks or p.peaks())
    return PatternPlot(radial, intensity, unit, title, peaks)


def waterfall(radial, intensity=None, unit: str = "2θ (deg)", title: str = "", max_frames: int = 40) -> Waterfall:
    """A waterfall of every frame's pattern (a daisy Result or ``(radial, intensity)``)."""
    if intensity is None and hasattr(radial, "patterns"):
        p = radial.patterns
        return Waterfall(p.radial, p.intensity, p.unit_label, title or p.name, max_frames)
    return Waterfall(radial, intensity, unit, title, max_frames)
