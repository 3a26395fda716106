"""The run's RO-Crate (``<outdir>/ro-crate-metadata.json``): a Provenance Run Crate 0.5 rendered
from the provenance document (:mod:`daisy.provenance`; nothing is collected twice).

Shape (https://w3id.org/ro/wfrun/provenance/0.5, which includes the Process and Workflow Run
Crate profiles and Workflow RO-Crate 1.0; RO-Crate 1.1 plus the workflow-run terms context):

- the **workflow** (root ``mainEntity``): the Snakefile, a ``ComputationalWorkflow`` and
  ``HowTo``, with ``hasPart`` its rule files and one **tool** per stage (a Snakemake rule: a
  ``SoftwareApplication`` whose ``hasPart`` is its chain of steps, each with its version), ``step``
  one ``HowToStep`` per stage, and ``softwareRequirements`` the step code at its pin (sha256);
- one ``CreateAction`` per **job**, ``instrument`` its stage's tool (a job is one run of a rule;
  its steps pass arrays in memory and have no inputs or outputs of their own, so the stage, not
  each step, is the tool the profile means), ``containerImage`` the SIF image (name, tag,
  ``sha256`` digest of the lock), ``object`` the input files and one ``PropertyValue`` per step
  parameter (``exampleOfWork`` its ``FormalParameter``), ``result`` the output files,
  ``startTime``/``endTime``, ``actionStatus`` (and ``error`` when it failed);
- one ``ControlAction`` per job (``instrument`` the stage's ``HowToStep``, ``object`` the job's
  action) and the engine run, an ``OrganizeAction`` (``instrument`` Snakemake, ``object`` the
  ControlActions, ``result`` the workflow run: a ``CreateAction`` of the workflow);
- every ``File`` with ``contentSize`` and ``sha256``: under the outdir by a path relative to it,
  elsewhere (raw data, the workflow source) by its absolute ``file://`` IRI; ``provenance.json``
  is in the crate too.

A failed run's crate has every planned job: ``FailedActionStatus`` and ``error`` for the failed
one, ``PotentialActionStatus`` (planned, never started) for those the run stopped before.

:mod:`daisy.crate_validate` checks a crate with roc-validator without network.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

CRATE_NAME = "ro-crate-metadata.json"
RO_CRATE_VERSION = "1.1"
WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
PROFILES = (
    ("https://w3id.org/ro/wfrun/process/0.5", "Process Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/workflow/0.5", "Workflow Run Crate", "0.5"),
    ("https://w3id.org/ro/wfrun/provenance/0.5", "Provenance Run Crate", "0.5"),
    ("https://w3id.org/workflowhub/workflow-ro-crate/1.0", "Workflow RO-Crate", "1.0"),
)
#: actionStatus values, as the profile's examples and roc-validator's shapes write them (IRI strings)
STATUS = {"completed": "http://schema.org/CompletedActionStatus", "failed": "http://schema.org/FailedActionStatus",
          "not run": "http://schema.org/PotentialActionStatus"}
DATA = Path(__file__).resolve().parent / "crate_data"
#: remote JSON-LD documents the validator fetches -> the copies shipped in ``daisy/crate_data``
CONTEXTS = {
    "https://w3id.org/ro/crate/1.1/context": "ro-crate-1.1-context.jsonld",
    WFRUN_CONTEXT: "workflow-run-context.json",
}
VALIDATOR_PROFILE = "provenance-run-crate-0.5"
ENCODINGS = {".h5": "application/x-hdf5", ".json": "application/json", ".png": "image/png", ".tif": "image/tiff",
             ".tiff": "image/tiff", ".yaml": "application/yaml", ".xy": "text/plain", ".smk": "text/plain",
             ".log": "text/plain"}


def _type_of(value: Any, schema_type: Any = None) -> str:
    """The FormalParameter ``additionalType`` of a parameter value (or of its schema type)."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "Float"
    if isinstance(value, str):
        return "Text"
    if value is None:
        kinds = [schema_type] if isinstance(schema_type, str) else list(schema_type or [])
        for kind in kinds:
            mapped = {"boolean": "Boolean", "integer": "Integer", "number": "Float", "string": "Text"}.get(kind)
            if mapped:
                return mapped
    return "Text"                                       # objects and lists: their JSON text


