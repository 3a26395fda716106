"""``daisy archive``: a finished run as one BagIt bag in one uncompressed tar.

The bag (BagIt 1.0, sha256 manifests, one top-level folder named after the archive) holds under
``data/``:

- ``run/``: the run folder (outputs, provenance.json, crate, resolved config, records, logs, jobs);
- ``workflow/``: the workflow source that ran (``workflow_files`` of the provenance), taken from
  this checkout, refused when any file differs from its recorded sha256;
- ``images/<file>``: the SIF images of the run (``--with-images``), checked against their digest;
- ``inputs/<absolute path without the leading />``: the inputs (``--with-inputs``), in their
  folder layout (an Eiger master still finds its data files).

Beside the BagIt tag files, ``daisy-archive.json`` (a tag file, in the tag manifest) says what the
rerun needs: where each input, image and output lies in the bag and the digests recorded by the run.

Every file is read once: streamed into the tar while its sha256 is computed, compared with the
digest the run recorded (a file changed since the run is refused), and the manifest is written
from those digests. The archive is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from . import __version__

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = "daisy-archive.json"
ARCHIVE_VERSION = 1
MANIFEST = "manifest-sha256.txt"
TAGMANIFEST = "tagmanifest-sha256.txt"
RUN, WORKFLOW, IMAGES, INPUTS = "data/run", "data/workflow", "data/images", "data/inputs"
BUFSIZE = 1 << 22


class ArchiveError(Exception):
    """A refusal or failure of ``daisy archive``/``daisy rerun``: one line meant for the user."""


def say(message: str) -> None:
    print(message, flush=True)


# -- manifest lines (RFC 8493 2.1.3: CR, LF and % percent-encoded) ------------------------------

def encode_path(path: str) -> str:
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def decode_path(text: str) -> str:
    return re.sub(r"%(0[AaDd]|25)", lambda m: {"0A": "\n", "0D": "\r", "25": "%"}[m.group(1).upper()], text)


def manifest_text(digests: dict[str, str]) -> bytes:
    return "".join(f"{digest}  {encode_path(path)}\n" for path, digest in sorted(digests.items())).encode()


def parse_manifest(text: str) -> dict[str, str]:
    entries = {}
    for line in text.splitlines():
        if line.strip():
            digest, _, path = line.strip().partition(" ")
            entries[decode_path(path.lstrip(" *"))] = digest.lower()
    return entries


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# -- the run's record --------------------------------------------------------------------------

def load_provenance(run_dir: Path) -> dict[str, Any]:
    """The run's provenance.json; refuses a failed run and one without ``workflow_files``."""
    path = run_dir / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchiveError(f"{run_dir} has no provenance.json: not a finished DAISY run") from None
    except ValueError as exc:
        raise ArchiveError(f"{path} is not valid JSON: {exc}") from None
    if prov.get("status", "completed") != "completed":
        raise ArchiveError(f"{path}: the run did not complete (status {prov.get('status')!r}); only finished runs are archived")
    if not prov.get("workflow_files"):
        raise ArchiveError(f"{path} (provenance_version {prov.get('provenance_version')}) records no workflow_files: "
                           f"rerun the analysis with a DAISY that records its workflow source")
    for key in ("pipeline", "config", "inputs", "outputs", "images"):
        if key not in prov:
            raise ArchiveError(f"{path} has no {key!r}")
    return prov


def run_base(run_dir: Path, config: dict[str, Any]) -> Path:
    """The working directory the run started in, for provenance that does not record it
    (``workdir``; relative paths of the provenance are relative to it): the run folder minus the
    config's relative ``outdir``, else the current directory."""
    outdir = PurePosixPath(config.get("outdir", ""))
    resolved = run_dir.resolve()
    if not outdir.is_absolute():
        parts = [p for p in outdir.parts if p != "."]
        if parts and list(resolved.parts[-len(parts):]) == parts:
            return Path(*resolved.parts[:-len(parts)])
    return Path.cwd()


def absolute(path: str, base: Path) -> Path:
    return Path(os.path.normpath(path if os.path.isabs(path) else base / path))


def input_arcname(path: Path) -> str:
    return f"{INPUTS}/{path.as_posix().lstrip('/')}"


# -- what goes into the bag --------------------------------------------------------------------

@dataclass
class Entry:
    """A payload file: where it goes in the bag, where it comes from, what the run recorded."""

    arcname: str
    source: Path
    label: str                      # how a refusal names it
    sha256: str | None = None       # recorded digest (None: nothing recorded, hash for the manifest)
    size: int | None = None
    section: str = "run"


