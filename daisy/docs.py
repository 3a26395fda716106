"""Generated documentation, between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers:

* README.md: the config reference (fields, types, defaults, from the schemas);
* docs/import-config.md: the import-config mapping table;
* docs/ct-steps.md, docs/xrd-steps.md: each step's images, data-store ports and parameters;
* docs/steps.md: one section per step: code location, images, ports, schema, parameters, the
  pipeline stages that run it and the tests that name it (:func:`step_story`, ``daisy steps NAME``).

``python -m daisy.docs`` rewrites the blocks; ``python -m daisy.docs --check`` exits 1 when one
is stale (tests run it).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import sys
from pathlib import Path

from daisy_steps.params import load_schema
from daisy_steps.ports import KINDS, template_field

from .importer import mapping_rows

REPO = Path(__file__).resolve().parents[1]


def _resolve(schema: dict) -> dict:
    if "$ref" in schema:
        ref = schema["$ref"]
        base, _, pointer = ref.partition("#")
        target = load_schema(base.removeprefix("urn:daisy:"))
        for part in filter(None, pointer.split("/")):
            target = target[part]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _resolve(merged) if "$ref" in target else merged
    return schema


def _type(schema: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "object" if "properties" in schema else "")
    return " \\| ".join(kind) if isinstance(kind, list) else kind


def rows(schema: dict, prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    for name, sub in schema.get("properties", {}).items():
        sub = _resolve(sub)
        field = f"{prefix}{name}"
        default = "*required*" if name in schema.get("required", []) else (
            json.dumps(sub["default"]) if "default" in sub and sub["default"] != {} else "")
        description = " ".join(sub.get("description", "").split())
        if "properties" in sub:
            out.append((field, "object", default, description))
            out += rows(sub, field + ".")
        else:
            out.append((field, _type(sub), default, description))
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")


def field_table(schema: dict) -> list[str]:
    """Markdown table of a schema's fields: field, type, default, meaning."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field, kind, default, description in rows(schema):
        lines.append(f"| `{field}` | {kind} | {f'`{default}`' if default and not default.startswith('*') else default} "
                     f"| {description.replace('|', '/')} |")
    return lines


def config_reference() -> str:
    parts = []
    for pipeline in ("ct", "xrd"):
        schema = load_schema(pipeline)
        parts.append(f"#### `{pipeline}` (`schemas/{pipeline}.schema.json`)\n")
        parts += field_table(schema)
        parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# steps: images, ports, parameters, stages, tests
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _steps() -> dict[str, type]:
    """Every step class by name, in chain order: the stages' steps as they run, then the rest
    (sample data) by name."""
    from daisy_steps.registry import CLASSES

    order = [name for stage in _stages() for name in stage.steps]
    order += sorted(CLASSES)
    return {name: CLASSES[name] for name in dict.fromkeys(order) if name in CLASSES}


def _family(cls) -> str:
    """``ct`` or ``xrd`` for the steps of daisy_steps.ct / daisy_steps.xrd, else ``generic``."""
    parts = cls.__module__.split(".")
    return parts[1] if len(parts) > 2 else "generic"


def _location(cls) -> str:
    path = Path(inspect.getsourcefile(cls)).resolve().relative_to(REPO)
    return f"{path.as_posix()}:{inspect.getsourcelines(cls)[1]}"


def _summary(cls) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return _cell(doc.split("\n\n")[0])


def _key(name: str, key: str) -> str:
    field = template_field(key)
    if not field:
        return f"`{key}`"
    default = load_schema(f"steps/{name}")["properties"][field].get("default")
    return f"`{key}` (parameter `{field}`, default `{default}`)"


def ports_table(cls) -> list[str]:
    """Markdown table of a step's data-store ports; a line saying it has none."""
    entries = [("requires", k, p) for k, p in cls.requires.items()]
    entries += [("provides", k, p) for k, p in cls.provides.items()]
    if not entries:
        return ["Data store: none (files only)."]
    lines = ["| key | port | kind | | meaning |", "|---|---|---|---|---|"]
    for direction, key, port in entries:
        lines.append(f"| {_key(cls.name, key)} | {direction} | {port.kind} | "
                     f"{'optional' if port.optional else 'required'} | {_cell(port.doc)} |")
    if cls.consumes:
        lines += ["", "Consumes (removes from the store): " + ", ".join(_key(cls.name, k) for k in cls.consumes) + "."]
    return lines


def _images(cls) -> str:
    return ", ".join(f"`{i}`" for i in cls.images)


def _schema_path(name: str) -> str:
    return f"schemas/steps/{name}.schema.json"


@functools.lru_cache(maxsize=None)
def _stages() -> tuple:
    from daisy.plan import all_stages

    return tuple(all_stages())


def stages_of(name: str) -> list:
    return [stage for stage in _stages() if name in stage.steps]


