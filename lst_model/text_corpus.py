"""The independent text corpus of the paper's mixture (67 % of training tokens), streamed.

`--text` names one file, a folder (every .txt, .jsonl and .parquet file under it), a glob
(`corpus/*.jsonl`) or the URL of any of these on a filesystem fsspec knows (`s3://bucket/corpus/`,
opened through `lst_data.core.storage`). The suffix gives the format: `.txt` one document per
non-empty line, `.jsonl` one object per line with a string field `text`, `.parquet` a string
column `text`. Documents are normalized as the shards' transcripts were
(`lst_data.text.normalize_text` with the shards' ingest settings) and encoded with the shards'
tokenizer, so text-corpus ids and transcript ids mean the same pieces.

Training never holds the corpus. `TextStream` knows only its file list (names, sizes, versions,
Parquet row counts) and cuts it into blocks: byte ranges of text files (a line belongs to the
block it starts in) and row ranges of Parquet files. A `TextReader` is one of P readers (ranks, or
ranks x DataLoader workers): in text epoch e the blocks are put in an order seeded by (seed, e)
and reader p takes every P-th of them from the p-th, so the readers of an epoch read every
document exactly once between them, and the next epoch continues with a new order. A reader holds
at most READ_BATCH raw documents (a Parquet reader also one row group's column) and tokenizes each
as it is taken. `TextPosition` (epoch, block of the reader's share, records of that block
consumed) says where a reader stands; a reader started there gives exactly the documents an
uninterrupted one would have given next.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from lst_data.core.errors import UserError
from lst_data.core.storage import is_remote, location, parquet_file
from lst_model.errors import OptionError

TOKENIZER_FILE = "tokenizer.model"
TEXT_FORMATS = (".txt", ".jsonl", ".parquet")
READ_BATCH = 256  # raw documents a reader holds at most
MAX_BLOCK_BYTES = 16 * 2**20
BLOCKS_PER_READER = 4  # a small corpus is cut finer, so that every reader has a few blocks to read
# Fields of an fsspec listing that change when an object is rewritten, most specific first.
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated", "created")


class TextCorpusError(OptionError):
    """A user's text corpus or tokenizer cannot be used (the CLI shows it as a usage error)."""


@dataclass(frozen=True)
class TextFile:
    """One file of a text corpus, as its listing describes it."""

    url: str  # a local path or a URL, as `location` opens it
    name: str  # its path below the --text root: what the fingerprint calls it
    size: int  # bytes
    version: str  # local: the modification time; object storage: the listing's ETag (else its time)
    rows: int = 0  # Parquet: rows (its blocks are row ranges)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def extent(self) -> int:
        """What its blocks divide: rows of a Parquet file, bytes of a text file."""
        return self.rows if self.suffix == ".parquet" else self.size


@dataclass(frozen=True)
class TextBlock:
    """Records of one file: the lines starting in bytes [start, stop), or Parquet rows [start, stop)."""

    file: int  # index into TextStream.files
    start: int
    stop: int


class TextPosition(NamedTuple):
    """Where a reader stands: its text epoch, the blocks of its share of that epoch it has
    finished, and the records (lines, rows) of the next block it has consumed."""

    epoch: int = 0
    block: int = 0
    records: int = 0


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    first = min(index for index in (pattern.find(c) for c in "*?[") if index >= 0)
    return pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else ""


def _listing(source: str) -> tuple[list[tuple[str, str, dict[str, Any]]], bool]:
    """([(url, name below the --text root, fsspec info)] of the files `source` names, sorted;
    whether it named one file)."""
    import fsspec

    try:
        path = location(source, f"--text {source}")
    except UserError as err:
        raise TextCorpusError(str(err)) from None
    remote = is_remote(path)
    fs, where = (path.fs, path.path) if is_remote(path) else (fsspec.filesystem("file"), os.path.abspath(path))
    single = False
    if any(c in where for c in "*?["):
        root, infos = _glob_root(where), {n: i for n, i in fs.glob(where, detail=True).items() if i["type"] == "file"}
    elif fs.isdir(where):
        root, infos = where, {n: i for n, i in fs.find(where, detail=True).items() if not PurePosixPath(n).name.startswith(".")}
    elif fs.isfile(where):
        root, infos, single = where.rsplit("/", 1)[0], {where: fs.info(where)}, True
    else:
        raise TextCorpusError(f"--text {source}: no such file or folder")
    entries = [(fs.unstrip_protocol(name) if remote else name, name[len(root):].lstrip("/"), infos[name])
               for name in sorted(infos)]
    return entries, single


