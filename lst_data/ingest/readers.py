"""Readers for the corpus layouts users bring (lhotse, NeMo and Hugging Face in their own modules).

- MFA layout: speaker folders with audio (.wav/.flac/.ogg/.mp3) and a transcript of the
  same stem (.lab or .txt); audio directly under the root gets the root's name as speaker.
- LibriSpeech: `*.trans.txt` files with "ID TEXT" lines beside `ID.flac`.
- JSONL manifest: one object per line, {"id", "audio", "text", "speaker"?}; relative audio
  paths are relative to the manifest file.

Readers only list entries. They keep transcripts as raw bytes so that the ingest stage,
not the reader, decides what is not UTF-8 and reports it as a reject. A line that cannot
be an entry at all (bad JSON) is returned as a reject, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lst_data.audio import READABLE_SUFFIXES
from lst_data.core.rejects import Reject
from lst_data.ingest.config import HfColumns

TRANSCRIPT_SUFFIXES = (".lab", ".txt")


@dataclass(frozen=True)
class CorpusEntry:
    id: str
    audio_path: str
    transcript: bytes | None  # None: no transcript was found
    speaker: str
    transcript_source: str  # where the transcript came from (file path, or manifest:line)
    # A segment of the audio file (lhotse supervisions, NeMo offsets): start and length (s);
    # duration None means to the end of the file.
    offset: float = 0.0
    duration: float | None = None
    audio_bytes: bytes | None = None  # encoded audio held by the corpus itself (Hugging Face datasets)


def read_mfa_layout(root: str | Path) -> Iterator[CorpusEntry]:
    root = Path(root)
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in READABLE_SUFFIXES and p.is_file()):
        speaker = audio.parent.name if audio.parent != root else root.name
        transcript_path = next(
            (audio.with_suffix(s) for s in TRANSCRIPT_SUFFIXES if audio.with_suffix(s).is_file()), None
        )
        yield CorpusEntry(
            id=audio.stem,
            audio_path=str(audio.resolve()),
            transcript=transcript_path.read_bytes() if transcript_path else None,
            speaker=speaker,
            transcript_source=str(transcript_path or audio.with_suffix(".lab")),
        )


def read_librispeech(root: str | Path) -> Iterator[CorpusEntry | Reject]:
    for trans in sorted(Path(root).rglob("*.trans.txt")):
        for line_no, raw_line in enumerate(trans.read_bytes().splitlines(), start=1):
            if not raw_line.strip():
                continue
            utt_id_bytes, _, text = raw_line.partition(b" ")
            utt_id = utt_id_bytes.decode("ascii", errors="replace")
            audio = next(
                (trans.parent / f"{utt_id}{s}" for s in (".flac", ".wav") if (trans.parent / f"{utt_id}{s}").exists()),
                trans.parent / f"{utt_id}.flac",
            )
            yield CorpusEntry(
                id=utt_id,
                audio_path=str(audio.resolve()),
                transcript=text,
                speaker=utt_id.split("-")[0],
                transcript_source=f"{trans}:{line_no}",
            )


def read_json_lines(manifest: Path, required: tuple[str, ...],
                    to_entry: Callable[[str, dict[str, Any]], CorpusEntry | Reject]) -> Iterator[CorpusEntry | Reject]:
    """`to_entry(where, object)` for every non-blank line of a JSONL file that is an object with the
    `required` string fields; any other line is a reject."""
    for line_no, raw_line in enumerate(manifest.read_bytes().splitlines(), start=1):
        if not raw_line.strip():
            continue
        where = f"{manifest.name}:{line_no}"
        try:
            obj = json.loads(raw_line)
        except UnicodeDecodeError as err:
            yield Reject(where, "ingest", "transcript_not_utf8", f"{where}: {err}")
            continue
        except json.JSONDecodeError as err:
            yield Reject(where, "ingest", "corpus_entry_invalid", f"{where}: not JSON ({err.msg})")
            continue
        if not isinstance(obj, dict) or not all(isinstance(obj.get(field), str) for field in required):
            yield Reject(where, "ingest", "corpus_entry_invalid",
                         f"{where}: needs string fields {' and '.join(repr(f) for f in required)}")
            continue
        yield to_entry(where, obj)


def read_jsonl(manifest: str | Path) -> Iterator[CorpusEntry | Reject]:
    manifest = Path(manifest)

    def to_entry(where: str, obj: dict[str, Any]) -> CorpusEntry:
        text = obj.get("text")
        audio = Path(obj["audio"])
        return CorpusEntry(
            id=obj["id"],
            audio_path=str((audio if audio.is_absolute() else manifest.parent / audio).resolve()),
            transcript=text.encode("utf-8") if isinstance(text, str) else None,
            speaker=str(obj.get("speaker") or ""),
            transcript_source=where,
        )

    return read_json_lines(manifest, ("id", "audio"), to_entry)


def detect_layout(path: str | Path) -> str:
    from lst_data.ingest.hf_reader import looks_like_hf
    from lst_data.ingest.nemo_reader import looks_like_nemo
    from lst_data.lhotse_io import looks_like_lhotse

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    if looks_like_hf(path):
        return "hf"
    if looks_like_lhotse(path):
        return "lhotse"
    if path.is_file() and looks_like_nemo(path):
        return "nemo"
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if not path.is_dir():
        raise FileNotFoundError(f"corpus {path} is neither a directory nor a manifest (.jsonl, .jsonl.gz, .parquet)")
    if next(path.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    return "mfa"


def read_corpus(path: str | Path, layout: str = "auto", hf_columns: HfColumns | None = None) -> Iterator[CorpusEntry | Reject]:
    """Entries (and entry-level rejects) of the corpus at `path`, in a deterministic order."""
    from lst_data.ingest.hf_reader import read_hf
    from lst_data.ingest.lhotse_reader import read_lhotse
    from lst_data.ingest.nemo_reader import read_nemo

    layout = detect_layout(path) if layout == "auto" else layout
    readers = {"mfa": read_mfa_layout, "librispeech": read_librispeech, "jsonl": read_jsonl, "lhotse": read_lhotse,
               "nemo": read_nemo, "hf": lambda p: read_hf(p, hf_columns or HfColumns())}
    if layout not in readers:
        raise ValueError(f"unknown corpus layout {layout!r}; one of {sorted(readers)}")
    return readers[layout](path)
