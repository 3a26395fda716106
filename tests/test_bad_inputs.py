"""The bad-input corpus: every bad input ends in one clear line, never a traceback or a silent result.

Each case asserts that the message names the culprit (file, dataset path or config field), the
exit status (a StepError, exit 2, for everything refused by name), that no result or temporary
file is left, and that every input file's sha256 is unchanged. Most cases run on the host: the
planner (``daisy.plan.plan``: validation, then the scan's metadata) and the job runner
(``daisy_steps.core.run_job``, with a numpy stand-in for ``tomopy.normalize`` where a step needs
it). A few run end to end through ``daisy run`` (exit status, console message, nothing left) or
in the images (real tomopy: integer counts, the centre gate).

Classes: files (not HDF5, truncated, missing dataset, wrong rank, empty, non-numeric, NaN angles),
shapes (darks/flats of another shape, flats without frames, angle and image-key counts, XRD
frames vs user mask / pixel mask / dark, empty XRD scans, a missing linked Eiger data file),
NXtomo entries (found by attributes wherever they are; several refused by name, one picked by
``entry``), quality gates (flats equal to darks entirely and partly, NaN/inf, constant and
all-zero projections, integer counts below the dark, a centre on the edge of its search range),
configs (wrong types, unknown keys, out-of-range values, output names leaving the outdir, shell
metacharacters and path traversal in every path-like field, the original design's dictionaries
with a typo), images (missing from the cache, a digest mismatch).

Tampered and hostile archives (``daisy rerun``) are covered by tests/test_archive.py
(test_a_flipped_byte_is_caught_and_named, test_a_missing_or_extra_member_is_named,
test_hostile_archives_are_refused_before_anything_is_written); they are not repeated here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daisy import config as configs  # noqa: E402
from daisy.plan import plan  # noqa: E402
from daisy_steps.core import run_job  # noqa: E402
from daisy_steps.ct.phantom import write_layout  # noqa: E402
from daisy_steps.errors import StepError  # noqa: E402
from daisy_steps.fileio import sha256_file  # noqa: E402

from .conftest import require_image  # noqa: E402
from .workflow_helpers import daisy  # noqa: E402

N_PROJ, ROWS, COLS, N_FLAT, N_DARK = 12, 8, 16, 4, 3
RESULT_SUFFIXES = (".h5", ".png", ".tif", ".xy", ".npy")


# ------------------------------------------------------------------------------------------------
# helpers: hashes, what is left, the message
# ------------------------------------------------------------------------------------------------

def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Results and temporaries under ``folder``: data files, and anything hidden or ``.part``
    (the outdir lock ``.daisy.lock`` aside)."""
    if not folder.exists():
        return []
    found = []
    for path in folder.rglob("*"):
        if not path.is_file() or path.name == ".daisy.lock" or ".snakemake" in path.parts:
            continue
        if path.suffix in RESULT_SUFFIXES or ".part" in path.name or path.name.startswith("."):
            found.append(str(path.relative_to(folder)))
    return sorted(found)


def assert_names(text: str, words) -> None:
    assert "Traceback" not in text, text[-3000:]
    for word in words:
        assert word in text, f"{word!r} not in: {text[-3000:]}"


def refused(call, words) -> StepError:
    """``call()`` raises a StepError (exit 2) whose one line names every word."""
    with pytest.raises(Exception) as info:
        call()
    exc = info.value
    assert isinstance(exc, StepError), f"{type(exc).__name__} instead of a named error: {exc}"
    assert exc.exit_code == 2
    assert "\n" not in str(exc)
    assert_names(str(exc), words)
    return exc


# ------------------------------------------------------------------------------------------------
# raw CT files
# ------------------------------------------------------------------------------------------------

def counts(seed: int = 1):
    rng = np.random.default_rng(seed)
    proj = rng.integers(300, 900, (N_PROJ, ROWS, COLS)).astype(np.uint16)
    flat = rng.integers(1000, 1100, (N_FLAT, ROWS, COLS)).astype(np.uint16)
    dark = rng.integers(90, 110, (N_DARK, ROWS, COLS)).astype(np.uint16)
    return proj, flat, dark, np.linspace(0.0, 180.0, N_PROJ, endpoint=False)


