"""Typed records of one shard sample (the `KEY.json` + `KEY.units.npy` pair).

These are what the shard writer produces, what `lst-data show/validate` inspect and what
`lst_model` trains on, so all three agree on one in-memory shape. `from_json`/`to_json`
convert to and from the on-disk JSON of schemas/sample.v1.json. Spans are NamedTuples
(a tuple is several times cheaper to make than a frozen dataclass).

Shards come from other people, so decoding trusts nothing: `parse_json` refuses JSON over
a byte cap before parsing (orjson itself refuses nesting deeper than 1024, infinite floats
and invalid UTF-8), and `from_json` accepts only the schema's shape (nesting depth 3),
the schema's types and numbers inside sane bounds; anything else is a `MalformedSample`
(a ValueError), never a TypeError or KeyError deep in a trainer.

`parse_sample_json` + `SampleRecord.from_parsed` is what readers call: a sample's JSON
bytes are decoded by msgspec straight into typed structs whose declared types and bounds are exactly `from_json`'s
checks (one pass in C, about a fifth of parsing to dicts and checking them in Python).
Its spans stay those structs, inside `Spans`, until a caller reads them (a sample has
about fifty spans; the reader and the training input pass most records on untouched).
JSON the fast decoder refuses is decoded again by `parse_json` + `from_json`, so a bad
sample gets the same one-line reason either way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
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
    _refuse_oversized(data, max_bytes, what)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"{what} is not valid JSON ({err})") from None


def _refuse_oversized(data: bytes, max_bytes: int, what: str) -> None:
    if len(data) > max_bytes:
        raise ValueError(f"{what} of {len(data)} bytes is over the {max_bytes}-byte limit")


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
    words: Sequence[Word]  # a tuple, or `Spans` when decoded from a shard
    bpe: Sequence[BpePiece]
    silences: Sequence[Silence]
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
        units = _checked_units(data.get("schema_version"), data.get("n_frames"), units, where)
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

    @classmethod
    def from_parsed(cls, data: Any, units: np.ndarray, audio: bytes | None = None) -> SampleRecord:
        """The record of what `parse_sample_json` returned (checked structs, or JSON for `from_json`)."""
        if not isinstance(data, _SampleJson):
            return cls.from_json(data, units, audio)
        where = f"sample {data.id[:80]!r}"
        return cls(
            id=data.id,
            text=data.text,
            speaker=data.speaker,
            duration=data.duration,
            sample_rate=data.sample_rate,
            frame_rate=data.frame_rate,
            units=_checked_units(data.schema_version, data.n_frames, units, where),
            words=Spans(Word, data.words),
            bpe=Spans(BpePiece, data.bpe),
            silences=Spans(Silence, data.silences),
            aligner=_flat_object(data.aligner, "aligner", where),
            unit_info=_flat_object(data.units, "units", where),
            audio=audio,
            text_original=data.text_original,
        )


def _checked_units(schema_version: Any, n_frames: Any, units: np.ndarray, where: str) -> np.ndarray:
    """The units of a sample whose schema version is this toolkit's and whose n_frames they match."""
    if schema_version != SCHEMA_VERSION:
        raise MalformedSample(f"{where}: schema_version {str(schema_version)[:20]} != {SCHEMA_VERSION}")
    units = np.asarray(units)
    if units.dtype != np.int16 or units.ndim != 1:
        raise MalformedSample(f"{where}: units must be 1-D int16, got {units.dtype} {units.shape}")
    if n_frames != units.shape[0]:
        raise MalformedSample(f"{where}: n_frames {str(n_frames)[:20]} but {units.shape[0]} units")
    return units


def _checked_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The scalar fields of a sample JSON, type- and range-checked."""
    fields: dict[str, Any] = {name: data.get(name) for name in ("id", "text", "speaker", "duration", "sample_rate", "frame_rate")}
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


def _spans(cls: type[Word] | type[BpePiece] | type[Silence], items: Any, where: str) -> tuple[Any, ...]:
    """A span array of the schema (a list of flat objects with exactly the span's fields), as NamedTuples."""
    name, checks = _SPAN_CHECKS[cls]
    if type(items) is not list:
        raise MalformedSample(f"{where}: {name} spans are not a list")
    fields = cls._fields
    try:
        spans: list[Any] = [cls(**item) for item in items]
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


# The sample JSON as msgspec types: each field's type and bounds are those `from_json` checks.
_Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]  # an int is read as a float, as from_json does
_Index = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_EndFrame = Annotated[int, msgspec.Meta(ge=-1, le=MAX_INT)]


class _WordJson(msgspec.Struct, forbid_unknown_fields=True):
    word: str
    start: _Seconds
    end: _Seconds
    start_frame: _Index
    end_frame: _EndFrame


class _BpeJson(msgspec.Struct, forbid_unknown_fields=True):
    id: _Index
    piece: str
    word_index: _Index
    start_frame: _Index
    end_frame: _EndFrame


class _SilenceJson(msgspec.Struct, forbid_unknown_fields=True):
    start: _Seconds
    end: _Seconds
    start_frame: _Index
    end_frame: _Index
    rule: str = "frames"


class _SampleJson(msgspec.Struct):
    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    id: str
    text: str
    speaker: str
    duration: Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
    sample_rate: Annotated[int, msgspec.Meta(ge=1, le=MAX_SAMPLE_RATE)]
    frame_rate: Annotated[float, msgspec.Meta(gt=0, le=MAX_FRAME_RATE)]
    n_frames: _Index
    words: list[_WordJson]
    bpe: list[_BpeJson]
    silences: list[_SilenceJson]
    aligner: dict[str, Any]
    units: dict[str, Any]
    text_original: str | None = None


