"""The design's ``PyWorkflow``: a workflow object written as in the HEPiX 2021 design.

::

    class WorkflowCTReconstruct(PyWorkflow):
        def execute(self):
            self.engine['loadhdf5'].execute(input_path='/entry/tomo', output_dataobj='tomodata')
            ...
            self.engine['reconstruct'].execute(input_dataobj='mlogdata', theta='thetas',
                                               center=..., alg_type='fbp', output_dataobj='recodata')

    wf = WorkflowCTReconstruct('WorkflowCTReconstruct')
    wf.initialize(workflow_engine='PyWorkflowEngine', workflow_environment=init_dict, algorithms_cfg=cfg_dict)
    wf.execute()
    wf.data_keys()
    wf.finalize()

``self.engine`` is a :class:`~daisy.interactive.session.Session`: each algorithm runs as a DAISY
step in a long-lived process of its pinned image, on data kept there between calls. What differs
from the design is listed in ``docs/notebook.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daisy_steps.errors import StepError

from .session import Session

ENGINES = ("PyWorkflowEngine",)


def Singleton(cls):  # noqa: N802 (the design's decorator name)
    """The design's ``@Daisy.Singleton``: accepted and a no-op (a notebook may hold several workflows)."""
    return cls


class PyWorkflow:
    """Base class of design-style workflows: override :meth:`execute`."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self._engine: Session | None = None

    def initialize(self, workflow_engine: str = "PyWorkflowEngine", workflow_environment: dict | None = None,
                   algorithms_cfg: dict | None = None, *, data_dir=None, outdir=None, threads: int = 2,
                   pipeline: str | None = None, data=()) -> bool:
        """Start the engine. ``workflow_environment`` is the design's ``init_dict`` (algorithm
        name -> ``class_name``, ``init_paras``), ``algorithms_cfg`` its ``cfg_dict`` (run
        parameters per algorithm). DAISY's additions: ``data_dir`` (where ``inputfile_name`` s are;
        default the working directory), ``outdir`` (where ``outputfile_name`` s go), ``threads``."""
        if workflow_engine not in ENGINES:
            raise StepError(f"workflow_engine {workflow_engine!r}: DAISY has {', '.join(ENGINES)}")
        if self._engine is not None:
            self._engine.close()
        init_dict = dict(workflow_environment or {})
        base = Path(data_dir).resolve() if data_dir else Path.cwd()
        files = [base / str(entry["init_paras"]["inputfile_name"]) for entry in init_dict.values()
                 if isinstance(entry, dict) and "inputfile_name" in (entry.get("init_paras") or {})]
        if pipeline is None:
            classes = {entry.get("class_name") for entry in init_dict.values() if isinstance(entry, dict)}
            pipeline = "xrd" if "AlgFAIIntegrate" in classes else "ct"
        self._engine = Session(data=[*files, *data], outdir=outdir, pipeline=pipeline, threads=threads,
                               algorithms=init_dict, config=algorithms_cfg, data_dir=base)
        return True

    @property
    def engine(self) -> Session:
        if self._engine is None:
            raise StepError(f"{self.name}: call initialize(...) first")
        return self._engine

    def execute(self) -> bool:
        raise NotImplementedError("write the workflow's steps in execute(), as in the design")

    def data_keys(self) -> list[str]:
        """The keys of the data store, over every image's step process."""
        return self.engine.data_keys()

    def algorithm_keys(self) -> list[str]:
        return self.engine.algorithm_keys()

    def get(self, key: str, index=None) -> Any:
        """An array of the data store on the host (``index`` selects part of it first)."""
        return self.engine.get(key, index)

    def sweep_center(self, *args, **kwargs):
        return self.engine.sweep_center(*args, **kwargs)

    def to_config(self, **kwargs) -> dict[str, Any]:
        """The pipeline config of what was tried last (:meth:`Session.to_config`)."""
        return self.engine.to_config(**kwargs)

    def finalize(self) -> bool:
        """Stop the step processes (their data is gone afterwards)."""
        if self._engine is not None:
            self._engine.close()
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self._engine!r}>"
