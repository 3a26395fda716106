"""Reproducible SIFs: two builds of one definition give the same sha256 (docs/image-reproducibility.md).

Apptainer 1.4.5 stamps every build with the time and a random ID, and embeds the rendered
definition (with the host's Debian mirror). The definitions already make the root filesystem
reproducible (pinned packages, hash-based pycs from pip). What is left is rewritten here, after
``apptainer build``:

1. the build-date label becomes :data:`SOURCE_DATE_EPOCH`'s date, in ``/.singularity.d/labels.json``
   and in the SIF's inspect metadata;
2. the embedded definition (``/.singularity.d/Singularity``, the SIF's deffile object and the
   metadata's copy, the mirror label) becomes the definition as written in the repository, so the
   image no longer depends on (nor names) the builder's mirror;
3. ``/etc/shadow``'s "last changed" days (the build's date) become the epoch's day, dpkg's and
   ldconfig's logs (:data:`BUILD_LOGS`) are removed, and the root filesystem is squashed
   again with the same options and ``SOURCE_DATE_EPOCH`` (every later file time is clamped to it);
4. the SIF is assembled with ``apptainer sif`` and its header and descriptor times are set to the
   epoch, its ID derived from its content.

Needs root (unsquashfs must restore file owners); elsewhere the build stays as Apptainer made it.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

from daisy_steps.fileio import sha256_file

from . import paths
from .paths import MKSQUASHFS_ARGS, SOURCE_DATE_EPOCH, ImageError

BUILD_DATE_LABEL = "org.label-schema.build-date"
MIRROR_LABEL = "org.label-schema.usage.singularity.deffile.mirrorurl"
#: the password files: their "last changed" field (days since 1970) is the day of the build
SHADOW_FILES = ("etc/shadow", "etc/shadow-")
#: written during the build with the time in them (dpkg and ldconfig); removed from the image
BUILD_LOGS = ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/apt", "var/cache/ldconfig/aux-cache")

# SIF v01 layout (github.com/apptainer/sif): a 128-byte header, then fixed-size descriptors
_HEADER_ID, _HEADER_TIMES = 48, 64            # uuid (16 bytes); CreatedAt, ModifiedAt (int64)
_DESCR = struct.Struct("<iBIIIqqqqqqq")       # type, used, id, group, link, offset, size, padded, c, m, uid, gid
_DESCR_SIZE = _DESCR.size + 128 + 384        # + name + extra = 585
_DESCR_TIMES = 41                            # CreatedAt, ModifiedAt within a descriptor
DEFFILE, JSON_GENERIC, PARTITION = 0x4001, 0x4006, 0x4004


def descriptors(sif: Path) -> list[dict]:
    """The used data object descriptors of ``sif``: type, id, offset, size, name and where it sits."""
    with open(sif, "rb") as fh:
        head = fh.read(128)
        if head[32:42] != b"SIF_MAGIC\0":
            raise ImageError(f"{sif} is not a SIF file")
        _free, total, offset, _size = struct.unpack_from("<qqqq", head, 80)
        fh.seek(offset)
        raw = fh.read(total * _DESCR_SIZE)
    out = []
    for i in range(total):
        at = i * _DESCR_SIZE
        dtype, used, oid, _group, _link, off, size, *_ = _DESCR.unpack_from(raw, at)
        if used:
            name = raw[at + _DESCR.size:at + _DESCR.size + 128].rstrip(b"\0").decode()
            extra = raw[at + _DESCR.size + 128:at + _DESCR_SIZE]
            out.append({"type": dtype, "id": oid, "offset": off, "size": size, "name": name,
                        "descriptor_at": offset + at, "extra": extra})
    return out


def build_date(epoch: int = SOURCE_DATE_EPOCH) -> str:
    """The build-date label in Apptainer's own format (``Thursday_1_January_2026_0:0:0_UTC``)."""
    t = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return f"{t:%A}_{t.day}_{t:%B}_{t.year}_{t.hour}:{t.minute}:{t.second}_UTC"


def fixed_labels(labels: dict) -> dict:
    """``labels`` with the build date fixed and the mirror shown as the definition writes it."""
    labels = dict(labels, **{BUILD_DATE_LABEL: build_date()})
    if MIRROR_LABEL in labels:
        labels[MIRROR_LABEL] = "{{ mirror }}"
    return labels


