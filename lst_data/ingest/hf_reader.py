"""Hugging Face datasets saved locally -> corpus entries.

Two forms: a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder (read with
`datasets.load_from_disk`, the `interop` extra), or parquet files (`Dataset.to_parquet`,
a folder's top-level `*.parquet` or the Hub's `data/**/*.parquet`; read with pyarrow). Columns are named by `ingest.hf.*`. The
audio column holds what datasets' `Audio` feature stores, `{bytes, path}`, or a path
string: embedded bytes ride with the entry (decoded by ingest from memory, so a dataset's
audio is held in memory while it is listed); a bare path is read from disk, relative to
the dataset. Splits of a DatasetDict are read in sorted order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lst_data.core.errors import InputError
from lst_data.core.extras import require_extra
from lst_data.core.rejects import Reject
from lst_data.ingest.config import HfColumns
from lst_data.ingest.readers import CorpusEntry, speaker_name

SAVED_MARKERS = ("dataset_dict.json", "state.json")


def parquet_files(path: Path) -> list[Path]:
    """A parquet file, or those of a dataset folder: at its top or under `data/` (the Hub's layout)."""
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    return sorted([*path.glob("*.parquet"), *path.glob("data/**/*.parquet")])


def looks_like_hf(path: Path) -> bool:
    return any((path / m).is_file() for m in SAVED_MARKERS) or bool(parquet_files(path))


def read_hf(path: str | Path, columns: HfColumns) -> Iterator[CorpusEntry | Reject]:
    path = Path(path)
    if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
        yield from _read_saved(path, columns)
        return
    for file in parquet_files(path):
        yield from _entries(_parquet_rows(file, columns), file, file.stem, columns)


def _read_saved(path: Path, columns: HfColumns) -> Iterator[CorpusEntry | Reject]:
    datasets = require_extra("datasets", "reading a Hugging Face dataset folder")
    loaded = datasets.load_from_disk(str(path))
    splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [(path.name, loaded)]
    for split, dataset in splits:
        _check_columns(dataset.column_names, columns, f"{path} ({split})")
        if isinstance(dataset.features.get(columns.audio), datasets.Audio):
            # Undecoded: datasets 4+ decodes through torchcodec + FFmpeg; ingest decodes with soundfile.
            dataset = dataset.cast_column(columns.audio, datasets.Audio(decode=False))
        yield from _entries(iter(dataset), path, split, columns)


def _parquet_rows(file: Path, columns: HfColumns) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    _check_columns(parquet.schema_arrow.names, columns, str(file))
    wanted = [c for c in (columns.audio, columns.text, columns.id, columns.speaker)
              if c is not None and c in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=256, columns=wanted):
        yield from batch.to_pylist()


def _check_columns(names: Iterable[str], columns: HfColumns, where: str) -> None:
    names = list(names)
    missing = [f"ingest.hf.{field}={getattr(columns, field)!r}" for field in ("audio", "text", "id")
               if getattr(columns, field) is not None and getattr(columns, field) not in names]
    if missing:
        raise InputError(f"{where}: no column {', '.join(missing)}; its columns are {names}")


def _entries(rows: Iterable[dict[str, Any]], source: Path, prefix: str, columns: HfColumns) -> Iterator[CorpusEntry | Reject]:
    for index, row in enumerate(rows):
        where = f"{source.name}:{prefix}:{index}"
        if columns.id is not None and row[columns.id] is None:
            yield Reject(where, "ingest", "corpus_entry_invalid", f"{where}: column {columns.id!r} is null")
            continue
        utt_id = str(row[columns.id]) if columns.id is not None else f"{prefix}-{index:06d}"
        audio = row.get(columns.audio)
        audio_bytes, audio_path = (audio.get("bytes"), audio.get("path")) if isinstance(audio, dict) else (None, audio)
        if audio_bytes:
            location = source  # the dataset itself holds the audio
        elif isinstance(audio_path, str):
            base = source if source.is_dir() else source.parent
            location = Path(audio_path) if Path(audio_path).is_absolute() else base / audio_path
        else:
            yield Reject(utt_id, "ingest", "corpus_entry_invalid", f"{where}: column {columns.audio!r} holds no audio bytes or path")
            continue
        text = row.get(columns.text)
        speaker = row.get(columns.speaker) if columns.speaker is not None else None
        yield CorpusEntry(
            id=utt_id,
            audio_path=str(location.resolve()),
            transcript=text.encode("utf-8") if isinstance(text, str) else None,
            speaker=speaker_name(speaker),
            transcript_source=where,
            audio_bytes=audio_bytes or None,
        )
