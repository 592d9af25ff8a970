"""Deterministic tar writing: the same samples give the same tar bytes on any machine.

`webdataset.TarWriter` writes each sample's members sorted by name, with a fixed mtime,
mode and owner (uid/gid 0, empty user and group names), in tarfile's default PAX format.
The tar goes to a temporary name and is renamed when complete; its size and sha256 are
counted while it is written, so the sidecar needs no second read.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import BinaryIO

import webdataset as wds

from lst_data.core.storage import StoragePath, local_output
from lst_data.shards.members import TAR_BLOCK, EncodedSample

# Fixed tar header fields: the time and owner of the writing machine must not leak into the bytes.
SHARD_MTIME = 0
MEMBER_MODE = 0o444
_TAR_RECORD = 10240  # tarfile pads every archive to a multiple of this


def tar_file_size(member_bytes: int) -> int:
    """Size of a tar holding `member_bytes` of headers + data: end-of-archive blocks, padded to a record."""
    return math.ceil((member_bytes + 2 * TAR_BLOCK) / _TAR_RECORD) * _TAR_RECORD


class _HashingWriter:
    """A write-only file that hashes and counts what tarfile writes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


def write_tar(path: StoragePath, samples: Iterable[EncodedSample]) -> tuple[int, str]:
    """Write the samples' members deterministically to `path` (a local file or an object), never
    seen half written; (bytes, sha256)."""
    with local_output(path) as tmp, open(tmp, "wb") as raw:
        hashing = _HashingWriter(raw)
        with wds.TarWriter(hashing, user="", group="", mode=MEMBER_MODE, mtime=SHARD_MTIME, encoder=False) as tar:
            for sample in samples:
                tar.write({"__key__": sample.key, **sample.members})
    return hashing.size, hashing.sha256.hexdigest()
