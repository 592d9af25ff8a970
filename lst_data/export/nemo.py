"""A build -> a NeMo manifest (`OUT/manifest.json`, one JSON object per line).

Fields: `audio_filepath` (the corpus's own file), `utt_id`, `offset` and `duration` (s)
of the utterance in it, `text` (the normalized words the alignment is of), `speaker`, and
`words`: [{word, start, end}] word timestamps in seconds from the utterance's start, as
NeMo's timestamped transcriptions give them. `lst-data build --layout nemo` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

from lst_data.export.run import run_records

MANIFEST_FILE = "manifest.json"


def export_nemo(run_dir: str | Path, out_dir: str | Path) -> int:
    """Write OUT/manifest.json for the build in RUN; return the number of lines."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out_dir / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        for record in run_records(run_dir):
            sample = record.sample
            audio, offset = record.source_audio
            line = {
                "audio_filepath": audio, "utt_id": sample.id, "offset": offset, "duration": sample.duration,
                "text": record.manifest["normalized_text"], "speaker": sample.speaker,
                "words": [{"word": w.word, "start": w.start, "end": w.end} for w in sample.words],
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            count += 1
    return count