def _version(info: dict[str, Any]) -> str:
    return next((str(info[key]) for key in _VERSION_FIELDS if key in info), "")


def _parquet_rows(url: str) -> int:
    """Rows of a Parquet text file, from its footer; it must have a string column 'text'."""
    import pyarrow as pa

    try:
        parquet = parquet_file(location(url))
    except (pa.ArrowException, OSError) as err:
        raise TextCorpusError(f"--text {url}: not a Parquet file ({str(err).splitlines()[0][:200]})") from None
    schema = parquet.schema_arrow
    column = schema.field("text").type if "text" in schema.names else None
    if column is None or not (pa.types.is_string(column) or pa.types.is_large_string(column)):
        raise TextCorpusError(f"--text {url}: a Parquet text corpus needs a string column 'text'")
    return int(parquet.metadata.num_rows)


def list_text_files(source: str | Path) -> list[TextFile]:
    """The files of a text corpus (see the module doc), sorted by name; a folder or glob keeps
    the files of a known format and skips the rest."""
    source = str(source)
    entries, single = _listing(source)
    if single and PurePosixPath(entries[0][1]).suffix not in TEXT_FORMATS:
        raise TextCorpusError(f"--text {source}: unsupported format; give a {', '.join(TEXT_FORMATS)} file")
    files = [TextFile(url, name, int(info["size"]), _version(info), _parquet_rows(url) if name.endswith(".parquet") else 0)
             for url, name, info in entries if PurePosixPath(name).suffix in TEXT_FORMATS]
    if not files:
        raise TextCorpusError(f"--text {source}: no {', '.join(TEXT_FORMATS)} files there")
    return files


