"""NeMo ASR manifests -> corpus entries.

One JSON object per line: `audio_filepath` (relative paths are relative to the manifest),
`text`, `duration`, and optionally `offset` (s) for a segment of a longer file, as NeMo's
segmented manifests have. Ids: the line's `utt_id` or `id` when present, else the file's
stem, with the offset in milliseconds appended for segments (`lecture-00012500`).
Without `offset` the whole file is one utterance (its `duration` is NeMo's hint, not
trusted: ingest measures).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lst_data.core.rejects import Reject
from lst_data.ingest.readers import CorpusEntry, read_json_lines, speaker_name
from lst_data.lhotse_io import first_object_keys


def looks_like_nemo(path: Path) -> bool:
    return path.suffix in (".json", ".jsonl") and "audio_filepath" in first_object_keys(path)


def _seconds(value: object) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def read_nemo(manifest: str | Path) -> Iterator[CorpusEntry | Reject]:
    manifest = Path(manifest)

    def to_entry(where: str, obj: dict[str, Any]) -> CorpusEntry | Reject:
        segment = "offset" in obj
        offset, duration = _seconds(obj.get("offset", 0.0)), _seconds(obj.get("duration"))
        if offset is None or (segment and not duration):
            return Reject(where, "ingest", "corpus_entry_invalid",
                          f"{where}: 'offset' needs a number >= 0 and 'duration' a number > 0 (s)")
        audio = Path(obj["audio_filepath"])
        utt_id = obj.get("utt_id") or obj.get("id")
        if not isinstance(utt_id, str) or not utt_id:
            utt_id = f"{audio.stem}-{round(offset * 1000):08d}" if segment else audio.stem
        text = obj.get("text")
        return CorpusEntry(
            id=utt_id,
            audio_path=str((audio if audio.is_absolute() else manifest.parent / audio).resolve()),
            transcript=text.encode("utf-8") if isinstance(text, str) else None,
            speaker=speaker_name(obj.get("speaker")),
            transcript_source=where,
            offset=offset,
            duration=duration if segment else None,
        )

    return read_json_lines(manifest, ("audio_filepath",), to_entry)
