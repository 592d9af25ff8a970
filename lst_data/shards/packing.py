"""Pack encoded samples into shards: at most `samples_per_shard` samples and `max_shard_bytes` bytes."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import NamedTuple, TypeVar

from lst_data.audio import AudioError
from lst_data.core.rejects import Reject
from lst_data.format.contract import STAGE
from lst_data.format.records import SampleRecord
from lst_data.shards.members import AudioSource, EncodedSample, encode_sample
from lst_data.shards.tar_io import tar_file_size
from lst_data.shards.validation import CheckedRecord

Item = TypeVar("Item")


class PushBackIterator(Iterator[Item]):
    """An iterator that takes records back (a shard that turned out full, or not kept after all)."""

    def __init__(self, source: Iterator[Item]) -> None:
        self.source = source
        self.pending: collections.deque[Item] = collections.deque()

    def push_back(self, records: list[Item]) -> None:
        self.pending.extendleft(reversed(records))

    def __next__(self) -> Item:
        return self.pending.popleft() if self.pending else next(self.source)


def sample_audio(record: SampleRecord, audio_source: AudioSource | None, include_audio: bool) -> bytes | None:
    if not include_audio:
        return None
    if record.audio is not None:
        return record.audio
    if audio_source is None:
        raise ValueError("shard.include_audio is set but write_shards got no audio_source")
    return audio_source(record)


class ShardPacker:
    """Where shards close: at `max_samples` samples, or before a sample that would take the tar past
    `max_bytes` (0: no limit); a shard always takes its first sample, however large."""

    def __init__(self, max_samples: int, max_bytes: int) -> None:
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.samples = self.bytes = 0

    def fits(self, sample_bytes: int) -> bool:
        """Whether a sample of `sample_bytes` (member headers + data) still goes into the open shard."""
        return not (self.samples and self.max_bytes and tar_file_size(self.bytes + sample_bytes) > self.max_bytes)

    def add(self, sample_bytes: int) -> bool:
        """Put a sample into the open shard; True when that made the shard full."""
        self.samples += 1
        self.bytes += sample_bytes
        return self.samples >= self.max_samples

    def close(self) -> None:
        self.samples = self.bytes = 0


class PackedShard(NamedTuple):
    """A shard's checked records and their encoded samples, in the same order."""

    records: list[CheckedRecord]
    samples: list[EncodedSample]


def next_shard(
    stream: PushBackIterator[CheckedRecord],
    max_samples: int,
    max_bytes: int,
    audio_source: AudioSource | None,
    include_audio: bool,
    rejects: list[Reject],
) -> PackedShard:
    """Encode samples until the shard is full by count or bytes (at least one sample per shard).

    The record that would overflow `max_bytes` goes back onto the stream for the next shard;
    a record whose audio cannot be read becomes an `audio_unreadable` reject.
    """
    shard = PackedShard([], [])
    packer = ShardPacker(max_samples, max_bytes)
    for checked in stream:
        try:
            audio = sample_audio(checked.record, audio_source, include_audio)
        except AudioError as err:
            rejects.append(Reject(checked.record.id, STAGE, "audio_unreadable", str(err)))
            continue
        sample = encode_sample(checked.record, audio)
        sample_bytes = sample.tar_bytes
        if not packer.fits(sample_bytes):
            stream.push_back([checked])
            break
        shard.records.append(checked)
        shard.samples.append(sample)
        if packer.add(sample_bytes):
            break
    return shard
