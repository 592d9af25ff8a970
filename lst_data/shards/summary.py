"""The statistics of a shard set, and the files made from them: `index.parquet` and `dataset.json`.

`ShardTally` is the one accumulator: the writer feeds it every sample of the shards as
readers will get them (`DatasetSummary`: a kept shard of a resumed run is read back, a
written one counted from its records) and stores its figures in `dataset.json`;
`lst-data stats` prints those figures, and only runs the same tally over the shards itself
when there is no dataset.json or another static patch size is asked for. Patch lengths are
counted from the spans' frame tiling (`validation.frame_tiling`), not patch by patch.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import sub
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import lst_data
from lst_data.config import RunConfig
from lst_data.core.config import to_dict
from lst_data.core.rejects import Reject, count_by_code
from lst_data.core.storage import StoragePath
from lst_data.core.tables import INDEX_SCHEMA
from lst_data.format.keys import sanitize_key
from lst_data.format.layout import DATASET_FILE, INDEX_FILE, shard_paths, write_json_atomic
from lst_data.format.patching import PATCH_STRATEGIES, patches
from lst_data.format.reader import iter_shard
from lst_data.format.records import SampleRecord
from lst_data.format.safe_tar import DEFAULT_LIMITS
from lst_data.shards.members import EncodedSample
from lst_data.shards.validation import CheckedRecord, FrameTiling, frame_tiling

DEFAULT_PATCH_SIZE = 4
_INDEX_ROWS_PER_WRITE = 4096


def _count_patch_lengths(
    lengths: Counter[tuple[str, int]], tiling: FrameTiling, strategy: str, patch_size: int
) -> bool:
    """Add what `patches(record, strategy)` gives to `lengths`, by (speech or silence, length), from
    the record's tiling; False (nothing added) for a strategy or patch size left to `patches`.

    Counted from the runs of frames (a static strategy from the frame count alone) instead of
    making a `Patch` per patch: the writer tallies every sample it writes.
    """
    n_frames = tiling.n_frames
    word_starts = tiling.words[0]
    if strategy == "static" and patch_size >= 1:
        full, rest = divmod(n_frames, patch_size)
        if full:
            lengths["speech", patch_size] += full
        if rest:
            lengths["speech", rest] += 1
    elif strategy == "word_sil_merged" and not word_starts:
        if n_frames:
            lengths["silence", n_frames] += 1
    elif strategy == "word_sil_merged":
        # a word's patch runs to the next word's first frame; the first word's starts at frame 0
        lengths.update(zip(repeat("speech"), map(sub, (*word_starts[1:], n_frames), (0, *word_starts[1:]))))
    elif strategy in ("word_sil_sep", "bpe"):
        starts, stops = tiling.words if strategy == "word_sil_sep" else tiling.pieces
        lengths.update(zip(repeat("speech"), map(sub, stops, starts)))
        lengths.update(zip(repeat("silence"), map(sub, tiling.silences[1], tiling.silences[0])))
    else:
        return False
    return True


def _mean_length(lengths: Counter[tuple[str, int]], kinds: tuple[str, ...]) -> float | None:
    chosen = [(length, n) for (kind, length), n in lengths.items() if kind in kinds]
    patches_seen = sum(n for _, n in chosen)
    return sum(length * n for length, n in chosen) / patches_seen if patches_seen else None


@dataclass
class ShardTally:
    """Totals, provenance and patch-length histograms over the samples it is given."""

    patch_size: int = DEFAULT_PATCH_SIZE
    totals: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    aligners: set[tuple[str, str]] = field(default_factory=set)
    codebooks: set[tuple[str, Any, str, int]] = field(default_factory=set)
    frame_rates: set[float] = field(default_factory=set)
    # strategy -> ("speech" | "silence", length in frames) -> patches
    patch_lengths: dict[str, Counter[tuple[str, int]]] = field(
        default_factory=lambda: {s: Counter() for s in PATCH_STRATEGIES}
    )

    def add(self, record: SampleRecord, tiling: FrameTiling | None = None) -> None:
        """Count one sample; `tiling` is its `frame_tiling` when the caller has it already."""
        self.totals.update(
            samples=1,
            units=record.n_frames,
            words=len(record.words),
            bpe=len(record.bpe),
            silence_frames=sum(s.n_frames for s in record.silences),
        )
        self.seconds += record.duration
        self.aligners.add((record.aligner["backend"], record.aligner["model_hash"]))
        u = record.unit_info
        self.codebooks.add((u["encoder"], u["layer"], u["codebook_hash"], u["k"]))
        self.frame_rates.add(record.frame_rate)
        if tiling is None:
            tiling = frame_tiling(record)
        for strategy, lengths in self.patch_lengths.items():
            if tiling is None or not _count_patch_lengths(lengths, tiling, strategy, self.patch_size):
                # `patches` says why spans do not tile, and takes any type of frame index
                lengths.update(
                    ("silence" if p.kind == "silence" else "speech", p.length)
                    for p in patches(record, strategy, patch_size=self.patch_size)
                )

    def merge(self, other: ShardTally) -> None:
        """Add another tally's samples (a partition's) to this one."""
        self.totals.update(other.totals)
        self.seconds += other.seconds
        self.aligners |= other.aligners
        self.codebooks |= other.codebooks
        self.frame_rates |= other.frame_rates
        for strategy, lengths in other.patch_lengths.items():
            self.patch_lengths[strategy].update(lengths)

    def to_json(self) -> dict[str, Any]:
        """A JSON form that `from_json` reads back exactly (what a worker sends the driver)."""
        return {
            "patch_size": self.patch_size, "totals": dict(self.totals), "seconds": self.seconds,
            "aligners": sorted(map(list, self.aligners)), "codebooks": sorted(map(list, self.codebooks), key=str),
            "frame_rates": sorted(self.frame_rates),
            "patch_lengths": {s: [[kind, length, n] for (kind, length), n in sorted(c.items())]
                              for s, c in self.patch_lengths.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardTally:
        tally = cls(patch_size=data["patch_size"])
        tally.totals.update(data["totals"])
        tally.seconds = data["seconds"]
        tally.aligners = {tuple(a) for a in data["aligners"]}
        tally.codebooks = {tuple(c) for c in data["codebooks"]}
        tally.frame_rates = set(data["frame_rates"])
        for strategy, rows in data["patch_lengths"].items():
            tally.patch_lengths[strategy].update({(kind, length): n for kind, length, n in rows})
        return tally

    def counts(self, shards: int, rejects: list[Reject]) -> dict[str, Any]:
        """dataset.json's `counts`."""
        units = self.totals["units"]
        return {
            "samples": self.totals["samples"],
            "shards": shards,
            "hours": round(self.seconds / 3600, 6),
            "units": units,
            "words": self.totals["words"],
            "bpe": self.totals["bpe"],
            "silence_share": round(self.totals["silence_frames"] / units, 6) if units else None,
            "rejects": len(rejects),
            "rejects_by_code": [
                {"stage": s, "code": c, "count": n} for (s, c), n in sorted(count_by_code(rejects).items())
            ],
        }

    def average_patch_sizes(self) -> dict[str, dict[str, float | int | None]]:
        """dataset.json's `average_patch_sizes`: mean frames per word/piece, silence and any patch."""
        return {
            strategy: {
                "mean_word_or_piece_patch": _mean_length(lengths, ("speech",)),
                "mean_silence_patch": _mean_length(lengths, ("silence",)),
                "mean_all": _mean_length(lengths, ("speech", "silence")),
                "n_patches": sum(lengths.values()),
            }
            for strategy, lengths in self.patch_lengths.items()
        }

    def patch_length_counts(self) -> dict[str, Any]:
        """dataset.json's `patch_lengths`: the histograms, so `stats` needs no scan."""
        return {
            "patch_size": self.patch_size,
            "counts": {
                strategy: [{"kind": k, "length": length, "count": n} for (k, length), n in sorted(lengths.items())]
                for strategy, lengths in self.patch_lengths.items()
            },
        }

    def provenance(self) -> dict[str, Any]:
        """dataset.json's `hashes` (aligner, codebook) and `units` (k, frame rate when there is one)."""
        ks = sorted({c[3] for c in self.codebooks})
        return {
            "aligner": [{"backend": b, "model_hash": h} for b, h in sorted(self.aligners)],
            "codebook": [
                {"encoder": e, "layer": layer, "codebook_hash": h, "k": k}
                for e, layer, h, k in sorted(self.codebooks, key=str)
            ],
            "units": {
                "k": ks[0] if len(ks) == 1 else None,
                "frame_rate": min(self.frame_rates) if len(self.frame_rates) == 1 else None,
            },
        }


