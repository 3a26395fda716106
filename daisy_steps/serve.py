"""A long-lived step process inside an image: interactive steps on data kept in memory.

``python3 -m daisy_steps.serve --scratch DIR [--threads N] [--image NAME] [--warm MODULE ...]``
holds one :class:`~daisy_steps.core.DataStore` for as long as it runs and executes one step per
request on it, so that a notebook can load a scan once and then normalize, find the centre,
reconstruct a slice, change one parameter and rerun one step without reloading anything. The
host side is :mod:`daisy.interactive` (it starts this module with ``daisy.images.exec_argv``
after ``verify_image``, in the same isolation as a pipeline job).

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout (the real
stdout is kept for the answers; anything a library prints goes to stderr, the host's log file).
A request is ``{"id": N, "op": OP, ...}``; the answer ``{"id": N, "ok": true, "result": ...,
"seconds": S}`` or ``{"id": N, "ok": false, "error": "one line", "type": "StepError"}``. Ops:

- ``hello``: pid, Python, numpy, the step-code pin, the image name, the store's keys;
- ``ping``: nothing (what the overhead benchmark times);
- ``execute``: run one step (``step``, ``params``, ``inputs``/``outputs`` file slots) on the store,
  its ports bound to store names by ``bind_in``/``bind_out`` (port -> store key; the design's
  ``input_dataobj``/``output_dataobj``). Parameters are validated against the step's schema first.
  Arrays a step may change in place (a key it also provides or consumes) are copied first unless
  ``copy`` is false, so a step can be rerun on the same input; nothing is removed from the store
  (``delete`` does that). Outputs are committed atomically when the step succeeds. Returns the
  step's version, parameters after defaults, results (the job record's), seconds and what it put;
- ``keys``: every key with its type, shape, dtype and size (the design's ``data_keys()``);
- ``get``: an array (optionally indexed: ``index`` is one entry per axis, an int or ``[start,
  stop, step]``) written as ``.npy`` into the scratch folder, whose path is returned; small
  values (numbers, strings, tuples, dicts) come back inline. Arrays never leave otherwise;
- ``put``: ``key`` from an ``.npy`` file (``path``) or an inline JSON ``value``;
- ``copy``: ``dst`` = a copy of ``src`` (indexed like ``get``), e.g. a few sinogram rows;
- ``delete``: remove ``keys``; ``shutdown``: answer, then exit.

Imports only what every image has (the standard library, numpy and daisy_steps itself) at top
level: each step imports its own library (tomopy, pyFAI) when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .core import (DataStore, JobContext, check_code_pin, library_versions, set_thread_pools, step_class,
                   usable_cores)
from .errors import StepError
from .fileio import OutputSet
from .params import resolve
from .pin import code_sha256

PROTOCOL_VERSION = 1


def _jsonable(value: Any) -> Any:
    """Results and small store values as JSON (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe(value: Any) -> dict[str, Any]:
    """What a store value is, without its data: type, shape, dtype, bytes (for ``keys``)."""
    if isinstance(value, np.ndarray):
        return {"type": "ndarray", "shape": list(value.shape), "dtype": str(value.dtype), "nbytes": int(value.nbytes)}
    if isinstance(value, (bool, int, float, str, np.generic)) or value is None:
        return {"type": type(value).__name__, "value": _jsonable(value)}
    if isinstance(value, tuple) and len(value) <= 16:
        return {"type": "tuple", "value": _jsonable(value)}
    info: dict[str, Any] = {"type": type(value).__name__}
    shape = getattr(value, "shape", None)
    if shape is not None:
        info["shape"] = [int(n) for n in shape]
    if dataclasses.is_dataclass(value):
        info["fields"] = {f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)
                          if isinstance(getattr(value, f.name), np.ndarray)}
    return info


def index_of(spec: list | None) -> tuple:
    """``[3, [0, 10, 2], null]`` -> ``(3, slice(0, 10, 2), slice(None))``."""
    if spec is None:
        return ()
    out = []
    for item in spec:
        if item is None:
            out.append(slice(None))
        elif isinstance(item, list):
            out.append(slice(*item))
        elif isinstance(item, int):
            out.append(item)
        else:
            raise StepError(f"index entry {item!r}: expected an int, [start, stop, step] or null")
    return tuple(out)


