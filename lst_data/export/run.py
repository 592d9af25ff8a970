"""What an export reads from a build: the shipped records, with their source audio and phones.

A run directory (`lst-data build ... --out RUN`) holds the shards (`RUN/shards/`, the
utterances that shipped, with words, BPE pieces, silences and units), the manifest
(`RUN/ingest/`, where each utterance lies in its source audio) and the alignments
(`RUN/align/`, phones). Exports cover exactly the utterances in the shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lst_data.core.errors import InputError
from lst_data.format.reader import iter_records
from lst_data.format.records import SampleRecord

SHARDS, MANIFEST, ALIGNMENTS = "shards", "ingest/manifest.parquet", "align/alignments.parquet"


@dataclass(frozen=True)
class ExportRecord:
    sample: SampleRecord
    manifest: dict[str, Any]  # the manifest row (source_path, offset, audio_path, normalized_text, ...)
    phones: list[dict[str, Any]]  # {phone, start, end, word_index}, times in the utterance

    @property
    def offset(self) -> float:
        return self.manifest.get("offset") or 0.0

    @property
    def source_audio(self) -> tuple[str, float]:
        """The audio file to point at and where the utterance starts in it: the corpus's own
        file when there is one, else (audio embedded in a dataset) the build's 16 kHz copy."""
        source = Path(self.manifest["source_path"])
        if source.is_file() and source.suffix.lower() not in (".parquet", ".arrow"):
            return str(source), self.offset
        return self.manifest["audio_path"], 0.0


def run_records(run_dir: str | Path) -> Iterator[ExportRecord]:
    """Every shipped utterance of the build in RUN, in shard order."""
    run_dir = Path(run_dir)
    missing = [p for p in (SHARDS, MANIFEST, ALIGNMENTS) if not (run_dir / p).exists()]
    if missing:
        raise InputError(f"RUN {run_dir}: no {', '.join(missing)} (is it a finished `lst-data build` run?)")
    manifest = {r["id"]: r for r in pq.read_table(run_dir / MANIFEST).to_pylist()}
    phones = {r["id"]: r["phones"] or [] for r in pq.read_table(run_dir / ALIGNMENTS, columns=["id", "phones"]).to_pylist()}
    for sample in iter_records(run_dir / SHARDS, with_audio=False):
        yield ExportRecord(sample, manifest[sample.id], phones.get(sample.id, []))


def frame_span_seconds(start_frame: int, end_frame: int, frame_rate: float) -> tuple[float, float]:
    """(start, duration) in seconds of an inclusive frame span."""
    return round(start_frame / frame_rate, 6), round((end_frame - start_frame + 1) / frame_rate, 6)
