"""The shard step of a run: find the stage outputs of a run directory, join them, write shards.

Two layouts are understood:
- the pipeline's (`pipelines.build_corpus`): RUN/ingest/manifest.parquet,
  RUN/align/alignments.parquet, RUN/units/units.parquet, RUN/tokenize/tokens.parquet
  (+ tokenizer.model), each folder with its rejects;
- a flat folder with the four tables side by side (hand-made runs, tests).
Rejects of the earlier stages are every `*rejects*.parquet` in the run directory or one
folder below it, except in the shard output itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lst_data.config import RunConfig
from lst_data.core.errors import InputError
from lst_data.core.rejects import Reject, read_rejects
from lst_data.core.runner import DONE_FILE, StageReport, finish_stage
from lst_data.core.storage import StoragePath, location, read_parquet
from lst_data.format.contract import STAGE
from lst_data.shards.join import JoinTables, Provenance, join_records
from lst_data.shards.members import FlacFromPaths
from lst_data.shards.writer import ShardReport, shard_config_hash, write_shards

TABLE_FILES = {
    "manifest": ("ingest", "manifest.parquet"),
    "alignments": ("align", "alignments.parquet"),
    "units": ("units", "units.parquet"),
    "tokens": ("tokenize", "tokens.parquet"),
}
TOKENIZER_FILE = "tokenizer.model"  # what the tokenize stage trains into its folder


class MissingStageOutput(InputError):
    """The run directory lacks a table the shard step needs."""


@dataclass(frozen=True)
class StageOutputs:
    """Where a run's stage tables, earlier rejects and tokenizer model are."""

    run_dir: StoragePath
    manifest: StoragePath
    alignments: StoragePath
    units: StoragePath
    tokens: StoragePath
    tokenizer: StoragePath | None

    @classmethod
    def from_run_dir(cls, run_dir: str | StoragePath, tokenizer: str | StoragePath | None = None) -> StageOutputs:
        run_dir = location(run_dir)
        paths: dict[str, StoragePath] = {}
        for name, (folder, file) in TABLE_FILES.items():
            found = [p for p in (run_dir / folder / file, run_dir / file) if p.exists()]
            if not found:
                raise MissingStageOutput(f"{run_dir} has neither {folder}/{file} nor {file} (is it a `lst-data build` run?)")
            paths[name] = found[0]
        candidates = [tokenizer, paths["tokens"].parent / TOKENIZER_FILE, run_dir / TOKENIZER_FILE]
        model = next((location(c) for c in candidates if c is not None and location(c).exists()), None)
        return cls(run_dir, tokenizer=model, **paths)

    def rejects(self, exclude: Path) -> list[Reject]:
        """Rejects of every earlier stage, once each, in a stable order."""
        exclude = exclude.resolve()
        files = [*self.run_dir.glob("*rejects*.parquet"), *self.run_dir.glob("*/*rejects*.parquet")]
        found = {r for path in files if path.resolve().parent != exclude for r in read_rejects(path)}
        return sorted(found, key=lambda r: (r.stage, r.id, r.code))

    def tables(self) -> JoinTables:
        return JoinTables(**{name: read_parquet(getattr(self, name)) for name in TABLE_FILES})


@dataclass
class ShardStageReport(StageReport):
    """The shard step's StageReport; `rejects` holds the carried rejects of earlier stages too."""

    @property
    def new_rejects(self) -> list[Reject]:
        """The rejects the shard step itself made."""
        return [r for r in self.rejects if r.stage == STAGE]


def shard_tables(
    tables: JoinTables,
    out_dir: str | Path,
    config: RunConfig,
    *,
    carried_rejects: Sequence[Reject] = (),
    **write_options: Any,
) -> ShardReport:
    """Join `tables` (skipping ids in `carried_rejects`) and write the shards; `write_options` go to `write_shards`."""
    provenance = Provenance()
    return write_shards(
        join_records(tables, config, prior_rejects=carried_rejects, provenance=provenance),
        out_dir,
        config,
        carried_rejects=carried_rejects,
        provenance=provenance,
        **write_options,
    )


def shard_provenance(config: RunConfig, tokenizer_path: StoragePath | None, tokenizer: Any, report: ShardReport) -> dict[str, Any]:
    """shard.json's record of what the shards were made with and what the writer rewrote or removed."""
    return {
        "shard_config_hash": shard_config_hash(config),
        "tokenizer": {"path": str(tokenizer_path), "hash": tokenizer.hash} if tokenizer else None,
        "shards_rewritten": [{"shard": name, "why": why} for name, why in report.rewritten],
        "shards_removed": report.removed,
    }


def build_shards(
    outputs: StageOutputs,
    out_dir: str | Path,
    config: RunConfig,
    *,
    workers: int = 1,
    fingerprint: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> ShardStageReport:
    """Join the run's tables and write shards to `out_dir` (resuming finished shards).

    Ends like every stage (`finish_stage`): OUT/rejects.parquet (carried + this stage's
    rejects), OUT/shard.json and, last, OUT/done.json. Figures: samples, hours_out, shards,
    shards_written, shards_kept, shards_rewritten.
    """
    from lst_data.tokenize import load_tokenizer

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_FILE).unlink(missing_ok=True)
    tables = outputs.tables()
    carried = outputs.rejects(exclude=out)
    tokenizer = load_tokenizer(outputs.tokenizer) if outputs.tokenizer else None
    audio_source = None
    if config.shard.include_audio:
        ids, paths = tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist()
        audio_source = FlacFromPaths(dict(zip(ids, paths, strict=True)))
    report = shard_tables(
        tables, out, config, carried_rejects=carried, audio_source=audio_source,
        tokenizer_vocab_size=tokenizer.vocab_size if tokenizer else None, workers=workers, show_progress=show_progress,
    )
    stage_report = finish_stage(
        STAGE, out, rows_in=tables.manifest.num_rows, rows_out=report.samples, rejects=report.rejects,
        started=started, config=config, config_section="shard",
        provenance=shard_provenance(config, outputs.tokenizer, tokenizer, report),
        figures=report.figures(), fingerprint=fingerprint,
    )
    return ShardStageReport(**{f.name: getattr(stage_report, f.name) for f in fields(stage_report)})
