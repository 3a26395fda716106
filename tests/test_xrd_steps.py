"""XRD steps: simulated Eiger scans -> load -> mask -> integrate -> save_block -> gather.

Host tests run the steps in this process (pyFAI from the test extras); the ``apptainer`` tests run
block and gather jobs in the pyfai image as job documents through ``daisy.workflow.run_job_in_image``
(the production way outside Snakemake). The oracle is ``tests/reference/direct_pyfai.py``, the plain
pyFAI script a user would write instead (also the benchmarks' B side). Frames are an Eiger 4M
binned 4x4 (541 x 517 pixels) so the module stays fast; the geometry is the original design's
(169 mm, 0.7293 Å, tilt 0.3753°).

Peak tolerance: calibrant peaks (centroid of the mean pattern, 1000 points over ~34°, i.e. bins of
0.034°) must lie within PEAK_TOL_DEG = 0.01° of pyFAI's calibrant 2θ (measured: ≤ 0.0015°).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from daisy_steps.core import run_job
from daisy_steps.errors import ParamError, StepError

pyFAI = pytest.importorskip("pyFAI")
import pyFAI.calibrant  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BINNING = 4
N_FRAMES = 12
WAVELENGTH = 0.7293
# the original design's cfg_dict, scaled to the 4x4-binned detector
FIT2D = {"directDist": 169.0, "centerX": 1049.967 / BINNING, "centerY": 1063.892 / BINNING,
         "tilt": 0.3753, "tiltPlanRotation": 64.66877, "pixelX": 75.0 * BINNING, "pixelY": 75.0 * BINNING}
PEAK_TOL_DEG = 0.01


def _reference():
    """tests/reference/direct_pyfai.py, the plain pyFAI script DAISY is compared with."""
    spec = importlib.util.spec_from_file_location("direct_pyfai", REPO / "tests" / "reference" / "direct_pyfai.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job(steps, name="test", record=None, threads=2):
    return {"job_version": 1, "job": name, "threads": threads, "steps": steps, **({"record": str(record)} if record else {})}


def block_steps(source, block, start=0, stop=None, geometry=None, mask_inputs=None, **integrate):
    return [
        {"step": "xrd.load_frames", "params": {"start": start, "stop": stop, "batch_frames": 4},
         "inputs": {"source": str(source)}},
        {"step": "xrd.mask", "params": {}, "inputs": mask_inputs or {}},
        {"step": "xrd.integrate", "params": {"geometry": geometry or {"fit2d": FIT2D, "wavelength_angstrom": WAVELENGTH},
                                             **integrate}},
        {"step": "xrd.save_block", "params": {}, "outputs": {"block": str(block)}},
    ]


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def centroid_peaks(radial, pattern, positions, half_width):
    """Centroid (7 points around the maximum, background removed) near each expected position."""
    background = np.median(pattern)
    found = []
    for pos in positions:
        sel = np.abs(radial - pos) < half_width
        x, y = radial[sel], pattern[sel] - background
        k = int(np.argmax(y))
        w = slice(max(k - 3, 0), k + 4)
        found.append(float((x[w] * y[w]).sum() / y[w].sum()))
    return np.array(found)


def calibrant_2th(name, upto):
    cal = pyFAI.calibrant.get_calibrant(name)
    cal.wavelength = WAVELENGTH * 1e-10
    tth = np.degrees(cal.get_2th())
    return tth[tth < upto]


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Simulated scans: CeO2 Eiger master + 3 data files, a LaB6 scan, a plain CeO2 stack."""
    root = tmp_path_factory.mktemp("xrd")
    raw = root / "raw"
    run_job(job([{"step": "sample.xrd_eiger",
                  "params": {"binning": BINNING, "n_frames": N_FRAMES, "frames_per_file": 5, "seed": 7},
                  "outputs": {"scan": str(raw / "scan_00001_master.h5"), "poni": str(raw / "scan_00001.poni"),
                              "user_mask": str(raw / "scan_00001_mask.h5:/mask")}}]))
    run_job(job([{"step": "sample.xrd_eiger",
                  "params": {"binning": BINNING, "n_frames": 2, "calibrant": "LaB6", "seed": 3},
                  "outputs": {"scan": str(raw / "scan_00002_master.h5")}}]))
    run_job(job([{"step": "sample.xrd_eiger",
                  "params": {"binning": BINNING, "n_frames": 3, "layout": "stack", "seed": 7},
                  "outputs": {"scan": str(raw / "stack_00003.h5"), "user_mask": str(raw / "stack_mask.h5:/mask")}}]))
    # a mask of another shape: the 8x8-binned detector
    with h5py.File(raw / "mask_binned8.h5", "w") as handle:
        handle["/mask"] = np.zeros((270, 258), np.uint8)
    return root


