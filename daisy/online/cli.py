"""``daisy watch`` and ``daisy simulate``: the online mode's commands (``register_cli``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register_cli(subparsers) -> None:
    """Add ``watch`` and ``simulate`` to the ``daisy`` command's subparsers."""
    p = subparsers.add_parser(
        "watch", help="follow a scan while it is written: integrate / reconstruct each frame as it lands",
        description="Follow a scan while the detector writes it, in the same pinned image as the offline "
                    "pipeline; results grow in <outdir>/online/, a live page shows them. Options may also "
                    "be given in the config's 'online:' section.")
    p.add_argument("pipeline", choices=("xrd", "ct"))
    p.add_argument("--config", required=True, help="the pipeline config (the same as for daisy run)")
    p.add_argument("--frames", type=int, dest="expected", help="frames the scan will have (ends the scan when reached)")
    p.add_argument("--end-marker", help="file whose appearance ends the scan (default: <input>.done)")
    p.add_argument("--idle-timeout", type=float, help="end the scan after this long without a new frame, s (default 60)")
    p.add_argument("--frame-timeout", type=float, help="skip a frame unreadable this long while later ones land, s (default 10)")
    p.add_argument("--written-log", help="the writer's per-frame 'fully written' times, for the latency")
    p.add_argument("--pattern", help="glob of image files when the input is a folder (default *)")
    p.add_argument("--port", type=int, help="live page port (default 8765; 0: any free port)")
    p.add_argument("--host", help="live page address (default 127.0.0.1)")
    p.add_argument("--no-view", action="store_true", help="no live page")
    p.add_argument("--then-run", action="store_true", help="when the scan is complete, run the offline pipeline")
    p.add_argument("--profile", default="workstation", help="profile of the offline run (--then-run)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_watch)

    s = subparsers.add_parser(
        "simulate", help="write a simulated scan frame by frame at a given rate, as a detector would",
        description="Make frames with DAISY's sample steps (in the images), then write them as a detector "
                    "does, at --rate Hz, with a per-frame 'fully written' log (<scan>_written.jsonl), an "
                    "end-of-scan marker (<scan file>.done) and a config to watch it (<scan>.yaml).")
    s.add_argument("kind", choices=("xrd", "ct"))
    s.add_argument("--rate", type=float, required=True, help="frames per second (0: as fast as it can)")
    s.add_argument("--out", required=True, help="folder to write the scan into")
    s.add_argument("--frames", type=int, help="XRD: frames to write (default 50)")
    s.add_argument("--unique", type=int, default=20, help="XRD: distinct frames generated, then repeated (default 20)")
    s.add_argument("--binning", type=int, default=1, help="XRD: detector binning (1: a full Eiger 4M)")
    s.add_argument("--frames-per-file", type=int, default=100, help="XRD: frames per Eiger data file")
    s.add_argument("--layout", choices=("eiger", "stack"), default="eiger", help="XRD: Eiger master + data files, or one stack")
    s.add_argument("--mode", choices=("swmr", "plain"), default="swmr", help="XRD: SWMR writer or plain appends")
    s.add_argument("--size", type=int, default=64, help="CT: phantom size (detector columns ~1.4x)")
    s.add_argument("--angles", type=int, default=128, help="CT: projections over 180 degrees")
    s.add_argument("--source", help="CT: replay this raw scan (Data Exchange layout) frame by frame instead of a phantom")
    s.add_argument("--scan", help="scan name (default scan_00001 / ct_00001)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--outdir", help="outdir of the config written beside the scan (default results/<scan>)")
    s.set_defaults(func=cmd_simulate)


def cmd_watch(args) -> int:
    from .watch import watch

    overrides = {"expected": args.expected, "end_marker": args.end_marker, "idle_timeout": args.idle_timeout,
                 "frame_timeout": args.frame_timeout, "written_log": args.written_log, "pattern": args.pattern,
                 "port": args.port, "host": args.host}
    config = Path(args.config)
    if not config.is_file():
        print(f"daisy: config file {config} does not exist", file=sys.stderr)
        return 2
    return watch(args.pipeline, config, overrides, then_run=args.then_run, view=not args.no_view,
                 quiet=args.quiet, profile=args.profile)


def cmd_simulate(args) -> int:
    from .simulate import simulate

    scan = simulate(args.kind, Path(args.out), args.rate, frames=args.frames, unique=args.unique, binning=args.binning,
                    frames_per_file=args.frames_per_file, layout=args.layout, mode=args.mode, scan=args.scan,
                    size=args.size, angles=args.angles, seed=args.seed, outdir=args.outdir, source=args.source,
                    progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"daisy simulate: done: {scan}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """``python -m daisy.online.cli watch|simulate ...`` (until daisy/cli.py registers them)."""
    parser = argparse.ArgumentParser(prog="daisy")
    sub = parser.add_subparsers(dest="command", required=True)
    register_cli(sub)
    args = parser.parse_args(argv)
    from daisy_steps.errors import StepError

    try:
        return args.func(args)
    except StepError as exc:
        print(f"daisy: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
