"""Load the JSON Schemas in `schemas/` (the single source of truth) and validate records."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_DIR = Path(os.environ.get("LST_DATA_SCHEMA_DIR", Path(__file__).resolve().parent.parent / "schemas"))


@functools.cache
def load_schema(name: str, version: int = 1) -> dict[str, Any]:
    path = SCHEMA_DIR / f"{name}.v{version}.json"
    if not path.exists():
        raise FileNotFoundError(f"no schema {path.name} in {SCHEMA_DIR} (set LST_DATA_SCHEMA_DIR?)")
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str, version: int) -> jsonschema.protocols.Validator:
    schema = load_schema(name, version)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validation_errors(record: dict[str, Any], name: str, version: int = 1) -> list[str]:
    """Every violation of schema `name` in `record`, as 'path: message' lines."""
    errors = sorted(_validator(name, version).iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def validate(record: dict[str, Any], name: str, version: int = 1) -> None:
    errors = validation_errors(record, name, version)
    if errors:
        raise jsonschema.ValidationError(f"{name}.v{version}: " + "; ".join(errors[:5]))