def collect(run_dir: Path, prov: dict[str, Any], with_images: bool, with_inputs: bool,
            repo: Path = REPO) -> tuple[list[Entry], dict[str, Any]]:
    """Every payload file of the bag (workflow source first) and the archive descriptor."""
    from .images import cache_dir

    config = prov["config"]
    base = Path(prov["workdir"]) if prov.get("workdir") else run_base(run_dir, config)
    outdir = Path(prov["outdir"]) if prov.get("outdir") else absolute(config["outdir"], base)
    entries = [Entry(f"{WORKFLOW}/{rel}", repo / rel, f"workflow file {rel}", info["sha256"], info.get("size"),
                     "workflow") for rel, info in sorted(prov["workflow_files"].items())]
    bad = [rel for rel in prov["workflow_files"] if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts]
    if bad:
        raise ArchiveError(f"workflow_files name paths outside the repository: {', '.join(bad)}")

    recorded = {}                   # outputs: path relative to the outdir -> info
    for key, info in prov["outputs"].items():
        path = absolute(key, base)
        if not path.is_relative_to(outdir):
            raise ArchiveError(f"output {key} is outside the run's outdir {outdir}")
        recorded[path.relative_to(outdir).as_posix()] = info
    found = set()
    for folder, dirs, files in os.walk(run_dir):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder) / name
            rel = path.relative_to(run_dir).as_posix()
            if path.is_symlink() or not path.is_file():
                raise ArchiveError(f"the run folder holds {rel}, which is not a regular file (a link?); archives hold files only")
            info = recorded.get(rel, {})
            entries.append(Entry(f"{RUN}/{rel}", path, f"output {rel}" if rel in recorded else f"run file {rel}",
                                 info.get("sha256"), info.get("size")))
            found.add(rel)
    missing = sorted(set(recorded) - found)
    if missing:
        raise ArchiveError(f"outputs recorded by the run are missing from {run_dir}: {', '.join(missing)}")

    inputs = {}
    for key, info in sorted(prov["inputs"].items()):
        path = absolute(key, base)
        inputs[key] = {"path": str(path), "sha256": info["sha256"], "size": info.get("size"),
                       "archived": input_arcname(path) if with_inputs else None}
        if with_inputs:
            entries.append(Entry(input_arcname(path), path, f"input {path}", info["sha256"], info.get("size"), "inputs"))
    images = {}
    for name, info in sorted(prov["images"].items()):
        if not info.get("file") or not info.get("image_sha256"):
            raise ArchiveError(f"the provenance records no file or digest for image {name!r}")
        images[name] = {"file": info["file"], "image_sha256": info["image_sha256"], "version": info.get("version"),
                        "origin": info.get("origin", "published"),
                        "archived": f"{IMAGES}/{info['file']}" if with_images else None}
        if with_images:
            source = Path(info["path"]) if info.get("path") else cache_dir() / info["file"]  # as it ran
            entries.append(Entry(f"{IMAGES}/{info['file']}", source, f"image {name!r} {info['file']}",
                                 info["image_sha256"], info.get("size_bytes"), "images"))
    descriptor = {
        "archive_version": ARCHIVE_VERSION, "daisy_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pipeline": prov["pipeline"], "provenance_version": prov.get("provenance_version"),
        "run_created": prov.get("created"), "run_dir": str(run_dir.resolve()), "run_base": str(base),
        "outdir": str(outdir), "with_images": with_images, "with_inputs": with_inputs,
        "inputs": inputs, "images": images,
        "outputs": {rel: info.get("sha256") for rel, info in sorted(recorded.items())},
    }
    return entries, descriptor


def precheck(entries: list[Entry]) -> dict[str, str]:
    """Cheap checks before anything is written: every file exists with its recorded size.
    Refuses at once for a missing file; returns the workflow files of another size (refused with
    those whose content differs once the workflow source has been read)."""
    problems, resized = [], {}
    for entry in entries:
        try:
            size = entry.source.stat().st_size
        except OSError:
            problems.append(f"{entry.label}: {entry.source} does not exist")
            continue
        if entry.size is not None and size != entry.size:
            problem = f"{entry.label}: {entry.source} has {size} bytes, the run recorded {entry.size}"
            if entry.section == "workflow":
                resized[entry.arcname] = problem
            else:
                problems.append(problem)
    _refuse(problems + list(resized.values()) if problems else [])
    return resized


def _refuse(problems: list[str]) -> None:
    if not problems:
        return
    hint = ("; check out the run's commit (the workflow source must be the one that ran)"
            if any(p.startswith("workflow file") for p in problems) else "")
    shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
    raise ArchiveError("refusing to archive: " + "; ".join(shown) + hint)


# -- writing -----------------------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """Reads a file for tarfile, hashing the bytes on the way (one read per file)."""

    def __init__(self, handle):
        self.handle, self.digest, self.count = handle, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.digest.update(block)
        self.count += len(block)
        return block


