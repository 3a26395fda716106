"""``daisy rerun``: restore an archived run (``daisy archive``), run it again, compare the outputs.

1. Every tar member is checked before anything is written: only regular files and folders, all
   under one top-level folder, no absolute name, no ``..``, no links, devices or FIFOs.
2. The members are extracted into ``DIR/.extract`` while each is hashed (one read), and the bag
   is validated: bagit.txt, Payload-Oxum, every payload file against ``manifest-sha256.txt``
   (a changed, missing or extra member is named), the tag files against the tag manifest
   (:mod:`daisy.rerun_bag`; on a refusal the extracted files are removed).
3. The payload moves to ``DIR/workflow`` (the archived workflow source), ``DIR/archived-run``,
   ``DIR/inputs`` and ``DIR/images`` (the rerun's image cache); the tag files stay in ``DIR/bag``.
4. Images come from the archive or, by digest, from the local image cache (hard link or copy);
   inputs from the archive or from their recorded path; each is checked against its digest.
5. Snakemake runs the archived workflow (``--snakefile DIR/workflow/Snakefile``,
   ``PYTHONPATH=DIR/workflow``, ``DAISY_IMAGE_CACHE=DIR/images``) on the archived resolved config,
   rewritten for the restored inputs (:func:`working_directory`: relative paths stay relative,
   in ``DIR/work``; an absolute ``outdir`` becomes ``DIR/results``); ``--current-software`` runs
   this installation's DAISY and images instead (a regression check of an old analysis).
6. Every archived output is compared with the new one (:mod:`daisy.rerun_compare`), and the
   report is written to ``DIR/rerun-report.json`` and ``DIR/rerun-report.txt``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .archive import DESCRIPTOR, INPUTS, REPO, ArchiveError, human, say
from .rerun_bag import check_members, extract, validate_bag


# -- 3./4. layout, images, inputs --------------------------------------------------------------

def arrange(bag: Path, workdir: Path) -> dict[str, Path]:
    """Move the validated payload into place; the tag files stay in ``DIR/bag``."""
    places = {"workflow": workdir / "workflow", "run": workdir / "archived-run",
              "inputs": workdir / "inputs", "images": workdir / "images"}
    for part, target in places.items():
        if (bag / "data" / part).is_dir():
            os.rename(bag / "data" / part, target)
    places["images"].mkdir(exist_ok=True)
    if not any((bag / "data").iterdir()):
        (bag / "data").rmdir()
    os.rename(bag, workdir / "bag")
    places["bag"] = workdir / "bag"
    return places


def restore_images(desc: dict[str, Any], lock: dict[str, Any], manifest: dict[str, str], cache: Path,
                   local_cache: Path, progress: Callable[[str], None]) -> dict[str, dict[str, str]]:
    """Each image of the run in the rerun cache ``cache``, checked against the archived lock."""
    from .hashing import sha256_file

    done, seeded, local = {}, {}, {}
    for name, info in sorted(desc["images"].items()):
        entry = lock.get("images", {}).get(name)
        if info.get("origin") == "local build":  # the run used a local build, not the published image
            entry = local[name] = {"name": name, "version": info.get("version"), "file": info["file"],
                                   "image_sha256": info["image_sha256"], "origin": "local build"}
        if not entry:
            raise ArchiveError(f"the archived lock has no image {name!r}")
        expected, target = entry["image_sha256"], cache / entry["file"]
        if info["image_sha256"] != expected:
            raise ArchiveError(f"image {name!r}: the archived lock says sha256:{expected}, "
                               f"the provenance recorded sha256:{info['image_sha256']}")
        if info.get("archived") and target.is_file():
            actual, where, how = manifest.get(info["archived"]), f"the archive's {info['archived']}", "archive"
        else:
            source = local_cache / entry["file"]
            if not source.is_file():
                raise ArchiveError(f"image {name!r} ({entry['file']}) is neither in the archive nor in the image cache "
                                   f"{local_cache}: archive the run --with-images, or build it at the run's commit")
            progress(f"daisy rerun:   image {name!r} from the image cache {local_cache}")
            actual, where = sha256_file(source), str(source)
            if actual == expected:
                try:
                    os.link(source, target)
                    how = "image cache (hard link)"
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copyfile(source, target)
                    how = "image cache (copy)"
        if actual != expected:
            raise ArchiveError(f"image {name!r}: the archived lock expects sha256:{expected}, {where} has sha256:{actual}")
        done[name] = {"file": entry["file"], "sha256": expected, "from": how}
        seeded[str(target.resolve())] = expected
    _seed_hash_cache(cache, seeded)
    if local:  # the rerun's image cache says which local builds the archived run used
        from daisy_steps.fileio import write_json_atomic

        write_json_atomic(cache / "local-lock.json", {"lock_version": 1, "images": local})
    return done


def _seed_hash_cache(cache: Path, digests: dict[str, str]) -> None:
    """Tell the rerun's hash cache (:mod:`daisy.hashing`) the digests just verified, so that the
    pipeline's image check does not read the SIFs once more."""
    from .hashing import CACHE_NAME

    entries = {}
    for path, digest in digests.items():
        st = os.stat(path)
        entries[path] = {"stat": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], "sha256": digest}
    (cache / CACHE_NAME).write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


