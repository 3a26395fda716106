"""Write the example notebooks (outputs cleared) from the cells below: ``python examples/make_notebooks.py``.

The notebooks are committed as written here; ``tests/test_notebook.py`` runs them under a real
Jupyter kernel and checks their outputs. Edit the cells here, then regenerate.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def code(source: str, *tags: str):
    cell = new_code_cell(source.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def md(source: str):
    return new_markdown_cell(source.strip("\n"))


CT = [
    md("""
# Interactive CT reconstruction with DAISY

The design's workflow object (HEPiX 2021: `WorkflowCTReconstruct(PyWorkflow)`) run step by step
in DAISY's pinned images: every algorithm is a DAISY step executed by a long-lived process inside
the `tomopy` image, on data kept in that process's memory between calls. Then a centre sweep picks
the rotation centre, what was tried becomes a pipeline config, and the pipeline runs it
reproducibly (provenance, verification, report, archive). See `docs/notebook.md`.
"""),
    code("""
import asyncio, json, os, sys, time
from pathlib import Path

import numpy as np

import daisy

# where the example works (the test points this at a temporary folder) and the scan's size
WORK = Path(os.environ.get("DAISY_EXAMPLE_WORKDIR", "example-work")).resolve()
SIZE = int(os.environ.get("DAISY_EXAMPLE_SIZE", "128"))        # phantom edge = detector rows
N_ANGLES = int(os.environ.get("DAISY_EXAMPLE_ANGLES", "181"))
WORK.mkdir(parents=True, exist_ok=True)
os.chdir(WORK)
print("working in", WORK)
""", "parameters"),
    md("""
## A demo scan

A Shepp-Logan phantom scanned with flats, darks, noise and a few stripes, written by DAISY's
`sample.ct_phantom` step in the `tomopy` image, in the original design's layout (`/entry/tomo`,
`/entry/flat`, `/entry/dark`). Its true rotation axis is stored in `/truth`.
"""),
    code("""
import h5py
from daisy.workflow import run_job_in_image

data = WORK / "data"
raw = data / "ct-daisy.h5"
if not raw.exists():
    run_job_in_image("tomopy", {"job": "sample_ct", "threads": 2, "steps": [
        {"step": "sample.ct_phantom", "outputs": {"raw": str(raw)},
         "params": {"size": SIZE, "n_angles": N_ANGLES, "layout": "daisy", "seed": 0}}]},
        data / "jobs" / "sample_ct.json", data)
with h5py.File(raw) as f:
    TRUE_CENTER = float(f["/truth"].attrs["center"])
    print("projections", f["/entry/tomo"].shape, "- true centre (hidden from the analysis):", TRUE_CENTER)
"""),
    md("""
## The design's workflow, as written in 2021

Changes from the design: `from daisy import PyWorkflow, Singleton` instead of `Daisy.*`;
`initialize` also takes `data_dir` (where `inputfile_name` is) and `outdir` (where
`outputfile_name` goes); the centre is this scan's (the design's 1030 was its detector's); the
`reconstruct` keyword `theta=` names the store key of the angles, as in the design.
"""),
    code("""
from daisy import PyWorkflow, Singleton

init_dict = {
    "loadhdf5": {"class_name": "LoadHDF5", "init_paras": {"inputfile_name": "ct-daisy.h5"}},
    "normalize": {"class_name": "AlgNormalize", "init_paras": {}},
    "angles": {"class_name": "AlgAngles", "init_paras": {}},
    "minuslog": {"class_name": "AlgMinusLog", "init_paras": {}},
    "findcenter": {"class_name": "AlgFindCenter", "init_paras": {}},
    "reconstruct": {"class_name": "AlgTomopyRecon", "init_paras": {}},
    "savehdf5": {"class_name": "SaveHDF5", "init_paras": {"outputfile_name": "recon.h5"}},
}
cfg_dict = {"reconstruct": {"alg_type": "gridrec"}}
CENTER_GUESS = None   # set below from the detector width: the design hard-coded 1030


@Singleton
class WorkflowCTReconstruct(PyWorkflow):
    def execute(self):
        self.engine['loadhdf5'].execute(input_path='/entry/tomo', output_dataobj='tomodata')
        self.engine['loadhdf5'].execute(input_path='/entry/dark', output_dataobj='darkdata')
        self.engine['loadhdf5'].execute(input_path='/entry/flat', output_dataobj='flatdata')
        self.engine['normalize'].execute(projs_dataobj='tomodata', darks_dataobj='darkdata', \\
                                         flats_dataobj='flatdata', output_dataobj='normdata')
        self.engine['angles'].execute(input_dataobj='normdata', output_dataobj='thetas')
        self.engine['minuslog'].execute(input_dataobj='normdata', output_dataobj='mlogdata')
        self.engine['reconstruct'].execute(input_dataobj='mlogdata', theta='thetas', \\
                                           center=CENTER_GUESS, alg_type='fbp', output_dataobj='recodata')
        self.engine['savehdf5'].execute(input_dataobj='recodata', output_path='/entry/reco')


