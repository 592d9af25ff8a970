"""Readers for the corpus layouts users bring, accounting for every file they see (lhotse,
NeMo and Hugging Face have their own modules; `layouts` detects which one a corpus is).

- MFA layout: speaker folders with audio (.wav/.flac/.ogg/.mp3) and a transcript of the
  same stem (.lab or .txt); audio directly under the root gets the root's name as speaker.
- LibriSpeech: `*.trans.txt` files with "ID TEXT" lines beside `ID.flac`.
- JSONL manifest: one object per line, {"id", "audio", "text", "speaker"?}; relative audio
  paths are relative to the manifest file.

Readers only list. They yield three kinds of item: a `CorpusEntry` (audio + transcript
bytes), a `Reject` for a file or line that cannot become an utterance (an orphan
transcript, a FIFO or dangling link, two transcripts that disagree, a line that is not an
entry), and an `Ignored` file with the reason (an unknown extension). So every file under
the corpus root ends as one of the three. Transcripts stay raw bytes, so that the ingest
stage, not the reader, decides what is not UTF-8. Paths are made absolute but symbolic
links are not resolved, so a dangling link is reported as one.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lst_data.audio import READABLE_SUFFIXES
from lst_data.core.errors import InputError
from lst_data.core.rejects import Reject
from lst_data.core.storage import StoragePath, is_remote, is_url, location, read_all, walk_files

TRANSCRIPT_SUFFIXES = (".lab", ".txt")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
LIBRISPEECH_SUFFIX = ".trans.txt"
STAGE = "ingest"


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
    channel: int | None = None  # the file's channel the utterance is on (a lhotse supervision); None: all, downmixed


@dataclass(frozen=True)
class Ignored:
    """A file under the corpus root that is deliberately not read, and why."""

    path: str
    reason: str


CorpusItem = CorpusEntry | Reject | Ignored

_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def file_problem(path: str | StoragePath) -> tuple[str, str] | None:
    """(reject code, detail) when `path` is not a readable regular file, else None.

    Checked with stat only: opening a FIFO to look at it would block the job. An object
    store holds only regular files: there, the only problem is a missing one.
    """
    if not isinstance(path, str) and is_remote(path):
        return None if path.is_file() else ("audio_missing", str(path))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            return "file_dangling_link", f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return "audio_missing", str(path)
    except OSError as err:  # a link loop, permission denied on a folder, a name too long
        return "file_unreadable", f"{path}: {err.strerror}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
    return "file_not_regular", f"{path} is {kind}"


def corpus_root(root: str | StoragePath) -> StoragePath:
    """The corpus at `root`: an absolute local path (links not resolved), or a URL."""
    path = location(root, "CORPUS")
    return path if is_remote(path) else Path(os.path.abspath(path))


def walk_folders(root: StoragePath) -> Iterator[Sequence[StoragePath]]:
    """The non-directory paths under `root` (links to folders included, not followed), one folder's
    at a time, sorted: what a listing holds at once is one folder, not the corpus."""
    if is_remote(root):
        for _, listed in walk_files(root):
            yield listed
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        linked_dirs = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        yield [Path(folder) / name for name in sorted(files + linked_dirs)]


def _walk_files(root: StoragePath) -> Iterator[StoragePath]:
    """Every non-directory path under `root` (links to folders included, not followed), sorted."""
    for paths in walk_folders(root):
        yield from paths


def without_bom(data: bytes) -> bytes:
    """A file's bytes without the UTF-8 byte order mark some editors put first (it is no text)."""
    return data.removeprefix(codecs.BOM_UTF8)


def speaker_name(value: Any) -> str:
    """A manifest's speaker field as text: a number is a name too (0 is speaker "0"); absent is ""."""
    return "" if value is None else str(value)


def _reject(utterance_id: str, code: str, detail: str) -> Reject:
    return Reject(utterance_id, STAGE, code, detail)


def _transcript_bytes(paths: Sequence[StoragePath], fetched: dict[str, bytes]) -> tuple[bytes, StoragePath] | Reject | None:
    """The transcript of one audio stem from its .lab/.txt files (None: there is none); `fetched`
    holds the content of a remote folder's transcripts, read together."""
    texts: list[tuple[bytes, StoragePath]] = []
    for path in paths:
        if str(path) in fetched:
            texts.append((fetched[str(path)], path))
            continue
        problem = file_problem(path)
        if problem is not None:
            return _reject(path.stem, *problem)
        texts.append((path.read_bytes(), path))
    if not texts:
        return None
    if len({text.strip() for text, _ in texts}) > 1:
        names = " and ".join(p.name for _, p in texts)
        return _reject(paths[0].stem, "transcript_conflict", f"{names} in {paths[0].parent} hold different text")
    return texts[0]


def read_mfa_layout(root: str | StoragePath) -> Iterator[CorpusItem]:
    """Audio and .lab/.txt files paired by stem within each folder, folder by folder (in sorted
    path order: the same order as sorting the whole tree, with one folder in memory)."""
    root = corpus_root(root)
    for paths in walk_folders(root):
        yield from _read_mfa_folder(root, paths)


