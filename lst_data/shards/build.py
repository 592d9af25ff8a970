"""The shard step as one function: stage outputs in, shards out.

Both `lst-data shard` (a flat run directory a user assembled) and the corpus build
(`pipelines/build_corpus.py`, one folder per stage) name their four stage tables and
their earlier rejects with a `StageOutputs`, and call `build_shards`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from lst_data.config import RunConfig
from lst_data.rejects import Reject, read_rejects
from lst_data.shards.join import JoinTables, Provenance, join_records
from lst_data.shards.writer import FlacFromPaths, ShardReport, write_shards


@dataclass(frozen=True)
class StageOutputs:
    manifest: Path
    alignments: Path
    units: Path
    tokens: Path
    rejects: tuple[Path, ...]  # reject files of the earlier stages, carried into the shards
    tokenizer: Path | None  # the model the tokens were made with (for its vocab size)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> StageOutputs:
        """The layout of `lst-data build`: RUN/{ingest,align,units,tokenize}/."""
        from lst_data.tokenize.stage import TRAINED_MODEL_NAME

        run = Path(run_dir)
        tokenize = run / "tokenize"
        return cls(
            manifest=run / "ingest" / "manifest.parquet",
            alignments=run / "align" / "alignments.parquet",
            units=run / "units" / "units.parquet",
            tokens=tokenize / "tokens.parquet",
            rejects=tuple(
                p for p in (run / "ingest" / "rejects.parquet", run / "align" / "rejects.parquet",
                            run / "units" / "units_rejects.parquet", tokenize / "rejects.parquet") if p.exists()
            ),
            tokenizer=tokenize / TRAINED_MODEL_NAME if (tokenize / TRAINED_MODEL_NAME).exists() else None,
        )

    def missing(self) -> list[Path]:
        return [p for p in (self.manifest, self.alignments, self.units, self.tokens) if not p.exists()]

    def carried_rejects(self) -> list[Reject]:
        unique = {r for path in self.rejects for r in read_rejects(path)}
        return sorted(unique, key=lambda r: (r.stage, r.id, r.code))


def build_shards(
    outputs: StageOutputs, out_dir: str | Path, config: RunConfig, *, tokenizer: Path | None = None,
    show_progress: bool = True,
) -> ShardReport:
    """Join the stage tables by id and write shards (resuming finished ones) into `out_dir`."""
    from lst_data.tokenize.tokenizer import load_tokenizer

    missing = outputs.missing()
    if missing:
        raise FileNotFoundError(f"stage outputs missing: {', '.join(map(str, missing))}")
    tables = JoinTables(
        manifest=pq.read_table(outputs.manifest),
        alignments=pq.read_table(outputs.alignments),
        units=pq.read_table(outputs.units),
        tokens=pq.read_table(outputs.tokens),
    )
    carried = outputs.carried_rejects()
    tokenizer_file = tokenizer or (Path(config.tokenizer.model) if config.tokenizer.model else outputs.tokenizer)
    vocab_size = load_tokenizer(tokenizer_file).vocab_size if tokenizer_file else None
    provenance = Provenance()
    audio_paths = dict(zip(tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist(), strict=True))
    return write_shards(
        join_records(tables, config, prior_rejects=carried, provenance=provenance),
        out_dir,
        config,
        audio_source=FlacFromPaths(audio_paths) if config.shard.include_audio else None,
        carried_rejects=carried,
        provenance=provenance,
        tokenizer_vocab_size=vocab_size,
        show_progress=show_progress,
    )
