"""Config machinery shared by every stage: validated sections, YAML + `--set` loading, hashing.

Each stage owns its section (a frozen pydantic model in its own `config.py`); the run config
in `lst_data.config` composes them. Sections validate types, ranges and enum values (typed
`Literal`) once, on load, so a bad value is refused before any stage starts. A YAML file is
read with a loader that refuses duplicate keys and anchors/aliases (which no config needs and
which make a few bytes expand into gigabytes), and strings are bounded in size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import JsonDict

from lst_data.core.errors import ConfigError

MAX_STRING_CHARS = 4096
MAX_CONFIG_BYTES = 1 << 20


class Section(BaseModel):
    """A config section: frozen, unknown keys refused, values checked strictly (no '3' for 3)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, str_max_length=MAX_STRING_CHARS,
        validate_default=True,
    )


def doc(text: str, default: Any, *, names_file: bool = False, **constraints: Any) -> Any:
    """A documented field (shown by `lst-data config`); a class default means a nested section.

    `names_file` marks a path whose *content* the stage's output depends on (a model, a
    codebook): resume fingerprints the file, not its name.
    """
    if isinstance(default, type):
        return Field(default_factory=default, description=text, **constraints)
    extra: JsonDict | None = {"names_file": True} if names_file else None
    return Field(default, description=text, json_schema_extra=extra, **constraints)


# A name that becomes part of a file name: never a path.
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RayConfig(Section):
    runner: Literal["ray", "local"] = doc("'ray' runs stages on Ray; 'local' runs them in this process.", "ray")
    address: str | None = doc(
        "Ray cluster address; None starts a local Ray on loopback (or uses RAY_ADDRESS).", None, min_length=1
    )
    num_workers: int = doc("Actors per stage (0 = one per available CPU).", 0, ge=0, le=4096)
    cpus_per_worker: float = doc("CPUs each actor asks for (fractional is fine on small machines).", 1.0, gt=0, le=1024)
    batch_size: int = doc("Rows per batch handed to a stage.", 16, ge=1, le=1_000_000)
    partition_rows: int = doc(
        "Utterances per partition a build aims for: each step's work and files are cut into partitions "
        "(a power of two of them), and a resume reruns only the partitions whose inputs changed.",
        1024, ge=1, le=10_000_000)
    min_partitions: int = doc(
        "Fewest partitions a build cuts a corpus into (so a small corpus still spreads over the workers).",
        8, ge=1, le=65536)


def to_dict(obj: Any) -> Any:
    """Plain JSON-able data of a section (or of dicts/lists holding sections)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sections, dicts, lists, scalars)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and anchors/aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases (*{event.anchor}) are not allowed in a config (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} in the config (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {path} is not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config: {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config: {path} is not UTF-8 text") from None
    loaded = parse_yaml(text, str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return loaded


def parse_assignment(assignment: str) -> dict[str, Any]:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; the value is read as YAML (`3`, `true`, `null`)."""
    name, sep, raw = assignment.partition("=")
    parts = name.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {assignment!r}: expected FIELD.PATH=VALUE, e.g. units.k=200")
    value: Any = parse_yaml(raw, f"--set {name}") if raw.strip() else ""
    for part in reversed(parts):
        value = {part: value}
    return value


def config_layers(path: str | Path | None, overrides: dict[str, Any] | None = None,
                  assignments: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping at `path` (empty when None), then `overrides` (a nested dict), then `--set`
    assignments, merged in that order: what a section is validated from."""
    data = deep_merge(read_yaml_mapping(path) if path is not None else {}, overrides or {})
    for assignment in assignments:
        data = deep_merge(data, parse_assignment(assignment))
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic adds the union member / literal type to `loc` ("address.str"); keep the field path.
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (p in {"str", "int", "float", "bool", "none"} or "[" in p)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_section(cls: type[Section], data: dict[str, Any], where: str = "") -> Any:
    """Build section `cls` from a (partial) mapping; the first problem as one ConfigError line."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problem = err.errors()[0]
        field = where + _field_path(problem["loc"])
        if problem["type"] == "extra_forbidden":
            parent = cls
            for part in problem["loc"][:-1]:
                info = parent.model_fields.get(part) if isinstance(part, str) else None  # (an int: a list index)
                parent = getattr(info, "annotation", parent)
            known = ", ".join(sorted(getattr(parent, "model_fields", {}))) or "none"
            raise ConfigError(f"unknown config field {field}; known here: {known}") from None
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "value_error":  # a rule over several fields: its message names them
            raise ConfigError(f"config: {message}") from None
        if problem["type"] in ("finite_number",) or (isinstance(problem.get("input"), float) and not math.isfinite(problem["input"])):
            message = "must be a finite number"
        shown = "" if problem["type"] == "missing" else f" (got {_shown(problem.get('input'))})"
        raise ConfigError(f"config field {field}: {message}{shown}") from None


def updated(section: Section, changes: dict[str, Any]) -> Any:
    """`section` with nested `changes` merged in, validated again (the one way to derive a config)."""
    return validate_section(type(section), deep_merge(section.model_dump(), changes))


def describe(cls: type[Section], prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, doc) for every field: the config reference."""
    rows: list[tuple[str, Any, str]] = []
    instance = cls()
    for name, info in cls.model_fields.items():
        value = getattr(instance, name)
        if isinstance(value, Section):
            rows.extend(describe(type(value), prefix=f"{prefix}{name}."))
        else:
            rows.append((prefix + name, to_dict(value), info.description or ""))
    return rows
