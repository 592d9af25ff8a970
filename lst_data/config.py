"""One run configuration, with every default in code and documented.

A run is driven by one YAML file that overrides any subset of these fields. The
canonical hash of the resolved config (sorted-key JSON) goes into the provenance of every
output, so two outputs made with different settings can never be confused; each stage
also hashes only its own section, so changing the quantizer does not invalidate
alignments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lst_data.align.config import AlignConfig  # each stage owns its section
from lst_data.config_fields import doc
from lst_data.shards.config import ShardConfig
from lst_data.tokenize.config import TokenizerConfig
from lst_data.units.config import UnitsConfig


@dataclass(frozen=True)
class IngestConfig:
    sample_rate: int = doc("Audio is decoded, downmixed and resampled once to this rate (Hz).", 16000)
    min_duration: float = doc("Utterances shorter than this (s) are rejected as audio_too_short.", 0.3)
    max_duration: float = doc("Utterances longer than this (s) are rejected as audio_too_long.", 60.0)
    max_chars_per_second: float = doc(
        "Normalized transcript characters per second above which the transcript is far too long "
        "for its audio (transcript_too_long). Read speech is about 15.",
        40.0,
    )
    numbers: str = doc(
        "Digits in transcripts: 'flag' keeps them and marks the row, 'expand' writes them as "
        "English words (num2words), 'reject' rejects the utterance (transcript_has_digits).",
        "flag",
    )
    lowercase: bool = doc("Lower-case the normalized text.", True)
    audio_format: str = doc(
        "Container for audio that had to be resampled or downmixed ('flac' or 'wav'); audio "
        "already at the target rate, mono, in wav/flac is referenced in place.",
        "flac",
    )


@dataclass(frozen=True)
class RayConfig:
    runner: str = doc("'ray' runs stages on Ray Data; 'local' runs them in this process.", "ray")
    address: str | None = doc(
        "Ray cluster address; None starts a local Ray on loopback (or uses RAY_ADDRESS).", None
    )
    num_workers: int = doc("Actors per stage (0 = one per available CPU).", 0)
    cpus_per_worker: float = doc("CPUs each actor asks for (fractional is fine on small machines).", 1.0)
    batch_size: int = doc("Rows per batch handed to a stage.", 16)


@dataclass(frozen=True)
class RunConfig:
    seed: int = doc("Seed for every random choice in the run.", 0)
    ingest: IngestConfig = doc("Corpus ingest.", IngestConfig)
    align: AlignConfig = doc("Forced alignment.", AlignConfig)
    units: UnitsConfig = doc("Speech-unit quantization.", UnitsConfig)
    tokenizer: TokenizerConfig = doc("BPE tokenizer.", TokenizerConfig)
    shard: ShardConfig = doc("WebDataset shards.", ShardConfig)
    ray: RayConfig = doc("Execution.", RayConfig)

    def section_hash(self, name: str) -> str:
        """Hash of one stage's section (plus the seed): what that stage's outputs depend on."""
        return canonical_hash({"seed": self.seed, name: to_dict(getattr(self, name))})

    @property
    def hash(self) -> str:
        return canonical_hash(to_dict(self))


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
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
    """sha256 of the canonical JSON of `obj` (dataclasses, dicts, lists, scalars)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


class ConfigError(ValueError):
    """A config file names an unknown field or gives a value of the wrong type."""


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass `cls` from a (partial) dict; unknown keys are an error, not ignored."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(where + k for k in unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{f.name} must be a mapping, got {value!r}")
            kwargs[f.name] = from_dict(hint, value, where=f"{where}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, hint, f"{where}{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = typing.get_origin(hint) or hint
    if base in (int, float, str, bool) and not isinstance(value, base):
        raise ConfigError(f"{name} must be {base.__name__}, got {value!r}")
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{name} must be int, got {value!r}")
    return value


def read_config_data(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML mapping at `path` (empty when None) with `overrides` merged over it."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    return deep_merge(data, overrides or {})


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (a nested dict)."""
    return from_dict(RunConfig, read_config_data(path, overrides))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, doc) for every field: the config reference."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, prefix=f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, to_dict(getattr(instance, f.name)), f.metadata.get("doc", "")))
    return rows
