"""Step ports and images: every step declares what it reads and writes in the data store and
where it can run; chains are checked before any data is read; the step docs are generated.

Host only: no image, no tomopy.
"""

from __future__ import annotations

import json
import operator
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daisy_steps import core
from daisy_steps.core import DataStore, JobContext, Step, run_job, step_class
from daisy_steps.errors import StepError
from daisy_steps.fileio import OutputSet
from daisy_steps.params import load_schema
from daisy_steps.ports import ALL_IMAGES, KINDS, Port, check_chain, template_field
from daisy_steps.registry import CLASSES, STEPS, discover

REPO = Path(__file__).resolve().parents[1]
IMAGES = sorted(p.parent.name for p in (REPO / "containers").glob("*/image.json"))

#: the Python module a step library is, -> the package that brings it, as named in envs/*
PACKAGES = {"numpy": "python3-numpy", "h5py": "python3-h5py", "hdf5plugin": "hdf5plugin",
            "tifffile": "python3-tifffile", "tomopy": "python3-tomopy", "pywt": "python3-pywt",
            "scipy": "python3-scipy", "numexpr": "python3-numexpr", "matplotlib": "python3-matplotlib",
            "pyFAI": "pyFAI", "fabio": "fabio"}
#: libraries an image has without listing them: dependencies of a listed package
DEPENDENCIES = {"python3-tomopy": {"scipy", "numexpr"}}


def image_packages(image: str) -> set[str]:
    names = set()
    for path in (REPO / "envs").glob(f"{image}.*.txt"):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                names.add(line.split("==")[0].split("=")[0])
    return names


# ---------------------------------------------------------------------------------------------
# declarations
# ---------------------------------------------------------------------------------------------

def test_registry_finds_every_step_class():
    assert len(CLASSES) >= 19
    for name, cls in CLASSES.items():
        assert cls.name == name and issubclass(cls, Step)
        assert STEPS[name] == f"{cls.__module__}:{cls.__qualname__}"
        assert step_class(name) is cls
    assert {"hdf5.load", "ct.recon", "ct.preview_sinogram", "xrd.integrate", "sample.xrd_eiger"} <= set(STEPS)


def test_a_step_added_to_a_module_is_found_without_a_registry_edit(monkeypatch):
    import daisy_steps.generic as generic

    class Extra(Step):
        name = "hdf5.extra"

    Extra.__module__ = generic.__name__
    monkeypatch.setattr(generic, "Extra", Extra, raising=False)
    assert discover()["hdf5.extra"] is Extra


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_step_declares_images_and_ports(name):
    cls = CLASSES[name]
    for attribute in ("images", "requires", "provides"):
        assert attribute in vars(cls), f"{name} does not declare {attribute}"
    assert cls.images and set(cls.images) <= set(IMAGES) == set(ALL_IMAGES), cls.images
    assert len(set(cls.images)) == len(cls.images)
    schema = load_schema(f"steps/{name}").get("properties", {})
    for key, port in [*cls.requires.items(), *cls.provides.items()]:
        assert isinstance(port, Port) and port.kind in KINDS and port.doc
        field = template_field(key)
        assert field is None or "default" in schema.get(field, {}), (name, key)
    assert set(cls.consumes) <= set(cls.requires), cls.consumes


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_images_hold_the_step_libraries(name):
    """A step declares only images whose package lists (envs/) bring every library it uses."""
    cls = CLASSES[name]
    for image in cls.images:
        have = image_packages(image)
        extra = set().union(*(DEPENDENCIES.get(package, set()) for package in have))
        for lib in cls.libraries:
            assert PACKAGES[lib] in have or lib in extra, f"{name} uses {lib}, which image {image} lacks"


def test_images_as_the_code_imports_them():
    images = {name: set(cls.images) for name, cls in CLASSES.items()}
    assert images["ct.preview_sinogram"] == images["ct.save_slab"] == set(ALL_IMAGES)
    assert images["ct.gather"] == {"base", "tomopy"}  # tifffile: not in the pyfai image
    assert images["ct.recon"] == images["ct.normalize"] == {"tomopy"}
    assert images["xrd.integrate"] == images["xrd.gather"] == {"pyfai"}