@pytest.fixture(scope="module")
def single_block(data):
    """The whole CeO2 scan integrated as one block (1D + 2D), with its record."""
    out = data / "single"
    record = run_job(job(block_steps(data / "raw/scan_00001_master.h5", out / "block.h5",
                                     integrate_2d=True, npt_azim=36, npt=1000)))
    return out / "block.h5", record


# --------------------------------------------------------------------------------------------- sample data

def test_sample_is_written_like_an_eiger(data):
    raw = data / "raw"
    names = sorted(p.name for p in raw.iterdir())
    assert {"scan_00001_master.h5", "scan_00001_data_000001.h5", "scan_00001_data_000002.h5",
            "scan_00001_data_000003.h5", "scan_00001.poni"} <= set(names)
    assert not [n for n in names if ".part" in n]
    with h5py.File(raw / "scan_00001_master.h5") as master:
        link = master["/entry/data"].get("data_000002", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert (link.filename, link.path) == ("scan_00001_data_000002.h5", "/entry/data/data")
        det = master["/entry/instrument/detector"]
        assert det["x_pixel_size"].attrs["units"] == "m"
        assert det["detector_distance"][()] == pytest.approx(0.169)
        assert det["beam_center_x"][()] == pytest.approx(1049.967 / BINNING)
        assert master["/entry/instrument/beam/incident_wavelength"][()] == pytest.approx(WAVELENGTH)
        pixel_mask = det["pixel_mask"][()]
        assert pixel_mask.shape == (541, 517)
        assert set(np.unique(pixel_mask)) <= {0, 1, 2, 8, 9, 10}
        frames = master["/entry/data/data_000001"]
        assert frames.shape == (5, 541, 517) and frames.dtype == np.uint32
        assert "32008" in frames._filters  # bitshuffle (LZ4) filter id
        frame = frames[0]
        assert np.all(frame[(pixel_mask & 1) != 0] == np.iinfo(np.uint32).max)  # gaps as the detector writes them
        assert master["/entry/data/data_000003"].shape[0] == 2
    # deterministic: the same seed gives the same frames
    again = data / "again"
    run_job(job([{"step": "sample.xrd_eiger", "params": {"binning": BINNING, "n_frames": N_FRAMES, "frames_per_file": 5, "seed": 7},
                  "outputs": {"scan": str(again / "scan_00001_master.h5")}}]))
    with h5py.File(raw / "scan_00001_master.h5") as a, h5py.File(again / "scan_00001_master.h5") as b:
        assert np.array_equal(a["/entry/data/data_000001"][1], b["/entry/data/data_000001"][1])


# --------------------------------------------------------------------------------------------- loading

def test_load_frames_reads_no_frame_until_integrate_streams_them(data, monkeypatch):
    """xrd.load_frames opens the scan from its headers only; the frames are read when a later step
    iterates ``frames()`` (as xrd.integrate does): in order, across the master's data files, each
    read once."""
    import threading

    from daisy_steps.core import DataStore, JobContext
    from daisy_steps.fileio import OutputSet
    from daisy_steps.params import resolve
    from daisy_steps.xrd.steps import LoadFrames

    master = data / "raw/scan_00001_master.h5"
    with h5py.File(master) as handle:
        direct = np.concatenate([handle[f"/entry/data/data_00000{i}"][()] for i in (1, 2, 3)])
    frame_reads = []  # every read of frame data: read_direct, or slicing a frame stack
    read_direct, getitem = h5py.Dataset.read_direct, h5py.Dataset.__getitem__

    def counted_read_direct(self, *args, **kwargs):
        frame_reads.append(self.name)
        return read_direct(self, *args, **kwargs)

    def counted_getitem(self, key, *args, **kwargs):
        if self.ndim == 3:
            frame_reads.append(self.name)
        return getitem(self, key, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "read_direct", counted_read_direct)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted_getitem)
    store = DataStore()
    ctx = JobContext({"source": str(master)}, {}, OutputSet(), 1, "xrd.load_frames")
    LoadFrames(resolve("steps/xrd.load_frames", {"start": 3, "stop": 11, "batch_frames": 3}), store, ctx).execute()
    source = store["frames"]
    assert source.kind == "eiger" and len(source) == 8 and source.shape == (541, 517)
    assert frame_reads == []  # opened from the headers: no frame read yet
    assert not any(t.name == "daisy-read-ahead" for t in threading.enumerate())
    assert ctx.results["files"] == [str(master)] + [str(master.parent / f"scan_00001_data_00000{i}.h5") for i in (1, 2, 3)]
    seen = [(index, frame.copy()) for index, frame in source.frames()]
    assert [i for i, _ in seen] == list(range(3, 11))
    assert all(np.array_equal(frame, direct[i]) for i, frame in seen)
    assert len(frame_reads) == len(source)  # one read per frame, none twice, none outside 3:11
    assert not any(t.name == "daisy-read-ahead" for t in threading.enumerate())


