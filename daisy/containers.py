"""DAISY container images: build, lock, verify and run Apptainer images (host side).

Images are defined in ``containers/<name>/<name>.def`` (+ ``image.json``) with their package lists in
``envs/``. ``build()`` builds an image only when its *definition key* (sha256 over the definition, every
repository file it copies in with ``%files``, ``image.json`` and the content-affecting build arguments)
has no matching SIF in the cache, writes the SIF under a digest-bearing name
``<cache>/<name>-<version>@sha256-<hex>.sif`` and records it in ``containers/images.lock.json``.
Every run verifies the SIF's sha256 against the lock first.

spython is used where it does its job (``inspect`` for labels, ``execute`` for the manifest), with its
traps guarded: ``sudo=False`` always, and a failed call returns a dict instead of raising, so every
result is checked. Builds and step execution use plain ``subprocess`` (reasons at ``_run_build`` and
``exec_argv``).

The Debian mirror is read from the host's apt configuration at run time and passed as the ``mirror``
build argument. It is hashed into the definition key but never written into the repository (the lock
records build-argument names only). A SIF itself embeds the rendered definition, so never publish
``apptainer inspect --deffile`` output.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from daisy_steps.fileio import sha256_file as plain_sha256

REPO = Path(__file__).resolve().parents[1]
LOCK_PATH = REPO / "containers" / "images.lock.json"
CONTAINERS_DIR = REPO / "containers"
STEPS_DIR = REPO / "daisy_steps"          # bound read-only at /opt/daisy/daisy_steps
STEPS_TARGET = "/opt/daisy/daisy_steps"
SCHEMAS_DIR = REPO / "schemas"             # bound read-only at /opt/daisy/schemas (the steps' schemas)
SCHEMAS_TARGET = "/opt/daisy/schemas"
LOCK_VERSION = 1
KEY_VERSION = 1                            # bump when the key's composition changes
APPTAINER = "apptainer"
# Options that change the image content; part of the definition key.
MKSQUASHFS_ARGS = "-comp lz4 -Xhc"        # lz4 decompression (fastest start-up, reference table); -Xhc: ~20 % smaller, slower mksquashfs only
BUILD_ARG_NAMES = ("mirror",)
EXEC_OPTIONS = ("--containall", "--cleanenv", "--no-home")
DEFAULT_ORDER = ("base", "tomopy", "pyfai")


class ImageError(RuntimeError):
    """An image is missing, unbuildable or unusable. The message is one line meant for the user."""


class ImageDigestMismatch(ImageError):
    """The SIF in the cache does not have the sha256 recorded in the lock."""


# --------------------------------------------------------------------------------------------- paths

def cache_dir() -> Path:
    """Image cache: ``$DAISY_IMAGE_CACHE`` or ``~/.cache/daisy/images`` (never inside the repository)."""
    env = os.environ.get("DAISY_IMAGE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "daisy" / "images"
    path = path.resolve()
    try:
        path.relative_to(REPO)
    except ValueError:
        return path
    raise ImageError(f"image cache {path} is inside the repository; set DAISY_IMAGE_CACHE elsewhere")


def _image_dir(name: str) -> Path:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name or ""):
        raise ImageError(f"invalid image name {name!r}")
    d = CONTAINERS_DIR / name
    if not (d / f"{name}.def").is_file():
        raise ImageError(f"unknown image {name!r}: no containers/{name}/{name}.def")
    return d


def available_images() -> list[str]:
    """Image names defined in the repository, base first."""
    names = sorted(p.parent.name for p in CONTAINERS_DIR.glob("*/*.def") if p.stem == p.parent.name)
    return sorted(names, key=lambda n: (DEFAULT_ORDER.index(n) if n in DEFAULT_ORDER else 99, n))


def image_meta(name: str) -> dict:
    """``containers/<name>/image.json`` (name, version, description, needs_ca_bundle)."""
    path = _image_dir(name) / "image.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {path.relative_to(REPO)}: {exc}") from None
    if meta.get("name") != name or not meta.get("version"):
        raise ImageError(f"{path.relative_to(REPO)} must have name {name!r} and a version")
    return meta


# --------------------------------------------------------------------------------------------- mirror

def debian_mirror() -> str:
    """The host's Debian mirror URI, read from apt at run time (never stored in the repository).

    Prefers the entry whose release is the host's codename (the images use trixie on the same URI).
    ``$DAISY_DEBIAN_MIRROR`` overrides (for CI hosts whose apt points elsewhere).
    """
    env = os.environ.get("DAISY_DEBIAN_MIRROR")
    if env:
        return env
    try:
        out = subprocess.run(
            ["apt-get", "indextargets", "--no-release-info", "--format", "$(RELEASE) $(REPO_URI)",
             "Created-By: Packages"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"cannot read the Debian mirror from apt ({exc}); set DAISY_DEBIAN_MIRROR") from None
    codename = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                codename = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    entries = [tuple(line.split(None, 1)) for line in out.splitlines() if len(line.split(None, 1)) == 2]
    for release, uri in entries:
        if release == codename:
            return uri.strip()
    for release, uri in entries:
        if not release.endswith("-security"):
            return uri.strip()
    raise ImageError("apt lists no Debian mirror (apt-get indextargets); set DAISY_DEBIAN_MIRROR")


def _build_args(meta: dict) -> dict[str, str]:
    return {"mirror": debian_mirror()}


# --------------------------------------------------------------------------------------------- keys

def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def definition_files(name: str) -> list[Path]:
    """The definition, image.json and every repository file its ``%files`` section copies in."""
    d = _image_dir(name)
    deffile = d / f"{name}.def"
    files = [deffile, d / "image.json"]
    section = None
    for raw in deffile.read_text().splitlines():
        line = raw.strip()
        if line.startswith("%"):
            section = line.split()[0]
            continue
        if section != "%files" or not line or line.startswith("#"):
            continue
        src = REPO / line.split()[0]
        if not src.is_file():
            raise ImageError(f"{deffile.relative_to(REPO)}: %files source {line.split()[0]} not found")
        files.append(src)
    return files


def definition_key(name: str) -> str:
    """sha256 over the definition, the files it installs, image.json and content-affecting build args."""
    meta = image_meta(name)
    doc = {
        "key_version": KEY_VERSION,
        "files": {str(p.relative_to(REPO)): _sha256_bytes(p.read_bytes()) for p in definition_files(name)},
        "build_args": _build_args(meta),   # hashed only; the values are never written anywhere
        "mksquashfs_args": MKSQUASHFS_ARGS,
        "ca_bundle": bool(meta.get("needs_ca_bundle")),
    }
    return _sha256_bytes(json.dumps(doc, sort_keys=True).encode())


# --------------------------------------------------------------------------------------------- digests

def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _atomic_write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)                  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path) -> str:
    """sha256 of a file, cached in ``<cache>/sha256-cache.json`` keyed by (path, size, mtime_ns,
    ctime_ns, inode): any rewrite, copy or touch of the file changes the key and forces a re-hash."""
    return sha256_files([path])[str(Path(path).resolve())]


def sha256_files(paths: Iterable, workers: int | None = None) -> dict[str, str]:
    """sha256 of several files (keyed by resolved path), with :func:`sha256_file`'s cache.

    Files not in the cache are hashed in parallel threads, one per core (hashlib releases the
    GIL): a CT run's slab files hash in half the time on 2 cores. The cache is written once.
    """
    from concurrent.futures import ThreadPoolExecutor

    resolved = sorted({Path(p).resolve() for p in paths})
    cache_file = cache_dir() / "sha256-cache.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    digests: dict[str, str] = {}
    missing = []
    for path in resolved:
        hit = cache.get(str(path))
        if hit and hit.get("stat") == _stat_key(path.stat()):
            digests[str(path)] = hit["sha256"]
        else:
            missing.append(path)
    if not missing:
        return digests
    workers = max(1, min(len(missing), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for path, digest in zip(missing, pool.map(plain_sha256, missing)):
            digests[str(path)] = digest
    # drop entries of files that are gone, then record these
    cache = {p: v for p, v in cache.items() if Path(p).exists()}
    for path in missing:
        cache[str(path)] = {"stat": _stat_key(path.stat()), "sha256": digests[str(path)]}
    try:
        _atomic_write_json(cache_file, cache)
    except OSError:
        pass                                  # a read-only cache only costs speed
    return digests


# --------------------------------------------------------------------------------------------- lock

def load_lock(path: Path | None = None) -> dict:
    path = Path(path) if path else LOCK_PATH
    if not path.exists():
        return {"lock_version": LOCK_VERSION, "images": {}}
    try:
        lock = json.loads(path.read_text())
    except ValueError as exc:
        raise ImageError(f"{path} is not valid JSON: {exc}") from None
    if lock.get("lock_version") != LOCK_VERSION:
        raise ImageError(f"{path}: unsupported lock_version {lock.get('lock_version')!r} (expected {LOCK_VERSION})")
    lock.setdefault("images", {})
    return lock


def write_lock(lock: dict, path: Path | None = None) -> None:
    lock = dict(lock, lock_version=LOCK_VERSION)
    _atomic_write_json(Path(path) if path else LOCK_PATH, lock)


def _lock_entry(name: str) -> dict:
    entry = load_lock()["images"].get(name)
    if not entry:
        raise ImageError(f"image '{name}' is not in {LOCK_PATH.name}; run `daisy containers build {name}`")
    return entry


def image_path(name: str) -> Path:
    """Digest-bearing path of the locked image in the cache."""
    entry = _lock_entry(name)
    path = cache_dir() / entry["file"]
    if not path.is_file():
        raise ImageError(f"image '{name}' ({entry['file']}) is not in the cache {cache_dir()}; "
                         f"run `daisy containers build {name}`")
    return path


def verify_image(name: str) -> Path:
    """Check the cached SIF against the lock; return its path or raise ImageDigestMismatch."""
    entry = _lock_entry(name)
    path = image_path(name)
    actual = sha256_file(path)
    if actual != entry["image_sha256"]:
        raise ImageDigestMismatch(
            f"image '{name}' digest mismatch: lock expects sha256:{entry['image_sha256']}, "
            f"{path} has sha256:{actual}")
    return path


def verify(names: Iterable[str] | None = None) -> list[str]:
    """Verify locked images (all, or ``names``); return one message per problem (empty: all good)."""
    lock = load_lock()
    names = list(names) if names else sorted(lock["images"])
    problems = []
    for name in names:
        try:
            verify_image(name)
        except ImageError as exc:
            problems.append(str(exc))
    return problems


# --------------------------------------------------------------------------------------------- build

def _apptainer_version() -> str:
    try:
        out = subprocess.run([APPTAINER, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise ImageError("apptainer is not installed or does not run; run scripts/install-apptainer.sh") from None
    return out.strip().split()[-1]


def _def_label(name: str, label: str) -> str | None:
    section = None
    for raw in (_image_dir(name) / f"{name}.def").read_text().splitlines():
        line = raw.strip()
        if line.startswith("%"):
            section = line.split()[0]
        elif section == "%labels" and line.split(None, 1)[:1] == [label]:
            return line.split(None, 1)[1].strip() if len(line.split(None, 1)) > 1 else ""
    return None


def _phase_line(line: str) -> str | None:
    if line.startswith("INFO:") or "[daisy-build]" in line:
        text = re.sub(r"^INFO:\s+", "", line)
        return text.split("[daisy-build]", 1)[-1].strip()[:160]
    if re.match(r"^I: (Retrieving Release|Base system installed)", line):
        return "debootstrap: " + line[3:].strip()
    if line.startswith(("FATAL:", "ERROR:", "E: ")):
        return line.strip()[:200]
    return None


def _run_build(name: str, deffile: Path, target: Path, build_args: dict, needs_ca: bool,
               log_file: Path, log: Callable[[str], None]) -> None:
    """Run ``apptainer build`` streaming its output to ``log_file``.

    Plain subprocess, not spython's ``Client.build``: non-streaming it ignores the exit code; streaming it
    pipes stderr without reading it until exit (apptainer writes much to stderr: a deadlock risk);
    it has no cwd (``%files`` paths are relative to the repository root) and prepends sudo by default.
    """
    private_tmp = cache_dir() / "build-tmp" / name
    for sub in ("tmp", "var-tmp"):
        shutil.rmtree(private_tmp / sub, ignore_errors=True)
        (private_tmp / sub).mkdir(parents=True)
        os.chmod(private_tmp / sub, 0o1777)      # apt's _apt sandbox user writes there too
    cmd = [APPTAINER, "build", "--fakeroot",
           # %post sees the HOST's /tmp and /var/tmp during a build; shield them.
           "--bind", f"{private_tmp / 'tmp'}:/tmp", "--bind", f"{private_tmp / 'var-tmp'}:/var/tmp"]
    if needs_ca:
        cmd += ["--bind", "/etc/ssl/certs:/mnt"]     # pip --cert /mnt/ca-certificates.crt in %post
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd += ["--mksquashfs-args", MKSQUASHFS_ARGS, str(target), str(deffile.relative_to(REPO))]
    shown = " ".join(c if not c.startswith("mirror=") else "mirror=<host mirror>" for c in cmd)
    log(f"[{name}] {shown}")
    log(f"[{name}] full output: {log_file}")
    start = last = time.monotonic()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            out.write(line)
            out.flush()                        # the log is for watching a long build live
            tail = (tail + [line.rstrip()])[-15:]
            now = time.monotonic()
            phase = _phase_line(line.rstrip())
            if phase or now - last > 30:
                log(f"[{name} {now - start:6.0f}s] {phase or '... ' + line.strip()[:120]}")
                last = now
        rc = proc.wait()
    shutil.rmtree(private_tmp, ignore_errors=True)
    if rc != 0 or not target.is_file():
        for line in tail:
            log(f"[{name}]   | {line}")
        raise ImageError(f"building image '{name}' failed (apptainer exit {rc}); see {log_file}")


MANIFEST_SCRIPT = r"""
import json, subprocess, importlib.metadata as md
dpkg = {}
for line in subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                           capture_output=True, text=True, check=True).stdout.splitlines():
    name, _, version = line.partition("\t")
    dpkg[name] = version