class Server:
    """The data store of one interactive session and the ops on it."""

    def __init__(self, scratch: Path, threads: int, image: str | None) -> None:
        self.scratch = scratch
        self.threads = threads
        self.image = image
        self.store = DataStore()
        self.counter = 0
        self.code = code_sha256()
        self.versions: dict[str, dict[str, str]] = {}

    # -- ops ------------------------------------------------------------------------------------
    def op_hello(self, req: dict) -> dict:
        return {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "python": sys.version.split()[0],
                "numpy": np.__version__, "code_sha256": self.code, "image": self.image,
                "threads": self.threads, "keys": sorted(self.store)}

    def op_ping(self, req: dict) -> dict:
        return {}

    def op_keys(self, req: dict) -> dict:
        return {key: describe(value) for key, value in sorted(self.store.items())}

    def _value(self, key: str) -> Any:
        try:
            return self.store[key]
        except KeyError:
            raise StepError(f"no '{key}' in the data store (it holds: {', '.join(sorted(self.store)) or 'nothing'})") \
                from None

    def _scratch_file(self, key: str, suffix: str) -> Path:
        self.counter += 1
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)[:60]
        return self.scratch / f"{safe}-{os.getpid()}-{self.counter}{suffix}"

    def op_get(self, req: dict) -> dict:
        key = req["key"]
        value = self._value(key)
        if isinstance(value, np.ndarray) or req.get("index") is not None:
            array = np.ascontiguousarray(np.asarray(value)[index_of(req.get("index"))])
            path = self._scratch_file(key, ".npy")
            tmp = path.with_name(path.name + ".part")
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, path)
            return {"kind": "npy", "path": str(path), "shape": list(array.shape), "dtype": str(array.dtype)}
        if dataclasses.is_dataclass(value):  # e.g. an XRDResult: arrays in one .npz, the rest inline
            arrays = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                      if isinstance(getattr(value, f.name), np.ndarray)}
            rest = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in arrays}
            path = self._scratch_file(key, ".npz")
            tmp = path.with_name(path.name + ".part")
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, path)
            return {"kind": "npz", "path": str(path), "type": type(value).__name__, "fields": rest}
        if hasattr(value, "read") and hasattr(value, "shape"):
            raise StepError(f"'{key}' is a streamed {type(value).__name__} (read lazily from its file); "
                            f"get an array with an index, e.g. frames 0..1")
        return {"kind": "value", "value": _jsonable(value), "type": type(value).__name__}

    def op_put(self, req: dict) -> dict:
        key = req["key"]
        if "path" in req:
            self.store[key] = np.load(req["path"], allow_pickle=False)
        else:
            value = req.get("value")
            self.store[key] = tuple(value) if req.get("as_tuple") else value
        return {key: describe(self.store[key])}

    def op_copy(self, req: dict) -> dict:
        value = self._value(req["src"])
        if isinstance(value, np.ndarray):
            value = np.array(value[index_of(req.get("index"))], copy=True)
        self.store[req["dst"]] = value
        return {req["dst"]: describe(value)}

    def op_delete(self, req: dict) -> dict:
        gone = [key for key in req.get("keys", []) if self.store.pop(key, None) is not None]
        return {"deleted": gone}

    def op_execute(self, req: dict) -> dict:
        name = req["step"]
        cls = step_class(name)
        if self.image is not None and self.image not in cls.images:
            raise StepError(f"step {name} cannot run in image '{self.image}'; it runs in {', '.join(cls.images)}")
        params = resolve(f"steps/{name}", req.get("params") or {}, what=f"step {name}")
        requires, provides, consumes = cls.bound_ports(params)
        bind_in, bind_out = req.get("bind_in") or {}, req.get("bind_out") or {}
        for where, mapping, ports in (("bind_in", bind_in, requires), ("bind_out", bind_out, provides)):
            unknown = sorted(set(mapping) - set(ports))
            if unknown:
                raise StepError(f"step {name}: {where} names {', '.join(map(repr, unknown))}, which is not one of its "
                                f"ports ({', '.join(ports) or 'none'})")
        work = DataStore()
        for port, spec in requires.items():
            key = bind_in.get(port, port)
            if key not in self.store:
                if spec.optional:
                    continue
                raise StepError(f"step {name} requires '{port}' ({spec.doc}), looked up as '{key}', but the data "
                                f"store holds {', '.join(sorted(self.store)) or 'nothing'}")
            value = self.store[key]
            if isinstance(value, np.ndarray) and req.get("copy", True) and (port in provides or port in consumes):
                value = value.copy()  # the step may change it in place: keep the input for a rerun
            work[port] = value
        outset = OutputSet()
        ctx = JobContext(req.get("inputs") or {}, req.get("outputs") or {}, outset, self.threads, name,
                         job_name=req.get("job") or "interactive", image={"name": self.image} if self.image else None,
                         code_sha256=self.code)
        step = cls(params, work, ctx)
        clock = time.perf_counter()
        try:
            try:
                step.initialize()
                step.execute()
            finally:
                step.finalize()
            missing = [port for port, spec in provides.items() if not spec.optional and port not in work]
            if missing:
                raise StepError(f"step {name} finished without putting {', '.join(map(repr, missing))} in the data "
                                f"store, which it declares it provides")
            finals = outset.commit()
        except BaseException:
            outset.discard()
            raise
        seconds = time.perf_counter() - clock
        put = {}
        for port in provides:
            if port in work:
                key = bind_out.get(port, port)
                self.store[key] = work[port]
                put[key] = describe(work[port])
        return {"step": name, "version": cls.version, "image": self.image, "params": _jsonable(params),
                "inputs": req.get("inputs") or {}, "outputs": req.get("outputs") or {},
                "results": _jsonable(ctx.results), "compute_seconds": seconds, "put": put,
                "files": [str(p) for p in finals], "libraries": self._versions(cls)}

    def _versions(self, cls) -> dict[str, str]:
        if cls.name not in self.versions:  # read once per step class (dpkg's status file is large)
            self.versions[cls.name] = library_versions(cls.libraries)
        return self.versions[cls.name]

    def op_shutdown(self, req: dict) -> dict:
        return {"bye": True}

    # -- the loop -------------------------------------------------------------------------------
    def handle(self, req: dict) -> dict:
        clock = time.perf_counter()
        ident = req.get("id")
        try:
            op = getattr(self, f"op_{req.get('op')}", None)
            if op is None:
                raise StepError(f"unknown op {req.get('op')!r}")
            result = op(req)
            return {"id": ident, "ok": True, "result": result, "seconds": time.perf_counter() - clock}
        except StepError as exc:
            return {"id": ident, "ok": False, "type": type(exc).__name__, "error": str(exc),
                    "seconds": time.perf_counter() - clock}
        except Exception as exc:  # noqa: BLE001: one line back, the traceback into the log
            traceback.print_exc(file=sys.stderr)
            return {"id": ident, "ok": False, "type": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}",
                    "seconds": time.perf_counter() - clock}