def test_port_kinds():
    from daisy_steps.xrd.frames import ArraySource
    from daisy_steps.xrd.results import XRDResult

    good = {"ndarray": np.zeros(2), "float": np.float32(1.5), "int": np.int64(3), "str": "x", "tuple": (0, 4),
            "dict": {}, "path": Path("a.h5"), "frames": ArraySource(np.zeros((1, 2, 2))),
            "xrd_result": XRDResult.__new__(XRDResult)}
    assert set(good) == set(KINDS)
    for kind, value in good.items():
        assert Port(kind, "x").check(value), kind
    for kind, value in {"ndarray": [1, 2], "float": True, "int": 2.0, "tuple": [0, 4], "frames": [1],
                        "path": 3, "xrd_result": {}}.items():
        assert not Port(kind, "x").check(value), kind
    assert Port("float", "x").check(3) and Port("frames", "x").check(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="port kind 'array'"):
        Port("array", "x")


# ---------------------------------------------------------------------------------------------
# check_chain
# ---------------------------------------------------------------------------------------------

def _load(**params):
    return {"step": "ct.load", "inputs": {"raw": "raw.h5"}, "params": params}


PREPARE = [{"step": "ct.normalize"}, {"step": "ct.angles"}, {"step": "ct.minus_log"},
           {"step": "ct.stripe", "params": {"method": "fw"}}]

#: the pipelines' chains, as daisy/pipelines/*.py plan them: (job, image, steps)
CHAINS = [
    ("ct_center", "tomopy", [_load(row_start=30, row_stop=33), *PREPARE,
                             {"step": "ct.find_center", "outputs": {"center": "ct/center.json"}}]),
    ("ct_slab_0000", "tomopy", [_load(row_start=0, row_stop=32), *PREPARE,
                                {"step": "ct.preview_sinogram", "params": {"row": 16}, "outputs": {"png": "s.png"}},
                                {"step": "ct.recon", "inputs": {"center": "ct/center.json"}},
                                {"step": "ct.save_slab", "outputs": {"slab": "slab_0000.h5"}}]),
    ("ct_slab_manual", "tomopy", [_load(), *PREPARE, {"step": "ct.recon", "params": {"center": 50.5}},
                                  {"step": "ct.save_slab", "outputs": {"slab": "slab_0000.h5"}}]),
    ("ct_gather", "base", [{"step": "ct.gather", "inputs": {"slab0000": "slab_0000.h5"},
                            "outputs": {"volume": "volume.h5", "preview_xy": "xy.png", "tiff": "volume.tif"}}]),
    ("xrd_block_0000", "pyfai", [
        {"step": "xrd.load_frames", "inputs": {"source": "scan_master.h5"}, "params": {"start": 0, "stop": 10}},
        {"step": "xrd.mask", "params": {}},
        {"step": "xrd.integrate", "params": {"geometry": {"poni": "calib.poni"}}},
        {"step": "xrd.save_block", "outputs": {"block": "block_0000.h5"}}]),
    ("xrd_gather", "pyfai", [{"step": "xrd.gather", "inputs": {"block_0": "block_0000.h5"},
                              "outputs": {"result": "scan.h5", "pattern_png": "p.png"}}]),
    ("copy", "base", [{"step": "hdf5.load", "inputs": {"source": "in.h5:/d"}, "params": {"key": "data"}},
                      {"step": "hdf5.save", "outputs": {"target": "out.h5:/entry/data/data"}}]),
]


@pytest.mark.parametrize("job, image, steps", CHAINS, ids=[c[0] for c in CHAINS])
def test_real_chains_are_accepted(job, image, steps):
    check_chain(job, image, steps)
    check_chain(job, None, steps)  # hand-written jobs name no image


def test_every_stage_chain_of_the_plan_is_accepted():
    from daisy.plan import all_stages

    stages = all_stages()
    assert {s.name for s in stages} >= {"ct_center", "ct_slab", "ct_gather", "xrd_block", "xrd_gather"}
    for stage in stages:
        check_chain(stage.name, stage.image, [{"step": name} for name in stage.steps])