with h5py.File(raw) as f:
    CENTER_GUESS = f["/entry/tomo"].shape[2] / 2.0      # the detector's middle column

started = time.perf_counter()
wf = WorkflowCTReconstruct('WorkflowCTReconstruct')
wf.initialize(workflow_engine='PyWorkflowEngine', workflow_environment=init_dict, algorithms_cfg=cfg_dict,
              data_dir=data, outdir=WORK / "interactive")
wf.execute()
print(f"executed in {time.perf_counter() - started:.1f} s (step processes started, data loaded once)")

data_keys = wf.data_keys()
algs = wf.algorithm_keys()
print("data_keys:", data_keys)
print("algorithm_keys:", algs)
"""),
    md("Every call was recorded (step, version, image, parameters after defaults, compute and overhead):"),
    code("""
for call in wf.engine.history:
    print(call)
"""),
    md("""
The reconstruction is still in the step process; only what is asked for comes to the notebook
(here the whole small volume; `wf.get('recodata', np.s_[10])` would fetch one slice).
"""),
    code("""
daisy.slice_viewer(wf.get('recodata'), title="first try: centre = detector middle")
"""),
    md("""
## Step by step: find the centre, sweep it on two slices, rerun one step

`findcenter` runs `ct.find_center` (Vo's method) on the minus-logged data already in memory;
the sweep reconstructs two sinogram rows per candidate centre; each image is labelled with the
centre `ct.recon` reports it used.
"""),
    code("""
vo = wf.engine['findcenter'].execute(input_dataobj='mlogdata', theta_dataobj='thetas')
print("ct.find_center (vo):", vo.results["center"])
sweep = wf.sweep_center(proj='mlogdata', theta='thetas', around=vo.results["center"], half_width=3, step=0.5)
sweep
"""),
    code("""
sweep.slider()
"""),
    code("""
chosen = sweep.choose()          # the best by entropy; sweep.choose(95.5) takes another value
print("chosen centre:", chosen)
# rerun just the reconstruction with it: the data is still in memory
again = wf.engine['reconstruct'].execute(input_dataobj='mlogdata', theta='thetas', center=chosen,
                                         alg_type='gridrec', output_dataobj='recodata')
print(again, "-> centre used:", again.results["center"])
middle = wf.get('recodata', np.s_[SIZE // 2])
print("slice", middle.shape, "fetched on its own")
"""),
    md("Per-call overhead of a warm step process (beyond the step's own compute):"),
    code("""
for _ in range(10):
    wf.engine['angles'].execute(input_dataobj='normdata', output_dataobj='thetas')
overhead = wf.engine.overheads()
print(overhead)
"""),
    code("""
check = {
    "true_center": TRUE_CENTER, "vo_center": vo.results["center"], "chosen_center": chosen,
    "sweep_values": sweep.values, "sweep_labels": [sweep.caption(i) for i in range(len(sweep.values))],
    "recon_center_used": again.results["center"], "data_keys": data_keys,
    "median_overhead_s": overhead["median_s"],
    "images": sorted({c.image for c in wf.engine.history}),
    "python": sys.executable,
}
print("CHECK " + json.dumps(check))
""", "check"),
    md("""
## What was tried becomes a reproducible run

`to_config()` turns the session into a CT pipeline config: each step's last parameters, the
chosen centre as a manual centre. `daisy.pipeline(...)` validates it, `plan()` shows its jobs,
`run()` runs `daisy run` (a child process: safe inside Jupyter's event loop) with progress.
"""),
    code("""
config = wf.to_config(outdir=str(WORK / "run"), slabs={"count": 2})
print(json.dumps({k: config[k] for k in ("input", "center", "recon", "stripe")}, indent=1))
p = daisy.pipeline(config)
p.plan()
"""),
    code("""
loop_running = asyncio.get_event_loop().is_running()   # Jupyter's own loop: p.run() must not trip on it
result = p.run()
result
"""),
    code("""
result.show()
"""),
    code("""
verified = result.verify()
report = result.report()
archive = result.archive(WORK / "run.tar")
print(verified)
print("report:", report, report.stat().st_size, "bytes")
print("archive:", archive["archive"], archive["size"], "bytes")
print("RUN " + json.dumps({"center": result.center, "verified": bool(verified), "status": result.status,
                           "volume_shape": list(result.volume.shape), "report_bytes": report.stat().st_size,
                           "event_loop_running": loop_running}))
""", "check-run"),
    code("""
wf.finalize()
"""),
]


def write(name: str, cells: list) -> Path:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"}})
    path = HERE / name
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    print(write("ct-interactive.ipynb", CT))
