"""The ``daisy`` command: run pipelines, make the demo, validate and import configs, manage images."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daisy_steps.errors import StepError

from . import __version__

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
    if profile not in _profiles():
        raise DaisyError(f"unknown profile {profile!r} (known: {', '.join(_profiles())})")
    cmd = ["--snakefile", str(REPO / "Snakefile"),
           "--workflow-profile", str(PROFILES / profile), "--configfile", str(config)]
    if cores:
        cmd += ["--cores", str(cores)]
    if dry_run:
        cmd += ["--dry-run"]
    return cmd + list(extra or [])


def run_pipeline(pipeline: str, config: Path, profile: str = "workstation", cores: int | None = None,
                 dry_run: bool = False, extra: list[str] | None = None) -> int:
    """Validate ``config``, verify the images it needs, then run snakemake on it."""
    from . import containers, workflow

    run = workflow.plan(_read_config(config), source=str(config), pipeline=pipeline)
    for name in run.images():
        containers.verify_image(name)
    args = snakemake_args(config, profile, cores, dry_run, extra)
    print(f"daisy: running the {pipeline} pipeline ({len(run.jobs)} jobs, profile {profile}) -> {run.outdir}",
          flush=True)
    if not dry_run and _runs_jobs_here(profile):
        workflow.hold_run_images(run)  # warm while Snakemake starts; released when the run ends
    try:
        code = run_snakemake(args)
    finally:
        workflow.finish_run()
    if code:
        raise DaisyError(f"the {pipeline} pipeline failed (snakemake exit {code}); "
                         f"see the job logs under {run.outdir / 'logs'}")
    if not dry_run:
        print(f"daisy: outputs in {run.outdir}; provenance: {run.outdir / 'provenance.json'}")
    return 0


def _runs_jobs_here(profile: str) -> bool:
    """Whether the profile runs jobs on this machine (no cluster executor)."""
    import yaml

    settings = yaml.safe_load((PROFILES / profile / "config.yaml").read_text()) or {}
    return settings.get("executor", "local") in ("local", "dryrun")


def run_snakemake(args: list[str]) -> int:
    """Snakemake's own command line, in this process: no second interpreter start and no second
    import of what DAISY has loaded already (about 0.3 s a run). Returns its exit status."""
    from snakemake.cli import main as snakemake_main

    try:
        snakemake_main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _read_config(path: Path) -> dict:
    """A config file, or the original design's init_dict/cfg_dict translated (not validated)."""
    from . import config as configs
    from . import importer

    if importer.looks_like_design_dicts(path):
        return importer.translate_file(path)
    return configs.read_config(path)


# -- subcommands --------------------------------------------------------------------------------

def cmd_run(args) -> int:
    config = Path(args.config) if args.config else REPO / "config" / f"{args.pipeline}.yaml"
    if not config.is_file():
        raise DaisyError(f"config file {config} does not exist (give one with --config)")
    return run_pipeline(args.pipeline, config, args.profile, args.cores, args.dry_run, args.snakemake_args)


def cmd_validate(args) -> int:
    from . import config as configs

    path = Path(args.file)
    cfg = configs.validate(_read_config(path), source=str(path))
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
    p.add_argument("--config", help="config file (YAML/JSON, or the original design's init_dict/cfg_dict)")
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

    p = sub.add_parser("steps", help="list the analysis steps")
    p.set_defaults(func=cmd_steps)

    try:
        from . import containers
        containers.register_cli(sub)
    except ImportError as exc:  # pragma: no cover - containers.py is part of the package
        print(f"warning: container commands unavailable: {exc}", file=sys.stderr)
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
    except (DaisyError, StepError) as exc:
        print(f"daisy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daisy: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; the traceback only on request
        if os.environ.get("DAISY_DEBUG"):
            raise
        name = type(exc).__name__
        if name in ("ImageError", "ImageDigestMismatch"):
            print(f"daisy: error: {exc}", file=sys.stderr)
            return 2
        print(f"daisy: error: {name}: {exc} (set DAISY_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
