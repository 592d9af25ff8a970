"""The shard step of a partitioned build: workers join, check, encode and write; the driver plans.

1. Encode (one task per partition, in workers): join the partition's four stage tables,
   check every record against the contract, encode its tar members (and FLAC), and store
   them in shard order as `RUN/encode/samples.parquet/part-NNNNN.parquet` with the
   partition's rejects, its tally and a marker. A partition whose inputs did not change
   keeps its encoded samples.
2. Plan (the driver): read only the partitions' member sizes, one partition at a time,
   and cut the concatenated sample sequence into shards exactly where a single writer
   would (`ShardPacker`); a shard may span partitions.
3. Write (one task per shard, in workers): read the shard's slices of the encoded
   partitions and write the tar and sidecar, or keep an earlier shard with the same
   content (`lst_data.shards.resume`).
4. Merge (the driver): `index.parquet` streamed from the partitions' small columns,
   `dataset.json` from the partitions' tallies, `rejects.parquet`, stale shards removed.

The shards are byte for byte those of `write_shards` over the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lst_data.audio import AudioError, changed_since_ingest
from lst_data.config import RunConfig
from lst_data.core.partitions import marker_path, part_file, write_json_atomic, write_part
from lst_data.core.rejects import Reject, read_rejects, sorted_rejects_table, write_rejects
from lst_data.core.runner import PartitionWorker
from lst_data.core.storage import StoragePath, local_output, location, read_parquet
from lst_data.core.tables import INDEX_SCHEMA
from lst_data.format.contract import STAGE
from lst_data.format.layout import INDEX_FILE, REJECTS_FILE, shard_name
from lst_data.shards.join import JoinTables, Provenance, join_records
from lst_data.shards.members import EncodedSample, FlacFromPaths, encode_sample
from lst_data.shards.packing import ShardPacker, sample_audio
from lst_data.shards.resume import earlier_shard, remove_stale_shards, remove_unfinished, same_samples
from lst_data.shards.summary import ShardTally, write_dataset_json
from lst_data.shards.validation import checked_records
from lst_data.shards.writer import ShardReport, shard_config_hash, write_shard_files

ENCODED_TABLE = "samples"
INDEX_COLUMNS = ["id", "key", "duration", "n_units", "n_words", "n_bpe", "speaker"]
MEMBER_COLUMNS = {"json": "json", "units.npy": "units_npy", "flac": "flac"}
ENCODED_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("duration", pa.float64(), nullable=False),
    pa.field("n_units", pa.int64(), nullable=False),
    pa.field("n_words", pa.int64(), nullable=False),
    pa.field("n_bpe", pa.int64(), nullable=False),
    pa.field("speaker", pa.string()),
    pa.field("tar_bytes", pa.int64(), nullable=False),
    pa.field("json", pa.binary(), nullable=False),
    pa.field("units_npy", pa.binary(), nullable=False),
    pa.field("flac", pa.binary()),
])
_INDEX_ROWS_PER_WRITE = 4096  # as `tally_shards` writes index.parquet: same row groups, same bytes


@dataclass
class EncodePartitions(PartitionWorker):
    """Step 1 in a worker: one partition's joined, checked, encoded samples, in shard order."""

    config: RunConfig

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        config, part, out_dir = self.config, task["part"], location(task["out_dir"])
        tables = JoinTables(**{name: read_parquet(location(path)) for name, path in task["tables"].items()})
        earlier = [r for path in task["earlier_rejects"] for r in read_rejects(path)]
        provenance = Provenance()
        rejects: list[Reject] = []
        audio_source = None
        paths: dict[str, str] = {}
        identities: dict[str, str | None] = {}
        if config.shard.include_audio:
            manifest = tables.manifest
            paths = dict(zip(manifest["id"].to_pylist(), manifest["audio_path"].to_pylist(), strict=True))
            audio_source = FlacFromPaths(paths)
            if "audio_identity" in manifest.column_names:
                identities = dict(zip(manifest["id"].to_pylist(), manifest["audio_identity"].to_pylist(), strict=True))
        tally, rows = ShardTally(), []
        joined = join_records(tables, config, prior_rejects=earlier, provenance=provenance)
        for record, tiling in checked_records(joined, rejects, config.shard.frame_tolerance, None):
            if identities and (changed := changed_since_ingest(paths[record.id],
                                                               identities.get(record.id))) is not None:
                rejects.append(Reject(record.id, STAGE, "audio_changed", changed))
                continue
            try:
                audio = sample_audio(record, audio_source, config.shard.include_audio)
            except AudioError as err:
                rejects.append(Reject(record.id, STAGE, "audio_unreadable", str(err)))
                continue
            sample = encode_sample(record, audio)
            tally.add(record, tiling)
            rows.append({"id": record.id, "key": sample.key, "duration": record.duration, "n_units": record.n_frames,
                         "n_words": len(record.words), "n_bpe": len(record.bpe), "speaker": record.speaker,
                         "tar_bytes": sample.tar_bytes,
                         **{column: sample.members.get(suffix) for suffix, column in MEMBER_COLUMNS.items()}})
        write_part(pa.Table.from_pylist(rows, schema=ENCODED_SCHEMA), part_file(out_dir, ENCODED_TABLE, part))
        write_part(sorted_rejects_table(rejects), part_file(out_dir, "rejects", part))
        marker = {"hash": task["hash"], "inputs": task["inputs"], "rows_out": len(rows), "rejects": len(rejects),
                  "summary": {"tally": tally.to_json(), "tokenizer_hashes": sorted(provenance.tokenizer_hashes)}}
        write_json_atomic(marker_path(out_dir, part), marker)
        return marker


