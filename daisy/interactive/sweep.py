"""Parameter sweeps with previews: one step call per value, each result labelled with the value
the step *reports* it used (never the value asked for), a score per result, a grid or slider.

A centre sweep runs ct.recon on a few sinogram rows for each centre; the best is the one whose
slice scores best (``entropy``: Donath's histogram entropy, lowest wins, as tomopy.find_center;
see :data:`METRICS`);
``sweep.choose()`` writes the value into the session's pipeline config (and into a config dict
you pass), so that what was picked becomes a reproducible run.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import design
from .images2d import data_uri, to_png


def _inside(image: np.ndarray) -> np.ndarray:
    """The pixels of the inscribed circle (what a reconstruction of a 180° scan defines)."""
    n0, n1 = image.shape
    yy, xx = np.ogrid[:n0, :n1]
    r = min(n0, n1) / 2.0
    return image[(yy - (n0 - 1) / 2) ** 2 + (xx - (n1 - 1) / 2) ** 2 <= (0.95 * r) ** 2]


def _entropy(image: np.ndarray) -> float:
    """Donath's criterion, negated (higher is better): histogram entropy of the slice."""
    values = _inside(image)
    hist, _ = np.histogram(values, bins=256)
    p = hist[hist > 0] / hist.sum()
    return float(np.sum(p * np.log2(p)))


def _negativity(image: np.ndarray) -> float:
    """Less negative attenuation is better (a wrong centre smears negative arcs)."""
    values = _inside(image)
    return -float(np.sum(np.clip(values, None, 0.0) ** 2) / max(np.sum(values ** 2), 1e-30))


#: name -> score of a 2D result (higher is better)
METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "entropy": _entropy, "negativity": _negativity,
}


@dataclass
class SweepEntry:
    requested: Any
    used: Any
    image: np.ndarray
    score: float | None
    call: Any


