"""Records for training and scoring: read from shards, split into train / held-out by id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from lst_data.core.errors import ConfigError
from lst_data.records import SampleRecord
from lst_model.tokens import TokenSpace


def load_records(shard_dir: str | Path) -> list[SampleRecord]:
    """Every sample of a shard set (without audio), in the reader's order (the shard stage's reader)."""
    from lst_data.shards.reader import iter_records

    return list(iter_records(Path(shard_dir), with_audio=False))


def load_token_space(shard_dir: str | Path) -> TokenSpace:
    return TokenSpace.from_dataset_json(json.loads((Path(shard_dir) / "dataset.json").read_text(encoding="utf-8")))


def is_heldout(record_id: str, fraction: float) -> bool:
    """Stable membership: the same id is held out in every run, whatever the shard order."""
    digest = int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big")
    return digest / 2**64 < fraction


def split_heldout(records: Sequence[SampleRecord], fraction: float) -> tuple[list[SampleRecord], list[SampleRecord]]:
    train = [r for r in records if not is_heldout(r.id, fraction)]
    heldout = [r for r in records if is_heldout(r.id, fraction)]
    if not train:
        raise ConfigError(f"data.heldout_fraction: no training utterances left after holding out {fraction:.0%} of {len(records)}")
    return train, heldout
