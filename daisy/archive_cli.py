"""``daisy archive`` and ``daisy rerun``: the subcommands (:func:`register_cli`), also runnable
alone as ``python -m daisy.archive_cli archive|rerun ...``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .archive import ArchiveError


def cmd_archive(args) -> int:
    from .archive import write_archive

    write_archive(Path(args.run_dir), Path(args.output), with_images=args.with_images, with_inputs=args.with_inputs)
    return 0


def cmd_rerun(args) -> int:
    from .rerun import rerun

    return rerun(Path(args.archive), Path(args.workdir), offline=args.offline,
                 current_software=args.current_software, cores=args.cores)


def _guarded(func):
    """Refusals and errors as one line on stderr (exit 2), no traceback (DAISY_DEBUG=1 shows it)."""
    def run(args) -> int:
        try:
            return func(args)
        except ArchiveError as exc:
            print(f"daisy {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except (OSError, ValueError, KeyError) as exc:
            if os.environ.get("DAISY_DEBUG"):
                raise
            print(f"daisy {args.command}: error: {type(exc).__name__}: {exc} (set DAISY_DEBUG=1 for the traceback)",
                  file=sys.stderr)
            return 2
    return run


def register_cli(subparsers) -> None:
    """Add ``archive`` and ``rerun`` to the ``daisy`` command's subparsers."""
    p = subparsers.add_parser(
        "archive", help="pack a finished run (outputs, provenance, workflow source[, images, inputs]) into one BagIt tar",
        description="Write a finished run as one BagIt bag in an uncompressed tar: the run folder, the workflow "
                    "source that ran (refused when this checkout differs from it), and optionally the SIF images "
                    "and the inputs. Every file is read once and checked against the digest the run recorded.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's outdir (holds provenance.json)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (e.g. run.tar)")
    p.add_argument("--with-images", action="store_true", help="include the run's SIF images (verified by digest)")
    p.add_argument("--with-inputs", action="store_true", help="include the run's input files, in their folder layout")
    p.set_defaults(func=_guarded(cmd_archive), command="archive")

    p = subparsers.add_parser(
        "rerun", help="restore an archive, run it again and compare every output with the archived one",
        description="Check and extract an archive made by 'daisy archive' (unsafe members refused), validate "
                    "the bag, restore images and inputs by digest, rerun the archived workflow in DIR and "
                    "compare every output; the report goes to DIR/rerun-report.{txt,json}. Exit 0 when every "
                    "output is identical, 1 when any differs, 2 when the archive is refused.")
    p.add_argument("archive", metavar="FILE")
    p.add_argument("--workdir", required=True, metavar="DIR", help="an empty or new folder for the rerun")
    p.add_argument("--offline", action="store_true",
                   help="run the pipeline with no network (a new network namespace, unshare --net)")
    p.add_argument("--current-software", action="store_true",
                   help="rerun with this installation's DAISY and images instead of the archived ones")
    p.add_argument("--cores", type=int, help="cores for snakemake (default: the profile's)")
    p.set_defaults(func=_guarded(cmd_rerun), command="rerun")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="daisy", description=__doc__)
    register_cli(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