def test_missing_producer_is_named_with_what_the_chain_provides():
    steps = [_load(), {"step": "ct.normalize"}, {"step": "ct.minus_log"}, {"step": "ct.recon"}]
    with pytest.raises(StepError) as err:
        check_chain("ct_slab_0003", "tomopy", steps)
    message = str(err.value)
    assert message.startswith("job ct_slab_0003: step ct.recon (#4) requires 'theta'")
    assert "no earlier step provides it" in message and "'proj' (ct.minus_log)" in message
    assert "'rows' (ct.load)" in message and "\n" not in message
    with pytest.raises(StepError, match=r"job j: step xrd.integrate \(#1\) requires 'frames' .*provide nothing"):
        check_chain("j", "pyfai", [{"step": "xrd.integrate"}])


def test_wrong_image_is_named():
    with pytest.raises(StepError, match=r"^job ct_gather: step ct.gather \(#1\) cannot run in image 'pyfai'; "
                                        r"it runs in base, tomopy$"):
        check_chain("ct_gather", "pyfai", CHAINS[3][2])
    with pytest.raises(StepError, match=r"job ct_center: step ct.normalize \(#2\) cannot run in image 'base'"):
        check_chain("ct_center", "base", CHAINS[0][2])


def test_optional_requirements_need_no_provider_and_consumed_keys_are_gone():
    # ct.angles reads theta_file and raw_file if there: an array from hdf5.load is enough
    check_chain("j", "base", [{"step": "hdf5.load", "params": {"key": "proj"}}, {"step": "ct.angles"}])
    with pytest.raises(StepError, match=r"step ct.normalize \(#3\) requires 'flat' .* but ct.normalize consumed it"):
        check_chain("j", "tomopy", [_load(), {"step": "ct.normalize"}, {"step": "ct.normalize"}])
    with pytest.raises(StepError, match=r"step ct.preview_sinogram \(#7\) requires 'proj' .*ct.recon consumed it"):
        check_chain("j", "tomopy", [*CHAINS[2][2][:-1], {"step": "ct.preview_sinogram"}])


def test_keys_named_by_parameters():
    save = {"step": "ct.save_slab", "outputs": {"slab": "s.h5"}}
    check_chain("j", "base", [{"step": "hdf5.load", "params": {"key": "recon"}}, save])
    with pytest.raises(StepError, match=r"step ct.save_slab \(#2\) requires 'recon' .*'data' \(hdf5.load\)"):
        check_chain("j", "base", [{"step": "hdf5.load"}, save])  # hdf5.load's default key is 'data'
    check_chain("j", "base", [{"step": "hdf5.load"}, {**save, "params": {"key": "data"}}])


def test_unknown_step_is_named():
    with pytest.raises(StepError, match="unknown step 'ct.nope'"):
        check_chain("j", "tomopy", [{"step": "ct.nope"}])


