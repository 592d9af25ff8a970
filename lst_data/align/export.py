"""alignments.parquet -> one TextGrid per utterance, for inspection in Praat."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from lst_data.align.base import Interval
from lst_data.align.textgrid_io import write_textgrid
from lst_data.core.tables import ALIGNMENT_SCHEMA
from lst_data.format.keys import sanitize_key


def _parquet(path: Path, name: str) -> Path:
    return path / name if path.is_dir() else path


def export_textgrids(alignments: str | Path, out_dir: str | Path, manifest: str | Path | None = None) -> int:
    """Write OUT/KEY.TextGrid for every alignment row; return how many were written."""
    table = pq.read_table(_parquet(Path(alignments), "alignments.parquet"), schema=ALIGNMENT_SCHEMA)
    durations: dict[str, float] = {}
    if manifest is not None:
        rows = pq.read_table(_parquet(Path(manifest), "manifest.parquet"), columns=["id", "duration"]).to_pylist()
        durations = {r["id"]: r["duration"] for r in rows}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in table.to_pylist():
        words = [Interval(w["word"], w["start"], w["end"]) for w in row["words"]]
        phones = [Interval(p["phone"], p["start"], p["end"], p["word_index"]) for p in row["phones"] or []]
        silences = [Interval(s["rule"], s["start"], s["end"]) for s in row["silences"]]
        last = max((i.end for i in [*words, *phones, *silences]), default=0.0)
        duration = max(durations.get(row["id"], last), last)
        write_textgrid(out_dir / f"{sanitize_key(row['id'])}.TextGrid", duration, words, phones, silences)
    return table.num_rows
