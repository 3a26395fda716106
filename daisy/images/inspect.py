"""What is inside an image: its package manifest and labels, read with spython, traps guarded.

spython prepends ``sudo`` unless told ``sudo=False``, and a failed call returns a dict instead
of raising: every result is checked. Without spython, plain ``apptainer`` does the same.
A SIF embeds its rendered definition, mirror URL included: labels shown to users are redacted.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import paths
from .paths import EXEC_OPTIONS, ImageError

MANIFEST_MARK = "DAISY-MANIFEST "
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
REDACTED = "<redacted: build-arg mirror>"


def spython_client():
    """spython's quiet ``Client``, or None if spython is not installed."""
    try:
        from spython.main import Client
    except ImportError:
        return None
    Client.quiet = True
    return Client


def read_manifest(sif: Path) -> dict:
    """``{"dpkg": {package: version}, "pip": {distribution: version}}`` installed in an image."""
    command = ["python3", "-c", MANIFEST_SCRIPT]
    client = spython_client()
    if client is not None:
        res = client.execute(image=str(sif), command=command, options=list(EXEC_OPTIONS),
                             sudo=False, return_result=True, quiet=True)
        if not isinstance(res, dict) or res.get("return_code") != 0:
            raise ImageError(f"reading the manifest of {sif.name} failed: {res!r}"[:300])
        text = "".join(res.get("message") or [])
    else:
        proc = subprocess.run([paths.APPTAINER, "exec", *EXEC_OPTIONS, str(sif), *command],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"reading the manifest of {sif.name} failed: {proc.stderr.strip()[:200]}")
        text = proc.stdout
    for line in text.splitlines():
        if line.startswith(MANIFEST_MARK):
            return json.loads(line[len(MANIFEST_MARK):])
    raise ImageError(f"no manifest printed by {sif.name}")


def inspect_labels(sif: Path) -> dict:
    """Labels of an image, with the mirror URL redacted."""
    return redact_labels(_raw_labels(sif))


def redact_labels(labels: dict) -> dict:
    """Hide the mirror: Apptainer copies the bootstrap header into labels (``...deffile.mirrorurl``)."""
    return {key: REDACTED if key.lower().endswith("mirrorurl") or "://" in str(value) else value
            for key, value in labels.items()}


def _raw_labels(sif: Path) -> dict:
    client = spython_client()
    if client is not None:
        res = client.inspect(image=str(sif), quiet=True)
        if isinstance(res, dict) and "attributes" in res:
            labels = res["attributes"].get("labels") or {}
            if isinstance(labels, str):       # older formats nest JSON in a string
                labels = json.loads(labels)
            return dict(labels)
        if isinstance(res, dict) and "labels" in res:
            return dict(res["labels"])
    proc = subprocess.run([paths.APPTAINER, "inspect", "--labels", "--json", str(sif)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"apptainer inspect {sif.name} failed: {proc.stderr.strip()[:200]}")
    data = json.loads(proc.stdout)
    return dict(data.get("data", {}).get("attributes", {}).get("labels", {}) or {})
