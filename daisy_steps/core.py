"""The step contract: lifecycle classes, the in-memory data store, and the job runner.

A *step* is a class with ``initialize() -> execute() -> finalize()`` (the DaisyAlg of the
original design). A *job* is a JSON file naming one step or a chain of steps of the same
image; the chain runs in one process and passes arrays through a :class:`DataStore`, so only
the ends of a stage touch the disk. See ``docs/step-contract.md``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__ as steps_version
from . import slurm_record
from .errors import StepError
from .fileio import FileRef, OutputSet, sha256_file, write_json_atomic
from .params import resolve
from .ports import Port, bind, bind_keys, check_chain

JOB_VERSION = 1
RECORD_VERSION = 2
#: Inputs larger than this are not hashed per job (a slab job would re-hash a whole raw
#: scan); the run's provenance hashes them once.
DEFAULT_HASH_LIMIT = 256 * 1024 * 1024


def usable_cores() -> int:
    """CPUs this process may run on (respects Slurm's and cgroups' CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def set_thread_pools(threads: int) -> None:
    """Give every library's thread pool the job's thread count.

    Must run before the steps' libraries load: OpenMP (pyFAI, hdf5plugin's filters), numexpr
    (tomopy's minus-log) and BLAS read these variables once, when first loaded. The images
    default them to 1 and ``--cleanenv`` drops Snakemake's, so the job file decides.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class DataStore(dict):
    """Named arrays and values shared by the steps of one job (the original DataStore).

    The runner holds the whole store; a step sees it through :meth:`for_step`, which lets it
    touch only the keys its class declares (``requires``, ``provides``, ``consumes``).
    """

    def for_step(self, step: "Step") -> "StepStore":
        return StepStore(self, step)


class StepStore:
    """What one step sees of the job's :class:`DataStore`: the keys its class declares.

    ``require`` and ``get`` read declared requirements, ``put`` writes declared provides (type
    checked against the port's kind), ``discard`` removes what the step consumes or provides.
    Touching an undeclared key is a :class:`StepError` naming the step: a bug in the step,
    caught by any test that runs it.
    """

    def __init__(self, data: DataStore, step: "Step") -> None:
        self._data = data
        self.step = step.name
        self.requires, self.provides, self.consumes = type(step).bound_ports(step.params)

    def _undeclared(self, key: str, what: str) -> StepError:
        return StepError(f"step {self.step} {what} data-store key '{key}', which it does not declare "
                         f"(requires: {', '.join(self.requires) or 'none'}; provides: "
                         f"{', '.join(self.provides) or 'none'}): declare it on the step class")

    def require(self, key: str) -> Any:
        """The value of requirement ``key``; a StepError if no earlier step put it."""
        if key not in self.requires:
            raise self._undeclared(key, "reads")
        try:
            return self._data[key]
        except KeyError:
            have = ", ".join(sorted(self._data)) or "nothing"
            raise StepError(f"step {self.step} needs '{key}' in the data store, which holds {have}; "
                            f"put a step that provides it earlier in the job") from None

    def get(self, key: str, default: Any = None) -> Any:
        """The value of requirement ``key`` (usually an optional one), or ``default``."""
        if key not in self.requires:
            raise self._undeclared(key, "reads")
        return self._data.get(key, default)

    def __contains__(self, key: str) -> bool:
        if key not in self.requires and key not in self.provides:
            raise self._undeclared(key, "looks up")
        return key in self._data

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, one of the step's provides, of the port's kind."""
        port = self.provides.get(key)
        if port is None:
            raise self._undeclared(key, "writes")
        if not port.check(value):
            raise StepError(f"step {self.step} puts a {type(value).__name__} under '{key}', "
                            f"which it declares as {port.kind}")
        self._data[key] = value

    def discard(self, key: str) -> None:
        """Remove ``key`` (one the step consumes, or one of its own provides) if present."""
        if key not in self.consumes and key not in self.provides:
            raise self._undeclared(key, "removes")
        self._data.pop(key, None)


class JobContext:
    """What a step may know of its job: file slots, temporary outputs, threads, the job's name,
    image (``{name, version, sha256}``) and step-code pin (for the provenance a gather step
    writes into its result), the results it reports in the job record (``results``, e.g.
    the rotation centre), and its warnings (:meth:`warn`: the record's ``warnings``, printed
    at the end of the run). An input may be a file an earlier step of the same job wrote
    (:meth:`input` gives its temporary file until the job commits) or the job's own record
    (:meth:`own_record`: the steps run so far)."""

    def __init__(self, inputs: dict[str, str], outputs: dict[str, str], outset: OutputSet,
                 threads: int, step: str, job_name: str | None = None,
                 image: dict[str, Any] | None = None, code_sha256: str | None = None,
                 record: dict[str, Any] | None = None, record_path: str | None = None) -> None:
        self._inputs = {k: FileRef.parse(v) for k, v in inputs.items()}
        self._outputs = {k: FileRef.parse(v) for k, v in outputs.items()}
        self._outset = outset
        self._record = record
        self._record_path = os.path.abspath(record_path) if record_path else None
        self.threads = threads
        self.step = step
        self.job_name = job_name
        self.image = dict(image) if isinstance(image, dict) else ({"name": image} if image else None)
        self.code_sha256 = code_sha256
        self.results: dict[str, Any] = {}
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        """A warning the person running the job must see: one line, kept in the job record
        (``warnings``, also per step), logged, and printed on the console when the run ends."""
        line = " ".join(str(message).split())
        self.warnings.append(line)
        logging.getLogger(f"daisy.{self.step}").warning("%s", line)

    def has_input(self, slot: str) -> bool:
        return slot in self._inputs

    def input_slots(self) -> list[str]:
        """Names of the input slots given in the job file."""
        return list(self._inputs)

    def input(self, slot: str) -> FileRef:
        """The input file (and dataset) bound to ``slot``; it must exist. A file an earlier step
        of this job wrote is read from its temporary file (it gets its name when the job commits)."""
        ref = self.input_name(slot)
        written = self._outset.pending(ref.path)
        if written is not None:
            if not written.is_file():
                raise StepError(f"step {self.step}: input '{slot}' ({ref.path}) was to be written by an earlier "
                                f"step of this job, which did not write it")
            return FileRef(written, ref.dataset)
        if not ref.path.is_file():
            raise StepError(f"step {self.step}: input file {ref.path} does not exist")
        return ref

    def input_name(self, slot: str) -> FileRef:
        """The file (and dataset) the job file names for input ``slot``: its final name, for
        links between files (a virtual dataset's sources), never for reading."""
        try:
            return self._inputs[slot]
        except KeyError:
            raise StepError(f"step {self.step}: input '{slot}' is not given in the job file") from None

    def own_record(self, slot: str) -> dict[str, Any] | None:
        """When input ``slot`` names this job's own record: the record so far, its steps those
        run before the first step of this kind (a gather in the job that made what it gathers);
        else None."""
        if self._record is None or self._record_path is None or slot not in self._inputs:
            return None
        if os.path.abspath(self._inputs[slot].path) != self._record_path:
            return None
        steps = list(self._record.get("steps") or [])
        first = next((i for i, entry in enumerate(steps) if entry.get("step") == self.step), len(steps))
        return {**self._record, "steps": steps[:first]}

    def has_output(self, slot: str) -> bool:
        return slot in self._outputs

    def output(self, slot: str) -> FileRef:
        """A temporary file for output ``slot``; renamed to its final name when the job succeeds."""
        try:
            ref = self._outputs[slot]
        except KeyError:
            raise StepError(f"step {self.step}: output '{slot}' is not given in the job file") from None
        return FileRef(self._outset.temporary(ref.path), ref.dataset)

    def extra_output(self, final_path) -> Path:
        """A temporary file for an output not named in the job file (e.g. one .xy file per
        frame); committed or removed with the declared outputs and listed in the record."""
        return self._outset.temporary(final_path, stale=False)   # inside a declared folder output

    def final_output(self, slot: str) -> FileRef:
        """The final name of output ``slot`` (for links between outputs, never for writing)."""
        return self._outputs[slot]


class Step:
    """Base class of every DAISY step.

    Subclasses set ``name`` (``family.action``), ``version``, ``images`` (the images it can run
    in: those holding its ``libraries``, whose versions are recorded), its ports ``requires`` and
    ``provides`` (data-store key -> :class:`~daisy_steps.ports.Port`; a key ``{field}`` is named
    by parameter ``field``), ``consumes`` (keys it removes from the store), and implement
    :meth:`execute`. Parameters arrive validated, with the defaults of
    ``schemas/steps/<name>.schema.json``. ``self.store`` gives access to the declared keys only.
    """

    name = "step"
    version = "0.0.0"
    images: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ("numpy", "h5py")
    requires: dict[str, Port] = {}
    provides: dict[str, Port] = {}
    consumes: tuple[str, ...] = ()

    def __init__(self, params: dict[str, Any], store: DataStore, ctx: JobContext) -> None:
        self.params = params
        self.store = store.for_step(self)
        self.ctx = ctx
        self.log = logging.getLogger(f"daisy.{self.name}")

    @classmethod
    def bound_ports(cls, params: dict[str, Any]) -> tuple[dict[str, Port], dict[str, Port], tuple[str, ...]]:
        """``requires``, ``provides`` and ``consumes`` with parameter-named keys resolved."""
        return bind(cls.requires, params), bind(cls.provides, params), bind_keys(cls.consumes, params)

    def initialize(self) -> None:
        """Check inputs and prepare; touch no output."""

    def execute(self) -> None:
        raise NotImplementedError

    def finalize(self) -> None:
        """Release resources; runs after execute, also when it failed."""


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

def step_class(name: str) -> type[Step]:
    """The step class named ``name`` (``daisy_steps.registry`` finds every one)."""
    from .registry import CLASSES

    try:
        return CLASSES[name]
    except KeyError:
        raise StepError(f"unknown step '{name}' (known: {', '.join(sorted(CLASSES))})") from None


# ---------------------------------------------------------------------------------------------
# versions and records
# ---------------------------------------------------------------------------------------------

def _dpkg_version(package: str) -> str | None:
    try:
        text = Path("/var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return None
    for block in text.split("\n\n"):
        if f"Package: {package}\n" in block + "\n":
            for line in block.splitlines():
                if line.startswith("Version: "):
                    return line.split(": ", 1)[1]
    return None


def library_versions(names) -> dict[str, str]:
    """Versions of the libraries a step uses (Debian's version where the module lies)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "daisy_steps": steps_version}
    for name in names:
        version = None
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
        if version in (None, "0.0.0"):
            version = _dpkg_version(f"python3-{name.lower()}") or version
        if version is None:
            module = sys.modules.get(name)
            version = getattr(module, "__version__", None)
        out[name] = version or "unknown"
    return out


def _describe(path: Path, hash_limit: int) -> dict[str, Any]:
    """Size and sha256 of a job's input or output; files over ``hash_limit`` are left to the
    run's provenance, which hashes them once, in parallel, with a cache."""
    info: dict[str, Any] = {"size": path.stat().st_size}
    info["sha256"] = sha256_file(path) if info["size"] <= hash_limit else None
    if info["sha256"] is None:
        info["note"] = f"larger than {hash_limit} bytes: hashed once in the run's provenance"
    return info


# ---------------------------------------------------------------------------------------------
# the job runner
# ---------------------------------------------------------------------------------------------

def load_job(path: str | os.PathLike, single_step: str | None = None) -> dict[str, Any]:
    """Read a job file. With ``single_step``, the file may hold just params/inputs/outputs."""
    path = Path(path)
    try:
        job = json.loads(path.read_text())
    except FileNotFoundError:
        raise StepError(f"job file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise StepError(f"job file {path} is not valid JSON: {exc}") from None
    if not isinstance(job, dict):
        raise StepError(f"job file {path}: expected a JSON object")
    version = job.get("job_version", JOB_VERSION)
    if version != JOB_VERSION:
        raise StepError(f"job file {path}: job_version {version} is not supported (this is {JOB_VERSION})")
    if single_step is not None and "steps" not in job:
        entry = {k: job[k] for k in ("params", "inputs", "outputs") if k in job}
        job = {**{k: v for k, v in job.items() if k not in entry}, "steps": [{"step": single_step, **entry}]}
    if not isinstance(job.get("steps"), list) or not job["steps"]:
        raise StepError(f"job file {path}: 'steps' must be a non-empty list")
    job.setdefault("job", path.stem)
    return job


def _check_paths(job: dict[str, Any]) -> None:
    """Refuse an output that would overwrite a file the job reads before (or while) writing it; a
    later step may read what an earlier one wrote (it is passed on before the job commits)."""
    read: set[Path] = set()
    for entry in job["steps"]:
        read |= {FileRef.parse(v).path.resolve() for v in entry.get("inputs", {}).values()}
        for slot, text in entry.get("outputs", {}).items():
            if FileRef.parse(text).path.resolve() in read:
                raise StepError(f"step {entry['step']}: output '{slot}' ({text}) would overwrite an input")


def external_inputs(steps: list[Any], record: str | None = None) -> list[str]:
    """The files a chain of steps reads that it does not make itself (its outputs, and its job's
    ``record``, which a gather in the job may read), in step order, each once."""
    steps = [s for s in steps if isinstance(s, dict)]
    own = {os.path.abspath(FileRef.parse(v).path) for s in steps for v in s.get("outputs", {}).values()}
    if record:
        own.add(os.path.abspath(record))
    paths = dict.fromkeys(str(FileRef.parse(v).path) for s in steps for v in s.get("inputs", {}).values())
    return [p for p in paths if os.path.abspath(p) not in own]


def _external_inputs(job: dict[str, Any]) -> set[Path]:
    return {Path(p) for p in external_inputs(job.get("steps", []), job.get("record"))}


def job_image(job: dict[str, Any]) -> str | None:
    """The name of the image a job runs in (``job["image"]["name"]``); None for hand-written
    jobs that do not say."""
    image = job.get("image")
    if isinstance(image, dict):
        return image.get("name")
    return image if isinstance(image, str) else None


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run every step of ``job`` in order in this process; return the record.

    All parameters are validated, and the chain is checked against the steps' ports and
    images (:func:`daisy_steps.ports.check_chain`), before any data is touched. Outputs are
    committed only if every step succeeds; otherwise they are removed, a record with ``"status":
    "failed"`` (the error, the steps that ran) is written to the record path and to
    ``failed/<name>`` beside it (:func:`failed_record_path`: the rule's own record is deleted by
    Snakemake as an output of a failed job), and the error propagates.
    """
    log = logging.getLogger("daisy.job")
    record: dict[str, Any] = {
        "record_version": RECORD_VERSION, "job": job.get("job"), "status": "running", "host": socket.gethostname(),
        "image": job.get("image"), "code_sha256": None, "started": now(), "steps": [],
    }
    outset = OutputSet()
    libraries: dict[str, str] = {}
    running: dict[str, Any] | None = None       # the step under way, for the record of a failure
    hash_limit = DEFAULT_HASH_LIMIT
    try:
        code = record["code_sha256"] = check_code_pin(job)
        threads = min(int(job.get("threads") or usable_cores()), usable_cores())
        set_thread_pools(threads)
        hash_limit = int(job.get("hash_limit", DEFAULT_HASH_LIMIT))
        prepared = []
        for index, entry in enumerate(job["steps"]):
            name = entry.get("step")
            cls = step_class(name)
            params = resolve(f"steps/{name}", entry.get("params", {}), what=f"step {name} (#{index + 1})")
            prepared.append((cls, entry, params))
        image = job_image(job)
        check_chain(job["job"], image, [{**entry, "params": params} for _, entry, params in prepared])
        _check_paths(job)

        store = DataStore()
        for cls, entry, params in prepared:
            ctx = JobContext(entry.get("inputs", {}), entry.get("outputs", {}), outset, threads, cls.name,
                             job_name=job["job"], image=job.get("image"), code_sha256=code,
                             record=record, record_path=job.get("record"))
            step = cls(params, store, ctx)
            started, clock = now(), time.perf_counter()
            running = {"step": cls.name, "version": cls.version, "image": image, "params": params,
                       "inputs": entry.get("inputs", {}), "outputs": entry.get("outputs", {}),
                       "started": started, "clock": clock, "results": ctx.results, "warnings": ctx.warnings}
            log.info("%s %s: start", cls.name, cls.version)
            try:
                step.initialize()
                step.execute()
            finally:
                step.finalize()
            seconds = time.perf_counter() - clock
            missing = [key for key, port in step.store.provides.items() if not port.optional and key not in store]
            if missing:
                raise StepError(f"step {cls.name} finished without putting {', '.join(map(repr, missing))} "
                                f"in the data store, which it declares it provides")
            log.info("%s: done in %.3f s", cls.name, seconds)
            libraries.update(library_versions(cls.libraries))
            record["steps"].append({
                "step": cls.name, "version": cls.version, "image": image, "params": params,
                "inputs": entry.get("inputs", {}), "outputs": entry.get("outputs", {}),
                "started": started, "ended": now(), "seconds": round(seconds, 6), "results": ctx.results,
                "warnings": ctx.warnings,
            })
            running = None
        finals = outset.commit()
    except BaseException as exc:
        outset.discard()
        _write_failed_record(job, record, exc, running, libraries, hash_limit)
        raise
    input_paths = _external_inputs(job)
    record["status"] = "completed"
    record["warnings"] = _warnings(record)
    record["inputs"] = {str(p): _describe(p, hash_limit) for p in sorted(input_paths) if p.is_file()}
    record["outputs"] = {str(p): _describe(p, hash_limit) for p in finals}
    record["libraries"] = libraries
    record["ended"] = now()
    slurm_record.add(record)
    if job.get("record"):
        write_json_atomic(job["record"], record)
        failed_record_path(job["record"]).unlink(missing_ok=True)   # an earlier attempt's failure
    return record


def _warnings(record: dict[str, Any]) -> list[str]:
    """Every step's warnings, ``"<step>: <warning>"`` in step order (the record's ``warnings``)."""
    return [f"{entry['step']}: {line}" for entry in record["steps"] for line in entry.get("warnings", [])]


def failed_record_path(record_path: str | os.PathLike) -> Path:
    """Where the record of a failed job is kept: ``failed/<name>`` beside the record path (outside
    the rule's outputs, which Snakemake deletes when a job fails)."""
    path = Path(record_path)
    return path.parent / "failed" / path.name


def one_line(exc: BaseException, limit: int = 2000) -> str:
    """An exception as one line: its type and its message, whitespace collapsed."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _write_failed_record(job: dict[str, Any], record: dict[str, Any], exc: BaseException,
                         running: dict[str, Any] | None, libraries: dict[str, str], hash_limit: int) -> None:
    """The record of a failed job (never raises: the job's own error is what propagates)."""
    if not isinstance(job, dict) or not job.get("record"):
        return
    try:
        ended = now()
        record.update(status="failed", error=one_line(exc), ended=ended, outputs={}, libraries=libraries)
        if running is not None:
            clock = running.pop("clock")
            record["steps"].append({**running, "ended": ended, "seconds": round(time.perf_counter() - clock, 6),
                                    "status": "failed"})
            record["failed_step"] = running["step"]
        record["warnings"] = _warnings(record)
        inputs = _external_inputs(job)
        record["inputs"] = {str(p): _describe(p, hash_limit) for p in sorted(inputs) if p.is_file()}
        slurm_record.add(record)
        write_json_atomic(job["record"], record)
        write_json_atomic(failed_record_path(job["record"]), record)
    except Exception as error:  # noqa: BLE001
        logging.getLogger("daisy.job").warning("could not write the record of the failed job: %s", error)


def check_code_pin(job: dict[str, Any]) -> str:
    """Refuse to run if the job was planned for other step code than the one imported here."""
    from .pin import code_sha256

    actual = code_sha256()
    expected = job.get("code_sha256")
    if expected and expected != actual:
        raise StepError(f"step code differs from the code this job was planned with: "
                        f"job says {expected[:16]}..., daisy_steps here hashes to {actual[:16]}...; "
                        f"re-plan the run (daisy run) or check out the code of the archived run")
    return actual
