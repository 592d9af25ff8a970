"""Reject rows: how bad input is reported instead of crashing a job or vanishing.

Every per-utterance problem becomes one row (id, stage, code, detail) in
`rejects.parquet`. Codes are a closed list so that summaries and dashboards can count
them; each stage registers its codes here with a one-line meaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lst_data.core.tables import REJECT_SCHEMA

REJECT_CODES: dict[str, str] = {
    # ingest
    "audio_missing": "the audio file named by the corpus does not exist",
    "audio_unreadable": "the audio file exists but cannot be decoded",
    "audio_empty": "the audio decodes to zero samples",
    "audio_too_short": "shorter than ingest.min_duration",
    "audio_too_long": "longer than ingest.max_duration",
    "transcript_missing": "audio without a transcript file or field",
    "transcript_empty": "the transcript is empty after normalization",
    "transcript_not_utf8": "the transcript bytes are not valid UTF-8",
    "transcript_too_long": "more normalized characters per second than ingest.max_chars_per_second",
    "transcript_has_digits": "digits in the transcript while ingest.numbers = 'reject'",
    "duplicate_id": "an earlier utterance already has this id",
    "corpus_entry_invalid": "a manifest line that is not an entry (bad JSON, missing id or audio)",
    "segmentation_failed": "a long recording (ingest.long_recordings = 'segment') could not be aligned to find its pauses",
    "segment_too_long": "a stretch of a long recording between aligned pauses is longer than ingest.max_duration",
    # align
    "align_failed": "the aligner produced no alignment for the utterance",
    "oov": "a word is out of the aligner's vocabulary and align.oov = 'reject'",
    "alignment_mismatch": "the aligned words do not match the transcript",
    # units
    "units_failed": "the encoder could not produce units (e.g. audio shorter than one frame)",
    # tokenize / shard
    "tokenize_failed": "the tokenizer could not map the text onto the aligned words",
    "missing_stage_output": "an earlier stage has no row for this id",
    "invalid_record": "the joined record violates the shard contract",
}


@dataclass(frozen=True)
class Reject:
    id: str
    stage: str
    code: str
    detail: str

    def __post_init__(self) -> None:
        if self.code not in REJECT_CODES:
            raise ValueError(f"unknown reject code {self.code!r}; register it in lst_data.core.rejects")




def rejects_to_table(rejects: Iterable[Reject]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in rejects], schema=REJECT_SCHEMA)


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> pa.Table:
    table = rejects_to_table(rejects)
    table = table.sort_by([("stage", "ascending"), ("id", "ascending"), ("code", "ascending")])
    pq.write_table(table, path)
    return table


def read_rejects(path: str | Path) -> list[Reject]:
    if not Path(path).exists():
        return []
    return [Reject(**row) for row in pq.read_table(path, schema=REJECT_SCHEMA).to_pylist()]


def merge_rejects(rejects: Iterable[Reject]) -> list[Reject]:
    """Rejects without repeats: one row per (id, stage, code), the first detail kept."""
    seen: dict[tuple[str, str, str], Reject] = {}
    for r in rejects:
        seen.setdefault((r.id, r.stage, r.code), r)
    return list(seen.values())


def count_by_code(rejects: Iterable[Reject]) -> Counter[tuple[str, str]]:
    """(stage, code) -> count."""
    return Counter((r.stage, r.code) for r in rejects)
