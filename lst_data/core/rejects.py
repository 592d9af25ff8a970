"""Reject rows: how bad input is reported instead of crashing a job or vanishing.

Every per-utterance problem becomes one row (id, stage, code, detail) in
`rejects.parquet`. Codes are a closed list so that summaries and dashboards can count
them; each stage registers its codes here with a one-line meaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from lst_data.core.storage import StoragePath, location, read_parquet, write_parquet
from lst_data.core.tables import REJECT_SCHEMA

REJECT_CODES: dict[str, str] = {
    # ingest: files and entries
    "audio_missing": "the audio file named by the corpus does not exist",
    "file_dangling_link": "a symbolic link under the corpus whose target does not exist",
    "file_not_regular": "a FIFO, device, socket or folder where a file was expected",
    "file_unreadable": "a path that cannot be looked at (link loop, permission denied)",
    "corpus_entry_invalid": "a manifest line that is not an entry (bad JSON, missing id or audio)",
    "id_invalid": "an empty id, or one with control characters, outer spaces or invalid UTF-8",
    "duplicate_id": "an earlier utterance already has this id (the first one ships)",
    "key_collision": "another id already maps to this sample key (the first one ships)",
    # ingest: audio
    "audio_unreadable": "the audio file exists but cannot be decoded",
    "audio_empty": "the audio decodes to zero samples",
    "audio_nonfinite": "the audio holds NaN or infinite samples",
    "audio_truncated": "the file holds fewer samples than its header promises",
    "audio_too_short": "shorter than ingest.min_duration (s)",
    "audio_too_long": "longer than ingest.max_duration (s)",
    "audio_downmix_cancels": "a multi-channel file whose channels cancel when averaged (phase-inverted); name a channel",
    "audio_changed": "the audio file changed (size or modification time) after ingest read it; --resume ingests it again",
    "segment_past_end": "a manifest's segment (offset + duration) reaches past the end of its audio file",
    # ingest: transcripts
    "transcript_missing": "audio without a transcript file, line or field",
    "transcript_orphan": "a transcript file without an audio file of the same name",
    "transcript_conflict": "two transcript files (.lab and .txt) for one audio that disagree",
    "transcript_empty": "the transcript is empty after normalization",
    "transcript_nonspeech": "the transcript holds only non-speech annotations ([beep], (laughs))",
    "transcript_not_utf8": "the transcript bytes are not valid UTF-8",
    "transcript_too_long": "more normalized characters per second than ingest.max_chars_per_second",
    "transcript_has_digits": "digits in the transcript while ingest.numbers = 'reject'",
    # ingest: long recordings
    "segmentation_failed": "a long recording (ingest.long_recordings = 'segment') could not be aligned to find its pauses",
    "segment_too_long": "a stretch of a long recording between aligned pauses is longer than ingest.max_duration",
    # align
    "align_failed": "the aligner produced no alignment for the utterance, also on retry",
    "oov": "a word has no pronunciation: with align.oov = 'reject' any word outside the dictionary, "
           "with 'g2p' a word the fallback cannot spell (no Latin letters)",
    "alignment_mismatch": "the aligned words do not match the transcript",
    "alignment_low_score": "the transcript fits the audio worse than a free phone decode: score (log-likelihood "
                           "per frame, forced minus free) below align.pocketsphinx.min_score",
    "alignment_unaligned_speech": "the aligner left much of the speech outside every word: the transcript "
                                  "misses words (share above align.pocketsphinx.max_unaligned_speech)",
    # units
    "units_failed": "the encoder could not produce units (e.g. audio shorter than one frame, non-finite features)",
    # tokenize / shard
    "tokenize_failed": "the tokenizer could not map the text onto the aligned words",
    "missing_stage_output": "an earlier stage has no row for this id",
    "invalid_record": "the joined record violates the shard contract",
}

# The settings each code's rejects depend on; summaries print their values beside the meaning.
CODE_SETTINGS: dict[str, tuple[str, ...]] = {
    "audio_too_short": ("ingest.min_duration",),
    "audio_too_long": ("ingest.max_duration",),
    "transcript_too_long": ("ingest.max_chars_per_second",),
    "transcript_has_digits": ("ingest.numbers",),
    "oov": ("align.oov",),
    "alignment_low_score": ("align.pocketsphinx.min_score",),
    "alignment_unaligned_speech": ("align.pocketsphinx.max_unaligned_speech",),
}


def reject_meaning(code: str, config: Any = None) -> str:
    """What a code means; with the run's `config`, followed by the values of the settings it depends on."""
    meaning = REJECT_CODES.get(code, "")
    if config is None or code not in CODE_SETTINGS:
        return meaning
    values = []
    for setting in CODE_SETTINGS[code]:
        value = config
        for name in setting.split("."):
            value = getattr(value, name)
        values.append(f"{setting} = {value!r}")
    return f"{meaning} [{', '.join(values)}]"


def reject_codes_markdown() -> str:
    """The reject codes as a markdown table (`| code | meaning |`, registry order): the
    "Reject codes" section of docs/ingest.md holds exactly this text."""
    rows = ["| code | meaning |", "|---|---|"]
    for code, meaning in REJECT_CODES.items():
        escaped = meaning.replace("|", r"\|")
        rows.append(f"| `{code}` | {escaped} |")
    return "\n".join(rows)


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


def sorted_rejects_table(rejects: Iterable[Reject]) -> pa.Table:
    return rejects_to_table(rejects).sort_by([("stage", "ascending"), ("id", "ascending"), ("code", "ascending")])


def write_rejects(rejects: Iterable[Reject], path: str | StoragePath) -> pa.Table:
    table = sorted_rejects_table(rejects)
    write_parquet(table, location(path))
    return table


def read_rejects(path: str | StoragePath) -> list[Reject]:
    """The rejects of a file or of a folder of partition files (none when it is missing)."""
    path = location(path)
    if not path.exists():
        return []
    return [Reject(**row) for row in read_parquet(path, schema=REJECT_SCHEMA).to_pylist()]


def merge_rejects(rejects: Iterable[Reject]) -> list[Reject]:
    """Rejects without repeats: one row per (id, stage, code), the first detail kept."""
    seen: dict[tuple[str, str, str], Reject] = {}
    for r in rejects:
        seen.setdefault((r.id, r.stage, r.code), r)
    return list(seen.values())


def count_by_code(rejects: Iterable[Reject]) -> Counter[tuple[str, str]]:
    """(stage, code) -> count."""
    return Counter((r.stage, r.code) for r in rejects)