def restore_inputs(desc: dict[str, Any], manifest: dict[str, str], inputs_dir: Path,
                   progress: Callable[[str], None]) -> dict[str, dict[str, str]]:
    """Each input from the archive or at its recorded path, checked against the recorded sha256."""
    from daisy_steps.fileio import sha256_file

    done = {}
    for key, info in sorted(desc["inputs"].items()):
        if info.get("archived"):
            path = inputs_dir / info["archived"][len(INPUTS) + 1:]
            actual, where = manifest.get(info["archived"]), f"the archive's {info['archived']}"
        else:
            path = Path(info["path"])
            if not path.is_file():
                raise ArchiveError(f"input {info['path']} is not in the archive (made without --with-inputs) "
                                   f"and not at its recorded path")
            progress(f"daisy rerun:   input {path} (at its recorded path)")
            actual, where = sha256_file(path), str(path)
        if actual != info["sha256"]:
            raise ArchiveError(f"input {info['path']}: the run recorded sha256:{info['sha256']}, {where} has sha256:{actual}")
        done[key] = {"recorded": info["path"], "path": str(path), "from": "archive" if info.get("archived") else "recorded path"}
    return done


# -- 5. the pipeline ---------------------------------------------------------------------------

def working_directory(desc: dict[str, Any], config: dict[str, Any], inputs: dict[str, dict[str, str]],
                      workdir: Path, inputs_dir: Path) -> tuple[Path, dict[str, str], str]:
    """The rerun's working directory ``DIR/work``, the input paths to rewrite (recorded ->
    restored) and the rerun's ``outdir``.

    Relative paths stay relative, so that outputs recording them come out the same: the restored
    copy of the run's working directory (``DIR/inputs/<run workdir>``) becomes ``DIR/work``, where
    inputs named relative to it are found by their recorded names, and a relative ``outdir`` is
    kept (``DIR/work/<outdir>``). Absolute paths are rewritten: inputs to where they were
    restored, an absolute ``outdir`` to ``DIR/results``.
    """
    cwd, base_copy = workdir / "work", inputs_dir / desc["run_base"].lstrip("/")
    if base_copy.is_dir():
        os.rename(base_copy, cwd)
        for parent in base_copy.parents:          # the folders left empty by the move
            if parent == inputs_dir or not parent.is_relative_to(inputs_dir) or any(parent.iterdir()):
                break
            parent.rmdir()
    else:
        cwd.mkdir()
    moves = {}
    for key, info in inputs.items():
        path = Path(info["path"])
        if info["from"] == "archive" and path.is_relative_to(base_copy):
            info["path"] = str(cwd / path.relative_to(base_copy))
        moves[info["recorded"]] = info["path"]
        if os.path.isabs(key) or info["from"] != "archive" or os.path.normpath(key).startswith(".."):
            moves[key] = info["path"]
    outdir = str(config["outdir"])
    inside = not os.path.isabs(outdir) and Path(os.path.normpath(cwd / outdir)).is_relative_to(cwd)
    return cwd, moves, (outdir if inside else str(workdir / "results"))


