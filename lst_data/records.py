"""Typed records of one shard sample (the `KEY.json` + `KEY.units.npy` pair).

These are what the shard writer produces, what `lst-data show/validate` inspect and what
`lst_model` trains on, so all three agree on one in-memory shape. `from_json`/`to_json`
convert to and from the on-disk JSON of schemas/sample.v1.json. Spans are NamedTuples:
a training reader builds tens of them per sample, and a tuple is several times cheaper
to make than a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lst_data import SCHEMA_VERSION


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
    def from_json(cls, data: dict[str, Any], units: np.ndarray, audio: bytes | None = None) -> SampleRecord:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"sample {data.get('id')!r}: schema_version {data.get('schema_version')!r} != {SCHEMA_VERSION}")
        units = np.asarray(units)
        if units.dtype != np.int16 or units.ndim != 1:
            raise ValueError(f"sample {data['id']!r}: units must be 1-D int16, got {units.dtype} {units.shape}")
        return cls(
            id=data["id"],
            text=data["text"],
            speaker=data["speaker"],
            duration=float(data["duration"]),
            sample_rate=int(data["sample_rate"]),
            frame_rate=float(data["frame_rate"]),
            units=units,
            words=tuple(Word(**w) for w in data["words"]),
            bpe=tuple(BpePiece(**p) for p in data["bpe"]),
            silences=tuple(Silence(**s) for s in data["silences"]),
            aligner=dict(data["aligner"]),
            unit_info=dict(data["units"]),
            audio=audio,
            text_original=data.get("text_original"),
        )