def test_frames_are_read_ahead_in_order_across_data_files(data):
    import threading

    from daisy_steps.xrd.frames import open_source
    from daisy_steps.fileio import FileRef

    master = data / "raw/scan_00001_master.h5"
    source = open_source(FileRef.parse(str(master)), start=2, stop=11, batch=2)
    with h5py.File(master) as handle:
        direct = np.concatenate([handle[f"/entry/data/data_00000{i}"][()] for i in (1, 2, 3)])
    seen = [(index, frame.copy()) for index, frame in source.frames()]
    assert [i for i, _ in seen] == list(range(2, 11))
    assert all(np.array_equal(frame, direct[i]) for i, frame in seen)
    # stopping early ends the reader thread (and closes the files) instead of leaving it blocked
    frames = source.frames()
    next(frames)
    frames.close()
    assert not any(t.name == "daisy-read-ahead" for t in threading.enumerate())


def test_an_unreadable_frame_is_an_error_naming_the_file_and_frame(data, tmp_path):
    from daisy_steps.xrd.frames import open_source
    from daisy_steps.fileio import FileRef

    raw = tmp_path / "raw"
    shutil.copytree(data / "raw", raw)
    data_file = raw / "scan_00001_data_000002.h5"
    with h5py.File(data_file) as handle:  # where frame 5 (the second file's second frame) lies
        offset, size = handle["/entry/data/data"].id.get_chunk_info(1).byte_offset, 64
    with open(data_file, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * size)
    source = open_source(FileRef.parse(str(raw / "scan_00001_master.h5")), batch=3)
    indices = []
    with pytest.raises(StepError, match=r"scan_00001_master\.h5: cannot read frame \d+"):
        for index, _ in source.frames():
            indices.append(index)
    assert indices and indices == list(range(len(indices))) and len(indices) < N_FRAMES