def _value(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _schema_properties(step: str) -> dict[str, Any]:
    try:
        from daisy_steps.params import load_schema

        return load_schema(f"steps/{step}").get("properties", {})
    except Exception:  # noqa: BLE001 (descriptions are a nicety)
        return {}


class _Renderer:
    def __init__(self, document: dict[str, Any], outdir: Path, provenance_file: Path | None) -> None:
        from rocrate.rocrate import ROCrate

        self.doc = document
        self.workdir = document.get("workdir") or os.getcwd()
        self.outdir = Path(os.path.normpath(os.path.join(self.workdir, outdir)))
        self.provenance_file = provenance_file
        self.crate = ROCrate(version=RO_CRATE_VERSION)
        self.crate.metadata.extra_contexts.append(WFRUN_CONTEXT)
        self.files: dict[str, Any] = {}
        self.actions: list[Any] = []
        self.seed = f"{self.outdir}|{document.get('created')}"

    # -- helpers -------------------------------------------------------------------------------
    def uid(self, what: str) -> str:
        return f"#{uuid.uuid5(uuid.NAMESPACE_URL, f'daisy:{self.seed}|{what}')}"

    def entity(self, identifier: str, properties: dict[str, Any]):
        from rocrate.model.contextentity import ContextEntity

        found = self.crate.get(identifier)
        if found is not None:
            return found
        return self.crate.add(ContextEntity(self.crate, identifier, properties=properties))

    def absolute(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.workdir, path))

    def exists(self, path: str) -> bool:
        """Whether ``path`` is there now (a failed run's crate names only files that exist)."""
        return os.path.isfile(self.absolute(path))

    def file_id(self, path: str) -> str:
        absolute = Path(self.absolute(path))
        if absolute.is_relative_to(self.outdir):
            return absolute.relative_to(self.outdir).as_posix()
        return "file://" + quote(absolute.as_posix())

    def info(self, path: str, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
        for table in (self.doc.get("outputs", {}), self.doc.get("inputs", {})):
            if path in table and table[path].get("sha256"):
                return table[path]
        return fallback or {}

    def file(self, path: str, info: dict[str, Any] | None = None, parameter=None, **extra):
        """The File entity of ``path`` (one per file), linked to ``parameter`` (exampleOfWork)."""
        identifier = self.file_id(path)
        entity = self.files.get(identifier)
        if entity is None:
            info = self.info(path, info)
            props: dict[str, Any] = {"name": Path(path).name, **extra}
            if info.get("size") is not None:
                props["contentSize"] = str(info["size"])
            if info.get("sha256"):
                props["sha256"] = info["sha256"]
            encoding = ENCODINGS.get(Path(path).suffix.lower())
            if encoding:
                props["encodingFormat"] = encoding
            entity = self.crate.add_file(source=identifier if "://" in identifier else None,
                                         dest_path=None if "://" in identifier else identifier, properties=props)
            self.files[identifier] = entity
        if parameter is not None:
            linked = [e.id for e in _as_list(entity.get("exampleOfWork"))]
            if parameter.id not in linked:
                entity.append_to("exampleOfWork", parameter)
        return entity

    def parameter(self, identifier: str, name: str, kind: str, **extra):
        entity = self.crate.get(identifier)
        if entity is None:
            entity = self.crate.add_formal_parameter(name=name, additionalType=kind, identifier=identifier,
                                                     properties=extra)
        return entity

    # -- the parts -----------------------------------------------------------------------------
    def root(self) -> None:
        doc = self.doc
        root = self.crate.root_dataset
        status = doc.get("status", "completed")
        root["name"] = f"DAISY {doc.get('pipeline')} run {self.outdir.name} ({status})"
        root["description"] = (f"Outputs and provenance of a DAISY {doc.get('pipeline')} pipeline run "
                               f"({status}{': ' + doc['error'] if doc.get('error') else ''}); "
                               f"provenance.json is DAISY's machine-readable record of the same run.")
        root["datePublished"] = doc.get("created")
        root["license"] = self.entity("#license", {
            "@type": "CreativeWork", "name": "No license stated",
            "description": "DAISY records no license for the data of a run: state one before publishing "
                           "this crate (DAISY's own code is BSD-3-Clause)."})
        root["conformsTo"] = [self.entity(uri, {"@type": "CreativeWork", "name": name, "version": version})
                              for uri, name, version in PROFILES]

    def workflow(self):
        doc = self.doc
        repo = Path(doc.get("repository") or ".")
        wf_files = doc.get("workflow_files", {})
        snakefile = wf_files.get("Snakefile", {})
        workflow = self.crate.add_workflow(
            source="file://" + quote((repo / "Snakefile").as_posix()), main=True, lang="snakemake",
            lang_version=doc.get("software", {}).get("snakemake"),
            properties={"@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
                        "name": f"DAISY {doc.get('pipeline')} workflow (Snakemake)", "encodingFormat": "text/plain",
                        "conformsTo": {"@id": "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"},
                        "version": doc.get("software", {}).get("daisy"),
                        **({"sha256": snakefile["sha256"], "contentSize": str(snakefile["size"])} if snakefile else {})})
        for rel in sorted(r for r in wf_files if r.startswith("rules/")):
            part = self.crate.add_file(source="file://" + quote((repo / rel).as_posix()), properties={
                "name": rel, "sha256": wf_files[rel]["sha256"], "contentSize": str(wf_files[rel]["size"]),
                "encodingFormat": "text/plain", "description": "Snakemake rules of the DAISY workflow"})
            part["isPartOf"] = workflow     # the workflow's hasPart is for its tools only (the profile)
        code = self.entity("#daisy-steps", {
            "@type": "SoftwareSourceCode", "name": "DAISY step code (daisy_steps/ and schemas/)",
            "identifier": f"sha256:{doc.get('code_sha256')}", "version": doc.get("software", {}).get("daisy"),
            "description": "The step-code pin: sha256 over the step code and parameter schemas bound into "
                           "every job's image; each job checks it before it runs."})
        workflow["softwareRequirements"] = code
        return workflow

    def tool(self, workflow, stage: str, info: dict[str, Any], records: list[dict[str, Any]], position: int):
        tool = self.entity(f"#tool/{stage}", {
            "@type": "SoftwareApplication", "name": stage, "softwareVersion": self.doc.get("software", {}).get("daisy"),
            "description": f"Snakemake rule {stage}: {info.get('doc') or 'a DAISY stage'}; runs the steps "
                           f"{', '.join(info.get('steps', []))} in image {info.get('image')}, in one process"})
        workflow.append_to("hasPart", tool)
        versions = {s["step"]: s.get("version") for r in records for s in r.get("steps", [])}
        for name in info.get("steps", []):
            part = self.entity(f"#code/{name}", {"@type": "SoftwareApplication", "name": name,
                                                 **({"softwareVersion": versions[name]} if versions.get(name) else {}),
                                                 "isPartOf": {"@id": "#daisy-steps"}})
            tool.append_to("hasPart", part)
        howto = self.entity(f"#howto/{stage}", {"@type": "HowToStep", "name": stage, "position": str(position),
                                                "workExample": {"@id": tool.id}})
        workflow.append_to("step", howto)
        return tool, howto

    def step_parameters(self, tool, stage: str, step: dict[str, Any]) -> list[tuple[Any, Any]]:
        """FormalParameters of one step's parameters (declared on ``tool``) and their values."""
        name = step["step"]
        schema = _schema_properties(name)
        out = []
        for key, value in sorted(step.get("params", {}).items()):
            prop = schema.get(key, {}) if isinstance(schema.get(key), dict) else {}
            extra = {"description": prop["description"]} if prop.get("description") else {}
            formal = self.parameter(f"#{stage}/{name}/param/{key}", f"{name}.{key}",
                                    _type_of(value, prop.get("type")), **extra)
            if formal.id not in [e.id for e in _as_list(tool.get("input"))]:
                tool.append_to("input", formal)
            digest = hashlib.sha1(f"{formal.id}|{json.dumps(value, sort_keys=True)}".encode()).hexdigest()[:16]
            props = {"@type": "PropertyValue", "name": f"{name}.{key}", "exampleOfWork": {"@id": formal.id}}
            if value is not None:
                props["value"] = _value(value)
            out.append(self.entity(f"#pv-{digest}", props))
        return out

    def slot(self, tool, stage: str, step: str, direction: str, slot: str):
        formal = self.parameter(f"#{stage}/{step}/{direction}/{slot}", f"{step}.{slot}", "File",
                                description=f"{'input' if direction == 'in' else 'output'} slot '{slot}' of step {step}")
        prop = "input" if direction == "in" else "output"
        if formal.id not in [e.id for e in _as_list(tool.get(prop))]:
            tool.append_to(prop, formal)
        return formal

    def image(self, name: str | None):
        if not name:
            return None
        info = self.doc.get("images", {}).get(name) or {}
        props = {"@type": "ContainerImage", "additionalType": {"@id": f"{WFRUN}SIFImage"}, "name": name,
                 "description": "Apptainer SIF image, verified against this sha256 before any job ran"}
        if info.get("version"):
            props["tag"] = props["version"] = str(info["version"])
        if info.get("image_sha256"):
            props["sha256"] = info["image_sha256"]
        if info.get("file"):
            props["identifier"] = info["file"]
        if info.get("size_bytes"):
            props["contentSize"] = str(info["size_bytes"])
        return self.entity(f"#image/{name}", props)

    def job(self, name: str, record: dict[str, Any], tool, stage: str):
        from daisy_steps.fileio import FileRef

        status = record.get("status", "completed")
        slots_in: dict[str, Any] = {}
        slots_out: list[tuple[str, Any]] = []
        values = []
        for step in record.get("steps", []):
            values += self.step_parameters(tool, stage, step)
            for slot, ref in step.get("inputs", {}).items():
                slots_in.setdefault(str(FileRef.parse(ref).path), self.slot(tool, stage, step["step"], "in", slot))
            for slot, ref in step.get("outputs", {}).items():
                slots_out.append((str(FileRef.parse(ref).path), self.slot(tool, stage, step["step"], "out", slot)))
        objects = [self.file(path, info, slots_in.get(path)) for path, info in sorted(record.get("inputs", {}).items())
                   if self.exists(path)]
        results = []
        if status == "completed":
            for path, info in sorted(p for p in record.get("outputs", {}).items() if self.exists(p[0])):
                formal = next((f for p, f in slots_out if path == p or path.startswith(p.rstrip("/") + "/")), None)
                results.append(self.file(path, info, formal))
        image = record.get("image") if isinstance(record.get("image"), dict) else {"name": record.get("image")}
        props: dict[str, Any] = {
            "@type": "CreateAction", "name": f"job {name} (rule {stage})", "identifier": name,
            "actionStatus": STATUS.get(status, STATUS["failed"]),
            "description": f"one run of rule {stage} ({len(record.get('steps', []))} steps in one process)"
                           + (f"; failed in step {record['failed_step']}" if record.get("failed_step") else ""),
        }
        if status == "not run":
            props["description"] = f"a job of rule {stage} that was planned but never ran: the run stopped before it"
        if record.get("started"):
            props["startTime"] = record["started"]
        if record.get("ended"):
            props["endTime"] = record["ended"]
        if status == "failed":
            props["error"] = record.get("error") or "failed"
        slurm = record.get("slurm") if isinstance(record.get("slurm"), dict) else {}
        if slurm.get("job_id"):        # ran as a Slurm job (daisy_steps.slurm_record.add)
            props["description"] += (f"; Slurm job {slurm['job_id']} on node {slurm.get('node') or '?'}, "
                                     f"partition {slurm.get('partition') or '?'}")
            usage = {"slurm_job_id": slurm["job_id"], "slurm_node": slurm.get("node"),
                     "slurm_partition": slurm.get("partition"), "slurm_array_job_id": slurm.get("array_job_id"),
                     **{f"requested_{k}": v for k, v in (slurm.get("requested") or {}).items()},
                     **{f"used_{k}": v for k, v in (slurm.get("used") or {}).items()}}
            props["resourceUsage"] = [{"@id": self.entity(self.uid(f"usage/{name}/{key}"), {
                "@type": "PropertyValue", "name": key, "propertyID": f"daisy:slurm.{key}", "value": value}).id}
                for key, value in usage.items() if value is not None]
        action = self.crate.add_action(tool, identifier=self.uid(f"job/{name}"), object=objects + values,
                                       result=results or None, properties=props)
        container = self.image(image.get("name"))
        if container is not None:
            action["containerImage"] = container
        return action

    def render(self) -> dict[str, Any]:
        doc = self.doc
        self.root()
        workflow = self.workflow()
        plan = doc.get("plan", {})
        records = dict(doc.get("jobs", {}))
        for name in doc.get("jobs_not_run", []):     # planned, never ran: the run stopped before them
            records.setdefault(name, {"status": "not run", "steps": [],
                                      "image": {"name": plan.get("jobs", {}).get(name, {}).get("image")}})
        by_stage: dict[str, list[str]] = {}
        for name in [*plan.get("jobs", {}), *records]:
            if name in records:
                stage = plan.get("jobs", {}).get(name, {}).get("stage") or name.rsplit("_", 1)[0]
                if name not in by_stage.get(stage, []):
                    by_stage.setdefault(stage, []).append(name)
        order = list(plan.get("stages", {})) + [s for s in by_stage if s not in plan.get("stages", {})]
        controls = []
        for position, stage in enumerate((s for s in order if s in by_stage), start=1):
            info = plan.get("stages", {}).get(stage) or {"steps": [], "image": None}
            tool, howto = self.tool(workflow, stage, info, [records[n] for n in by_stage[stage]], position)
            for name in by_stage[stage]:
                action = self.job(name, records[name], tool, stage)
                self.actions.append(action)
                control = self.entity(f"#control/{name}", {
                    "@type": "ControlAction", "name": f"orchestrate job {name}",
                    "instrument": {"@id": howto.id}, "object": {"@id": action.id},
                    "actionStatus": action["actionStatus"]})
                controls.append(control)
        self.run(workflow, controls)
        return _single_values(self.crate.metadata.generate())

    def run(self, workflow, controls) -> None:
        doc = self.doc
        status = doc.get("status", "completed")
        config = self.outdir / "config.resolved.yaml"
        param_config = self.parameter("#param/config", "config", "File",
                                      description="the resolved config (every default filled in)")
        param_inputs = self.parameter("#param/inputs", "inputs", "File", description="the raw data files read")
        param_outputs = self.parameter("#param/outputs", "outputs", "File", description="the files the run wrote")
        workflow["input"] = [param_config, param_inputs]
        workflow["output"] = [param_outputs]
        objects = []
        if config.is_file():
            from daisy.hashing import sha256_file

            objects.append(self.file(str(config), {"size": config.stat().st_size, "sha256": sha256_file(config)},
                                     param_config))
        objects += [self.file(path, info, param_inputs) for path, info in sorted(doc.get("inputs", {}).items())]
        results = [self.file(path, info, param_outputs) for path, info in sorted(doc.get("outputs", {}).items())]
        props: dict[str, Any] = {"@type": "CreateAction", "name": f"DAISY {doc.get('pipeline')} run ({status})",
                                 "actionStatus": STATUS[status],
                                 "description": "the workflow run: config and raw data in, results out"}
        if doc.get("started"):
            props["startTime"] = doc["started"]
        if doc.get("ended"):
            props["endTime"] = doc["ended"]
        if doc.get("error"):
            props["error"] = doc["error"]
        run = self.crate.add_action(workflow, identifier=self.uid("run"), object=objects or None,
                                    result=results or None, properties=props)
        if doc.get("engine") == "daisy watch":  # online mode: DAISY's watcher ran the job
            engine = self.entity("#daisy-watch", {"@type": "SoftwareApplication", "name": "daisy watch",
                                                  "softwareVersion": doc.get("software", {}).get("daisy")})
        else:
            engine = self.entity("#snakemake", {"@type": "SoftwareApplication", "name": "Snakemake",
                                                "url": {"@id": "https://snakemake.github.io"},
                                                "softwareVersion": doc.get("software", {}).get("snakemake")})
        organize = {"@type": "OrganizeAction", "name": f"{engine['name']} run of the DAISY workflow",
                    "instrument": {"@id": engine.id}, "result": {"@id": run.id},
                    "object": [{"@id": c.id} for c in controls], "actionStatus": STATUS[status]}
        for key in ("startTime", "endTime", "error"):
            if key in props:
                organize[key] = props[key]
        self.entity(self.uid("engine"), organize)
        self.crate.root_dataset["mentions"] = [run, *self.actions]
        if self.provenance_file is not None and Path(self.provenance_file).is_file():
            from daisy.hashing import sha256_file

            path = Path(self.provenance_file)
            self.file(os.path.abspath(path), {"size": path.stat().st_size, "sha256": sha256_file(path)},
                      about={"@id": run.id},
                      description=f"DAISY's machine-readable provenance record of this run "
                                  f"(provenance_version {doc.get('provenance_version')})")


def _single_values(document: dict[str, Any]) -> dict[str, Any]:
    """Singleton arrays as single values (RO-Crate 1.1's JSON-LD recommendation)."""
    for entity in document["@graph"]:
        for key, value in entity.items():
            if isinstance(value, list) and len(value) == 1:
                entity[key] = value[0]
    return document


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def render(document: dict[str, Any], outdir: str | os.PathLike, provenance_file: str | os.PathLike | None = None
           ) -> dict[str, Any]:
    """The crate's JSON-LD (``ro-crate-metadata.json``) of a provenance document whose run wrote
    into ``outdir``."""
    return _Renderer(document, Path(outdir), Path(provenance_file) if provenance_file else None).render()


def write(document: dict[str, Any], outdir: str | os.PathLike, provenance_file: str | os.PathLike | None = None
          ) -> Path:
    """Render the crate and write ``<outdir>/ro-crate-metadata.json`` atomically."""
    from daisy_steps.fileio import write_json_atomic

    path = Path(outdir) / CRATE_NAME
    write_json_atomic(path, render(document, outdir, provenance_file))
    return path
