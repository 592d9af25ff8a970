"""The independent text corpus of the paper's mixture (67 % of training tokens).

`--text PATH` is a plain text file (one document per non-empty line), a JSONL file (one
object per line with a `text` field) or a Parquet file (a `text` column). Documents are
normalized as the shards' transcripts were (`lst_data.text.normalize_text` with the
shards' ingest settings) and encoded with the shards' tokenizer, so text-corpus ids and
transcript ids mean the same pieces. Files are read one line / record batch at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lst_model.errors import OptionError

TOKENIZER_FILE = "tokenizer.model"


class TextCorpusError(OptionError):
    """A user's text corpus or tokenizer cannot be used (the CLI shows it as a usage error)."""


def iter_documents(path: str | Path) -> Iterator[str]:
    """Raw documents of a text corpus file (see the module doc)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if "text" not in parquet.schema_arrow.names:
            raise TextCorpusError(f"--text {path}: a Parquet text corpus needs a 'text' column")
        for batch in parquet.iter_batches(columns=["text"], batch_size=4096):
            yield from (t for t in batch.column(0).to_pylist() if t)
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise TextCorpusError(f"--text {path}:{number}: each JSONL line needs a string field 'text'")
                yield record["text"]
            else:
                yield line.rstrip("\n")


def find_build_file(shard_dir: str | Path, name: str) -> Path | None:
    """A file a build's stage wrote (`tokenizer.model`, `codebook.npy`): beside the shards or in
    a sibling stage folder of the run (`RUN/tokenize/`, `RUN/units/`)."""
    shard_dir = Path(shard_dir)
    for candidate in (shard_dir / name, *sorted(shard_dir.parent.glob(f"*/{name}"))):
        if candidate.is_file():
            return candidate
    return None


def find_tokenizer(shard_dir: str | Path) -> Path | None:
    """The tokenizer a build used: `tokenizer.model` beside the shards or in a sibling stage folder."""
    return find_build_file(shard_dir, TOKENIZER_FILE)


def normalize_like_transcripts(text: str, dataset: dict[str, Any]) -> str:
    """`text` in the spoken form the shards' ingest gave their transcripts (its lowercase, numbers and
    normalizer settings)."""
    from lst_data.text import NumberPolicy, normalize_text

    ingest = (dataset.get("config") or {}).get("ingest") or {}
    numbers: NumberPolicy = "expand" if ingest.get("numbers", "expand") == "expand" else "flag"
    return normalize_text(text, lowercase=bool(ingest.get("lowercase", True)), numbers=numbers,
                          normalizer=ingest.get("normalizer", "rules")).text


def load_text_corpus(path: str | Path, tokenizer_path: str | Path, dataset: dict[str, Any], text_vocab_size: int) -> list[np.ndarray]:
    """BPE ids of every non-empty document (int32 arrays)."""
    from lst_data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != text_vocab_size:
        raise TextCorpusError(f"--tokenizer {tokenizer_path}: vocabulary {tokenizer.vocab_size} != the shards' {text_vocab_size}")
    documents = []
    for text in iter_documents(path):
        normalized = normalize_like_transcripts(text, dataset)
        if normalized:
            documents.append(np.asarray(tokenizer.encode(normalized), dtype=np.int32))
    if not documents:
        raise TextCorpusError(f"--text {path}: no non-empty documents")
    return documents


def shard_text_corpus(text_path: str | Path, tokenizer_path: str | Path | None, shard_dir: str | Path,
                      text_vocab_size: int) -> list[np.ndarray]:
    """The --text corpus as BPE ids of the shards' tokenizer (`tokenizer_path`, else the one
    `find_tokenizer` finds), normalized as the shards' transcripts were."""
    from lst_model.data import read_dataset_json

    tokenizer_path = tokenizer_path or find_tokenizer(shard_dir)
    if tokenizer_path is None:
        raise TextCorpusError(f"--text needs the shards' tokenizer: none found near {shard_dir}; give --tokenizer")
    return load_text_corpus(text_path, tokenizer_path, read_dataset_json(shard_dir), text_vocab_size)


def corpus_fingerprint(documents: Sequence[np.ndarray] | None) -> str | None:
    """sha256 over the documents' ids: a resumed run must read the same text stream."""
    if documents is None:
        return None
    digest = hashlib.sha256()
    for ids in documents:
        digest.update(np.asarray(ids, dtype="<i4").tobytes())
        digest.update(b"\xff\xff\xff\xff")
    return digest.hexdigest()
