"""Tars from other people: every header is checked before a byte of member data is read or allocated.

Shards are read by `iter_members`, a tar reader for the contract's layout (a flat list of
regular files `KEY.{flac,json,units.npy}`) that parses each 512-byte header itself: the
standard library's `tarfile` spends about 20 us on a member's header (a `TarInfo` object,
every field decoded), a third of a sample's read time. Per header it
- verifies the header checksum (the unsigned sum, or the signed one, as tarfile accepts),
  and refuses a damaged header instead of ending the archive early (tarfile's behaviour);
- takes the name (with the ustar prefix), a pax `path`/`size` or a GNU long name from the
  extended header before it; an extended header over `MAX_EXTENDED_HEADER_BYTES` (our
  writer's are under 1 KiB) is refused before it is read, and so is a global pax header;
- refuses links, directories and devices, GNU sparse headers and pax sparse members,
  names that are not `KEY.{flac,json,units.npy}` and members over the size cap of
  `ReadLimits` (JSON has its own, smaller cap: a parsed JSON can take ~30x its bytes);
- then reads the member's data with one read (data and padding), or skips it.
`scan_tar` is one sequential pass over a tar (bounded memory): its size and sha256 and
every header checked, samples counted, no member data kept (what `validate` and `stats`
use). `verify_shard` compares a tar with its sidecar (size, sha256, and with
`count_samples` the scan's count): the tar is the one the sidecar describes, or
`BadShardError`; readers check the count as they read (`sample_count_problem`).

webdataset's own tar reading (`tarfile_to_samples`) allocates a member's declared size;
the readers use `iter_sample_members` instead.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol, cast

from lst_data.core.digests import file_sha256
from lst_data.core.errors import UserError
from lst_data.core.storage import StoragePath
from lst_data.format.layout import (
    MEMBER_SUFFIXES,
    Sidecar,
    UnsafeMemberError,
    sidecar_path,
    split_member_name,
)

MAX_EXTENDED_HEADER_BYTES = 64 * 1024
_READ_CHUNK = 1 << 20
_BLOCK = 512
_REGULAR_TYPES = frozenset(b"07\0")  # a file; "7" (contiguous file) is read as one, as tarfile does
_LINK_TYPES = frozenset(b"12")
_PAX_TYPES = frozenset(b"xX")  # POSIX and Solaris per-member extended headers
_GNU_LONG_NAME, _GNU_LONG_LINK, _GNU_SPARSE, _PAX_GLOBAL = b"LKSg"
_POSIX_MAGIC = b"ustar\x0000"
_SIGNED_SUM = struct.Struct("148b8x356b")
_SMALL_MEMBER = 1 << 16  # read with its padding in one call; larger ones skip the padding instead
_ZERO_BLOCK = bytes(_BLOCK)


@dataclass(frozen=True)
class ReadLimits:
    """What a reader accepts from a shard; raise the caps for very long utterances."""

    max_member_bytes: int = 64 * 2**20  # units or FLAC of one utterance (an hour of FLAC is ~60 MB)
    max_json_bytes: int = 4 * 2**20  # a sample's JSON (a 30 s utterance: ~10 kB)

    def cap(self, suffix: str) -> int:
        return self.max_json_bytes if suffix == "json" else self.max_member_bytes


DEFAULT_LIMITS = ReadLimits()


class BadShardError(UserError, ValueError):
    """A shard that is not what its sidecar describes, or cannot be read safely: `NAME: reason`."""


class DamagedTarError(ValueError):
    """A tar whose bytes are not a tar: a header that fails its checksum, data cut short."""


# What reading a hostile or damaged tar can raise (UnsafeMemberError, DamagedTarError and BadShardError are ValueErrors).
READ_ERRORS = (ValueError, OSError)


def bad_shard(tar_path: str | StoragePath, reason: object) -> BadShardError:
    return BadShardError(f"{Path(str(tar_path)).name}: {reason}")


class ByteStream(Protocol):
    """What the reader reads a tar from: an open file, or a wrapper that hashes what passes."""

    def read(self, size: int, /) -> bytes: ...


class TarMember(NamedTuple):
    key: str
    suffix: str
    data: bytes | None  # None: skipped unread


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _header_number(field: bytes, offset: int) -> int:
    """A numeric header field: octal digits, or base-256 (GNU) when its first bit is set."""
    if field[:1] and field[0] & 0x80:
        if field[0] != 0x80:  # 0xff: a negative number
            raise DamagedTarError(f"negative number in the tar header at byte {offset}")
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise DamagedTarError(f"invalid tar header at byte {offset} (field {field!r})") from None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # as tarfile decodes names


def _checked_header(block: bytes, offset: int) -> None:
    stored = _header_number(block[148:156], offset)
    unsigned = 256 + sum(block) - sum(block[148:156])  # the checksum field counts as eight spaces
    if stored != unsigned and stored != 256 + sum(_SIGNED_SUM.unpack_from(block)):
        raise DamagedTarError(f"tar header at byte {offset} fails its checksum (a damaged tar)")


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """The `LENGTH KEY=VALUE\\n` records of a pax extended header."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position]:
        space = data.find(b" ", position)
        length = int(data[position:space]) if space > position and data[position:space].isdigit() else 0
        record = data[space + 1 : position + length]
        if length < 1 or position + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise DamagedTarError(f"malformed pax header at byte {offset}")
        keyword, value = record[:-1].split(b"=", 1)
        records[_text(keyword)] = _text(value)
        position += length
    return records


