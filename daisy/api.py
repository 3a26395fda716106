"""DAISY from Python: build a pipeline, plan it, run it, open its results.

::

    import daisy
    p = daisy.pipeline("ct", input={"file": "data/scan.h5"}, outdir="results/scan")   # or a dict / a file
    p.plan()                      # the jobs, as `daisy run -n` would run them (daisy.plan.plan)
    result = p.run()              # `daisy run` in a child process, with progress; also on Slurm
    result.volume[64]             # h5py-backed, read lazily
    result.provenance["results"]; result.verify(); result.archive("scan.tar"); result.report()

``run`` starts ``python -m daisy run`` as a child process rather than calling Snakemake in this
one: inside Jupyter an event loop is already running, and Snakemake's API calls
``asyncio.run`` (snakemake#3013), installs signal handlers (main thread only) and keeps
module-level state between runs. A child process has none of these problems, can be cancelled,
and is exactly the command line's run (same resolved config, same provenance).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

PROGRESS = re.compile(r"(\d+) of (\d+) steps \((\d+(?:\.\d+)?)%\) done")
#: the config file ``Pipeline.run`` writes into the outdir and hands ``daisy run``
API_CONFIG = "config.api.yaml"


class RunError(RuntimeError):
    """A pipeline run that failed (the message names the log to read)."""


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if "." in key and key not in out:      # "center.method": "manual"
            head, rest = key.split(".", 1)
            out[head] = _merge(out.get(head) or {}, {rest: value})
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# -- pipelines ----------------------------------------------------------------------------------

class Pipeline:
    """A pipeline config (dict, YAML/JSON file, or the design's init_dict/cfg_dict file) plus
    keyword overrides (nested dicts merge; ``"center.method"`` style keys via :meth:`set`)."""

    def __init__(self, config: dict | str | os.PathLike | None = None, pipeline: str | None = None,
                 **overrides: Any) -> None:
        if config is None:
            raw: dict[str, Any] = {}
            self.source = "keyword arguments"
        elif isinstance(config, dict):
            raw = json.loads(json.dumps(config))   # a deep copy, plain types
            self.source = "config dict"
        else:
            from .workflow import read_config

            raw = read_config(Path(config))
            self.source = str(config)
        if pipeline:
            raw.setdefault("pipeline", pipeline)
        self.pipeline_name = pipeline or raw.get("pipeline")
        self.raw = _merge(raw, overrides)
        self._config: dict | None = None

    def set(self, mapping: dict | None = None, **overrides: Any) -> "Pipeline":
        """Change fields (``p.set({"center.method": "manual", "center.center": 95.5})``)."""
        self.raw = _merge(self.raw, {**(mapping or {}), **overrides})
        self._config = None
        return self

    @property
    def config(self) -> dict[str, Any]:
        """The config validated, every default filled in (what ``daisy run`` resolves)."""
        if self._config is None:
            from . import config as configs

            self._config = configs.validate(self.raw, self.pipeline_name, source=self.source)
        return self._config

    @property
    def outdir(self) -> Path:
        return Path(self.config["outdir"])

    def plan(self) -> "Plan":
        """The jobs of this config, as a dry run shows them (:func:`daisy.plan.plan`; reads the
        input's metadata, needs no image)."""
        from .plan import plan

        return Plan(plan(self.config, source=self.source, pipeline=self.config["pipeline"]))

    def write_config(self) -> Path:
        """The config ``run`` hands ``daisy run``: ``<outdir>/config.api.yaml``."""
        import yaml

        from daisy_steps.fileio import write_text_atomic

        path = self.outdir / API_CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, f"# written by daisy.Pipeline.run from {self.source}\n"
                          + yaml.safe_dump(self.config, sort_keys=False))
        return path

    def run(self, profile: str = "workstation", cores: int | None = None, progress: bool | Callable = True,
            wait: bool = True, extra: list[str] | tuple = (), env: dict | None = None):
        """Run the pipeline with ``daisy run`` (profile ``workstation`` or ``slurm``) in a child
        process; progress as a widget in Jupyter, lines elsewhere, or a callable ``f(done, total,
        line)``. Returns the :class:`Result` (``wait=False``: a :class:`RunHandle`)."""
        path = self.write_config()
        cmd = [sys.executable, "-m", "daisy", "run", self.config["pipeline"], "--config", str(path),
               "--profile", profile]
        if cores:
            cmd += ["--cores", str(cores)]
        if extra:
            cmd += ["--", *extra]
        handle = RunHandle(cmd, self.outdir, progress, env)
        return handle.wait() if wait else handle

    def dry_run(self, profile: str = "workstation") -> str:
        """What ``daisy run -n`` prints for this config (nothing is written)."""
        import tempfile

        import yaml

        with tempfile.TemporaryDirectory(prefix="daisy-api-") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(self.config, sort_keys=False))
            proc = subprocess.run([sys.executable, "-m", "daisy", "run", self.config["pipeline"], "--config",
                                   str(path), "--profile", profile, "-n"], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def __repr__(self) -> str:
        return f"<daisy Pipeline {self.raw.get('pipeline', self.pipeline_name)} -> {self.raw.get('outdir', '(default outdir)')}>"


def pipeline(config: dict | str | os.PathLike | None = None, pipeline: str | None = None, **overrides) -> Pipeline:
    """A :class:`Pipeline`: ``daisy.pipeline("ct", input={"file": ...})``, ``daisy.pipeline({...})``
    or ``daisy.pipeline("my-ct.yaml")`` (a name of a pipeline is taken as such, not as a file)."""
    if isinstance(config, str) and config in ("ct", "xrd", "copy") and pipeline is None:
        return Pipeline(None, config, **overrides)
    return Pipeline(config, pipeline, **overrides)


class Plan:
    """The planned jobs of a config (a :class:`daisy.plan.Run`), shown as a table."""

    def __init__(self, run) -> None:
        self.run = run

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return [{"job": j.name, "stage": j.stage.name, "image": j.image, "steps": [s["step"] for s in j.steps],
                 "threads": j.threads, "mem_mb": j.mem_mb, "runtime_min": j.runtime_min,
                 "inputs": list(j.inputs), "outputs": list(j.outputs.values())} for j in self.run.jobs.values()]

    def __len__(self) -> int:
        return len(self.run.jobs)

    def __repr__(self) -> str:
        lines = [f"{self.run.pipeline} pipeline: {len(self)} jobs -> {self.run.outdir}"]
        for job in self.jobs:
            lines.append(f"  {job['job']:<14} {job['image']:<7} {job['threads']} threads {job['mem_mb']:>6} MB  "
                         + " -> ".join(job["steps"]))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(j['job'])}</td><td>{j['image']}</td><td>{j['threads']}</td>"
                       f"<td>{j['mem_mb']}</td><td>{html.escape(' → '.join(j['steps']))}</td></tr>" for j in self.jobs)
        return (f"<p><b>{self.run.pipeline}</b> pipeline: {len(self)} jobs → <code>{html.escape(str(self.run.outdir))}"
                f"</code></p><table><tr><th>job</th><th>image</th><th>threads</th><th>MB</th><th>steps</th></tr>"
                f"{rows}</table>")