def _parse_line(file: TextFile, line: bytes, offset: int) -> str:
    """The raw document of one line ('' for a blank JSONL line)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise TextCorpusError(f"--text {file.url}: the line at byte {offset} is not UTF-8 text") from None
    if file.suffix == ".txt":
        return text.rstrip("\r\n")
    if not text.strip():
        return ""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise TextCorpusError(f"--text {file.url}: the line at byte {offset}: each JSONL line needs a string field 'text'")
    return str(record["text"])


def _text_records(file: TextFile, start: int, stop: int) -> Iterator[list[str]]:
    with location(file.url).open("rb") as handle:
        if start:  # the line under way at `start` belongs to the block before
            handle.seek(start - 1)
            handle.readline()
        chunk: list[str] = []
        while (offset := handle.tell()) < stop:
            line = handle.readline()
            if not line:
                break
            chunk.append(_parse_line(file, line, offset))
            if len(chunk) == READ_BATCH:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _parquet_records(file: TextFile, start: int, stop: int) -> Iterator[list[str]]:
    parquet = parquet_file(location(file.url))
    groups, first_row, row = [], None, 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if row < stop and row + rows > start:
            groups.append(group)
            first_row = row if first_row is None else first_row
        row += rows
    row = first_row or 0
    for batch in parquet.iter_batches(columns=["text"], row_groups=groups, batch_size=READ_BATCH):
        low, high = max(0, start - row), min(batch.num_rows, stop - row)
        if low < high:
            yield [text or "" for text in batch.column(0).slice(low, high - low).to_pylist()]
        row += batch.num_rows


def read_records(file: TextFile, start: int, stop: int) -> Iterator[list[str]]:
    """The raw documents of a block ('' for a blank record), in chunks of at most READ_BATCH."""
    return (_parquet_records if file.suffix == ".parquet" else _text_records)(file, start, stop)


def iter_documents(source: str | Path) -> Iterator[str]:
    """Raw non-blank documents of a text corpus (see the module doc), file after file."""
    for file in list_text_files(source):
        for chunk in read_records(file, 0, file.extent):
            yield from (text for text in chunk if text.strip())


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


def _normalization(dataset: dict[str, Any]) -> dict[str, Any]:
    """The shards' ingest settings that shape a transcript's spoken form."""
    ingest = (dataset.get("config") or {}).get("ingest") or {}
    return {"lowercase": bool(ingest.get("lowercase", True)),
            "numbers": "expand" if ingest.get("numbers", "expand") == "expand" else "flag",
            "normalizer": ingest.get("normalizer", "rules")}


def normalize_like_transcripts(text: str, dataset: dict[str, Any]) -> str:
    """`text` in the spoken form the shards' ingest gave their transcripts (its lowercase, numbers and
    normalizer settings)."""
    from lst_data.text import normalize_text

    return normalize_text(text, **_normalization(dataset)).text


class _Encoder:
    """Raw document -> BPE ids (int32) of its normalized form; None when that is empty."""

    def __init__(self, tokenizer_path: str | Path, dataset: dict[str, Any]) -> None:
        from lst_data.tokenize import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_path)
        self.dataset = dataset

    def __call__(self, text: str) -> np.ndarray | None:
        normalized = normalize_like_transcripts(text, self.dataset)
        return np.asarray(self.tokenizer.encode(normalized), dtype=np.int32) if normalized else None


def _checked_encoder(tokenizer_path: str | Path, dataset: dict[str, Any], text_vocab_size: int) -> _Encoder:
    encoder = _Encoder(tokenizer_path, dataset)
    if encoder.tokenizer.vocab_size != text_vocab_size:
        raise TextCorpusError(f"--tokenizer {tokenizer_path}: vocabulary {encoder.tokenizer.vocab_size} != "
                              f"the shards' {text_vocab_size}")
    return encoder


class TextStream:
    """A text corpus to read incrementally (see the module doc): its files, the tokenizer and the
    shards' normalization. Opening it lists the files; nothing is read until a reader reads."""

    def __init__(self, source: str, files: Sequence[TextFile], tokenizer_path: str | Path, dataset: dict[str, Any]) -> None:
        self.source = source
        self.files = list(files)
        self.tokenizer_path = str(tokenizer_path)
        self.dataset = dataset

    @classmethod
    def open(cls, source: str | Path, tokenizer_path: str | Path, dataset: dict[str, Any], text_vocab_size: int) -> TextStream:
        _checked_encoder(tokenizer_path, dataset, text_vocab_size)
        return cls(str(source), list_text_files(source), tokenizer_path, dataset)

    def describe(self) -> str:
        count = len(self.files)
        return f"{count} file{'s' if count != 1 else ''}, {sum(f.size for f in self.files):,} bytes"

    def fingerprint(self) -> str:
        """sha256 over the file list (names below the root, sizes, versions), the tokenizer's bytes and
        the normalization: a resumed run must read the same text stream, and saying so reads no document."""
        tokenizer = hashlib.sha256(location(self.tokenizer_path).read_bytes()).hexdigest()
        listing = {"files": [[f.name, f.size, f.version] for f in self.files], "tokenizer": tokenizer,
                   "normalization": _normalization(self.dataset)}
        return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()

    def blocks(self, readers: int) -> list[TextBlock]:
        """The corpus cut into blocks of at most MAX_BLOCK_BYTES (finer when it is small, about
        BLOCKS_PER_READER for each of `readers`), in file order."""
        total = sum(f.size for f in self.files)
        block_bytes = min(MAX_BLOCK_BYTES, max(1, -(-total // (BLOCKS_PER_READER * readers))))
        blocks = []
        for index, file in enumerate(self.files):
            if file.extent:
                per_block = -(-file.extent // -(-file.size // block_bytes))
                blocks += [TextBlock(index, start, min(start + per_block, file.extent))
                           for start in range(0, file.extent, per_block)]
        return blocks

    def check_readers(self, readers: int) -> None:
        """Refuse a corpus with fewer blocks than readers (some would have nothing to read)."""
        count = len(self.blocks(readers))
        if count < readers:
            raise TextCorpusError(f"--text {self.source}: {count} non-empty block(s) cannot be shared by {readers} "
                                  "readers (processes x train.loader_workers); give a larger corpus or fewer readers")

    def records(self, block: TextBlock) -> Iterator[list[str]]:
        file = self.files[block.file]
        return read_records(file, block.start, block.stop)

    def reader(self, part: int, parts: int, seed: int, start: TextPosition | None = None) -> TextReader:
        """Reader `part` of `parts`, from `start` (a resumed run's position; None: the beginning)."""
        return TextReader(self, part, parts, seed, start or TextPosition())


class TextReader:
    """One reader's share of a `TextStream`, epoch after epoch: an endless iterator of BPE ids
    (int32 arrays). `position` is where it stands after the last document it gave; `held` counts
    the raw documents it holds now and `max_held` the most it ever held."""

    def __init__(self, corpus: TextStream, part: int, parts: int, seed: int, start: TextPosition) -> None:
        corpus.check_readers(parts)
        self.corpus = corpus
        self.part = part
        self.parts = parts
        self.seed = seed
        self.position = TextPosition(*start)
        self.held = 0
        self.max_held = 0
        self._blocks = corpus.blocks(parts)
        self._documents = self._read()

    def __iter__(self) -> TextReader:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._documents)

    def share(self, epoch: int) -> list[TextBlock]:
        """This reader's blocks of text epoch `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self._blocks))
        return [self._blocks[i] for i in order[self.part :: self.parts]]

    def _read(self) -> Iterator[np.ndarray]:
        encode = _Encoder(self.corpus.tokenizer_path, self.corpus.dataset)
        epoch, first_block, skip = self.position
        while True:
            from_epoch_start, found = (first_block, skip) == (0, 0), False
            for index, block in enumerate(self.share(epoch)[first_block:], first_block):
                consumed = 0
                for chunk in self.corpus.records(block):
                    self.held = len(chunk)
                    self.max_held = max(self.max_held, self.held)
                    for text in chunk:
                        self.held -= 1
                        consumed += 1
                        ids = encode(text) if consumed > skip else None
                        if ids is not None:
                            found = True
                            self.position = TextPosition(epoch, index, consumed)
                            yield ids
                skip = 0
            if from_epoch_start and not found:
                self._refuse_empty(epoch)
            epoch, first_block = epoch + 1, 0

    def _refuse_empty(self, epoch: int) -> None:
        if self.parts == 1:
            raise TextCorpusError(f"--text {self.corpus.source}: no non-empty documents")
        raise TextCorpusError(f"--text {self.corpus.source}: reader {self.part} of {self.parts} (processes x "
                              f"train.loader_workers) found no document in its share of text epoch {epoch}; give a "
                              "larger corpus or fewer readers")


def _shard_tokenizer(tokenizer_path: str | Path | None, shard_dir: str | Path) -> str | Path:
    """`tokenizer_path`, else the tokenizer `find_tokenizer` finds near the shards."""
    found = tokenizer_path or find_tokenizer(shard_dir)
    if found is None:
        raise TextCorpusError(f"--text needs the shards' tokenizer: none found near {shard_dir}; give --tokenizer")
    return found


def open_text_stream(text: str | Path, tokenizer_path: str | Path | None, shard_dir: str | Path,
                     text_vocab_size: int) -> TextStream:
    """The --text corpus to stream with the shards' tokenizer (`tokenizer_path`, else the one
    `find_tokenizer` finds), normalized as the shards' transcripts were."""
    from lst_model.data import read_dataset_json

    tokenizer = _shard_tokenizer(tokenizer_path, shard_dir)
    return TextStream.open(text, tokenizer, read_dataset_json(shard_dir), text_vocab_size)


def load_text_corpus(source: str | Path, tokenizer_path: str | Path, dataset: dict[str, Any],
                     text_vocab_size: int) -> list[np.ndarray]:
    """BPE ids of every non-empty document, in file order, all in memory (for small corpora)."""
    encode = _checked_encoder(tokenizer_path, dataset, text_vocab_size)
    documents = [ids for text in iter_documents(source) if (ids := encode(text)) is not None]
    if not documents:
        raise TextCorpusError(f"--text {source}: no non-empty documents")
    return documents


def shard_text_corpus(text: str | Path, tokenizer_path: str | Path | None, shard_dir: str | Path,
                      text_vocab_size: int) -> list[np.ndarray]:
    """The --text corpus in memory (`load_text_corpus`) with the shards' tokenizer and normalization."""
    from lst_model.data import read_dataset_json

    tokenizer = _shard_tokenizer(tokenizer_path, shard_dir)
    return load_text_corpus(text, tokenizer, read_dataset_json(shard_dir), text_vocab_size)