def test_fabio_and_stack_sources_agree_with_the_master(data, tmp_path):
    import fabio

    with h5py.File(data / "raw/scan_00001_master.h5") as handle:
        frame = handle["/entry/data/data_000001"][0]
    fabio.edfimage.EdfImage(data=frame.astype(np.int32)).write(str(tmp_path / "frame.edf"))
    geometry = {"poni": str(data / "raw/scan_00001.poni")}
    mask = {"user_mask": str(data / "raw/scan_00001_mask.h5:/mask")}
    run_job(job(block_steps(tmp_path / "frame.edf", tmp_path / "edf.h5", geometry=geometry, mask_inputs=mask)))
    run_job(job(block_steps(data / "raw/scan_00001_master.h5", tmp_path / "eiger.h5", stop=1, geometry=geometry)))
    run_job(job(block_steps(data / "raw/stack_00003.h5:/entry/data/data", tmp_path / "stack.h5", stop=1,
                            geometry=geometry, mask_inputs={"user_mask": str(data / "raw/stack_mask.h5:/mask")})))
    with h5py.File(tmp_path / "edf.h5") as a, h5py.File(tmp_path / "eiger.h5") as b, h5py.File(tmp_path / "stack.h5") as c:
        ia, ib, ic = (f["/entry/integrate_1d/intensity"][()] for f in (a, b, c))
    assert np.array_equal(ia, ib) and np.array_equal(ib, ic)


def test_mask_semantics(data, tmp_path):
    from daisy_steps.core import DataStore, JobContext
    from daisy_steps.fileio import OutputSet
    from daisy_steps.params import resolve
    from daisy_steps.xrd.steps import LoadFrames, Mask

    raw = data / "raw"
    with h5py.File(raw / "scan_00001_master.h5") as handle:
        pixel = handle["/entry/instrument/detector/pixel_mask"][()]
    valid = np.ones((541, 517), np.uint8)
    valid[:10] = 0  # a "valid pixels" map: rows 0-9 excluded
    np.save(tmp_path / "valid.npy", valid)

    def mask(source, params, inputs=None):
        store = DataStore()
        ctx = JobContext({"source": str(source), **(inputs or {})}, {}, OutputSet(), 1, "t")
        LoadFrames(resolve("steps/xrd.load_frames", {}), store, ctx).execute()
        Mask(resolve("steps/xrd.mask", params), store, ctx).execute()
        return store.get("mask"), ctx.results["masked_pixels"]

    m, counts = mask(raw / "scan_00001_master.h5", {})
    assert np.array_equal(m, (pixel != 0).astype(np.uint8)) and counts["combined"] == int((pixel != 0).sum())
    m, _ = mask(raw / "scan_00001_master.h5", {"pixel_mask_bits": 1})  # module gaps only
    assert np.array_equal(m, (pixel & 1 != 0).astype(np.uint8))
    m, counts = mask(raw / "scan_00001_master.h5", {"user_mask_semantics": "zero_is_bad"},
                     {"user_mask": str(tmp_path / "valid.npy")})
    assert np.array_equal(m, ((pixel != 0) | (valid == 0)).astype(np.uint8)) and counts["user_mask"] == 10 * 517
    m, counts = mask(raw / "stack_00003.h5", {})  # a plain stack has no pixel mask: nothing in the store
    assert m is None and counts["pixel_mask"] is None


# --------------------------------------------------------------------------------------------- physics

@pytest.mark.parametrize("scan, calibrant", [("scan_00001", "CeO2"), ("scan_00002", "LaB6")])
def test_peaks_on_calibrant_positions(data, tmp_path, scan, calibrant):
    run_job(job(block_steps(data / f"raw/{scan}_master.h5", tmp_path / "b.h5", npt=1000)))
    with h5py.File(tmp_path / "b.h5") as handle:
        radial = handle["/entry/integrate_1d/two_theta"][()]
        pattern = handle["/entry/integrate_1d/intensity"][()].mean(axis=0)
    expected = calibrant_2th(calibrant, radial[-1] - 0.5)
    expected = expected[np.diff(np.r_[0, expected]) > 0.3]  # resolvable peaks only
    assert len(expected) >= 5
    found = centroid_peaks(radial, pattern, expected, 0.2)
    error = np.abs(found - expected)
    print(f"{calibrant}: max |2θ error| = {error.max():.5f}° over {len(expected)} peaks")
    assert error.max() < PEAK_TOL_DEG, dict(zip(expected.round(4), error.round(5)))