def _answer_channel() -> io.TextIOBase:
    """The real stdout, kept for answers; fd 1 then points at stderr, so that whatever a library
    prints cannot corrupt the protocol."""
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m daisy_steps.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--scratch", required=True, help="folder shared with the host for arrays asked for (.npy)")
    parser.add_argument("--threads", type=int, default=0, help="threads of the steps' libraries (default: all usable)")
    parser.add_argument("--image", help="the image this runs in (steps that cannot run there are refused)")
    parser.add_argument("--code-sha256", help="refuse to start when the step code differs from this pin")
    parser.add_argument("--warm", nargs="*", default=[], help="modules to import before answering hello")
    args = parser.parse_args(argv)
    threads = min(args.threads or usable_cores(), usable_cores())
    set_thread_pools(threads)  # before any library loads its thread pool
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    channel = _answer_channel()
    if args.code_sha256:
        check_code_pin({"code_sha256": args.code_sha256})
    for module in args.warm:
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001: warming is best effort
            logging.getLogger("daisy.serve").warning("could not import %s: %s", module, exc)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    server = Server(scratch, threads, args.image)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except json.JSONDecodeError as exc:
            reply = {"id": None, "ok": False, "type": "ProtocolError", "error": f"not JSON: {exc}"}
        else:
            reply = server.handle(req if isinstance(req, dict) else {"op": None})
        channel.write(json.dumps(reply, default=_jsonable) + "\n")
        channel.flush()
        if reply.get("ok") and isinstance(req, dict) and req.get("op") == "shutdown":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
