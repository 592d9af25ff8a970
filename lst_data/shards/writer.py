"""Write samples into WebDataset tars, with sidecars, an index and a dataset summary.

The steps live by concern: `members` (sample -> member bytes), `tar_io` (deterministic
tars), `validation` (the contract check, in worker processes), `packing` (samples per
shard by count and bytes), `resume` (which earlier shards are kept, which removed) and
`summary` (index.parquet + dataset.json from one tally, fed shard by shard). This module
runs them in order.

A tar is written under a temporary name and renamed when complete, and its sidecar is
written after it, so a tar with a sidecar is always whole. Only one shard's worth of
encoded samples is in memory at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import lst_data
from lst_data.config import RunConfig
from lst_data.core.config import canonical_hash, to_dict
from lst_data.core.progress import progress_bar
from lst_data.core.rejects import Reject, write_rejects
from lst_data.core.storage import StoragePath
from lst_data.format.layout import REJECTS_FILE, Sidecar, shard_name, sidecar_path, write_json_atomic
from lst_data.format.records import SampleRecord
from lst_data.shards.join import Provenance
from lst_data.shards.members import AudioSource, EncodedSample, content_digest, encode_sample
from lst_data.shards.packing import PushBackIterator, next_shard
from lst_data.shards.resume import earlier_shard, remove_stale_shards, remove_unfinished, same_samples
from lst_data.shards.summary import DatasetSummary
from lst_data.shards.tar_io import write_tar
from lst_data.shards.validation import check_pool, checked_records

log = logging.getLogger(__name__)

# Sections of the run config that shards depend on (the Ray runner does not change a byte).
_CONTENT_SECTIONS = ("ingest", "align", "units", "tokenizer", "shard")


def shard_config_hash(config: RunConfig) -> str:
    """Hash of everything shard bytes depend on: the seed and every section but `ray`."""
    return canonical_hash(
        {"seed": config.seed, **{name: to_dict(getattr(config, name)) for name in _CONTENT_SECTIONS}}
    )


@dataclass
class ShardReport:
    out_dir: StoragePath
    shards_written: int = 0
    shards_kept: int = 0
    samples: int = 0
    hours: float = 0.0
    rejects: list[Reject] = field(default_factory=list)  # carried + this stage's
    new_rejects: list[Reject] = field(default_factory=list)
    rewritten: list[tuple[str, str]] = field(default_factory=list)  # (shard, why it was not kept)
    removed: list[str] = field(default_factory=list)  # stale shards of an earlier, longer run

    @property
    def shards(self) -> int:
        return self.shards_written + self.shards_kept

    def figures(self) -> dict[str, int | float]:
        return {
            "samples": self.samples,
            "hours_out": self.hours,
            "shards": self.shards,
            "shards_written": self.shards_written,
            "shards_kept": self.shards_kept,
            "shards_rewritten": len(self.rewritten),
        }


def write_shards(
    records: Iterable[SampleRecord | Reject],
    out_dir: str | Path,
    config: RunConfig,
    *,
    audio_source: AudioSource | None = None,
    carried_rejects: Iterable[Reject] = (),
    provenance: Provenance | None = None,
    tokenizer_vocab_size: int | None = None,
    workers: int = 1,
    show_progress: bool = True,
) -> ShardReport:
    """Stream records (and rejects, e.g. from `join_records`) into OUT; return what happened.

    Writes `{split}-NNNNNN.tar` + `.json` sidecars, then `index.parquet`, `rejects.parquet`
    (carried rejects + this stage's) and `dataset.json`.
    Records that fail schemas/sample.v1.json, or whose audio cannot be read, become
    `invalid_record` / `audio_unreadable` rejects (in `report.new_rejects`; `report.rejects`
    adds the carried ones). `provenance` is read after the records are consumed (the join
    fills it as it goes). `workers` > 1 checks records in that many processes (the
    output does not depend on it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_unfinished(out)
    settings = config.shard
    config_hash = shard_config_hash(config)
    report = ShardReport(out)
    index = 0
    with contextlib.closing(DatasetSummary(out)) as summary:
        with (
            check_pool(workers) as pool,
            progress_bar(total=None, desc="shard", unit="utt", disable=not show_progress) as bar,
        ):
            stream = PushBackIterator(checked_records(records, report.new_rejects, settings.frame_tolerance, pool))
            while True:
                tar_path = out / shard_name(settings.split, index)
                done, why_not = earlier_shard(tar_path, config_hash)
                if done is not None:
                    head = list(itertools.islice(stream, done.samples))
                    if head and same_samples(done, [encode_sample(checked.record, None) for checked in head]):
                        summary.add_from_disk(tar_path)
                        report.shards_kept += 1
                        report.samples += done.samples
                        bar.update(done.samples)
                        index += 1
                        continue
                    why_not = "the incoming samples differ from the sidecar's"
                    stream.push_back(head)
                shard = next_shard(
                    stream, settings.samples_per_shard, settings.max_shard_bytes, audio_source,
                    settings.include_audio, report.new_rejects,
                )
                if not shard.samples:
                    break
                if why_not is not None:
                    log.warning("%s: %s; rewriting it", tar_path.name, why_not)
                    report.rewritten.append((tar_path.name, why_not))
                write_shard_files(tar_path, shard.samples, settings.split, index, config_hash)
                summary.add_written(tar_path, shard.records, shard.samples)
                report.shards_written += 1
                report.samples += len(shard.samples)
                bar.update(len(shard.samples))
                bar.set_postfix(rejects=len(report.new_rejects))
                index += 1
        report.removed = remove_stale_shards(out, settings.split, index)
        report.rejects = sorted(set(carried_rejects) | set(report.new_rejects), key=lambda r: (r.stage, r.id, r.code))
        write_rejects(report.rejects, out / REJECTS_FILE)
        dataset = summary.write(
            config, config_hash, report.rejects,
            (provenance or Provenance()).tokenizer_hashes, tokenizer_vocab_size,
        )
    report.hours = dataset["counts"]["hours"]
    return report


def write_shard_files(tar_path: Path, shard: list[EncodedSample], split: str, index: int, config_hash: str) -> None:
    """The tar, then its sidecar (so a tar with a sidecar is always whole)."""
    size, sha256 = write_tar(tar_path, shard)
    seconds = sum(s.duration for s in shard)
    sidecar = Sidecar(
        schema_version=lst_data.SCHEMA_VERSION,
        toolkit_version=lst_data.__version__,
        split=split,
        shard=tar_path.name,
        index=index,
        samples=len(shard),
        first_id=shard[0].record_id,
        last_id=shard[-1].record_id,
        duration_seconds=round(seconds, 6),
        hours=round(seconds / 3600, 6),
        bytes=size,
        sha256=sha256,
        config_hash=config_hash,
        content_sha256=content_digest(shard),
    )
    write_json_atomic(sidecar_path(tar_path), sidecar.to_json())
