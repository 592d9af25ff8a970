"""Checks behind `lst-data validate`: is a shard directory what the contract says?

Per shard: the sidecar exists, its sha256, byte size and sample count match the tar;
every member is a regular file with a safe sample name. Per sample: the JSON validates
against schemas/sample.v1.json, units are 1-D int16 below the codebook size k, word /
BPE / silence spans are monotonic and inside [0, n_frames), words and silences tile the
frames, each word's pieces tile the word, and len(units) agrees with the duration within
the tolerance the shards were written with.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from lst_data.core.schemas import validation_errors
from lst_data.shards.contract import DEFAULT_FRAME_TOLERANCE, record_problems
from lst_data.shards.layout import (
    DATASET_FILE,
    INDEX_FILE,
    Sidecar,
    UnsafeMemberError,
    shard_paths,
    sidecar_path,
)
from lst_data.shards.reader import decode_members, iter_raw_samples


@dataclass(frozen=True)
class Problem:
    where: str  # shard name, or shard:sample id
    what: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frame_tolerance(shard_dir: Path) -> int:
    dataset = shard_dir / DATASET_FILE
    if dataset.exists():
        return int(
            json.loads(dataset.read_text())["config"]["shard"].get("frame_tolerance", DEFAULT_FRAME_TOLERANCE)
        )
    return DEFAULT_FRAME_TOLERANCE


def check_shard(tar_path: Path, frame_tolerance: int = DEFAULT_FRAME_TOLERANCE) -> Iterator[Problem]:
    name = tar_path.name
    side = sidecar_path(tar_path)
    sidecar = None
    if not side.exists():
        yield Problem(name, f"no sidecar {side.name}")
    else:
        sidecar = Sidecar.read(side)
        errors = validation_errors(sidecar.to_json(), "sidecar")
        for error in errors:
            yield Problem(side.name, error)
        if sidecar.sha256 != file_sha256(tar_path):
            yield Problem(name, "sha256 differs from the sidecar's (corrupted or replaced)")
        if sidecar.bytes != tar_path.stat().st_size:
            yield Problem(name, f"{tar_path.stat().st_size} bytes, sidecar says {sidecar.bytes}")
    samples = 0
    try:
        for key, members in iter_raw_samples(tar_path):
            samples += 1
            where = f"{name}:{key}"
            try:
                data = json.loads(members["json"])
                for error in validation_errors(data, "sample"):
                    yield Problem(where, f"schema: {error}")
                record = decode_members(key, members)
            except (KeyError, ValueError) as err:
                yield Problem(where, f"undecodable sample: {err}")
                continue
            for problem in record_problems(record, frame_tolerance):
                yield Problem(where, problem)
    except UnsafeMemberError as err:
        yield Problem(name, f"unsafe member: {err}")
        return
    except (tarfile.TarError, OSError, EOFError) as err:
        yield Problem(name, f"unreadable tar: {err}")
        return
    if sidecar is not None and sidecar.samples != samples:
        yield Problem(name, f"{samples} samples, sidecar says {sidecar.samples}")


def check_dir(shard_dir: str | Path) -> Iterator[Problem]:
    """Every problem in a shard directory; none means it satisfies the contract."""
    shard_dir = Path(shard_dir)
    tars = shard_paths(shard_dir)
    if not tars:
        yield Problem(str(shard_dir), "no shards")
        return
    tolerance = _frame_tolerance(shard_dir)
    total = 0
    for tar_path in tars:
        yield from check_shard(tar_path, tolerance)
        side = sidecar_path(tar_path)
        total += Sidecar.read(side).samples if side.exists() else 0
    index = shard_dir / INDEX_FILE
    if index.exists() and pq.read_metadata(index).num_rows != total:
        yield Problem(INDEX_FILE, f"{pq.read_metadata(index).num_rows} rows, sidecars count {total} samples")