def _used(call, param: str) -> Any:
    """The value of ``param`` the step reports it used: its result, else its parameter after defaults."""
    leaf = param.split(".")[-1].split("[")[0]
    if leaf in call.results:
        return call.results[leaf]
    node: Any = call.params
    for part in param.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class Sweep:
    """The results of one sweep: ``values`` (used), ``images``, ``scores``, ``best``."""

    def __init__(self, session, step: str, param: str, entries: list[SweepEntry], metric: str | None,
                 label: str | None = None) -> None:
        self.session, self.step, self.param, self.entries = session, step, param, entries
        self.metric = metric
        self.label = label or param

    @property
    def values(self) -> list:
        return [e.used for e in self.entries]

    @property
    def images(self) -> list[np.ndarray]:
        return [e.image for e in self.entries]

    @property
    def scores(self) -> list[float | None]:
        return [e.score for e in self.entries]

    @property
    def best_index(self) -> int | None:
        scored = [(e.score, i) for i, e in enumerate(self.entries) if e.score is not None]
        return max(scored)[1] if scored else None

    @property
    def best(self) -> Any:
        """The value used by the best-scoring result (None without a metric)."""
        index = self.best_index
        return None if index is None else self.entries[index].used

    def caption(self, index: int) -> str:
        entry = self.entries[index]
        value = f"{entry.used:g}" if isinstance(entry.used, float) else str(entry.used)
        return f"{self.label} = {value}"

    def choose(self, value: Any = None, config: dict | None = None) -> Any:
        """Take ``value`` (default: :attr:`best`) for the pipeline: the session's config gets it
        (``session.to_config()``), and so does ``config`` (a pipeline config dict) if given."""
        value = self.best if value is None else value
        if value is None:
            raise ValueError("no value to choose: the sweep has no metric; choose(value=...)")
        self.session.chosen[(self.step, self.param)] = value
        if config is not None:
            from .configs import apply_choice

            apply_choice(config, self.step, self.param, value)
        return value

    # -- display --------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        best = self.best_index
        cells = []
        for i, entry in enumerate(self.entries):
            mark = " ★ best" if i == best else ""
            score = f"<br><small>{self.metric} {entry.score:.4g}</small>" if entry.score is not None else ""
            border = "3px solid #d62728" if i == best else "1px solid #ccc"
            cells.append(f'<figure style="margin:4px;text-align:center"><img src="{data_uri(to_png(entry.image, 192))}" '
                         f'style="width:160px;image-rendering:pixelated;border:{border}" alt="{html.escape(self.caption(i))}">'
                         f'<figcaption class="daisy-sweep-label">{html.escape(self.caption(i))}{mark}{score}'
                         f'</figcaption></figure>')
        title = (f"<b>{html.escape(self.step)}: sweep of {html.escape(self.param)}</b> "
                 f"({len(self.entries)} values, labels = value used"
                 + (f"; best by {self.metric}: {html.escape(self.caption(best))}" if best is not None else "") + ")")
        return f'<div class="daisy-sweep">{title}<div style="display:flex;flex-wrap:wrap">{"".join(cells)}</div></div>'

    def __repr__(self) -> str:
        best = f", best {self.caption(self.best_index)}" if self.best_index is not None else ""
        return f"<Sweep {self.step} {self.param}: {len(self.entries)} values{best}>"

    def grid(self, cols: int = 6, size: float = 2.0):
        """A matplotlib figure: one panel per value, titled with the value used (best in red)."""
        import matplotlib.pyplot as plt

        n = len(self.entries)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.1), squeeze=False)
        best = self.best_index
        for ax in axes.ravel():
            ax.axis("off")
        for i, entry in enumerate(self.entries):
            ax = axes.ravel()[i]
            lo, hi = np.percentile(entry.image, [0.5, 99.5])
            ax.imshow(entry.image, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(self.caption(i) + (" ★" if i == best else ""), fontsize=9,
                         color="#d62728" if i == best else "black")
        fig.tight_layout()
        return fig

    def slider(self):
        """An ipywidgets slider over the results, its label the value used; a static grid (HTML)
        when ipywidgets is missing."""
        try:
            import ipywidgets as widgets
        except ImportError:
            from IPython.display import HTML

            return HTML(self._repr_html_())
        pngs = [to_png(e.image, 384) for e in self.entries]
        options = [(self.caption(i), i) for i in range(len(self.entries))]
        start = self.best_index if self.best_index is not None else 0
        slider = widgets.SelectionSlider(options=options, value=start, description=self.param,
                                         continuous_update=True, layout=widgets.Layout(width="480px"))
        image = widgets.Image(value=pngs[start], format="png", width=384)
        score = widgets.Label()

        def update(change=None):
            i = slider.value
            image.value = pngs[i]
            entry = self.entries[i]
            score.value = (f"{self.caption(i)}" + (f"   {self.metric} {entry.score:.4g}" if entry.score is not None else "")
                           + ("   ★ best" if i == self.best_index else ""))

        slider.observe(update, names="value")
        update()
        return widgets.VBox([slider, image, score])


def run_sweep(session, step: str, param: str, values, *, params: dict, bind_in: dict, take: str | None,
              rows, rows_port: str, show_index, metric: str | None, label: str | None) -> Sweep:
    from daisy_steps.core import step_class

    from .session import _primary

    cls = step_class(step)
    take = take or _primary(cls.provides)
    bind = dict(bind_in)
    temporary = []
    if rows is not None:  # a few rows of the input (axis 1: sinogram rows of angles x rows x columns)
        source = bind.get(rows_port, rows_port)
        part = f"_sweep_{rows_port}"
        session.copy(source, part, index=(slice(None), rows))
        bind[rows_port] = part
        temporary.append(part)
    outs = {port: f"_sweep_{port}" for port in cls.bound_ports({**_defaults(step), **params})[1]}
    temporary += list(outs.values())
    scorer = METRICS[metric] if isinstance(metric, str) else metric
    entries = []
    try:
        for value in values:
            p = dict(params)
            design.set_param(p, param, value)
            call = session.execute(step, p, bind_in=bind, bind_out=outs, name=f"sweep {param}")
            image = session.get(outs[take], None if show_index is None else show_index)
            if np.ndim(image) == 3:            # a stack (e.g. the slab's rows): show its middle
                image = image[image.shape[0] // 2]
            score = float(scorer(image)) if scorer is not None and np.ndim(image) == 2 else None
            entries.append(SweepEntry(value, _used(call, param), image, score, call))
    finally:
        session.delete(*temporary)
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", None)
    return Sweep(session, step, param, entries, name, label)


def _defaults(step: str) -> dict:
    from daisy_steps.params import resolve

    try:
        return resolve(f"steps/{step}", {})
    except Exception:  # noqa: BLE001 (required fields: the caller's params hold them)
        return {}