def test_q_unit_peaks(data, tmp_path):
    run_job(job(block_steps(data / "raw/scan_00001_master.h5", tmp_path / "q.h5", stop=3, npt=1000, unit="q_nm^-1")))
    with h5py.File(tmp_path / "q.h5") as handle:
        q = handle["/entry/integrate_1d/q"]
        assert q.attrs["units"] == "1/nm"
        radial, pattern = q[()], handle["/entry/integrate_1d/intensity"][()].mean(axis=0)
    tth = calibrant_2th("CeO2", 30)[:4]
    expected = 4 * math.pi / (WAVELENGTH / 10) * np.sin(np.radians(tth) / 2)
    found = centroid_peaks(radial, pattern, expected, 0.15)
    assert np.abs(found - expected).max() < 0.01  # nm^-1 (bins of ~0.05)


@pytest.mark.parametrize("geometry", ["fit2d", "poni"])
def test_equals_direct_pyfai_call(data, tmp_path, geometry):
    master = data / "raw/scan_00001_master.h5"
    geo = ({"fit2d": FIT2D, "wavelength_angstrom": WAVELENGTH} if geometry == "fit2d"
           else {"poni": str(data / "raw/scan_00001.poni")})
    # the original design's ranges: 2θ 10..20°, χ 93..115°
    settings = dict(npt=500, radial_range=[10.0, 20.0], azimuth_range=[93.0, 115.0], method=["full", "csr", "cython"])
    record = run_job(job(block_steps(master, tmp_path / "b.h5", stop=6, geometry=geo, **settings)))
    kw = {"fit2d": FIT2D, "wavelength": WAVELENGTH} if geometry == "fit2d" else {"poni": geo["poni"]}
    radial, intensity, _ = _reference().integrate(str(master), npt=500, radial_range=(10.0, 20.0),
                                              azimuth_range=(93.0, 115.0), stop=6, **kw)
    with h5py.File(tmp_path / "b.h5") as handle:
        assert np.array_equal(handle["/entry/integrate_1d/two_theta"][()], radial)
        assert np.array_equal(handle["/entry/integrate_1d/intensity"][()], intensity.astype(np.float32))
        assert handle["/entry/integrate_1d/intensity"].shape == (6, 500)
    steps = {s["step"]: s for s in record["steps"]}
    assert steps["xrd.integrate"]["results"]["method_used_1d"] == "full,csr,cython"
    assert record["libraries"]["pyFAI"] == pyFAI.version


def test_dark_flat_polarization_error_model_match_pyfai(data, tmp_path):
    master = data / "raw/scan_00001_master.h5"
    rng = np.random.default_rng(1)
    dark = rng.uniform(0, 2, (541, 517)).astype(np.float32)
    flat = rng.uniform(0.9, 1.1, (541, 517)).astype(np.float32)
    with h5py.File(tmp_path / "cal.h5", "w") as handle:
        handle["/dark"] = np.stack([dark, dark])  # a stack of darks: averaged
        handle["/flat"] = flat
    steps = block_steps(master, tmp_path / "out/b.h5", stop=2, npt=400, polarization_factor=0.99,
                        error_model="azimuthal", integrate_2d=True, npt_azim=18)
    steps[2]["inputs"] = {"dark": str(tmp_path / "cal.h5:/dark"), "flat": str(tmp_path / "cal.h5:/flat")}
    run_job(job(steps))
    reference = _reference()
    ai = reference.make_integrator((541, 517), fit2d=FIT2D, wavelength=WAVELENGTH)
    mask = reference.pixel_mask(str(master))
    frame = next(reference.read_frames(str(master)))
    kw = dict(unit="2th_deg", method=("full", "csr", "cython"), mask=mask, polarization_factor=0.99,
              dark=dark, flat=flat, error_model="azimuthal")
    r1 = ai.integrate1d(frame, 400, **kw)
    r2 = ai.integrate2d(frame, 400, 18, **{**kw, "method": ("bbox", "csr", "cython")})  # method_2d default
    with h5py.File(tmp_path / "out/b.h5") as handle:
        g1, g2 = handle["/entry/integrate_1d"], handle["/entry/integrate_2d"]
        np.testing.assert_allclose(g1["intensity"][0], r1.intensity, rtol=1e-6)
        np.testing.assert_allclose(g1["intensity_errors"][0], r1.sigma, rtol=1e-6)
        np.testing.assert_allclose(g2["intensity"][0], r2.intensity, rtol=1e-6)
        assert g2["intensity_errors"].shape == (2, 18, 400)
        settings = json.loads(handle["/entry/process/parameters/integration"][()])
    assert settings["polarization_factor"] == 0.99 and settings["error_model"] == "azimuthal"
    assert settings["dark"].endswith("cal.h5:/dark")


