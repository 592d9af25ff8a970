"""Read shards back as `SampleRecord`s: a WebDataset pipeline for training, a plain iterator for tools.

Security: shards come from other people. Only the members the contract names are read
(`KEY.json`, `KEY.units.npy`, `KEY.flac`); a link, a member with any other name, an
absolute or `..` path raises `UnsafeMemberError` before any byte of the tar is used.
JSON is parsed with `orjson` (plain data only), units with
`np.load(allow_pickle=False)`, FLAC stays bytes. No webdataset auto-decoder runs, so no
`.pyd`/`.pickle` member can ever be unpickled.

Training pipeline (`shard_pipeline`):
- mode 'epoch': every sample exactly once per epoch. The shard list is shuffled (if
  asked) with the same seed + epoch in every rank and worker, then split by rank
  (`wds.split_by_node`) and by DataLoader worker (`wds.split_by_worker`), so the parts are
  disjoint and cover all shards. Call `set_epoch(e)` before each epoch (as with
  DistributedSampler) to get a new order; this works with non-persistent workers, which
  copy the pipeline when the epoch starts.
- mode 'resampled': shards drawn with replacement (`wds.ResampledShards`, different per
  rank and worker); an "epoch" is `epoch_samples` samples in total.
Batches are made inside each worker (`wds.batched` collating to lists), because per-sample
inter-process transfer is 5-10x slower. Lengths come from the sidecars, not from a scan.
"""

from __future__ import annotations

import io
import math
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import webdataset as wds

from lst_data.records import SampleRecord
from lst_data.shards.layout import (
    Sidecar,
    UnsafeMemberError,
    check_member,
    shard_paths,
    sidecar_path,
)
from lst_data.keys import sanitize_key

MODES = ("epoch", "resampled")


# What np.save writes for a 1-D little-endian int16 array (format 1.0): parsed without numpy's
# header parser (ast.literal_eval, about a third of a sample's decode time); anything else
# goes through np.load(allow_pickle=False).
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_INT16_HEADER = re.compile(rb"\{'descr': '<i2', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")


def load_units(data: bytes) -> np.ndarray:
    """The int16 units of a `KEY.units.npy` member (never unpickles)."""
    if data[:8] == _NPY_MAGIC:
        header_end = 10 + int.from_bytes(data[8:10], "little")
        match = _NPY_INT16_HEADER.fullmatch(data[10:header_end])
        if match and len(data) == header_end + 2 * int(match[1]):
            return np.frombuffer(data, dtype="<i2", offset=header_end).copy()
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_members(key: str, members: dict[str, bytes], *, with_audio: bool = True) -> SampleRecord:
    """The record of one sample from its member bytes (suffix -> bytes)."""
    missing = [s for s in ("json", "units.npy") if s not in members]
    if missing:
        raise ValueError(f"sample {key!r} lacks {', '.join(missing)}")
    data = orjson.loads(members["json"])
    if not isinstance(data, dict) or sanitize_key(str(data.get("id"))) != key:
        raise ValueError(f"sample {key!r}: its JSON id does not map to the member key")
    units = load_units(members["units.npy"])
    return SampleRecord.from_json(data, units, audio=members.get("flac") if with_audio else None)


def iter_raw_samples(
    tar_path: str | Path, *, with_audio: bool = True
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, suffix -> bytes) per sample of one tar; every member is checked before its bytes are read."""
    with tarfile.open(tar_path, mode="r:") as tar:
        key: str | None = None
        members: dict[str, bytes] = {}
        for info in tar:
            member_key, suffix = check_member(info)
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            if suffix in members:
                raise ValueError(f"{tar_path}: duplicate member {info.name!r}")
            if suffix == "flac" and not with_audio:
                continue
            extracted = tar.extractfile(info)
            assert extracted is not None  # a regular file, checked above
            members[suffix] = extracted.read()
            tar.members = []  # keep memory flat on long shards
        if key is not None:
            yield key, members


def iter_shard(tar_path: str | Path, *, with_audio: bool = True) -> Iterator[SampleRecord]:
    """Records of one tar, in order."""
    for key, members in iter_raw_samples(tar_path, with_audio=with_audio):
        yield decode_members(key, members, with_audio=with_audio)


def iter_records(
    shard_dir: str | Path, *, split: str | None = None, with_audio: bool = True
) -> Iterator[SampleRecord]:
    """Every record of every shard in `shard_dir` (one split or all), in shard order."""
    for tar_path in shard_paths(shard_dir, split):
        yield from iter_shard(tar_path, with_audio=with_audio)


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split and their sample counts, from the sidecars."""

    urls: tuple[str, ...]
    samples: tuple[int, ...]

    @property
    def total_samples(self) -> int:
        return sum(self.samples)

    @classmethod
    def from_dir(cls, shard_dir: str | Path, split: str | None = None) -> ShardSet:
        tars = shard_paths(shard_dir, split)
        if not tars:
            raise FileNotFoundError(f"no shards{f' of split {split!r}' if split else ''} in {shard_dir}")
        counts = []
        for tar_path in tars:
            side = sidecar_path(tar_path)
            if not side.exists():
                raise FileNotFoundError(
                    f"{tar_path.name} has no sidecar {side.name}: the shard is incomplete"
                )
            counts.append(Sidecar.read(side).samples)
        return cls(tuple(str(t) for t in tars), tuple(counts))


