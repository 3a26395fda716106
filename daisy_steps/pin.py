"""The step-code pin: one sha256 over the step code and the parameter schemas.

The step code is bound into the images at run time rather than baked in (a code change
would otherwise mean rebuilding an image). What makes a run reproducible is this hash:
the host writes it into every job file, the job refuses to run if the code it imported
hashes differently, and the provenance records it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .params import schemas_dir

PACKAGE = Path(__file__).resolve().parent


def code_files() -> list[tuple[str, Path]]:
    """(name, path) of every file that the pin covers, in a fixed order."""
    files = [(f"daisy_steps/{p.relative_to(PACKAGE).as_posix()}", p)
             for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    schemas = schemas_dir()
    files += [(f"schemas/{p.relative_to(schemas).as_posix()}", p) for p in schemas.rglob("*.json")]
    return sorted(files)


def code_sha256() -> str:
    """sha256 over the names and sha256s of the files in :func:`code_files`."""
    outer = hashlib.sha256()
    for name, path in code_files():
        outer.update(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n".encode())
    return outer.hexdigest()