@functools.lru_cache(maxsize=None)
def _test_mentions() -> dict[str, dict[str, list[str]]]:
    """step name -> test file -> the top-level functions, classes or constants whose source
    names the step in quotes."""
    names = list(_steps())
    found: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    for path in sorted((REPO / "tests").glob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        spans = []
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                label = node.name
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                label = ", ".join(t.id for t in targets if isinstance(t, ast.Name)) or None
            else:
                label = None
            if label:
                start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                spans.append((label, "\n".join(lines[start - 1:node.end_lineno])))
        rel = path.relative_to(REPO).as_posix()
        for name in names:
            quoted = (f'"{name}"', f"'{name}'")
            hits = [label for label, body in spans if any(q in body for q in quoted)]
            if hits:
                found[name][rel] = list(dict.fromkeys(hits))
    return found


def _section_body(cls, full: bool) -> list[str]:
    name = cls.name
    lines = []
    if full:
        summary = _summary(cls)
        if summary:
            lines += [summary, ""]
        lines.append(f"- **Code**: `{_location(cls)}` (`{cls.__qualname__}`, version {cls.version})")
    lines.append(f"- **Images**: {_images(cls)} (libraries: {', '.join(cls.libraries)})")
    if full:
        lines.append(f"- **Schema**: `{_schema_path(name)}`")
        stages = stages_of(name)
        if stages:
            lines.append("- **Stages**: " + "; ".join(
                f"`{st.name}` ({st.pipeline} pipeline, `{st.image}` image: "
                + " → ".join(f"**{s}**" if s == name else s for s in st.steps) + ")" for st in stages))
        else:
            lines.append("- **Stages**: none (run it in a job file of your own)")
        mentions = _test_mentions()[name]
        if mentions:
            lines.append("- **Tests**: " + "; ".join(
                f"`{path}`: " + ", ".join(f"`{label}`" for label in labels) for path, labels in mentions.items()))
        else:
            lines.append("- **Tests**: none name it")
    lines += ["", *ports_table(cls), ""]
    schema = load_schema(f"steps/{name}")
    if schema.get("properties"):
        lines += [f"Parameters (`{_schema_path(name)}`):", "", *field_table(schema)]
    else:
        lines.append(f"Parameters: none (`{_schema_path(name)}`).")
    return lines


def step_story(name: str) -> str:
    """The markdown section of one step in docs/steps.md (what ``daisy steps NAME`` prints)."""
    cls = _steps()[name]
    return "\n".join([f"## `{name}`", "", *_section_body(cls, full=True)]) + "\n"


def steps_reference() -> str:
    """docs/steps.md's block: an index of every step, then one section per step."""
    classes = _steps()
    lines = ["| step | images | requires | provides | stages |", "|---|---|---|---|---|"]
    for name, cls in classes.items():
        req = ", ".join(f"`{k}`" + ("?" if p.optional else "") for k, p in cls.requires.items()) or "–"
        prov = ", ".join(f"`{k}`" + ("?" if p.optional else "") for k, p in cls.provides.items()) or "–"
        stages = ", ".join(f"`{st.name}`" for st in stages_of(name)) or "–"
        lines.append(f"| `{name}` | {', '.join(cls.images)} | {req} | {prov} | {stages} |")
    lines += ["", "`?`: optional. Port kinds: " + "; ".join(f"`{k}` {v}" for k, v in KINDS.items()) + ".", ""]
    for name in classes:
        lines.append(step_story(name))
    return "\n".join(lines).rstrip("\n")


def family_reference(family: str) -> str:
    """The block of docs/<family>-steps.md: each of the family's steps' images, ports, parameters."""
    lines = []
    for name, cls in _steps().items():
        if _family(cls) == family:
            lines += [f"### `{name}`", "", *_section_body(cls, full=False), ""]
    return "\n".join(lines).rstrip("\n")


def import_table() -> str:
    lines = ["| class_name | section | key | DAISY config field |", "|---|---|---|---|"]
    for cls, section, key, target in mapping_rows():
        shown = {"@input": "input file (role by name: *_master.h5 = scan master)", "@dataset": "input.dataset",
                 "@center": "center.method = manual, center.center", "@ignored": "(ignored: one result file per scan)"}
        lines.append(f"| {cls} | {section} | `{key}` | {shown.get(target, f'`{target}`')} |")
    return "\n".join(lines)


BLOCKS = {
    REPO / "README.md": {"config-reference": config_reference},
    REPO / "docs" / "import-config.md": {"import-table": import_table},
    REPO / "docs" / "ct-steps.md": {"step-reference": lambda: family_reference("ct")},
    REPO / "docs" / "xrd-steps.md": {"step-reference": lambda: family_reference("xrd")},
    REPO / "docs" / "steps.md": {"steps": steps_reference},
}

#: what a generated file starts from when it does not exist yet
SKELETONS = {
    REPO / "docs" / "steps.md": """# Steps

One section per step, generated by `python -m daisy.docs` from the step classes
(`daisy_steps/`: images, data-store ports), their parameter schemas (`schemas/steps/`), the
pipelines' stages (`daisy/plan.py`, `daisy/pipelines/`) and the tests that name the step.
`daisy steps NAME` prints one section. The contract the steps follow: `docs/step-contract.md`;
the CT and XRD steps in context: `docs/ct-steps.md`, `docs/xrd-steps.md`.

<!-- steps:start -->
<!-- steps:end -->
""",
}


def render(path: Path) -> str:
    text = path.read_text() if path.exists() or path not in SKELETONS else SKELETONS[path]
    for name, make in BLOCKS[path].items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path}: marker <!-- {name}:start --> ... <!-- {name}:end --> missing")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def stale() -> list[Path]:
    """The generated files whose blocks differ from what the sources give."""
    return [path for path in BLOCKS if not path.exists() or path.read_text() != render(path)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--check"]):
        print("usage: python -m daisy.docs [--check]", file=sys.stderr)
        return 2
    if argv == ["--check"]:
        out = stale()
        for path in out:
            print(f"{path.relative_to(REPO)} is stale: run python -m daisy.docs", file=sys.stderr)
        return 1 if out else 0
    for path in BLOCKS:
        text = render(path)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"updated {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
