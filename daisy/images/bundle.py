"""Offline bundles: everything a pipeline needs to run on nodes without network, in one folder.

``daisy containers fetch --pipeline ct|xrd|all --to DIR`` writes a ``dir://`` store marked
``"kind": "bundle"``: the pipeline's published images (signatures are inside the SIFs), the public
keys that verify them (``keys/<fingerprint>.pem``), and ``index.json`` (per image: sha256, file,
signer, lock entry; the signature policy; how to use it). Nodes use it with
``DAISY_IMAGE_STORES=dir:///path/to/DIR``: runs take the images in place (no copy, verified by
sha256) and verify signatures with the bundled keys whose fingerprints the committed lock records,
with zero network calls.
"""
from __future__ import annotations

import importlib
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from daisy_steps.fileio import write_json_atomic

from . import paths
from .lock import file_lock, load_lock
from .paths import ImageError
from .resolve import resolve
from .signing import KEYS_ENV, POLICIES, fingerprint, is_public_key, trusted_keys, verify
from .stores import DirStore

PIPELINES = ("ct", "xrd")


def pipeline_images(pipeline: str) -> list[str]:
    """The images a pipeline's stages run in (``all``: every image of the committed lock)."""
    if pipeline == "all":
        names = set(load_lock()["images"]) | set(paths.available_images())
    elif pipeline in PIPELINES:
        module = importlib.import_module(f"daisy.pipelines.{pipeline}")
        names = {stage.image for stage in module.STAGES}
    else:
        raise ImageError(f"unknown pipeline {pipeline!r}: one of {', '.join(PIPELINES)}, all")
    order = {n: i for i, n in enumerate(paths.DEFAULT_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, 99), n))


def fetch_bundle(pipeline: str, to: Path, keys: Iterable[Path] = (), policy: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Write (or add to) the offline bundle ``to`` for ``pipeline``; return its index.

    Each image must be the published one (cache or stores): a local build is refused, since
    other machines' committed lock does not name it. ``keys``: public keys to include (plus those
    of ``$DAISY_TRUSTED_KEYS``); ``policy``: the bundle's signature policy (default ``require``
    if every image is signed, else ``warn``).
    """
    to = Path(to).resolve()
    to.mkdir(parents=True, exist_ok=True)
    store = DirStore(f"dir://{to}")
    names = pipeline_images(pipeline)
    resolved = []
    for name in names:
        r = resolve(name, fetch=True, allow_local=False)
        log(f"[{name}] {store.push(r.path, r.entry, signer=r.signature, kind='bundle')}")
        resolved.append(r)
    key_dir = to / "keys"
    key_dir.mkdir(exist_ok=True)
    candidates = [Path(k) for k in keys]
    for r in resolved:
        candidates += trusted_keys(r.entry)
    for key in dict.fromkeys(candidates):
        if not is_public_key(key):
            raise ImageError(f"{key} is not a PEM public key; never put a private key in a bundle")
        target = key_dir / (fingerprint(key).split(":", 1)[1][:32] + ".pem")
        if not target.exists():
            shutil.copyfile(key, target)
            target.chmod(0o644)
    signed = all(r.signature for r in resolved)
    chosen = policy or ("require" if signed and resolved else "warn")
    if chosen not in POLICIES:
        raise ImageError(f"signature policy {chosen!r} is not one of {', '.join(POLICIES)}")
    with file_lock(to / ".index.lock"):
        index = store.index()
        index.update(kind="bundle", signature_policy=chosen, pipelines=sorted({*index.get("pipelines", []), pipeline}),
                     usage=f"DAISY_IMAGE_STORES=dir://{to}  (runs use these images in place, offline)")
        write_json_atomic(store.index_path, index, mode=0o644)
    for r in resolved:                       # the bundle must verify by itself, offline
        if r.signature:
            bundled = resolve_in(store, r)
            fp = _verify_with(bundled, key_dir)
            log(f"[{r.name}] signature verified with the bundled key {fp}")
    log(f"bundle {to}: {len(resolved)} image(s), {len(list(key_dir.glob('*.pem')))} key(s), "
        f"policy {chosen}; use it with DAISY_IMAGE_STORES=dir://{to}")
    return store.index()


def resolve_in(store: DirStore, r):
    """``r`` as found in the bundle ``store``."""
    return replace(r, path=store.file_for(r.entry), origin="bundle", store=store.url)


def _verify_with(r, key_dir: Path) -> str:
    for key in sorted(key_dir.glob("*.pem")):
        if fingerprint(key) == r.signature and verify(r.path, key)[0]:
            return r.signature
    raise ImageError(f"image '{r.name}' in the bundle is not verified by any bundled key with fingerprint "
                     f"{r.signature}; pass its public key with --key or set {KEYS_ENV}")

