"""Deterministic tar writing: the same samples give the same tar bytes on any machine.

The bytes are those `webdataset.TarWriter` (which our shards were first written with)
makes through `tarfile` in its default PAX format: each sample's members sorted by name,
each a header with a fixed mtime, mode and owner (uid/gid 0, empty user and group names)
then its data padded to a 512-byte block; two zero blocks end the archive, which is
padded to a 10240-byte record. Headers are made here, not by `tarfile.TarInfo` (about
20 us a member, more than the rest of writing it): every field but the name, the size and
the checksum is the same in every header. The tar goes to a temporary name and is renamed
when complete; its size and sha256 are counted while it is written, so the sidecar needs
no second read.
"""

from __future__ import annotations

import hashlib
import math
import tarfile
from collections.abc import Iterable

from lst_data.core.storage import StoragePath, local_output
from lst_data.shards.members import TAR_BLOCK, EncodedSample

# Fixed tar header fields: the time and owner of the writing machine must not leak into the bytes.
SHARD_MTIME = 0
MEMBER_MODE = 0o444
_TAR_RECORD = 10240  # tarfile pads every archive to a multiple of this
_NAME_FIELD = slice(0, 100)
_SIZE_FIELD = slice(124, 136)
_CHECKSUM_FIELD = slice(148, 156)
_MAX_USTAR_SIZE = 8**11 - 1  # 11 octal digits; a larger member needs a pax size record


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, SHARD_MTIME, MEMBER_MODE, "", ""
    return info


# A member header with an empty name and size 0, made by tarfile itself; a member's header is
# this with its name, size and checksum filled in.
_BLANK_HEADER = _member_info("", 0).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
_BLANK_CHECKSUM = sum(_BLANK_HEADER[: _CHECKSUM_FIELD.start]) + sum(_BLANK_HEADER[_CHECKSUM_FIELD.stop :]) + 8 * ord(" ")
_BLANK_SIZE_SUM = sum(_BLANK_HEADER[_SIZE_FIELD])


def member_header(name: str, size: int) -> bytes:
    """The header block(s) `tarfile` writes in PAX format for a member `name` of `size` bytes."""
    if not (name.isascii() and len(name) <= _NAME_FIELD.stop and size <= _MAX_USTAR_SIZE):
        # pax records for a long or non-ASCII name or a huge size: tarfile's rare case, left to it
        return _member_info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    raw_name = name.encode("ascii")
    size_field = b"%011o\0" % size
    checksum = _BLANK_CHECKSUM + sum(raw_name) + sum(size_field) - _BLANK_SIZE_SUM
    return b"".join((
        raw_name,
        bytes(_NAME_FIELD.stop - len(raw_name)),
        _BLANK_HEADER[_NAME_FIELD.stop : _SIZE_FIELD.start],
        size_field,
        _BLANK_HEADER[_SIZE_FIELD.stop : _CHECKSUM_FIELD.start],
        b"%06o\0 " % checksum,
        _BLANK_HEADER[_CHECKSUM_FIELD.stop :],
    ))


def sample_tar_bytes(sample: EncodedSample) -> bytes:
    """A sample's members as they stand in the tar: header, data, padding, by member name."""
    parts: list[bytes] = []
    for suffix in sorted(sample.members):
        data = sample.members[suffix]
        parts += (member_header(f"{sample.key}.{suffix}", len(data)), data, bytes(-len(data) % TAR_BLOCK))
    return b"".join(parts)


def tar_file_size(member_bytes: int) -> int:
    """Size of a tar holding `member_bytes` of headers + data: end-of-archive blocks, padded to a record."""
    return math.ceil((member_bytes + 2 * TAR_BLOCK) / _TAR_RECORD) * _TAR_RECORD


def write_tar(path: StoragePath, samples: Iterable[EncodedSample]) -> tuple[int, str]:
    """Write the samples' members deterministically to `path` (a local file or an object), never
    seen half written; (bytes, sha256)."""
    sha256 = hashlib.sha256()
    size = 0
    with local_output(path) as tmp, open(tmp, "wb") as raw:
        for sample in samples:
            chunk = sample_tar_bytes(sample)
            sha256.update(chunk)
            raw.write(chunk)
            size += len(chunk)
        end = bytes(tar_file_size(size) - size)
        sha256.update(end)
        raw.write(end)
    return size + len(end), sha256.hexdigest()
