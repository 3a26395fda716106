#!/usr/bin/env python3
"""Online latency: from "frame fully written" to "pattern readable in the result file".

XRD: Eiger 4M frames (``--binning 1``; bitshuffle/LZ4, as sample.xrd_eiger makes them) are
generated once in the pyfai image, then written by ``daisy.online.simulate.play_xrd`` at
``--rate`` Hz for ``--seconds`` while ``daisy watch xrd`` follows them. Two latencies per frame:

- *watcher*: the writer's "fully written" time (its side file) to the watcher's flush of the
  result file with the frame (``frames.jsonl``);
- *reader*: the same start to the moment an independent SWMR reader in this process (polling the
  result file every 10 ms) sees the frame's row complete: what another program would see.

``--rates 10,15,20`` runs one scan per rate and reports the highest rate whose backlog does not
grow (latency p95 below 1 s and the last quarter's p50 within 2x of the first quarter's).
``--ct``: a phantom scan (or, ``--ct-source``, an existing raw scan replayed frame by frame)
written at ``--ct-rate`` Hz (0: as fast as the writer can) and watched; the quick-look delay after
the last projection, where that time went, and its centre against the offline pipeline's
(``daisy run ct``; ``--ct-offline center``: only its centre job).

    python3 bench/online_latency.py --rate 10 --seconds 60            # the figures for the lead
    python3 bench/online_latency.py --rates 10,15,20 --seconds 20 --ct
    python3 bench/online_latency.py --no-xrd --ct --ct-source /work/bench-data/ct-1500x1024x1024.h5 \
        --ct-rate 0 --ct-offline center                                # CT at full size
Prints a table and writes ``<workdir>/online_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


def pct(values, q):
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 4) if values else None


class SWMRReader(threading.Thread):
    """Polls the growing result file; records when each frame's row is first complete."""

    def __init__(self, path: Path, frames: int, period: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.path, self.frames, self.period = path, frames, period
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import h5py

        handle = None
        while not self.stop.is_set() and len(self.seen) < self.frames:
            try:
                if handle is None:
                    if not self.path.exists():
                        time.sleep(self.period)
                        continue
                    handle = h5py.File(self.path, "r", swmr=True, locking=False)
                    dset = handle["/entry/integrate_1d/frame"]
                dset.refresh()
                n = dset.shape[0]
                if n > len(self.seen):
                    now = time.time()
                    for frame in dset[len(self.seen):n]:
                        if frame < 0:
                            break
                        self.seen.setdefault(int(frame), now)
            except (OSError, KeyError):
                if handle is not None:
                    handle.close()
                handle = None
            time.sleep(self.period)
        if handle is not None:
            handle.close()


def run_xrd(work: Path, source: dict, rate: float, frames: int, frames_per_file: int, threads: int) -> dict:
    from daisy.online import simulate

    out = work / f"scan-{rate:g}hz"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    data = out / "data"
    data.mkdir(parents=True)
    scan = "scan_00001"
    cfg = simulate.xrd_config(data, scan, "eiger", str(out / "results"), threads=threads)
    simulate.write_config(data / f"{scan}.yaml", cfg)
    folder = out / "results" / "online"
    watch = subprocess.Popen([PY, "-m", "daisy.online.cli", "watch", "xrd", "--config", str(data / f"{scan}.yaml"),
                              "--no-view", "--quiet", "--idle-timeout", "60"], cwd=out,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (folder / "live.json").exists():   # the watcher is up and waiting for the scan
        if time.monotonic() > deadline or watch.poll() is not None:
            raise SystemExit(f"watcher did not start: {watch.stdout.read() if watch.poll() is not None else ''}")
        time.sleep(0.1)
    reader = SWMRReader(folder / f"{scan}_integrated.h5", frames)
    reader.start()
    setup = {}

    def armed() -> None:
        """The master is written (the detector is armed): start the exposure once the watcher is
        set up (integrator built), as a beamline would before opening the shutter."""
        clock = time.monotonic()
        while json.loads((folder / "live.json").read_text() or "{}").get("status") != "running":
            if time.monotonic() - clock > 300:
                raise SystemExit("the watcher did not get ready")
            time.sleep(0.05)
        setup["seconds"] = round(time.monotonic() - clock, 2)

    started = time.time()
    simulate.play_xrd(source, data, scan, frames, rate, frames_per_file, progress=None, ready=armed)
    played = time.time() - started
    out_text, _ = watch.communicate(timeout=600)
    reader.stop.set()
    reader.join(timeout=5)
    if watch.returncode:
        raise SystemExit(f"watch failed: {out_text[-2000:]}")
    written = {}
    for line in (data / f"{scan}_written.jsonl").read_text().splitlines():
        item = json.loads(line)
        written[item["frame"]] = item["t"]
    done = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
    watcher = [d["latency"] for d in done]
    reader_lat = [reader.seen[k] - written[k] for k in sorted(reader.seen) if k in written]
    quarter = max(1, len(watcher) // 4)
    late = json.loads(Path(str(data / f"{scan}_master.h5") + ".done").read_text()).get("late", 0)
    return {"rate_hz": rate, "frames": frames, "seconds_played": round(played, 2),
            "watcher_setup_s": setup.get("seconds"), "frames_done": len(done),
            "writer_late_frames": late, "reader_frames_seen": len(reader.seen),
            "watcher_p50_s": pct(watcher, 50), "watcher_p95_s": pct(watcher, 95), "watcher_max_s": pct(watcher, 100),
            "reader_p50_s": pct(reader_lat, 50), "reader_p95_s": pct(reader_lat, 95),
            "first_quarter_p50_s": pct(watcher[:quarter], 50), "last_quarter_p50_s": pct(watcher[-quarter:], 50)}


def sustained(row: dict) -> bool:
    return (row["frames_done"] == row["frames"] and row["watcher_p95_s"] is not None and row["watcher_p95_s"] < 1.0
            and row["last_quarter_p50_s"] <= 2 * max(row["first_quarter_p50_s"], 0.05))


def run_ct(work: Path, size: int, angles: int, rate: float, source: str | None = None,
           offline_target: str = "full") -> dict:
    from daisy.online import simulate

    out = work / "ct"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    data = out / "data"
    if source:   # replay an existing raw scan (bench/make_ct_data.py's full-size one)
        import h5py

        with h5py.File(source, "r") as handle:
            angles, size = int(handle["/exchange/data"].shape[0]), list(handle["/exchange/data"].shape[1:])
        source = Path(source)
    else:
        source = simulate.generate_ct(work / "stage-ct", size, angles, seed=0)
    scan = "ct_00001"
    data.mkdir(parents=True)
    simulate.write_config(data / f"{scan}.yaml", simulate.ct_config(data, scan, str(out / "results")))
    folder = out / "results" / "online"
    watch = subprocess.Popen([PY, "-m", "daisy.online.cli", "watch", "ct", "--config", str(data / f"{scan}.yaml"),
                              "--no-view", "--quiet", "--idle-timeout", "60"], cwd=out,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (folder / "live.json").exists():
        time.sleep(0.1)
    load_before = os.getloadavg()
    started = time.time()
    simulate.play_ct(source, data, scan, rate)
    played = time.time() - started
    text, _ = watch.communicate(timeout=600)
    if watch.returncode:
        raise SystemExit(f"watch ct failed: {text[-2000:]}")
    load_after = os.getloadavg()
    quick = json.loads((folder / "quicklook" / "quicklook.json").read_text())
    center_file = out / "results" / "ct" / "center.json"
    started = time.monotonic()
    # "center": only the offline centre job (its ct/center.json), not the whole volume
    target = ["--", "--until", "ct_center", "--printshellcmds"] if offline_target == "center" else []
    proc = None
    if offline_target != "none":
        proc = subprocess.run([PY, "-m", "daisy", "run", "ct", "--config", str(data / f"{scan}.yaml"), *target],
                              cwd=out, capture_output=True, text=True)
    offline_seconds = time.monotonic() - started
    offline = json.loads(center_file.read_text())["center"] if center_file.exists() else None
    if offline is None and proc is not None:
        print(f"  offline run failed: {(proc.stdout + proc.stderr)[-1500:]}", flush=True)
    import h5py

    with h5py.File(data / f"{scan}.h5", "r") as handle:
        truth = float(handle["truth"].attrs["center"]) if "truth" in handle else None
    return {"size": size, "angles": angles, "rate_hz": rate, "source": str(source), "seconds_played": round(played, 1),
            "writer_rate_hz": round(angles / played, 1), "quicklook_delay_s": quick["seconds_after_last"],
            "reconstruct_s": quick["seconds_reconstructing"], "after_last_s": quick.get("timings"),
            "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
            "center_online": quick["center"], "center_first": quick.get("first", {}).get("center"),
            "center_first_method": quick.get("first", {}).get("method"),
            "final_quicklook_s": quick.get("final", {}).get("seconds_after_last"),
            "center_offline": offline, "center_true": truth,
            "center_estimates": [{k: e[k] for k in ("projections", "center")} for e in quick["center_estimates"]],
            "offline_pipeline_s": round(offline_seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/daisy-online-bench")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--rates", help="comma-separated rates: find the highest sustained one")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each scan at its rate")
    parser.add_argument("--binning", type=int, default=1, help="1: full Eiger 4M frames")
    parser.add_argument("--unique", type=int, default=20, help="distinct frames generated (then repeated)")
    parser.add_argument("--frames-per-file", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ct", action="store_true", help="also the CT quick-look")
    parser.add_argument("--ct-size", type=int, default=128)
    parser.add_argument("--ct-angles", type=int, default=361)
    parser.add_argument("--ct-rate", type=float, default=50.0, help="0: as fast as the writer can")
    parser.add_argument("--ct-source", help="replay this Data Exchange raw scan instead of a phantom "
                                            "(e.g. /work/bench-data/ct-1500x1024x1024.h5 from bench/make_ct_data.py)")
    parser.add_argument("--ct-offline", choices=("full", "center", "none"), default="full",
                        help="the offline run compared with: the whole pipeline, only its centre job, or none")
    parser.add_argument("--ct-repeat", type=int, default=1, help="CT scans watched (the offline run after the first)")
    parser.add_argument("--no-xrd", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"host_cpus": os.cpu_count(), "binning": args.binning, "seconds": args.seconds}
    if not args.no_xrd:
        from daisy.online import simulate

        print(f"generating {args.unique} Eiger frames (binning {args.binning}) in the pyfai image ...", flush=True)
        source = simulate.generate_xrd(work / "stage-xrd", args.unique, args.binning, seed=0)
        rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
        rows = []
        for rate in rates:
            frames = max(4, int(round(rate * args.seconds)))
            print(f"XRD: {frames} frames at {rate:g} Hz ...", flush=True)
            row = run_xrd(work, source, rate, frames, args.frames_per_file, args.threads)
            row["sustained"] = sustained(row)
            rows.append(row)
            print("  " + json.dumps(row), flush=True)
        report["xrd"] = rows
        ok = [r["rate_hz"] for r in rows if r["sustained"]]
        report["highest_sustained_rate_hz"] = max(ok) if ok else None
    if args.ct:
        what = args.ct_source or f"{args.ct_angles} projections of a {args.ct_size}^3 phantom"
        print(f"CT: {what} at {args.ct_rate:g} Hz ...", flush=True)
        runs = []
        for i in range(args.ct_repeat):   # the offline centre once: it does not change
            runs.append(run_ct(work, args.ct_size, args.ct_angles, args.ct_rate, args.ct_source,
                               args.ct_offline if i == 0 else "none"))
            print("  " + json.dumps(runs[-1]), flush=True)
        report["ct"] = {**runs[0], "runs": len(runs), "quicklook_delays_s": [r["quicklook_delay_s"] for r in runs],
                        "quicklook_delay_p50_s": pct([r["quicklook_delay_s"] for r in runs], 50),
                        "writer_rates_hz": [r["writer_rate_hz"] for r in runs],
                        "centers_online": [r["center_online"] for r in runs],
                        "centers_first": [r["center_first"] for r in runs]}
    (work / "online_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {work / 'online_latency.json'}")
    for row in report.get("xrd", []):
        print(f"XRD {row['rate_hz']:5.1f} Hz, {row['frames']} frames: watcher p50 {row['watcher_p50_s']} s "
              f"p95 {row['watcher_p95_s']} s; SWMR reader p50 {row['reader_p50_s']} s p95 {row['reader_p95_s']} s; "
              f"{'sustained' if row['sustained'] else 'NOT sustained'}")
    if "ct" in report:
        c = report["ct"]
        print(f"CT quick-look {c['quicklook_delays_s']} s after the last projection (p50 {c['quicklook_delay_p50_s']} s; "
              f"writer {c['writer_rates_hz']} Hz); centre first {c['centers_first']}, online (offline chain) "
              f"{c['centers_online']}, offline {c['center_offline']}, true {c['center_true']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