@dataclass
class WriteShards(PartitionWorker):
    """Step 3 in a worker: one shard's tar and sidecar from slices of encoded partitions."""

    out_dir: str
    split: str
    config_hash: str

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        samples = []
        for path, start, stop in task["slices"]:
            rows = read_parquet(location(path), columns=["id", "key", "duration", *MEMBER_COLUMNS.values()])
            for row in rows.slice(start, stop - start).to_pylist():
                members = {suffix: row[column] for suffix, column in MEMBER_COLUMNS.items() if row[column] is not None}
                samples.append(EncodedSample(row["id"], row["key"], row["duration"], members))
        tar_path = location(self.out_dir) / task["name"]
        done, why_not = earlier_shard(tar_path, self.config_hash)
        if done is not None:
            if same_samples(done, samples):
                return {"name": task["name"], "kept": True, "why": None}
            why_not = "the incoming samples differ from the sidecar's"
        write_shard_files(tar_path, samples, self.split, task["index"], self.config_hash)
        return {"name": task["name"], "kept": False, "why": why_not}


@dataclass
class ShardPlan:
    """Where each shard's samples are: (encoded partition file, first row, row after last) slices."""

    tasks: list[dict[str, Any]]
    seconds: float  # total duration, summed in shard order as a single writer sums it


def plan_shards(encoded: list[StoragePath], config: RunConfig) -> ShardPlan:
    """Cut the partitions' samples, laid end to end, into shards (only their sizes are read)."""
    settings = config.shard
    packer = ShardPacker(settings.samples_per_shard, settings.max_shard_bytes)
    tasks: list[dict[str, Any]] = []
    slices: list[list[Any]] = []
    seconds = 0.0

    def close() -> None:
        index = len(tasks)
        tasks.append({"index": index, "name": shard_name(settings.split, index), "slices": list(slices)})
        slices.clear()
        packer.close()

    for path in encoded:
        sizes = read_parquet(path, columns=["tar_bytes", "duration"])
        for row, (size, duration) in enumerate(zip(sizes["tar_bytes"].to_pylist(), sizes["duration"].to_pylist(),
                                                    strict=True)):
            if not packer.fits(size):
                close()
            if slices and slices[-1][0] == str(path) and slices[-1][2] == row:
                slices[-1][2] = row + 1
            else:
                slices.append([str(path), row, row + 1])
            seconds += duration
            if packer.add(size):
                close()
    if slices:
        close()
    return ShardPlan(tasks, seconds)


def write_index(out: StoragePath, encoded: list[StoragePath], plan: ShardPlan) -> None:
    """index.parquet: one row per sample in shard order, streamed from the partitions' small columns."""
    shard_of: list[tuple[str, int, int, str]] = [
        (path, start, stop, task["name"]) for task in plan.tasks for path, start, stop in task["slices"]
    ]
    rows: list[dict[str, Any]] = []
    with local_output(out / INDEX_FILE) as tmp, pq.ParquetWriter(tmp, INDEX_SCHEMA) as writer:
        slice_at = 0
        for path in encoded:
            table = read_parquet(path, columns=INDEX_COLUMNS)
            while slice_at < len(shard_of) and shard_of[slice_at][0] == str(path):
                _, start, stop, name = shard_of[slice_at]
                for row in table.slice(start, stop - start).to_pylist():
                    rows.append({"id": row["id"], "key": row["key"], "shard": name, "duration": row["duration"],
                                 "n_units": row["n_units"], "n_words": row["n_words"], "n_bpe": row["n_bpe"],
                                 "speaker": row["speaker"]})
                    if len(rows) >= _INDEX_ROWS_PER_WRITE:
                        writer.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
                        rows.clear()
                slice_at += 1
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))


def write_partitioned_shards(
    encoded: list[StoragePath], markers: list[dict[str, Any]], out: StoragePath, config: RunConfig, *,
    carried_rejects: list[Reject], tokenizer_vocab_size: int | None, run_tasks: Any,
) -> ShardReport:
    """Steps 2-4 over encoded partitions into `out` (a folder or a URL); `run_tasks(worker, tasks)`
    runs step 3 (on Ray or here)."""
    out.mkdir(parents=True, exist_ok=True)
    remove_unfinished(out)
    config_hash = shard_config_hash(config)
    plan = plan_shards(encoded, config)
    report = ShardReport(out)
    worker = WriteShards(str(out), config.shard.split, config_hash)
    for result in run_tasks(worker, plan.tasks):
        if result["kept"]:
            report.shards_kept += 1
        else:
            report.shards_written += 1
            if result["why"] is not None:
                report.rewritten.append((result["name"], result["why"]))
    report.removed = remove_stale_shards(out, config.shard.split, len(plan.tasks))
    tally = ShardTally()
    tokenizer_hashes: set[str] = set()
    for marker in markers:
        tally.merge(ShardTally.from_json(marker["summary"]["tally"]))
        tokenizer_hashes.update(marker["summary"]["tokenizer_hashes"])
        report.samples += marker["rows_out"]
    tally.seconds = plan.seconds
    new_rejects = [r for path in encoded for r in read_rejects(part_file(path.parent.parent, "rejects", path.stem))]
    report.new_rejects = new_rejects
    report.rejects = sorted(set(carried_rejects) | set(new_rejects), key=lambda r: (r.stage, r.id, r.code))
    write_rejects(report.rejects, out / REJECTS_FILE)
    write_index(out, encoded, plan)
    tars = [out / task["name"] for task in plan.tasks]
    summary = write_dataset_json(out, config, config_hash, report.rejects, tokenizer_hashes, tokenizer_vocab_size,
                                 tars, tally)
    report.hours = summary["counts"]["hours"]
    return report
