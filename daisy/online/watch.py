"""``daisy watch xrd|ct --config C``: follow a scan while it is written, in the pinned image.

The host side of a watch run. It reads and validates the config (an ``online:`` section, if
present, holds the watch options; the command line overrides them), writes a watch job (the
offline pipeline's step chain for this config, plus the ``online`` options, every path absolute),
verifies the image's sha256 and starts ``python3 -m daisy_steps.online PIPELINE --job JOB`` in it
with the pipelines' isolation (``daisy.images.exec_argv``: the input folders read-only, the watch
folder ``<outdir>/online`` read-write, the step code at /opt/daisy). While it runs: the live page
(:mod:`daisy.online.server`) and a progress line on the terminal. When it ends: the watch run's
provenance (``provenance.json`` + RO-Crate in the watch folder: a run whose plan has one job,
``xrd_watch`` or ``ct_watch``) and, with ``--then-run``, the offline pipeline on the same config.

A second ``daisy watch`` on the same outdir is refused while one runs; after one was stopped or
killed, running it again resumes after the last frame done.
"""

from __future__ import annotations

import copy
import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daisy_steps.errors import StepError
from daisy_steps.fileio import FileRef

WATCH_FOLDER = "online"
EXIT_STOPPED = 3
#: the ``online:`` options of a config (and their command-line names)
OPTIONS = {
    "expected": "frames the scan will have (default: the Eiger master's nimages, CT: the angle count)",
    "end_marker": "a file whose appearance ends the scan (default: <input>.done)",
    "idle_timeout": "end the scan when no new frame came for this long, seconds (default 60)",
    "frame_timeout": "skip a frame that stays unreadable this long while later ones arrive, seconds (default 10)",
    "written_log": "the writer's per-frame 'fully written' times (default: <input dir>/<scan>_written.jsonl)",
    "pattern": "glob of the image files when the input is a folder (default *)",
    "max_batch": "frames integrated together when the watcher is behind (default 4)",
    "quicklook_rows": "CT: detector rows kept for the quick-look's vertical slices (default 32)",
    "port": "live page port on 127.0.0.1 (0: any free port; default 8765)",
    "host": "live page address (default 127.0.0.1)",
}


class WatchError(StepError):
    pass


