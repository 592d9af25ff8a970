"""Which layout a corpus is, and the registry of the readers of every layout.

Each reader lives in its own module and knows nothing of the others; this module is the
only one that imports them all, so adding a layout is one reader module and one registry
entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lst_data.audio import READABLE_SUFFIXES
from lst_data.core.errors import InputError, UserError
from lst_data.core.storage import StoragePath, is_remote, is_url, location
from lst_data.ingest.config import HfColumns
from lst_data.ingest.hf_reader import SAVED_MARKERS, read_hf
from lst_data.ingest.lhotse_reader import read_lhotse
from lst_data.ingest.nemo_reader import looks_like_nemo, read_nemo
from lst_data.ingest.readers import (
    JSONL_SUFFIXES,
    LIBRISPEECH_SUFFIX,
    TRANSCRIPT_SUFFIXES,
    CorpusItem,
    file_problem,
    read_jsonl,
    read_librispeech,
    read_mfa_layout,
    walk_folders,
)
from lst_data.lhotse_io import looks_like_lhotse

CorpusReader = Callable[[str | StoragePath, HfColumns], Iterator[CorpusItem]]
LocalReader = Callable[[str | Path, HfColumns], Iterator[CorpusItem]]  # opens local files only

URL_READERS: dict[str, CorpusReader] = {
    "mfa": lambda path, _: read_mfa_layout(path),
    "librispeech": lambda path, _: read_librispeech(path),
    "jsonl": lambda path, _: read_jsonl(path),
}
LOCAL_READERS: dict[str, LocalReader] = {
    "lhotse": lambda path, _: read_lhotse(path),
    "nemo": lambda path, _: read_nemo(path),
    "hf": read_hf,
}
CORPUS_READERS: dict[str, CorpusReader | LocalReader] = {**URL_READERS, **LOCAL_READERS}
LOCAL_ONLY_LAYOUTS = frozenset(LOCAL_READERS)  # their readers open local files


def detect_layout(path: str | StoragePath) -> str:
    """The layout of the corpus at `path`, from the evidence of the whole folder (up to
    EVIDENCE_FILES files): a stray `.parquet` or `*.trans.txt` beside an MFA corpus does not
    make it another layout (the MFA reader then reports those files)."""
    path = location(path, "CORPUS")
    if not path.exists():
        raise InputError(f"CORPUS: {path} does not exist")
    if not is_remote(path) and not path.is_dir() and not path.is_file():  # never opened: a FIFO would block
        problem = file_problem(path)
        assert problem is not None  # it exists, and is neither a folder nor a regular file
        raise InputError(f"CORPUS: {problem[1]}; give a folder or a manifest file")
    if path.is_file():
        if not is_remote(path):  # the Hugging Face, lhotse and NeMo readers open local files
            if path.suffix == ".parquet":
                return "hf"
            if looks_like_lhotse(path):
                return "lhotse"
            if looks_like_nemo(path):
                return "nemo"
        if path.name.endswith(JSONL_SUFFIXES):
            return "jsonl"
        raise InputError(f"CORPUS: {path} is neither a folder nor a manifest (.jsonl, .jsonl.gz, .json, .parquet); "
                         "give the folder that holds the audio, or a manifest listing it")
    if not is_remote(path):
        if any((path / marker).is_file() for marker in SAVED_MARKERS):
            return "hf"
        if looks_like_lhotse(path):
            return "lhotse"
    evidence = FolderEvidence.of(path)
    if evidence.parquet and not evidence.paired_audio and not is_remote(path):
        return "hf"  # its rows hold the audio (or name files that have no transcript files beside them)
    if evidence.librispeech_lists and evidence.paired_audio * 2 < evidence.audio:
        return "librispeech"
    return "mfa"


EVIDENCE_FILES = 20_000  # files looked at to detect a folder's layout: a bounded cost on any corpus


@dataclass
class FolderEvidence:
    """What the first EVIDENCE_FILES files of a folder (in sorted order) are."""

    audio: int = 0
    paired_audio: int = 0  # audio with a .lab/.txt of the same stem beside it (the MFA layout)
    librispeech_lists: int = 0
    parquet: int = 0

    @classmethod
    def of(cls, root: StoragePath) -> FolderEvidence:
        evidence, seen = cls(), 0
        for paths in walk_folders(root):
            names = {p.name for p in paths}
            for path in paths:
                suffix = path.suffix.lower()
                if path.name.endswith(LIBRISPEECH_SUFFIX):
                    evidence.librispeech_lists += 1
                elif suffix == ".parquet":
                    evidence.parquet += 1
                elif suffix in READABLE_SUFFIXES:
                    evidence.audio += 1
                    evidence.paired_audio += any(f"{path.stem}{t}" in names for t in TRANSCRIPT_SUFFIXES)
            seen += len(paths)
            if seen >= EVIDENCE_FILES:
                break
        return evidence


def read_corpus(path: str | StoragePath, layout: str = "auto", hf_columns: HfColumns | None = None) -> Iterator[CorpusItem]:
    """Entries, rejects and ignored files of the corpus at `path`, in a deterministic order."""
    layout = detect_layout(path) if layout == "auto" else layout
    if layout not in CORPUS_READERS:
        raise ValueError(f"unknown corpus layout {layout!r}; one of {sorted(CORPUS_READERS)}")
    columns = hf_columns or HfColumns()
    if layout not in LOCAL_READERS:
        return URL_READERS[layout](path, columns)
    if is_url(path) or not isinstance(path, (str, Path)):  # (a remote path always has a URL)
        raise UserError(f"ingest.layout: a {layout} corpus is read from a local path; a corpus URL holds the "
                        f"{', '.join(sorted(URL_READERS))} layout")
    return LOCAL_READERS[layout](path, columns)
