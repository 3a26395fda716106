"""Generated documentation: config fields with types and defaults (from the schemas), and the
import-config mapping table. ``python -m daisy.docs`` rewrites the marked blocks in README.md
and docs/import-config.md; a test checks they are up to date."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from daisy_steps.params import load_schema

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


def config_reference() -> str:
    parts = []
    for pipeline in ("ct", "xrd"):
        schema = load_schema(pipeline)
        parts.append(f"#### `{pipeline}` (`schemas/{pipeline}.schema.json`)\n")
        parts.append("| field | type | default | meaning |\n|---|---|---|---|")
        for field, kind, default, description in rows(schema):
            parts.append(f"| `{field}` | {kind} | {f'`{default}`' if default and not default.startswith('*') else default} "
                         f"| {description.replace('|', '/')} |")
        parts.append("")
    return "\n".join(parts)


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
}


def render(path: Path) -> str:
    text = path.read_text()
    for name, make in BLOCKS[path].items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path}: marker <!-- {name}:start --> ... <!-- {name}:end --> missing")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    for path in BLOCKS:
        text = render(path)
        if path.read_text() != text:
            path.write_text(text)
            print(f"updated {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
