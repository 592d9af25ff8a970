"""Read shards back as `SampleRecord`s, checked: the plain iterator of tools and `load_records`.

The training pipeline (webdataset, torch DataLoader) is `lst_data.format.loader`; it
reads tars through this module. This module imports neither webdataset nor torch, so the
`lst-data` inspection commands stay small (importing torch alone takes ~800 MB of RSS here).

Security: shards come from other people (see `lst_data.format.safe_tar`). By default each
tar is first verified against its sidecar (size and sha256: one extra sequential read;
the sample count as it is read; `verify=False` opts out for speed). Only the members the contract names
are read (`KEY.json`, `KEY.units.npy`, `KEY.flac`); a link, a sparse or oversized member
(`ReadLimits`), a member with any other name, an absolute or `..` path is refused before
its data is read. JSON is parsed with `orjson` under a byte cap and decoded by the strict
`SampleRecord.from_json`, units by a strict int16 `.npy` parser (anything else only when its
header accounts for its bytes, `allow_pickle=False`), FLAC stays bytes. No webdataset
auto-decoder runs, so no `.pyd`/`.pickle` member can ever be unpickled. Every problem is a
`BadShardError` "NAME: reason", handled by the error policy (`handler`): raise (default)
or `SkipAndCount`.

"""


from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lst_data.core.storage import StoragePath, local_input, location
from lst_data.format.keys import sanitize_key
from lst_data.format.layout import (
    DATASET_FILE,
    UnsafeMemberError,
    read_dataset,
    shard_paths,
    sidecar_path,
)
from lst_data.format.records import SampleRecord, parse_sample_json, sample_json_id
from lst_data.format.safe_tar import (
    DEFAULT_LIMITS,
    READ_ERRORS,
    BadShardError,
    ReadLimits,
    bad_shard,
    iter_sample_members,
    open_shard,
    read_sidecar,
    sample_count_problem,
    verify_shard,
)

log = logging.getLogger(__name__)

# What np.save writes for a 1-D little-endian int16 array (format 1.0): parsed without numpy's
# header parser (ast.literal_eval, about a third of a sample's decode time). Any other .npy is
# read with numpy's header parser and accepted only when the header's shape accounts for
# exactly the bytes that follow (np.load would allocate the declared shape first).
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_NPY_INT16_HEADER = re.compile(rb"\{'descr': '<i2', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")


def load_units(data: bytes) -> np.ndarray:
    """The array of a `KEY.units.npy` member (never unpickles, never allocates more than `data` holds)."""
    if data[:8] == _NPY_MAGIC:
        header_end = 10 + int.from_bytes(data[8:10], "little")
        match = _NPY_INT16_HEADER.fullmatch(data[10:header_end])
        if match and len(data) == header_end + 2 * int(match[1]):
            return np.frombuffer(data, dtype="<i2", offset=header_end).copy()
    stream = io.BytesIO(data)
    try:
        read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(stream))
        if read_header is None:
            raise ValueError("unsupported .npy format version")
        shape, _, dtype = read_header(stream)
    except (ValueError, SyntaxError, TypeError) as err:
        raise ValueError(f"units are not a .npy array ({err})") from None
    if dtype.hasobject:
        raise ValueError("units .npy holds Python objects (would need allow_pickle)")
    if len(data) - stream.tell() != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"units .npy header declares shape {shape} of {dtype}, the member holds other bytes")
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_members(
    key: str, members: dict[str, bytes], *, with_audio: bool = True, limits: ReadLimits = DEFAULT_LIMITS
) -> SampleRecord:
    """The record of one sample from its member bytes (suffix -> bytes); ValueError when it is malformed."""
    missing = [s for s in ("json", "units.npy") if s not in members]
    if missing:
        raise ValueError(f"sample {key!r} lacks {', '.join(missing)}")
    data = parse_sample_json(members["json"], max_bytes=limits.max_json_bytes, what=f"{key}.json")
    sample_id = sample_json_id(data)
    if sample_id is None or sanitize_key(str(sample_id)) != key:
        raise ValueError(f"sample {key!r}: its JSON id does not map to the member key")
    units = load_units(members["units.npy"])
    return SampleRecord.from_parsed(data, units, audio=members.get("flac") if with_audio else None)


