"""Image stores: where published images are pushed to and pulled from, always by digest.

Two kinds, named by URL:

- ``dir:///path``: a folder, e.g. on a shared filesystem. Layout
  ``<name>/<version>/<name>-<version>@sha256-<hex>.sif`` plus ``index.json`` (name -> version ->
  sha256, file, size, signer, lock entry). Writers copy to a temporary name, then, holding
  ``.index.lock`` (flock), check the index, rename the file into place and rewrite the index by
  rename: two concurrent writers cannot corrupt it. An index with ``"kind": "bundle"`` is an
  offline bundle (``daisy containers fetch``): runs use its files in place.
- ``oras://host[:port]/namespace``: any OCI registry. Push is Apptainer's own ``push oras://``
  (the manifest's one layer is the SIF, its digest the SIF's sha256), so anything Apptainer or
  ORAS pushed is pullable and the reverse. The version is the tag; a pull looks the tag's manifest
  up, checks that its SIF layer is the locked sha256 and streams that blob by digest over the
  registry API (:mod:`daisy.images.transfer`: written and hashed in one pass, which makes a
  verified pull cost about a ``cp``; ``apptainer pull`` writes, then DAISY would read it again). Registries on 127.0.0.1,
  localhost or ::1, and hosts listed in ``$DAISY_INSECURE_REGISTRIES`` (comma-separated
  ``host:port``), are spoken to over plain HTTP (``--no-https``).

Configured stores: ``$DAISY_IMAGE_STORES`` (comma-separated URLs, tried first) and the ``stores``
of the image's entry in the committed lock. Credentials: Apptainer's own login store
(``apptainer registry login``, ``~/.apptainer/docker-config.json``) or ``APPTAINER_DOCKER_USERNAME``
/ ``APPTAINER_DOCKER_PASSWORD``; DAISY reads them only to send them, never writes them anywhere.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from daisy.hashing import sha256_file
from daisy_steps.fileio import write_json_atomic

from . import paths
from .lock import file_lock
from .paths import ImageError
from .transfer import LOOPBACK, fetch_verified, registry_get, registry_open

STORES_ENV = "DAISY_IMAGE_STORES"
INSECURE_ENV = "DAISY_INSECURE_REGISTRIES"
STORE_VERSION = 1
SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"


def sif_name(name: str, version: str, sha256: str) -> str:
    """The file name of an image: ``<name>-<version>@sha256-<hex>.sif`` (as in the cache)."""
    return f"{name}-{version}@sha256-{sha256}.sif"


# ------------------------------------------------------------------------------- dir:// stores

class DirStore:
    """A folder of images with an ``index.json`` (see the module doc)."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = url[len("dir://"):]
        if not path.startswith("/"):
            raise ImageError(f"store {url}: a dir:// store needs an absolute path (dir:///path)")
        self.root = Path(path)

    def __repr__(self) -> str:
        return self.url

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def index(self) -> dict:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {"store_version": STORE_VERSION, "kind": "store", "images": {}}
        except (OSError, ValueError) as exc:
            raise ImageError(f"store {self.url}: cannot read index.json: {exc}") from None
        data.setdefault("images", {})
        return data

    @property
    def is_bundle(self) -> bool:
        return self.index_path.is_file() and self.index().get("kind") == "bundle"

    def lookup(self, name: str, version: str) -> dict | None:
        return self.index()["images"].get(name, {}).get(version)

    def file_for(self, entry: dict) -> Path:
        return self.root / entry["name"] / entry["version"] / sif_name(entry["name"], entry["version"],
                                                                     entry["image_sha256"])

    def push(self, sif: Path, entry: dict, signer: str | None = None, kind: str | None = None) -> str:
        """Add ``sif`` (whose sha256 is ``entry['image_sha256']``) under name/version; refuse other
        content under an existing name+version. Returns what happened."""
        name, version, sha = entry["name"], entry["version"], entry["image_sha256"]
        self._check(name, version, sha)
        final = self.file_for(entry)
        if final.is_file() and sha256_file(final) == sha:
            self._index_add(entry, final, signer, kind)
            return f"{self.url}: {name} {version} already there"
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".pushing-{final.name}-{os.getpid()}")
        try:
            fetch_verified(Path(sif), name, sha, tmp, str(sif))       # copy + check outside the lock
            with file_lock(self.root / ".index.lock"):
                self._check(name, version, sha)                 # again: someone may have won the race
                os.replace(tmp, final)
                self._index_add(entry, final, signer, kind, locked=True)
        finally:
            tmp.unlink(missing_ok=True)
        return f"{self.url}: pushed {name} {version} sha256:{sha}"

    def _check(self, name: str, version: str, sha: str) -> None:
        have = self.lookup(name, version)
        if have and have["sha256"] != sha:
            raise ImageError(f"store {self.url} already has image '{name}' {version} with sha256:{have['sha256']}; "
                             f"refusing other content (sha256:{sha}) under the same name and version: "
                             f"bump the version in containers/{name}/image.json")

    def _index_add(self, entry: dict, final: Path, signer: str | None, kind: str | None, locked=False) -> None:
        if not locked:
            with file_lock(self.root / ".index.lock"):
                return self._index_add(entry, final, signer, kind, locked=True)
        index = self.index()
        if kind:
            index["kind"] = kind
        index["store_version"] = STORE_VERSION
        record = {"sha256": entry["image_sha256"], "file": str(final.relative_to(self.root)),
                  "size_bytes": final.stat().st_size, "signature": signer,
                  "added_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                  "lock_entry": {k: v for k, v in entry.items() if k not in ("stores", "origin")}}
        index["images"].setdefault(entry["name"], {})[entry["version"]] = record
        write_json_atomic(self.index_path, index, mode=0o644)

    def pull(self, entry: dict, dest: Path) -> Path:
        name, version, sha = entry["name"], entry["version"], entry["image_sha256"]
        have = self.lookup(name, version)
        if have and have["sha256"] != sha:
            raise paths.ImageDigestMismatch(f"image '{name}' {version}: store {self.url} has sha256:{have['sha256']}, "
                                            f"the lock expects sha256:{sha}; refused")
        src = self.file_for(entry)
        if not src.is_file():
            raise ImageError(f"store {self.url} has no image '{name}' {version} sha256:{sha}")
        return fetch_verified(src, name, sha, dest, self.url)


# ------------------------------------------------------------------------------- oras:// stores

class OrasStore:
    """An OCI registry spoken to with ``apptainer push/pull oras://`` (see the module doc)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        rest = self.url[len("oras://"):]
        self.host, _, self.namespace = rest.partition("/")
        if not self.host:
            raise ImageError(f"store {url}: expected oras://host[:port]/namespace")
        hostname = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host.split("]")[0] + "]"
        insecure = {h.strip() for h in os.environ.get(INSECURE_ENV, "").split(",") if h.strip()}
        self.insecure = hostname in LOOPBACK or self.host in insecure or hostname in insecure

    def __repr__(self) -> str:
        return self.url

    @property
    def scheme(self) -> str:
        return "http" if self.insecure else "https"

    def repository(self, name: str) -> str:
        return f"{self.namespace}/{name}" if self.namespace else name

    def ref(self, name: str, tag_or_digest: str) -> str:
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"oras://{self.host}/{self.repository(name)}{sep}{tag_or_digest}"

    def _apptainer(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [paths.APPTAINER, args[0], *(["--no-https"] if self.insecure else []), *args[1:]]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except OSError as exc:
            raise ImageError(f"cannot run apptainer: {exc}") from None

    def manifest(self, name: str, reference: str) -> tuple[str, dict] | None:
        """``(manifest digest, manifest)`` of ``name:reference``, or None if the registry has none."""
        url = f"{self.scheme}://{self.host}/v2/{self.repository(name)}/manifests/{reference}"
        try:
            body, headers = registry_get(url, self.host, {"Accept": MANIFEST_TYPES})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ImageError(f"store {self.url}: {exc.code} {exc.reason} for {name}:{reference}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ImageError(f"store {self.url} unreachable: {getattr(exc, 'reason', exc)}") from None
        digest = headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        return digest, json.loads(body)

    def layer_digest(self, name: str, version: str) -> tuple[str, str] | None:
        """``(manifest digest, SIF sha256)`` of tag ``version`` of ``name``, or None."""
        found = self.manifest(name, version)
        if not found:
            return None
        digest, manifest = found
        layers = [layer for layer in manifest.get("layers", []) if layer.get("mediaType") == SIF_LAYER]
        if len(layers) != 1:
            raise ImageError(f"store {self.url}: {name}:{version} is not a SIF pushed with oras:// "
                             f"({len(layers)} SIF layers)")
        return digest, layers[0]["digest"].split(":", 1)[1]

    def push(self, sif: Path, entry: dict, signer: str | None = None, kind: str | None = None) -> str:
        name, version, sha = entry["name"], entry["version"], entry["image_sha256"]
        have = self.layer_digest(name, version)
        if have and have[1] != sha:
            raise ImageError(f"store {self.url} already has image '{name}' {version} with sha256:{have[1]}; "
                             f"refusing other content (sha256:{sha}) under the same name and version: "
                             f"bump the version in containers/{name}/image.json")
        if have:
            return f"{self.url}: {name} {version} already there"
        # pushed under its digest name, so that the manifest's title annotation names the digest
        proc = self._apptainer("push", str(sif), self.ref(name, version))
        if proc.returncode != 0:
            raise ImageError(f"pushing image '{name}' {version} to {self.url} failed: {_last_error(proc)}")
        have = self.layer_digest(name, version)
        if not have or have[1] != sha:
            raise ImageError(f"store {self.url}: after the push {name}:{version} has "
                             f"sha256:{have and have[1]}, not sha256:{sha} (a concurrent push?)")
        return f"{self.url}: pushed {name} {version} sha256:{sha} (manifest {have[0]})"

    def pull(self, entry: dict, dest: Path) -> Path:
        name, version, sha = entry["name"], entry["version"], entry["image_sha256"]
        have = self.layer_digest(name, version)
        if not have:
            raise ImageError(f"store {self.url} has no image '{name}' {version}")
        manifest_digest, layer = have
        if layer != sha:
            raise paths.ImageDigestMismatch(f"image '{name}' {version}: store {self.url} has sha256:{layer}, "
                                            f"the lock expects sha256:{sha}; refused")

        blob = f"{self.scheme}://{self.host}/v2/{self.repository(name)}/blobs/sha256:{sha}"

        def download():
            try:
                resp = registry_open(blob, self.host, {}, timeout=300)
            except urllib.error.HTTPError as exc:
                raise ImageError(f"pulling image '{name}' sha256:{sha} (manifest {manifest_digest}) from "
                                 f"{self.url} failed: {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise ImageError(f"store {self.url} unreachable: {getattr(exc, 'reason', exc)}") from None
            return resp
        return fetch_verified(download, name, sha, dest, self.url)


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("FATAL", "ERROR"))]
    return (errors or lines or [f"exit {proc.returncode}"])[-1][:400]


# ------------------------------------------------------------------------------- configuration

def parse_store(url: str):
    """A store object for ``url`` (``dir:///path`` or ``oras://host[:port]/namespace``)."""
    url = url.strip()
    if url.startswith("dir://"):
        return DirStore(url)
    if url.startswith("oras://"):
        return OrasStore(url)
    if url.startswith("/"):
        return DirStore("dir://" + url)
    raise ImageError(f"unknown store {url!r}: use dir:///path or oras://host[:port]/namespace")


def configured_stores(entry: dict | None = None) -> list:
    """Stores to try for ``entry``: ``$DAISY_IMAGE_STORES`` first, then the lock entry's ``stores``."""
    urls = [u for u in os.environ.get(STORES_ENV, "").split(",") if u.strip()]
    urls += list((entry or {}).get("stores", []))
    return [parse_store(u) for u in dict.fromkeys(u.strip() for u in urls)]


def bundle_file(entry: dict) -> Path | None:
    """The file of ``entry`` in a configured offline bundle (existence only, not verified)."""
    for store in configured_stores(entry):
        if isinstance(store, DirStore) and store.is_bundle:
            path = store.file_for(entry)
            if path.is_file():
                return path
    return None
