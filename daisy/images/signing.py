"""Image signatures: Apptainer's PEM signatures (DSSE envelopes in the SIF), and the policy runs honour.

Why PEM and not PGP: ``apptainer sign --key PRIV.pem`` / ``verify --key PUB.pem`` need nothing but
the key files and work with no network (measured: 0.1 s each, also in a network namespace without
interfaces). PGP signing needs a keyring and, to verify on another machine, a keyserver or a
``key pull``/``import`` step per machine; a folder of ``.pem`` files travels with an offline bundle.

Signing appends a signature object to the SIF, so its sha256 changes: sign first, then pin and
publish the signed file's digest (``daisy containers publish --sign-key``).

Trust: a key is trusted for an image if it is in ``$DAISY_TRUSTED_KEYS`` (a folder of public
``*.pem``), or if it is in a configured bundle's ``keys/`` and its fingerprint is the one the
committed lock records for the image (the lock, in git, is the root of trust).
Policy (``$DAISY_SIGNATURE_POLICY``, else a bundle's ``signature_policy``, else ``off``):
``off`` no check; ``warn`` a warning on stderr when no trusted key verifies the image;
``require`` the run stops before any job starts. Fingerprint: ``sha256:`` + sha256 of the public
key's DER (SubjectPublicKeyInfo), as ``openssl pkey -pubin -outform DER | sha256sum``.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from . import paths
from .paths import ImageError

POLICY_ENV = "DAISY_SIGNATURE_POLICY"
KEYS_ENV = "DAISY_TRUSTED_KEYS"
POLICIES = ("off", "warn", "require")
SIGNATURE_FORMAT = "pem-dsse"


def public_key_der(key: Path) -> bytes:
    """The DER public key of a PEM file (public key, or private key via openssl)."""
    text = Path(key).read_text()
    m = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", text, re.S)
    if m:
        return base64.b64decode("".join(m.group(1).split()))
    if "PRIVATE KEY-----" not in text:
        raise ImageError(f"{key} is not a PEM key")
    proc = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], capture_output=True)
    if proc.returncode != 0:
        raise ImageError(f"cannot read the key {key}: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc.stdout


def fingerprint(key: Path) -> str:
    """``sha256:<hex>`` of a key's public part (DER)."""
    return "sha256:" + hashlib.sha256(public_key_der(key)).hexdigest()


def is_public_key(key: Path) -> bool:
    try:
        return "-----BEGIN PUBLIC KEY-----" in Path(key).read_text()
    except (OSError, UnicodeDecodeError):
        return False


def sign(sif: Path, key: Path) -> str:
    """Sign ``sif`` in place with the PEM private key ``key``; return the key's fingerprint."""
    proc = subprocess.run([paths.APPTAINER, "sign", "--key", str(key), str(sif)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"apptainer sign {Path(sif).name} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return fingerprint(key)


def verify(sif: Path, key: Path) -> tuple[bool, str]:
    """Whether ``sif`` carries a valid signature by public key ``key`` (offline); with the reason."""
    proc = subprocess.run([paths.APPTAINER, "verify", "--key", str(key), str(sif)], capture_output=True, text=True)
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return proc.returncode == 0, (lines[-1] if lines else "")


def trusted_keys(entry: dict | None) -> list[Path]:
    """Public keys trusted for the image of lock entry ``entry`` (see the module doc)."""
    from .stores import DirStore, configured_stores

    keys: list[Path] = []
    folder = os.environ.get(KEYS_ENV)
    if folder:
        keys += sorted(p for p in Path(folder).glob("*.pem") if is_public_key(p))
    recorded = ((entry or {}).get("signature") or {}).get("fingerprint")
    if recorded:
        for store in configured_stores(entry):
            if isinstance(store, DirStore) and (store.root / "keys").is_dir():
                keys += [p for p in sorted((store.root / "keys").glob("*.pem"))
                         if is_public_key(p) and fingerprint(p) == recorded]
    return list(dict.fromkeys(keys))


def policy_for(entry: dict | None, policy: str | None = None) -> str:
    """The signature policy: ``policy``, else ``$DAISY_SIGNATURE_POLICY``, else the strictest
    ``signature_policy`` of a configured bundle, else ``off``."""
    from .stores import DirStore, configured_stores

    chosen = policy or os.environ.get(POLICY_ENV)
    if not chosen:
        found = [s.index().get("signature_policy") for s in configured_stores(entry)
                 if isinstance(s, DirStore) and s.is_bundle]
        found = [p for p in found if p in POLICIES]
        chosen = max(found, key=POLICIES.index) if found else "off"
    if chosen not in POLICIES:
        raise ImageError(f"signature policy {chosen!r} is not one of {', '.join(POLICIES)} ({POLICY_ENV})")
    return chosen


def check_signature(resolved, policy: str | None = None) -> str | None:
    """Check ``resolved`` (a :class:`daisy.images.resolve.ResolvedImage`) against the policy.

    Returns the fingerprint of the trusted key that verifies it (and sets ``resolved.signature``),
    or None (policy ``off``, or ``warn`` with a warning on stderr); ImageError under ``require``.
    """
    chosen = policy_for(resolved.entry, policy)
    if chosen == "off":
        return None
    keys = trusted_keys(resolved.entry)
    reasons = []
    for key in keys:
        ok, reason = verify(resolved.path, key)
        if ok:
            resolved.signature = fingerprint(key)
            return resolved.signature
        reasons.append(f"{key.name}: {reason}")
    resolved.signature = None
    where = f"keys tried: {'; '.join(reasons)}" if keys else \
        f"no trusted public key (set {KEYS_ENV} to a folder of .pem public keys)"
    msg = (f"image '{resolved.name}' sha256:{resolved.sha256} ({resolved.origin}) has no valid signature by a "
           f"trusted key ({where}); signature policy {chosen}")
    if chosen == "warn":
        print(f"daisy: warning: {msg}", file=sys.stderr)
        return None
    raise ImageError(msg)