def fixed_shadow(text: str, epoch: int = SOURCE_DATE_EPOCH) -> str:
    """``/etc/shadow`` with every set "last changed" day (the third field) on the epoch's day."""
    lines = []
    for line in text.splitlines(keepends=True):
        fields = line.split(":")
        if len(fields) > 2 and fields[2]:
            fields[2] = str(epoch // 86400)
        lines.append(":".join(fields))
    return "".join(lines)


def normalise(sif: Path, definition: Path, workdir: Path, log=print) -> bool:
    """Rewrite ``sif`` (in place, atomically) so that it depends only on its definition's content.
    False (nothing changed) when not root; ImageError if a tool fails."""
    if os.geteuid() != 0:
        log(f"[{sif.name}] not root: left as Apptainer built it (not reproducible)")
        return False
    objects = {d["type"]: d for d in descriptors(sif)}
    if not all(t in objects for t in (DEFFILE, JSON_GENERIC, PARTITION)):
        raise ImageError(f"{sif}: expected a deffile, inspect metadata and a partition, got "
                         f"{sorted(hex(t) for t in objects)}")
    template = definition.read_text()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        root = workdir / "root"
        _run(["unsquashfs", "-q", "-n", "-o", str(objects[PARTITION]["offset"]), "-d", str(root), str(sif)])
        for rel in BUILD_LOGS:
            if (root / rel).is_dir() and not (root / rel).is_symlink():
                shutil.rmtree(root / rel)
            else:
                (root / rel).unlink(missing_ok=True)
        for rel in SHADOW_FILES:
            if (root / rel).is_file():
                (root / rel).write_text(fixed_shadow((root / rel).read_text()))
        labels_file = root / ".singularity.d" / "labels.json"
        labels = fixed_labels(json.loads(labels_file.read_text()))
        labels_file.write_text(json.dumps(labels, indent="\t", sort_keys=True))
        (root / ".singularity.d" / "Singularity").write_text(template)

        meta = json.loads(_read(sif, objects[JSON_GENERIC]))
        attrs = meta["data"]["attributes"]
        attrs["labels"], attrs["deffile"] = fixed_labels(attrs.get("labels", {})), template
        (workdir / "deffile").write_text(template)
        (workdir / "meta.json").write_text(json.dumps(meta, separators=(",", ":")))

        squash = workdir / "root.squashfs"
        _run(["mksquashfs", str(root), str(squash), "-noappend", "-quiet", *MKSQUASHFS_ARGS.split()],
             env=dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH)))
        shutil.rmtree(root)
        new = workdir / "image.sif"
        sif_cmd = [paths.APPTAINER, "sif"]
        _run([*sif_cmd, "new", str(new)])
        _run([*sif_cmd, "add", "--datatype", "1", "--groupid", "1", "--filename", "Singularity",
              str(new), str(workdir / "deffile")])
        _run([*sif_cmd, "add", "--datatype", "6", "--groupid", "1", "--filename", "inspect-metadata.json",
              str(new), str(workdir / "meta.json")])
        arch = str(int(objects[PARTITION]["extra"][8:10]))          # the build's own: "02" is amd64
        _run([*sif_cmd, "add", "--datatype", "4", "--parttype", "2", "--partfs", "1", "--partarch", arch,
              "--groupid", "1", "--filename", "root.squashfs", str(new), str(squash)])
        _stamp(new)
        os.replace(new, sif)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return True


def reproduce(names: list[str], log=print) -> list[str]:
    """Rebuild each image from nothing in a scratch cache (``<cache>/reproduce-<pid>``, removed
    after) and compare its sha256 with the committed lock's; one message per image that differs."""
    from .lock import load_lock, lock_entry

    scratch = paths.cache_dir() / f"reproduce-{os.getpid()}"
    problems = []
    try:
        for name in names:
            pinned = lock_entry(name)
            log(f"[{name}] rebuilding from nothing to compare with the committed lock (sha256:{pinned['image_sha256'][:12]}…)")
            proc = subprocess.run([sys.executable, "-m", "daisy.images.cli", "build", "--force", "--cache",
                                   str(scratch), name], cwd=paths.REPO)
            if proc.returncode != 0:
                problems.append(f"image '{name}': the rebuild failed (exit {proc.returncode})")
                continue
            built = load_lock(scratch / paths.LOCAL_LOCK_NAME)["images"][name]
            if built["image_sha256"] == pinned["image_sha256"]:
                log(f"[{name}] reproduced: sha256:{built['image_sha256']} is the committed lock's, bit for bit")
                continue
            tools = [f"{key} {pinned.get(key)} → {built.get(key)}" for key in ("apptainer_version", "mksquashfs_version")
                     if pinned.get(key) != built.get(key)]
            problems.append(f"image '{name}' NOT reproduced: built sha256:{built['image_sha256']}, the lock pins "
                            f"sha256:{pinned['image_sha256']}"
                            + (f" (tools differ: {'; '.join(tools)})" if tools else "")
                            + ("" if built.get("reproducible") else " (this build was not normalised: not root?)"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return problems


def squashfs_tools_version() -> str:
    """``mksquashfs``'s version (``4.5.1``): its output, hence the digest, may change with it."""
    proc = subprocess.run(["mksquashfs", "-version"], capture_output=True, text=True)
    found = re.search(r"version\s+(\S+)", proc.stdout + proc.stderr)
    return found.group(1) if found else "unknown"


def _stamp(sif: Path) -> None:
    """Set the SIF header's and every descriptor's times to the epoch, then its ID to a UUID
    derived from the whole file (so equal content gives an equal file)."""
    times = struct.pack("<qq", SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH)
    with open(sif, "r+b") as fh:
        for d in descriptors(sif):
            fh.seek(d["descriptor_at"] + _DESCR_TIMES)
            fh.write(times)
        fh.seek(_HEADER_TIMES)
        fh.write(times)
        fh.seek(_HEADER_ID)
        fh.write(bytes(16))
    ident = uuid.UUID(bytes=bytes.fromhex(sha256_file(sif))[:16], version=5)
    with open(sif, "r+b") as fh:
        fh.seek(_HEADER_ID)
        fh.write(ident.bytes)


def _read(sif: Path, obj: dict) -> bytes:
    with open(sif, "rb") as fh:
        fh.seek(obj["offset"])
        return fh.read(obj["size"])


def _run(cmd: list[str], env: dict | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ImageError(f"making the image reproducible: `{' '.join(cmd[:3])} …` failed "
                         f"(exit {proc.returncode}): {' | '.join(tail)}")
