"""The statistics of a shard set, and the files made from them: `index.parquet` and `dataset.json`.

`ShardTally` is the one accumulator: the writer feeds it every sample of the shards as
written (read back, so a resumed run is counted right) and stores its figures in
`dataset.json`; `lst-data stats` prints those figures, and only runs the same tally over
the shards itself when there is no dataset.json or another static patch size is asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import lst_data
from lst_data.config import RunConfig
from lst_data.core.config import to_dict
from lst_data.core.rejects import Reject, count_by_code
from lst_data.core.tables import INDEX_SCHEMA
from lst_data.keys import sanitize_key
from lst_data.patching import PATCH_STRATEGIES, patches
from lst_data.records import SampleRecord
from lst_data.shards.layout import DATASET_FILE, INDEX_FILE, shard_paths, write_json_atomic
from lst_data.shards.reader import iter_shard

DEFAULT_PATCH_SIZE = 4
_INDEX_ROWS_PER_WRITE = 4096


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

    def add(self, record: SampleRecord) -> None:
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
        for strategy, lengths in self.patch_lengths.items():
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


def index_row(tar_path: Path, record: SampleRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "key": sanitize_key(record.id),
        "shard": tar_path.name,
        "duration": record.duration,
        "n_units": record.n_frames,
        "n_words": len(record.words),
        "n_bpe": len(record.bpe),
        "speaker": record.speaker,
    }


def tally_shards(tars: Iterable[Path], patch_size: int = DEFAULT_PATCH_SIZE, index: Path | None = None) -> ShardTally:
    """Tally every sample of `tars` (audio is not read); write `index` (index.parquet) on the way if given."""
    tally = ShardTally(patch_size=patch_size)
    writer = pq.ParquetWriter(index, INDEX_SCHEMA) if index is not None else None
    rows: list[dict[str, Any]] = []
    try:
        for tar_path in tars:
            for record in iter_shard(tar_path, with_audio=False):
                tally.add(record)
                if writer is not None:
                    rows.append(index_row(tar_path, record))
                    if len(rows) >= _INDEX_ROWS_PER_WRITE:
                        writer.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
                        rows.clear()
        if writer is not None and rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
    finally:
        if writer is not None:
            writer.close()
    return tally


def write_index_and_summary(
    out: Path,
    config: RunConfig,
    config_hash: str,
    rejects: list[Reject],
    tokenizer_hashes: Iterable[str],
    tokenizer_vocab_size: int | None,
) -> dict[str, Any]:
    """Read the written shards back once: `index.parquet` and `dataset.json` come from what is on disk."""
    tars = shard_paths(out, config.shard.split)
    tmp_index = out / f".{INDEX_FILE}.tmp"
    tally = tally_shards(tars, index=tmp_index)
    tmp_index.replace(out / INDEX_FILE)
    return write_dataset_json(out, config, config_hash, rejects, tokenizer_hashes, tokenizer_vocab_size, tars, tally)


def write_dataset_json(
    out: Path,
    config: RunConfig,
    config_hash: str,
    rejects: list[Reject],
    tokenizer_hashes: Iterable[str],
    tokenizer_vocab_size: int | None,
    tars: list[Path],
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
