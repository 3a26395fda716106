"""Building images: only when the definition key changed, with progress shown live.

``build()`` reuses a cached SIF whose sidecar record (``<file>.json``) has the current
definition key and whose sha256 still matches (signed copies excepted); otherwise it runs
``apptainer build``, makes the SIF reproducible (:mod:`.reproducible`), names it by its digest,
reads its manifest and records it in the local lock (``<cache>/local-lock.json``), never in the
committed ``containers/images.lock.json``. The full build output goes to
``<cache>/logs/<name>-<time>.log``; the console gets the phases.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from daisy.hashing import sha256_file
from daisy_steps.fileio import write_json_atomic

from . import paths
from .inspect import read_manifest
from .lock import local_entry, published_entry, record_local_build
from .reproducible import normalise, squashfs_tools_version
from .paths import (BUILD_ARG_NAMES, MKSQUASHFS_ARGS, ImageError, apptainer_version, available_images,
                    build_args, cache_dir, def_label, definition_file, definition_key, image_meta)

Log = Callable[[str], None]


def build(names: Sequence[str] | None = None, force: bool = False, log: Log = print) -> list[dict]:
    """Build images (all by default) whose definition key has no SIF in the cache; record them in
    the **local** lock (``<cache>/local-lock.json``). The committed lock is never written here:
    only ``daisy containers publish`` pins a digest there.

    Returns the local lock entries of ``names``. Everything is validated before the first (long) build.
    """
    log = _flushing(log)
    names = list(names) if names else available_images()
    for name in names:
        version, label = image_meta(name)["version"], def_label(name, "org.daisy.version")
        if label != version:
            raise ImageError(f"containers/{name}: image.json version {version} != %labels org.daisy.version {label}")
    tool_version = apptainer_version()
    (cache_dir() / "logs").mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        key = definition_key(name)
        entry = None if force else _cached_entry(name, key)
        if entry:
            log(f"[{name}] up to date: {entry['file']} (definition sha256 {key[:12]})")
        else:
            entry = _build_one(name, key, tool_version, log)
        record_local_build(entry)
        _compare_with_published(entry, log)
        results.append(entry)
    return results


def _build_one(name: str, key: str, tool_version: str, log: Log) -> dict:
    """Build image ``name`` into the cache under its digest name; return its lock entry."""
    meta = image_meta(name)
    cache = cache_dir()
    deffile = definition_file(name)
    log_file = cache / "logs" / f"{name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.log"
    tmp = cache / f".building-{name}-{os.getpid()}.sif"
    tmp.unlink(missing_ok=True)               # a stale file must never count as success
    log(f"[{name}] building {meta['version']} (definition sha256 {key[:12]})")
    start = time.monotonic()
    try:
        run_apptainer_build(name, deffile, tmp, build_args(), bool(meta.get("needs_ca_bundle")), log_file, log)
        log(f"[{name}] making it reproducible: fixed times and build date, the definition as written")
        reproducible = normalise(tmp, deffile, cache / "build-tmp" / f"{name}-reproducible", log)
        if reproducible:
            _self_test(name, tmp, log_file)
        seconds = round(time.monotonic() - start, 1)
        digest = sha256_file(tmp)
        log(f"[{name}] reading manifest")
        manifest = read_manifest(tmp)
        final = cache / f"{name}-{meta['version']}@sha256-{digest}.sif"
        os.replace(tmp, final)                 # atomic: same directory
        os.chmod(final, 0o444)
    finally:
        tmp.unlink(missing_ok=True)
    sha256_file(final)                         # prime the hash cache under the final name
    entry = {
        "name": name,
        "version": meta["version"],
        "definition": str(deffile.relative_to(paths.REPO)),
        "definition_sha256": key,
        "build_arg_names": sorted(BUILD_ARG_NAMES),
        "mksquashfs_args": MKSQUASHFS_ARGS,
        "reproducible": reproducible,
        "mksquashfs_version": squashfs_tools_version(),
        "image_sha256": digest,
        "file": final.name,
        "size_bytes": final.stat().st_size,
        "build_seconds": seconds,
        "built_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "apptainer_version": tool_version,
        "manifest": manifest,
    }
    write_json_atomic(cache / (final.name + ".json"), entry, mode=0o644)
    log(f"[{name}] built in {seconds:.0f} s: {final.name} ({entry['size_bytes'] / 1e6:.0f} MB)")
    return entry


def _self_test(name: str, sif: Path, log_file: Path) -> None:
    """Run the image's ``%test`` again on the rewritten SIF; ImageError (with the log) if it fails."""
    proc = subprocess.run([paths.APPTAINER, "test", str(sif)], capture_output=True, text=True)
    with open(log_file, "a") as out:
        out.write(f"\n--- %test of the reproducible SIF (exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ImageError(f"image '{name}': %test failed on the reproducible SIF (exit {proc.returncode}); see {log_file}")


def _compare_with_published(entry: dict, log: Log) -> None:
    """Say whether the local build is the published image, bit for bit."""
    pub = published_entry(entry["name"])
    if not pub:
        return
    if pub["image_sha256"] == entry["image_sha256"]:
        log(f"[{entry['name']}] sha256:{entry['image_sha256'][:12]}… is the published image: rebuilt bit for bit")
    elif pub.get("version") == entry["version"]:
        log(f"[{entry['name']}] sha256:{entry['image_sha256'][:12]}… differs from the published "
            f"sha256:{pub['image_sha256'][:12]}…: runs use the published image when a store or bundle has it, "
            f"else this local build (recorded as such)")


def run_apptainer_build(name: str, deffile: Path, target: Path, build_args: dict, needs_ca: bool,
                        log_file: Path, log: Log) -> None:
    """Run ``apptainer build``, all output to ``log_file``, phases to ``log``; ImageError on failure.

    Plain subprocess, not spython's ``Client.build``: non-streaming it ignores the exit code;
    streaming it pipes stderr without reading it until exit (a deadlock risk); it has no cwd
    (``%files`` paths are relative to the repository root) and prepends sudo by default.
    """
    private_tmp = cache_dir() / "build-tmp" / name
    for sub in ("tmp", "var-tmp"):
        shutil.rmtree(private_tmp / sub, ignore_errors=True)
        (private_tmp / sub).mkdir(parents=True)
        os.chmod(private_tmp / sub, 0o1777)      # apt's _apt sandbox user writes there too
    cmd = [paths.APPTAINER, "build", "--fakeroot",
           # %post sees the HOST's /tmp and /var/tmp during a build; shield them.
           "--bind", f"{private_tmp / 'tmp'}:/tmp", "--bind", f"{private_tmp / 'var-tmp'}:/var/tmp"]
    if needs_ca:
        cmd += ["--bind", "/etc/ssl/certs:/mnt"]     # pip --cert /mnt/ca-certificates.crt in %post
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd += ["--mksquashfs-args", MKSQUASHFS_ARGS, str(target), str(deffile.relative_to(paths.REPO))]
    shown = " ".join("mirror=<host mirror>" if c.startswith("mirror=") else c for c in cmd)
    log(f"[{name}] {shown}")
    log(f"[{name}] full output: {log_file}")
    try:
        rc, tail = _stream(cmd, name, log_file, log)
    finally:
        shutil.rmtree(private_tmp, ignore_errors=True)
    if rc != 0 or not target.is_file():
        for line in tail:
            log(f"[{name}]   | {line}")
        raise ImageError(f"building image '{name}' failed (apptainer exit {rc}); see {log_file}")


def _stream(cmd: list[str], name: str, log_file: Path, log: Log) -> tuple[int, list[str]]:
    """Run ``cmd`` in the repository, copying its output to ``log_file`` line by line and its
    phases (or a line every 30 s) to ``log``; return the exit code and the last 15 lines."""
    start = last = time.monotonic()
    tail: list[str] = []
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, cwd=paths.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()                        # the log is for watching a long build live
            tail = (tail + [line.rstrip()])[-15:]
            now = time.monotonic()
            phase = _phase(line.rstrip())
            if phase or now - last > 30:
                log(f"[{name} {now - start:6.0f}s] {phase or '... ' + line.strip()[:120]}")
                last = now
        return proc.wait(), tail


def _phase(line: str) -> str | None:
    """The console form of a build output line worth showing, else None."""
    if line.startswith("INFO:") or "[daisy-build]" in line:
        return re.sub(r"^INFO:\s+", "", line).split("[daisy-build]", 1)[-1].strip()[:160]
    if re.match(r"^I: (Retrieving Release|Base system installed)", line):
        return "debootstrap: " + line[3:].strip()
    if line.startswith(("FATAL:", "ERROR:", "E: ")):
        return line.strip()[:200]
    return None


def _cached_entry(name: str, key: str) -> dict | None:
    """The build record of a cached, intact SIF of ``name`` built from definition ``key``. When
    several builds of that definition are cached (as after ``build --force``): the one the local
    lock names (the last build), else the newest."""
    last = (local_entry(name) or {}).get("file")
    for sidecar, entry in sorted(_sidecars(name), reverse=True,
                                 key=lambda found: (found[1].get("file") == last, found[1].get("built_at", ""))):
        sif = cache_dir() / entry.get("file", "")
        if entry.get("signature"):
            continue                           # a signed copy is not what the definition builds
        if entry.get("definition_sha256") == key and sif.is_file() and sif.name == sidecar.name[:-5]:
            if sha256_file(sif) == entry.get("image_sha256"):
                return entry
    return None


def _sidecars(name: str) -> Iterable[tuple[Path, dict]]:
    for sidecar in sorted(cache_dir().glob(f"{name}-*@sha256-*.sif.json")):
        try:
            yield sidecar, json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue


def _flushing(log: Log) -> Log:
    """``log`` followed by a flush of stdout: progress shows up live even when stdout is a file."""
    def flushed(msg: str) -> None:
        log(msg)
        sys.stdout.flush()
    return flushed
