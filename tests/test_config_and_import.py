"""Config validation (daisy validate) and the original design's dictionaries (daisy import-config)."""

from __future__ import annotations

import json

import pytest
import yaml

from daisy import config as configs
from daisy import importer

from .workflow_helpers import REPO, daisy

INIT_DICT = {'loaddata': {'class_name': 'LoadHDF5', 'init_paras': {'inputfile_name': 'scan_00575_data_000001.h5'}},
             'loadmask': {'class_name': 'LoadHDF5', 'init_paras': {'inputfile_name': 'scan_00575_master.h5'}},
             'azintalg': {'class_name': 'AlgFAIIntegrate', 'init_paras': {'wavelength': '0.7293'}},
             'savedata': {'class_name': 'SaveHDF5', 'init_paras': {'outputfile_name': 'test_scan.h5'}}}
CFG_DICT = {'azintalg': {'directDist': 169, 'centerX': 1049.967, 'centerY': 1063.892, 'pixelX': 75,
            'pixelY': 75, 'PlanRotation': 64.66877, 'tilt': 0.3753, 'azimin': 93, 'azimax': 115,
            'radmin': 10.0, 'radmax': 20, 'nth': 40}}


def test_design_dicts_translate_and_validate():
    cfg = importer.translate(INIT_DICT, CFG_DICT, data_dir="raw")
    full = configs.validate(cfg)
    geo = full["integrate"]["geometry"]
    assert geo["wavelength_angstrom"] == pytest.approx(0.7293)
    assert geo["fit2d"] == {"directDist": 169.0, "centerX": 1049.967, "centerY": 1063.892, "pixelX": 75.0,
                            "pixelY": 75.0, "tilt": 0.3753, "tiltPlanRotation": 64.66877}
    assert full["integrate"]["azimuth_range"] == [93.0, 115.0]
    assert full["integrate"]["radial_range"] == [10.0, 20.0]
    assert full["integrate"]["unit"] == "2th_deg"
    assert full["threads"] == 40                   # nth: number of threads, not dropped
    assert full["integrate"]["npt"] == 1000        # the schema's default point count
    assert full["input"] == {**full["input"], "file": "raw/scan_00575_master.h5", "format": "eiger"}
    assert full["save"]["filename"] == "test_scan.h5"
    assert full["pipeline"] == "xrd"


def test_every_design_key_is_mapped():
    mapped = {(cls, key) for cls, _, key, _ in importer.mapping_rows()}
    for name, entry in INIT_DICT.items():
        for key in entry["init_paras"]:
            assert (entry["class_name"], key) in mapped
    for key in CFG_DICT["azintalg"]:
        assert ("AlgFAIIntegrate", key) in mapped


@pytest.mark.parametrize("mutate, message", [
    (lambda i, c: i["azintalg"].__setitem__("class_name", "AlgMagic"), "unknown class_name 'AlgMagic'"),
    (lambda i, c: c["azintalg"].__setitem__("colour", 1), "cfg_dict['azintalg']: unknown key 'colour'"),
    (lambda i, c: i["savedata"]["init_paras"].__setitem__("format", "x"), "unknown key 'format' for SaveHDF5"),
    (lambda i, c: c["azintalg"].__setitem__("nth", 40.5), "cfg_dict['azintalg']['nth']: 40.5 is not a whole number"),
    (lambda i, c: c.__setitem__("nothere", {}), "cfg_dict: key 'nothere' names no algorithm"),
    (lambda i, c: i["loaddata"].__setitem__("extra", 1), "init_dict['loaddata']: unknown key 'extra'"),
])
def test_design_errors_name_the_key(mutate, message):
    init, cfg = json.loads(json.dumps(INIT_DICT)), json.loads(json.dumps(CFG_DICT))
    mutate(init, cfg)
    with pytest.raises(importer.DesignConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        importer.translate(init, cfg)


def test_import_config_cli_writes_valid_yaml(tmp_path):
    out = tmp_path / "xrd.yaml"
    res = daisy("import-config", str(REPO / ".test" / "xrd-import" / "design.py"), "-o", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(out.read_text())
    assert cfg["threads"] == 40
    assert daisy("validate", str(out), cwd=tmp_path).returncode == 0
    # the design file itself is accepted by validate too
    assert daisy("validate", str(REPO / ".test" / "xrd-import" / "design.py"), cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("change, field, words", [
    ({"threads": "two"}, "threads", ["not of type", "integer"]),
    ({"colour": "red"}, "colour", ["unknown key"]),
    ({"recon": {"num_iter": 0}}, "recon.num_iter", ["less than the minimum of 1"]),
    ({"recon": {"algorithm": "art2"}}, "recon.algorithm", ["not one of the allowed values", "gridrec"]),
    ({"slabs": {"count": -1}}, "slabs.count", ["minimum"]),
])
def test_validate_rejects_with_field_names(tmp_path, change, field, words):
    cfg = {"config_version": 1, "pipeline": "ct", "input": {"file": "raw.h5"}, **change}
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = daisy("validate", str(path), cwd=tmp_path)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert field.split(".")[-1] in line and str(path) in line
    for word in words:
        assert word in line


def test_validate_accepts_every_test_scenario():
    for path in sorted((REPO / ".test").glob("*/config.yaml")):
        configs.load(path)


def test_config_version_is_checked():
    with pytest.raises(configs.ConfigError, match="config_version"):
        configs.validate({"config_version": 7, "pipeline": "copy", "input": "a.h5:/x"})


def test_generated_docs_are_current():
    from daisy import docs

    for path in docs.BLOCKS:
        assert path.read_text() == docs.render(path), f"{path} is stale: run python -m daisy.docs"


def test_run_refuses_a_config_of_another_pipeline(tmp_path):
    """Also for the design's dictionaries: an XRD design file given to `daisy run ct`."""
    res = daisy("run", "ct", "--config", str(REPO / ".test" / "xrd-import" / "design.py"), cwd=tmp_path)
    assert res.returncode == 2
    assert "field 'pipeline' is 'xrd' but the 'ct' pipeline was asked for" in res.stderr
