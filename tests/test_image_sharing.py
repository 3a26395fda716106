"""Sharing pinned images: stores (a real OCI registry on 127.0.0.1 and a directory store), pull by
digest, tampering, signatures and the policy, offline bundles in a network namespace, local builds,
and no secret in any written file.

Real images (the cached ``base``, 90 MB; ``tomopy`` is only linked into bundles), a real registry
(Debian's docker-registry, started by ``scripts/registry.sh``, with a login), throwaway keys made
with openssl. Each test has its own empty image cache and its own committed lock (a copy of the
repository's, ``paths.LOCK_PATH`` patched): the repository's lock is never written.
"""
from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from daisy import hashing, images
from daisy.images import paths, signing, stores

from .conftest import REPO, require_image

pytestmark = pytest.mark.apptainer

USER = "daisy-tester"
PASSWORD = "pw-" + secrets.token_hex(12)          # must end up in no file written
WRITTEN: list[Path] = []                          # folders the tests wrote, grepped at the end


def _fail_or_skip(reason: str):
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def _bcrypt(password: str) -> str | None:
    try:
        lib = ctypes.CDLL("libcrypt.so.1")
    except OSError:
        return None
    lib.crypt_gensalt.restype = lib.crypt.restype = ctypes.c_char_p
    salt = lib.crypt_gensalt(b"$2b$", 10, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    return hashed.decode() if hashed and hashed.startswith(b"$2b$") else None


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A docker-registry on 127.0.0.1 that requires a login, via scripts/registry.sh; its address
    and storage folder. Apptainer and DAISY get the login from APPTAINER_DOCKER_USERNAME/PASSWORD."""
    if shutil.which("docker-registry") is None and os.geteuid() != 0:
        _fail_or_skip("docker-registry is not installed (scripts/registry.sh installs it as root)")
    state = tmp_path_factory.mktemp("registry-state")
    env = dict(os.environ, DAISY_REGISTRY_STATE=str(state))
    hashed = _bcrypt(PASSWORD)
    if hashed:
        (state / "htpasswd").write_text(f"{USER}:{hashed}\n")
        env["DAISY_REGISTRY_HTPASSWD"] = str(state / "htpasswd")
    proc = subprocess.run(["bash", str(REPO / "scripts/registry.sh"), "start"], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        _fail_or_skip(f"scripts/registry.sh start failed: {proc.stderr[-500:]}")
    address = proc.stdout.strip().splitlines()[-1]
    status = subprocess.run(["bash", str(REPO / "scripts/registry.sh"), "status"], env=env, capture_output=True,
                            text=True)
    assert status.returncode == 0 and status.stdout.strip() == address
    storage = Path(dict(line.split("=", 1) for line in (state / "registry.env").read_text().split())["STORAGE"])
    WRITTEN.extend([state, storage])
    yield {"address": address, "storage": storage, "auth": bool(hashed)}
    subprocess.run(["bash", str(REPO / "scripts/registry.sh"), "stop"], env=env, capture_output=True, timeout=60)
    assert subprocess.run(["bash", str(REPO / "scripts/registry.sh"), "status"], env=env,
                          capture_output=True).returncode == 1


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """A throwaway RSA key pair (PEM) and a second, untrusted one."""
    folder = tmp_path_factory.mktemp("keys")
    for stem in ("maintainer", "stranger"):
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", str(folder / f"{stem}.key")], check=True, capture_output=True)
        (folder / "trusted" if stem == "maintainer" else folder / "untrusted").mkdir()
        subprocess.run(["openssl", "pkey", "-in", str(folder / f"{stem}.key"), "-pubout", "-out",
                        str(folder / ("trusted" if stem == "maintainer" else "untrusted") / f"{stem}.pem")],
                       check=True, capture_output=True)
    return {"priv": folder / "maintainer.key", "pub": folder / "trusted" / "maintainer.pem",
            "trusted": folder / "trusted", "stranger": folder / "untrusted" / "stranger.pem"}


@pytest.fixture
def world(tmp_path, monkeypatch, registry):
    """An empty image cache, a private committed lock (the repository's base and tomopy entries),
    no stores or policy from the caller's environment, the registry login in the environment."""
    base = require_image("base")
    real = images.load_lock()["images"]
    lock_file = tmp_path / "images.lock.json"
    lock_file.write_text(json.dumps({"lock_version": 1, "images": {n: real[n] for n in ("base", "tomopy")}}))
    monkeypatch.setattr(paths, "LOCK_PATH", lock_file)
    for var in ("DAISY_IMAGE_STORES", "DAISY_SIGNATURE_POLICY", "DAISY_TRUSTED_KEYS", "DAISY_INSECURE_REGISTRIES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("APPTAINER_DOCKER_USERNAME", USER)
    monkeypatch.setenv("APPTAINER_DOCKER_PASSWORD", PASSWORD)
    WRITTEN.append(tmp_path)
    w = {"tmp": tmp_path, "base": base, "entry": real["base"], "lock": lock_file,
         "tomopy": images.cache_dir() / real["tomopy"]["file"],
         "oras": f"oras://{registry['address']}/t{secrets.token_hex(4)}", "dir": f"dir://{tmp_path / 'store'}"}
    use_cache(monkeypatch, tmp_path / "cache0")
    return w


def use_cache(monkeypatch, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DAISY_IMAGE_CACHE", str(folder))
    return folder


def put(src: Path, folder: Path, sidecar: bool = False) -> Path:
    """``src`` into ``folder`` (hard link if possible: the images are read-only), and its record."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [src.name] + ([src.name + ".json"] if sidecar else [])
    for name in names:
        target = folder / name
        if not target.exists():
            try:
                os.link(src.parent / name, target)
            except OSError:
                shutil.copy2(src.parent / name, target)
    return folder / src.name


def sifs_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if p.suffix == ".sif" or p.name.startswith(".pulling"))


def _cli(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="daisy")
    images.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["containers", *argv])
    return args.func(args)


def _signed_base(w, keys, monkeypatch) -> dict:
    """Sign a copy of base (`daisy containers sign`): a local build with a new digest, and its entry."""
    cache = use_cache(monkeypatch, w["tmp"] / "cache-sign")
    put(w["base"], cache)
    assert _cli("sign", "base", "--key", str(keys["priv"])) == 0
    entry = images.local_entry("base")
    assert entry["image_sha256"] != w["entry"]["image_sha256"]          # signing changed the digest
    assert entry["signature"]["fingerprint"] == signing.fingerprint(keys["pub"])
    return entry


# --------------------------------------------------------------------------------------- the registry

def test_registry_script_answers(registry):
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://{registry['address']}/v2/", timeout=5)
        code = 200
    except urllib.error.HTTPError as exc:
        code = exc.code
    assert code == (401 if registry["auth"] else 200)


# --------------------------------------------------------------------------------------- push / pull

@pytest.mark.parametrize("kind", ["oras", "dir"])
def test_push_then_pull_by_digest_gives_the_same_file(world, kind, monkeypatch, capsys):
    url = world[kind]
    put(world["base"], images.cache_dir())
    assert _cli("push", "base", "--to", url) == 0
    assert "pushed base 1.0.0" in capsys.readouterr().out
    assert _cli("push", "base", "--to", url) == 0                         # idempotent
    assert "already there" in capsys.readouterr().out
    cache = use_cache(monkeypatch, world["tmp"] / "empty")
    with pytest.raises(images.ImageError, match="no store configured"):
        images.resolve("base")
    monkeypatch.setenv("DAISY_IMAGE_STORES", url)
    assert images.planned_path("base") == cache / world["entry"]["file"]  # no network, no hashing
    r = images.resolve("base")
    assert (r.origin, r.store, r.sha256) == ("published", url, world["entry"]["image_sha256"])
    assert r.path == cache / world["entry"]["file"]
    assert hashing.sha256_file(r.path) == world["entry"]["image_sha256"]
    assert sifs_left(cache) == [world["entry"]["file"]]
    assert images.resolve("base").store is None                           # now from the cache


def _tamper_middle(path: Path) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_tampered_registry_blob_is_refused(world, registry, monkeypatch):
    sha = world["entry"]["image_sha256"]
    put(world["base"], images.cache_dir())
    assert _cli("push", "base", "--to", world["oras"]) == 0
    blob = registry["storage"] / "docker/registry/v2/blobs/sha256" / sha[:2] / sha / "data"
    backup = world["tmp"] / "blob.bak"
    shutil.copyfile(blob, backup)
    try:
        _tamper_middle(blob)
        cache = use_cache(monkeypatch, world["tmp"] / "empty")
        monkeypatch.setenv("DAISY_IMAGE_STORES", world["oras"])
        with pytest.raises(images.ImageDigestMismatch) as exc:
            images.resolve("base")
        actual = hashing.sha256_file(blob)
        assert "'base'" in str(exc.value) and sha in str(exc.value) and actual in str(exc.value)
        assert sifs_left(cache) == []
    finally:
        shutil.copyfile(backup, blob)


def test_tampered_dir_store_file_is_refused(world, monkeypatch):
    put(world["base"], images.cache_dir())
    assert _cli("push", "base", "--to", world["dir"]) == 0
    stored = stores.parse_store(world["dir"]).file_for(world["entry"])
    _tamper_middle(stored)
    actual = hashing.sha256_file(stored)
    cache = use_cache(monkeypatch, world["tmp"] / "empty")
    monkeypatch.setenv("DAISY_IMAGE_STORES", world["dir"])
    with pytest.raises(images.ImageDigestMismatch) as exc:
        images.resolve("base")
    assert "'base'" in str(exc.value) and world["entry"]["image_sha256"] in str(exc.value) and actual in str(exc.value)
    assert sifs_left(cache) == []


def test_wrong_digest_is_refused(world, monkeypatch):
    put(world["base"], images.cache_dir())
    for url in (world["oras"], world["dir"]):
        assert _cli("push", "base", "--to", url) == 0
    wrong = "0" * 64
    entry = dict(world["entry"], image_sha256=wrong, file=stores.sif_name("base", "1.0.0", wrong))
    images.write_lock({"images": {"base": entry}})
    cache = use_cache(monkeypatch, world["tmp"] / "empty")
    for url in (world["oras"], world["dir"]):
        monkeypatch.setenv("DAISY_IMAGE_STORES", url)
        with pytest.raises(images.ImageDigestMismatch) as exc:
            images.resolve("base")
        msg = str(exc.value)
        assert "'base'" in msg and wrong in msg and world["entry"]["image_sha256"] in msg, msg
        assert sifs_left(cache) == []


def test_other_content_under_an_existing_version_is_refused(world, keys, monkeypatch, capsys):
    put(world["base"], images.cache_dir())
    for url in (world["oras"], world["dir"]):
        assert _cli("push", "base", "--to", url) == 0
    signed = _signed_base(world, keys, monkeypatch)                        # same name+version, other sha256
    images.write_lock({"images": {"base": {k: v for k, v in signed.items() if k != "origin"}}})
    capsys.readouterr()
    for url in (world["oras"], world["dir"]):
        with pytest.raises(images.ImageError, match="refusing other content"):
            stores.parse_store(url).push(images.cache_dir() / signed["file"], signed)
        assert _cli("push", "base", "--to", url) == 1
        err = capsys.readouterr().err
        assert world["entry"]["image_sha256"] in err and signed["image_sha256"] in err


# --------------------------------------------------------------------------------------- signatures

def test_signature_policy(world, keys, monkeypatch, capsys):
    put(world["base"], images.cache_dir())
    unsigned = images.resolve("base")
    monkeypatch.setenv("DAISY_TRUSTED_KEYS", str(keys["trusted"]))
    assert images.check_signature(unsigned) is None                        # default policy: off
    assert images.check_signature(unsigned, "warn") is None
    assert "no valid signature" in capsys.readouterr().err
    monkeypatch.setenv("DAISY_SIGNATURE_POLICY", "require")
    with pytest.raises(images.ImageError, match="'base'.*no valid signature.*require"):
        images.check_signature(unsigned)

    signed = _signed_base(world, keys, monkeypatch)
    images.write_lock({"images": {"base": {k: v for k, v in signed.items() if k != "origin"}}})
    r = images.resolve("base")
    assert r.origin == "published" and r.sha256 == signed["image_sha256"]
    fp = images.check_signature(r)
    assert fp == r.signature == signing.fingerprint(keys["pub"]) and fp.startswith("sha256:")
    assert _cli("verify-signature", "base", "--key", str(keys["pub"])) == 0
    assert _cli("verify-signature", "base", "--key", str(keys["stranger"])) == 1
    monkeypatch.setenv("DAISY_TRUSTED_KEYS", str(keys["stranger"].parent))  # signed, but not by a trusted key
    with pytest.raises(images.ImageError, match="no valid signature"):
        images.check_signature(r)


def test_publish_signed_then_offline_bundle_in_a_network_namespace(world, keys, monkeypatch, capsys):
    """publish (build = the cached base, sign, push to the registry, pin) -> fetch --pipeline ct ->
    resolve + check_signature inside `unshare -n`, with the bundle's keys and policy only."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        _fail_or_skip("needs root and unshare for a network namespace")
    sidecar = json.loads((world["base"].parent / (world["base"].name + ".json")).read_text())
    if sidecar["definition_sha256"] != images.definition_key("base"):
        pytest.skip("the cached base was built from another definition: publish would rebuild it")
    if not world["tomopy"].is_file():
        _fail_or_skip("image 'tomopy' is not in the cache: the ct bundle needs it")
    cache = images.cache_dir()
    put(world["base"], cache, sidecar=True)                                # build() reuses it
    assert _cli("publish", "base", "--to", world["oras"], "--sign-key", str(keys["priv"])) == 0
    pinned = images.load_lock()["images"]["base"]
    assert pinned["stores"] == [world["oras"]]
    assert pinned["signature"]["fingerprint"] == signing.fingerprint(keys["pub"])
    assert pinned["image_sha256"] != world["entry"]["image_sha256"]

    use_cache(monkeypatch, world["tmp"] / "cache-fetch")                   # base: pulled from the registry
    bundle = world["tmp"] / "bundle"
    assert _cli("fetch", "--pipeline", "ct", "--to", str(bundle), "--key", str(keys["pub"])) == 1
    assert "tomopy" in capsys.readouterr().err                            # not cached, no store: refused
    put(world["tomopy"], images.cache_dir())                               # ct needs tomopy (unsigned)
    assert _cli("fetch", "--pipeline", "ct", "--to", str(bundle), "--key", str(keys["pub"])) == 0
    index = json.loads((bundle / "index.json").read_text())
    assert index["kind"] == "bundle" and set(index["images"]) == {"base", "tomopy"}
    assert index["signature_policy"] == "warn"                            # tomopy is unsigned
    assert [p.read_text() for p in (bundle / "keys").glob("*.pem")] == [keys["pub"].read_text()]

    host, port = world["oras"][len("oras://"):].split("/")[0].split(":")
    node_cache = world["tmp"] / "node-cache"
    node_cache.mkdir()
    script = textwrap.dedent(f"""
        import json, socket, sys
        from pathlib import Path
        from daisy import images
        from daisy.images import paths
        paths.LOCK_PATH = Path({str(paths.LOCK_PATH)!r})
        try:
            socket.create_connection(({host!r}, {port}), 2)
            sys.exit("the network is reachable")
        except OSError:
            pass
        out = {{}}
        for name in images.pipeline_images("ct"):
            r = images.resolve(name)
            out[name] = [r.origin, str(r.path), r.sha256, images.check_signature(r, "require" if name == "base" else None)]
        print("RESULT " + json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DAISY_", "APPTAINER_DOCKER")) or k == "DAISY_SERVER"}
    env.update(DAISY_IMAGE_STORES=f"dir://{bundle}", DAISY_IMAGE_CACHE=str(node_cache), PYTHONPATH=str(REPO))
    proc = subprocess.run(["unshare", "-n", "--", sys.executable, "-c", script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["base"][:3] == ["bundle", str(bundle / "base/1.0.0" / pinned["file"]), pinned["image_sha256"]]
    assert result["base"][3] == pinned["signature"]["fingerprint"]          # verified offline
    assert result["tomopy"][0] == "bundle" and result["tomopy"][3] is None
    assert "'tomopy'" in proc.stderr and "no valid signature" in proc.stderr  # bundle policy warn
    assert sifs_left(node_cache) == []                                    # used in place, nothing copied


# --------------------------------------------------------------------------------------- local builds

def test_build_records_a_local_build_used_with_a_warning(world, keys, monkeypatch, capsys):
    """`daisy containers build` (the real CLI, the repository's own lock) reuses the cached base,
    records it in the local lock and leaves containers/images.lock.json byte-identical; a run
    whose published image is unavailable uses it, with a warning and origin 'local build'."""
    sidecar = json.loads((world["base"].parent / (world["base"].name + ".json")).read_text())
    if sidecar["definition_sha256"] != images.definition_key("base"):
        pytest.skip("the cached base was built from another definition: build would rebuild it")
    cache = images.cache_dir()
    put(world["base"], cache, sidecar=True)
    committed = REPO / "containers/images.lock.json"
    before = committed.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAISY_IMAGE_STORES")}
    proc = subprocess.run([sys.executable, "-m", "daisy", "containers", "build", "base"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
    assert committed.read_bytes() == before
    assert not (REPO / "containers/images.lock.json.lock").exists()
    local = images.load_lock(cache / "local-lock.json")["images"]["base"]
    assert local["origin"] == "local build" and local["image_sha256"] == world["entry"]["image_sha256"]

    # the published image is now another digest (e.g. a signed one), neither cached nor fetchable
    other = "f" * 64
    images.write_lock({"images": {"base": dict(world["entry"], image_sha256=other,
                                               file=stores.sif_name("base", "1.0.0", other))}})
    assert images.planned_path("base") == cache / local["file"]
    capsys.readouterr()
    r = images.resolve("base")
    assert (r.origin, r.sha256, r.path) == ("local build", local["image_sha256"], cache / local["file"])
    err = capsys.readouterr().err
    assert "LOCAL BUILD" in err and local["image_sha256"] in err and other in err
    assert images.verify_image("base") == r.path                          # what runs call today
    monkeypatch.setenv("DAISY_SIGNATURE_POLICY", "require")
    with pytest.raises(images.ImageError, match="local build"):
        images.check_signature(r)


def test_ensure_without_stores_uses_the_cache_and_writes_no_repository_file(world, monkeypatch):
    put(world["base"], images.cache_dir())
    status = ["git", "status", "--porcelain", "--", "containers"]
    before = subprocess.run(status, cwd=REPO, capture_output=True, text=True).stdout
    [r] = images.ensure(["base"], log=lambda m: None)
    assert r.origin == "published"
    after = subprocess.run(status, cwd=REPO, capture_output=True, text=True).stdout
    assert after == before


# --------------------------------------------------------------------------------------- credentials

def test_no_registry_password_in_any_written_file(registry):
    """Runs last: the password the tests set in the environment (and logged in with) is in no
    file under the folders they wrote (caches, stores, bundles, locks, logs, registry state),
    nor in the repository's working tree."""
    if not registry["auth"]:
        pytest.skip("no bcrypt (libcrypt) for the registry's htpasswd: the registry needs no login")
    assert WRITTEN, "run with the other tests of this module"
    proc = subprocess.run(["grep", "-rIl", "--exclude-dir=.git", "--exclude-dir=.venv", PASSWORD,
                           *map(str, WRITTEN), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    binary = subprocess.run(["grep", "-rl", "--exclude-dir=.git", "--exclude-dir=.venv", "-a", PASSWORD,
                             *map(str, WRITTEN)], capture_output=True, text=True)
    assert binary.stdout == ""


# --------------------------------------------------------------------------------------- a node with no network

def _clone(dest: Path) -> Path:
    """The working tree's files (tracked and not ignored) in ``dest``: a second checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_ct_pipeline_runs_from_a_signed_bundle_in_a_network_namespace(tmp_path, keys):
    """A maintainer publishes signed base and tomopy to a directory store (in their own checkout),
    fetches the CT bundle with the public key; a node with no network interface (`unshare -n`), an
    empty image cache and signature policy `require` runs the whole CT pipeline from the bundle."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        _fail_or_skip("needs root and unshare for a network namespace")
    from .workflow_helpers import image_cache_with

    for name in ("base", "tomopy"):
        sif = require_image(name)
        sidecar = json.loads((sif.parent / (sif.name + ".json")).read_text())
        if sidecar["definition_sha256"] != images.definition_key(name):
            pytest.skip(f"the cached {name} was built from another definition: publish would rebuild it")
    clone = _clone(tmp_path / "checkout")
    maintainer = dict(os.environ, PYTHONPATH=str(clone),
                      DAISY_IMAGE_CACHE=str(image_cache_with(tmp_path / "maintainer-cache")))
    for var in ("DAISY_IMAGE_STORES", "DAISY_SIGNATURE_POLICY", "DAISY_TRUSTED_KEYS"):
        maintainer.pop(var, None)
    store, bundle = tmp_path / "store", tmp_path / "bundle"
    for argv in (["publish", "base", "tomopy", "--to", f"dir://{store}", "--sign-key", str(keys["priv"])],
                 ["fetch", "--pipeline", "ct", "--to", str(bundle), "--key", str(keys["pub"])]):
        proc = subprocess.run([sys.executable, "-m", "daisy", "containers", *argv], cwd=clone, env=maintainer,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = json.loads((clone / "containers/images.lock.json").read_text())["images"]
    index = json.loads((bundle / "index.json").read_text())
    assert index["signature_policy"] == "require" and set(index["images"]) == {"base", "tomopy"}

    from daisy.workflow import run_job_in_image

    work = tmp_path / "beamline"
    raw = work / "data" / "ct-daisy.h5"
    run_job_in_image("tomopy", {"job": "sample", "threads": 2, "steps": [
        {"step": "sample.ct_phantom", "outputs": {"raw": str(raw)},
         "params": {"size": 32, "n_angles": 60, "layout": "daisy", "seed": 3, "center_offset": 1.5}}]},
        work / "jobs" / "sample.json", work)
    node_cache = tmp_path / "node-cache"
    node_cache.mkdir()
    node = {k: v for k, v in os.environ.items()
            if not k.startswith(("DAISY_", "APPTAINER_DOCKER")) or k == "DAISY_SERVER"}
    node.update(PYTHONPATH=str(clone), DAISY_IMAGE_CACHE=str(node_cache), DAISY_IMAGE_STORES=f"dir://{bundle}",
                DAISY_SIGNATURE_POLICY="require")
    probe = "import socket\ntry:\n socket.create_connection(('127.0.0.1', 22), 1)\nexcept OSError as e:\n print(e.errno)"
    offline = subprocess.run(["unshare", "-n", "--", sys.executable, "-c", probe], capture_output=True, text=True)
    assert offline.stdout.strip() == "101", offline       # ENETUNREACH: not even loopback is up
    proc = subprocess.run(["unshare", "-n", "--", sys.executable, "-m", "daisy", "run", "ct", "--config",
                           str(REPO / ".test/ct-daisy/config.yaml")], cwd=work, env=node, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = work / "results" / "ct-daisy"
    with h5py.File(out / "ct" / "volume.h5") as handle:
        volume = handle["/entry/data/data"][()]
    assert volume.shape[0] == 32 and np.isfinite(volume).all()
    used = json.loads((out / "provenance.json").read_text())["images"]
    fingerprint = signing.fingerprint(keys["pub"])
    assert "tomopy" in used                   # (one slab job gathers itself: base may not be needed)
    for name in used:
        assert used[name]["image_sha256"] == lock[name]["image_sha256"], used[name]
        assert used[name]["origin"] == "bundle" and used[name]["signature"] == fingerprint, used[name]
    assert sifs_left(node_cache) == []                                    # used in place from the bundle