class _ShardSamples:
    """Pipeline stage: shard urls -> raw samples, through the checked tar reader.

    Used instead of `wds.tarfile_to_samples`: it refuses links instead of skipping them,
    checks every name before reading, and is 3x faster on small members (seekable files,
    no per-member dict and regex of webdataset's generic grouping).
    """

    def __init__(self, with_audio: bool, handler: Callable[[Exception], bool]) -> None:
        self.with_audio = with_audio
        self.handler = handler

    def __call__(self, source: Iterator[dict[str, Any]]) -> Iterator[tuple[str, dict[str, bytes]]]:
        for shard in source:
            try:
                yield from iter_raw_samples(shard["url"], with_audio=self.with_audio)
            except (UnsafeMemberError, ValueError, OSError, tarfile.TarError) as err:
                err.args = (*err.args, shard["url"])
                if not self.handler(err):
                    break


class _ShardShuffle:
    """Shuffle the shard list identically in every rank and worker: seed + epoch, nothing else."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def __call__(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        shards = list(source)
        random.Random(f"{self.seed}:{self.epoch}").shuffle(shards)
        yield from shards


class _SampleShuffle:
    """A shuffle buffer seeded by seed, epoch, rank and worker: reproducible, and different per worker."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize = bufsize
        self.seed = seed
        self.epoch = 0

    def __call__(self, source: Iterator[Any]) -> Iterator[Any]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}:{self.epoch}:{rank}:{worker}")
        return wds.shuffle(self.bufsize, initial=min(self.bufsize, 100), rng=rng)(source)


class _Decode:
    def __init__(self, with_audio: bool) -> None:
        self.with_audio = with_audio

    def __call__(self, raw: tuple[str, dict[str, bytes]]) -> SampleRecord:
        return decode_members(*raw, with_audio=self.with_audio)


class ShardPipeline(wds.DataPipeline):
    """A webdataset DataPipeline yielding lists of SampleRecord, with `set_epoch` and sidecar counts."""

    shard_set: ShardSet
    epoch_stages: tuple[Any, ...]

    def set_epoch(self, epoch: int) -> None:
        for stage in self.epoch_stages:
            stage.epoch = epoch


def shard_pipeline(
    shard_dir: str | Path,
    *,
    batch_size: int,
    shuffle: bool,
    mode: str = "epoch",
    split: str | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    epoch_samples: int | None = None,
    world_size: int = 1,
    num_workers: int = 1,
    with_audio: bool = True,
    handler: Callable[[Exception], bool] = wds.reraise_exception,
    partial: bool = True,
) -> ShardPipeline:
    """A pipeline over the shards of `shard_dir` that yields batches (lists) of SampleRecord.

    `shuffle` must be given: it shuffles shards (epoch mode) and samples (a buffer of
    `shuffle_buffer`). In resampled mode, each of the `world_size * num_workers` streams
    yields `epoch_samples` / that many samples per epoch (default: the split's size).
    `len()` is the nominal number of batches of one epoch over all workers.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    shard_set = ShardSet.from_dir(shard_dir, split)
    epoch_stages: list[Any] = []
    if mode == "epoch":
        stages: list[Any] = [wds.SimpleShardList(list(shard_set.urls))]
        if shuffle:
            epoch_stages.append(_ShardShuffle(seed))
            stages.append(epoch_stages[-1])
        stages += [wds.split_by_node, wds.split_by_worker]
    else:
        stages = [wds.ResampledShards(list(shard_set.urls), seed=seed, deterministic=True)]
    stages.append(_ShardSamples(with_audio, handler))
    if shuffle and shuffle_buffer > 1:
        epoch_stages.append(_SampleShuffle(shuffle_buffer, seed))
        stages.append(epoch_stages[-1])
    stages += [
        wds.map(_Decode(with_audio), handler=handler),
        wds.batched(batch_size, collation_fn=list, partial=partial),
    ]
    pipeline = ShardPipeline(*stages)
    pipeline.shard_set = shard_set
    pipeline.epoch_stages = tuple(epoch_stages)
    samples = epoch_samples if epoch_samples is not None else shard_set.total_samples
    if mode == "resampled":
        streams = max(1, world_size) * max(1, num_workers)
        pipeline = pipeline.with_epoch(nbatches=math.ceil(samples / streams / batch_size))
    return pipeline.with_length(math.ceil(samples / batch_size), silent=True)


def make_loader(
    shard_dir: str | Path,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 2,
    mode: str = "epoch",
    **pipeline_options: Any,
) -> wds.WebLoader:
    """A torch DataLoader (webdataset's WebLoader) over `shard_pipeline`; batches come whole from the workers."""
    pipeline = shard_pipeline(
        shard_dir,
        batch_size=batch_size,
        shuffle=shuffle,
        mode=mode,
        num_workers=num_workers,
        **pipeline_options,
    )
    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
    loader.set_epoch = pipeline.set_epoch  # workers copy the pipeline at each epoch start
    return loader


__all__ = [
    "MODES",
    "ShardPipeline",
    "ShardSet",
    "UnsafeMemberError",
    "decode_members",
    "iter_raw_samples",
    "iter_records",
    "iter_shard",
    "make_loader",
    "shard_pipeline",
]
