"""A sample's tar members, as bytes: `KEY.json`, `KEY.units.npy` and, optionally, `KEY.flac`.

Same record, same bytes: the JSON is canonical (sorted keys, no spaces, no NaN), units are
the bytes `np.save` writes for a little-endian int16 array, FLAC is 16-bit PCM (libFLAC
writes no time stamp).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from lst_data.audio import read_audio
from lst_data.format.keys import sanitize_key
from lst_data.format.records import SampleRecord

AudioSource = Callable[[SampleRecord], bytes]
TAR_BLOCK = 512


def sample_json_bytes(record: SampleRecord) -> bytes:
    return json.dumps(
        record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@functools.lru_cache(maxsize=4096)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The header `np.save` writes before a C-ordered little-endian int16 array of `shape`.

    It depends on the shape alone, so it is made once per utterance length: `np.save`
    itself costs several times what copying the units does.
    """
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype="<i2"), allow_pickle=False)
    return buffer.getvalue()[: buffer.tell() - 2 * math.prod(shape)]


def units_npy_bytes(units: np.ndarray) -> bytes:
    """`np.save` of the units as a little-endian int16 array, byte for byte."""
    array = np.ascontiguousarray(units, dtype="<i2")
    return _npy_header(array.shape) + array.tobytes()


def flac_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit FLAC of mono float samples (libFLAC output holds no time stamp)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


@dataclass(frozen=True)
class FlacFromPaths:
    """Audio source for `write_shards`: reads each record's audio file and encodes FLAC."""

    paths: dict[str, str]

    def __call__(self, record: SampleRecord) -> bytes:
        samples, rate = read_audio(self.paths[record.id], record.sample_rate)
        return flac_bytes(samples, rate)


@dataclass(frozen=True)
class EncodedSample:
    """A sample's tar members: suffix (`json`, `units.npy`, `flac`) -> bytes."""

    record_id: str
    key: str
    duration: float
    members: dict[str, bytes]

    @property
    def tar_bytes(self) -> int:
        """Bytes the members take in a tar: a header block each (two more with a PAX long name) + padded data."""
        return sum(
            TAR_BLOCK * (1 if len(f"{self.key}.{suffix}") <= 100 else 3) + math.ceil(len(data) / TAR_BLOCK) * TAR_BLOCK
            for suffix, data in self.members.items()
        )


def encode_sample(record: SampleRecord, audio: bytes | None) -> EncodedSample:
    members = {"json": sample_json_bytes(record), "units.npy": units_npy_bytes(record.units)}
    if audio is not None:
        members["flac"] = audio
    return EncodedSample(record.id, sanitize_key(record.id), record.duration, members)


def content_digest(samples: Iterable[EncodedSample]) -> str:
    """sha256 over the samples' JSON and units members (name, length, bytes), audio excluded.

    What resume compares against a sidecar's `content_sha256`: it needs no audio decoding.
    """
    digest = hashlib.sha256()
    for sample in samples:
        for suffix in sorted(sample.members):
            if suffix != "flac":
                data = sample.members[suffix]
                name = f"{sample.key}.{suffix}"
                digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()
