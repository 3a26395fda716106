"""The XRD watcher: integrate each frame of a growing scan as soon as it is readable.

Set-up, once: the follower opens the scan (it plays ``xrd.load_frames``: a frame source with the
scan's shape, dtype and pixel mask), ``xrd.mask`` runs as offline, ``xrd.integrate`` is
initialized (geometry, mask, dark/flat) with the offline job's parameters. Then, for each batch
of newly readable frames (1 to ``max_batch``, whatever is there), ``Integrate.execute`` runs
on them, the step's own code, so the patterns are those of the offline block jobs bit for bit,
and the batch is appended to the result file.

The result file (``<watch folder>/<scan>_integrated.h5``) has the offline layout
(``daisy_steps.xrd.results.ResultWriter``: ``/entry/integrate_1d``, ``integrate_2d``, ``process``,
``input``) with the frame axis growing, plus ``/entry/online`` (per frame: the writer's
"written" time and the time the row became readable). It is written with **h5py SWMR**: other
programs read it while it grows with ``h5py.File(path, "r", swmr=True)`` and
``dataset.refresh()``; a row is complete when its ``frame`` entry is >= 0 (rows are resized,
filled, then their frame index is written, then the file is flushed). At the end of the scan the
SWMR session is closed and the file finished: the job's NXprocess groups (as in a gathered
file) and ``/entry/online`` attributes (status, end reason, skipped frames, latency).

Resume: an existing result file is copied (H5Ocopy keeps the resizable layout), cut back to its
last complete row, and the watch continues with the next frame: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core import DataStore
from ..errors import StepError
from ..h5 import compression_options, nx_group
from ..nxprocess import processes, write_processes
from ..xrd import FRAMES_KEY, RESULT_KEY
from ..xrd.frames import ArraySource, FrameSource
from ..xrd.results import UNITS, ResultWriter, XRDResult
from .follow import Follower, NotYet, open_follower, wait_for
from .live import LiveState, decimate, now_iso, to_bytes_image
from .runner import EXIT_STOPPED, Ending, Watch, input_path

LIBVER = ("v110", "v110")   # SWMR needs >= v110; the host's newer HDF5 reads it too
DATA_SETS = ("integrate_1d/intensity", "integrate_1d/intensity_errors", "integrate_2d/intensity",
             "integrate_2d/intensity_errors", "online/written_time", "online/readable_time")
FRAME_SETS = ("integrate_1d/frame", "integrate_2d/frame")
UNBOUNDED = 1 << 40


class FollowSource(FrameSource):
    """What ``xrd.mask`` and ``xrd.integrate`` see at set-up: the growing scan's shape, dtype and
    pixel mask (frames themselves come batch by batch as :class:`ArraySource`)."""

    kind = "online"

    def __init__(self, follower: Follower, start: int, stop: int | None) -> None:
        super().__init__(follower.label, follower.shape, follower.dtype, stop or UNBOUNDED, start, stop)
        self.follower = follower
        self.files = follower.files

    def pixel_mask(self):
        return self.follower.pixel_mask()

    def describe(self):
        return {**self.follower.describe(), "kind": f"online/{self.follower.kind}", "start": self.start}


class LiveResultFile:
    """The scan's NeXus result file, growing under SWMR (see the module docstring)."""

    def __init__(self, path: Path, compression: str) -> None:
        self.path = Path(path)
        self.compression = compression
        self.handle: h5py.File | None = None
        self.n = 0
        self.frames: list[int] = []
        self.settings_json: str | None = None
        self.geometry_json: str | None = None

    # -- resume --------------------------------------------------------------------------------
    def resume(self) -> int:
        """Reopen an earlier run's file: copy it, cut it back to its complete rows, continue.
        Returns the number of complete rows (0: no file)."""
        if not self.path.exists():
            return 0
        tmp = self.path.with_name(f".{self.path.name}.resume")
        try:
            with h5py.File(self.path, "r", swmr=True, locking=False) as old:
                frames = np.asarray(old["/entry/integrate_1d/frame"][()])
                good = 0
                while good < frames.size and frames[good] >= 0 and (good == 0 or frames[good] > frames[good - 1]):
                    good += 1
                if good == 0:
                    raise ValueError("no complete row")
                with h5py.File(tmp, "w", libver=LIBVER) as new:
                    for name in old:
                        old.copy(old[name], new, name=name)
                    for attr, value in old.attrs.items():
                        new.attrs[attr] = value
                    entry = new["entry"]
                    for name in [n for n in entry if n.startswith("process_")]:
                        del entry[name]
                    for name in (*DATA_SETS, *FRAME_SETS):
                        if name in entry:
                            entry[name].resize(good, axis=0)
                    params = entry["process/parameters"]
                    self.settings_json = _text(params["integration"][()])
                    self.geometry_json = _text(params["geometry"][()])
                    if "online" in entry:
                        entry["online"].attrs["status"] = "live"
                        entry["online"].attrs["resumed"] = now_iso()
        except (OSError, KeyError, ValueError):
            tmp.unlink(missing_ok=True)
            self.path.rename(self.path.with_name(self.path.name + f".broken-{int(time.time())}"))
            return 0
        os.replace(tmp, self.path)
        self.handle = h5py.File(self.path, "r+", libver=LIBVER)
        self.handle.swmr_mode = True
        self.n = good
        self.frames = [int(f) for f in frames[:good]]
        return good

    # -- create and append ---------------------------------------------------------------------
    def create(self, result: XRDResult, source: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.new")
        # the offline layout, made for one frame in a scratch file in memory, then copied with
        # every frame-axis dataset made resizable and empty (same name, dtype, attributes). No
        # object is deleted in the SWMR file itself: HDF5's SWMR mode does not cope with that.
        with h5py.File(f"scratch-{id(self)}", "w", driver="core", backing_store=False) as scratch:
            ResultWriter(scratch, 1, unit=result.unit, radial=result.radial, radial_2d=result.radial_2d,
                         chi=result.chi, sigma=result.sigma is not None, sigma_2d=result.sigma_2d is not None,
                         geometry=result.geometry, settings=result.settings, sources=[source], mask=result.mask,
                         compression=self.compression)
            handle = h5py.File(tmp, "w", libver=LIBVER)
            self._copy(scratch, handle, "")
        entry = handle["entry"]
        online = nx_group(entry, "online", "NXcollection")
        for name, doc in (("written_time", "when the writer reported the frame fully written (unix s; NaN: unknown)"),
                          ("readable_time", "when this file was flushed with the frame's row (unix s)")):
            dset = online.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(256,),
                                         fillvalue=np.nan)
            dset.attrs.update({"units": "s", "long_name": doc})
        online.attrs.update({"status": "live", "started": now_iso(), "source": json.dumps(source, default=str),
                             "readers": "h5py.File(path, 'r', swmr=True); dataset.refresh(); rows with frame >= 0"})
        handle.swmr_mode = True
        os.replace(tmp, self.path)
        self.handle = handle
        self.settings_json = json.dumps(result.settings, sort_keys=True)
        self.geometry_json = json.dumps(result.geometry, sort_keys=True)

    def _copy(self, src: h5py.Group, dst: h5py.Group, prefix: str) -> None:
        dst.attrs.update(dict(src.attrs))
        for name, obj in src.items():
            path = f"{prefix}{name}"
            if isinstance(obj, h5py.Group):
                self._copy(obj, dst.create_group(name), path + "/")
            elif path.removeprefix("entry/") in FRAME_SETS:
                new = dst.create_dataset(name, shape=(0,), maxshape=(None,), dtype=obj.dtype, chunks=(256,), fillvalue=-1)
                new.attrs.update(dict(obj.attrs))
            elif path.removeprefix("entry/") in DATA_SETS:
                rest = obj.shape[1:]
                new = dst.create_dataset(name, shape=(0, *rest), maxshape=(None, *rest), dtype=obj.dtype,
                                         chunks=(1, *rest), **compression_options(self.compression))
                new.attrs.update(dict(obj.attrs))
            else:
                src.copy(obj, dst, name=name)

    def check_same(self, result: XRDResult) -> None:
        """A resumed file must have been made with the same integration."""
        if self.settings_json is None:
            return
        for what, mine, theirs in (("integration settings", self.settings_json, json.dumps(result.settings, sort_keys=True)),
                                   ("geometry", self.geometry_json, json.dumps(result.geometry, sort_keys=True))):
            if json.loads(mine) != json.loads(theirs):
                raise StepError(f"{self.path} was made with other {what} than this watch uses: "
                                f"remove it (or the watch folder) to start the scan again")
        self.settings_json = None

    def append(self, result: XRDResult, written: list[float | None]) -> float:
        """Append a batch of integrated frames; returns the time the file was flushed with them."""
        entry = self.handle["entry"]
        m = len(result.frames)
        n0, n1 = self.n, self.n + m
        present = [n for n in (*DATA_SETS, *FRAME_SETS) if n in entry]
        for name in present:
            entry[name].resize(n1, axis=0)
        entry["integrate_1d/intensity"][n0:n1] = result.intensity
        if result.sigma is not None:
            entry["integrate_1d/intensity_errors"][n0:n1] = result.sigma
        if result.cake is not None and "integrate_2d/intensity" in entry:
            for i in range(m):
                entry["integrate_2d/intensity"][n0 + i] = result.cake[i]
                if result.sigma_2d is not None:
                    entry["integrate_2d/intensity_errors"][n0 + i] = result.sigma_2d[i]
        entry["online/written_time"][n0:n1] = np.array([np.nan if w is None else w for w in written])
        entry["online/readable_time"][n0:n1] = time.time()
        # the frame index last: a reader takes a row with frame >= 0 as complete
        for name in FRAME_SETS:
            if name in entry:
                entry[name][n0:n1] = result.frames
        self.handle.flush()
        readable = time.time()
        self.n = n1
        self.frames.extend(int(f) for f in result.frames)
        return readable

    def finish(self, record: dict[str, Any] | None, attrs: dict[str, Any]) -> None:
        """Close the SWMR session; write the NXprocess groups and the end-of-scan attributes."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if not self.path.exists():
            return
        with h5py.File(self.path, "r+") as handle:
            entry = handle["entry"]
            for name in [n for n in entry if n.startswith("process_")]:
                del entry[name]
            if record is not None:
                write_processes(entry, processes([record]))
            if "online" in entry:
                for key, value in attrs.items():
                    entry["online"].attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.handle.flush()
                self.handle.close()
            finally:
                self.handle = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def scan_name(path: str) -> str:
    p = Path(path)
    return p.stem.removesuffix("_master") if p.suffix else p.name


class XRDView:
    """The live page's data: latest pattern and a waterfall of the last frames."""

    def __init__(self, unit: str, points: int = 800, rows: int = 200) -> None:
        self.unit = unit
        self.points = points
        self.rows: list[np.ndarray] = []
        self.frames: list[int] = []
        self.max_rows = rows
        self.x = None

    def add(self, result: XRDResult) -> None:
        if self.x is None:
            self.x = decimate(result.radial, self.points)
        for frame, pattern in zip(result.frames, result.intensity):
            self.rows.append(decimate(pattern, self.points))
            self.frames.append(int(frame))
        del self.rows[:-self.max_rows]
        del self.frames[:-self.max_rows]

    def document(self, state: dict[str, Any]) -> dict[str, Any]:
        name, units, label = UNITS[self.unit]
        doc = {"pipeline": "xrd", "state": state, "xlabel": f"{label} ({units})"}
        if self.rows:
            doc["pattern"] = {"x": np.round(self.x, 5), "y": np.round(self.rows[-1], 3), "frame": self.frames[-1]}
            doc["waterfall"] = {**to_bytes_image(np.asarray(self.rows)), "first": self.frames[0],
                                "last": self.frames[-1], "x0": float(self.x[0]), "x1": float(self.x[-1])}
        return doc


