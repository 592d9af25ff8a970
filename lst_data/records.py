"""Typed records of one shard sample (the `KEY.json` + `KEY.units.npy` pair).

These are what the shard writer produces, what `lst-data show/validate` inspect and what
`lst_model` trains on, so all three agree on one in-memory shape. `from_json`/`to_json`
convert to and from the on-disk JSON of schemas/sample.v1.json. Spans are NamedTuples:
a training reader builds tens of them per sample, and a tuple is several times cheaper
to make than a frozen dataclass.

Shards come from other people, so decoding trusts nothing: `parse_json` refuses JSON over
a byte cap before parsing (orjson itself refuses nesting deeper than 1024, infinite floats
and invalid UTF-8), and `from_json` accepts only the schema's shape (nesting depth 3),
the schema's types and numbers inside sane bounds; anything else is a `MalformedSample`
(a ValueError), never a TypeError or KeyError deep in a trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

from lst_data import SCHEMA_VERSION

# Sane bounds for the numbers of a sample: a frame index or piece id fits int32, a time is a
# finite number of seconds under 10^7 (115 days), rates are those of audio and frames.
MAX_INT = 2**31 - 1
MAX_SECONDS = 1e7
MAX_SAMPLE_RATE = 10**6
MAX_FRAME_RATE = 1e4


class MalformedSample(ValueError):
    """A sample's JSON does not have the schema's shape, types or sane numbers."""


def parse_json(data: bytes, *, max_bytes: int, what: str = "JSON") -> Any:
    """`data` parsed as JSON, refused before parsing when it is over `max_bytes` (bounds memory)."""
    if len(data) > max_bytes:
        raise ValueError(f"{what} of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"{what} is not valid JSON ({err})") from None


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value <= MAX_INT


def _is_seconds(value: Any) -> bool:
    return type(value) in (float, int) and 0 <= value <= MAX_SECONDS


class Word(NamedTuple):
    word: str
    start: float
    end: float
    start_frame: int
    end_frame: int  # inclusive; start_frame - 1 when the word owns no frame

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame + 1


class BpePiece(NamedTuple):
    id: int
    piece: str
    word_index: int
    start_frame: int
    end_frame: int

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame + 1


class Silence(NamedTuple):
    start: float
    end: float
    start_frame: int
    end_frame: int
    rule: str = "frames"

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame + 1


@dataclass(frozen=True)
class SampleRecord:
    id: str
    text: str
    speaker: str
    duration: float
    sample_rate: int
    frame_rate: float
    units: np.ndarray  # int16, 1-D, len == n_frames
    words: tuple[Word, ...]
    bpe: tuple[BpePiece, ...]
    silences: tuple[Silence, ...]
    aligner: dict[str, Any] = field(default_factory=dict)
    unit_info: dict[str, Any] = field(default_factory=dict)
    audio: bytes | None = None  # FLAC bytes when the shard carries audio
    text_original: str | None = None  # the corpus transcript before normalization

    @property
    def n_frames(self) -> int:
        return int(self.units.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "text": self.text,
            "speaker": self.speaker,
            "duration": self.duration,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "n_frames": self.n_frames,
            "words": [w._asdict() for w in self.words],
            "bpe": [p._asdict() for p in self.bpe],
            "silences": [s._asdict() for s in self.silences],
            "aligner": dict(self.aligner),
            "units": dict(self.unit_info),
            "text_original": self.text_original,
        }

    @classmethod
    def from_json(cls, data: Any, units: np.ndarray, audio: bytes | None = None) -> SampleRecord:
        """The record of a sample's JSON (parsed) and units; `MalformedSample` for anything off-schema."""
        if not isinstance(data, dict):
            raise MalformedSample(f"sample JSON is a {type(data).__name__}, not an object")
        where = f"sample {str(data.get('id'))[:80]!r}"
        if data.get("schema_version") != SCHEMA_VERSION:
            raise MalformedSample(f"{where}: schema_version {str(data.get('schema_version'))[:20]} != {SCHEMA_VERSION}")
        units = np.asarray(units)
        if units.dtype != np.int16 or units.ndim != 1:
            raise MalformedSample(f"{where}: units must be 1-D int16, got {units.dtype} {units.shape}")
        if data.get("n_frames") != units.shape[0]:
            raise MalformedSample(f"{where}: n_frames {str(data.get('n_frames'))[:20]} but {units.shape[0]} units")
        scalars = _checked_fields(data, where)
        return cls(
            **scalars,
            units=units,
            words=_spans(Word, data.get("words"), where),
            bpe=_spans(BpePiece, data.get("bpe"), where),
            silences=_spans(Silence, data.get("silences"), where),
            aligner=_flat_object(data.get("aligner"), "aligner", where),
            unit_info=_flat_object(data.get("units"), "units", where),
            audio=audio,
            text_original=data.get("text_original"),
        )