# --------------------------------------------------------------------------------------------- outputs

def gather(blocks, out, **outputs):
    inputs = {f"block_{i}": str(b) for i, b in enumerate(blocks)}
    outs = {"result": str(out / "scan_00001.h5"), **{k: str(v) for k, v in outputs.items()}}
    return run_job(job([{"step": "xrd.gather", "params": {}, "inputs": inputs, "outputs": outs}]))


def test_outputs_carry_axes_units_and_geometry(data, single_block, tmp_path):
    block, record = single_block
    gather([block], tmp_path, xy=tmp_path / "xy", pattern_png=tmp_path / "pattern.png", cake_png=tmp_path / "cake.png")
    with h5py.File(tmp_path / "scan_00001.h5") as handle:
        entry = handle["/entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["default"] == "integrate_1d"
        g1 = entry["integrate_1d"]
        assert g1.attrs["NX_class"] == "NXdata" and g1.attrs["signal"] == "intensity"
        assert list(g1.attrs["axes"]) == ["frame", "two_theta"]
        assert g1["two_theta"].attrs["units"] == "deg" and g1["intensity"].attrs["units"] == "counts"
        assert g1["intensity"].shape == (N_FRAMES, 1000) and list(g1["frame"][()]) == list(range(N_FRAMES))
        g2 = entry["integrate_2d"]
        assert list(g2.attrs["axes"]) == ["frame", "chi", "two_theta"]
        assert g2["chi"].attrs["units"] == "deg" and g2["intensity"].shape == (N_FRAMES, 36, 1000)
        params = entry["process/parameters"]
        assert entry["process"].attrs["NX_class"] == "NXprocess"
        assert params["wavelength"].attrs["units"] == "angstrom"
        assert params["wavelength"][()] == pytest.approx(WAVELENGTH)
        assert params["fit2d/directDist"].attrs["units"] == "mm" and params["fit2d/pixelX"].attrs["units"] == "um"
        assert params["fit2d/centerX"][()] == pytest.approx(FIT2D["centerX"])
        assert "Distance:" in params["poni"].asstr()[()] and "Wavelength:" in params["poni"].asstr()[()]
        assert entry["process/mask"].shape == (541, 517)
    xy = sorted((tmp_path / "xy").iterdir())
    assert [p.name for p in xy] == [f"scan_00001_{i:05d}.xy" for i in range(N_FRAMES)]
    table = np.loadtxt(xy[3])
    with h5py.File(tmp_path / "scan_00001.h5") as handle:
        np.testing.assert_allclose(table[:, 1], handle["/entry/integrate_1d/intensity"][3], rtol=1e-6)
    assert "# 2th_deg I" in xy[3].read_text()
    for png in ("pattern.png", "cake.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_blocks_gathered_in_order_equal_single_block(data, single_block, tmp_path):
    master = data / "raw/scan_00001_master.h5"
    blocks = []
    for start, stop in ((0, 5), (5, 9), (9, N_FRAMES)):
        blocks.append(tmp_path / f"blocks/b{start:03d}.h5")
        run_job(job(block_steps(master, blocks[-1], start=start, stop=stop, integrate_2d=True, npt_azim=36, npt=1000)))
    gather([blocks[2], blocks[0], blocks[1]], tmp_path / "split")  # slot order does not matter
    gather([single_block[0]], tmp_path / "one")
    with h5py.File(tmp_path / "split/scan_00001.h5") as a, h5py.File(tmp_path / "one/scan_00001.h5") as b:
        for path in ("integrate_1d/intensity", "integrate_1d/frame", "integrate_1d/two_theta",
                     "integrate_2d/intensity", "integrate_2d/chi", "process/mask"):
            assert np.array_equal(a[f"/entry/{path}"][()], b[f"/entry/{path}"][()]), path
        sources = json.loads(a["/entry/input/source"][()])
        assert [(s["start"], s["stop"]) for s in sources] == [(0, 5), (5, 9), (9, N_FRAMES)]
    with pytest.raises(StepError, match=r"frames 5:9 are missing between blocks .*b000.h5 and .*b009.h5"):
        gather([blocks[0], blocks[2]], tmp_path / "gap")
    with pytest.raises(StepError, match="overlaps"):
        gather([blocks[0], single_block[0]], tmp_path / "overlap")
    assert files_in(tmp_path / "gap") == [] and files_in(tmp_path / "overlap") == []


# --------------------------------------------------------------------------------------------- failures

def _poni_without_wavelength(data, tmp_path):
    text = (data / "raw/scan_00001.poni").read_text()
    path = tmp_path / "nowl.poni"
    path.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("Wavelength")))
    return path


