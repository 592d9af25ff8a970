"""lhotse manifests -> corpus entries: one utterance per supervision (see lst_data.lhotse_io).

Each entry names the recording's file with the supervision's offset and duration in it,
so ingest decodes only that segment. Alignments a supervision carries are read by the
`lhotse` align backend, not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lst_data.core.rejects import Reject
from lst_data.ingest.readers import CorpusEntry
from lst_data.lhotse_io import Problem, Segment, audio_file, read_segments


def read_lhotse(path: str | Path) -> Iterator[CorpusEntry | Reject]:
    for item in read_segments(path):
        if isinstance(item, Problem):
            yield Reject(item.id, "ingest", "corpus_entry_invalid", item.detail)
            continue
        supervision = item.supervision
        audio = audio_file(item)
        if isinstance(audio, str):
            yield Reject(supervision.id, "ingest", "corpus_entry_invalid", f"{item.manifest.name}: {audio}")
            continue
        yield CorpusEntry(
            id=supervision.id,
            channel=file_channel(item),
            audio_path=str(audio.resolve()),
            transcript=None if supervision.text is None else supervision.text.encode("utf-8"),
            speaker=supervision.speaker or "",
            transcript_source=f"{item.manifest.name}:{supervision.id}",
            offset=item.start,
            duration=supervision.duration,
        )


def file_channel(segment: Segment) -> int | None:
    """The index, among the audio file's channels, of the one channel the supervision is on; None
    when it covers all of them (they are then downmixed)."""
    wanted = segment.supervision.channel
    wanted = wanted[0] if isinstance(wanted, list) and len(wanted) == 1 else wanted
    channels = list(segment.recording.sources[0].channels)
    if not isinstance(wanted, int) or len(channels) < 2 or wanted not in channels:
        return None
    return channels.index(wanted)