def rerun_config(config: dict[str, Any], moves: dict[str, str], outdir: str) -> dict[str, Any]:
    """The archived resolved config with input paths (and ``file:/dataset`` references) rewritten
    by prefix to the restored inputs, and ``outdir`` set to ``outdir``."""
    pairs = sorted(moves.items(), key=lambda kv: -len(kv[0]))

    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, str):
            for old, new in pairs:
                if value == old or value.startswith(old + ":"):
                    return new + value[len(old):]
        return value

    return {**fix(config), "outdir": outdir}


def offline_prefix() -> list[str]:
    """``unshare --net``: the pipeline runs with no network at all (a user namespace when not root)."""
    prefix = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    except OSError as exc:
        raise ArchiveError(f"--offline needs unshare (util-linux): {exc}") from None
    if probe.returncode:
        raise ArchiveError(f"--offline: cannot make a network namespace ({probe.stderr.strip()})")
    return prefix


def run_snakemake(workdir: Path, cwd: Path, config: Path, workflow: Path, env: dict[str, str], prefix: list[str],
                  cores: int | None, progress: Callable[[str], None]) -> int:
    """Snakemake in a subprocess on ``workflow``'s Snakefile and workstation profile in ``cwd``; its
    output goes to ``DIR/rerun-snakemake.log``, its progress lines to the terminal."""
    profile = workflow / "profiles" / "workstation"
    if not (workflow / "Snakefile").is_file() or not profile.is_dir():
        raise ArchiveError(f"{workflow} has no Snakefile or profiles/workstation")
    cmd = [*prefix, sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"),
           "--workflow-profile", str(profile), "--configfile", str(config), "--directory", str(cwd)]
    if cores:
        cmd += ["--cores", str(cores)]
    log = workdir / "rerun-snakemake.log"
    with log.open("w") as handle, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            handle.write(line)
            if re.search(r"\d+ of \d+ steps|^Error|^WorkflowError|DAISY:", line):
                progress(f"daisy rerun:   {line.strip()}")
    return proc.returncode


# -- the whole rerun ---------------------------------------------------------------------------

def prepare_workdir(workdir: Path) -> bool:
    """Refuse a non-empty ``workdir``; True when it does not exist yet (created later)."""
    if workdir.exists():
        if not workdir.is_dir() or any(workdir.iterdir()):
            raise ArchiveError(f"--workdir {workdir} is not an empty folder; choose a new one")
        return False
    return True