def _read_exactly(stream: ByteStream, size: int, offset: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DamagedTarError(f"tar ends inside the member at byte {offset} (a truncated tar)")
    return data


def _skip(stream: ByteStream, size: int) -> None:
    if getattr(stream, "seekable", lambda: False)():
        cast(BinaryIO, stream).seek(size, 1)
        return
    while size > 0:  # a stream that must see every byte (hashing)
        size -= len(stream.read(min(size, _READ_CHUNK))) or size


def _read_extended_header(stream: ByteStream, kind: int, size: int, offset: int, extended: dict[str, str]) -> None:
    """Add a pax or GNU long-name header's settings (they apply to the next member) to `extended`."""
    if size > MAX_EXTENDED_HEADER_BYTES:
        raise UnsafeMemberError(f"extended header of {size} bytes (limit {MAX_EXTENDED_HEADER_BYTES}) at byte {offset}")
    data = _read_exactly(stream, _padded(size), offset + _BLOCK)[:size]
    if kind in _PAX_TYPES:
        extended.update(_pax_records(data, offset + _BLOCK))
    elif kind == _GNU_LONG_NAME:
        extended["path"] = _text(data.split(b"\0", 1)[0])


def _regular_member(block: bytes, kind: int, size: int, extended: dict[str, str], offset: int) -> tuple[str, int]:
    """The name and size of the member whose header is `block`, after the extended header before
    it; UnsafeMemberError for anything but a regular file the contract allows."""
    name = extended.get("path") or _text(block[:100].split(b"\0", 1)[0])
    if block[257:265] == _POSIX_MAGIC and block[345] and "path" not in extended:
        name = _text(block[345:500].split(b"\0", 1)[0]) + "/" + name
    if "size" in extended:
        size = _header_number(extended["size"].encode(), offset)
    if kind == _GNU_SPARSE:
        raise UnsafeMemberError(f"sparse member {name!r} (a GNU sparse header)")
    if kind == _PAX_GLOBAL:
        raise UnsafeMemberError(f"global pax header {name!r} (its settings would apply to every later member)")
    if kind not in _REGULAR_TYPES or (kind == 0 and name.endswith("/")):
        raise UnsafeMemberError(f"{'link' if kind in _LINK_TYPES else 'non-regular member'} {name!r} in a shard")
    if any(keyword.startswith("GNU.sparse.") for keyword in extended):
        raise UnsafeMemberError(f"sparse member {name!r} (pax sparse, {size} bytes declared)")
    return name, size


def iter_members(
    stream: ByteStream, limits: ReadLimits = DEFAULT_LIMITS, skip: Collection[str] = ()
) -> Iterator[TarMember]:
    """The members of a tar read sequentially from `stream`, each header checked before its data is read.

    Members whose suffix is in `skip` are not read (`data` None). UnsafeMemberError for what
    the contract forbids, DamagedTarError for bytes that are not a tar.
    """
    offset = 0
    extended: dict[str, str] = {}  # pax records, or a GNU long name, for the next member
    while True:
        block = stream.read(_BLOCK)
        if block == _ZERO_BLOCK:
            return  # the end-of-archive blocks
        if len(block) < _BLOCK:
            if block or not offset:
                raise DamagedTarError("empty file" if not offset else f"truncated tar header at byte {offset}")
            return  # a tar without end-of-archive blocks, which tarfile reads too
        _checked_header(block, offset)
        kind, size = block[156], _header_number(block[124:136], offset)
        if kind in _PAX_TYPES or kind in (_GNU_LONG_NAME, _GNU_LONG_LINK):
            _read_extended_header(stream, kind, size, offset, extended)
            offset += _BLOCK + _padded(size)
            continue
        offset += _BLOCK
        name, size = _regular_member(block, kind, size, extended, offset)
        extended = {}
        key, suffix = split_member_name(name)
        if size > limits.cap(suffix):
            raise UnsafeMemberError(f"member {name!r} of {size} bytes is over the {limits.cap(suffix)}-byte limit")
        padded = _padded(size)
        data: bytes | None
        if suffix in skip:
            _skip(stream, padded)
            data = None
        elif padded <= _SMALL_MEMBER:
            data = _read_exactly(stream, padded, offset)
            data = data[:size] if padded != size else data
        else:
            data = _read_exactly(stream, size, offset)
            _skip(stream, padded - size)
        offset += padded
        yield TarMember(key, suffix, data)


def iter_sample_members(
    stream: ByteStream, limits: ReadLimits = DEFAULT_LIMITS, skip: Collection[str] = ()
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, suffix -> bytes) per sample: its members, which must be together; skipped members are left out."""
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}
    suffixes: set[str] = set()
    for member in iter_members(stream, limits, skip):
        if member.key != key:
            if key is not None:
                yield key, members
            if member.key in seen:
                raise ValueError(f"sample {member.key!r} appears twice (its members are not together)")
            seen.add(member.key)
            key, members, suffixes = member.key, {}, set()
        if member.suffix in suffixes:
            raise ValueError(f"duplicate member {member.key}.{member.suffix!r}")
        suffixes.add(member.suffix)
        if member.data is not None:
            members[member.suffix] = member.data
    if key is not None:
        yield key, members


def open_shard(tar_path: str | Path) -> BinaryIO:
    """A local tar opened for `iter_sample_members` (a large buffer: few system calls per member)."""
    return open(tar_path, "rb", buffering=_READ_CHUNK)


class _HashingReader:
    """A read-only stream that hashes and counts what is read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if 0 <= size <= _READ_CHUNK else _READ_CHUNK)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def read_to_end(self) -> None:
        while self.read(_READ_CHUNK):
            pass


