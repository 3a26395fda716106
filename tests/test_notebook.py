"""The example notebook under a real Jupyter kernel (nbclient, ipykernel from this venv): the
design-style workflow reconstructs the demo scan step by step in the tomopy image, a centre sweep
picks the phantom's centre within 1 px, the per-call overhead of a warm step process is small,
and the pipeline run from the session's config verifies. The outputs are checked, not just the
exit; plus the interactive engine on its own (design keywords, in-place safety, errors)."""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import pytest

from .conftest import REPO, require_image

pytestmark = [pytest.mark.apptainer]
NOTEBOOK = REPO / "examples" / "ct-interactive.ipynb"
SIZE, ANGLES = 64, 120


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """The ``python3`` kernel of this interpreter: ipykernel's own spec, written with this venv's
    python (``sys.executable``) and found first through JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    root = tmp_path / "jupyter"
    write_kernel_spec(path=str(root / "kernels" / "python3"))
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    return "python3"


def _outputs(nb, tag: str) -> list:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert cells, f"no cell tagged {tag}"
    return cells[0].outputs


def _line(nb, tag: str, prefix: str) -> dict:
    text = "".join(o.get("text", "") for o in _outputs(nb, tag) if o.output_type == "stream")
    line = next((ln for ln in text.splitlines() if ln.startswith(prefix + " ")), None)
    assert line, f"cell {tag} printed no {prefix} line: {text[-2000:]}"
    return json.loads(line[len(prefix) + 1:])


def test_ct_notebook_runs_under_a_kernel_and_its_outputs_hold(tmp_path, kernel, monkeypatch):
    require_image("tomopy")
    require_image("base")
    import nbformat
    from nbclient import NotebookClient

    work = tmp_path / "work"
    monkeypatch.setenv("DAISY_EXAMPLE_WORKDIR", str(work))
    monkeypatch.setenv("DAISY_EXAMPLE_SIZE", str(SIZE))
    monkeypatch.setenv("DAISY_EXAMPLE_ANGLES", str(ANGLES))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    check = _line(nb, "check", "CHECK")
    assert check["python"] == sys.executable                 # this venv's kernel
    assert abs(check["chosen_center"] - check["true_center"]) <= 1.0, check
    assert check["chosen_center"] in check["sweep_values"]
    assert check["recon_center_used"] == check["chosen_center"]
    # the label shown is the value ct.recon reports it used
    assert check["sweep_labels"] == [f"centre = {v:g}" for v in check["sweep_values"]]
    assert {"tomodata", "darkdata", "flatdata", "normdata", "thetas", "mlogdata", "recodata"} <= set(check["data_keys"])
    assert check["images"] == ["tomopy"]
    assert check["median_overhead_s"] <= 0.05, check

    # the sweep grid: one labelled preview per value, the best marked
    sweep_html = next(o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "execute_result" and "daisy-sweep" in o.get("data", {}).get("text/html", ""))
    assert sweep_html.count("<img ") == len(check["sweep_values"])
    for label in check["sweep_labels"]:
        assert f">{label}" in sweep_html
    assert f"centre = {check['chosen_center']:g} ★ best" in sweep_html

    # slice viewers: a widget and a static PNG in the same output
    viewers = [o["data"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "SliceViewer" in o.get("data", {}).get("text/plain", "")]
    assert len(viewers) == 2
    for data in viewers:
        assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert "application/vnd.jupyter.widget-view+json" in data

    run = _line(nb, "check-run", "RUN")
    assert run["event_loop_running"] is True                 # run() worked inside Jupyter's loop
    assert run["status"] == "completed" and run["verified"] is True
    assert run["center"] == check["chosen_center"]           # the choice became the run's config
    assert run["volume_shape"][0] == SIZE
    assert 0 < run["report_bytes"] < 1_000_000
    provenance = json.loads((work / "run" / "provenance.json").read_text())
    assert provenance["config"]["center"] == {**provenance["config"]["center"], "method": "manual",
                                              "center": check["chosen_center"]}
    assert (work / "run.tar").is_file()
    # progress was shown as a widget while the pipeline ran
    run_cell = next(c for c in nb.cells if c.cell_type == "code" and "p.run()" in c.source)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in run_cell.outputs
               if o.output_type == "display_data")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    require_image("tomopy")
    from daisy.workflow import run_job_in_image

    data = tmp_path_factory.mktemp("engine")
    raw = data / "ct-daisy.h5"
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": [
        {"step": "sample.ct_phantom", "outputs": {"raw": str(raw)},
         "params": {"size": 32, "n_angles": 60, "layout": "daisy", "seed": 1}}]}, data / "jobs" / "s.json", data)
    return raw


def test_engine_keeps_data_rerun_safe_and_names_errors(scan):
    from daisy.interactive import Session
    from daisy_steps.errors import StepError

    with Session(data=[scan], pipeline="ct", threads=1) as s:
        s.execute("ct.load", {"layout": "daisy"}, inputs={"raw": str(scan)})
        s["normalize"].execute(input_dataobj="proj", output_dataobj="norm")
        before = s.get("norm")
        s["minuslog"].execute(input_dataobj="norm", output_dataobj="mlog")
        s["minuslog"].execute(input_dataobj="norm", output_dataobj="mlog")   # rerun: its input is unchanged
        assert np.array_equal(s.get("norm"), before)
        assert np.allclose(s.get("mlog"), -np.log(before))
        assert s.describe()["norm"]["shape"] == list(before.shape)
        row = s.get("mlog", np.s_[:, 3])                                      # part of an array only
        assert row.shape == (before.shape[0], before.shape[2])
        with pytest.raises(StepError, match="requires 'proj'.*looked up as 'nothing'"):
            s["ct.minus_log"].execute(input_dataobj="nothing")
        with pytest.raises(StepError, match="unknown keyword 'bogus'"):
            s["ct.recon"].execute(bogus=1)
        with pytest.raises(StepError, match="filter_name"):
            s["ct.recon"].execute(input_dataobj="mlog", filter_name="nope")
        s.execute("ct.angles", {}, bind_in={"proj": "mlog"})
        call = s["reconstruct"].execute(input_dataobj="mlog", theta="theta", center=23.0, alg_type="gridrec",
                                        output_dataobj="rec")
        assert call.results["center"] == 23.0 and call.image == "tomopy"
        config = s.to_config(outdir="/tmp/unused")
        assert config["center"]["method"] == "manual" and config["center"]["center"] == 23.0
        assert config["input"]["file"] == str(scan) and config["stripe"] == {"method": "none"}
        from daisy import config as configs
        configs.validate(config)
        assert s.overheads()["median_s"] < 0.05
