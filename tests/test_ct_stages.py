"""CT from any stage to any stage through `daisy run ct`: save.stages keeps the normalized,
minus-logged and destriped projections; runs starting from them (input.stage) give a volume
bit-identical to the one reconstructed from raw in one go; a file at the wrong stage is refused
by name before any job runs. Small data: tomopy's test arrays (tests/data/tomopy/)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from .conftest import require_image
from .workflow_helpers import REPO, daisy

pytestmark = [pytest.mark.apptainer, pytest.mark.snakemake]
DATA = REPO / "tests" / "data" / "tomopy"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    require_image("tomopy")
    require_image("base")
    work = tmp_path_factory.mktemp("ct-stages")
    theta = np.load(DATA / "angle.npy").astype(np.float32)
    with h5py.File(work / "raw.h5", "w") as handle:
        handle["/exchange/data"] = np.load(DATA / "tomo.npy") + 200       # counts above the dark
        handle["/exchange/data_white"] = np.load(DATA / "flat.npy") + 300
        handle["/exchange/data_dark"] = np.load(DATA / "dark.npy")
        handle.create_dataset("/exchange/theta", data=theta).attrs["units"] = "rad"
    with h5py.File(work / "attenuation.h5", "w") as handle:
        handle["/exchange/data"] = np.load(DATA / "proj.npy")
        handle.create_dataset("/exchange/theta", data=theta).attrs["units"] = "rad"
    return work


def config(work: Path, name: str, file: str, stage: str, stripe="fw", stages=()) -> Path:
    cfg = {"pipeline": "ct", "outdir": f"out-{name}", "threads": 1, "input": {"file": file, "stage": stage},
           "stripe": {"method": stripe}, "center": {"method": "manual", "center": 23.0},
           "recon": {"algorithm": "gridrec"}, "slabs": {"count": 2, "per_job": 1},
           "save": {"previews": False, "stages": list(stages)}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(work: Path, name: str, *args, **kwargs):
    return daisy("run", "ct", "--config", str(config(work, name, *args, **kwargs)), cwd=work)


def volume(path: Path) -> np.ndarray:
    with h5py.File(path) as handle:
        return handle["/entry/data/data"][()]


def test_volume_from_saved_stages_is_bit_identical(work):
    res = run(work, "raw", "raw.h5", "raw", stages=("normalized", "attenuation", "destriped"))
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    reference = volume(work / "out-raw" / "ct" / "volume.h5")
    stages = work / "out-raw" / "ct" / "stages"
    for name, stage in (("normalized", "normalized"), ("attenuation", "attenuation"), ("destriped", "attenuation")):
        with h5py.File(stages / f"{name}.h5") as handle:
            dset = handle["/entry/data/data"]
            assert dset.is_virtual and dset.attrs["daisy_stage"] == stage
            assert handle["/entry/data"].attrs["NX_class"] == "NXdata"
            assert handle["/entry/data/rotation_angle"].attrs["units"] == "rad"
            assert dset.shape == (8, 16, 46)                  # sinogram order: rows, angles, columns
            assert any(k.startswith("process_") for k in handle["/entry"])
        stripe = "none" if name == "destriped" else "fw"
        res = run(work, f"from-{name}", f"out-raw/ct/stages/{name}.h5", stage, stripe=stripe)
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
        assert np.array_equal(volume(work / f"out-from-{name}" / "ct" / "volume.h5"), reference), name
        prov = json.loads((work / f"out-from-{name}" / "provenance.json").read_text())
        source = prov["config"]["input"]["source_run"]
        assert source["provenance"].endswith("out-raw/ct/stages/../../provenance.json")
        assert len(source["sha256"]) == 64
        steps = [s["step"] for s in prov["jobs"]["ct_slab_0000"]["steps"]]
        assert "ct.normalize" not in steps and steps[0] == "ct.load_processed"
        assert ("ct.minus_log" in steps) == (stage == "normalized")


@pytest.mark.parametrize("file, stage, words", [
    ("raw.h5", "attenuation", ["integer counts", "input.stage raw"]),
    ("raw.h5", "normalized", ["integer counts"]),
    ("attenuation.h5", "normalized", ["exceed 1.5", "transmission"]),
    ("attenuation.h5", "raw", ["no flat and dark fields", "float"]),
])
def test_wrong_stage_is_refused_by_name(work, file, stage, words):
    res = run(work, f"bad-{file}-{stage}", file, stage)
    text = res.stdout + res.stderr
    assert res.returncode != 0
    for word in words:
        assert word in text, text[-3000:]
    assert not (work / f"out-bad-{file}-{stage}" / "jobs").exists()


def test_stage_file_contradicting_the_stage_asked_for(work):
    if not (work / "out-raw" / "ct" / "stages" / "normalized.h5").exists():
        pytest.skip("needs the saved stages of test_volume_from_saved_stages_is_bit_identical")
    res = run(work, "bad-stated", "out-raw/ct/stages/normalized.h5", "attenuation")
    assert res.returncode != 0 and "states stage normalized" in res.stdout + res.stderr
    res = run(work, "bad-stripes", "out-raw/ct/stages/destriped.h5", "attenuation", stripe="fw")
    assert res.returncode != 0 and "stripes were already removed" in res.stdout + res.stderr
