"""A build -> a lhotse CutSet (`OUT/cuts.jsonl.gz`) with alignments and units.

One MonoCut per shipped utterance, over the corpus's own audio file (starting at the
utterance's offset in it), with one supervision carrying four alignment tiers:
`word` and `phone` (aligner times), `silence` (the shard's silence spans) and `bpe`
(each piece over its frames). Alignment items are timed in the recording, as lhotse
keeps them. The units ride as the cut's custom `units`, a TemporalArray (frame shift
1/frame_rate) stored as .npy files in OUT/units/: `cut.load_units()` returns them.
The file is written with a fixed gzip mtime, so one build exports to the same bytes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from lst_data.core.extras import require_extra
from lst_data.export.run import ExportRecord, frame_span_seconds, run_records

CUTS_FILE = "cuts.jsonl.gz"
UNITS_DIR = "units"


def _items(lhotse: Any, spans: list[tuple[str, float, float]], offset: float) -> list[Any]:
    """AlignmentItems of (symbol, start, end) spans timed in the utterance, moved into the recording."""
    return [lhotse.supervision.AlignmentItem(symbol=s, start=round(offset + a, 6), duration=round(b - a, 6))
            for s, a, b in spans]


def record_to_cut(lhotse: Any, record: ExportRecord, recording: Any, writer: Any) -> Any:
    sample = record.sample
    _, offset = record.source_audio
    bpe = []
    for piece in sample.bpe:
        start, length = frame_span_seconds(piece.start_frame, piece.end_frame, sample.frame_rate)
        bpe.append((piece.piece, start, start + length))
    alignment = {
        "word": _items(lhotse, [(w.word, w.start, w.end) for w in sample.words], offset),
        "phone": _items(lhotse, [(p["phone"], p["start"], p["end"]) for p in record.phones], offset),
        "silence": _items(lhotse, [("<sil>", s.start, s.end) for s in sample.silences], offset),
        "bpe": _items(lhotse, bpe, offset),
    }
    supervision = lhotse.SupervisionSegment(
        id=sample.id, recording_id=recording.id, start=0.0, duration=sample.duration,
        channel=recording.channel_ids[0] if len(recording.channel_ids) == 1 else recording.channel_ids,
        text=sample.text, speaker=sample.speaker or None, alignment=alignment,
        custom={"normalized_text": record.manifest["normalized_text"], "bpe_ids": [p.id for p in sample.bpe]},
    )
    units = writer.store_array(sample.id, sample.units, frame_shift=1.0 / sample.frame_rate, temporal_dim=0,
                               start=offset)
    return lhotse.MonoCut(id=sample.id, start=offset, duration=sample.duration, channel=supervision.channel,
                          recording=recording, supervisions=[supervision],
                          custom={"units": units, "unit_info": sample.unit_info, "aligner": sample.aligner})


def export_lhotse(run_dir: str | Path, out_dir: str | Path) -> int:
    """Write OUT/cuts.jsonl.gz (+ OUT/units/) for the build in RUN; return the number of cuts."""
    lhotse = require_extra("lhotse", "lst-data export lhotse")
    from lhotse.features.io import NumpyFilesWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings: dict[str, Any] = {}  # audio file -> Recording (ids unique by stem, numbered on a clash)
    count = 0
    with NumpyFilesWriter(out_dir / UNITS_DIR) as writer, \
            gzip.GzipFile(out_dir / CUTS_FILE, "wb", mtime=0) as handle:
        for record in run_records(run_dir):
            path, _ = record.source_audio
            if path not in recordings:
                stem = Path(path).stem
                taken = {r.id for r in recordings.values()}
                rec_id = stem if stem not in taken else next(f"{stem}-{n}" for n in range(2, len(taken) + 3)
                                                             if f"{stem}-{n}" not in taken)
                recordings[path] = lhotse.Recording.from_file(path, recording_id=rec_id)
            cut = record_to_cut(lhotse, record, recordings[path], writer)
            handle.write((json.dumps(cut.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
    return count
