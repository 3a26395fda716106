"""The minimal pipeline: load one dataset, save it to a new file (base image)."""

from __future__ import annotations

from daisy_steps.fileio import FileRef

from ..plan import Run, Stage

STAGES = (Stage("copy", "copy", "base", ("hdf5.load", "hdf5.save"), doc="one dataset -> a new file"),)


def plan(run: Run) -> None:
    cfg = run.config
    run.inputs = [str(FileRef.parse(cfg["input"]).path)]
    run.add_stage(STAGES[0], {"data": "copy/data.h5"})
    run.add_job("copy", [
        {"step": "hdf5.load", "inputs": {"source": cfg["input"]}, "params": {"key": "data"}},
        {"step": "hdf5.save", "outputs": {"target": f"{run.output('copy', 'data')}:/entry/data/data"},
         "params": cfg["save"]},
    ], threads=cfg["threads"], mem_mb=1024, runtime_min=15)
