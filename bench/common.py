"""Shared benchmark plumbing: machine facts, alternating timed runs, medians, the results table.

Benchmarks compare DAISY (A) with what a user would write instead (B) on the same data in one
run, alternating A and B, and report the ratio: absolute times are noisy on shared machines.
Each run appends a row to docs/benchmarks.md and writes bench/results/<name>.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# a benchmark's `daisy run` s import Snakemake themselves unless it asks for the warm server
# (DaisyServer: ct_vs_tomopy.py), which it then also stops
os.environ.setdefault("DAISY_SERVER", "0")
#: The reference scripts (the B side: what a user would write instead of DAISY), shared with the tests.
REFERENCE = REPO / "tests" / "reference"
TABLE = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
HEADER = ("| date | benchmark | size | DAISY (A) | direct (B) | A/B or A−B | target | met | machine |\n"
          "|---|---|---|---|---|---|---|---|---|\n")


def machine() -> dict:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    except OSError:
        pass
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    apptainer = shutil.which("apptainer")
    version = subprocess.run([apptainer, "--version"], capture_output=True, text=True).stdout.strip() if apptainer else None
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else None
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "cpu": cpu, "debian": debian,
            "apptainer": version, "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int = 3) -> tuple[list[float], list[float]]:
    """Run A, B, A, B, ... ``repeats`` times each; return both lists of seconds. Before each run
    (untimed) the file systems are synced: a run does not start while the kernel still writes the
    previous one's output back (4 GiB for a full-size CT volume), which would slow whichever side
    comes next (the page cache, and the inputs in it, stay)."""
    times_a, times_b = [], []
    for i in range(repeats):
        os.sync()
        times_a.append(timed(a))
        os.sync()
        times_b.append(timed(b))
        print(f"  run {i + 1}/{repeats}: A {times_a[-1]:.3f} s, B {times_b[-1]:.3f} s", flush=True)
    return times_a, times_b


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def report(name: str, size: str, a: list[float] | float, b: list[float] | float, *, mode: str = "ratio",
           target: str = "", met: bool | None = None, unit: str = "s", extra: dict | None = None,
           record: bool = True) -> dict:
    """Print the two figures and their ratio (or difference); append to docs/benchmarks.md."""
    med_a = statistics.median(a) if isinstance(a, list) else a
    med_b = statistics.median(b) if isinstance(b, list) else b
    value = med_a / med_b if mode == "ratio" else med_a - med_b
    facts = machine()
    result = {"benchmark": name, "size": size, "a_median": med_a, "b_median": med_b, mode: value,
              "a_runs": a, "b_runs": b, "target": target, "met": met, "unit": unit, "machine": facts,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {})}
    shown = f"{value:.3f}" if mode == "ratio" else f"{value:+.3f} {unit}"
    print(f"{name} [{size}]: DAISY {med_a:.3f} {unit}, direct {med_b:.3f} {unit}, "
          f"{'ratio' if mode == 'ratio' else 'difference'} {shown} (target {target or 'report'})"
          f"{'' if met is None else ' MET' if met else ' MISSED'}; machine: {facts['cores']} cores, {facts['memory_gib']} GiB, "
          f"load average {facts['load_avg'][0]:.2f}")
    if record and not os.environ.get("DAISY_BENCH_NO_RECORD"):
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        if not TABLE.exists() or "| date |" not in TABLE.read_text():
            TABLE.parent.mkdir(parents=True, exist_ok=True)
            old = TABLE.read_text() if TABLE.exists() else "# Benchmarks\n\n"
            TABLE.write_text(old.rstrip("\n") + "\n\n" + HEADER)
        machine_text = (f"{facts['cores']} cores, {facts['memory_gib']} GiB, Debian {facts['debian']}, "
                        f"load {facts['load_avg'][0]:.1f}")
        row = (f"| {result['date'][:16]} | {name} | {size} | {med_a:.3f} {unit} | {med_b:.3f} {unit} | {shown} | "
               f"{target or 'report'} | {'' if met is None else 'yes' if met else 'no'} | {machine_text} |\n")
        with TABLE.open("a") as handle:
            handle.write(row)
    return result


class DaisyServer:
    """``with DaisyServer(on):`` the A side's ``daisy run`` s go through a warm DAISY server (as a
    user's do once an earlier run started it: ``daisy/server.py``) or, off, each imports Snakemake
    itself. A server this started is stopped at the end, and waited for."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.started: int | None = None

    def __enter__(self) -> "DaisyServer":
        from daisy import server

        os.environ[server.SERVER_ENV] = "1" if self.on else "0"
        if self.on and server.request(server.socket_path(), {}) is None:
            server.start(server.socket_path())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                reply = server.request(server.socket_path(), {})
                if reply:
                    self.started = reply["pid"]
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("the DAISY server did not start")
        return self

    def __exit__(self, *exc) -> None:
        from daisy import server

        if self.started is not None:
            server.request(server.socket_path(), {"stop": True})
            deadline = time.monotonic() + 30
            while Path(f"/proc/{self.started}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)


def daisy_runner(pipeline: str, config: Path, outdir: Path, cores: int, cwd: Path, snakemake_args: str = ""):
    """The A side for :func:`alternate`: ``(run_once, stamps)``; each run empties ``outdir`` (a
    first run, not a rerun) and times ``daisy run PIPELINE`` into ``stamps["start"]``/``["end"]``."""
    import shutil

    stamps: dict[str, float] = {}
    extra = ["--", *snakemake_args.split()] if snakemake_args else []

    def run_once():
        shutil.rmtree(outdir, ignore_errors=True)
        stamps["start"] = time.time()
        run([daisy_python(), "-m", "daisy", "run", pipeline, "--config", config, "--cores", cores, *extra], cwd=cwd)
        stamps["end"] = time.time()

    return run_once, stamps


def json_runner(cmd, before=None):
    """A B side for :func:`alternate`: ``(run_once, results)``; each run calls ``before()``, runs
    ``cmd`` and appends the JSON object its last stdout line prints (the direct scripts' timing)."""
    results: list = []

    def run_once():
        if before is not None:
            before()
        proc = run(cmd)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    return run_once, results


def first_slab_job(run) -> str:
    """The name of a CT plan's first reconstructing job: ``ct_slab_0000``, or ``ct_volume`` when
    the slabs fit one job (which gathers too)."""
    return next(n for n in run.jobs if n.startswith("ct_slab_") or n == "ct_volume")


def slab_job(run, center: float, name: str | None = None) -> tuple[dict, tuple[int, int]]:
    """The job document of a planned CT slab job (default: :func:`first_slab_job`), made to run
    alone (the centre given as a parameter instead of the centre job's file), and its detector
    rows (start, stop)."""
    doc = run.job_document(name or first_slab_job(run))
    for st in doc["steps"]:
        if st["step"] == "ct.recon":
            st["inputs"] = {}
            st["params"] = {**st["params"], "center": center}
    load = next(st for st in doc["steps"] if st["step"] == "ct.load")
    return doc, (load["params"]["row_start"], load["params"]["row_stop"])


def daisy_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def bench_data_dir() -> Path:
    """Where big generated data lives (outside the repository): $DAISY_BENCH_DATA or /work/bench-data."""
    path = Path(os.environ.get("DAISY_BENCH_DATA", "/work/bench-data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def median(values: list[float]) -> float:
    return statistics.median(values)
