"""An interactive session: steps run one call at a time on data kept in memory, in the images.

A :class:`Session` is the design's workflow engine: ``session['normalize'].execute(
projs_dataobj='tomodata', ..., output_dataobj='normdata')`` runs DAISY's ``ct.normalize`` in a
long-lived step process (:class:`~daisy.interactive.server.StepServer`) of the image the step
runs in, on arrays that stay in that process's data store between calls. Every call is recorded
(step, version, image, parameters after defaults, results, seconds), so that what was tried last
becomes a pipeline config (:meth:`Session.to_config`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from daisy_steps.errors import StepError

from . import design
from .server import ServerError, StepServer

#: images a session prefers, for steps that run in several (hdf5.load runs in all three)
PREFERENCE = {"ct": ("tomopy", "base", "pyfai"), "xrd": ("pyfai", "base", "tomopy"), None: ("tomopy", "pyfai", "base")}


@dataclass
class Call:
    """One step call of a session, as its job record would show it."""

    step: str
    version: str
    image: str
    params: dict[str, Any]
    results: dict[str, Any]
    bind_in: dict[str, str] = field(default_factory=dict)
    bind_out: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    put: dict[str, Any] = field(default_factory=dict)
    compute_seconds: float = 0.0
    seconds: float = 0.0
    name: str | None = None

    @property
    def overhead_seconds(self) -> float:
        """Wall time of the call beyond the step's own compute (protocol, copies, validation)."""
        return max(0.0, self.seconds - self.compute_seconds)

    def __repr__(self) -> str:
        keys = ", ".join(self.put) or "-"
        return (f"<{self.step} {self.version} in {self.image}: {self.compute_seconds:.3f} s compute, "
                f"{self.overhead_seconds * 1000:.1f} ms overhead; put {keys}>")


def _ports(step: str):
    from daisy_steps.core import step_class

    return step_class(step)


def _primary(ports: dict, kinds=("ndarray", "frames", "xrd_result")) -> str | None:
    for key, port in ports.items():
        if not port.optional and port.kind in kinds:
            return key
    return next(iter(ports), None)


class StepHandle:
    """``engine[name]``: one algorithm of the session (a DAISY step, maybe under a design name)."""

    def __init__(self, session: "Session", name: str, step: str, init_paras: dict | None = None,
                 cfg: dict | None = None) -> None:
        self.session, self.name, self.step = session, name, step
        self.init_paras = dict(init_paras or {})
        self.cfg = dict(cfg or {})

    def __repr__(self) -> str:
        return f"<algorithm {self.name!r}: DAISY step {self.step}>"

    def execute(self, **kwargs: Any) -> Call:
        """Run the step once. Keywords: ``input_dataobj``/``output_dataobj`` and the design's
        ``*_dataobj`` names bind ports to store keys, a port's own name does too (``theta='thetas'``);
        ``input_path``/``output_path`` name the dataset of the loader's/saver's file; ``inputs``/
        ``outputs`` give file slots; everything else is a parameter of the step (design names such
        as ``alg_type`` translated). ``cfg_dict`` values of this algorithm are the defaults."""
        from daisy_steps.params import load_schema
        from daisy_steps.ports import template_field

        cls = _ports(self.step)
        schema = load_schema(f"steps/{self.step}").get("properties", {})
        merged = {**self.cfg, **kwargs}
        params: dict[str, Any] = {}
        bind_in: dict[str, str] = {}
        bind_out: dict[str, str] = {}
        inputs = dict(merged.pop("inputs", None) or {})
        outputs = dict(merged.pop("outputs", None) or {})
        copy = merged.pop("copy", True)
        port_words = design.PORT_KEYWORDS.get(self.step, {})
        param_words = design.PARAM_KEYWORDS.get(self.step, {})

        def bind(ports: dict, mapping: dict, port: str, value: str) -> None:
            field = template_field(port)
            if field:                       # hdf5.load's "{key}": the key is a parameter
                params[field] = value
            else:
                mapping[port] = value

        for word, value in merged.items():
            if word == "input_dataobj":
                port = _primary(cls.requires)
                if port is None:
                    raise StepError(f"{self.name} ({self.step}) reads nothing from the data store: no input_dataobj")
                bind(cls.requires, bind_in, port, value)
            elif word == "output_dataobj":
                port = _primary(cls.provides)
                if port is None:
                    raise StepError(f"{self.name} ({self.step}) puts nothing in the data store: no output_dataobj")
                bind(cls.provides, bind_out, port, value)
            elif word in port_words:
                bind(cls.requires, bind_in, port_words[word], value)
            elif word == "input_path":
                inputs[_slot(cls, "input")] = f"{self.session.data_file(self._file('input'))}:{value}"
            elif word == "output_path":
                outputs[_slot(cls, "output")] = f"{self.session.out_file(self._file('output'))}:{value}"
            elif word in param_words:
                design.set_param(params, param_words[word], design.number(value))
            elif word in design.IGNORED:
                continue
            elif word in schema:
                params[word] = value
            elif word in cls.requires and isinstance(value, str):
                bind_in[word] = value
            elif word in cls.provides and isinstance(value, str):
                bind_out[word] = value
            else:
                raise StepError(f"{self.name} ({self.step}): unknown keyword {word!r} (parameters: "
                                f"{', '.join(schema) or 'none'}; ports: {', '.join([*cls.requires, *cls.provides]) or 'none'})")
        return self.session.execute(self.step, params, inputs=inputs, outputs=outputs, bind_in=bind_in,
                                    bind_out=bind_out, copy=copy, name=self.name)

    def _file(self, role: str) -> str:
        for para, what in design.FILE_PARAS.items():
            if what == role and para in self.init_paras:
                return str(self.init_paras[para])
        raise StepError(f"{self.name} ({self.step}): no file to {'read' if role == 'input' else 'write'}: give "
                        f"init_paras {{'{'inputfile_name' if role == 'input' else 'outputfile_name'}': ...}} "
                        f"or the {'inputs' if role == 'input' else 'outputs'} keyword")


