"""Running commands in images: bind specs, ``apptainer exec`` command lines and image holders."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from . import paths
from .lock import image_path
from .paths import EXEC_OPTIONS, ImageError


def bind_specs(binds_ro: Iterable = (), binds_rw: Iterable = ()) -> list[str]:
    """The Apptainer bind specs (``src:dest[:ro|:rw]``) of a job, the one place they are made.

    The step code and schemas come first, read-only at /opt/daisy (the images' PYTHONPATH); then
    ``binds_ro`` (``:ro``) and ``binds_rw`` (``:rw``), each at its absolute host path. A folder
    named twice is bound once; named both read-only and read-write, it is bound read-write.
    Each source must exist and contain no ``,`` or ``:`` (the separators of bind specs).
    """
    rw = list(dict.fromkeys(map(_bind_source, binds_rw)))
    ro = [source for source in dict.fromkeys(map(_bind_source, binds_ro)) if source not in rw]
    return [f"{_bind_source(paths.STEPS_DIR)}:{paths.STEPS_TARGET}:ro",
            f"{_bind_source(paths.SCHEMAS_DIR)}:{paths.SCHEMAS_TARGET}:ro",
            *(f"{source}:{source}:ro" for source in ro),
            *(f"{source}:{source}:rw" for source in rw)]


def _bind_source(path) -> Path:
    source = Path(path).resolve()
    if "," in str(source) or ":" in str(source):
        raise ImageError(f"cannot bind {source}: apptainer bind paths may not contain ',' or ':'")
    if not source.exists():
        raise ImageError(f"cannot bind {source}: it does not exist")
    return source


def exec_argv(name: str, argv: Sequence[str], binds_ro: Iterable = (), binds_rw: Iterable = (),
              pwd=None, env: dict | None = None) -> list[str]:
    """The ``apptainer exec`` command line that runs ``argv`` in image ``name`` (not verified).

    ``--containall --cleanenv --no-home``: no host home, environment, /tmp or PID namespace
    leaks in; binds from :func:`bind_specs`. A plain list, not spython: callers need the exact
    argv, and spython's execute ignores ``contain`` and exits the process on a missing bind.
    """
    cmd = [paths.APPTAINER, "exec", *EXEC_OPTIONS]
    for spec in bind_specs(binds_ro, binds_rw):
        cmd += ["--bind", spec]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    if pwd is not None:
        cmd += ["--pwd", str(Path(pwd).resolve())]
    return [*cmd, str(image_path(name)), *map(str, argv)]


class ImageHolders:
    """Keep images mounted while a run lasts, so that its jobs start on warm pages.

    Every ``apptainer exec`` of a SIF mounts its squashfs afresh, with an empty page cache. With
    ``shared loop devices = yes`` in apptainer.conf (scripts/install-apptainer.sh sets it) the
    containers of one image share one loop device, hence one mount and its cache, while one of
    them keeps it attached. A holder is such a container per image, started with the run: it
    imports the libraries the run's steps will import (warming the cache while Snakemake starts),
    then sleeps until :meth:`release`, or until its parent dies. The jobs still run the
    digest-verified SIF. Best effort: a holder that cannot start costs nothing. Effect on step
    start: docs/benchmarks.md.
    """

    WARM_UP = ("import importlib, sys\n"
               "for name in sys.argv[1:]:\n"
               "    try:\n"
               "        importlib.import_module(name)\n"
               "    except Exception:\n"
               "        pass\n")

    #: python3 imports (the warm-up), then sleep holds the mount without python's memory
    HOLD = 'python3 -c "$0" "$@" >/dev/null 2>&1; exec sleep infinity'

    def __init__(self, images: dict[Path, Sequence[str]]) -> None:
        self.processes: list[subprocess.Popen] = []
        for sif, modules in images.items():
            try:
                self.processes.append(subprocess.Popen(
                    [paths.APPTAINER, "exec", "--containall", str(sif), "sh", "-c", self.HOLD, self.WARM_UP,
                     *modules],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent))
            except OSError:
                pass

    def stop(self) -> None:
        """Ask every holder to stop, without waiting (:meth:`release` waits): the run's jobs are done."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()

    def release(self) -> None:
        """Stop every holder and wait for it (killed after 10 s)."""
        self.stop()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes = []


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the parent process dies."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def loop_devices_shared() -> bool:
    """Whether apptainer.conf lets containers of one image share a loop device (holders help)."""
    for conf in (Path("/etc/apptainer/apptainer.conf"), Path("/usr/local/etc/apptainer/apptainer.conf")):
        try:
            text = conf.read_text()
        except OSError:
            continue
        return bool(re.search(r"^\s*shared loop devices\s*=\s*yes\s*$", text, re.M))
    return False


def hold_images(images: dict[str, Sequence[str]]) -> ImageHolders:
    """Start :class:`ImageHolders` for the locked images named in ``images`` (name -> modules to
    import first): only as root (others mount SIFs with squashfuse, one FUSE process per
    container, which no holder can share) and only where apptainer.conf shares loop devices."""
    if os.geteuid() != 0 or not loop_devices_shared():
        return ImageHolders({})
    return ImageHolders({image_path(name): list(modules) for name, modules in images.items()})