def test_check_chain_imports_no_step_library():
    code = ("import sys, json; from daisy_steps.ports import check_chain\n"
            "for job, image, steps in json.loads(sys.argv[1]): check_chain(job, image, steps)\n"
            "print(json.dumps(sorted(m for m in ('tomopy', 'pyFAI', 'fabio', 'matplotlib', 'tifffile', 'scipy', "
            "'jsonschema') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CHAINS)], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []


# ---------------------------------------------------------------------------------------------
# the data store enforces the declarations
# ---------------------------------------------------------------------------------------------

class Declared(Step):
    """A step for these tests (not in the registry)."""

    name = "test.declared"
    images = ALL_IMAGES
    requires = {"a": Port("ndarray", "input"), "maybe": Port("float", "optional input", optional=True)}
    provides = {"b": Port("float", "output")}
    consumes = ("a",)
    action = staticmethod(lambda step: None)

    def execute(self) -> None:
        type(self).action(self)


def _run(action, store=None):
    store = DataStore(a=np.ones(3)) if store is None else store
    Declared.action = staticmethod(action)
    step = Declared({}, store, JobContext({}, {}, OutputSet(), 1, Declared.name))
    step.execute()
    return store


def test_a_step_touching_an_undeclared_key_fails_naming_it():
    with pytest.raises(StepError, match=r"^step test.declared writes data-store key 'c', which it does not "
                                        r"declare \(requires: a, maybe; provides: b\)"):
        _run(lambda s: s.store.put("c", 1.0))
    with pytest.raises(StepError, match=r"step test.declared reads data-store key 'b'"):
        _run(lambda s: s.store.require("b"))
    with pytest.raises(StepError, match=r"step test.declared reads data-store key 'z'"):
        _run(lambda s: s.store.get("z"))
    with pytest.raises(StepError, match=r"step test.declared removes data-store key 'maybe'"):
        _run(lambda s: s.store.discard("maybe"))
    with pytest.raises(StepError, match=r"step test.declared looks up data-store key 'z'"):
        _run(lambda s: "z" in s.store)
    with pytest.raises(TypeError):
        _run(lambda s: operator.setitem(s.store, "b", 1.0))  # only put() writes


def test_put_checks_the_kind_and_require_the_presence():
    with pytest.raises(StepError, match=r"step test.declared puts a str under 'b', which it declares as float"):
        _run(lambda s: s.store.put("b", "1.0"))
    with pytest.raises(StepError, match=r"step test.declared needs 'a' in the data store, which holds nothing"):
        _run(lambda s: s.store.require("a"), DataStore())

    def good(s):
        assert s.store.get("maybe", 7.0) == 7.0 and s.store.require("a").shape == (3,)
        s.store.discard("a")
        s.store.put("b", 2.5)

    assert _run(good) == {"b": 2.5}


def test_runner_checks_chain_and_provides(tmp_path, monkeypatch):
    monkeypatch.setitem(CLASSES, Declared.name, Declared)
    resolve = core.resolve
    monkeypatch.setattr(core, "resolve", lambda name, params, what="": (
        dict(params or {}) if name == f"steps/{Declared.name}" else resolve(name, params, what=what)))
    data = tmp_path / "in.h5"
    import h5py

    with h5py.File(data, "w") as handle:
        handle["d"] = np.ones((2, 2))
    load = {"step": "hdf5.load", "inputs": {"source": f"{data}:/d"}, "params": {"key": "a"}}
    with pytest.raises(StepError, match=r"^job t: step test.declared \(#1\) requires 'a'"):
        run_job({"job": "t", "steps": [{"step": Declared.name}]})
    with pytest.raises(StepError, match="step test.declared finished without putting 'b' in the data store"):
        Declared.action = staticmethod(lambda s: None)
        run_job({"job": "t", "steps": [load, {"step": Declared.name}]})
    Declared.action = staticmethod(lambda s: s.store.put("b", 1.0))
    record = run_job({"job": "t", "image": {"name": "pyfai"}, "steps": [load, {"step": Declared.name}]})
    assert [s["image"] for s in record["steps"]] == ["pyfai", "pyfai"]


# ---------------------------------------------------------------------------------------------
# generated docs
# ---------------------------------------------------------------------------------------------

def test_generated_docs_are_fresh():
    from daisy import docs

    stale = [str(p.relative_to(REPO)) for p in docs.stale()]
    assert not stale, f"{stale} stale: run python -m daisy.docs"
    assert docs.main(["--check"]) == 0


def test_step_story():
    from daisy import docs

    story = docs.step_story("ct.preview_sinogram")
    assert story.startswith("## `ct.preview_sinogram`\n")
    for part in ("daisy_steps/ct/output.py:", "`tomopy`, `base`, `pyfai`",
                 "schemas/steps/ct.preview_sinogram.schema.json", "`ct_slab` (ct pipeline, `tomopy` image", "**ct.preview_sinogram**", "tests/test_ct_steps.py",
                 "| `{key}` (parameter `key`, default `proj`) | requires | ndarray | required |", "| `row` |"):
        assert part in story, part
    assert story in (REPO / "docs" / "steps.md").read_text()