def iter_raw_samples(
    tar_path: str | Path, *, with_audio: bool = True, limits: ReadLimits = DEFAULT_LIMITS
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, suffix -> bytes) per sample of one tar; every header is checked before its data is read.

    Not verified against the sidecar (`iter_shard` does that): this is the raw layer.
    """
    with open_shard(tar_path) as stream:
        yield from iter_sample_members(stream, limits, skip=() if with_audio else ("flac",))


def listed_shards(shard_dir: str | StoragePath, split: str | None = None) -> tuple[list[StoragePath], dict[str, Any] | None]:
    """The tars of `shard_dir` (one split or all) and its dataset.json; BadShardError when they disagree.

    dataset.json (written last) lists the shards of its split: a directory missing some of
    them, or holding others, is refused before anything is read. Without dataset.json (an
    unfinished directory, or one from an older toolkit) nothing can be compared: a warning.
    """
    folder = location(shard_dir)
    tars = shard_paths(folder, split)
    try:
        dataset = read_dataset(folder)
    except FileNotFoundError:
        log.warning("%s has no %s: cannot tell whether all its shards are here", folder, DATASET_FILE)
        return tars, None
    except (OSError, ValueError) as err:
        raise BadShardError(f"{DATASET_FILE}: {err}") from None
    if split in (None, dataset["split"]):
        listed, present = set(dataset["shards"]), {t.name for t in shard_paths(folder, dataset["split"])}
        if listed != present:
            missing, unlisted = sorted(listed - present), sorted(present - listed)
            raise BadShardError(
                f"{DATASET_FILE} lists {len(listed)} shards, {len(present)} are in {folder}"
                f" (missing: {', '.join(missing[:3]) or '-'}; not listed: {', '.join(unlisted[:3]) or '-'})"
            )
    return tars, dataset


def iter_shard(
    tar_path: str | StoragePath,
    *,
    with_audio: bool = True,
    verify: bool = True,
    limits: ReadLimits = DEFAULT_LIMITS,
    scan_first: bool = False,
) -> Iterator[SampleRecord]:
    """Records of one tar, in order; BadShardError (shard name and reason) for anything wrong with it.

    `verify` (default) first checks the tar against its sidecar (size, then sha256: one
    extra sequential read at ~1 GB/s) and, at its end, the number of samples read against
    the sidecar's. `verify=False` skips both for speed and trusts the tar (every header,
    member and JSON is still checked). `scan_first` (with `verify`) checks every header
    and the count before the first sample, for callers that may stop early (`show`).
    """
    shard = location(tar_path)
    try:
        with local_shard(shard) as local:
            sidecar = verify_shard(local, limits, count_samples=scan_first) if verify else None
            samples = 0
            for key, members in iter_raw_samples(local, with_audio=with_audio, limits=limits):
                samples += 1
                try:
                    yield decode_members(key, members, with_audio=with_audio, limits=limits)
                except ValueError as err:
                    raise bad_shard(shard, f"sample {key}: {err}") from None
            miscount = sidecar and sample_count_problem(shard, sidecar, samples)
            if miscount:
                raise miscount
    except BadShardError:
        raise
    except READ_ERRORS as err:
        raise bad_shard(shard, err) from None


def local_shard(tar_path: StoragePath) -> contextlib.AbstractContextManager[Path]:
    """A tar and its sidecar as local files for the block: a shard on object storage is downloaded
    once into the system temp dir (then verified and read like a local one) and removed after."""
    return local_input(tar_path, sidecar_path(tar_path))


def reraise(err: Exception) -> bool:
    """Error policy "fail" (the default): the bad shard's BadShardError ends the reading (as `wds.reraise_exception`)."""
    raise err


def iter_records(
    shard_dir: str | Path,
    *,
    split: str | None = None,
    with_audio: bool = True,
    verify: bool = True,
    limits: ReadLimits = DEFAULT_LIMITS,
    handler: Callable[[Exception], bool] = reraise,
    scan_first: bool = False,
) -> Iterator[SampleRecord]:
    """Every record of every shard in `shard_dir` (one split or all), in shard order.

    A bad shard (see `iter_shard`) goes to `handler`, as in webdataset: the default raises
    its BadShardError; `SkipAndCount()` logs it, counts it and goes on with the next shard;
    a handler that returns False stops the iteration. `scan_first`: see `iter_shard`.
    """
    for tar_path in listed_shards(shard_dir, split)[0]:
        try:
            yield from iter_shard(
                tar_path, with_audio=with_audio, verify=verify, limits=limits, scan_first=scan_first
            )
        except BadShardError as err:
            if not handler(err):
                return


class SkipAndCount:
    """Error policy "skip and count": each bad shard is logged (name and reason) and counted; reading goes on.

    In DataLoader workers each worker counts its own (the log lines reach the trainer's log).
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    @property
    def count(self) -> int:
        return len(self.problems)

    def __call__(self, err: Exception) -> bool:
        self.problems.append(str(err))
        log.warning("skipped bad shard data: %s", err)
        return True


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
        tars, _ = listed_shards(shard_dir, split)
        if not tars:
            raise FileNotFoundError(f"no shards{f' of split {split!r}' if split else ''} in {shard_dir}")
        counts = [read_sidecar(tar_path).samples for tar_path in tars]
        return cls(tuple(str(t) for t in tars), tuple(counts))


__all__ = [
    "BadShardError",
    "ReadLimits",
    "ShardSet",
    "sample_count_problem",
    "SkipAndCount",
    "UnsafeMemberError",
    "decode_members",
    "iter_raw_samples",
    "iter_records",
    "iter_shard",
    "listed_shards",
    "reraise",
    "verify_shard",
]
