"""The CT watcher: keep the few sinogram rows needed, find the centre at 180°, quick-look at the end.

The raw file (Data Exchange or DAISY layout: darks, flats and angles written first, projections
appended frame by frame) is followed with ``follow.GrowingDataset``. Of each projection only two
row sets are kept: the rows of the offline centre job (``center.n_rows`` around ``center.row``,
as daisy/pipelines/ct.py chooses them) and ``quicklook_rows`` rows spread over the detector.

- As soon as the projections cover 180° (angles from the file, or ``ct.angles``' range with the
  expected count), the offline centre chain runs on the centre rows, in memory, with the same
  step classes and parameters: ``ct.normalize -> ct.angles -> ct.minus_log -> ct.stripe ->
  ct.find_center``: a first centre for the live page.
- After the last projection: the same chain on every projection (exactly the offline centre
  job's input, hence its centre), then ``ct.normalize -> ... -> ct.recon`` with that centre on the
  kept rows: the quick-look ``quicklook/{xy,xz,yz}.png`` (xy: the middle detector row; xz and yz
  through the middle of the volume, one line per kept row, stretched to the detector's rows),
  ``quicklook/quicklook.h5`` (the reconstructed rows) and ``quicklook/quicklook.json`` (the
  centre used, its estimates, the delay after the last projection).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np

from ..core import DataStore
from ..errors import StepError
from ..png import to_uint8, write_png
from ..ct.layouts import _read_angles, resolve_paths
from ..ct.prep import range_angles
from .follow import GrowingDataset, NotYet, open_h5, wait_for
from .live import LiveState, now_iso
from .runner import EXIT_STOPPED, Ending, Watch, input_path

PREPARE = ["ct.normalize", "ct.angles", "ct.minus_log", "ct.stripe"]


class CTFollower:
    """The raw file's darks, flats and angles (complete before the projections) and its growing
    projection stack."""

    def __init__(self, path, load_params: dict, expected: int | None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise NotYet(f"{path} does not exist yet")
        try:
            handle = open_h5(self.path)
        except Exception as exc:  # noqa: BLE001  OSError, RuntimeError, ...: a file mid-write
            raise NotYet(f"{path} is not a readable HDF5 file yet ({type(exc).__name__}: {exc})") from None
        with handle:
            try:
                paths = resolve_paths(handle, load_params)
            except StepError as exc:
                raise NotYet(str(exc)) from None
            if paths.layout == "nxtomo":
                raise StepError(f"{path}: daisy watch ct follows the Data Exchange and DAISY layouts (darks and "
                                f"flats in their own datasets, written before the projections), not NXtomo")
            stacks = {}
            for what, dpath in (("flat", paths.flat), ("dark", paths.dark)):
                dset = handle.get(dpath)
                if not isinstance(dset, h5py.Dataset) or dset.shape[0] == 0:
                    raise NotYet(f"{path}: no {what} fields at {dpath} yet")
                stacks[what] = np.asarray(dset[()])[None] if dset.ndim == 2 else np.asarray(dset[()])
            self.theta = None
            if paths.angles in handle or paths.angles_required:
                self.theta, _ = _read_angles(handle, paths.angles, str(path), load_params["angle_units"])
        self.paths = paths
        self.flat, self.dark = stacks["flat"], stacks["dark"]
        self.data = GrowingDataset(self.path, paths.data)
        self.data.refresh()
        if self.data._dset is None:
            raise NotYet(self.data.problem or f"{path}:{paths.data} not there yet")
        self.rows, self.cols = (int(s) for s in self.data.dset.shape[1:])
        self.dtype = self.data.dset.dtype
        self.expected = expected if expected is not None else (None if self.theta is None else int(self.theta.size))
        self.files = [str(self.path)]

    def describe(self) -> dict:
        return {"kind": f"online/{self.paths.layout}", "source": str(self.path), "data": self.paths.data,
                "flat": self.paths.flat, "dark": self.paths.dark, "angles": self.paths.angles,
                "shape": [self.rows, self.cols], "expected": self.expected}


def center_block(find_params: dict, rows: int) -> tuple[int, int]:
    """The rows of the offline centre job (daisy/pipelines/ct.py ``center_rows``)."""
    row = rows // 2 if find_params["row"] is None else find_params["row"]
    start = row - find_params["n_rows"] // 2
    if start < 0 or start + find_params["n_rows"] > rows:
        raise StepError(f"center.row: rows {start}..{start + find_params['n_rows'] - 1} are outside the detector's {rows} rows")
    return start, start + find_params["n_rows"]


def main(job_path, quiet: bool = False) -> int:
    watch = Watch(job_path, "ct")
    log = watch.log
    watch.install_stop()
    watch.lock()
    online = watch.online
    _, _, load_params = watch.entry("ct.load")
    _, _, angle_params = watch.entry("ct.angles")
    _, _, find_params = watch.entry("ct.find_center")
    _, _, recon_params = watch.entry("ct.recon")
    raw = input_path(online["source"])
    state = LiveState(watch.folder, "ct", online.get("written_log"), online.get("expected"), log)
    state.set(scan=online.get("scan"), source=raw, image=watch.job.get("image"), center=None)
    state.write(force=True)
    quick = watch.folder / "quicklook"
    live_dir = watch.folder / "live"
    quick.mkdir(exist_ok=True)
    live_dir.mkdir(exist_ok=True)

    def waiting(message):
        state.set(status="waiting", message=message)
        state.write()

    try:
        follower = wait_for(lambda: CTFollower(raw, load_params, online.get("expected")), stop=watch.stop.is_set,
                            poll=0.1, timeout=online.get("idle_timeout"), on_wait=waiting)
    except NotYet as exc:
        state.set(status="stopped" if watch.stop.is_set() else "failed", message=f"the scan never appeared: {exc}")
        state.write(force=True)
        return EXIT_STOPPED if watch.stop.is_set() else 2
    rows, cols = follower.rows, follower.cols
    c0, c1 = center_block(find_params, rows)
    n_quick = max(2, min(rows, int(online["quicklook_rows"])))
    sampled = sorted(set(np.linspace(0, rows - 1, n_quick).round().astype(int).tolist()) | {rows // 2})
    expected = follower.expected
    state.set(frames_expected=expected, detector=[rows, cols], center_rows=[c0, c1], quicklook_rows=len(sampled),
              files=follower.files, source_kind=follower.paths.layout)
    ending = Ending(online, expected)
    frame = np.empty((rows, cols), follower.dtype)
    keep_c: list[np.ndarray] = []
    keep_q: list[np.ndarray] = []
    flat_avg = follower.flat[:, (c0 + c1) // 2].astype(np.float32).mean(axis=0)
    dark_avg = follower.dark[:, (c0 + c1) // 2].astype(np.float32).mean(axis=0)
    estimates: list[dict] = []
    next_index = 0
    end_reason = None
    last_read = None
    state.set(status="running", message="following the projections")
    state.write(force=True)

    def theta_for(count: int) -> np.ndarray | None:
        if follower.theta is not None:
            return follower.theta[:count]
        if expected is not None:
            return range_angles(angle_params, expected)[:count]
        return None

    def find_center(count: int, final: bool) -> float:
        store = DataStore(proj=np.stack(keep_c[:count]), flat=follower.flat[:, c0:c1].copy(),
                          dark=follower.dark[:, c0:c1].copy(), rows=(c0, c1), detector_rows=rows, raw_file=raw)
        params = None
        if final:
            if follower.theta is not None:
                store["theta_file"] = follower.theta[:count]
        else:  # part of the scan: its angles, explicitly
            store["theta_file"] = theta_for(count)
            params = {"ct.angles": {**angle_params, "source": "file"}}
        watch.run_chain([*PREPARE, "ct.find_center"], store, params, record=final)
        return float(store["center"])

    try:
        while True:
            if watch.stop.is_set():
                end_reason = "stopped"
                break
            if not ending.count_reached(next_index) and follower.data.read(next_index, frame):
                keep_c.append(frame[c0:c1].copy())
                keep_q.append(frame[sampled].copy())
                last_read = time.time()
                state.frames_done([next_index], last_read)
                next_index += 1
                ending.progressed()
                theta = theta_for(next_index)
                # 180 degrees are in when the angles covered, one angular step included, reach pi (at the
                # last projection the final estimate follows at once: no partial one then)
                if (not estimates and theta is not None and next_index > 2 and next_index != expected
                        and float(theta[-1] - theta[0]) * next_index / (next_index - 1) >= np.pi * (1 - 1e-3)):
                    clock = time.perf_counter()
                    center = find_center(next_index, final=False)
                    estimates.append({"projections": next_index, "center": center, "at": now_iso(),
                                      "seconds": round(time.perf_counter() - clock, 3)})
                    state.set(center=center, message=f"centre {center:.2f} px from the first 180 degrees")
                    state.write(force=True)
                state.write()
                if state.view_due(1.0):
                    _sinogram(live_dir / "sinogram.png", keep_c, (c0 + c1) // 2 - c0, flat_avg, dark_avg)
                    state.write_view({"pipeline": "ct", "sinogram": "live/sinogram.png", "state": state.state})
                continue
            if ending.count_reached(next_index):
                end_reason = "expected projection count reached"
                break
            if ending.marker_seen() and follower.data.refresh() <= next_index:
                end_reason = "end-of-scan marker"
                break
            if ending.idle_over():
                end_reason = f"idle timeout: no new projection for {online['idle_timeout']} s (the writer stopped?)"
                state.warn(end_reason)
                break
            time.sleep(float(online["poll"]))
    finally:
        follower.data.close()
    if end_reason == "stopped":
        state.set(status="stopped", message="stopped; run daisy watch again to start the scan's quick-look again")
        state.write(force=True)
        state.close()
        return EXIT_STOPPED
    if next_index < 3:
        state.set(status="failed", message=f"only {next_index} projections: no quick-look")
        state.write(force=True)
        raise StepError(f"{raw}: only {next_index} projections arrived ({end_reason})")

    # -- after the last projection: the offline centre, then the quick-look ------------------
    state.set(message="reconstructing the quick-look")
    state.write(force=True)
    clock = time.perf_counter()
    center = find_center(next_index, final=True)
    estimates.append({"projections": next_index, "center": center, "at": now_iso(),
                      "seconds": round(time.perf_counter() - clock, 3), "final": True})
    store = DataStore(proj=np.stack(keep_q), flat=follower.flat[:, sampled].copy(), dark=follower.dark[:, sampled].copy(),
                      rows=(0, rows), detector_rows=rows, raw_file=raw)
    if follower.theta is not None:
        store["theta_file"] = follower.theta[:next_index]
    watch.run_chain([*PREPARE, "ct.recon"], store, {"ct.recon": {**recon_params, "center": center}})
    recon = store["recon"]
    n = recon.shape[-1]
    nearest = np.abs(np.arange(rows)[:, None] - np.asarray(sampled)[None, :]).argmin(axis=1)
    slices = {"xy": recon[sampled.index(rows // 2)], "xz": recon[nearest, n // 2, :], "yz": recon[nearest, :, n // 2]}
    for name, image in slices.items():
        write_png(quick / f"{name}.png", to_uint8(image))
    with h5py.File(quick / ".quicklook.h5.part", "w") as handle:
        d = handle.create_dataset("recon", data=recon, compression="gzip")
        d.attrs.update({"rows": np.asarray(sampled), "center": center, "long_name": "reconstructed detector rows"})
    (quick / ".quicklook.h5.part").replace(quick / "quicklook.h5")
    written = state.written.get(next_index - 1)
    ready = time.time()
    info = {"center": center, "center_estimates": estimates, "center_rows": [c0, c1], "rows": sampled,
            "projections": next_index, "end_reason": end_reason, "slices": {k: f"{k}.png" for k in slices},
            "last_projection_written": written, "last_projection_read": last_read, "quicklook_ready": ready,
            "seconds_after_last": round(ready - (written or last_read), 3),
            "seconds_reconstructing": round(time.perf_counter() - clock, 3)}
    (quick / "quicklook.json").write_text(json.dumps(info, indent=2) + "\n")
    complete = expected is None or next_index >= expected
    state.set(status="finished", center=center, complete=complete, end_reason=end_reason,
              message=f"quick-look ready {info['seconds_after_last']} s after the last projection "
                      f"(centre {center:.2f} px, {next_index} projections)",
              summary={**state.summary(), "quicklook_delay_s": info["seconds_after_last"], "center": center,
                       "complete": complete, "end_reason": end_reason})
    state.write(force=True)
    state.write_view({"pipeline": "ct", "sinogram": "live/sinogram.png", "state": state.state,
                      "slices": {k: f"quicklook/{k}.png" for k in slices},
                      "quicklook": {"center": center, "seconds_after_last": info["seconds_after_last"]}})
    record = watch.record("completed", {"online": {**state.summary(), "center": center, "estimates": estimates,
                                                   "quicklook_delay_s": info["seconds_after_last"],
                                                   "end_reason": end_reason, "complete": complete}})
    outputs = [str(quick / f) for f in ("xy.png", "xz.png", "yz.png", "quicklook.h5", "quicklook.json")]
    watch.write_record(record, follower.files, outputs)
    state.close()
    log.info("quick-look: centre %.3f, %.2f s after the last projection", center, info["seconds_after_last"])
    return 0


def _sinogram(path: Path, keep: list[np.ndarray], row: int, flat: np.ndarray, dark: np.ndarray) -> None:
    if not keep:
        return
    sino = np.stack([k[row] for k in keep]).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        att = -np.log(np.clip((sino - dark) / np.maximum(flat - dark, 1e-3), 1e-3, None))
    tmp = path.with_name(f".{path.name}.tmp")
    write_png(tmp, to_uint8(att))
    tmp.replace(path)
