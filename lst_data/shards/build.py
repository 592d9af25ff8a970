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

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from lst_data.config import RunConfig
from lst_data.core.rejects import Reject, read_rejects
from lst_data.shards.join import JoinTables, Provenance, join_records
from lst_data.shards.writer import FlacFromPaths, ShardReport, write_shards

TABLE_FILES = {
    "manifest": ("ingest", "manifest.parquet"),
    "alignments": ("align", "alignments.parquet"),
    "units": ("units", "units.parquet"),
    "tokens": ("tokenize", "tokens.parquet"),
}
TOKENIZER_FILE = "tokenizer.model"  # what the tokenize stage trains into its folder


class MissingStageOutput(FileNotFoundError):
    """The run directory lacks a table the shard step needs."""


@dataclass(frozen=True)
class StageOutputs:
    """Where a run's stage tables, earlier rejects and tokenizer model are."""

    run_dir: Path
    manifest: Path
    alignments: Path
    units: Path
    tokens: Path
    tokenizer: Path | None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, tokenizer: str | Path | None = None) -> StageOutputs:
        run_dir = Path(run_dir)
        paths: dict[str, Path] = {}
        for name, (folder, file) in TABLE_FILES.items():
            found = [p for p in (run_dir / folder / file, run_dir / file) if p.exists()]
            if not found:
                raise MissingStageOutput(f"{run_dir} has neither {folder}/{file} nor {file}")
            paths[name] = found[0]
        candidates = [tokenizer, paths["tokens"].parent / TOKENIZER_FILE, run_dir / TOKENIZER_FILE]
        model = next((Path(c) for c in candidates if c is not None and Path(c).exists()), None)
        return cls(run_dir, tokenizer=model, **paths)

    def rejects(self, exclude: Path) -> list[Reject]:
        """Rejects of every earlier stage, once each, in a stable order."""
        exclude = exclude.resolve()
        files = [*self.run_dir.glob("*rejects*.parquet"), *self.run_dir.glob("*/*rejects*.parquet")]
        found = {r for path in files if path.resolve().parent != exclude for r in read_rejects(path)}
        return sorted(found, key=lambda r: (r.stage, r.id, r.code))

    def tables(self) -> JoinTables:
        return JoinTables(**{name: pq.read_table(getattr(self, name)) for name in TABLE_FILES})


def build_shards(
    outputs: StageOutputs,
    out_dir: str | Path,
    config: RunConfig,
    *,
    workers: int = 1,
    show_progress: bool = True,
) -> ShardReport:
    """Join the run's tables and write shards to `out_dir` (resuming finished shards)."""
    from lst_data.tokenize.tokenizer import load_tokenizer

    out = Path(out_dir)
    tables = outputs.tables()
    carried = outputs.rejects(exclude=out)
    vocab_size = load_tokenizer(outputs.tokenizer).vocab_size if outputs.tokenizer else None
    provenance = Provenance()
    audio_source = None
    if config.shard.include_audio:
        ids, paths = tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist()
        audio_source = FlacFromPaths(dict(zip(ids, paths, strict=True)))
    return write_shards(
        join_records(tables, config, prior_rejects=carried, provenance=provenance),
        out,
        config,
        audio_source=audio_source,
        carried_rejects=carried,
        provenance=provenance,
        tokenizer_vocab_size=vocab_size,
        workers=workers,
        show_progress=show_progress,
    )


def with_shard_overrides(config: RunConfig, **overrides: object) -> RunConfig:
    """`config` with the given shard.* fields replaced (None values are left alone)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, shard=dataclasses.replace(config.shard, **given))