@pytest.mark.parametrize("case", ["dataset", "mask_shape", "fit2d_wavelength", "poni_wavelength", "data_file"])
def test_failures_name_the_problem_and_leave_no_output(data, tmp_path, case):
    out = tmp_path / "out"
    source, mask_inputs, geometry, error, words = data / "raw/scan_00001_master.h5", None, None, StepError, []
    if case == "dataset":
        source = f"{data / 'raw/stack_00003.h5'}:/entry/data/nope"
        words = ["stack_00003.h5", "dataset /entry/data/nope does not exist"]
    elif case == "mask_shape":
        mask_inputs = {"user_mask": str(data / "raw/mask_binned8.h5:/mask")}
        words = ["mask_binned8.h5:/mask", "(270, 258)", "(541, 517)"]
    elif case == "fit2d_wavelength":
        geometry, error = {"fit2d": FIT2D}, ParamError
        words = ["geometry.wavelength_angstrom", "required"]
    elif case == "poni_wavelength":
        geometry = {"poni": str(_poni_without_wavelength(data, tmp_path))}
        words = ["nowl.poni", "no Wavelength", "geometry.wavelength_angstrom"]
    elif case == "data_file":  # a master whose second data file is missing
        partial = tmp_path / "partial"
        partial.mkdir()
        for name in ("scan_00001_master.h5", "scan_00001_data_000001.h5"):
            shutil.copy(data / "raw" / name, partial / name)
        source = partial / "scan_00001_master.h5"
        words = ["/entry/data/data_000002", "scan_00001_data_000002.h5:/entry/data/data", "cannot be opened"]
    steps = block_steps(source, out / "block.h5", geometry=geometry, mask_inputs=mask_inputs)
    steps[1]["outputs"] = {"mask": str(out / "mask.h5")}  # a second output that must not survive either
    with pytest.raises(error) as err:
        run_job(job(steps, record=out / "rec.json"))
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    # no output survives; only the failed job's record (and its copy outside the rule's outputs)
    assert files_in(out) == ["failed", "failed/rec.json", "rec.json"]
    assert json.loads((out / "rec.json").read_text())["status"] == "failed"


def test_geometry_schema_errors():
    from daisy_steps.params import resolve

    with pytest.raises(ParamError, match=r"geometry.fit2d' is required"):
        resolve("steps/xrd.integrate", {"geometry": {}})
    with pytest.raises(ParamError, match=r"geometry.fit2d.pixelX' is required"):
        resolve("steps/xrd.integrate", {"geometry": {"fit2d": {k: v for k, v in FIT2D.items() if k != "pixelX"},
                                                     "wavelength_angstrom": 1.0}})
    with pytest.raises(ParamError, match=r"method\[2\]"):
        resolve("steps/xrd.integrate", {"geometry": {"poni": "x.poni"}, "method": ["full", "csr", "cuda"]})
    full = resolve("steps/xrd.integrate", {"geometry": {"poni": "x.poni"}})
    assert full["method"] == ["full", "csr", "cython"] and full["unit"] == "2th_deg" and full["npt"] == 1000
    with pytest.raises(StepError, match="either 'poni' or 'fit2d', not both"):
        from daisy_steps.xrd.geometry import build_integrator
        build_integrator({"poni": "x.poni", "fit2d": FIT2D, "wavelength_angstrom": 1.0}, (541, 517))