def index_row(shard: str, record: SampleRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "key": sanitize_key(record.id),
        "shard": shard,
        "duration": record.duration,
        "n_units": record.n_frames,
        "n_words": len(record.words),
        "n_bpe": len(record.bpe),
        "speaker": record.speaker,
    }


class ShardIndex:
    """`index.parquet` written as samples come, in shard order, `_INDEX_ROWS_PER_WRITE` rows to a row group."""

    def __init__(self, path: Path) -> None:
        self.writer = pq.ParquetWriter(path, INDEX_SCHEMA)
        self.rows: list[dict[str, Any]] = []

    def add(self, shard: str, record: SampleRecord) -> None:
        self.rows.append(index_row(shard, record))
        if len(self.rows) >= _INDEX_ROWS_PER_WRITE:
            self._write_rows()

    def _write_rows(self) -> None:
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=INDEX_SCHEMA))
        self.rows.clear()

    def close(self) -> None:
        try:
            if self.rows:
                self._write_rows()
        finally:
            self.writer.close()


def tally_shard(tar_path: StoragePath, tally: ShardTally, index: ShardIndex | None = None) -> None:
    """Add every sample of one tar, read back (audio is not read), to `tally` (and `index`)."""
    for record in iter_shard(tar_path, with_audio=False):
        tally.add(record)
        if index is not None:
            index.add(tar_path.name, record)