def main(job_path, quiet: bool = False) -> int:
    watch = Watch(job_path, "xrd")
    log = watch.log
    watch.install_stop()
    watch.lock()
    online = watch.online
    _, load_entry, load_params = watch.entry("xrd.load_frames")
    _, _, integrate_params = watch.entry("xrd.integrate")
    source_text = online["source"]
    ref_path = input_path(source_text)
    dataset = source_text.split(":", 1)[1] if ":" in source_text else None
    start, stop = int(load_params["start"]), load_params["stop"]
    scan = online.get("scan") or scan_name(ref_path)
    result_path = Path(online.get("result") or watch.folder / f"{scan}_integrated.h5")
    previous = _read_json(watch.folder / "live.json")
    state = LiveState(watch.folder, "xrd", online.get("written_log"), online.get("expected"), log)
    state.set(scan=scan, source=source_text, result_file=result_path.name, image=watch.job.get("image"))
    state.write(force=True)

    def waiting(message: str) -> None:
        state.set(status="waiting", message=message)
        state.write()

    try:
        follower = wait_for(lambda: open_follower(ref_path, dataset, load_params["format"], online["pattern"],
                                                  online.get("expected")),
                            stop=watch.stop.is_set, poll=0.1, timeout=online.get("idle_timeout"), on_wait=waiting)
    except NotYet as exc:
        state.set(status="stopped" if watch.stop.is_set() else "failed", message=f"the scan never appeared: {exc}")
        state.write(force=True)
        return EXIT_STOPPED if watch.stop.is_set() else 2
    expected = follower.expected
    # the expected count is the scan's (frames 0..expected-1); input.stop, if given, wins
    stop_index = int(stop) if stop is not None else expected
    state.set(frames_expected=None if stop_index is None else stop_index - start, detector=list(follower.shape),
              source_kind=follower.kind, files=follower.files)

    # -- set-up: the offline chain's steps, once -----------------------------------------------
    store = DataStore()
    source = FollowSource(follower, start, stop_index)
    store[FRAMES_KEY] = source
    watch.note_step(_LoadShim(load_params, source), now_iso(), 0.0, results=source.describe())
    watch.run_chain(["xrd.mask"], store)
    integrate = watch.make("xrd.integrate", store)
    integrate.initialize()
    # warm-up: pyFAI builds its integration engine (CSR matrix) on the first call; do it on an
    # empty frame now, before the first frame lands (same geometry, mask and parameters: the
    # engine is the one every frame then uses; this result is thrown away)
    clock = time.perf_counter()
    integrate.source = ArraySource(np.zeros((1, *follower.shape), follower.dtype), label="warm-up", start=0)
    integrate.execute()
    store.pop(RESULT_KEY, None)
    state.set(setup_seconds=round(time.perf_counter() - clock, 3))
    live = LiveResultFile(result_path, online.get("compression", "gzip"))
    done = live.resume()
    next_index = start
    if done:
        next_index = live.frames[-1] + 1
        state.set(resumed_from=next_index, skipped=[f for f in previous.get("skipped", []) if f < next_index])
        state.resumed(live.frames)
        log.info("resuming %s after frame %d (%d frames done)", result_path, live.frames[-1], done)
    skipped: list[int] = list(state.state["skipped"])
    view = XRDView(integrate_params["unit"])
    max_batch = max(1, int(online["max_batch"]))
    reader = FrameReader(follower, online, next_index, stop_index, state, watch.stop, depth=2 * max_batch)
    reader.start()
    end_reason = None
    integrate_seconds = 0.0
    state.set(status="running", message="following the scan")
    state.write(force=True)
    try:
        while True:
            items = reader.take(max_batch)
            frames_in = [it for it in items if it[0] == "frame"]
            if frames_in:
                clock = time.perf_counter()
                first = frames_in[0][1]
                data = frames_in[0][2][None] if len(frames_in) == 1 else np.stack([it[2] for it in frames_in])
                integrate.source = ArraySource(data, label=follower.label, start=first)
                integrate.execute()
                for it in frames_in:
                    reader.give_back(it[2])
                result: XRDResult = store[RESULT_KEY]
                integrate_seconds += time.perf_counter() - clock
                frames = [int(f) for f in result.frames]
                written = [state.written.get(f) for f in frames]
                if live.handle is None:
                    live.create(result, source.describe())
                live.check_same(result)
                readable = live.append(result, written)
                state.frames_done(frames, readable)
                view.add(result)
                state.write()
                if state.view_due():
                    state.write_view(view.document(state.state))
            for it in items:
                if it[0] == "skip":
                    skipped.append(it[1])
                    state.set(skipped=skipped)
                elif it[0] == "end":
                    end_reason = it[1]
                elif it[0] == "error":
                    raise it[1]
            if end_reason is not None:
                break
    except BaseException as exc:
        watch.stop.set()
        reader.join(timeout=10)
        live.close()
        state.set(status="failed", message=f"{type(exc).__name__}: {exc}")
        state.write(force=True)
        record = watch.record("failed", {}, error=f"{type(exc).__name__}: {exc}")
        watch.write_record(record, follower.files, [])
        raise
    finally:
        reader.join(timeout=10)
        follower.close()
    next_index = reader.next_index

    stopped = end_reason == "stopped"
    done_total = live.n
    complete = (not stopped and not skipped and (stop_index is None or next_index >= stop_index))
    integrate.ctx.results.update({"frames": done_total, "seconds_integrating_this_session": round(integrate_seconds, 3)})
    watch.note_step(integrate, watch.started, integrate_seconds)
    summary = {**state.summary(), "frames_done": done_total, "skipped": skipped, "end_reason": end_reason,
               "complete": complete, "result_file": str(result_path),
               "first": live.frames[0] if live.frames else None, "last": live.frames[-1] if live.frames else None}
    status = "stopped" if stopped else "finished"
    record = watch.record("completed" if not stopped else "stopped", {"online": summary})
    if live.handle is not None or result_path.exists():
        if stopped:
            live.close()
        else:
            live.finish(record, {"status": status, "end_reason": end_reason, "ended": now_iso(),
                                 "complete": int(complete), "skipped": skipped, "frames": done_total,
                                 "latency": state.summary()})
    state.set(status=status, message=(f"scan ended ({end_reason}): {done_total} frames" if not stopped
                                      else f"stopped after frame {next_index - 1}; run daisy watch again to resume"),
              end_reason=end_reason, complete=complete, summary=summary)
    state.write(force=True)
    if view.rows:
        state.write_view(view.document(state.state))
    if not stopped:
        inputs = [*follower.files, *[input_path(v) for _, e, _ in watch.prepared for v in e.get("inputs", {}).values()]]
        watch.write_record(record, inputs, [str(result_path)] if result_path.exists() else [])
    state.close()
    log.info("%s: %d frames, %s", status, done_total, end_reason)
    return EXIT_STOPPED if stopped else 0


