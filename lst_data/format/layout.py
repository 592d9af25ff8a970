"""Names of the files in a shard directory and of the members inside a shard tar.

One place knows the layout, so the writer, the reader, `lst-data validate` and the
benchmarks cannot drift apart. Member names are checked before a tar's content is
trusted: shards come from other people, and a tar may hold absolute paths, `..`, links
or members a careless reader would unpickle.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

from lst_data.core.storage import StoragePath, location, write_bytes_atomic
from lst_data.format.records import parse_json
from lst_data.format.schema import validation_errors

INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
DATASET_FILE = "dataset.json"
MAX_SIDECAR_BYTES = 64 * 1024  # ours are ~700 bytes
MAX_DATASET_BYTES = 64 * 2**20  # config, hashes and patch-length histograms: ours are ~100 kB

# The only members a sample may have, in the order they are written (sorted by name).
MEMBER_SUFFIXES = ("flac", "json", "units.npy")
_MEMBER = re.compile(r"(?P<key>[A-Za-z0-9_-]+)\.(?P<suffix>flac|json|units\.npy)")
_SHARD = re.compile(r"(?P<split>[A-Za-z0-9_-]+)-(?P<index>\d{6})\.tar")


class UnsafeMemberError(ValueError):
    """A tar member that is a link, a directory, an absolute or `..` path, or not a sample member."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def sidecar_path(tar_path: StoragePath) -> StoragePath:
    return tar_path.with_suffix(".json")


@overload
def shard_paths(out_dir: Path, split: str | None = None) -> list[Path]: ...
@overload
def shard_paths(out_dir: str | StoragePath, split: str | None = None) -> list[StoragePath]: ...
def shard_paths(out_dir: str | StoragePath, split: str | None = None) -> list[Path] | list[StoragePath]:
    """The shard tars of `out_dir` (of one split, or all), sorted by split and index."""
    found = []
    for path in location(out_dir).glob("*.tar"):
        match = _SHARD.fullmatch(path.name)
        if match and (split is None or match["split"] == split):
            found.append((match["split"], int(match["index"]), path))
    return [path for _, _, path in sorted(found)]


def shard_split(tar_path: StoragePath) -> str:
    match = _SHARD.fullmatch(tar_path.name)
    if not match:
        raise ValueError(f"{tar_path.name} is not a shard name ({{split}}-NNNNNN.tar)")
    return match["split"]


def shard_index(tar_path: StoragePath) -> int:
    match = _SHARD.fullmatch(tar_path.name)
    if not match:
        raise ValueError(f"{tar_path.name} is not a shard name ({{split}}-NNNNNN.tar)")
    return int(match["index"])


def split_member_name(name: str) -> tuple[str, str]:
    """(key, suffix) of a sample member; UnsafeMemberError for anything else."""
    if name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise UnsafeMemberError(f"unsafe tar member path {name!r}")
    match = _MEMBER.fullmatch(name)
    if not match:
        raise UnsafeMemberError(
            f"unexpected tar member {name!r} (allowed: KEY.{{{','.join(MEMBER_SUFFIXES)}}})"
        )
    return match["key"], match["suffix"]


@dataclass(frozen=True)
class Sidecar:
    """What `OUT/{split}-NNNNNN.json` says about its tar (schemas/sidecar.v1.json)."""

    schema_version: int
    toolkit_version: str
    split: str
    shard: str
    index: int
    samples: int
    first_id: str
    last_id: str
    duration_seconds: float
    hours: float
    bytes: int
    sha256: str
    config_hash: str
    content_sha256: str  # sha256 of the samples' JSON + units members: what resume compares

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: StoragePath) -> Sidecar:
        """The sidecar at `path`; ValueError unless it is a bounded JSON object of schemas/sidecar.v1.json."""
        return cls(**read_json_record(path, "sidecar", MAX_SIDECAR_BYTES))


def read_json_record(path: StoragePath, schema: str, max_bytes: int) -> dict[str, Any]:
    """A JSON file of one of our schemas (sidecar, dataset), read from someone else's directory.

    Refused before parsing when over `max_bytes` (checked on the open file, so a huge file is
    never read); ValueError naming the first schema violations.
    """
    with path.open("rb") as handle:
        data = parse_json(handle.read(max_bytes + 1), max_bytes=max_bytes, what=path.name)
    if not isinstance(data, dict):
        raise ValueError(f"not a {schema} record: a JSON {type(data).__name__}, not an object")
    try:
        errors = validation_errors(data, schema)
    except RecursionError:  # the schema checkers recurse into values nested ~1000 deep
        raise ValueError(f"not a {schema} record: values nested too deeply") from None
    if errors:
        more = f" (+{len(errors) - 2} more)" if len(errors) > 2 else ""
        raise ValueError(f"not a {schema} record: {'; '.join(e[:200] for e in errors[:2])}{more}")
    return data


def read_dataset(shard_dir: str | StoragePath) -> dict[str, Any]:
    """A shard set's dataset.json (a local folder or a URL), bounded and checked against
    schemas/dataset.v1.json. FileNotFoundError when the build has not written it (it is
    written last); ValueError naming what is wrong with it."""
    return read_json_record(location(shard_dir) / DATASET_FILE, "dataset", MAX_DATASET_BYTES)


def write_json_atomic(path: StoragePath, data: Any) -> None:
    """Sorted, indented JSON, never seen half written (a local file or an object)."""
    write_bytes_atomic(path, (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