class _Progress:
    """A progress bar in Jupyter (ipywidgets), printed lines elsewhere, or the caller's function."""

    def __init__(self, how: bool | Callable, title: str) -> None:
        self.fn = how if callable(how) else None
        self.bar = self.label = None
        self.quiet = how is False
        self.last = None
        if how is True and _in_kernel():
            try:
                import ipywidgets as widgets
                from IPython.display import display

                self.bar = widgets.IntProgress(value=0, min=0, max=1, description="daisy run")
                self.label = widgets.HTML(html.escape(title))
                display(widgets.VBox([self.bar, self.label]))
            except ImportError:
                pass
        if self.bar is None and not self.quiet and not self.fn:
            print(title, flush=True)

    def update(self, done: int, total: int, line: str) -> None:
        if self.fn:
            self.fn(done, total, line)
        elif self.bar is not None:
            self.bar.max, self.bar.value = max(total, 1), done
            self.label.value = html.escape(f"{done} of {total} steps done")
        elif not self.quiet and (done, total) != self.last:
            print(f"daisy: {done} of {total} steps done", flush=True)
        self.last = (done, total)

    def finish(self, ok: bool, message: str) -> None:
        if self.bar is not None:
            self.bar.bar_style = "success" if ok else "danger"
            self.label.value = html.escape(message)
        elif not self.quiet and not self.fn:
            print(message, flush=True)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class RunHandle:
    """A ``daisy run`` child process: ``done``, ``progress`` (done, total), ``log`` lines,
    :meth:`wait` (the :class:`Result`, or :class:`RunError`), :meth:`cancel`."""

    def __init__(self, cmd: list[str], outdir: Path, progress: bool | Callable, env: dict | None) -> None:
        self.cmd, self.outdir = cmd, Path(outdir)
        self.log: list[str] = []
        self.progress = (0, 0)
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self._ui = _Progress(progress, f"daisy run {cmd[4]} -> {outdir}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, env={**os.environ, **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            match = PROGRESS.search(line)
            if match:
                self.progress = (int(match[1]), int(match[2]))
                self._ui.update(*self.progress, line)
        self.proc.stdout.close()

    @property
    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float | None = None) -> "Result":
        code = self.proc.wait(timeout=timeout)
        self._reader.join()
        self.seconds = time.perf_counter() - self.started
        if code:
            tail = [ln for ln in self.log if ln.startswith("daisy: error")] or self.log[-8:]
            self._ui.finish(False, f"failed (exit {code}) after {self.seconds:.0f} s")
            raise RunError(f"daisy run failed (exit {code}): " + " | ".join(tail))
        self._ui.finish(True, f"done in {self.seconds:.1f} s: {self.outdir}")
        return open_run(self.outdir)

    def cancel(self) -> None:
        """Stop the run (Snakemake cleans up incomplete outputs on SIGTERM)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __repr__(self) -> str:
        state = "running" if not self.done else f"exit {self.proc.returncode}"
        return f"<daisy run {self.cmd[4]}: {state}, {self.progress[0]} of {self.progress[1]} steps>"


# -- results ------------------------------------------------------------------------------------

class Verification:
    """Outputs re-hashed against the provenance: ``ok``, ``checked``, ``changed``, ``missing``."""

    def __init__(self, checked: list[str], changed: list[str], missing: list[str], seconds: float) -> None:
        self.checked, self.changed, self.missing, self.seconds = checked, changed, missing, seconds

    @property
    def ok(self) -> bool:
        return not self.changed and not self.missing

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        if self.ok:
            return f"<verified: {len(self.checked)} outputs match their recorded sha256 ({self.seconds:.2f} s)>"
        return (f"<NOT verified: {len(self.changed)} changed ({', '.join(self.changed[:3])}), "
                f"{len(self.missing)} missing ({', '.join(self.missing[:3])}) of {len(self.checked)}>")


class Patterns:
    """The integrated 1D patterns of an XRD result file, read lazily (h5py)."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        self.name = path.stem
        self.file = h5py.File(path, "r")
        group = self.file["/entry/integrate_1d"]
        unit = group.attrs.get("pyfai_unit", "2th_deg")
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        self.unit = unit
        axis = "two_theta" if unit == "2th_deg" else "q"
        self.radial = group[axis][()]
        self.unit_label = "2θ (deg)" if unit == "2th_deg" else "q (1/nm)"
        self.intensity = group["intensity"]          # (frames, points), not read

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.intensity.shape)

    def mean(self, block: int = 256):
        import numpy as np

        total = np.zeros(self.intensity.shape[1], dtype=np.float64)
        for start in range(0, self.intensity.shape[0], block):
            total += np.asarray(self.intensity[start:start + block], dtype=np.float64).sum(axis=0)
        return total / max(1, self.intensity.shape[0])

    def peaks(self, count: int = 8) -> list[float]:
        """Radial positions of the strongest local maxima of the mean pattern."""
        from .report import find_peaks

        return [p for p, _ in find_peaks(self.radial, self.mean(), count)]

    def close(self) -> None:
        self.file.close()