# --------------------------------------------------------------------------------------------- in the image

def run_in_pyfai_image(steps, name, work: Path, inputs=()) -> dict:
    """Run a job document in the pyfai image the production way (``daisy.workflow.run_job_in_image``:
    digest verified, step code at /opt/daisy, ``work`` read-write, ``inputs`` read-only); its record."""
    from daisy.workflow import run_job_in_image

    from tests.conftest import require_image

    require_image("pyfai")
    document = {**job(steps, name, record=work / f"{name}.rec.json"), "image": {"name": "pyfai"}}
    run_job_in_image("pyfai", document, work / f"{name}.job.json", work, inputs=inputs)
    return json.loads((work / f"{name}.rec.json").read_text())


def pinned_version(package: str, image: str = "pyfai") -> str:
    """The version of ``package`` pinned for ``image`` in envs/<image>.pypi.txt."""
    for line in (REPO / "envs" / f"{image}.pypi.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.lower() == package.lower():
            return version.strip()
    raise AssertionError(f"{package} is not pinned in envs/{image}.pypi.txt")


@pytest.mark.apptainer
def test_block_job_in_pyfai_image(data, single_block, tmp_path):
    from packaging.version import Version

    work = tmp_path / "work"
    master = data / "raw/scan_00001_master.h5"
    steps = block_steps(master, work / "blocks/b0.h5", integrate_2d=True, npt_azim=36, npt=1000,
                        geometry={"fit2d": FIT2D, "wavelength_angstrom": WAVELENGTH})
    record = run_in_pyfai_image(steps, "block", work, inputs=[master])
    gather_step = {"step": "xrd.gather", "inputs": {"block_0": str(work / "blocks/b0.h5")},
                   "outputs": {"result": str(work / "out/scan_00001.h5"), "pattern_png": str(work / "out/pattern.png"),
                               "cake_png": str(work / "out/cake.png")}}
    run_in_pyfai_image([gather_step], "gather", work)
    assert Version(record["libraries"]["pyFAI"]) == Version(pinned_version("pyFAI"))
    assert record["image"]["name"] == "pyfai"
    assert record["steps"][2]["results"]["method_used_1d"] == "full,csr,cython"
    with h5py.File(work / "out/scan_00001.h5") as image, h5py.File(single_block[0]) as host:
        a, b = image["/entry/integrate_1d/intensity"][()], host["/entry/integrate_1d/intensity"][()]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(image["/entry/integrate_2d/intensity"][()],
                                   host["/entry/integrate_2d/intensity"][()], rtol=1e-5, atol=1e-4)
        radial = image["/entry/integrate_1d/two_theta"][()]
    expected = calibrant_2th("CeO2", radial[-1] - 0.5)
    expected = expected[np.diff(np.r_[0, expected]) > 0.3]
    assert np.abs(centroid_peaks(radial, a.mean(axis=0), expected, 0.2) - expected).max() < PEAK_TOL_DEG
    assert (work / "out/cake.png").stat().st_size > 1000


@pytest.mark.apptainer
def test_failure_in_image_names_dataset_and_leaves_no_output(data, tmp_path):
    work = tmp_path / "work"
    stack = data / "raw/stack_00003.h5"
    steps = block_steps(f"{stack}:/entry/data/nope", work / "out/b0.h5")
    with pytest.raises(StepError, match="stack_00003.h5: dataset /entry/data/nope does not exist"):
        run_in_pyfai_image(steps, "bad", work, inputs=[stack])
    assert files_in(work / "out") == []
    assert json.loads((work / "bad.rec.json").read_text())["status"] == "failed"  # the failure's record
