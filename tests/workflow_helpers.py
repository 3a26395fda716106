"""Running DAISY's Snakemake workflow in a scratch working directory, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, configfile: Path, *extra: str, profile: str = "workstation",
              env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Plain ``snakemake --workflow-profile profiles/<profile>`` with ``workdir`` as working directory."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--workflow-profile", str(REPO / "profiles" / profile), "--configfile", str(configfile),
           "--directory", str(workdir), "--cores", "2", *extra]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def daisy(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The ``daisy`` command line, as a subprocess."""
    return subprocess.run([sys.executable, "-m", "daisy", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def process_argvs():
    """``(pid, argv)`` of every running process (argv as bytes, NUL-split)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            yield int(proc.name), (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue


def alive(pid: int) -> bool:
    """Alive and not a zombie (a finished process not yet reaped is no longer running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def image_cache_with(cache: Path, names=("tomopy", "base")) -> Path:
    """A fresh image cache holding the verified images ``names`` (hard links, else copies): a run
    using it must hash them again (benchmarks and concurrency tests)."""
    import os
    import shutil

    from daisy import images

    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    for name in names:
        sif = images.verify_image(name)
        for path in (sif, sif.with_name(sif.name + ".json")):
            if path.exists():
                try:
                    os.link(path, cache / path.name)
                except OSError:
                    shutil.copyfile(path, cache / path.name)
    return cache


def holder_processes() -> list[str]:
    """Command lines of running image holders (``apptainer exec ... IMAGE sleep infinity``)."""
    found = []
    for _, argv in process_argvs():
        if argv[-3:] == [b"sleep", b"infinity", b""] and any(a.endswith(b".sif") for a in argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found