class Result:
    """A run folder: its provenance, outputs (lazily opened), verification, archive and report."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._provenance: dict | None = None
        self._volume_file = None
        self._patterns: Patterns | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        if self._provenance is None:
            from .provenance import load

            self._provenance = load(self.run_dir)
        return self._provenance

    @property
    def pipeline(self) -> str:
        return self.provenance.get("pipeline")

    @property
    def config(self) -> dict[str, Any]:
        return self.provenance.get("config") or {}

    @property
    def status(self) -> str:
        return self.provenance.get("status", "completed")

    @property
    def results(self) -> dict[str, Any]:
        return self.provenance.get("results") or {}

    @property
    def center(self) -> float | None:
        """The rotation centre the run used (found, or the config's manual one)."""
        for key, value in self.results.items():
            if key.endswith("ct.find_center") and "center" in value:
                return float(value["center"])
        center = (self.config.get("center") or {})
        return float(center["center"]) if center.get("method") == "manual" and center.get("center") is not None else None

    def path(self, recorded: str) -> Path:
        """A path as the provenance names it, made absolute (relative ones: to the run's workdir)."""
        path = Path(recorded)
        return path if path.is_absolute() else Path(self.provenance.get("workdir") or ".") / path

    def output(self, suffix: str) -> Path:
        for recorded in self.provenance.get("outputs") or {}:
            if recorded.endswith(suffix):
                return self.path(recorded)
        raise FileNotFoundError(f"{self.run_dir}: no output ending in {suffix}")

    @property
    def volume(self):
        """The CT volume, ``/entry/data/data`` of ``ct/volume.h5``: an h5py dataset (nothing is
        read until you index it)."""
        if self._volume_file is None:
            import h5py
            import hdf5plugin  # noqa: F401  (bitshuffle/LZ4 volumes)

            self._volume_file = h5py.File(self.run_dir / "ct" / "volume.h5", "r")
        return self._volume_file["/entry/data/data"]

    @property
    def patterns(self) -> Patterns:
        """The XRD result's 1D patterns (``.radial``, ``.intensity`` an h5py dataset, ``.peaks()``)."""
        if self._patterns is None:
            self._patterns = Patterns(self.output("_integrated.h5") if self.pipeline == "xrd" else
                                      self.output(".h5"))
        return self._patterns

    def verify(self, workers: int | None = None) -> Verification:
        """Re-hash every output the provenance lists (no cache: the bytes are read again) and
        compare with the recorded sha256."""
        from concurrent.futures import ThreadPoolExecutor

        from daisy_steps.fileio import sha256_file

        started = time.perf_counter()
        outputs = {p: info.get("sha256") for p, info in (self.provenance.get("outputs") or {}).items()}
        missing = [p for p in outputs if not self.path(p).is_file()]
        present = [p for p in outputs if p not in missing and outputs[p]]
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            digests = dict(zip(present, pool.map(lambda p: sha256_file(self.path(p)), present)))
        changed = [p for p in present if digests[p] != outputs[p]]
        return Verification(sorted(outputs), changed, missing, time.perf_counter() - started)

    def archive(self, out: str | os.PathLike, with_images: bool = False, with_inputs: bool = False,
                quiet: bool = True) -> dict[str, Any]:
        """``daisy archive``: a BagIt tar of the run (:func:`daisy.archive.write_archive`)."""
        from .archive import write_archive

        return write_archive(self.run_dir, Path(out), with_images=with_images, with_inputs=with_inputs,
                             progress=(lambda message: None) if quiet else print)

    def report(self, out: str | os.PathLike | None = None) -> Path:
        """``daisy report``: one self-contained HTML file (default ``<run>/report.html``)."""
        from .report import write_report

        return write_report(self.run_dir, out)

    def show(self):
        """The slice viewer (CT) or the pattern plot (XRD)."""
        from .interactive import widgets

        if self.pipeline == "ct":
            return widgets.slice_viewer(self.volume, title=str(self.run_dir))
        return widgets.pattern_plot(self)

    def close(self) -> None:
        if self._volume_file is not None:
            self._volume_file.close()
            self._volume_file = None
        if self._patterns is not None:
            self._patterns.close()
            self._patterns = None

    def __repr__(self) -> str:
        extra = f", centre {self.center:.2f}" if self.pipeline == "ct" and self.center is not None else ""
        return f"<daisy Result {self.pipeline} [{self.status}] {self.run_dir}{extra}>"

    def _repr_html_(self) -> str:
        prov = self.provenance
        images = ", ".join(f"{n} <code>{(i.get('image_sha256') or '')[:12]}</code>" for n, i in (prov.get("images") or {}).items())
        extra = f"; centre {self.center:.2f} px" if self.pipeline == "ct" and self.center is not None else ""
        return (f"<p><b>{html.escape(str(self.pipeline))}</b> run <code>{html.escape(str(self.run_dir))}</code> "
                f"[{html.escape(self.status)}]: {len(prov.get('jobs') or {})} jobs, {len(prov.get('outputs') or {})} "
                f"outputs{extra}; images {images}</p>")


def open_run(run_dir: str | os.PathLike) -> Result:
    """The :class:`Result` of a run folder (one with a provenance.json)."""
    result = Result(run_dir)
    result.provenance  # noqa: B018 (fail now if it is not a run folder)
    return result
