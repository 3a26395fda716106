"""Moving image files: one pass that writes and hashes at once, and the OCI registry's HTTP API.

A pull is the cost of the copy alone: chunks are read into a few reused buffers and written to a
temporary file while a second thread hashes them (hashlib and file writes release the GIL), the
sha256 is compared with the lock's, and only a match is renamed into place, already recorded in
the sha256 cache so the run that follows does not hash it again. A mismatch deletes the file and
names both digests.

Registry credentials: Apptainer's environment variables (``APPTAINER_DOCKER_USERNAME`` /
``APPTAINER_DOCKER_PASSWORD``) or its login store (``apptainer registry login``,
``~/.apptainer/docker-config.json``); they are read only to be sent, never written anywhere.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager

from daisy.hashing import remember_sha256

from . import paths
from .paths import ImageError

CHUNK, BUFFERS = 4 << 20, 4
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def mismatch(name: str, where: str, expected: str, actual: str) -> ImageError:
    return paths.ImageDigestMismatch(f"image '{name}' from {where} refused: expected sha256:{expected} "
                                     f"(the lock), got sha256:{actual}")


def write_hashed(source: BinaryIO, target: Path) -> str:
    """Copy ``source`` (a file or an HTTP response: anything with ``readinto``) to ``target``
    through a few reused buffers, while a second thread hashes each buffer once it is written;
    the hex sha256. Reused buffers: no fresh memory (and page faults) per chunk."""
    digest, free, full = hashlib.sha256(), queue.Queue(), queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(CHUNK))

    def hasher() -> None:
        while (item := full.get()) is not None:
            digest.update(memoryview(item[0])[:item[1]])
            free.put(item[0])

    thread = threading.Thread(target=hasher, name="daisy-sha256", daemon=True)
    thread.start()
    try:
        with open(target, "wb", buffering=0) as out:
            while n := _fill(source, buf := free.get()):
                out.write(memoryview(buf)[:n])
                full.put((buf, n))
    finally:
        full.put(None)
        thread.join()
    return digest.hexdigest()


def _fill(source: BinaryIO, buf: bytearray) -> int:
    """Read from ``source`` until ``buf`` is full or the source ends; the bytes read."""
    view, n = memoryview(buf), 0
    while n < len(buf) and (got := source.readinto(view[n:])):
        n += got
    return n


def fetch_verified(opener: Callable[[], ContextManager[BinaryIO]] | Path, name: str, expected: str,
                   dest: Path, where: str) -> Path:
    """Copy what ``opener()`` opens (or the file ``opener``) to ``dest`` only if its sha256 is
    ``expected``; else nothing is left and :class:`~daisy.images.paths.ImageDigestMismatch` names both digests."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".pulling-{dest.name}-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    source = (lambda: open(opener, "rb", buffering=0)) if isinstance(opener, Path) else opener
    try:
        with source() as stream:
            actual = write_hashed(stream, tmp)
        if actual != expected:
            raise mismatch(name, where, expected, actual)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        remember_sha256(dest, actual)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ------------------------------------------------------------------------------- registry API

def registry_credentials(host: str) -> tuple[str, str] | None:
    """The login for ``host``: Apptainer's environment variables, else its login store."""
    user, password = os.environ.get("APPTAINER_DOCKER_USERNAME"), os.environ.get("APPTAINER_DOCKER_PASSWORD")
    if user and password:
        return user, password
    authfile = Path(os.environ.get("DAISY_REGISTRY_AUTHFILE") or Path.home() / ".apptainer" / "docker-config.json")
    try:
        auth = json.loads(authfile.read_text()).get("auths", {}).get(host, {}).get("auth")
    except (OSError, ValueError):
        return None
    if not auth:
        return None
    user, _, password = base64.b64decode(auth).decode().partition(":")
    return user, password


def registry_open(url: str, host: str, headers: dict, timeout: float = 30):
    """Open ``url`` on an OCI registry (a response to read or stream), answering Basic or Bearer
    (token) challenges with the login of ``host``; no proxy for loopback hosts. HTTPError on failure."""
    handlers = [urllib.request.ProxyHandler({})] if host.split(":")[0] in LOOPBACK else []
    opener = urllib.request.build_opener(*handlers)
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
        challenge = exc.headers.get("WWW-Authenticate", "")
    creds = registry_credentials(host)
    if challenge.lower().startswith("basic"):
        if not creds:
            raise ImageError(f"registry {host} needs a login: `apptainer registry login --username USER oras://{host}`")
        auth = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    else:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        token_req = urllib.request.Request(params.get("realm", "") + "?" + query)
        if creds:
            token_req.add_header("Authorization", "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode())
        with opener.open(token_req, timeout=timeout) as resp:
            data = json.loads(resp.read())
        auth = "Bearer " + (data.get("token") or data.get("access_token") or "")
    return opener.open(urllib.request.Request(url, headers=dict(headers, Authorization=auth)), timeout=timeout)


def registry_get(url: str, host: str, headers: dict) -> tuple[bytes, dict]:
    """GET ``url`` from an OCI registry: ``(body, headers)``; HTTPError on failure."""
    with registry_open(url, host, headers) as resp:
        return resp.read(), dict(resp.headers)