_SAMPLE_DECODER = msgspec.json.Decoder(_SampleJson)


class Spans(Sequence):
    """One tier of a decoded sample's spans, held as the decoder's structs.

    It reads as the tuple of span NamedTuples it stands for (indexing, slicing, iteration,
    equality); that tuple is made on first read and kept (a record held in memory for
    training is read many times). `column` gives one field as an array.
    """

    __slots__ = ("kind", "items", "_spans")

    def __init__(self, kind: type, items: list[Any]) -> None:
        self.kind = kind
        self.items = items
        self._spans: tuple[Any, ...] | None = None

    def column(self, field_name: str) -> np.ndarray:
        return np.asarray(list(map(attrgetter(field_name), self.items)))

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The spans as tuples of their field values."""
        return iter(self._spans) if self._spans is not None else map(msgspec.structs.astuple, self.items)

    def _tuple(self) -> tuple[Any, ...]:
        if self._spans is None:
            self._spans = tuple(map(partial(tuple.__new__, self.kind), map(msgspec.structs.astuple, self.items)))
        return self._spans

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._tuple())

    def __getitem__(self, index: Any) -> Any:
        return self._tuple()[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Spans | tuple | list):
            return NotImplemented
        return self._tuple() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._tuple())


def parse_sample_json(raw: bytes, *, max_bytes: int, what: str = "sample JSON") -> Any:
    """A sample's JSON checked against the schema's types and bounds in one pass (`SampleRecord.from_parsed`
    takes it); JSON the fast decoder refuses comes back parsed by `parse_json`, for `from_json` to give
    the reason."""
    _refuse_oversized(raw, max_bytes, what)
    try:
        return _SAMPLE_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
        return parse_json(raw, max_bytes=max_bytes, what=what)


def sample_json_id(data: Any) -> Any:
    """The `id` of what `parse_sample_json` returned (None when it is not an object)."""
    if isinstance(data, _SampleJson):
        return data.id
    return data.get("id") if isinstance(data, dict) else None


_TIERS = (("words", Word), ("bpe", BpePiece), ("silences", Silence))
_TEXT_FIELDS = {"word", "piece", "rule"}  # span fields that are strings; the others are numbers:
_SECONDS_FIELDS = {"start", "end"}  # float64 seconds, and int64 frames and ids
_PER_RECORD = tuple(f.name for f in dataclasses.fields(SampleRecord) if f.name not in ("units", *(tier for tier, _ in _TIERS)))


def _span_rows(spans: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    return spans.rows() if isinstance(spans, Spans) else iter(spans)


@dataclass
class RecordBatch(Sequence[SampleRecord]):
    """Records as columns: what crosses from a DataLoader worker to the trainer.

    A list of records pickles span by span (~45 us a sample here); a batch pickles a few
    arrays per tier (~2 us). The trainer reads the arrays (`units`, `unit_offsets`,
    `spans[tier][field]`, `span_offsets[tier]`) or, by index or iteration, SampleRecords
    remade from them (spans as tuples of NamedTuples).
    """

    fields: dict[str, list[Any]]  # per-record values, by SampleRecord field name
    units: np.ndarray  # every record's units, concatenated (int16)
    unit_offsets: np.ndarray  # record i's units are units[unit_offsets[i]:unit_offsets[i + 1]]
    spans: dict[str, dict[str, Any]]  # tier -> field -> values of every record's spans (arrays; str fields as lists)
    span_offsets: dict[str, np.ndarray]

    @classmethod
    def from_records(cls, records: Sequence[SampleRecord]) -> RecordBatch:
        spans, span_offsets = {}, {}
        for tier, kind in _TIERS:
            tiers = [getattr(r, tier) for r in records]
            rows = list(chain.from_iterable(map(_span_rows, tiers)))
            columns = list(zip(*rows, strict=True)) or [()] * len(kind._fields)
            spans[tier] = {name: list(column) if name in _TEXT_FIELDS else
                           np.fromiter(column, np.float64 if name in _SECONDS_FIELDS else np.int64, len(column))
                           for name, column in zip(kind._fields, columns, strict=True)}
            span_offsets[tier] = np.cumsum([0, *map(len, tiers)])
        return cls(
            fields={name: [getattr(r, name) for r in records] for name in _PER_RECORD},
            units=np.concatenate([r.units for r in records]) if records else np.zeros(0, np.int16),
            unit_offsets=np.cumsum([0, *(r.n_frames for r in records)]),
            spans=spans,
            span_offsets=span_offsets,
        )

    def __len__(self) -> int:
        return len(self.unit_offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError("record index out of range")
        index %= len(self)
        tiers: dict[str, Any] = {}  # SampleRecord's span fields
        for tier, kind in _TIERS:
            start, stop = self.span_offsets[tier][index : index + 2]
            columns = [values[start:stop] for values in self.spans[tier].values()]
            columns = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns]
            tiers[tier] = tuple(map(partial(tuple.__new__, kind), zip(*columns, strict=True)))
        start, stop = self.unit_offsets[index : index + 2]
        return SampleRecord(**{name: values[index] for name, values in self.fields.items()},
                            units=self.units[start:stop], **tiers)
