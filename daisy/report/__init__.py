"""``daisy report RUN_DIR``: one self-contained HTML file about a run (:mod:`daisy.report.build`).

Imported lazily: ``daisy report``'s parser (``daisy.report.cli``) must not load numpy.
"""

from __future__ import annotations

__all__ = ["build_report", "write_report", "find_peaks", "REPORT_NAME"]


def __getattr__(name: str):
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
