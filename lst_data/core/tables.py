"""Arrow schemas of every persisted table, derived from the JSON Schemas in `schemas/`.

Stages never reach into each other's code: they meet only through these tables. Each
Arrow schema is made from its JSON Schema (`arrow_schema`), so a column cannot be added
to one and forgotten in the other. The mapping:

- string -> string, number -> float64, boolean -> bool, integer -> int64 unless the
  property says `"x-arrow": "int32"` (or int16, ...): the width is part of the on-disk bytes;
- array -> list of its items, object -> struct of its properties, in declared order;
- a top-level column is non-null when it is required and its type does not allow null,
  unless it says `"x-arrow-nullable": true` (columns pyarrow's group_by writes as nullable);
  fields nested in lists and structs are nullable, as Arrow makes them by default.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from lst_data.format.schema import load_schema

_SCALARS = {"string": pa.string(), "number": pa.float64(), "boolean": pa.bool_()}


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    return _resolve({**target, **{k: v for k, v in node.items() if k != "$ref"}}, root)


def _json_types(node: dict[str, Any]) -> list[str]:
    declared = node.get("type", [])
    return [declared] if isinstance(declared, str) else list(declared)


def _arrow_type(node: dict[str, Any], root: dict[str, Any], where: str) -> pa.DataType:
    node = _resolve(node, root)
    kinds = [t for t in _json_types(node) if t != "null"]
    if len(kinds) != 1:
        raise ValueError(f"{where}: needs exactly one non-null JSON type for an Arrow column, got {kinds}")
    kind = kinds[0]
    if kind == "integer":
        return pa.type_for_alias(node.get("x-arrow", "int64"))
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        return pa.list_(_arrow_type(node["items"], root, f"{where}[]"))
    if kind == "object":
        return pa.struct(
            [pa.field(name, _arrow_type(sub, root, f"{where}.{name}")) for name, sub in node["properties"].items()]
        )
    raise ValueError(f"{where}: JSON type {kind!r} has no Arrow column type")


def arrow_schema(name: str, version: int = 1) -> pa.Schema:
    """The Arrow schema of table `name` from schemas/{name}.v{version}.json (see the module docstring)."""
    root = load_schema(name, version)
    required = set(root.get("required", ()))
    fields = []
    for column, node in root["properties"].items():
        resolved = _resolve(node, root)
        nullable = (
            column not in required or "null" in _json_types(resolved) or bool(resolved.get("x-arrow-nullable"))
        )
        fields.append(pa.field(column, _arrow_type(node, root, f"{name}.{column}"), nullable=nullable))
    return pa.schema(fields)


MANIFEST_SCHEMA = arrow_schema("manifest")
ALIGNMENT_SCHEMA = arrow_schema("alignment")
OOV_SCHEMA = arrow_schema("oov")
UNITS_SCHEMA = arrow_schema("units")
TOKENS_SCHEMA = arrow_schema("tokens")
REJECT_SCHEMA = arrow_schema("reject")
INDEX_SCHEMA = arrow_schema("index")