class FrameReader(threading.Thread):
    """Reads the scan's frames ahead of the integration, in order, into a pool of buffers (the
    offline read-ahead: decompression overlaps pyFAI), and decides, when the next frame is not
    readable, whether to wait, skip it or end the scan. Queue items: ``("frame", index, buffer)``,
    ``("skip", index)``, ``("end", reason)``, ``("error", exception)``."""

    def __init__(self, follower: Follower, online: dict, start: int, stop_index: int | None, state: LiveState,
                 stop, depth: int) -> None:
        super().__init__(name="daisy-online-reader", daemon=True)
        self.follower, self.online, self.state, self.stop = follower, online, state, stop
        self.next_index = start
        self.ending = Ending(online, stop_index)
        self.free: queue.Queue = queue.Queue()
        for _ in range(max(2, depth)):
            self.free.put(np.empty(follower.shape, follower.dtype))
        self.ready: queue.Queue = queue.Queue()

    def give_back(self, buffer: np.ndarray) -> None:
        self.free.put(buffer)

    def take(self, most: int) -> list[tuple]:
        """At least one item (waits), then whatever else is ready, up to ``most`` frames."""
        items = [self.ready.get()]
        while sum(1 for it in items if it[0] == "frame") < most and items[-1][0] == "frame":
            try:
                items.append(self.ready.get_nowait())
            except queue.Empty:
                break
        return items

    def run(self) -> None:
        try:
            self.ready.put(("end", self._follow()))
        except BaseException as exc:  # noqa: BLE001  handed to the main thread
            self.ready.put(("error", exc))

    def _follow(self) -> str:
        online, follower, ending, state = self.online, self.follower, self.ending, self.state
        waiting_since: float | None = None
        warned_for: int | None = None
        buffer = None
        while True:
            if self.stop.is_set():
                return "stopped"
            if ending.count_reached(self.next_index):
                return "expected frame count reached"
            if buffer is None:
                try:
                    buffer = self.free.get(timeout=0.5)
                except queue.Empty:
                    continue
            if follower.read(self.next_index, buffer):
                self.ready.put(("frame", self.next_index, buffer))
                buffer = None
                self.next_index += 1
                ending.progressed()
                waiting_since, warned_for = None, None
                continue
            # not readable now: the end of the scan, a late frame, or one that never completes
            now = time.monotonic()
            waiting_since = waiting_since or now
            waited = now - waiting_since
            marker = ending.marker_seen()
            later = follower.known() > self.next_index + 1
            if marker and not follower.known() > self.next_index and waited > 0.5:
                return "end-of-scan marker"
            if (later or marker) and waited > float(online["frame_timeout"]):
                state.warn(f"frame {self.next_index} never became readable in {online['frame_timeout']} s "
                           f"({follower.problem}): skipped")
                self.ready.put(("skip", self.next_index))
                self.next_index += 1
                waiting_since = None
                continue
            if waited > 2.0 and warned_for != self.next_index and (later or marker):
                warned_for = self.next_index
                state.warn(f"frame {self.next_index} not readable for {waited:.1f} s: {follower.problem}")
            if ending.idle_over():
                reason = f"idle timeout: no new frame for {online['idle_timeout']} s (the writer stopped?)"
                state.warn(reason)
                return reason
            if waited > 1.0:
                state.set(message=f"waiting for frame {self.next_index} ({follower.problem})")
            time.sleep(float(online["poll"]))


class _LoadShim:
    """What the record says of ``xrd.load_frames``: played by the follower, same parameters."""

    name = "xrd.load_frames"
    libraries = ("numpy", "h5py", "hdf5plugin")

    def __init__(self, params: dict, source: FollowSource) -> None:
        from ..core import step_class

        self.params = params
        self.version = step_class(self.name).version
        self.ctx = type("Ctx", (), {"results": source.describe()})()
