"""Interactive DAISY: steps on data kept in memory, in the pinned images, from a notebook.

- :class:`Session`: the workflow engine. ``session['ct.normalize'].execute(...)`` (or a design
  name: ``session['normalize'].execute(projs_dataobj=..., output_dataobj=...)``) runs one step in
  a long-lived ``daisy_steps.serve`` process of its image; arrays stay there between calls and
  come to the host only when asked for (``session.get(key, index)``).
- :class:`PyWorkflow`: the design's workflow base class (``WorkflowCTReconstruct(PyWorkflow)``).
- :class:`Sweep`: parameter sweeps with labelled previews (``session.sweep_center()``).
- :mod:`daisy.interactive.widgets`: slice viewer, pattern plot, waterfall.

See ``docs/notebook.md``.
"""

from __future__ import annotations

__all__ = ["Session", "PyWorkflow", "Singleton", "Sweep", "StepServer", "slice_viewer", "pattern_plot", "waterfall"]


def __getattr__(name: str):
    if name == "Session":
        from .session import Session
        return Session
    if name in ("PyWorkflow", "Singleton"):
        from . import workflow
        return getattr(workflow, name)
    if name == "Sweep":
        from .sweep import Sweep
        return Sweep
    if name == "StepServer":
        from .server import StepServer
        return StepServer
    if name in ("slice_viewer", "pattern_plot", "waterfall"):
        from . import widgets
        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
