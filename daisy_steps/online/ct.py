"""The CT watcher: keep the few sinogram rows needed, find the centre at 180°, quick-look at the end.

The raw file (Data Exchange or DAISY layout: darks, flats and angles written first, projections
appended frame by frame) is followed with ``follow.GrowingDataset``. Of each projection only two
row sets are kept: the rows of the offline centre job (``center.n_rows`` around ``center.row``,
as daisy/pipelines/ct.py chooses them) and ``quicklook_rows`` rows spread over the detector.

- As soon as the projections cover 180° (angles from the file, or ``ct.angles``' range with the
  expected count), the offline centre chain runs on the centre rows, in memory, with the same
  step classes and parameters: ``ct.normalize -> ct.angles -> ct.minus_log -> ct.stripe ->
  ct.find_center``, in a thread beside the reading (a Vo search at 1500 x 1024 takes ~45 s on two
  cores): a first centre for the live page.
- After the last projection, first the quick-look, with the centre at hand: the 180° estimate if
  it is ready, else (a 180° scan: 180° are in only at the last projection) the phase correlation
  of the first projection and its mirror image, the projection nearest 180° later
  (``tomopy.find_center_pc``, a fraction of a second; used only inside ``ct.find_center``'s
  search range), else the offline centre. ``ct.normalize -> ... -> ct.recon`` with that centre
  on the kept rows (``ct.normalize`` and ``ct.minus_log`` already run on them in blocks of
  ``PREP_BLOCK`` projections while the scan went on: both work projection by projection, so the
  numbers are the same; on any warning of a block, the whole chain at the end) gives
  ``quicklook/{xy,xz,yz}.png`` (xy: the middle detector row; xz and yz through the middle of the
  volume, one line per kept row, stretched to the detector's rows) and
  ``quicklook/quicklook.json`` (the centre used and how it was found, every estimate, the delay
  after the last projection and where it went), then ``quicklook/quicklook.h5`` (the
  reconstructed rows).
- Then the centre chain on every projection (exactly the offline centre job's input, hence its
  centre); if it differs from the first one, the quick-look is made again with it. The final
  ``quicklook.json``: ``center`` is the offline centre, ``first`` the first quick-look's,
  ``final`` when the offline one was there.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from ..core import DataStore
from ..errors import StepError
from ..fileio import write_json_atomic
from ..png import to_uint8, write_png
from ..ct.layouts import _read_angles, resolve_paths
from ..ct.prep import range_angles
from .follow import GrowingDataset, NotYet, open_h5, wait_for
from .live import LiveState, now_iso
from .runner import EXIT_STOPPED, Ending, Watch, input_path

PREPARE = ["ct.normalize", "ct.angles", "ct.minus_log", "ct.stripe"]
#: projections normalized and minus-logged together while the scan runs (quick-look rows)
PREP_BLOCK = 100


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

    # the 180-degree estimate runs beside the reading (a full-size Vo search takes tens of seconds)
    partial: dict = {}

    def partial_center(count: int) -> None:
        clock = time.perf_counter()
        try:
            center = find_center(count, final=False)
        except Exception as exc:  # noqa: BLE001  reported; the final estimate follows anyway
            partial["error"] = f"{type(exc).__name__}: {exc}"
            state.warn(f"centre from the first 180 degrees failed: {exc}")
            return
        partial["center"] = center
        estimates.append({"projections": count, "center": center, "at": now_iso(),
                          "seconds": round(time.perf_counter() - clock, 3), "method": "vo, first 180 degrees"})
        state.set(center=center, message=f"centre {center:.2f} px from the first 180 degrees")
        state.write(force=True)

    partial_thread = None
    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daisy-ct-prepare")
    # the quick-look rows normalized and minus-logged block by block as the projections land
    # (both are per-projection: the same numbers as on the whole stack); the stripe removal, which
    # needs whole sinograms, runs at the end. Any warning or failure of a block (a gate that counts
    # over the whole stack could decide otherwise): the whole chain at the end instead.
    prep = {"ok": True, "done": 0, "queued": 0, "pending": [], "blocks": [],
            "flat": follower.flat[:, sampled].copy(), "dark": follower.dark[:, sampled].copy()}

    def prepare_block(stop: int) -> None:
        if not prep["ok"] or stop <= prep["done"]:
            return
        store = DataStore(proj=np.stack(keep_q[prep["done"]:stop]), flat=prep["flat"].copy(),
                          dark=prep["dark"].copy(), rows=(0, rows), detector_rows=rows, raw_file=raw)
        try:
            steps = watch.run_chain(["ct.normalize", "ct.minus_log"], store, record=False)
        except StepError as exc:
            log.info("quick-look rows prepared on the whole stack at the end (a block: %s)", exc)
            prep["ok"] = False
            return
        if any(step.ctx.warnings for step in steps.values()):
            prep["ok"] = False
            return
        if expected is not None and stop <= expected:   # straight into the stack the recon takes
            if "out" not in prep:
                prep["out"] = np.empty((expected, len(sampled), cols), np.float32)
            prep["out"][prep["done"]:stop] = store["proj"]
        else:
            prep["blocks"].append(store["proj"])
        prep["done"] = stop
    # the first projection and the one nearest it + 180 degrees (mirror images): a quick centre
    # by phase correlation when the 180-degree estimate is not ready at the end (a 180-degree scan)
    first_frame = flat_full = dark_full = None
    mirror: dict = {}

    def mirror_candidate(count: int) -> bool:
        """Is projection ``count - 1`` within 1.5 angular steps of the first one + 180 degrees?"""
        theta = theta_for(count)
        if theta is None or count < 2:
            return False
        span = abs(float(theta[-1] - theta[0]))
        step = span / (count - 1)
        return step > 0 and abs(span - np.pi) <= 1.5 * step

    try:
        while True:
            if watch.stop.is_set():
                end_reason = "stopped"
                break
            if not ending.count_reached(next_index) and follower.data.read(next_index, frame):
                keep_c.append(frame[c0:c1].copy())
                keep_q.append(frame[sampled])
                last_read = time.time()
                state.frames_done([next_index], last_read)
                if next_index == 0:
                    first_frame = frame.copy()
                    flat_full = follower.flat.astype(np.float32).mean(axis=0)
                    dark_full = follower.dark.astype(np.float32).mean(axis=0)
                next_index += 1
                ending.progressed()
                theta = theta_for(next_index)
                if next_index > 1 and mirror_candidate(next_index):
                    off = abs(abs(float(theta[-1] - theta[0])) - np.pi)
                    if off < mirror.get("off", np.inf):
                        mirror.update(off=off, index=next_index - 1, frame=frame.copy())
                if theta is not None and next_index > 1:
                    step = abs(float(theta[-1] - theta[0])) / (next_index - 1)
                    # 180 degrees are in when the angles covered, one angular step included, reach
                    # pi within half a step (at the last projection the final estimate follows: no
                    # partial one then)
                    if (partial_thread is None and next_index > 2 and next_index != expected
                            and abs(float(theta[-1] - theta[0])) + step >= np.pi - 0.5 * step):
                        partial_thread = threading.Thread(target=partial_center, args=(next_index,),
                                                          name="daisy-ct-centre", daemon=True)
                        partial_thread.start()
                if next_index - prep["queued"] >= PREP_BLOCK and next_index != expected:
                    prep["queued"] = next_index
                    prep["pending"].append(preparer.submit(prepare_block, next_index))
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
        read_end = time.time()
        follower.data.close()
        for future in prep["pending"]:
            future.result()
        preparer.shutdown()
    if end_reason == "stopped":
        state.set(status="stopped", message="stopped; run daisy watch again to start the scan's quick-look again")
        state.write(force=True)
        state.close()
        return EXIT_STOPPED
    if next_index < 3:
        state.set(status="failed", message=f"only {next_index} projections: no quick-look")
        state.write(force=True)
        raise StepError(f"{raw}: only {next_index} projections arrived ({end_reason})")

    # -- after the last projection: a first quick-look with the centre at hand, then the offline
    # centre (every projection: exactly the offline centre job's input) and, if it differs, the
    # quick-look again with it -------------------------------------------------------------------
    state.set(message="reconstructing the quick-look")
    state.write(force=True)
    clock = time.perf_counter()
    written = state.written.get(next_index - 1)
    timings: dict = {"behind_s": round(read_end - (written or last_read), 3),
                     "prepare_wait_s": round(time.time() - read_end, 3)}
    first_center, first_method = None, None
    if find_params["method"] == "manual":
        first_center, first_method = float(find_params["center"]), "manual"
    elif "center" in partial:
        first_center, first_method = partial["center"], "vo, first 180 degrees"
    elif first_frame is not None and "frame" in mirror:
        tick = time.perf_counter()
        first_center = _mirror_center(first_frame, mirror["frame"], flat_full, dark_full, find_params, cols)
        timings["mirror_center_s"] = round(time.perf_counter() - tick, 3)
        if first_center is not None:
            first_method = f"phase correlation of projections 0 and {mirror['index']} (mirror images)"
            estimates.append({"projections": next_index, "center": first_center, "at": now_iso(),
                              "seconds": timings["mirror_center_s"], "method": first_method})
    if first_center is None:    # no quick centre: the offline one first
        first_center = find_center(next_index, final=True)
        first_method = "vo, every projection (the offline centre job's)"
        timings["center_s"] = round(time.perf_counter() - clock, 3)
        estimates.append({"projections": next_index, "center": first_center, "at": now_iso(),
                          "seconds": timings["center_s"], "final": True, "method": first_method})
    info = {"center": first_center, "center_method": first_method, "center_estimates": estimates,
            "center_rows": [c0, c1], "rows": sampled, "projections": next_index, "end_reason": end_reason,
            "slices": {"xy": "xy.png", "xz": "xz.png", "yz": "yz.png"}, "last_projection_written": written,
            "last_projection_read": last_read}
    tick = time.perf_counter()
    prepare_block(next_index)
    timings["last_block_s"] = round(time.perf_counter() - tick, 3)
    recon = _quicklook(watch, quick, keep_q, prep, follower, sampled, rows, raw, next_index, recon_params,
                       first_center, timings)
    ready = time.time()
    info.update(quicklook_ready=ready, seconds_after_last=round(ready - (written or last_read), 3),
                seconds_reconstructing=round(time.perf_counter() - clock, 3), timings=timings,
                first={"center": first_center, "method": first_method})
    write_json_atomic(quick / "quicklook.json", info)
    state.set(center=first_center, message=f"quick-look ready {info['seconds_after_last']} s after the last "
                                           f"projection (centre {first_center:.2f} px, {first_method}); "
                                           f"the offline centre next")
    state.write(force=True)
    state.write_view({"pipeline": "ct", "sinogram": "live/sinogram.png", "state": state.state,
                      "slices": {k: f"quicklook/{k}.png" for k in info["slices"]},
                      "quicklook": {"center": first_center, "seconds_after_last": info["seconds_after_last"]}})
    _write_h5(quick, recon, sampled, first_center)
    del recon
    if first_method.startswith("vo, every") or first_method == "manual":
        center = first_center
    else:
        if partial_thread is not None:
            partial_thread.join()
        tick = time.perf_counter()
        center = find_center(next_index, final=True)
        estimates.append({"projections": next_index, "center": center, "at": now_iso(),
                          "seconds": round(time.perf_counter() - tick, 3), "final": True,
                          "method": "vo, every projection (the offline centre job's)"})
        if center != first_center:   # the quick-look as the offline centre makes it
            recon = _quicklook(watch, quick, keep_q, prep, follower, sampled, rows, raw, next_index, recon_params,
                               center, {})
            _write_h5(quick, recon, sampled, center)
            del recon
    final_time = time.time()
    info.update(center=center, center_method="vo, every projection (the offline centre job's)"
                if first_method != "manual" else "manual",
                final={"center": center, "redrawn": center != first_center,
                       "seconds_after_last": round(final_time - (written or last_read), 3)})
    write_json_atomic(quick / "quicklook.json", info)
    complete = expected is None or next_index >= expected
    state.set(status="finished", center=center, complete=complete, end_reason=end_reason,
              message=f"quick-look ready {info['seconds_after_last']} s after the last projection "
                      f"(centre {first_center:.2f} px); offline centre {center:.2f} px "
                      f"{'(quick-look redrawn with it) ' if center != first_center else ''}"
                      f"({next_index} projections)",
              summary={**state.summary(), "quicklook_delay_s": info["seconds_after_last"], "center": center,
                       "center_first": first_center, "complete": complete, "end_reason": end_reason})
    state.write(force=True)
    state.write_view({"pipeline": "ct", "sinogram": "live/sinogram.png", "state": state.state,
                      "slices": {k: f"quicklook/{k}.png" for k in info["slices"]},
                      "quicklook": {"center": center, "seconds_after_last": info["seconds_after_last"]}})
    record = watch.record("completed", {"online": {**state.summary(), "center": center, "center_first": first_center,
                                                   "center_first_method": first_method, "estimates": estimates,
                                                   "quicklook_delay_s": info["seconds_after_last"],
                                                   "end_reason": end_reason, "complete": complete}})
    outputs = [str(quick / f) for f in ("xy.png", "xz.png", "yz.png", "quicklook.h5", "quicklook.json")]
    watch.write_record(record, follower.files, outputs)
    state.close()
    log.info("quick-look: centre %.3f, %.2f s after the last projection; offline centre %.3f", first_center,
             info["seconds_after_last"], center)
    return 0


def _quicklook(watch, quick: Path, keep_q, prep, follower, sampled, rows, raw, count, recon_params, center,
               timings: dict) -> np.ndarray:
    """ct.normalize -> ... -> ct.recon with ``center`` on the kept rows (normalized and
    minus-logged already if ``prep`` holds every projection's); the three PNGs."""
    tick = time.perf_counter()
    ready = prep["ok"] and prep["done"] == count
    if ready:
        proj = prep.pop("out")[:count] if "out" in prep else np.concatenate(prep["blocks"])
        if not prep["blocks"]:
            prep["ok"] = False      # ct.recon consumes the stack: a second quick-look prepares it again
        store = DataStore(proj=proj, rows=(0, rows), detector_rows=rows, raw_file=raw)
    else:
        store = DataStore(proj=np.stack(keep_q[:count]), flat=prep["flat"].copy(), dark=prep["dark"].copy(),
                          rows=(0, rows), detector_rows=rows, raw_file=raw)
    if follower.theta is not None:
        store["theta_file"] = follower.theta[:count]
    timings["stack_s"] = round(time.perf_counter() - tick, 3)
    timings["prepared_in_blocks"] = ready
    chain = ["ct.angles", "ct.stripe"] if ready else PREPARE
    watch.run_chain([*chain, "ct.recon"], store, {"ct.recon": {**recon_params, "center": center}})
    timings["quicklook_steps"] = dict(watch.chain_seconds)
    tick = time.perf_counter()
    recon = store["recon"]
    n = recon.shape[-1]
    nearest = np.abs(np.arange(rows)[:, None] - np.asarray(sampled)[None, :]).argmin(axis=1)
    slices = {"xy": recon[sampled.index(rows // 2)], "xz": recon[nearest, n // 2, :], "yz": recon[nearest, :, n // 2]}
    for name, image in slices.items():
        tmp = quick / f".{name}.png.tmp"
        write_png(tmp, to_uint8(image))
        tmp.replace(quick / f"{name}.png")
    timings["png_s"] = round(time.perf_counter() - tick, 3)
    return recon


def _write_h5(quick: Path, recon: np.ndarray, sampled, center: float) -> None:
    """quicklook.h5: the reconstructed rows (uncompressed: gzip took seconds at full size)."""
    with h5py.File(quick / ".quicklook.h5.part", "w") as handle:
        d = handle.create_dataset("recon", data=recon)
        d.attrs.update({"rows": np.asarray(sampled), "center": center, "long_name": "reconstructed detector rows"})
    (quick / ".quicklook.h5.part").replace(quick / "quicklook.h5")


def _attenuation(frame: np.ndarray, flat: np.ndarray, dark: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        att = -np.log(np.clip((frame.astype(np.float32) - dark) / np.maximum(flat - dark, 1e-3), 1e-6, None))
    return np.nan_to_num(att, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _mirror_center(first: np.ndarray, mirror: np.ndarray, flat_avg: np.ndarray, dark_avg: np.ndarray,
                   find_params: dict, cols: int) -> float | None:
    """The rotation centre from the first projection and its mirror image (the projection nearest
    180 degrees later), normalized by the averaged flat and dark frames: tomopy.find_center_pc
    (phase correlation, a fraction of a second at full size). None when it is not usable: not
    finite, or outside ct.find_center's search range."""
    import tomopy

    try:
        center = float(tomopy.find_center_pc(_attenuation(first, flat_avg, dark_avg),
                                             _attenuation(mirror, flat_avg, dark_avg), tol=0.25))
    except Exception:  # noqa: BLE001  no quick centre: the offline one comes first
        return None
    reach = min(50.0, cols / 4.0)
    lo = cols / 2.0 + (-reach if find_params["vo_smin"] is None else find_params["vo_smin"])
    hi = cols / 2.0 + (reach if find_params["vo_smax"] is None else find_params["vo_smax"])
    return center if np.isfinite(center) and lo <= center <= hi else None


def _sinogram(path: Path, keep: list[np.ndarray], row: int, flat: np.ndarray, dark: np.ndarray) -> None:
    if not keep:
        return
    sino = np.stack([k[row] for k in keep]).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        att = -np.log(np.clip((sino - dark) / np.maximum(flat - dark, 1e-3), 1e-3, None))
    tmp = path.with_name(f".{path.name}.tmp")
    write_png(tmp, to_uint8(att))
    tmp.replace(path)