def tally_shards(tars: Iterable[StoragePath], patch_size: int = DEFAULT_PATCH_SIZE, index: Path | None = None) -> ShardTally:
    """Tally every sample of `tars` (audio is not read); write `index` (index.parquet) on the way if given."""
    tally = ShardTally(patch_size=patch_size)
    with contextlib.closing(ShardIndex(index)) if index is not None else contextlib.nullcontext() as shard_index:
        for tar_path in tars:
            tally_shard(tar_path, tally, shard_index)
    return tally


def _within_read_limits(sample: EncodedSample) -> bool:
    return all(len(data) <= DEFAULT_LIMITS.cap(suffix) for suffix, data in sample.members.items())


class DatasetSummary:
    """The writer's `index.parquet` and `dataset.json`, fed each shard in order as it is written or kept.

    What is counted is what readers of the shards get: a kept shard is read back; the
    samples of a written one are counted from their records and tilings, which is the same
    when the contract check proved every record plain (it has a tiling) and every member is
    under the reader's caps, and the shard is read back otherwise.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tmp_index = out / f".{INDEX_FILE}.tmp"
        self.index = ShardIndex(self.tmp_index)
        self.tally = ShardTally()

    def add_written(self, tar_path: Path, records: list[CheckedRecord], samples: list[EncodedSample]) -> None:
        """A shard just written from `records` (encoded as `samples`)."""
        if not all(checked.tiling is not None for checked in records) or not all(map(_within_read_limits, samples)):
            self.add_from_disk(tar_path)
            return
        for record, tiling in records:
            self.tally.add(record, tiling)
            self.index.add(tar_path.name, record)

    def add_from_disk(self, tar_path: Path) -> None:
        """A shard as a reader gets it: read back (a kept shard, or one with a record not proven plain)."""
        tally_shard(tar_path, self.tally, self.index)

    def close(self) -> None:
        self.index.close()

    def write(
        self,
        config: RunConfig,
        config_hash: str,
        rejects: list[Reject],
        tokenizer_hashes: Iterable[str],
        tokenizer_vocab_size: int | None,
    ) -> dict[str, Any]:
        """`index.parquet`, then `dataset.json` of the shards now in the folder; returns dataset.json's content."""
        self.close()
        self.tmp_index.replace(self.out / INDEX_FILE)
        tars = shard_paths(self.out, config.shard.split)
        return write_dataset_json(
            self.out, config, config_hash, rejects, tokenizer_hashes, tokenizer_vocab_size, tars, self.tally
        )


def write_dataset_json(
    out: StoragePath,
    config: RunConfig,
    config_hash: str,
    rejects: list[Reject],
    tokenizer_hashes: Iterable[str],
    tokenizer_vocab_size: int | None,
    tars: Sequence[StoragePath],
    tally: ShardTally,
) -> dict[str, Any]:
    """`dataset.json` of the shards `tars` from the tally of their samples; returns what it wrote."""
    split = config.shard.split
    provenance = tally.provenance()
    summary = {
        "schema_version": lst_data.SCHEMA_VERSION,
        "toolkit_version": lst_data.__version__,
        "split": split,
        "config": to_dict(config),
        "config_hash": config_hash,
        "shards": [t.name for t in tars],
        "hashes": {
            "aligner": provenance["aligner"],
            "codebook": provenance["codebook"],
            "tokenizer": sorted(tokenizer_hashes),
        },
        "tokenizer": {"vocab_size": tokenizer_vocab_size},
        "units": provenance["units"],
        "counts": tally.counts(len(tars), rejects),
        "average_patch_sizes": tally.average_patch_sizes(),
        "patch_lengths": tally.patch_length_counts(),
    }
    write_json_atomic(out / DATASET_FILE, summary)
    return summary
