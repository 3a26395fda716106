"""The minimal pipeline: load one dataset, save it to a new file (base image)."""

from __future__ import annotations

from daisy_steps.fileio import FileRef

from ..workflow import Job, Run


def output(run: Run) -> str:
    return run.path("copy", "data.h5")


def plan(run: Run) -> None:
    cfg = run.config
    source = FileRef.parse(cfg["input"])
    run.inputs = [str(source.path)]
    run.jobs["copy"] = Job("copy", "base", threads=cfg["threads"], steps=[
        {"step": "hdf5.load", "inputs": {"source": cfg["input"]}, "params": {"key": "data"}},
        {"step": "hdf5.save", "outputs": {"target": f"{output(run)}:/entry/data/data"}, "params": cfg["save"]},
    ])
    run.targets = [output(run)]