def write_raw(path: Path, layout: str = "daisy", **override) -> Path:
    proj, flat, dark, deg = counts()
    proj, flat, dark = (override.get(k, v) for k, v in (("proj", proj), ("flat", flat), ("dark", dark)))
    deg = override.get("deg", deg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        write_layout(handle, layout, proj, flat, dark, deg, "none")
    return path


def edit(path: Path, change) -> Path:
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


def replace(handle, name, data):
    del handle[name]
    handle[name] = data


def two_nxtomo_entries(path: Path, names=("scan_0001", "scan_0002")) -> Path:
    """An NXtomo file as converters write them: entries not called /entry, several in one file."""
    write_raw(path, "nxtomo")
    with h5py.File(path, "r+") as handle:
        handle.move("/entry", f"/{names[0]}")
        handle.copy(f"/{names[0]}", f"/{names[1]}")
        det = handle[f"/{names[1]}/instrument/detector"]
        det.move("data", "frames_are_here")           # found by NX_class, not by name ...
        handle[f"/{names[1]}/instrument"].move("detector", "pco_edge")
        grp = handle[f"/{names[1]}/instrument/pco_edge"]
        grp["data"] = grp["frames_are_here"]           # ... NXdetector's field is 'data'
        del grp["frames_are_here"]
    return path


def ct_config(tmp: Path, raw: Path, **changes) -> dict:
    cfg = {"config_version": 1, "pipeline": "ct", "outdir": str(tmp / "out"), "threads": 1,
           "input": {"file": str(raw)}, "slabs": {"count": 2, "per_job": 1}}
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


# ------------------------------------------------------------------------------------------------
# 1. planning refuses what the scan's metadata already shows (nothing written, nothing run)
# ------------------------------------------------------------------------------------------------

def _not_hdf5(raw):
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("this is not HDF5\n")
    return {}, [str(raw), "not a readable HDF5 file"]


def _truncated(raw):
    write_raw(raw)
    data = raw.read_bytes()
    raw.write_bytes(data[: len(data) // 2])
    return {}, [str(raw), "not a readable HDF5 file"]


def _missing_dataset(raw):
    write_raw(raw, "dxchange")
    return {"input": {"data_path": "/exchange/nope"}}, [str(raw), "dataset /exchange/nope does not exist"]


def _wrong_rank(raw):
    write_raw(raw)
    edit(raw, lambda h: replace(h, "/entry/tomo", np.ones((ROWS, COLS), np.uint16)))
    return {}, [str(raw), "/entry/tomo", "3D", f"({ROWS}, {COLS})"]


def _empty_projections(raw):
    write_raw(raw)
    edit(raw, lambda h: replace(h, "/entry/tomo", np.ones((0, ROWS, COLS), np.uint16)))
    return {}, [str(raw), "/entry/tomo", "holds no frames", f"(0, {ROWS}, {COLS})"]


def _empty_nxtomo(raw):
    write_raw(raw, "nxtomo")
    def change(h):
        replace(h, "/entry/instrument/detector/data", np.ones((0, ROWS, COLS), np.uint16))
    edit(raw, change)
    return {}, [str(raw), "/entry/instrument/detector/data", "holds no frames"]


def _empty_columns(raw):
    write_raw(raw)
    edit(raw, lambda h: replace(h, "/entry/tomo", np.ones((N_PROJ, ROWS, 0), np.uint16)))
    return {}, [str(raw), "/entry/tomo", "empty frames"]


def _strings(raw):
    write_raw(raw)
    edit(raw, lambda h: replace(h, "/entry/tomo", np.full((2, 2, 2), b"abc")))
    return {}, [str(raw), "/entry/tomo", "not numbers"]


def _darks_other_shape(raw):
    write_raw(raw, dark=np.ones((N_DARK, ROWS - 1, COLS), np.uint16))
    return {}, [str(raw), "/entry/dark", f"({ROWS - 1}, {COLS})", "/entry/tomo", f"({N_PROJ}, {ROWS}, {COLS})"]


def _flats_other_shape(raw):
    write_raw(raw, "dxchange", flat=np.ones((N_FLAT, ROWS, COLS + 2), np.uint16))
    return {}, [str(raw), "/exchange/data_white", f"({ROWS}, {COLS + 2})", "/exchange/data"]


def _flats_without_frames(raw):
    write_raw(raw, flat=np.ones((0, ROWS, COLS), np.uint16))
    return {}, [str(raw), "/entry/flat", "hold no frames"]


def _angle_count(raw):
    write_raw(raw, deg=np.linspace(0, 180, N_PROJ - 2))
    return {}, [str(raw), "/entry/angles", f"{N_PROJ - 2} values", f"{N_PROJ} projections"]


def _image_key_count(raw):
    write_raw(raw, "nxtomo")
    edit(raw, lambda h: replace(h, "/entry/instrument/detector/image_key", np.zeros(3, np.int32)))
    return {}, [str(raw), "/entry/instrument/detector/image_key", "3 entries"]


def _no_darks(raw):
    write_raw(raw, "nxtomo")
    def change(h):
        keys = h["/entry/instrument/detector/image_key"][()]
        keys[keys == 2] = 1
        replace(h, "/entry/instrument/detector/image_key", keys)
    edit(raw, change)
    return {}, [str(raw), "no dark fields (image_key 2)", "image_key"]


def _two_entries(raw):
    two_nxtomo_entries(raw)
    return {}, [str(raw), "2 NXtomo entries", "/scan_0001", "/scan_0002", "input.entry"]


def _no_layout(raw):
    write_raw(raw, "dxchange")
    edit(raw, lambda h: h.move("/exchange", "/elsewhere"))
    return {}, [str(raw), "cannot detect the raw layout", "NXtomo", "/exchange/data", "/entry/tomo"]


def _center_row_outside(raw):
    write_raw(raw)
    return {"center": {"row": ROWS + 5}}, ["center.row", f"{ROWS} rows"]


PLAN_CASES = {
    "not hdf5": _not_hdf5, "truncated hdf5": _truncated, "missing dataset": _missing_dataset,
    "wrong rank": _wrong_rank, "empty projections": _empty_projections, "empty nxtomo": _empty_nxtomo,
    "empty frames": _empty_columns, "strings, not numbers": _strings,
    "darks of another shape": _darks_other_shape, "flats of another shape": _flats_other_shape,
    "flats without frames": _flats_without_frames, "angle count": _angle_count,
    "image key count": _image_key_count, "nxtomo without darks": _no_darks,
    "two nxtomo entries": _two_entries, "no known layout": _no_layout,
    "centre row outside": _center_row_outside,
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_planning_refuses_bad_scans(tmp_path, case):
    raw = tmp_path / "raw" / "scan.h5"
    changes, words = PLAN_CASES[case](raw)
    before = digests(raw.parent)
    refused(lambda: plan(ct_config(tmp_path, raw, **changes)), words)
    assert not (tmp_path / "out").exists()          # nothing written, no job ran
    assert digests(raw.parent) == before


# ------------------------------------------------------------------------------------------------
# 2. NXtomo entries found by their attributes (a file's entries need not be /entry)
# ------------------------------------------------------------------------------------------------

def load_job(raw: Path, out: Path, **params) -> dict:
    return {"job_version": 1, "job": "load", "threads": 1, "record": str(out / "record.json"),
            "steps": [{"step": "ct.load", "inputs": {"raw": str(raw)}, "params": params},
                      {"step": "ct.preview_sinogram", "outputs": {"png": str(out / "sino.png")}}]}


def test_nxtomo_entry_found_by_attributes_and_picked_by_name(tmp_path):
    raw = two_nxtomo_entries(tmp_path / "raw" / "two.h5")
    before = digests(raw.parent)
    record = run_job(load_job(raw, tmp_path / "out", entry="scan_0002"))
    results = record["steps"][0]["results"]
    assert results["entry"] == "/scan_0002" and results["layout"] == "nxtomo"
    assert results["data"] == "/scan_0002/instrument/pco_edge/data"     # the NXdetector, by NX_class
    assert results["angles"] == "/scan_0002/sample/rotation_angle" and results["n_projections"] == N_PROJ
    # one entry, under any name: found without being named (planning too)
    one = tmp_path / "raw" / "one.h5"
    write_raw(one, "nxtomo")
    edit(one, lambda h: h.move("/entry", "/tomo_scan_17"))
    run = plan(ct_config(tmp_path, one))
    first = run.jobs["ct_rows"] if "ct_rows" in run.jobs else run.jobs["ct_center"]   # the job reading the raw file
    assert first.steps[0]["inputs"]["raw"] == str(one)
    assert digests(raw.parent) == {**before, **{k: v for k, v in digests(raw.parent).items() if k not in before}}


@pytest.mark.parametrize("entry, words", [
    (None, ["2 NXtomo entries", "/scan_0001", "/scan_0002", "'entry'"]),
    ("scan_0003", ["entry /scan_0003", "does not exist", "/scan_0001, /scan_0002"]),
    ("scan_0001 on dxchange", ["'entry'", "input.entry", "nxtomo only"]),
])
def test_nxtomo_ambiguity_is_refused_naming_the_entries(tmp_path, entry, words):
    if entry and entry.endswith("dxchange"):
        raw, entry = write_raw(tmp_path / "raw" / "dx.h5", "dxchange"), "scan_0001"
    else:
        raw = two_nxtomo_entries(tmp_path / "raw" / "two.h5")
    before = digests(raw.parent)
    refused(lambda: run_job(load_job(raw, tmp_path / "out", entry=entry)), [str(raw), *words])
    assert leftovers(tmp_path / "out") == [] and digests(raw.parent) == before


def test_config_field_input_entry_picks_the_entry_when_planning(tmp_path):
    raw = two_nxtomo_entries(tmp_path / "raw" / "two.h5")
    run = plan(ct_config(tmp_path, raw, input={"entry": "/scan_0002"}))
    readers = [job for job in run.jobs.values() if job.steps[0].get("inputs", {}).get("raw") == str(raw)]
    assert readers and all(job.steps[0]["params"]["entry"] == "/scan_0002" for job in readers)
    refused(lambda: plan(ct_config(tmp_path, raw, input={"entry": "scan_0009"})),
            [str(raw), "entry /scan_0009", "input.entry", "/scan_0001, /scan_0002"])


# ------------------------------------------------------------------------------------------------
# 3. steps: what only the data shows (host, tomopy.normalize replaced by its numpy arithmetic)
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_tomopy(monkeypatch):
    if "tomopy" in sys.modules and not getattr(sys.modules["tomopy"], "_daisy_fake", False):
        pytest.skip("real tomopy present: these gates are tested in the image")

    def normalize(arr, flat, dark, cutoff=None, ncore=None, out=None, averaging="mean"):
        arr = arr.astype(np.float32)                       # as tomopy: float32 before any arithmetic
        flat = np.mean(np.atleast_3d(flat.T).T, axis=0, dtype=np.float32)
        dark = np.mean(np.atleast_3d(dark.T).T, axis=0, dtype=np.float32)
        denom = flat - dark
        denom[denom < np.float32(1e-6)] = np.float32(1e-6)
        result = (arr - dark) / denom
        return np.minimum(result, np.float32(cutoff)) if cutoff is not None else result

    def minus_log(arr, ncore=None, out=None):
        return np.negative(np.log(arr, out=out), out=out)

    module = types.SimpleNamespace(normalize=normalize, minus_log=minus_log, _daisy_fake=True)
    monkeypatch.setitem(sys.modules, "tomopy", module)
    return module


def normalize_job(raw: Path, out: Path, rows=(0, ROWS), **params) -> dict:
    return {"job_version": 1, "job": "norm", "threads": 1, "record": str(out / "record.json"),
            "steps": [{"step": "ct.load", "inputs": {"raw": str(raw)},
                       "params": {"row_start": rows[0], "row_stop": rows[1]}},
                      {"step": "ct.normalize", "params": params},
                      {"step": "ct.minus_log"},
                      {"step": "ct.preview_sinogram", "outputs": {"png": str(out / "sino.png")}}]}


def _dead_everywhere():
    dark = counts()[2][:1]
    return {"flat": dark.repeat(N_FLAT, 0), "dark": dark.repeat(N_DARK, 0)}   # flats equal the darks


def _dead_partly(share):
    proj, flat, dark, _ = counts()
    flat = flat.copy()
    n = int(round(share * ROWS * COLS))
    flat.reshape(N_FLAT, -1)[:, :n] = 50                               # flat below the dark
    return {"flat": flat}


def _nan(n):
    proj = counts()[0].astype(np.float32)
    proj.reshape(-1)[:n] = np.nan
    proj.reshape(-1)[n:2 * n] = np.inf
    return {"proj": proj}


def _constant(frames, value=0):
    proj = counts()[0].copy()
    proj[list(frames)] = value
    return {"proj": proj}


GATE_FAILURES = {
    "flats equal darks (all dead)": (_dead_everywhere, {}, ["max_dead_fraction", "100%", "rows 0:8", "dead"]),
    "flat below dark in 20% of pixels": (lambda: _dead_partly(0.2), {}, ["max_dead_fraction", "26 of 128", "20.3%"]),
    "NaN/inf in 10% of values": (lambda: _nan(N_PROJ * ROWS * COLS // 20), {},
                                 ["max_non_finite_fraction", "NaN or inf"]),
    "all-zero projections": (lambda: _constant(range(N_PROJ)), {}, ["max_constant_fraction", "12 of 12", "constant"]),
    "constant projections": (lambda: _constant(range(4), 700), {}, ["max_constant_fraction", "4 of 12", "first: 0, 1, 2, 3"]),
}


@pytest.mark.parametrize("case", list(GATE_FAILURES))
def test_quality_gates_fail_naming_the_reason(tmp_path, fake_tomopy, case):
    make, params, words = GATE_FAILURES[case]
    raw = write_raw(tmp_path / "raw" / "scan.h5", **make())
    before = digests(raw.parent)
    out = tmp_path / "out"
    refused(lambda: run_job(normalize_job(raw, out, **params)), ["ct.normalize", str(raw), *words])
    assert leftovers(out) == [] and digests(raw.parent) == before
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and record["failed_step"] == "ct.normalize"


GATE_WARNINGS = {
    "flat below dark in 2% of pixels": (lambda: _dead_partly(0.02), ["3 of 128 detector pixels are dead", "rows 0:8"]),
    "a few NaN/inf": (lambda: _nan(3), ["6 of 1536 projection values are NaN or inf", "set to 1"]),
    "flats equal darks, limit raised": (_dead_everywhere, ["128 of 128 detector pixels are dead"]),
}


@pytest.mark.parametrize("case", list(GATE_WARNINGS))
def test_below_the_limit_the_run_completes_with_a_warning(tmp_path, fake_tomopy, case):
    make, words = GATE_WARNINGS[case]
    raw = write_raw(tmp_path / "raw" / "scan.h5", **make())
    out = tmp_path / "out"
    params = {"max_dead_fraction": 1.0} if "raised" in case else {}
    record = run_job(normalize_job(raw, out, **params))
    assert record["status"] == "completed" and (out / "sino.png").is_file()
    warnings = record["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("ct.normalize: ")
    assert_names(warnings[0], [str(raw), *words])
    assert record["steps"][1]["warnings"] == [warnings[0][len("ct.normalize: "):]]
    assert json.loads((out / "record.json").read_text())["warnings"] == warnings


def test_a_clean_scan_has_no_warning(tmp_path, fake_tomopy):
    raw = write_raw(tmp_path / "raw" / "scan.h5")
    record = run_job(normalize_job(raw, tmp_path / "out"))
    assert record["warnings"] == [] and record["steps"][1]["results"]["dead_pixels"] == 0


def test_nan_angles_are_refused(tmp_path):
    deg = np.linspace(0, 180, N_PROJ)
    deg[3] = np.nan
    raw = write_raw(tmp_path / "raw" / "scan.h5", deg=deg)
    refused(lambda: run_job(load_job(raw, tmp_path / "out")), [str(raw), "/entry/angles", "1 non-finite"])
    assert leftovers(tmp_path / "out") == []


def test_rows_outside_the_detector(tmp_path):
    raw = write_raw(tmp_path / "raw" / "scan.h5")
    refused(lambda: run_job(load_job(raw, tmp_path / "out", row_start=4, row_stop=ROWS + 2)),
            [str(raw), f"rows 4:{ROWS + 2}", f"{ROWS} detector rows"])


# ------------------------------------------------------------------------------------------------
# 4. XRD: frames, masks and darks of other shapes, empty scans, a missing Eiger data file
# ------------------------------------------------------------------------------------------------

XRD_SHAPE = (24, 20)
FIT2D = {"directDist": 100.0, "centerX": 10.0, "centerY": 12.0, "tilt": 0.0, "tiltPlanRotation": 0.0,
         "pixelX": 300.0, "pixelY": 300.0}


def eiger(folder: Path, n: int = 6, shape=XRD_SHAPE, mask_shape=None, drop_data=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "scan_00001_data_000001.h5"
    with h5py.File(data, "w") as handle:
        handle["/entry/data/data"] = np.random.default_rng(0).integers(0, 100, (n, *shape)).astype(np.uint32)
    master = folder / "scan_00001_master.h5"
    with h5py.File(master, "w") as handle:
        handle.create_group("/entry/data")["data_000001"] = h5py.ExternalLink(data.name, "/entry/data/data")
        handle["/entry/instrument/detector/pixel_mask"] = np.zeros(mask_shape or shape, np.uint32)
    if drop_data:
        data.unlink()
    return master


def xrd_config(tmp: Path, source: Path, **changes) -> dict:
    cfg = {"config_version": 1, "pipeline": "xrd", "outdir": str(tmp / "out"), "threads": 1,
           "input": {"file": str(source)},
           "integrate": {"geometry": {"fit2d": FIT2D, "wavelength_angstrom": 0.7}, "npt": 50}}
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def xrd_job(source, out: Path, mask=None, dark=None) -> dict:
    return {"job_version": 1, "job": "block", "threads": 1, "record": str(out / "record.json"), "steps": [
        {"step": "xrd.load_frames", "inputs": {"source": str(source)}, "params": {"batch_frames": 2}},
        {"step": "xrd.mask", "inputs": {"user_mask": str(mask)} if mask else {}},
        {"step": "xrd.integrate", "inputs": {"dark": str(dark)} if dark else {},
         "params": {"geometry": {"fit2d": FIT2D, "wavelength_angstrom": 0.7}, "npt": 50}},
        {"step": "xrd.save_block", "outputs": {"block": str(out / "block.h5")}}]}


def test_xrd_missing_linked_data_file_is_refused_when_planning(tmp_path):
    master = eiger(tmp_path / "raw", drop_data=True)
    before = digests(master.parent)
    refused(lambda: plan(xrd_config(tmp_path, master)),
            [str(master), "/entry/data/data_000001", "scan_00001_data_000001.h5", "cannot be opened"])
    assert not (tmp_path / "out").exists() and digests(master.parent) == before


def test_xrd_empty_stack_is_refused_when_planning(tmp_path):
    stack = tmp_path / "raw" / "stack.h5"
    stack.parent.mkdir()
    with h5py.File(stack, "w") as handle:
        handle["/entry/data/data"] = np.zeros((0, *XRD_SHAPE), np.uint16)
    refused(lambda: plan(xrd_config(tmp_path, stack)), [str(stack), "/entry/data/data", "holds no frames"])


def test_xrd_input_neither_hdf5_nor_image(tmp_path):
    junk = tmp_path / "raw" / "scan.cbf"
    junk.parent.mkdir()
    junk.write_bytes(b"\x00garbage" * 10)
    refused(lambda: plan(xrd_config(tmp_path, junk)), [str(junk), "neither HDF5 nor a format fabio reads"])


@pytest.mark.parametrize("what", ["user mask", "pixel mask", "dark"])
def test_xrd_mask_and_dark_of_another_shape(tmp_path, what):
    pytest.importorskip("pyFAI")
    raw = tmp_path / "raw"
    master = eiger(raw, mask_shape=(10, 10) if what == "pixel mask" else None)
    other = raw / f"{what.replace(' ', '_')}.npy"
    np.save(other, np.zeros((XRD_SHAPE[0], XRD_SHAPE[1] + 1), np.uint8))
    before = digests(raw)
    out = tmp_path / "out"
    job = xrd_job(master, out, mask=other if what == "user mask" else None, dark=other if what == "dark" else None)
    words = {"user mask": [str(other), f"({XRD_SHAPE[0]}, {XRD_SHAPE[1] + 1})", str(master), str(XRD_SHAPE)],
             "pixel mask": ["pixel mask", str(master), "(10, 10)", str(XRD_SHAPE)],
             "dark": ["dark", str(other), str(master), str(XRD_SHAPE)]}[what]
    refused(lambda: run_job(job), words)
    assert leftovers(out) == [] and digests(raw) == before


# ------------------------------------------------------------------------------------------------
# 5. configs: types, unknown keys, ranges, outputs leaving the outdir, metacharacters, traversal
# ------------------------------------------------------------------------------------------------

CONFIG_CASES = {
    "wrong type": ({"threads": "two"}, ["field 'threads'", "'two' is not of type"]),
    "wrong type nested": ({"recon": {"num_iter": "many"}}, ["field 'recon.num_iter'"]),
    "unknown key": ({"recon": {"iterations": 3}}, ["unknown key 'iterations'"]),
    "unknown top-level key": ({"outdri": "x"}, ["unknown key 'outdri'"]),
    "out of range": ({"slabs": {"count": 0}}, ["field 'slabs.count'"]),
    "share out of range": ({"normalize": {"max_dead_fraction": 2}}, ["field 'normalize.max_dead_fraction'"]),
    "enum": ({"center": {"on_edge": "ignore"}}, ["field 'center.on_edge'", "'ignore'"]),
    "outdir with ;": ({"outdir": "out; touch PWNED"}, ["field 'outdir'", "';'"]),
    "outdir with $()": ({"outdir": "out$(touch PWNED)"}, ["field 'outdir'", "'$'"]),
    "outdir with backticks": ({"outdir": "out`touch PWNED`"}, ["field 'outdir'", "'`'"]),
    "outdir with braces": ({"outdir": "out/{index}"}, ["field 'outdir'", "'{'"]),
    "outdir with a comma": ({"outdir": "out,ro"}, ["field 'outdir'", "','"]),
    "outdir with a newline": ({"outdir": "out\nx"}, ["field 'outdir'"]),
    "outdir is a file": (None, ["field 'outdir'", "is not a folder"]),
    "input in a folder with ':'": (None, ["field 'input.file'", "':'", "bind"]),
    "input with braces": ({"input": {"file": "raw/scan{index}.h5"}}, ["field 'input.file'", "'{'", "wildcards"]),
    "hdf5 path without /": ({"input": {"data_path": "entry/tomo"}}, ["field 'input.data_path'"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_errors_name_the_field(tmp_path, case):
    raw = write_raw(tmp_path / "raw" / "scan.h5")
    changes, words = CONFIG_CASES[case]
    cfg = ct_config(tmp_path, raw)
    if case == "outdir is a file":
        (tmp_path / "afile").write_text("x")
        changes = {"outdir": str(tmp_path / "afile")}
    if case == "input in a folder with ':'":
        odd = tmp_path / "a:b" / "scan.h5"
        odd.parent.mkdir()
        shutil.copyfile(raw, odd)
        changes = {"input": {"file": str(odd)}}
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    before = digests(raw.parent)
    old = Path.cwd()
    os.chdir(tmp_path)                                     # relative outdirs land here, if anywhere
    try:
        refused(lambda: plan(cfg), words)
    finally:
        os.chdir(old)
    assert not list(tmp_path.rglob("PWNED*")) and not (tmp_path / "out").exists()
    assert digests(raw.parent) == before


@pytest.mark.parametrize("name, words", [
    ("../../x.h5", ["'../../x.h5'", "not a plain file name", "inside the outdir"]),
    ("/tmp/elsewhere.h5", ["'/tmp/elsewhere.h5'", "not a plain file name"]),
    ("sub/x.h5", ["'sub/x.h5'", "not a plain file name"]),
    ("..", ["'..'", "not a plain file name"]),
    ("~x.h5", ["'~x.h5'"]),
    ("r{index}.h5", ["'{'", "wildcards"]),
    ("xy", ["'xy'", "a folder the pipeline writes"]),
])
def test_output_names_that_leave_the_outdir_are_refused(tmp_path, name, words):
    master = eiger(tmp_path / "raw")
    refused(lambda: plan(xrd_config(tmp_path, master, save={"filename": name})), ["field 'save.filename'", *words])
    assert not (tmp_path / "out").exists() and not Path("/tmp/elsewhere.h5").exists()


def test_a_plain_output_name_is_accepted_and_stays_inside(tmp_path):
    master = eiger(tmp_path / "raw")
    for name in ("my result (v2).h5", "x;rm -rf ~.h5", "$(touch PWNED).h5"):   # never reach a shell
        run = plan(xrd_config(tmp_path, master, save={"filename": name}))
        assert run.jobs["xrd_gather"].outputs["result"] == str(tmp_path / "out" / "xrd" / name)
        configs.check_plan_paths(run)


def test_the_plan_guard_catches_a_path_outside(tmp_path):
    master = eiger(tmp_path / "raw")
    run = plan(xrd_config(tmp_path, master))
    run.jobs["xrd_gather"].outputs["result"] = str(tmp_path / "elsewhere.h5")
    refused(lambda: configs.check_plan_paths(run), ["job xrd_gather", "elsewhere.h5", "outside the outdir"])


#: file names with shell metacharacters: they travel in JSON job files, never through a shell
ODD_NAMES = ["scan;touch PWNED.h5", "scan$(touch PWNED).h5", "scan`touch PWNED`.h5", "scan 'q' \"qq\" |&<>.h5",
             "scan#!*?[x].h5"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_metacharacters_in_input_names_are_data(tmp_path, name):
    """Every path-like input field of CT and XRD: the name reaches the job file verbatim."""
    raw = write_raw(tmp_path / "raw" / name)
    run = plan(ct_config(tmp_path, raw))
    readers = [job for job in run.jobs.values() if job.stage.name in ("ct_rows", "ct_center", "ct_slab")
               and job.steps[0]["inputs"]["raw"] == str(raw)]
    assert readers and "ct_slab_0000" in run.jobs and (readers[0].name == "ct_rows" or len(readers) >= 2)
    xrd_dir = tmp_path / "xrd" / name.replace(".h5", "")
    master = eiger(xrd_dir)
    extra = xrd_dir / name.replace(".h5", ".npy")
    np.save(extra, np.zeros(XRD_SHAPE, np.float32))
    poni = xrd_dir / name.replace(".h5", ".poni")
    poni.write_text("poni_version: 2\n")
    cfg = xrd_config(tmp_path, master, input={"dark": str(extra), "flat": str(extra)}, mask={"file": str(extra)},
                     integrate={"geometry": {"poni": str(poni)}, "npt": 50})
    run = plan(cfg)
    block = run.jobs["xrd_block_0000"]
    assert block.steps[1]["inputs"]["user_mask"] == str(extra) and block.steps[2]["inputs"]["dark"] == str(extra)
    assert block.steps[2]["params"]["geometry"]["poni"] == str(poni)
    assert not list(tmp_path.rglob("PWNED*"))


def test_path_traversal_in_an_input_field_is_only_a_path(tmp_path):
    """``../..`` in an input reads that file (read-only) or names why it cannot; nothing else."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    target = tmp_path / "secret.txt"
    target.write_text("not a scan")
    traversal = str(tmp_path / "a" / "b" / ".." / ".." / "secret.txt")
    refused(lambda: plan(ct_config(tmp_path, Path(traversal))), [traversal, "not a readable HDF5 file"])
    assert target.read_text() == "not a scan"


def test_design_dictionaries_with_a_typo_name_the_key(tmp_path):
    design = (REPO / ".test" / "xrd-import" / "design.py").read_text()
    for typo, words in (("'inputfile_name'", ["inputfile_nmae"]), ("'outputfile_name': 'test_scan.h5'", [])):
        bad = tmp_path / "design.py"
        if typo.startswith("'inputfile_name'"):
            bad.write_text(design.replace("'inputfile_name'", "'inputfile_nmae'", 1))
        else:  # the design's output name, escaping the outdir: refused as save.filename
            bad.write_text(design.replace("'outputfile_name': 'test_scan.h5'", "'outputfile_name': '../../evil.h5'"))
            words = ["save.filename", "'../../evil.h5'", "not a plain file name"]
        res = daisy("validate", str(bad), cwd=tmp_path)
        assert res.returncode == 2, res.stdout + res.stderr
        assert_names(res.stderr, words)
    assert not list(tmp_path.rglob("*.h5"))


# ------------------------------------------------------------------------------------------------
# 6. in the images: integer counts below the dark, the centre gate (real tomopy)
# ------------------------------------------------------------------------------------------------

def in_image(image: str, steps: list, folder: Path, inputs=(), name="job") -> dict:
    from daisy.workflow import run_job_in_image

    require_image(image)
    document = {"job": name, "threads": 1, "steps": steps, "record": str(folder / f"{name}.rec.json")}
    run_job_in_image(image, document, folder / f"{name}.job.json", folder, inputs=inputs)
    return json.loads((folder / f"{name}.rec.json").read_text())


@pytest.mark.apptainer
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int64"])
def test_integer_counts_below_the_dark_do_not_wrap(tmp_path, dtype):
    """proj - dark in the counts' own integer type would wrap to huge values; DAISY's result is
    the float32 arithmetic, clipped at min_transmission, and no dead pixel."""
    proj, flat, dark, deg = counts()
    info = np.iinfo(dtype)
    big = min(info.max // 4, 2**31)
    proj, flat, dark = (a.astype(dtype) for a in (proj, flat, dark))
    if dtype != "uint16":
        flat = (flat.astype(np.int64) + big - 2000).astype(dtype)   # counts near the top of the type
    proj[:, 0, :] = 5                                                # below every dark (~100)
    raw = write_raw(tmp_path / "raw" / "scan.h5", proj=proj, flat=flat, dark=dark)
    before = digests(raw.parent)
    out = tmp_path / "out"
    out.mkdir()
    steps = [{"step": "ct.load", "inputs": {"raw": str(raw)}}, {"step": "ct.normalize"},
             {"step": "hdf5.save", "params": {"key": "proj", "compression": "none"},
              "outputs": {"target": f"{out / 'norm.h5'}:/norm"}}]
    record = in_image("tomopy", steps, out, inputs=[raw])
    with h5py.File(out / "norm.h5", "r") as handle:
        norm = handle["/norm"][()]
    expected = (proj.astype(np.float64) - dark.astype(np.float64).mean(0)) / (
        flat.astype(np.float64).mean(0) - dark.astype(np.float64).mean(0))
    assert norm.dtype == np.float32 and np.isfinite(norm).all()
    assert (norm[:, 0, :] == np.float32(1e-6)).all()                 # clipped, not wrapped to ~650
    assert np.allclose(norm[:, 1:, :], np.maximum(expected[:, 1:, :], 1e-6), rtol=1e-3, atol=1e-6)
    assert record["steps"][1]["results"]["dead_pixels"] == 0 and record["warnings"] == []
    assert digests(raw.parent) == before


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from daisy.workflow import run_job_in_image

    require_image("tomopy")
    folder = tmp_path_factory.mktemp("phantom")
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": [
        {"step": "sample.ct_phantom", "outputs": {"raw": str(folder / "data" / "ct.h5")},
         "params": {"size": 32, "n_angles": 60, "center_offset": 6.0, "seed": 3, "layout": "nxtomo"}}]},
        folder / "jobs" / "sample.json", folder)
    return folder / "data" / "ct.h5"


@pytest.mark.apptainer
@pytest.mark.parametrize("on_edge", ["fail", "warn"])
def test_a_centre_on_the_edge_of_its_search_range(phantom, tmp_path, on_edge):
    """The axis lies 6 px right of the detector centre; searching +-2 px puts the centre on the edge."""
    before = sha256_file(phantom)
    steps = [{"step": "ct.load", "inputs": {"raw": str(phantom)}, "params": {"row_start": 14, "row_stop": 18}},
             {"step": "ct.normalize"}, {"step": "ct.angles"}, {"step": "ct.minus_log"},
             {"step": "ct.find_center", "params": {"vo_smin": -2, "vo_smax": 2, "on_edge": on_edge},
              "outputs": {"center": str(tmp_path / "center.json")}}]
    if on_edge == "fail":
        with pytest.raises(StepError) as err:
            in_image("tomopy", steps, tmp_path, inputs=[phantom])
        assert_names(str(err.value), ["ct.find_center", "on the edge of its search range", "vo_smin -2",
                                      "center.on_edge", str(phantom)])
        assert not (tmp_path / "center.json").exists() and leftovers(tmp_path) == []
    else:
        record = in_image("tomopy", steps, tmp_path, inputs=[phantom])
        assert any("on the edge of its search range" in w for w in record["warnings"]), record["warnings"]
        assert json.loads((tmp_path / "center.json").read_text())["center"] > 0
    assert sha256_file(phantom) == before


# ------------------------------------------------------------------------------------------------
# 7. end to end through `daisy run`: exit status, console message, nothing left
# ------------------------------------------------------------------------------------------------

def hooked(name: str) -> bool:
    """Whether the lead's one-line hook (report printing, outdir lock) is in the run path yet."""
    return any(name in (REPO / f).read_text() for f in ("daisy/cli.py", "daisy/workflow.py", "rules/common.smk"))


def write_config(folder: Path, cfg: dict, name="config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def e2e(tmp: Path, cfg: dict, pipeline: str, env=None):
    inputs = tmp / "raw"
    before = digests(inputs)
    res = daisy("run", pipeline, "--config", str(write_config(tmp, cfg)), cwd=tmp, env=env)
    assert digests(inputs) == before
    return res, res.stdout + res.stderr


@pytest.mark.apptainer
@pytest.mark.snakemake
@pytest.mark.parametrize("case", ["empty projections", "flats equal darks", "output name escapes"])
def test_daisy_run_refuses_naming_the_culprit(tmp_path, case):
    require_image("tomopy")
    raw = tmp_path / "raw" / "scan.h5"
    if case == "empty projections":   # the IndexError: now refused when planning
        _empty_projections(raw)
        cfg, pipeline, words = ct_config(tmp_path, raw), "ct", [str(raw), "/entry/tomo", "holds no frames"]
    elif case == "flats equal darks":  # the garbage volume with exit 0: now the gate
        write_raw(raw, **_dead_everywhere())
        cfg, pipeline = ct_config(tmp_path, raw), "ct"
        words = ["ct.normalize", "max_dead_fraction", str(raw), "detector pixels are dead"]
    else:                              # the gather-job CalledProcessError: now validation
        master = eiger(raw.parent)
        cfg, pipeline = xrd_config(tmp_path, master, save={"filename": "../../x.h5"}), "xrd"
        words = ["field 'save.filename'", "'../../x.h5'", "inside the outdir"]
    res, text = e2e(tmp_path, cfg, pipeline)
    assert res.returncode == 2, text[-3000:]
    assert_names(text, words)
    assert leftovers(tmp_path / "out") == []
    assert not (tmp_path.parent / "x.h5").exists()


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_daisy_run_with_nan_completes_and_warns(tmp_path):
    require_image("tomopy")
    raw = write_raw(tmp_path / "raw" / "scan.h5", **_nan(2))
    # noise without an object: the centre gate would (rightly) refuse a search; give the centre
    cfg = ct_config(tmp_path, raw, save={"previews": False}, center={"method": "manual", "center": 8.0})
    res, text = e2e(tmp_path, cfg, "ct")
    assert res.returncode == 0, text[-3000:]
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    kept = [w for job in prov["jobs"].values() for w in job.get("warnings", [])]
    assert any("projection values are NaN or inf" in w and str(raw) in w for w in kept), kept
    if hooked("print_warnings"):
        assert "daisy: warning: ct_slab_0000: ct.normalize:" in res.stderr, res.stderr[-3000:]
        assert "Traceback" not in text


@pytest.mark.apptainer
@pytest.mark.snakemake
@pytest.mark.parametrize("name", ODD_NAMES[:3] + ["scan{braces}.h5"])
def test_daisy_run_with_metacharacters_in_the_input_name(tmp_path, name):
    """A file name with shell metacharacters that exists works (or is refused by name): never executed."""
    require_image("base")
    raw = tmp_path / "raw" / name
    raw.parent.mkdir()
    with h5py.File(raw, "w") as handle:
        handle["/entry/tomo"] = np.arange(24.0).reshape(2, 3, 4)
    cfg = {"config_version": 1, "pipeline": "copy", "input": f"{raw}:/entry/tomo", "outdir": str(tmp_path / "out")}
    res, text = e2e(tmp_path, cfg, "copy")
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.home().glob("PWNED*"))
    if res.returncode == 0:
        with h5py.File(tmp_path / "out" / "copy" / "data.h5", "r") as handle:
            assert np.array_equal(handle["/entry/data/data"][()], np.arange(24.0).reshape(2, 3, 4))
    else:
        assert res.returncode == 2 and "Traceback" not in text
        assert "input" in res.stderr and name in res.stderr, res.stderr[-3000:]
        assert leftovers(tmp_path / "out") == []


@pytest.mark.apptainer
@pytest.mark.snakemake
@pytest.mark.parametrize("problem", ["missing image", "digest mismatch"])
def test_daisy_run_with_a_missing_or_corrupted_image(tmp_path, problem):
    from daisy import images

    sif = require_image("base")
    cache = tmp_path / "cache"
    cache.mkdir()
    words = ["image 'base'"]
    if problem == "digest mismatch":
        copy = cache / sif.name
        shutil.copyfile(sif, copy)
        with open(copy, "r+b") as handle:               # one changed byte in the middle
            handle.seek(copy.stat().st_size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
        words += [images.load_lock()["images"]["base"]["image_sha256"], str(copy)]
    else:
        words += ["is not in the cache", str(cache)]
    raw = tmp_path / "raw" / "raw.h5"
    raw.parent.mkdir()
    with h5py.File(raw, "w") as handle:
        handle["/entry/tomo"] = np.ones((2, 3, 4))
    cfg = {"config_version": 1, "pipeline": "copy", "input": f"{raw}:/entry/tomo", "outdir": str(tmp_path / "out")}
    res, text = e2e(tmp_path, cfg, "copy", env={"DAISY_IMAGE_CACHE": str(cache)})
    assert res.returncode == 2, text[-3000:]
    assert_names(res.stderr, words)
    assert leftovers(tmp_path / "out") == [] and not (tmp_path / "out" / "copy").exists()


# ------------------------------------------------------------------------------------------------
# 8. the warnings a run prints at its end (daisy/run_report.py)
# ------------------------------------------------------------------------------------------------

def test_print_warnings_reads_every_record_and_never_fails(tmp_path):
    import io

    from daisy.run_report import print_warnings

    raw = write_raw(tmp_path / "raw" / "scan.h5")
    run = plan(ct_config(tmp_path, raw))
    assert print_warnings(run, io.StringIO()) == 0                     # no record yet: nothing to say
    lines = {"ct_center": ["ct.normalize: 3 of 128 detector pixels are dead"],
             "ct_slab_0001": ["ct.normalize: 2 of 1536 projection values are NaN or inf", "ct.find_center: edge"]}
    for job, warnings in lines.items():
        path = Path(run.record_file(job))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"status": "completed", "started": "x", "warnings": warnings}))
    out = io.StringIO()
    assert print_warnings(run, out) == 3
    text = out.getvalue()
    assert "daisy: 3 warnings" in text and str(Path(run.provenance_file())) in text
    assert "daisy: warning: ct_center: ct.normalize: 3 of 128 detector pixels are dead" in text
    assert "daisy: warning: ct_slab_0001: ct.find_center: edge" in text
    out = io.StringIO()
    assert print_warnings(run, out, limit=1) == 3 and "and 2 more" in out.getvalue()
    Path(run.record_file("ct_center")).write_text("{not json")          # a damaged record: still no exception
    assert print_warnings(run, io.StringIO()) == 2


# ------------------------------------------------------------------------------------------------
# 9. the reconstruction gate: garbage from tomopy.recon is recomputed once, never saved
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_calls, outcome", [(0, "clean"), (1, "warning"), (2, "failure")])
def test_implausible_reconstructions_are_recomputed_then_refused(tmp_path, fake_tomopy, bad_calls, outcome):
    """A reconstruction with inf or absurd values is never saved silently: a stand-in for tomopy
    returns such values inside the image (not on the two gridrec edge lines ct.recon blanks, see
    DEVELOPERS.md) ``bad_calls`` times."""
    calls = []

    def recon(proj, theta, center=None, algorithm=None, sinogram_order=False, ncore=1, nchunk=None,
              init_recon=None, **kw):
        calls.append(1)
        rows = proj.shape[0] if sinogram_order else proj.shape[1]
        out = np.full((rows, proj.shape[2], proj.shape[2]), 0.01, np.float32)
        if len(calls) <= bad_calls:
            out[:, 1, 1] = np.inf if len(calls) == 1 else 3e19
        return out

    fake_tomopy.recon = recon
    raw = write_raw(tmp_path / "raw" / "scan.h5")
    out = tmp_path / "out"
    steps = [{"step": "ct.load", "inputs": {"raw": str(raw)}}, {"step": "ct.normalize"}, {"step": "ct.angles"},
             {"step": "ct.minus_log"}, {"step": "ct.recon", "params": {"center": 8.0}},
             {"step": "ct.save_slab", "outputs": {"slab": str(out / "slab.h5")}}]
    job = {"job_version": 1, "job": "recon", "threads": 1, "record": str(out / "record.json"), "steps": steps}
    if outcome == "failure":
        refused(lambda: run_job(job), ["ct.recon", "twice", "3e+19", str(raw), "recon.max_value_factor"])
        assert leftovers(out) == []
        return
    record = run_job(job)
    with h5py.File(out / "slab.h5", "r") as handle:
        assert np.isfinite(handle["/entry/recon/data"][()]).all()
    if outcome == "warning":
        assert len(record["warnings"]) == 1 and "ct.recon: " in record["warnings"][0]
        assert_names(record["warnings"][0], [f"{ROWS} non-finite values", "first call", str(raw)])
    else:
        assert record["warnings"] == [] and len(calls) == 1