def rerun(archive: Path, workdir: Path, offline: bool = False, current_software: bool = False,
          cores: int | None = None, progress: Callable[[str], None] = say) -> int:
    """Rerun the archived analysis in ``workdir``; returns 0 when every output is identical."""
    from . import rerun_compare
    from .images import cache_dir

    archive, workdir = Path(archive), Path(workdir).absolute()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    create = prepare_workdir(workdir)
    prefix = offline_prefix() if offline else []
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{archive} is not a tar archive: {exc}") from None
    with tar:
        progress(f"daisy rerun: [1/5] checking the members of {archive} ({human(archive.stat().st_size)})")
        members = check_members(archive, tar)
        need = sum(m.size for m, _ in members)
        probe = next(p for p in [workdir, *workdir.parents] if p.exists())
        if shutil.disk_usage(probe).free < need:
            raise ArchiveError(f"{workdir} has {human(shutil.disk_usage(probe).free)} free, the archive needs {human(need)}")
        workdir.mkdir(parents=True, exist_ok=True)
        scratch = workdir / ".extract"
        try:
            progress(f"daisy rerun: [2/5] extracting and validating the bag ({len(members)} members, {human(need)})")
            found = extract(tar, members, scratch, progress)
            manifest = validate_bag(archive, scratch, found)
            desc = json.loads((scratch / DESCRIPTOR).read_text())
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            if create:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
    places = arrange(scratch, workdir)
    timings["extract_validate_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    prov = json.loads((places["run"] / "provenance.json").read_text())
    progress(f"daisy rerun: [3/5] restoring {len(desc['images'])} images and {len(desc['inputs'])} inputs")
    env = dict(os.environ)
    if current_software:
        from .images import load_lock

        workflow, current = REPO, load_lock()["images"]
        images = {name: {"archived_sha256": info["image_sha256"],
                         "current_sha256": current.get(name, {}).get("image_sha256"), "from": "current lock"}
                  for name, info in desc["images"].items()}
        env["PYTHONPATH"] = str(REPO)
    else:
        workflow = places["workflow"]
        lock = json.loads((workflow / "containers" / "images.lock.json").read_text())
        images = restore_images(desc, lock, manifest, places["images"], cache_dir(), progress)
        env.update(PYTHONPATH=str(workflow), DAISY_IMAGE_CACHE=str(places["images"]))
    inputs = restore_inputs(desc, manifest, places["inputs"], progress)
    resolved = places["run"] / "config.resolved.yaml"
    config = yaml.safe_load(resolved.read_text()) if resolved.is_file() else prov["config"]
    cwd, moves, outdir_value = working_directory(desc, config, inputs, workdir, places["inputs"])
    outdir = Path(os.path.normpath(cwd / outdir_value))
    config_path = workdir / "config.rerun.yaml"
    config_path.write_text(f"# daisy rerun of {archive.resolve()}: the archived resolved config, inputs and outdir moved\n"
                           + yaml.safe_dump(rerun_config(config, moves, outdir_value), sort_keys=False))
    timings["restore_s"] = time.perf_counter() - t0

    software = (f"current DAISY ({REPO}) and its images" if current_software
                else f"archived workflow ({workflow}) and images ({places['images']})")
    progress(f"daisy rerun: [4/5] running the {desc['pipeline']} pipeline with the {software}"
             f"{', no network' if offline else ''} -> {outdir}")
    t0 = time.perf_counter()
    code = run_snakemake(workdir, cwd, config_path, workflow, env, prefix, cores, progress)
    timings["pipeline_s"] = time.perf_counter() - t0

    progress("daisy rerun: [5/5] comparing the outputs")
    t0 = time.perf_counter()
    archived = {rel: manifest.get(f"data/run/{rel}", sha) for rel, sha in desc["outputs"].items()}
    relocated = sorted([(new, old) for old, new in moves.items() if new != old] + [(str(outdir), desc["outdir"])],
                       key=lambda pair: -len(pair[0]))
    rows = rerun_compare.compare_outputs(places["run"], archived, outdir, cwd, code, relocated, progress)
    timings["compare_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    report = {
        "archive": str(archive.resolve()), "workdir": str(workdir), "pipeline": desc["pipeline"],
        "run_created": desc.get("run_created"), "archived_with": desc.get("daisy_version"),
        "software": "current" if current_software else "archived", "workflow": str(workflow), "outdir": str(outdir),
        "offline": offline, "cwd": str(cwd), "snakemake_exit": code, "relocated": dict(relocated),
        "images": images, "inputs": inputs,
        "original_run": prov.get("software", {}), "timings": timings, "outputs": rows,
    }
    text = rerun_compare.write_report(workdir, report)
    print(text, end="", flush=True)
    return 0 if report["verdict"] == "identical" else 1
