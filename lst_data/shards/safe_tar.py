"""Tars from other people: every header is checked before a byte of member data is read or allocated.

- `_CheckedTarInfo` (tarfile's `tarinfo=` hook) refuses, while tarfile parses a header,
  what would make tarfile itself read a declared size: GNU sparse headers, and pax / GNU
  long-name headers over `MAX_EXTENDED_HEADER_BYTES` (our writer's are under 1 KiB).
- `check_member` then refuses links, directories and devices, pax-sparse members,
  names that are not `KEY.{flac,json,units.npy}` and members over the size cap of
  `ReadLimits` (JSON has its own, smaller cap: a parsed JSON can take ~30x its bytes).
- `scan_tar` is one sequential pass over a tar (bounded memory): its size and sha256 and
  every header checked, samples counted, no member data kept (what `validate` and
  `stats` use). `verify_shard` compares a tar with its sidecar (size, sha256, and with
  `count_samples` the scan's count): the tar is the one the sidecar describes, or
  `BadShardError`; readers check the count as they read (`sample_count_problem`).

webdataset's own tar reading (`tarfile_to_samples`) allocates a member's declared size;
the reader uses `iter_sample_members` instead.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lst_data.core.digests import file_sha256
from lst_data.core.errors import UserError
from lst_data.shards.layout import Sidecar, UnsafeMemberError, sidecar_path, split_member_name

MAX_EXTENDED_HEADER_BYTES = 64 * 1024
_EXTENDED_HEADER_TYPES = (
    tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
)  # fmt: skip
_READ_CHUNK = 1 << 20


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


def bad_shard(tar_path: str | Path, reason: object) -> BadShardError:
    return BadShardError(f"{Path(tar_path).name}: {reason}")


class _CheckedTarInfo(tarfile.TarInfo):
    """Refuses sparse and oversized extended headers before tarfile reads their declared size."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeMemberError(f"sparse member {self.name!r} (a GNU sparse header)")
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise UnsafeMemberError(
                f"extended header of {self.size} bytes (limit {MAX_EXTENDED_HEADER_BYTES}) before member {self.name!r}"
            )
        return super()._proc_member(tarfile_)


def open_tar(tar_path: str | Path, fileobj: BinaryIO | None = None) -> tarfile.TarFile:
    """A tar opened for reading with the header checks; `fileobj`: read it as one sequential stream."""
    if fileobj is not None:
        return tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_CheckedTarInfo)
    return tarfile.open(tar_path, mode="r:", tarinfo=_CheckedTarInfo)


def check_member(info: tarfile.TarInfo, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[str, str]:
    """(key, suffix) of a safe sample member; UnsafeMemberError for links, sparse, odd names, oversized."""
    if not info.isreg():
        kind = "link" if info.issym() or info.islnk() else "non-regular member"
        raise UnsafeMemberError(f"{kind} {info.name!r} in a shard")
    if info.sparse is not None:
        raise UnsafeMemberError(f"sparse member {info.name!r} (pax sparse, {info.size} bytes declared)")
    key, suffix = split_member_name(info.name)
    if info.size > limits.cap(suffix):
        raise UnsafeMemberError(f"member {info.name!r} of {info.size} bytes is over the {limits.cap(suffix)}-byte limit")
    return key, suffix


def iter_sample_members(
    tar: tarfile.TarFile, limits: ReadLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, suffix -> member) per sample, each member checked before the caller reads its data."""
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, tarfile.TarInfo] = {}
    while (info := tar.next()) is not None:
        tar.members = []  # keep memory flat on long shards
        member_key, suffix = check_member(info, limits)
        if member_key != key:
            if key is not None:
                yield key, members
            if member_key in seen:
                raise ValueError(f"sample {member_key!r} appears twice (its members are not together)")
            seen.add(member_key)
            key, members = member_key, {}
        if suffix in members:
            raise ValueError(f"duplicate member {info.name!r}")
        members[suffix] = info
    if key is not None:
        yield key, members


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
    with open(tar_path, "rb") as raw:
        hashing = _HashingReader(raw)
        with open_tar(tar_path, fileobj=hashing) as tar:  # type: ignore[arg-type]
            samples = sum(1 for _ in iter_sample_members(tar, limits))
        hashing.read_to_end()  # the end-of-archive blocks tarfile did not need
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


def read_sidecar(tar_path: Path) -> Sidecar:
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
    (`stats`) pass `count_samples`, which hashes during a header scan instead (~40 us a
    member: tarfile's header parsing).
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
    except (ValueError, OSError, EOFError, tarfile.TarError) as err:
        raise bad_shard(tar_path, err) from None
    if problems:
        raise bad_shard(tar_path, "; ".join(problems))
    return sidecar


def sample_count_problem(tar_path: Path, sidecar: Sidecar, samples: int) -> BadShardError | None:
    """The error for a tar that held `samples` samples when its sidecar says otherwise (None: they agree)."""
    problems = sidecar_mismatches(sidecar, sidecar.bytes, None, samples)
    return bad_shard(tar_path, problems[0]) if problems else None
