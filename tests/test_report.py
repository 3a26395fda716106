"""`daisy report`: the CT and XRD demo runs (made and opened through the Python API) give one
self-contained HTML file each, which headless Chromium renders: the screenshot is not blank and
the page holds the key texts (centre, peaks, image digests, timings, parameters)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from .conftest import REPO, require_image

LIMIT = 400 * 1024   # bytes: previews are downsampled, data is linked


def browser() -> str:
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if not found and os.geteuid() == 0:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "install-browser.sh")], capture_output=True, text=True)
        found = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
    if not found:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no headless Chromium (scripts/install-browser.sh)")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_image("tomopy")
    require_image("base")
    require_image("pyfai")
    import daisy
    from daisy.demo import make_xrd_data
    from daisy.workflow import run_job_in_image

    work = tmp_path_factory.mktemp("report")
    raw = work / "data" / "ct-nxtomo.h5"
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": [
        {"step": "sample.ct_phantom", "outputs": {"raw": str(raw)}, "params": {"size": 64, "n_angles": 120, "seed": 3}}]},
        work / "data" / "jobs" / "sample.json", work / "data")
    master, poni = make_xrd_data(work / "data", "small")
    ct = daisy.pipeline("ct", input={"file": str(raw)}, outdir=str(work / "ct"), stripe={"method": "fw"},
                        slabs={"count": 2}).run(progress=False)
    xrd = daisy.pipeline("xrd", input={"file": str(master)}, outdir=str(work / "xrd"), blocks={"count": 2},
                         integrate={"geometry": {"poni": str(poni)}, "npt": 1500}).run(progress=False)
    return {"ct": ct, "xrd": xrd, "raw": raw}


def _cli_report(run_dir, out=None) -> str:
    from daisy.report.cli import register_cli

    parser = argparse.ArgumentParser(prog="daisy")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(run_dir), *(["-o", str(out)] if out else [])])
    buffer = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(buffer):
        assert args.func(args) == 0
    return buffer.getvalue()


def _render(html_path, shot) -> tuple[str, np.ndarray]:
    exe = browser()
    url = html_path.resolve().as_uri()
    common = [exe, "--no-sandbox", "--headless", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    return dom.stdout, pixels


def _self_contained(text: str) -> None:
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I), "fetches something from elsewhere"
    assert "@import" not in text and "url(http" not in text


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_ct_report_renders_with_centre_previews_and_provenance(runs, tmp_path):
    result = runs["ct"]
    printed = _cli_report(result.run_dir)
    out = result.run_dir / "report.html"
    assert "self-contained" in printed and out.is_file()
    text = out.read_text()
    size = out.stat().st_size
    assert size < LIMIT, size
    _self_contained(text)
    assert text.count("data:image/png;base64,") >= 3          # xy, xz, yz previews embedded
    assert 'href="ct/volume.h5"' in text                      # the data linked, not embedded
    dom, pixels = _render(out, tmp_path / "ct.png")
    prov = result.provenance
    centre = result.center
    assert centre is not None and f"{centre:.3f}" in dom
    for needle in ("Rotation centre", "Previews", "Parameters that differ from the defaults", "stripe.method",
                   "Timings per job", "ct_center", "ct_volume", "Provenance", "tomopy", "completed"):
        assert needle in dom, needle
    for name, info in prov["images"].items():
        assert info["image_sha256"] in dom, name
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 20                                  # not a blank page
    assert (pixels.mean(axis=2) < 60).mean() > 0.02           # the dark header and the slice previews
    import h5py

    with h5py.File(runs["raw"]) as handle:
        truth = float(handle["/truth"].attrs["center"])
    assert abs(centre - truth) <= 1.0
    print(f"CT report: {size} bytes")


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_xrd_report_renders_with_patterns_and_peaks(runs, tmp_path):
    result = runs["xrd"]
    out = tmp_path / "elsewhere" / "xrd-report.html"         # links stay right from another folder
    _cli_report(result.run_dir, out)
    text = out.read_text()
    size = out.stat().st_size
    assert size < LIMIT, size
    _self_contained(text)
    assert text.count("<svg") >= 2                            # mean pattern and waterfall, inline
    links = re.findall(r'href="([^"]+_integrated\.h5)"', text)
    assert links and (out.parent / links[0]).resolve() == result.patterns.path.resolve()
    dom, pixels = _render(out, tmp_path / "xrd.png")
    peaks = result.patterns.peaks()
    assert len(peaks) >= 4
    for needle in ("Peaks of the mean pattern", "2θ (deg)", "waterfall", "xrd_block_0000", "xrd_gather", "pyfai",
                   "integrate.geometry.poni", f"{peaks[0]:.4f}"):
        assert needle in dom, needle
    assert pixels.std() > 20
    print(f"XRD report: {size} bytes")


@pytest.mark.apptainer
@pytest.mark.snakemake
def test_result_verify_detects_a_changed_output(runs, tmp_path):
    import daisy

    source = runs["xrd"].run_dir
    copy = tmp_path / "xrd-copy"
    shutil.copytree(source, copy)
    prov = json.loads((copy / "provenance.json").read_text())
    # the provenance names outputs as the run did: point them at the copy
    prov["outputs"] = {p.replace(str(source), str(copy)): info for p, info in prov["outputs"].items()}
    (copy / "provenance.json").write_text(json.dumps(prov))
    result = daisy.open_run(copy)
    assert result.verify().ok
    target = next(p for p in prov["outputs"] if p.endswith("_integrated.h5"))
    with open(target, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    check = result.verify()
    assert not check.ok and check.changed == [target]


@pytest.mark.parametrize("frames", [1, 5])
def test_views_and_plots_need_no_image(frames):
    """Widgets carry a static image beside the widget; SVG plots keep peaks; the API merges
    overrides (no image, no Apptainer)."""
    import base64

    import daisy
    from daisy.report.build import find_peaks
    from daisy.report.svg import line_plot, reduce

    volume = np.random.default_rng(0).random((6, 8, 10)).astype(np.float32)
    bundle = daisy.slice_viewer(volume)._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"])[:4] == b"\x89PNG"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    x = np.linspace(5, 35, 4000)
    y = np.exp(-((x - 13.4) / 0.05) ** 2) * 100 + np.exp(-((x - 22.0) / 0.05) ** 2) * 50 + 1
    intensity = np.tile(y, (frames, 1))
    peaks = [p for p, _ in find_peaks(x, y, 4)]
    assert len(peaks) == 2 and abs(peaks[0] - 13.4) < 0.02 and abs(peaks[1] - 22.0) < 0.02
    rx, ry = reduce(x, y, 400)
    assert len(rx) <= 400 and ry.max() == y.max()              # the peak survives the reduction
    svg = daisy.pattern_plot(x, intensity, peaks=peaks)._repr_mimebundle_()["image/svg+xml"]
    assert svg.startswith("<svg") and "13.4" in svg
    assert daisy.waterfall(x, intensity).svg().count("<polyline") == frames
    assert "<polyline" in line_plot([(x, y, "a")])
    p = daisy.pipeline("ct", input={"file": "x.h5"}, center={"method": "vo"}).set({"center.method": "manual"},
                                                                                  slabs={"count": 2})
    assert p.raw["center"] == {"method": "manual"} and p.raw["slabs"] == {"count": 2}
    assert p.raw["pipeline"] == "ct"
