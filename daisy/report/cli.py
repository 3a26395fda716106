"""``daisy report RUN_DIR [-o OUT]``: the run's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("report", help="write a run's self-contained HTML report (previews, results, "
                                             "parameters, timings, provenance)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holding provenance.json)")
    p.add_argument("-o", "--output", help="the HTML file (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from .build import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "provenance.json").is_file():
        from ..cli import DaisyError

        raise DaisyError(f"{run_dir} holds no provenance.json: not a DAISY run folder")
    out = write_report(run_dir, args.output)
    size = out.stat().st_size
    print(f"daisy report: wrote {out} ({size / 1024:.0f} KiB, self-contained; data linked, not embedded)")
    return 0