@dataclass(frozen=True)
class TarScan:
    """What one pass over a tar found: its size and sha256, and its number of samples."""

    bytes: int
    sha256: str
    samples: int


def scan_tar(tar_path: str | Path, limits: ReadLimits = DEFAULT_LIMITS) -> TarScan:
    """Size, sha256 and sample count of a tar in one sequential read; every header checked on the way."""
    with open_shard(tar_path) as raw:
        hashing = _HashingReader(raw)
        samples = sum(1 for _ in iter_sample_members(hashing, limits, skip=MEMBER_SUFFIXES))
        hashing.read_to_end()  # the end-of-archive blocks
    return TarScan(hashing.size, hashing.sha256.hexdigest(), samples)


def sidecar_mismatches(sidecar: Sidecar, size: int, sha256: str | None, samples: int | None = None) -> list[str]:
    """Where a tar (its size, sha256 when known, sample count when known) is not what its sidecar says."""
    problems = []
    if sidecar.bytes != size:
        problems.append(f"{size} bytes, sidecar says {sidecar.bytes}")
    elif sha256 is not None and sidecar.sha256 != sha256:
        problems.append("sha256 differs from the sidecar's (corrupted or replaced)")
    if samples is not None and sidecar.samples != samples:
        problems.append(f"{samples} samples, sidecar says {sidecar.samples}")
    return problems


def read_sidecar(tar_path: StoragePath) -> Sidecar:
    """The sidecar of `tar_path`; BadShardError when it is missing or malformed."""
    side = sidecar_path(tar_path)
    if not side.exists():
        raise bad_shard(tar_path, f"no sidecar {side.name} (an incomplete shard)")
    try:
        return Sidecar.read(side)
    except (OSError, ValueError) as err:
        raise bad_shard(tar_path, f"unreadable sidecar {side.name}: {err}") from None


def verify_shard(tar_path: Path, limits: ReadLimits = DEFAULT_LIMITS, *, count_samples: bool = False) -> Sidecar:
    """The sidecar of a tar whose size and sha256 are the sidecar's; else BadShardError.

    The hash is `hashlib.file_digest` (~1 GB/s). Readers count the samples as they read
    them (`sample_count_problem` at the end of the tar); tools that read no samples
    (`stats`) pass `count_samples`, which hashes during a header scan instead.
    """
    sidecar = read_sidecar(tar_path)
    size = tar_path.stat().st_size
    if size != sidecar.bytes:  # no need to read a tar of the wrong size
        raise bad_shard(tar_path, sidecar_mismatches(sidecar, size, None)[0])
    try:
        if count_samples:
            scan = scan_tar(tar_path, limits)
            problems = sidecar_mismatches(sidecar, scan.bytes, scan.sha256, scan.samples)
        else:
            problems = sidecar_mismatches(sidecar, size, file_sha256(tar_path))
    except READ_ERRORS as err:
        raise bad_shard(tar_path, err) from None
    if problems:
        raise bad_shard(tar_path, "; ".join(problems))
    return sidecar


def sample_count_problem(tar_path: StoragePath, sidecar: Sidecar, samples: int) -> BadShardError | None:
    """The error for a tar that held `samples` samples when its sidecar says otherwise (None: they agree)."""
    problems = sidecar_mismatches(sidecar, sidecar.bytes, None, samples)
    return bad_shard(tar_path, problems[0]) if problems else None