def _slot(cls, role: str) -> str:
    """The file slot of a loader (``source``, ``raw``, ``scan``) or saver (``target``, ``slab``)."""
    slots = {"hdf5.load": "source", "ct.load": "raw", "xrd.load_frames": "source", "hdf5.save": "target",
             "ct.save_slab": "slab", "xrd.save_block": "block"}
    if cls.name in slots:
        return slots[cls.name]
    raise StepError(f"step {cls.name} takes no {role}_path: give its file slots with {role}s={{...}}")


class Session:
    """Step processes per image, the keys they hold, and the record of every call.

    ``data``: files or folders the steps read (bound read-only); ``outdir``: where they write
    (read-write); ``pipeline``: ``ct`` or ``xrd`` (which image a step that runs in several
    prefers); ``threads``: per step process. The design's names and classes come from
    ``algorithms`` (its ``init_dict``) and ``config`` (its ``cfg_dict``).
    """

    def __init__(self, data: Iterable = (), outdir=None, pipeline: str | None = None, threads: int = 2,
                 algorithms: dict | None = None, config: dict | None = None, data_dir=None,
                 scratch=None) -> None:
        self.pipeline = pipeline
        self.threads = threads
        self.data_dir = Path(data_dir).resolve() if data_dir else Path.cwd()
        self.outdir = Path(outdir).resolve() if outdir else None
        if self.outdir:
            self.outdir.mkdir(parents=True, exist_ok=True)
        self._own_scratch = scratch is None
        self.scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="daisy-session-"))
        self.folders: set[Path] = {self._folder(p) for p in data}
        self.servers: dict[str, StepServer] = {}
        self.location: dict[str, str] = {}        # store key -> image whose process holds it
        self.history: list[Call] = []
        self.chosen: dict[tuple[str, str], Any] = {}   # (step, parameter) -> value picked (sweeps)
        self.algorithms = dict(algorithms or {})
        self.algorithm_cfg = dict(config or {})
        for name in self.algorithm_cfg:
            if name not in self.algorithms and name not in design.DEFAULT_NAMES:
                raise StepError(f"cfg_dict: '{name}' names no algorithm of init_dict ({', '.join(self.algorithms)})")

    # -- files and folders ----------------------------------------------------------------------
    @staticmethod
    def _folder(path) -> Path:
        path = Path(path).resolve()
        return path if path.is_dir() else path.parent

    def data_file(self, name: str) -> Path:
        path = Path(name)
        return (path if path.is_absolute() else self.data_dir / path).resolve()

    def out_file(self, name: str) -> Path:
        path = Path(name)
        if path.is_absolute():
            return path
        if self.outdir is None:
            raise StepError(f"cannot write {name}: the session has no outdir (Session(outdir=...))")
        return self.outdir / path

    # -- step processes -------------------------------------------------------------------------
    def server(self, image: str) -> StepServer:
        """The running step process of ``image`` (started on first use)."""
        server = self.servers.get(image)
        if server is None or not server.alive:
            rw = [self.outdir] if self.outdir else []
            server = StepServer(image, self.scratch, binds_ro=sorted(self.folders), binds_rw=rw, threads=self.threads)
            self.servers[image] = server
            for key in [k for k, v in self.location.items() if v == image]:   # a dead process lost them
                del self.location[key]
        return server

    def _image_for(self, step: str, needs: Iterable[str]) -> str:
        cls = _ports(step)
        needs = [k for k in needs if k in self.location]
        order = [i for i in PREFERENCE.get(self.pipeline, PREFERENCE[None]) if i in cls.images] + \
                [i for i in cls.images if i not in PREFERENCE.get(self.pipeline, PREFERENCE[None])]

        def score(image: str) -> tuple:
            held = sum(self.location.get(k) == image for k in needs)
            return (-held, image not in self.servers, order.index(image))

        return min(order, key=score)

    def _bind_files(self, server: StepServer, image: str, inputs: dict, outputs: dict) -> StepServer:
        from daisy_steps.fileio import FileRef

        missing_ro = [FileRef.parse(v).path for v in inputs.values() if not server.bound(FileRef.parse(v).path)]
        missing_rw = [FileRef.parse(v).path for v in outputs.values()
                      if not server.bound(FileRef.parse(v).path, write=True)]
        if not missing_ro and not missing_rw:
            return server
        if missing_rw:
            raise StepError(f"cannot write {missing_rw[0]}: outputs go under the session's outdir "
                            f"({self.outdir or 'none given'})")
        held = [k for k, v in self.location.items() if v == image]
        if held:
            raise StepError(f"{missing_ro[0]} is outside the folders the {image} step process can read "
                            f"({', '.join(map(str, server.binds_ro)) or 'none'}), and it holds {', '.join(held)}: "
                            f"name the file in Session(data=[...]) when you start the session")
        self.folders.update(self._folder(p) for p in missing_ro)
        server.close()
        del self.servers[image]
        return self.server(image)

    # -- the calls ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> StepHandle:
        """The algorithm ``name``: an init_dict instance, a design default name
        (``normalize``, ``reconstruct``, ...) or a DAISY step name (``ct.recon``)."""
        from daisy_steps.registry import CLASSES

        cfg = {k: design.number(v) for k, v in (self.algorithm_cfg.get(name) or {}).items()}
        if name in self.algorithms:
            entry = self.algorithms[name]
            cls_name = entry.get("class_name")
            step = design.CLASSES.get(cls_name, cls_name)
            if step not in CLASSES:
                raise StepError(f"init_dict['{name}']: class_name {cls_name!r} is neither a design class "
                                f"({', '.join(design.CLASSES)}) nor a DAISY step")
            return StepHandle(self, name, step, entry.get("init_paras"), cfg)
        if name in design.DEFAULT_NAMES:
            return StepHandle(self, name, design.CLASSES[design.DEFAULT_NAMES[name]], None, cfg)
        if name in CLASSES:
            return StepHandle(self, name, name, None, cfg)
        raise KeyError(f"no algorithm {name!r}: not in init_dict ({', '.join(self.algorithms) or 'empty'}), "
                       f"not a design name ({', '.join(design.DEFAULT_NAMES)}), not a DAISY step")

    def algorithm_keys(self) -> list[str]:
        return list(self.algorithms) or list(design.DEFAULT_NAMES)

    def execute(self, step: str, params: dict | None = None, *, inputs: dict | None = None,
                outputs: dict | None = None, bind_in: dict | None = None, bind_out: dict | None = None,
                copy: bool = True, name: str | None = None, image: str | None = None) -> Call:
        """Run DAISY step ``step`` once on the session's data (the low-level form of
        ``session[name].execute(...)``). Ports are bound to store keys by ``bind_in``/``bind_out``."""
        started = time.perf_counter()
        cls = _ports(step)
        params = dict(params or {})
        bind_in, bind_out = dict(bind_in or {}), dict(bind_out or {})
        inputs = {k: str(self.data_file(v)) if ":/" not in str(v) else str(v) for k, v in (inputs or {}).items()}
        outputs = {k: str(v) for k, v in (outputs or {}).items()}
        from daisy_steps.ports import bind as bind_ports
        from daisy_steps.ports import _template_params

        requires = bind_ports(cls.requires, _template_params(step, cls, params))
        needs = [bind_in.get(port, port) for port in requires]
        image = image or self._image_for(step, needs)
        if image not in cls.images:
            raise StepError(f"step {step} cannot run in image '{image}'; it runs in {', '.join(cls.images)}")
        self.folders.update(self._folder(p.split(":/")[0]) for p in inputs.values())
        server = self.server(image)
        server = self._bind_files(server, image, inputs, outputs)
        for key in needs:                          # arrays another image's process holds: move them here
            holder = self.location.get(key)
            if holder is not None and holder != image:
                server.send(key, self.servers[holder].fetch(key))
                self.location[key] = image
        try:
            result = server.request("execute", step=step, params=params, inputs=inputs, outputs=outputs,
                                    bind_in=bind_in, bind_out=bind_out, copy=copy)
        except ServerError as exc:
            raise StepError(f"{name or step}: {exc}") from None
        for key in result["put"]:
            previous = self.location.get(key)
            if previous is not None and previous != image and previous in self.servers:
                self.servers[previous].request("delete", keys=[key])   # a stale copy
            self.location[key] = image
        call = Call(step=step, version=result["version"], image=image, params=result["params"],
                    results=result["results"], bind_in=bind_in, bind_out=bind_out, inputs=inputs, outputs=outputs,
                    put=result["put"], compute_seconds=result["compute_seconds"],
                    seconds=time.perf_counter() - started, name=name)
        self.history.append(call)
        return call

    # -- the data store -------------------------------------------------------------------------
    def _refresh(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for image, server in self.servers.items():
            if server.alive:
                for key, info in server.request("keys").items():
                    found[key] = {**info, "image": image}
                    self.location[key] = image
        return found

    def data_keys(self) -> list[str]:
        """The keys of the data store (the design's ``wf.data_keys()``), over every image."""
        return sorted(self._refresh())

    def describe(self) -> dict[str, dict]:
        """Every key with its type, shape, dtype, size and the image whose process holds it."""
        return dict(sorted(self._refresh().items()))

    def _holder(self, key: str) -> StepServer:
        if key not in self.location:
            self._refresh()
        if key not in self.location:
            raise KeyError(f"no {key!r} in the data store (it holds: {', '.join(self.data_keys()) or 'nothing'})")
        return self.servers[self.location[key]]

    def get(self, key: str, index=None) -> Any:
        """A copy of ``key`` on the host (an array through a .npy file; ``index`` selects part of
        it in the step process first: ``session.get('recodata', np.s_[64])``)."""
        return self._holder(key).fetch(key, _index_spec(index))

    def put(self, key: str, value: Any, image: str | None = None) -> None:
        """Put a host value (an array, a number, a tuple) into the store of ``image``."""
        image = image or PREFERENCE.get(self.pipeline, PREFERENCE[None])[0]
        self.server(image).send(key, value)
        self.location[key] = image

    def copy(self, src: str, dst: str, index=None) -> None:
        """``dst`` = a copy of ``src`` (or of part of it), in the process that holds ``src``."""
        server = self._holder(src)
        server.request("copy", src=src, dst=dst, index=_index_spec(index))
        self.location[dst] = self.location[src]

    def delete(self, *keys: str) -> None:
        for key in keys:
            image = self.location.pop(key, None)
            if image and image in self.servers:
                self.servers[image].request("delete", keys=[key])

    # -- sweeps and configs ---------------------------------------------------------------------
    def sweep(self, step: str, param: str, values, *, params: dict | None = None, bind_in: dict | None = None,
              take: str | None = None, rows=None, rows_port: str = "proj", show_index=None, metric=None,
              label: str | None = None):
        """Run ``step`` once per value of parameter ``param`` (the rest from ``params``), on
        ``rows`` of the array bound to ``rows_port`` (a few sinogram rows: ``slice(60, 62)``) when
        given; returns a :class:`~daisy.interactive.sweep.Sweep` of the results ``take`` (default:
        the step's first provide), each labelled with the value the step reports it used."""
        from .sweep import run_sweep

        return run_sweep(self, step, param, values, params=params or {}, bind_in=bind_in or {}, take=take,
                         rows=rows, rows_port=rows_port, show_index=show_index, metric=metric, label=label)

    def sweep_center(self, values=None, *, around: float | None = None, half_width: float = 4.0,
                     step: float = 0.5, rows=None, proj: str = "proj", theta: str = "theta",
                     params: dict | None = None, metric: str = "entropy"):
        """A centre sweep of ct.recon on a few sinogram rows (default: the middle two of ``proj``):
        ``values``, or ``around`` ± ``half_width`` in ``step`` (default around: the centre
        ct.find_center found last, else the detector's middle). The best by ``metric`` is
        ``sweep.best``; ``sweep.choose()`` writes it into the session's config."""
        if values is None:
            if around is None:
                found = [c.results.get("center") for c in self.history if c.step == "ct.find_center"]
                if found and found[-1] is not None:
                    around = float(found[-1])
                else:
                    shape = self.describe()[proj]["shape"]
                    around = shape[2] / 2.0
            values = np.round(np.arange(around - half_width, around + half_width + step / 2, step), 3)
        if rows is None:
            shape = self.describe()[proj]["shape"]
            mid = shape[1] // 2
            rows = slice(max(0, mid - 1), mid + 1)
        return self.sweep("ct.recon", "center", [float(v) for v in values], params=params,
                          bind_in={"proj": proj, "theta": theta}, take="recon", rows=rows, rows_port="proj",
                          show_index=0, metric=metric, label="centre")

    def last(self, step: str) -> Call | None:
        """The last call of ``step``."""
        return next((c for c in reversed(self.history) if c.step == step), None)

    def to_config(self, pipeline: str | None = None, input_file=None, outdir=None, **extra) -> dict[str, Any]:
        """A pipeline config of what was tried last: each step's parameters from its last call,
        values picked in sweeps (``Sweep.choose``) on top; validate and run it with
        :func:`daisy.pipeline`. ``input_file``: the raw file (default: the one the session read)."""
        from .configs import session_config

        return session_config(self, pipeline or self.pipeline, input_file, outdir, extra)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every step process (their data goes with them) and remove the scratch folder."""
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        self.location.clear()
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            for server in self.servers.values():
                if server.alive:
                    server.proc.kill()
            if self._own_scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass

    def overheads(self) -> dict[str, float]:
        """Median and max per-call overhead (wall minus the step's compute) of this session."""
        values = sorted(c.overhead_seconds for c in self.history)
        if not values:
            return {}
        return {"calls": len(values), "median_s": values[len(values) // 2], "max_s": values[-1]}

    def __repr__(self) -> str:
        procs = ", ".join(f"{i} (pid {s.proc.pid})" for i, s in self.servers.items()) or "no step process yet"
        return f"<daisy Session: {len(self.history)} calls; {procs}; keys {', '.join(sorted(self.location)) or '-'}>"


def _index_spec(index) -> list | None:
    """``np.s_[3, 0:10]`` -> ``[3, [0, 10, None]]`` (the step process's index format)."""
    if index is None:
        return None
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for item in index:
        if isinstance(item, slice):
            out.append([item.start, item.stop, item.step])
        elif item is None or item is Ellipsis:
            raise ValueError("index: use ints and slices only")
        else:
            out.append(int(item))
    return out
