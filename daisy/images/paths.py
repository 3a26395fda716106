"""Where images are defined and cached, what they are, and their definition keys.

An image ``<name>`` is defined by ``containers/<name>/<name>.def`` and ``image.json``, with its
package lists in ``envs/``. Its *definition key* is a sha256 over the definition, every
repository file its ``%files`` section copies in, ``image.json`` and the build arguments that
change the content. The Debian mirror is one of them: it is read from the host's apt at run
time, hashed into the key and never written into the repository.

Other modules read the module-level paths as ``paths.NAME`` at call time, so that tests can
point them elsewhere with ``monkeypatch.setattr(paths, NAME, ...)``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from daisy.hashing import sha256_bytes

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_DIR = REPO / "containers"
LOCK_PATH = CONTAINERS_DIR / "images.lock.json"
STEPS_DIR = REPO / "daisy_steps"          # bound read-only at STEPS_TARGET
STEPS_TARGET = "/opt/daisy/daisy_steps"   # the images' PYTHONPATH holds /opt/daisy
SCHEMAS_DIR = REPO / "schemas"            # the steps' schemas, bound read-only at SCHEMAS_TARGET
SCHEMAS_TARGET = "/opt/daisy/schemas"
APPTAINER = "apptainer"
LOCK_VERSION = 1
KEY_VERSION = 1                           # bump when the key's composition changes
# squashfs compression, part of the definition key (start-up and size: docs/benchmarks.md)
MKSQUASHFS_ARGS = "-comp lz4 -Xhc"
BUILD_ARG_NAMES = ("mirror", "source_date_epoch")
#: every time in a DAISY image: file times (clamped), the build-date label, the SIF header
#: (daisy/images/reproducible.py)
SOURCE_DATE_EPOCH = 1767225600            # 2026-01-01T00:00:00Z
#: every step runs isolated: no host environment, no home, inputs bound read-only by the caller, and
#: no network (an empty network namespace; works unprivileged with Apptainer 1.4)
EXEC_OPTIONS = ("--containall", "--cleanenv", "--no-home", "--net", "--network", "none")
DEFAULT_ORDER = ("base", "tomopy", "pyfai")
LOCAL_LOCK_NAME = "local-lock.json"       # local builds, beside the cache (never the committed lock)


class ImageError(RuntimeError):
    """An image is missing, unbuildable or unusable. The message is one line meant for the user."""


class ImageDigestMismatch(ImageError):
    """The SIF in the cache does not have the sha256 recorded in the lock."""


# ------------------------------------------------------------------------------------ locations

def cache_dir() -> Path:
    """Image cache: ``$DAISY_IMAGE_CACHE`` or ``~/.cache/daisy/images`` (never inside the repository)."""
    env = os.environ.get("DAISY_IMAGE_CACHE")
    path = (Path(env).expanduser() if env else Path.home() / ".cache" / "daisy" / "images").resolve()
    if path.is_relative_to(REPO):
        raise ImageError(f"image cache {path} is inside the repository; set DAISY_IMAGE_CACHE elsewhere")
    return path


def local_lock_path() -> Path:
    """The local lock: images built on this machine (``<cache>/local-lock.json``), never committed."""
    return cache_dir() / LOCAL_LOCK_NAME


def image_dir(name: str) -> Path:
    """``containers/<name>/``, after checking the name and that the definition exists."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name or ""):
        raise ImageError(f"invalid image name {name!r}")
    folder = CONTAINERS_DIR / name
    if not (folder / f"{name}.def").is_file():
        raise ImageError(f"unknown image {name!r}: no containers/{name}/{name}.def")
    return folder


def definition_file(name: str) -> Path:
    """``containers/<name>/<name>.def``."""
    return image_dir(name) / f"{name}.def"


def available_images() -> list[str]:
    """Image names defined in the repository, base first."""
    names = sorted(p.parent.name for p in CONTAINERS_DIR.glob("*/*.def") if p.stem == p.parent.name)
    return sorted(names, key=lambda n: (DEFAULT_ORDER.index(n) if n in DEFAULT_ORDER else 99, n))


def image_meta(name: str) -> dict:
    """``containers/<name>/image.json`` (name, version, description, needs_ca_bundle)."""
    path = image_dir(name) / "image.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {path.relative_to(REPO)}: {exc}") from None
    if meta.get("name") != name or not meta.get("version"):
        raise ImageError(f"{path.relative_to(REPO)} must have name {name!r} and a version")
    return meta


# ------------------------------------------------------------------------------------ definitions

def def_sections(deffile: Path) -> dict[str, list[str]]:
    """The lines of each ``%section`` of a definition file, stripped, without blanks and comments.

    The header (``Bootstrap:`` ...) is under ``""``; repeated sections are joined.
    """
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for raw in Path(deffile).read_text().splitlines():
        line = raw.strip()
        if line.startswith("%"):
            current = line.split()[0]
            sections.setdefault(current, [])
        elif line and not line.startswith("#"):
            sections[current].append(line)
    return sections


def def_label(name: str, label: str) -> str | None:
    """The value of ``label`` in the ``%labels`` of image ``name``'s definition (None if absent)."""
    for line in def_sections(definition_file(name)).get("%labels", []):
        key, *value = line.split(None, 1)
        if key == label:
            return value[0] if value else ""
    return None


def definition_files(name: str) -> list[Path]:
    """The definition, image.json and every repository file its ``%files`` section copies in."""
    deffile = definition_file(name)
    files = [deffile, deffile.parent / "image.json"]
    for line in def_sections(deffile).get("%files", []):
        source = line.split()[0]
        if not (REPO / source).is_file():
            raise ImageError(f"{deffile.relative_to(REPO)}: %files source {source} not found")
        files.append(REPO / source)
    return files


def definition_key(name: str) -> str:
    """sha256 over the definition, the files it installs, image.json and content-affecting build args."""
    meta = image_meta(name)
    doc = {
        "key_version": KEY_VERSION,
        "files": {str(p.relative_to(REPO)): sha256_bytes(p.read_bytes()) for p in definition_files(name)},
        "build_args": build_args(),          # hashed only; the values are never written anywhere
        "mksquashfs_args": MKSQUASHFS_ARGS,
        "ca_bundle": bool(meta.get("needs_ca_bundle")),
    }
    return sha256_bytes(json.dumps(doc, sort_keys=True).encode())


def build_args() -> dict[str, str]:
    """The ``--build-arg`` values of every image (names: BUILD_ARG_NAMES)."""
    return {"mirror": debian_mirror(), "source_date_epoch": str(SOURCE_DATE_EPOCH)}


# ------------------------------------------------------------------------------------ host

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
    entries = [tuple(line.split(None, 1)) for line in out.splitlines() if len(line.split(None, 1)) == 2]
    codename = _host_codename()
    for release, uri in entries:
        if release == codename:
            return uri.strip()
    for release, uri in entries:
        if not release.endswith("-security"):
            return uri.strip()
    raise ImageError("apt lists no Debian mirror (apt-get indextargets); set DAISY_DEBIAN_MIRROR")


def _host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def apptainer_version() -> str:
    """The installed Apptainer's version (``1.4.5``); ImageError if it is missing or does not run."""
    try:
        out = subprocess.run([APPTAINER, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise ImageError("apptainer is not installed or does not run; run scripts/install-apptainer.sh") from None
    return out.strip().split()[-1]
