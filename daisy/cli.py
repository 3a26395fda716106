"""The ``daisy`` command: run pipelines, the demo, configs, steps, images, provenance, archive and rerun."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daisy_steps.errors import StepError

from . import __version__
from .images import ImageError

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"


class DaisyError(Exception):
    """An error reported as one line by the command line."""


def _profiles() -> list[str]:
    return sorted(p.name for p in PROFILES.iterdir() if (p / "config.yaml").is_file())


def snakemake_args(config: Path, profile: str, cores: int | None = None, dry_run: bool = False,
                   extra: list[str] | None = None) -> list[str]:
    """The snakemake arguments of ``daisy run`` (run in the caller's working directory); the same
    as ``snakemake ARGS`` on the command line."""
    cmd = ["--snakefile", str(REPO / "Snakefile"), "--workflow-profile", str(PROFILES / profile)]
    if cores:
        cmd += ["--cores", str(cores)]
    if dry_run:
        cmd += ["--dry-run"]
    # the user's arguments (targets too) before --configfile, which would take any word after it
    return cmd + list(extra or []) + ["--configfile", str(config)]


def run_pipeline(pipeline: str, config: Path, profile: str = "workstation", cores: int | None = None,
                 dry_run: bool = False, extra: list[str] | None = None) -> int:
    """Resolve ``config`` (translated, validated, planned) into the outdir and run Snakemake on
    that file: the same path as ``snakemake --configfile`` (images are checked when jobs start)."""
    import tempfile

    from . import images, workflow

    if profile not in _profiles():
        raise DaisyError(f"unknown profile {profile!r} (known: {', '.join(_profiles())})")
    run = workflow.resolve(config, pipeline)
    with tempfile.TemporaryDirectory(prefix="daisy-dry-run-") as scratch:
        if dry_run:  # a dry run leaves nothing behind
            resolved = workflow.write_resolved(run, config, folder=Path(scratch))
        else:
            from . import outdir_lock

            outdir_lock.acquire(run.outdir)      # one run per outdir, before anything is written into it
            resolved = workflow.write_resolved(run, config)
            for name in run.images():  # pull missing images by digest before Snakemake fixes their paths
                images.resolve(name)
        args = snakemake_args(resolved, profile, cores, dry_run, extra)
        print(f"daisy: running the {pipeline} pipeline ({len(run.jobs)} jobs, profile {profile}) -> {run.outdir}",
              flush=True)
        try:
            code = run_snakemake(args)
        finally:
            workflow.finish_run()
    if code:
        raise DaisyError(f"the {pipeline} pipeline failed (snakemake exit {code}); "
                         f"see the job logs under {run.outdir / 'logs'}")
    if not dry_run:
        print(f"daisy: outputs in {run.outdir}; provenance: {run.outdir / 'provenance.json'}; "
              f"resolved config: {resolved}")
    return 0


def run_snakemake(args: list[str]) -> int:
    """Snakemake's own command line, in this process: no second interpreter start and no second
    import of what DAISY has loaded already (docs/benchmarks.md). Returns its exit status."""
    from .lazy_modules import defer_all

    defer_all()               # pandas: loaded if a plugin uses it, not at every start
    from snakemake.cli import main as snakemake_main

    try:
        snakemake_main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


# -- subcommands --------------------------------------------------------------------------------

def cmd_run(args) -> int:
    config = Path(args.config)
    if not config.is_file():
        raise DaisyError(f"config file {config} does not exist")
    return run_pipeline(args.pipeline, config, args.profile, args.cores, args.dry_run, args.snakemake_args)


def cmd_validate(args) -> int:
    from . import config as configs

    path = Path(args.file)
    from .workflow import read_config

    cfg = configs.validate(read_config(path), source=str(path))
    print(f"ok: {path} is a valid {cfg['pipeline']} config (config_version {cfg['config_version']})")
    if args.show:
        import yaml
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0


def cmd_import_config(args) -> int:
    import yaml

    from . import config as configs
    from . import importer

    path = Path(args.file)
    cfg = importer.translate_file(path, outdir=args.outdir, data_dir=args.data_dir)
    configs.validate(cfg, source=f"{path} (translated)")
    text = importer.HEADER.format(source=path.name) + yaml.safe_dump(cfg, sort_keys=False)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        tmp.write_text(text)
        tmp.replace(out)
        print(f"wrote {out} ({cfg['pipeline']} config)")
    else:
        print(text, end="")
    return 0


def cmd_demo(args) -> int:
    from . import demo

    return demo.main(Path(args.out), size=args.size, pipelines=args.pipelines, profile=args.profile)


def cmd_steps(args) -> int:
    from daisy_steps.registry import STEPS

    if args.name:  # one step's whole story: code, ports, images, schema, jobs, tests, docs
        from .docs import step_story

        if args.name not in STEPS:
            raise DaisyError(f"unknown step {args.name!r} (known: {', '.join(sorted(STEPS))})")
        print(step_story(args.name), end="")
        return 0
    for name in sorted(STEPS):
        print(f"{name:24s} {STEPS[name]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daisy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"daisy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a pipeline (ct, xrd, copy) through snakemake in the pinned images",
                       epilog="Arguments after -- go to snakemake unchanged, e.g. daisy run ct --config c.yaml -- --forceall")
    p.add_argument("pipeline", choices=["ct", "xrd", "copy"])
    p.add_argument("--config", required=True, help="config file (YAML/JSON, or the original design's init_dict/cfg_dict)")
    p.add_argument("--profile", default="workstation", help="profile under profiles/ (workstation, slurm)")
    p.add_argument("--cores", type=int, help="cores to use (default: the profile's)")
    p.add_argument("-n", "--dry-run", action="store_true", help="show what would run")
    p.set_defaults(func=cmd_run, snakemake_args=[])

    p = sub.add_parser("demo", help="make sample data and run the CT and XRD pipelines on it")
    p.add_argument("--out", default="results/demo", help="folder for data, configs and results")
    p.add_argument("--size", choices=["small", "medium"], default="small")
    p.add_argument("--pipelines", nargs="+", default=["ct", "xrd"], choices=["ct", "xrd", "copy"])
    p.add_argument("--profile", default="workstation")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("validate", help="check a config against its schema (names each bad field)")
    p.add_argument("file")
    p.add_argument("--show", action="store_true", help="print the config with defaults filled in")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("import-config", help="translate the original design's init_dict/cfg_dict to a DAISY config")
    p.add_argument("file", help="Python or JSON file defining init_dict and cfg_dict")
    p.add_argument("-o", "--output", help="write the YAML here (default: print it)")
    p.add_argument("--outdir", help="outdir of the translated config")
    p.add_argument("--data-dir", help="folder the input file names are relative to (default: the file's folder)")
    p.set_defaults(func=cmd_import_config)

    p = sub.add_parser("steps", help="list the analysis steps, or show one step's whole story")
    p.add_argument("name", nargs="?", help="a step name, e.g. ct.normalize")
    p.set_defaults(func=cmd_steps)

    from . import archive_cli, images, provenance_cli
    from .report.cli import register_cli as register_report_cli
    images.register_cli(sub)
    provenance_cli.register_cli(sub)
    archive_cli.register_cli(sub)
    register_report_cli(sub)
    from .online import cli as online_cli
    online_cli.register_cli(sub)
    from .server import register_cli as register_server_cli
    register_server_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:  # daisy run ct --config x.yaml -- --forceall: the rest goes to snakemake
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    if extra:
        if args.command != "run":
            parser.error("arguments after -- are only for 'daisy run'")
        args.snakemake_args = extra
    try:
        return args.func(args)
    except (DaisyError, StepError, ImageError) as exc:
        print(f"daisy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daisy: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; the traceback only on request
        if os.environ.get("DAISY_DEBUG"):
            raise
        print(f"daisy: error: {type(exc).__name__}: {exc} (set DAISY_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
