"""lhotse manifests, read by the ingest reader and the `lhotse` align backend alike.

A corpus is a CutSet manifest (`cuts.jsonl.gz`), or a RecordingSet + SupervisionSet pair
(`*recordings*.jsonl.gz` + `*supervisions*.jsonl.gz`, as lhotse recipes write them), or a
folder of such files. One utterance is one supervision: its audio is the recording's file
from the supervision's start in the recording for its duration.

Times of alignment items are relative to the recording, as lhotse keeps them (cutting or
trimming a cut moves a supervision's `start` but never its alignment items).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lst_data.core.errors import InputError
from lst_data.core.extras import require_extra

MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz")


def is_manifest_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(MANIFEST_SUFFIXES)


def manifest_files(path: str | Path) -> list[Path]:
    """The manifest files of a corpus path: the file itself, or the lhotse manifests in a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if is_manifest_file(p))


def looks_like_lhotse(path: Path) -> bool:
    """A folder of lhotse manifests (named like lhotse recipes name them), or a file whose first
    object is a cut, a recording or a supervision."""
    if path.is_dir():
        return any(k in p.name for p in manifest_files(path) for k in ("cuts", "recordings", "supervisions"))
    return bool({"recording_id", "sources", "recording", "supervisions"} & first_object_keys(path))


def first_object_keys(path: Path) -> set[str]:
    """Keys of the first JSON object of a .jsonl / .jsonl.gz file (empty when unreadable)."""
    import gzip
    import json

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    obj = json.loads(line)
                    return set(obj) if isinstance(obj, dict) else set()
    except (OSError, ValueError):
        return set()
    return set()


@dataclass(frozen=True)
class Segment:
    """One supervision with the recording it lies in."""

    supervision: Any  # lhotse.SupervisionSegment
    recording: Any  # lhotse.Recording
    start: float  # the supervision's start in the recording (s)
    manifest: Path


@dataclass(frozen=True)
class Problem:
    """A supervision that cannot be an utterance (its id, and why)."""

    id: str
    detail: str


def read_segments(path: str | Path) -> Iterator[Segment | Problem]:
    """Every supervision of the manifests at `path`, in manifest order."""
    lhotse = require_extra("lhotse", "reading lhotse manifests")
    loaded = []
    for file in manifest_files(path):
        try:
            loaded.append((file, lhotse.load_manifest_lazy(file)))
        except Exception as err:  # lhotse raises bare ValueError/KeyError/JSON errors for a foreign file
            raise InputError(f"{file}: not a lhotse manifest ({type(err).__name__}: {err})") from err
    recordings: dict[str, Any] = {}
    for _, manifest in loaded:
        if isinstance(manifest, lhotse.RecordingSet):
            recordings.update((r.id, r) for r in manifest)
    found = False
    for file, manifest in loaded:
        if isinstance(manifest, lhotse.CutSet):
            for cut in manifest:
                found = True
                recording = getattr(cut, "recording", None)
                if recording is None:
                    yield Problem(cut.id, f"{file.name}: cut {cut.id} is a {type(cut).__name__} without one recording")
                    continue
                for supervision in cut.supervisions:
                    yield Segment(supervision, recording, round(cut.start + supervision.start, 6), file)
        elif isinstance(manifest, lhotse.SupervisionSet):
            for supervision in manifest:
                found = True
                recording = recordings.get(supervision.recording_id)
                if recording is None:
                    yield Problem(supervision.id, f"{file.name}: recording {supervision.recording_id!r} is in no RecordingSet")
                    continue
                yield Segment(supervision, recording, supervision.start, file)
    if not found:
        raise InputError(f"{path}: no CutSet or SupervisionSet manifest (.jsonl / .jsonl.gz) there")


def audio_file(segment: Segment) -> Path | str:
    """The recording's audio file (relative paths are relative to the manifest), or why there is none."""
    recording = segment.recording
    if len(recording.sources) != 1 or recording.sources[0].type != "file" or recording.transforms:
        return (f"recording {recording.id} is not one plain audio file "
                f"({len(recording.sources)} sources, type {recording.sources[0].type}, transforms {recording.transforms})")
    source = Path(recording.sources[0].source)
    return source if source.is_absolute() else (segment.manifest.parent / source)
