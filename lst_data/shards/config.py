"""Shard settings (owned by the shard stage)."""

from __future__ import annotations

from typing import Literal

from lst_data.core.config import Section, doc

# No dot: a shard is found by the name {split}-NNNNNN.tar (lst_data.format.layout).
SPLIT_PATTERN = r"^[A-Za-z0-9_-]+$"


class ShardConfig(Section):
    split: str = doc(
        "Split name used in shard file names ({split}-000000.tar): letters, digits, '_' and '-'.",
        "train", pattern=SPLIT_PATTERN, max_length=64,
    )
    samples_per_shard: int = doc("Most samples per shard.", 1000, ge=1, le=10_000_000)
    max_shard_bytes: int = doc(
        "Most bytes per shard tar (0 = no limit); a shard closes at whichever of this and "
        "samples_per_shard comes first. A single larger sample still gets a shard of its own.",
        0,
        ge=0,
    )
    include_audio: bool = doc("Store KEY.flac (16 kHz mono) in each sample.", False)
    order: Literal["hash", "id"] = doc(
        "Sample order across shards: 'hash' (sha1 of seed + id: deterministic and mixes "
        "speakers, so shards are not one speaker each) or 'id' (sorted ids).",
        "hash",
    )
    frame_tolerance: int = doc(
        "How many frames len(units) may differ from floor(duration * frame_rate) before the "
        "sample is rejected as invalid_record (encoders pad or trim one frame at the edges).",
        2,
        ge=0,
        le=1000,
    )