pip = {}
for dist in md.distributions():
    name = dist.metadata["Name"]
    if name:
        pip[name] = dist.version
print("DAISY-MANIFEST " + json.dumps({"dpkg": dpkg, "pip": pip}, sort_keys=True))
"""


def _spython_client():
    try:
        from spython.main import Client
    except ImportError:
        return None
    Client.quiet = True
    return Client


def read_manifest(sif: Path) -> dict:
    """Installed Debian packages (dpkg-query) and Python distributions (as `pip list`) inside an image."""
    command = ["python3", "-c", MANIFEST_SCRIPT]
    client = _spython_client()
    if client is not None:
        # spython: sudo=False explicitly; return_result=True so a failure comes back as a dict we check
        # (it returns a dict on failure instead of raising).
        res = client.execute(image=str(sif), command=command, options=list(EXEC_OPTIONS),
                             sudo=False, return_result=True, quiet=True)
        if not isinstance(res, dict) or res.get("return_code") != 0:
            raise ImageError(f"reading the manifest of {sif.name} failed: {res!r}"[:300])
        text = "".join(res.get("message") or [])
    else:
        proc = subprocess.run([APPTAINER, "exec", *EXEC_OPTIONS, str(sif), *command],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"reading the manifest of {sif.name} failed: {proc.stderr.strip()[:200]}")
        text = proc.stdout
    for line in text.splitlines():
        if line.startswith("DAISY-MANIFEST "):
            return json.loads(line[len("DAISY-MANIFEST "):])
    raise ImageError(f"no manifest printed by {sif.name}")


def _redact_labels(labels: dict) -> dict:
    """Apptainer copies the bootstrap header into labels (``...deffile.mirrorurl``): hide the mirror."""
    out = {}
    for key, value in labels.items():
        if key.lower().endswith("mirrorurl") or "://" in str(value):
            value = "<redacted: build-arg mirror>"
        out[key] = value
    return out


def inspect_labels(sif: Path) -> dict:
    """Labels of an image (spython's inspect, guarded), with the mirror URL redacted."""
    return _redact_labels(_inspect_labels(sif))


def _inspect_labels(sif: Path) -> dict:
    client = _spython_client()
    if client is not None:
        res = client.inspect(image=str(sif), quiet=True)
        if isinstance(res, dict) and "attributes" in res:
            labels = res["attributes"].get("labels") or {}
            if isinstance(labels, str):       # older formats nest JSON in a string
                labels = json.loads(labels)
            return dict(labels)
        if isinstance(res, dict) and "labels" in res:
            return dict(res["labels"])
    proc = subprocess.run([APPTAINER, "inspect", "--labels", "--json", str(sif)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"apptainer inspect {sif.name} failed: {proc.stderr.strip()[:200]}")
    data = json.loads(proc.stdout)
    return dict(data.get("data", {}).get("attributes", {}).get("labels", {}) or {})


def _sidecars(name: str) -> Iterable[tuple[Path, dict]]:
    for side in sorted(cache_dir().glob(f"{name}-*@sha256-*.sif.json")):
        try:
            yield side, json.loads(side.read_text())
        except (OSError, ValueError):
            continue


def _cached_entry(name: str, key: str) -> dict | None:
    for side, entry in _sidecars(name):
        sif = cache_dir() / entry.get("file", "")
        if entry.get("definition_sha256") == key and sif.is_file() and sif.name == side.name[:-5]:
            if sha256_file(sif) == entry.get("image_sha256"):
                return entry
    return None


def build(names: Sequence[str] | None = None, force: bool = False,
          log: Callable[[str], None] = print) -> list[dict]:
    """Build images whose definition key has no SIF in the cache; update the lock; return the entries."""
    user_log = log

    def log(msg: str) -> None:              # progress must show up live even when stdout is a file
        user_log(msg)
        sys.stdout.flush()

    names = list(names) if names else available_images()
    for name in names:                     # validate everything before the first long build
        meta = image_meta(name)
        label = _def_label(name, "org.daisy.version")
        if label != meta["version"]:
            raise ImageError(f"containers/{name}: image.json version {meta['version']} != "
                             f"%labels org.daisy.version {label}")
    apptainer_version = _apptainer_version()
    cache = cache_dir()
    (cache / "logs").mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        meta = image_meta(name)
        key = definition_key(name)
        entry = None if force else _cached_entry(name, key)
        if entry:
            log(f"[{name}] up to date: {entry['file']} (definition sha256 {key[:12]})")
        else:
            deffile = _image_dir(name) / f"{name}.def"
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            log_file = cache / "logs" / f"{name}-{stamp}.log"
            tmp = cache / f".building-{name}-{os.getpid()}.sif"
            tmp.unlink(missing_ok=True)   # spython trap reminder: a stale file must never count as success
            log(f"[{name}] building {meta['version']} (definition sha256 {key[:12]})")
            t0 = time.monotonic()
            try:
                _run_build(name, deffile, tmp, _build_args(meta), bool(meta.get("needs_ca_bundle")),
                           log_file, log)
                seconds = round(time.monotonic() - t0, 1)
                digest = sha256_file(tmp)
                log(f"[{name}] reading manifest")
                manifest = read_manifest(tmp)
                final = cache / f"{name}-{meta['version']}@sha256-{digest}.sif"
                os.replace(tmp, final)       # atomic: same directory
                os.chmod(final, 0o444)
            finally:
                tmp.unlink(missing_ok=True)
            sha256_file(final)               # prime the stat cache under the final name
            entry = {
                "name": name,
                "version": meta["version"],
                "definition": str(deffile.relative_to(REPO)),
                "definition_sha256": key,
                "build_arg_names": sorted(BUILD_ARG_NAMES),
                "mksquashfs_args": MKSQUASHFS_ARGS,
                "image_sha256": digest,
                "file": final.name,
                "size_bytes": final.stat().st_size,
                "build_seconds": seconds,
                "built_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                "apptainer_version": apptainer_version,
                "manifest": manifest,
            }
            _atomic_write_json(cache / (final.name + ".json"), entry)
            log(f"[{name}] built in {seconds:.0f} s: {final.name} ({entry['size_bytes'] / 1e6:.0f} MB)")
        lock = load_lock()
        lock["images"][name] = entry
        write_lock(lock)
        results.append(entry)
    return results


# --------------------------------------------------------------------------------------------- run

def _bind_spec(path, mode: str) -> list[str]:
    p = Path(path).resolve()
    if "," in str(p) or ":" in str(p):
        raise ImageError(f"cannot bind {p}: apptainer bind paths may not contain ',' or ':'")
    if not p.exists():
        raise ImageError(f"cannot bind {p}: it does not exist")
    return ["--bind", f"{p}:{p}:{mode}"]


def exec_argv(name: str, argv: Sequence[str], binds_ro: Iterable = (), binds_rw: Iterable = (),
              pwd=None, env: dict | None = None) -> list[str]:
    """The ``apptainer exec`` command line for running ``argv`` in image ``name``.

    ``--containall --cleanenv --no-home``: no host home, environment, /tmp or PID namespace leaks in;
    ``daisy_steps/`` is bound read-only at /opt/daisy/daisy_steps (PYTHONPATH=/opt/daisy in the images),
    inputs read-only and outputs read-write at their host paths. Built as a plain list, not via spython:
    the caller (Snakemake rules, ``run_in_image``) needs the exact argv, and spython's execute ignores
    ``contain`` and exits the process on a missing bind.
    """
    cmd = [APPTAINER, "exec", *EXEC_OPTIONS]
    if STEPS_DIR.is_dir():
        cmd += ["--bind", f"{STEPS_DIR.resolve()}:{STEPS_TARGET}:ro"]
    if SCHEMAS_DIR.is_dir():
        cmd += ["--bind", f"{SCHEMAS_DIR.resolve()}:{SCHEMAS_TARGET}:ro"]
    for p in binds_ro:
        cmd += _bind_spec(p, "ro")
    for p in binds_rw:
        cmd += _bind_spec(p, "rw")
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    if pwd is not None:
        cmd += ["--pwd", str(Path(pwd).resolve())]
    cmd.append(str(image_path(name)))
    cmd += [str(a) for a in argv]
    return cmd


class ImageHolders:
    """Keep images mounted while a run lasts, so that its jobs start on warm pages.

    Every ``apptainer exec`` of a SIF attaches a loop device and mounts its squashfs afresh, and a
    new mount starts with an empty page cache: a job's Python imports then read and decompress the
    image again (measured: numpy + h5py + hdf5plugin import in 0.34 s from a fresh mount, 0.18 s
    from a warm one, 0.14 s on the host; ``import tomopy`` 1.1 s against 0.55 s). With ``shared
    loop devices = yes`` in apptainer.conf (scripts/install-apptainer.sh sets it) every container
    of an image shares one loop device and hence one squashfs mount and its cache, as long as one
    container keeps it attached. A holder is one such container per image, started when a run
    starts and stopped when it ends: it first imports the libraries the run's steps will import
    (warming the cache while Snakemake starts), then sleeps. It dies with its parent
    (PR_SET_PDEATHSIG) should the run be killed. The jobs still run the digest-verified SIF.
    Best effort: a holder that cannot start costs nothing.
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
                    [APPTAINER, "exec", "--containall", str(sif), "sh", "-c", self.HOLD, self.WARM_UP, *modules],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent))
            except OSError:
                pass

    def release(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
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


def run_in_image(name: str, argv: Sequence[str], binds_ro: Iterable = (), binds_rw: Iterable = (),
                 pwd=None, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Verify the image digest, then run ``argv`` in it (``subprocess.run(check=True, **kwargs)``)."""
    verify_image(name)
    return subprocess.run(exec_argv(name, argv, binds_ro, binds_rw, pwd, env), check=True, **kwargs)


# --------------------------------------------------------------------------------------------- CLI

def _err(msg: str) -> int:
    print(f"daisy containers: error: {msg}", file=sys.stderr)
    return 1


def _cmd_build(args) -> int:
    if args.cache:
        os.environ["DAISY_IMAGE_CACHE"] = str(Path(args.cache).resolve())
    try:
        build(args.names or None, force=args.force)
    except ImageError as exc:
        return _err(str(exc))
    return 0


def _cmd_list(args) -> int:
    try:
        lock = load_lock()
        cache = cache_dir()
    except ImageError as exc:
        return _err(str(exc))
    defined = available_images()
    order = {n: i for i, n in enumerate(DEFAULT_ORDER)}
    names = sorted(set(defined) | set(lock["images"]), key=lambda n: (order.get(n, 99), n))
    print(f"{'IMAGE':8} {'VERSION':8} {'SIZE':>8} {'BUILT':20} {'STATE':9} FILE")
    for name in names:
        e = lock["images"].get(name)
        if not e:
            print(f"{name:8} {image_meta(name)['version'] if name in defined else '-':8} {'-':>8} {'-':20} "
                  f"{'unbuilt':9} -")
            continue
        state = "cached" if (cache / e["file"]).is_file() else "missing"
        if state == "cached" and name in defined and definition_key(name) != e["definition_sha256"]:
            state = "stale"
        print(f"{name:8} {e['version']:8} {e['size_bytes'] / 1e6:7.0f}M {e['built_at'][:19]:20} {state:9} "
              f"{e['file']}")
    return 0


def _cmd_inspect(args) -> int:
    try:
        entry = _lock_entry(args.name)
        path = image_path(args.name)
        labels = inspect_labels(path)
    except ImageError as exc:
        return _err(str(exc))
    print(f"image:      {args.name} {entry['version']}")
    print(f"file:       {path}")
    print(f"sha256:     {entry['image_sha256']}")
    print(f"definition: {entry.get('definition')} (sha256 {entry['definition_sha256']})")
    print(f"built:      {entry['built_at']} in {entry['build_seconds']} s with apptainer {entry['apptainer_version']}")
    print("labels:")
    for k in sorted(labels):
        print(f"  {k} = {labels[k]}")
    man = entry.get("manifest", {})
    print(f"python distributions ({len(man.get('pip', {}))}):")
    for k, v in sorted(man.get("pip", {}).items(), key=lambda kv: kv[0].lower()):
        print(f"  {k}=={v}")
    print(f"debian packages ({len(man.get('dpkg', {}))}):")
    for k, v in sorted(man.get("dpkg", {}).items()):
        print(f"  {k}={v}")
    return 0


def _cmd_verify(args) -> int:
    try:
        lock = load_lock()
        names = args.names or sorted(lock["images"])
        if not names:
            return _err(f"no images in {LOCK_PATH.name}; run `daisy containers build`")
        problems = verify(names)
    except ImageError as exc:
        return _err(str(exc))
    for p in problems:
        print(f"MISMATCH {p}", file=sys.stderr)
    for name in names:
        if not any(f"'{name}'" in p for p in problems):
            print(f"ok {name} sha256:{lock['images'][name]['image_sha256']}")
    return 1 if problems else 0


def prune(dry_run: bool = False) -> list[Path]:
    """Remove cached SIFs (and their sidecars) that the lock no longer names."""
    keep = {entry["file"] for entry in load_lock().get("images", {}).values()}
    removed = []
    for sif in sorted(cache_dir().glob("*.sif")):
        if sif.name in keep:
            continue
        removed.append(sif)
        if not dry_run:
            for path in (sif, sif.with_name(sif.name + ".json")):
                if path.exists():
                    path.chmod(0o644)
                    path.unlink()
    return removed


def _cmd_prune(args) -> int:
    removed = prune(args.dry_run)
    for path in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path.name}")
    if not removed:
        print("nothing to prune: every cached image is in the lock")
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``containers {build,list,inspect,verify}`` to an argparse subparsers object (``args.func(args)``)."""
    p = subparsers.add_parser("containers", help="build, list, inspect and verify the Apptainer images")
    sub = p.add_subparsers(dest="containers_command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("build", help="build images whose definition changed (all by default)")
    b.add_argument("names", nargs="*", metavar="NAME")
    b.add_argument("--force", action="store_true", help="rebuild even if an up-to-date image is cached")
    b.add_argument("--cache", metavar="DIR", help="image cache directory (default $DAISY_IMAGE_CACHE "
                   "or ~/.cache/daisy/images)")
    b.set_defaults(func=_cmd_build)
    ls = sub.add_parser("list", help="list locked images and whether they are in the cache")
    ls.set_defaults(func=_cmd_list)
    i = sub.add_parser("inspect", help="labels and package manifest of an image")
    i.add_argument("name", metavar="NAME")
    i.set_defaults(func=_cmd_inspect)
    v = sub.add_parser("verify", help="check cached images against the lock's sha256")
    v.add_argument("names", nargs="*", metavar="NAME")
    v.set_defaults(func=_cmd_verify)
    pr = sub.add_parser("prune", help="delete cached images the lock no longer names (older builds)")
    pr.add_argument("-n", "--dry-run", action="store_true", help="only list what would be removed")
    pr.set_defaults(func=_cmd_prune)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daisy.containers")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["containers", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