def _read_mfa_folder(root: StoragePath, paths: Sequence[StoragePath]) -> Iterator[CorpusItem]:
    stems: dict[tuple[StoragePath, str], dict[str, list[StoragePath]]] = defaultdict(lambda: {"audio": [], "text": []})
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in READABLE_SUFFIXES:
            stems[(path.parent, path.stem)]["audio"].append(path)
        elif suffix in TRANSCRIPT_SUFFIXES:
            stems[(path.parent, path.stem)]["text"].append(path)
        elif not is_remote(path) and os.path.isdir(path):
            yield Ignored(str(path), "a symbolic link to a folder (not followed)")
        else:
            yield Ignored(str(path), f"unknown extension {suffix or '(none)'!r}")
    # under a remote root every path is remote: the filter only tells the type checker so
    fetched = read_all([p for files in stems.values() for p in files["text"] if is_remote(p)]) if is_remote(root) else {}
    for (folder, stem), files in sorted(stems.items()):
        texts = sorted(files["text"], key=lambda p: TRANSCRIPT_SUFFIXES.index(p.suffix.lower()))
        if not files["audio"]:
            for text in texts:
                yield _reject(stem, "transcript_orphan", f"{text} has no audio file of the same name")
            continue
        transcript = _transcript_bytes(texts, fetched)
        speaker = folder.name if folder != root else root.name
        for audio in files["audio"]:
            problem = file_problem(audio)
            if problem is not None:
                yield _reject(stem, *problem)
            elif isinstance(transcript, Reject):
                yield transcript
            else:
                yield CorpusEntry(
                    id=stem,
                    audio_path=str(audio),
                    transcript=None if transcript is None else transcript[0],
                    speaker=speaker,
                    transcript_source=str(audio.with_suffix(".lab") if transcript is None else transcript[1]),
                )


def read_librispeech(root: str | StoragePath) -> Iterator[CorpusItem]:
    root = corpus_root(root)
    listed: set[StoragePath] = set()
    files = list(_walk_files(root))
    for trans in (f for f in files if f.name.endswith(LIBRISPEECH_SUFFIX)):
        problem = file_problem(trans)
        if problem is not None:
            yield _reject(trans.name, *problem)
            continue
        for line_no, raw_line in enumerate(without_bom(trans.read_bytes()).splitlines(), start=1):
            if not raw_line.strip():
                continue
            utt_id_bytes, _, text = raw_line.strip().partition(b" ")
            utt_id = utt_id_bytes.decode("utf-8", errors="backslashreplace")
            candidates = [trans.parent / f"{utt_id}{s}" for s in (".flac", ".wav")]
            audio = next((c for c in candidates if _present(c)), candidates[0])
            listed.add(audio)
            yield CorpusEntry(
                id=utt_id,
                audio_path=str(audio),
                transcript=text,
                speaker=utt_id.split("-")[0],
                transcript_source=f"{trans}:{line_no}",
            )
    for path in files:
        if path.name.endswith(LIBRISPEECH_SUFFIX) or path in listed:
            continue
        if path.suffix.lower() in READABLE_SUFFIXES:
            yield _reject(path.stem, "transcript_missing", f"{path} is in no {LIBRISPEECH_SUFFIX} file")
        else:
            yield Ignored(str(path), f"unknown extension {path.suffix.lower() or '(none)'!r}")


def _present(path: StoragePath) -> bool:
    """Whether `path` is there (a dangling link counts: it is reported as one)."""
    return path.exists() if is_remote(path) else os.path.lexists(path)


_Item = TypeVar("_Item", bound=CorpusItem)


def read_json_lines(manifest: StoragePath, required: tuple[str, ...],
                    to_entry: Callable[[str, dict[str, Any]], _Item]) -> Iterator[_Item | Reject]:
    """`to_entry(where, object)` for every non-blank line of a JSONL file that is an object with the
    `required` string fields; any other line is a reject."""
    data = manifest.read_bytes()
    if manifest.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise InputError(f"CORPUS: {manifest} is not a readable gzip file ({err})") from None
    for line_no, raw_line in enumerate(without_bom(data).splitlines(), start=1):
        if not raw_line.strip():
            continue
        where = f"{manifest.name}:{line_no}"
        try:
            obj = json.loads(raw_line)
        except UnicodeDecodeError as err:
            yield _reject(where, "transcript_not_utf8", f"{where}: {err}")
            continue
        except json.JSONDecodeError as err:
            yield _reject(where, "corpus_entry_invalid", f"{where}: not JSON ({err.msg})")
            continue
        if not isinstance(obj, dict) or not all(isinstance(obj.get(field), str) for field in required):
            yield _reject(where, "corpus_entry_invalid",
                          f"{where}: needs string fields {' and '.join(repr(f) for f in required)}")
            continue
        yield to_entry(where, obj)


def read_jsonl(manifest: str | StoragePath) -> Iterator[CorpusItem]:
    manifest = corpus_root(manifest)

    def audio_path(audio: str) -> str:
        if is_url(audio):
            return audio
        if is_remote(manifest):
            return str(manifest.parent / audio)
        return os.path.abspath(Path(audio) if Path(audio).is_absolute() else manifest.parent / audio)

    def to_entry(where: str, obj: dict[str, Any]) -> CorpusEntry:
        text = obj.get("text")
        channel = obj.get("channel")
        return CorpusEntry(
            id=obj["id"],
            channel=channel if isinstance(channel, int) and not isinstance(channel, bool) and channel >= 0 else None,
            audio_path=audio_path(obj["audio"]),
            transcript=text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else None,
            speaker=speaker_name(obj.get("speaker")),
            transcript_source=where,
        )

    return read_json_lines(manifest, ("id", "audio"), to_entry)
