"""DAISY host-side tooling: command line, the run plan, images, Snakemake glue, provenance.

What runs inside the images is the separate package ``daisy_steps``.

The Python API (``docs/notebook.md``), loaded on first use so that ``import daisy`` (which the
command line does) stays cheap:

- ``daisy.pipeline(config_or_file_or_name, **overrides)`` -> :class:`daisy.api.Pipeline`
  (``.config``, ``.plan()``, ``.run(profile=...)``); ``daisy.open_run(run_dir)`` ->
  :class:`daisy.api.Result` (``.volume``, ``.patterns``, ``.provenance``, ``.verify()``,
  ``.archive()``, ``.report()``);
- ``daisy.Session``, ``daisy.PyWorkflow``: interactive steps on data kept in memory in the images
  (:mod:`daisy.interactive`); ``daisy.slice_viewer``, ``daisy.pattern_plot``, ``daisy.waterfall``.
"""

__version__ = "0.1.0"

_API = {
    "pipeline": "daisy.api", "Pipeline": "daisy.api", "Plan": "daisy.api", "Result": "daisy.api",
    "RunHandle": "daisy.api", "RunError": "daisy.api", "Verification": "daisy.api", "open_run": "daisy.api",
    "Session": "daisy.interactive.session", "PyWorkflow": "daisy.interactive.workflow",
    "Singleton": "daisy.interactive.workflow", "Sweep": "daisy.interactive.sweep",
    "slice_viewer": "daisy.interactive.widgets", "pattern_plot": "daisy.interactive.widgets",
    "waterfall": "daisy.interactive.widgets", "write_report": "daisy.report.build",
}


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'daisy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted([*globals(), *_API])
