"""Online mode: ``daisy simulate`` + ``daisy watch`` together at small sizes.

Without images: the follower on growing, pre-allocated and truncated HDF5 files, and the live
page's path checks. With images (mark apptainer): an Eiger scan written at 4 Hz and watched, the
watcher killed mid-scan and restarted (nothing lost, nothing twice), online patterns bit-identical
to the offline pipeline's (``--then-run``), the watch run's provenance, the live page rendered in
headless Chromium; a CT scan watched, its quick-look centre within 1 px of the offline one.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from .conftest import REPO, require_image

PY = sys.executable


# -- without images -----------------------------------------------------------------------------

def _swmr_stack(path: Path, frames: int, shape=(32, 32)) -> list:
    with h5py.File(path, "w", libver=("v110", "v110")) as handle:
        d = handle.create_dataset("/entry/data/data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape),
                                  dtype="u2", compression="gzip")
        handle.swmr_mode = True
        for k in range(frames):
            d.resize(k + 1, axis=0)
            d[k] = np.random.default_rng(k).integers(0, 60000, shape)
            handle.flush()
        return [d.id.get_chunk_info_by_coord((k, 0, 0)) for k in range(frames)]


def test_follower_growing_preallocated_truncated(tmp_path):
    from daisy_steps.online.follow import NotYet, StackFollower, open_follower

    with pytest.raises(NotYet):
        open_follower(tmp_path / "missing.h5")
    # pre-allocated: frame 2's chunk never written -> not readable, later frames are
    pre = tmp_path / "pre.h5"
    with h5py.File(pre, "w") as handle:
        d = handle.create_dataset("/entry/data/data", shape=(4, 8, 8), chunks=(1, 8, 8), dtype="u2")
        d[0], d[1], d[3] = 1, 2, 4
    follower = StackFollower(pre)
    out = np.empty((8, 8), "u2")
    assert [follower.read(k, out) for k in range(4)] == [True, True, False, True]
    assert follower.read(4, out) is False and follower.known() == 4
    follower.close()
    # truncated: the last frame's chunk lies beyond the end of the file
    cut = tmp_path / "cut.h5"
    info = _swmr_stack(cut, 4)
    os.truncate(cut, info[-1].byte_offset + info[-1].size - 5)
    follower = open_follower(cut)
    assert [follower.read(k, np.empty((32, 32), "u2")) for k in range(4)] == [True, True, True, False]
    assert "beyond the end of the file" in follower.problem
    follower.close()


def _get(port: int, raw_path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", raw_path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    return response.status, response.read()


def test_live_page_serves_nothing_outside_the_watch_folder(tmp_path):
    from daisy.online.server import LiveServer

    folder = tmp_path / "results" / "online"
    (folder / "quicklook").mkdir(parents=True)
    (folder / "live.json").write_text('{"status": "running"}')
    (folder / "quicklook" / "xy.png").write_bytes(b"png")
    (folder / ".watch.lock").write_text("lock")
    (tmp_path / "results" / "secret.txt").write_text("SECRET")
    (tmp_path / "secret.txt").write_text("SECRET")
    (folder / "escape").symlink_to(tmp_path / "secret.txt")
    server = LiveServer(folder, "xrd", port=0)
    port = server.httpd.server_address[1]
    server.start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        status, body = _get(port, "/")
        assert status == 200 and b"DAISY watch XRD" in body and b"http" not in body.split(b"<script>")[0].lower()
        assert _get(port, "/live.json") == (200, b'{"status": "running"}')
        assert _get(port, "/quicklook/xy.png?t=1") == (200, b"png")
        for bad in ("/../secret.txt", "/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/%2e%2e/secret.txt",
                    "/..%2fsecret.txt", "/..%2f..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/%252e%252e/secret.txt",
                    "/quicklook/../../secret.txt", "/..\\secret.txt", "/%2e%2e%5csecret.txt", "/escape",
                    "/.watch.lock", "/%2ewatch.lock", "//etc/passwd", "/%00live.json", "/live.json%00"):
            status, body = _get(port, bad)
            assert status == 404 and b"SECRET" not in body, bad
    finally:
        server.stop()
    with pytest.raises(OSError):
        _get(port, "/live.json")


# -- with images ---------------------------------------------------------------------------------

def _daisy_online(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "daisy.online.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _live(folder: Path) -> dict:
    try:
        return json.loads((folder / "live.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def xrd_watch(tmp_path_factory):
    """A 24-frame Eiger scan (3 data files, binning 8) written at 4 Hz; the watcher is killed
    (SIGKILL) after a few frames, started again, and runs the offline pipeline at the end."""
    require_image("pyfai")
    work = tmp_path_factory.mktemp("online-xrd")
    from daisy.online.simulate import generate_xrd

    generate_xrd(work / "data" / ".daisy-simulate", 6, 8, seed=1)   # frames first (in the image)
    sim = _daisy_online("simulate", "xrd", "--rate", "4", "--out", "data", "--frames", "24", "--unique", "6",
                        "--binning", "8", "--frames-per-file", "10", "--outdir", "results", "--seed", "1", cwd=work)
    config = work / "data" / "scan_00001.yaml"
    _wait_for(config.exists, 120, "the simulated scan's config")
    folder = work / "results" / "online"
    first = _daisy_online("watch", "xrd", "--config", str(config), "--port", "0", "--idle-timeout", "30", cwd=work)
    _wait_for(lambda: _live(folder).get("frames_done", 0) >= 5, 120, "5 frames integrated")
    first.send_signal(signal.SIGKILL)      # the host process dies; its watcher in the image stops
    first.wait()
    killed_at = _live(folder).get("frames_done", 0)
    second = _daisy_online("watch", "xrd", "--config", str(config), "--port", "0", "--idle-timeout", "30",
                           "--then-run", cwd=work)
    out, _ = second.communicate(timeout=600)
    sim.communicate(timeout=120)
    assert second.returncode == 0, out
    return {"work": work, "folder": folder, "out": out, "killed_at": killed_at}




@pytest.mark.apptainer
def test_xrd_online_restart_and_bit_identical_to_offline(xrd_watch):
    work, folder = xrd_watch["work"], xrd_watch["folder"]
    assert 5 <= xrd_watch["killed_at"] < 24, xrd_watch["killed_at"]
    online = folder / "scan_00001_integrated.h5"
    offline = work / "results" / "xrd" / "scan_00001_integrated.h5"
    with h5py.File(online, "r") as a, h5py.File(offline, "r") as b:
        frames = a["/entry/integrate_1d/frame"][()]
        assert frames.tolist() == list(range(24))          # nothing lost, nothing twice
        for name in ("frame", "intensity", "two_theta"):
            x, y = a[f"/entry/integrate_1d/{name}"][()], b[f"/entry/integrate_1d/{name}"][()]
            assert x.dtype == y.dtype and np.array_equal(x, y), name   # bit for bit
        assert a["/entry/process/parameters/integration"][()] == b["/entry/process/parameters/integration"][()]
        assert a["/entry/online"].attrs["status"] == "finished"
        assert "process_03_xrd.integrate" in a["/entry"]
        assert np.isfinite(a["/entry/online/written_time"][()]).all()
    lines = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
    assert sorted(line["frame"] for line in lines) == list(range(24))
    live = json.loads((folder / "live.json").read_text())
    assert live["status"] == "finished" and live["complete"] and live["frames_done"] == 24
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["status"] == "completed" and list(prov["jobs"]) == ["xrd_watch"]
    assert prov["images"]["pyfai"]["image_sha256"]
    assert [s["step"] for s in prov["jobs"]["xrd_watch"]["steps"]] == ["xrd.load_frames", "xrd.mask", "xrd.integrate"]
    assert str(online) in prov["outputs"] and prov["outputs"][str(online)]["sha256"]
    assert (folder / "ro-crate-metadata.json").is_file()


def _browser() -> str | None:
    script = REPO / "scripts" / "install-browser.sh"
    if not script.is_file():
        return None
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    path = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
    return path if path and Path(path).exists() else None


@pytest.mark.apptainer
def test_live_page_renders_in_headless_chromium(xrd_watch, tmp_path):
    from daisy.online.server import LiveServer

    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium (scripts/install-browser.sh)")
    server = LiveServer(xrd_watch["folder"], "xrd", port=0)
    url = server.start()
    try:
        shot = tmp_path / "page.png"
        args = [browser, "--no-sandbox", "--headless", "--disable-gpu", "--virtual-time-budget=4000"]
        subprocess.run([*args, f"--screenshot={shot}", "--window-size=1200,900", url], capture_output=True, timeout=120)
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    finally:
        server.stop()
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 900)
    from PIL import Image  # noqa: PLC0415  (test dependency of the screenshot check only)

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10                                 # not blank
    assert "frames done" in dom and ">finished<" in dom and "24 / 24" in dom
    assert "scan_00001_integrated.h5" in dom


@pytest.mark.apptainer
def test_ct_quicklook_centre_within_one_pixel_of_offline(tmp_path):
    require_image("tomopy")
    work = tmp_path
    sim = _daisy_online("simulate", "ct", "--rate", "25", "--out", "data", "--size", "64", "--angles", "128",
                        "--outdir", "results", cwd=work)
    config = work / "data" / "ct_00001.yaml"
    _wait_for(config.exists, 300, "the simulated CT scan's config")
    watch = _daisy_online("watch", "ct", "--config", str(config), "--port", "0", "--idle-timeout", "30",
                          "--then-run", cwd=work)
    out, _ = watch.communicate(timeout=600)
    sim.communicate(timeout=60)
    assert watch.returncode == 0, out
    quick = json.loads((work / "results" / "online" / "quicklook" / "quicklook.json").read_text())
    offline = json.loads((work / "results" / "ct" / "center.json").read_text())["center"]
    assert abs(quick["center"] - offline) <= 1.0
    # the first quick-look's centre (phase correlation of the mirror projections: a 180-degree
    # scan has its 180 degrees only at the last projection) too; the offline one redraws it if needed
    assert abs(quick["first"]["center"] - offline) <= 1.0 and quick["final"]["center"] == quick["center"]
    assert quick["projections"] == 128 and quick["seconds_after_last"] < 30
    for name in ("xy", "xz", "yz"):
        assert (work / "results" / "online" / "quicklook" / f"{name}.png").stat().st_size > 200
    prov = json.loads((work / "results" / "online" / "provenance.json").read_text())
    assert prov["status"] == "completed" and list(prov["jobs"]) == ["ct_watch"]
