"""Partitions: how a build splits its corpus so that workers, not the driver, hold the rows.

A build cuts its corpus into `count` partitions (a power of two) that follow the shard
order: with `shard.order = 'hash'`, partition p holds the ids whose sha1(seed:id) starts
in the p-th of `count` equal ranges of the digest space, so the shards are the
partitions' samples laid end to end, and a worker can write the final shards of its
partition once the driver has added up the partitions' sample counts. Every step stores
a table as a folder of per-partition Parquet files (`<table>.parquet/part-NNNNN.parquet`,
one large row group each; `pyarrow.parquet.read_table` reads the folder as one table)
beside one marker per partition (`parts/part-NNNNN.json`) that records the hash of
exactly the inputs the partition was made from. A resume reruns a partition only when
that hash changes, so a corpus edit reruns the partitions it touches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lst_data.core.storage import StoragePath, local_output, write_bytes_atomic

PARTS_FOLDER = "parts"  # per-partition markers of a step
# One row group per partition file: a reader's `take` then costs one chunk, not one per batch.
ROW_GROUP_ROWS = 1 << 20
# Files the listing is first spread over (open at once): up to this many partitions, one each.
ROUTE_BUCKETS = 256


def order_digest(seed: int, utterance_id: str) -> bytes:
    """The sort key of `shard.order = 'hash'`: sha1 of "seed:id" (ties broken by the id)."""
    return hashlib.sha1(f"{seed}:".encode() + utterance_id.encode("utf-8")).digest()


def part_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass(frozen=True)
class PartitionPlan:
    """How many partitions a build has and which one an id falls in (O(1) state on the driver)."""

    count: int
    seed: int

    def __post_init__(self) -> None:
        if self.count < 1 or self.count & (self.count - 1):
            raise ValueError(f"partition count must be a power of two, got {self.count}")

    @property
    def bits(self) -> int:
        return self.count.bit_length() - 1

    @property
    def names(self) -> list[str]:
        return [part_name(i) for i in range(self.count)]

    def assign(self, ids: Sequence[str]) -> np.ndarray:
        """The partition of each id: the top `bits` bits of its order digest (int64)."""
        if self.count == 1:
            return np.zeros(len(ids), dtype=np.int64)
        shift = 64 - self.bits
        return np.fromiter(
            (int.from_bytes(order_digest(self.seed, i)[:8], "big") >> shift for i in ids), dtype=np.int64
        )


def partition_count(rows: int, partition_rows: int, min_partitions: int, single: bool) -> int:
    """Partitions for `rows` utterances: the power of two that keeps each near `partition_rows`
    (at least `min_partitions`, so that small corpora still spread over the workers).

    A power of two changes rarely as a corpus grows, and a changed count reruns every step.
    `single` (one partition) is for orders the partitions cannot follow.
    """
    if single:
        return 1
    wanted = max(min_partitions, math.ceil(rows / partition_rows), 1)
    return 1 << (wanted - 1).bit_length()


def table_path(folder: StoragePath, table: str) -> StoragePath:
    """The folder of a partitioned table: `folder/<table>.parquet/`."""
    return folder / f"{table}.parquet"


def part_file(folder: StoragePath, table: str, part: str) -> StoragePath:
    return table_path(folder, table) / f"{part}.parquet"


def marker_path(folder: StoragePath, part: str) -> StoragePath:
    return folder / PARTS_FOLDER / f"{part}.json"


def write_part(table: pa.Table, path: StoragePath) -> None:
    """Write one partition file atomically (locally a dot name while written: dataset readers skip it)."""
    with local_output(path) as tmp:
        pq.write_table(table.combine_chunks(), tmp, row_group_size=ROW_GROUP_ROWS)


def write_json_atomic(path: StoragePath, data: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def read_marker(folder: StoragePath, part: str) -> dict[str, Any] | None:
    """A partition's marker, or None when it is missing or unreadable (the partition reruns)."""
    path = marker_path(folder, part)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def part_is_done(folder: StoragePath, part: str, inputs_hash: str, tables: Sequence[str]) -> dict[str, Any] | None:
    """The marker of a partition made from exactly `inputs_hash` whose tables all exist; else None."""
    marker = read_marker(folder, part)
    if marker is None or marker.get("hash") != inputs_hash:
        return None
    if not all(part_file(folder, t, part).is_file() for t in tables):
        return None
    return marker


def route_to_partitions(source: Path, plan: PartitionPlan, scratch: Path, batch_rows: int = 4096) -> Iterator[pa.Table]:
    """The rows of the Parquet file `source`, one partition at a time (each sorted by id).

    One pass spreads the rows over at most ROUTE_BUCKETS files (Arrow IPC streams, which write
    each batch as it comes, so the driver holds one batch); a bucket holds whole, consecutive
    partitions and is then read back alone. The driver holds one batch, then one bucket.
    """
    reader = pq.ParquetFile(source)
    schema = reader.schema_arrow
    buckets = min(plan.count, ROUTE_BUCKETS)
    per_bucket = plan.count // buckets
    scratch.mkdir(parents=True, exist_ok=True)
    paths = [scratch / f"bucket-{b:05d}.arrows" for b in range(buckets)]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(pa.ipc.new_stream(str(path), schema)) for path in paths]
        for batch in reader.iter_batches(batch_size=batch_rows):
            assignment = plan.assign(batch.column("id").to_pylist()) // per_bucket
            for bucket in np.unique(assignment):
                writers[bucket].write_batch(batch.filter(pa.array(assignment == bucket)))
    for bucket, path in enumerate(paths):
        with pa.ipc.open_stream(str(path)) as stream:
            rows = stream.read_all()
        path.unlink()
        assignment = plan.assign(rows.column("id").to_pylist())
        for index in range(bucket * per_bucket, (bucket + 1) * per_bucket):
            yield rows.filter(pa.array(assignment == index)).sort_by("id")


def remove_parts_beyond(folder: StoragePath, tables: Sequence[str], keep: Sequence[str]) -> None:
    """Delete partition files and markers not named in `keep` (a plan with fewer partitions), and
    temporary files of writers that died."""
    wanted = set(keep)
    for table in tables:
        for path in table_path(folder, table).glob("part-*.parquet"):
            if path.stem not in wanted:
                path.unlink()
        for path in table_path(folder, table).glob(".*.tmp"):
            path.unlink()
    for path in (folder / PARTS_FOLDER).glob("part-*.json"):
        if path.stem not in wanted:
            path.unlink()
