"""The live record of a watch run: what the live page, the terminal and the benchmark read.

Files in the watch folder (``<outdir>/online/``), each replaced atomically (temporary + rename):

- ``live.json``: status (waiting, running, finished, stopped, failed), frames done and expected,
  frame rate, latency (last, p50, p95 over the last 200 frames), skipped frames, warnings, the
  result file; about four times a second;
- ``view.json``: what the live page draws (latest pattern and a waterfall for XRD; the centre,
  slices and sinogram images for CT); about twice a second;
- ``frames.jsonl``: one line per frame done, appended: ``frame``, ``written`` (the writer's
  "fully written" time from its side file, if any), ``readable`` (when the result file was
  flushed with it), ``latency`` (their difference, seconds).

Latency is measured from the writer's side file (``daisy simulate`` writes one:
``<scan>_written.jsonl``, one JSON line ``{"frame": k, "t": unix time}`` per frame, appended
after the frame's flush) to the flush of the result file that holds the frame.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

LIVE = "live.json"
VIEW = "view.json"
FRAMES_LOG = "frames.jsonl"


def now_iso() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (temporary name in the same folder, then rename; no fsync:
    these files are rewritten several times a second and only ever read live)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class WrittenLog:
    """The writer's per-frame "fully written" times (JSON lines ``{"frame", "t"}``), tailed."""

    def __init__(self, path) -> None:
        self.path = Path(path) if path else None
        self.pos = 0
        self.times: dict[int, float] = {}

    def poll(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.pos)
                data = handle.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.pos += end + 1
        for line in data[:end].splitlines():
            try:
                item = json.loads(line)
                self.times[int(item["frame"])] = float(item["t"])
            except (ValueError, KeyError, TypeError):
                continue

    def get(self, frame: int) -> float | None:
        if frame not in self.times:
            self.poll()
        return self.times.get(frame)


def percentile(values, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None


def _locked(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class LiveState:
    """Counters, latency and warnings of a watch run, written to ``live.json`` (throttled).
    Thread-safe: the XRD watcher's reader thread reports warnings too."""

    def __init__(self, folder, pipeline: str, written_log=None, expected: int | None = None, log=None) -> None:
        self._lock = threading.RLock()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pipeline = pipeline
        self.log = log
        self.written = WrittenLog(written_log)
        self.state: dict[str, Any] = {
            "pipeline": pipeline, "status": "waiting", "started": now_iso(), "frames_done": 0,
            "frames_expected": expected, "last_frame": None, "skipped": [], "warnings": [],
            "rate_hz": None, "latency_s": {"last": None, "p50": None, "p95": None, "max": None},
            "written_log": str(written_log) if written_log else None, "message": "waiting for the scan",
        }
        self.done_times: collections.deque = collections.deque(maxlen=400)
        self.recent: collections.deque = collections.deque(maxlen=200)
        self.latencies: list[float] = []
        self._written_at = 0.0
        self._view_at = 0.0
        self._frames_log = open(self.folder / FRAMES_LOG, "a")

    # -- updates -------------------------------------------------------------------------------
    @_locked
    def set(self, **values) -> None:
        self.state.update(values)

    @_locked
    def warn(self, message: str) -> None:
        warnings = self.state["warnings"]
        if warnings and warnings[-1]["message"] == message:
            warnings[-1]["count"] = warnings[-1].get("count", 1) + 1
            warnings[-1]["time"] = now_iso()
            return
        warnings.append({"time": now_iso(), "message": message})
        del warnings[:-20]
        if self.log is not None:
            self.log.warning("%s", message)
        self.write(force=True)

    @_locked
    def resumed(self, frames) -> None:
        """Frames an earlier session of this watch did (already in frames.jsonl)."""
        self.state["frames_done"] += len(frames)
        if len(frames):
            self.state["last_frame"] = int(frames[-1])

    @_locked
    def frames_done(self, frames, readable: float) -> None:
        """Frames ``frames`` are readable in the result file since ``readable`` (unix time)."""
        lines = []
        for frame in frames:
            frame = int(frame)
            written = self.written.get(frame)
            latency = None if written is None else readable - written
            if latency is not None:
                self.recent.append(latency)
                self.latencies.append(latency)
                self.state["latency_s"]["last"] = round(latency, 4)
            self.done_times.append(readable)
            lines.append(json.dumps({"frame": frame, "written": written, "readable": readable,
                                     "latency": None if latency is None else round(latency, 6)}))
        self.state["frames_done"] += len(frames)
        self.state["last_frame"] = int(frames[-1])
        self._frames_log.write("\n".join(lines) + "\n")
        self._frames_log.flush()

    def _rates(self) -> None:
        now = time.time()
        recent = [t for t in self.done_times if now - t <= 10.0]
        if len(recent) >= 2:
            span = max(recent[-1] - recent[0], 1e-6)
            self.state["rate_hz"] = round((len(recent) - 1) / span, 3)
        elif not recent:
            self.state["rate_hz"] = 0.0
        lat = list(self.recent)
        self.state["latency_s"].update(p50=_round(percentile(lat, 50)), p95=_round(percentile(lat, 95)),
                                       max=_round(max(lat) if lat else None))

    @_locked
    def summary(self) -> dict[str, Any]:
        """Latency over every frame with a written time, and the mean rate."""
        return {"frames": self.state["frames_done"], "latency_frames": len(self.latencies),
                "latency_p50_s": _round(percentile(self.latencies, 50)),
                "latency_p95_s": _round(percentile(self.latencies, 95)),
                "latency_max_s": _round(max(self.latencies) if self.latencies else None)}

    # -- files ---------------------------------------------------------------------------------
    @_locked
    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written_at < 0.25:
            return
        self._written_at = now
        self._rates()
        self.state["updated"] = now_iso()
        write_atomic(self.folder / LIVE, json.dumps(self.state, default=_jsonable))

    def view_due(self, period: float = 0.5) -> bool:
        return time.monotonic() - self._view_at >= period

    @_locked
    def write_view(self, view: dict[str, Any]) -> None:
        self._view_at = time.monotonic()
        write_atomic(self.folder / VIEW, json.dumps(view, default=_jsonable, separators=(",", ":")))

    def close(self) -> None:
        self._frames_log.close()


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def decimate(values: np.ndarray, points: int) -> np.ndarray:
    """At most ``points`` values of a 1D array (block means), for the live page."""
    values = np.asarray(values, dtype=np.float64)
    if values.size <= points:
        return values
    edges = np.linspace(0, values.size, points + 1).astype(int)
    return np.add.reduceat(values, edges[:-1]) / np.diff(edges)


def to_bytes_image(rows: np.ndarray) -> dict[str, Any]:
    """A small 2D array as 0..255 integers between its 1st and 99.5th percentiles (the page's
    waterfall), with the scale used."""
    rows = np.asarray(rows, dtype=np.float64)
    finite = rows[np.isfinite(rows)]
    if finite.size == 0:
        return {"rows": np.zeros(rows.shape, np.uint8).tolist(), "low": 0.0, "high": 0.0}
    low, high = np.percentile(finite, [1, 99.5])
    scaled = np.clip((rows - low) / (high - low if high > low else 1.0) * 255, 0, 255)
    return {"rows": np.nan_to_num(scaled).astype(np.uint8).tolist(), "low": float(low), "high": float(high)}