def _tarinfo(name: str, size: int, mtime: float, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_file(tar: tarfile.TarFile, name: str, entry: Entry) -> tuple[str, int]:
    with open(entry.source, "rb") as handle:
        st = os.fstat(handle.fileno())
        reader = _Hashing(handle)
        tar.addfile(_tarinfo(name, st.st_size, st.st_mtime, bool(st.st_mode & 0o100)), reader)
        if os.fstat(handle.fileno()).st_size != st.st_size:
            raise ArchiveError(f"{entry.label}: {entry.source} changed size while it was archived")
    return reader.digest.hexdigest(), reader.count


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data), time.time()), io.BytesIO(data))


def bag_info(descriptor: dict[str, Any], oxum: tuple[int, int]) -> bytes:
    parts = ["outputs", "provenance", "workflow source"] + (["images"] if descriptor["with_images"] else []) + \
            (["inputs"] if descriptor["with_inputs"] else [])
    fields = [
        ("Bag-Software-Agent", f"DAISY {__version__} (daisy archive)"),
        ("Bagging-Date", datetime.now(timezone.utc).date().isoformat()),
        ("Payload-Oxum", f"{oxum[0]}.{oxum[1]}"),
        ("External-Description", f"DAISY {descriptor['pipeline']} run {descriptor['outdir']}: {', '.join(parts)}"),
        ("DAISY-Version", __version__),
        ("DAISY-Pipeline", descriptor["pipeline"]),
        ("DAISY-Run-Created", str(descriptor.get("run_created"))),
        ("DAISY-Rerun", "daisy rerun THIS_FILE --workdir DIR"),
    ]
    return "".join(f"{k}: {v}\n" for k, v in fields).encode()


def write_archive(run_dir: Path, out: Path, with_images: bool = False, with_inputs: bool = False,
                  progress: Callable[[str], None] = say) -> dict[str, Any]:
    """Write the bag of the run in ``run_dir`` to ``out`` (a tar). Returns a summary."""
    started = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise ArchiveError(f"run folder {run_dir} does not exist")
    if out.exists():
        raise ArchiveError(f"{out} exists already; remove it or choose another name")
    if out.resolve().is_relative_to(run_dir.resolve()):
        raise ArchiveError(f"the archive {out} must not be inside the run folder {run_dir}")
    prov = load_provenance(run_dir)
    entries, descriptor = collect(run_dir, prov, with_images, with_inputs)
    resized = precheck(entries)
    top = re.sub(r"[^A-Za-z0-9._-]+", "_", out.name.split(".tar")[0] or "daisy-run")
    total = sum(e.source.stat().st_size for e in entries)
    progress(f"daisy archive: {run_dir} -> {out} ({len(entries)} files, {human(total)}"
             f"{', with images' if with_images else ''}{', with inputs' if with_inputs else ''})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    digests: dict[str, str] = {}
    payload = [0, 0]
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = BUFSIZE
            tags = {"bagit.txt": b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"}
            _add_bytes(tar, f"{top}/bagit.txt", tags["bagit.txt"])
            section, problems = None, list(resized.values())
            for entry in entries:
                if entry.section != section:
                    _refuse(problems)    # the workflow source is checked in full before the rest
                    section = entry.section
                    count = sum(e.section == section for e in entries)
                    progress(f"daisy archive: {section} ({count} files)")
                if entry.section in ("images", "inputs") or entry.source.stat().st_size > 64 << 20:
                    progress(f"daisy archive:   {entry.label} ({human(entry.source.stat().st_size)})")
                digest, size = _add_file(tar, f"{top}/{entry.arcname}", entry)
                if entry.sha256 and digest != entry.sha256 and entry.arcname not in resized:
                    problems.append(f"{entry.label}: {entry.source} has sha256:{digest}, the run recorded sha256:{entry.sha256}"
                                    + (" (changed since the run)" if entry.section != "images" else " (the lock's digest)"))
                digests[entry.arcname] = digest
                payload[0] += size
                payload[1] += 1
            _refuse(problems)
            tags["bag-info.txt"] = bag_info(descriptor, (payload[0], payload[1]))
            tags[MANIFEST] = manifest_text(digests)
            tags[DESCRIPTOR] = (json.dumps(descriptor, indent=1, sort_keys=True) + "\n").encode()
            for name in ("bag-info.txt", MANIFEST, DESCRIPTOR):
                _add_bytes(tar, f"{top}/{name}", tags[name])
            tag_digests = {name: hashlib.sha256(data).hexdigest() for name, data in tags.items()}
            _add_bytes(tar, f"{top}/{TAGMANIFEST}", manifest_text(tag_digests))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    progress(f"daisy archive: wrote {out} ({human(size)}, {payload[1]} payload files) in {seconds:.1f} s")
    return {"archive": str(out), "size": size, "payload_bytes": payload[0], "payload_files": payload[1],
            "seconds": seconds, "top": top}
