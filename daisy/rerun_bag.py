"""``daisy rerun``'s first steps on an archive: safe extraction and BagIt validation.

1. Every tar member is checked before anything is written (:func:`check_members`): only regular
   files and folders, all under one top-level folder, no absolute name, no ``..``, no links,
   devices or FIFOs, no name twice.
2. The members are extracted (:func:`extract`) while each is hashed (one read), and the bag is
   validated from those digests (:func:`validate_bag`): bagit.txt, Payload-Oxum, every payload
   file against ``manifest-sha256.txt`` (a changed, missing or extra member is named), the tag
   files against the tag manifest, which must cover ``daisy-archive.json``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Callable

from .archive import BUFSIZE, DESCRIPTOR, MANIFEST, TAGMANIFEST, ArchiveError, human, parse_manifest

KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
         tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO"}
MAX_PROBLEMS = 12


def _refuse(archive: Path, problems: list[str], what: str) -> None:
    if problems:
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"]
                                           if len(problems) > MAX_PROBLEMS else [])
        raise ArchiveError(f"refusing {archive}: {what}: " + "; ".join(shown))


# -- 1. members --------------------------------------------------------------------------------

def check_members(archive: Path, tar: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, str]]:
    """Each member with its path inside the bag, or a refusal naming every bad member. Reads the
    headers only; nothing is written."""
    problems, kept, tops, seen, files = [], [], set(), set(), set()
    for member in tar:
        name = member.name
        parts = [p for p in PurePosixPath(name).parts if p != "."]
        if member.type in KINDS or not (member.isreg() or member.isdir()):
            kind = KINDS.get(member.type, f"not a regular file (type {member.type!r})")
            target = f" to {member.linkname!r}" if member.issym() or member.islnk() else ""
            problems.append(f"member {name!r} is {kind}{target}")
        elif not name or "\0" in name or name.startswith("/") or PurePosixPath(name).is_absolute():
            problems.append(f"member {name!r} has an absolute name")
        elif ".." in parts:
            problems.append(f"member {name!r} escapes the folder (..)")
        elif not parts:
            problems.append(f"member {name!r} has an empty name")
        else:
            rel = "/".join(parts[1:])
            tops.add(parts[0])
            if rel in seen:
                problems.append(f"member {name!r} appears twice")
            seen.add(rel)
            if member.isreg():
                if not rel:
                    problems.append(f"member {name!r} is a file at the top level (a bag is one folder)")
                files.add(rel)
            kept.append((member, rel))
    if len(tops) > 1:
        problems.append(f"members lie under several top-level folders ({', '.join(sorted(tops)[:5])}); a bag is one folder")
    parents = {"/".join(rel.split("/")[:i]) for rel in seen for i in range(1, rel.count("/") + 1)}
    clash = sorted(files & parents)
    if clash:
        problems.append(f"members {', '.join(clash[:5])} are both files and folders")
    _refuse(archive, problems, "unsafe archive, nothing extracted")
    if not files:
        raise ArchiveError(f"refusing {archive}: the archive holds no files")
    return kept


# -- 2. extraction and bag validation ----------------------------------------------------------

def extract(tar: tarfile.TarFile, members: list[tuple[tarfile.TarInfo, str]], dest: Path,
            progress: Callable[[str], None]) -> dict[str, tuple[str, int]]:
    """Write the checked members under ``dest`` (created here); returns {path: (sha256, size)}."""
    dest.mkdir()
    found: dict[str, tuple[str, int]] = {}
    for member, rel in members:
        path = dest / rel
        if member.isdir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if member.size > 64 << 20:
            progress(f"daisy rerun:   extracting {rel} ({human(member.size)})")
        digest = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if member.mode & 0o100 else 0o644)
        with os.fdopen(fd, "wb") as out, tar.extractfile(member) as source:
            while block := source.read(BUFSIZE):
                digest.update(block)
                out.write(block)
        os.utime(path, (member.mtime, member.mtime))
        found[rel] = (digest.hexdigest(), member.size)
    return found


def validate_bag(archive: Path, bag: Path, found: dict[str, tuple[str, int]]) -> dict[str, str]:
    """BagIt validation from the digests taken while extracting; returns the payload manifest."""
    text = (bag / "bagit.txt").read_text(errors="replace") if "bagit.txt" in found else ""
    if "BagIt-Version:" not in text:
        raise ArchiveError(f"refusing {archive}: not a BagIt bag (no bagit.txt with BagIt-Version)")
    if MANIFEST not in found:
        raise ArchiveError(f"refusing {archive}: the bag has no {MANIFEST}")
    problems = []
    manifest = parse_manifest((bag / MANIFEST).read_text())
    payload = {p for p in found if p.startswith("data/")}
    for path in sorted(manifest):
        if not path.startswith("data/") or ".." in PurePosixPath(path).parts:
            problems.append(f"the manifest names {path!r}, outside data/")
        elif path not in payload:
            problems.append(f"missing member data file {path} (listed in the manifest)")
        elif manifest[path] != found[path][0]:
            problems.append(f"changed member {path}: the manifest says sha256:{manifest[path]}, "
                            f"the archive holds sha256:{found[path][0]}")
    problems += [f"extra member {path} (not in the manifest)" for path in sorted(payload - set(manifest))]
    info = (bag / "bag-info.txt").read_text(errors="replace") if "bag-info.txt" in found else ""
    oxum = re.search(r"^Payload-Oxum:\s*(\d+)\.(\d+)\s*$", info, re.M)
    actual = (sum(found[p][1] for p in payload), len(payload))
    if oxum and (int(oxum[1]), int(oxum[2])) != actual:
        problems.append(f"Payload-Oxum says {oxum[1]} bytes in {oxum[2]} files, the archive holds {actual[0]} in {actual[1]}")
    tags = parse_manifest((bag / TAGMANIFEST).read_text()) if TAGMANIFEST in found else {}
    for path, digest in sorted(tags.items()):
        if path not in found:
            problems.append(f"missing tag file {path} (listed in the tag manifest)")
        elif found[path][0] != digest:
            problems.append(f"changed tag file {path}: the tag manifest says sha256:{digest}, the archive holds sha256:{found[path][0]}")
    if DESCRIPTOR not in tags:
        problems.append(f"{DESCRIPTOR} is missing or not covered by the tag manifest: not a DAISY archive")
    _refuse(archive, problems, "the bag is not valid")
    return manifest