def _checked_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The scalar fields of a sample JSON, type- and range-checked."""
    fields = {name: data.get(name) for name in ("id", "text", "speaker", "duration", "sample_rate", "frame_rate")}
    bad = [name for name in ("id", "text", "speaker") if type(fields[name]) is not str]
    duration, sample_rate, frame_rate = fields["duration"], fields["sample_rate"], fields["frame_rate"]
    if not (_is_seconds(duration) and duration > 0):
        bad.append("duration")
    if not _is_int(sample_rate, 1) or sample_rate > MAX_SAMPLE_RATE:
        bad.append("sample_rate")
    if not (type(frame_rate) in (float, int) and 0 < frame_rate <= MAX_FRAME_RATE):
        bad.append("frame_rate")
    if bad:
        raise MalformedSample(f"{where}: {', '.join(bad)} missing, of the wrong type or out of range")
    return {**fields, "duration": float(duration), "frame_rate": float(frame_rate)}


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_end_frame(value: Any) -> bool:
    return _is_int(value, -1)  # start_frame - 1: a word or piece that owns no frame


# Per span type, its tier name and the check of each field in field order; seconds may be integers.
_SPAN_CHECKS = {
    Word: ("word", (_is_str, _is_seconds, _is_seconds, _is_int, _is_end_frame)),
    BpePiece: ("bpe", (_is_int, _is_str, _is_int, _is_int, _is_end_frame)),
    Silence: ("silence", (_is_seconds, _is_seconds, _is_int, _is_int, _is_str)),
}


def _column_ok(check: Any, column: tuple[Any, ...]) -> bool:
    """`check` holds for every value of a span field (set/min/max in C: ~5x faster than value by value)."""
    types = set(map(type, column))
    if check is _is_str:
        return types <= {str}
    if check is _is_seconds:
        return types <= {float, int} and all(map(math.isfinite, column)) and 0 <= min(column) <= max(column) <= MAX_SECONDS
    return types <= {int} and (-1 if check is _is_end_frame else 0) <= min(column) <= max(column) <= MAX_INT


def _spans(cls: type, items: Any, where: str) -> tuple[Any, ...]:
    """A span array of the schema (a list of flat objects with exactly the span's fields), as NamedTuples."""
    name, checks = _SPAN_CHECKS[cls]
    if type(items) is not list:
        raise MalformedSample(f"{where}: {name} spans are not a list")
    fields = cls._fields
    try:
        spans = [cls(**item) for item in items]
    except TypeError:  # not an object, or a missing or unknown field
        required = set(fields) - set(cls._field_defaults)
        i = next(i for i, item in enumerate(items) if type(item) is not dict or not required <= item.keys() <= set(fields))
        raise MalformedSample(f"{where}: {name} {i} is not an object with the fields {', '.join(fields)}") from None
    for field_name, check, column in zip(fields, checks, zip(*spans, strict=True), strict=False):
        if not _column_ok(check, column):
            i = next(i for i, value in enumerate(column) if not check(value))
            raise MalformedSample(f"{where}: {name} {i} {field_name} is of the wrong type or out of range")
        if check is _is_seconds and int in set(map(type, column)):
            spans = [span._replace(**{field_name: float(getattr(span, field_name))}) for span in spans]
    return tuple(spans)


def _flat_object(value: Any, name: str, where: str) -> dict[str, Any]:
    """A provenance object (`aligner`, `units`): string keys, scalar values (bounded numbers)."""
    if type(value) is not dict or not all(
        value_item is None
        or type(value_item) in (str, bool)
        or (type(value_item) in (int, float) and math.isfinite(value_item) and abs(value_item) <= MAX_INT)
        for value_item in value.values()
    ):
        raise MalformedSample(f"{where}: {name} is not an object of plain values")
    return dict(value)