def scan_name(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.stem.removesuffix("_master") if p.suffix else p.name


def _abs(text: str | None) -> str | None:
    if not text:
        return text
    ref = FileRef.parse(text)
    path = str(Path(ref.path).resolve())
    return f"{path}:{ref.dataset}" if ref.dataset else path


def split_config(raw: dict[str, Any], overrides: dict[str, Any], pipeline: str, source: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated pipeline config and the watch options (config ``online:`` + overrides)."""
    from .. import config as configs

    raw = copy.deepcopy(raw)
    options = dict(raw.pop("online", None) or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise WatchError(f"{source}: unknown field(s) online.{', online.'.join(unknown)} "
                         f"(known: {', '.join(OPTIONS)})")
    options.update({k: v for k, v in overrides.items() if v is not None})
    cfg = configs.validate(raw, pipeline, source=source)
    return cfg, options


def xrd_steps(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The offline block job's chain for this config (daisy/pipelines/xrd.py), without its
    frame range split and without xrd.save_block: the watcher appends to the result file."""
    inp, mask = cfg["input"], cfg["mask"]
    integrate = copy.deepcopy(cfg["integrate"])
    if integrate.get("geometry", {}).get("poni"):
        integrate["geometry"]["poni"] = _abs(integrate["geometry"]["poni"])
    source = f"{_abs(inp['file'])}:{inp['dataset']}" if inp["dataset"] else _abs(inp["file"])
    return [
        {"step": "xrd.load_frames", "inputs": {"source": source},
         "params": {"format": inp["format"], "start": inp["start"], "stop": inp["stop"], "batch_frames": inp["batch_frames"]}},
        {"step": "xrd.mask", "params": {k: v for k, v in mask.items() if k != "file"},
         "inputs": {"user_mask": _abs(mask["file"])} if mask["file"] else {}},
        {"step": "xrd.integrate", "params": integrate, "inputs": {k: _abs(inp[k]) for k in ("dark", "flat") if inp[k]}},
    ]


def ct_steps(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The offline centre job's chain (daisy/pipelines/ct.py) plus ct.recon for the quick-look."""
    from ..pipelines.ct import LOAD_KEYS, _prepare

    params = {k: cfg["input"][k] for k in LOAD_KEYS}
    manual = cfg["center"]["method"] == "manual"
    recon = {**cfg["recon"], "center": cfg["center"]["center"] if manual else None}
    return [{"step": "ct.load", "inputs": {"raw": _abs(cfg["input"]["file"])}, "params": params},
            *_prepare(cfg),
            {"step": "ct.find_center", "params": cfg["center"]},
            {"step": "ct.recon", "params": recon}]


def watch_job(pipeline: str, cfg: dict[str, Any], options: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The watch job document (a pipeline job file plus ``online``)."""
    from daisy_steps.core import JOB_VERSION
    from daisy_steps.pin import code_sha256

    from .. import images

    image = "pyfai" if pipeline == "xrd" else "tomopy"
    entry = images.load_lock().get("images", {}).get(image, {})
    source = cfg["input"]["file"]
    src = Path(source).resolve()
    scan = scan_name(str(src))
    online = {k: v for k, v in options.items() if k not in ("port", "host") and v is not None}
    online.setdefault("end_marker", str(src) + ".done")
    online.setdefault("written_log", str(src.parent / f"{scan}_written.jsonl"))
    online["end_marker"] = str(Path(online["end_marker"]).resolve())
    online["written_log"] = str(Path(online["written_log"]).resolve())
    online.update(folder=str(folder.resolve()), source=str(src) + (f":{cfg['input']['dataset']}"
                  if pipeline == "xrd" and cfg["input"].get("dataset") else ""), scan=scan,
                  compression=cfg["save"]["compression"])
    steps = xrd_steps(cfg) if pipeline == "xrd" else ct_steps(cfg)
    name = f"{pipeline}_watch"
    return {"job_version": JOB_VERSION, "job": name, "threads": cfg["threads"], "code_sha256": code_sha256(),
            "image": {"name": image, "version": entry.get("version"), "sha256": entry.get("image_sha256")},
            "steps": steps, "online": online,
            "record": str((folder / "records" / f"{name}.json").resolve())}


def bind_folders(job: dict[str, Any]) -> list[Path]:
    """The folders the watcher reads (bound read-only): the scan's, the PONI's, masks', ..."""
    paths = [job["online"]["source"].split(":", 1)[0], job["online"]["end_marker"], job["online"]["written_log"]]
    for entry in job["steps"]:
        paths += [FileRef.parse(v).path for v in entry.get("inputs", {}).values()]
        poni = entry.get("params", {}).get("geometry", {}).get("poni") if entry["step"] == "xrd.integrate" else None
        if poni:
            paths.append(poni)
    folders = []
    for p in paths:
        folder = Path(p).resolve().parent
        if folder not in folders:
            folders.append(folder)
    return folders


class Progress:
    """The terminal line: frames done, rate, latency, what the watcher waits for."""

    def __init__(self, stream=sys.stderr, quiet: bool = False) -> None:
        self.stream, self.quiet = stream, quiet
        self.tty = stream.isatty()
        self.last = ""
        self.printed = 0.0

    def show(self, state: dict[str, Any]) -> None:
        if self.quiet or not state:
            return
        lat = state.get("latency_s") or {}
        expected = state.get("frames_expected")
        done = state.get("frames_done", 0)
        what = "projections" if state.get("pipeline") == "ct" else "frames"
        parts = [f"{state.get('status', '?')}: {done}{'/' + str(expected) if expected else ''} {what}"]
        if state.get("rate_hz") is not None:
            parts.append(f"{state['rate_hz']:.1f} Hz")
        if lat.get("p50") is not None:
            parts.append(f"latency p50 {lat['p50']:.3f} s p95 {lat['p95']:.3f} s")
        if state.get("center") is not None:
            parts.append(f"centre {state['center']:.2f} px")
        if state.get("skipped"):
            parts.append(f"{len(state['skipped'])} skipped")
        if state.get("warnings"):
            parts.append(f"warning: {state['warnings'][-1]['message'][:80]}")
        line = "daisy watch: " + ", ".join(parts)
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(len(self.last[:160])))
            self.stream.flush()
        elif line != self.last and now - self.printed > 5:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.printed = now
        self.last = line

    def done(self) -> None:
        if self.tty and self.last and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def read_live(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "live.json").read_text())
    except (OSError, ValueError):
        return {}


def make_run(pipeline: str, cfg: dict[str, Any], job: dict[str, Any], folder: Path, record: dict[str, Any] | None):
    """The watch run as a :class:`daisy.plan.Run` with a plan of one job (for the provenance)."""
    from daisy_steps.pin import code_sha256

    from ..plan import Job, Run, Stage

    run = Run(config=cfg, pipeline=pipeline, outdir=folder, code_sha256=code_sha256(), engine="daisy watch")
    name = job["job"]
    stage = Stage(pipeline, name, job["image"]["name"], tuple(e["step"] for e in job["steps"]),
                  doc=f"daisy watch: the {pipeline} chain run on each frame as it lands "
                      f"(the first step played by a follower of the growing scan)")
    outputs = {}
    for i, path in enumerate(sorted((record or {}).get("outputs", {}))):
        outputs[Path(path).stem if i == 0 else f"output_{i}"] = str(Path(path).relative_to(folder.resolve())) \
            if Path(path).is_relative_to(folder.resolve()) else path
    run.add_stage(stage, outputs)
    inputs = sorted((record or {}).get("inputs", {}))
    run.jobs[name] = Job(name, stage, job["steps"], inputs, {s: run.output(name, s) for s in outputs},
                         threads=job["threads"])
    run.inputs = inputs
    return run


def write_provenance(pipeline, cfg, job, folder: Path, status: str, error: str | None = None) -> Path:
    from .. import provenance
    from ..provenance import read_record
    from ..workflow import RESOLVED_CONFIG, write_resolved_config

    record = read_record(job["record"])
    run = make_run(pipeline, cfg, job, folder, record)
    write_resolved_config(cfg, folder / RESOLVED_CONFIG, source=Path(job["record"]))
    provenance.write(run, status=status, error=error)
    return Path(run.provenance_file())


def watch(pipeline: str, config: Path, overrides: dict[str, Any] | None = None, then_run: bool = False,
          view: bool = True, quiet: bool = False, profile: str = "workstation", stream=sys.stderr,
          on_url=None) -> int:
    """Run a watch; returns the exit status (0 done, 3 stopped before the scan ended)."""
    from .. import images
    from ..workflow import read_config

    raw = read_config(config)
    cfg, options = split_config(raw, overrides or {}, pipeline, str(config))
    outdir = Path(cfg["outdir"])
    folder = outdir / WATCH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / ".watch.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WatchError(f"another daisy watch is following a scan into {folder}") from None
    job = watch_job(pipeline, cfg, options, folder)
    job_path = folder / "jobs" / f"{job['job']}.json"
    from ..workflow import write_job

    write_job(str(job_path), job)
    image = job["image"]["name"]
    images.verify_image(image)
    source = Path(job["online"]["source"].split(":", 1)[0])
    progress = Progress(stream, quiet)
    while not source.parent.is_dir():   # a bind needs the folder: wait for the scan's folder
        progress.show({"status": "waiting", "frames_done": 0, "pipeline": pipeline,
                       "warnings": [{"message": f"waiting for {source.parent}"}]})
        time.sleep(0.5)
    argv = ["python3", "-m", "daisy_steps.online", pipeline, "--job", str(job_path.resolve()), "--quiet"]
    cmd = images.exec_argv(image, argv, binds_ro=bind_folders(job), binds_rw=[folder])
    server = None
    if view:
        from .server import LiveServer

        server = LiveServer(folder, pipeline, host=options.get("host") or "127.0.0.1",
                            port=int(options.get("port", 8765) if options.get("port") is not None else 8765))
        url = server.start()
        if on_url:
            on_url(url)
        if not quiet:
            stream.write(f"daisy watch: live view {url}  (watch folder {folder})\n")
            stream.flush()
    (folder / "logs").mkdir(exist_ok=True)
    log = open(folder / "logs" / f"{job['job']}.log", "a")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        try:
            proc.stdin.close()      # the watcher stops after its current frame
        except OSError:
            pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None:
            progress.show(read_live(folder))
            time.sleep(0.5)
            if stopping["signal"] is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.terminate()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        state = read_live(folder)
        progress.show(state)
        progress.done()
        if server is not None:
            server.stop()
        log.close()
    rc = proc.returncode
    state = read_live(folder)
    if rc == EXIT_STOPPED or state.get("status") == "stopped":
        stream.write(f"daisy watch: stopped; run the same command again to resume ({state.get('frames_done', 0)} "
                     f"frames done)\n")
        return EXIT_STOPPED
    if rc != 0:
        tail = (folder / "logs" / f"{job['job']}.log").read_text(errors="replace").splitlines()[-8:]
        err = " | ".join(ln for ln in tail if "error" in ln.lower() or "Error" in ln) or " | ".join(tail[-3:])
        write_provenance(pipeline, cfg, job, folder, "failed", error=f"watcher exit {rc}: {err}")
        raise WatchError(f"the {pipeline} watcher failed (exit {rc}): {err}; log {folder / 'logs'}")
    prov = write_provenance(pipeline, cfg, job, folder, "completed")
    summary = state.get("summary") or {}
    if not quiet:
        lat = ""
        if summary.get("latency_p50_s") is not None:
            lat = f", latency p50 {summary['latency_p50_s']:.3f} s p95 {summary['latency_p95_s']:.3f} s"
        stream.write(f"daisy watch: {state.get('message', 'done')}{lat}\n"
                     f"daisy watch: results in {folder}; provenance {prov}\n")
        stream.flush()
    if then_run:
        if not state.get("complete", False):
            stream.write("daisy watch: the scan is incomplete (see the warnings): not starting the offline pipeline\n")
            return 4
        from ..cli import run_pipeline

        offline = folder / "config.offline.yaml"
        import yaml

        offline.write_text("# the watched config, for the offline pipeline (daisy watch --then-run)\n"
                           + yaml.safe_dump(cfg, sort_keys=False))
        return run_pipeline(pipeline, offline, profile=profile)
    return 0
