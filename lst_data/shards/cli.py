"""`lst-data shard`: join a run directory's stage tables and write WebDataset shards."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lst_data.ingest_cli import EXIT_WITH_REJECTS, config_options, load_run_config

STAGE_TABLES = {
    "manifest": "manifest.parquet",
    "alignments": "alignments.parquet",
    "units": "units.parquet",
    "tokens": "tokens.parquet",
}


def find_stage_rejects(run_dir: Path, out: Path) -> list[Path]:
    """Reject files of the earlier stages: `*rejects*.parquet` in RUN_DIR and its direct subfolders (not OUT)."""
    candidates = [*run_dir.glob("*rejects*.parquet"), *run_dir.glob("*/*rejects*.parquet")]
    out = out.resolve()
    return sorted(p for p in candidates if p.resolve().parent != out)


def find_tokenizer(run_dir: Path, configured: str | None) -> Path | None:
    """The tokenizer model the tokens were made with: the configured one, or the one trained into RUN_DIR."""
    from lst_data.tokenize.stage import TRAINED_MODEL_NAME

    for candidate in (configured, run_dir / TRAINED_MODEL_NAME):
        if candidate is not None and Path(candidate).exists():
            return Path(candidate)
    return None


@click.command("shard")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Shard directory."
)
@click.option("--split", default=None, help="Override shard.split (shard file name prefix).")
@click.option("--samples-per-shard", type=int, default=None, help="Override shard.samples_per_shard.")
@click.option(
    "--include-audio/--no-audio", default=None, help="Override shard.include_audio (KEY.flac members)."
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Tokenizer model (for its vocab size); default: tokenizer.model or RUN_DIR/tokenizer.model.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Processes that check records against the contract (the writer's main cost); output is identical.",
)
@config_options
def shard(
    run_dir: Path,
    out: Path,
    split: str | None,
    samples_per_shard: int | None,
    include_audio: bool | None,
    tokenizer_path: Path | None,
    workers: int,
    config_path: Path | None,
    runner: str | None,
) -> None:
    """Join RUN_DIR/{manifest,alignments,units,tokens}.parquet by id and write shards to OUT.

    Rejects of the earlier stages (RUN_DIR/*rejects*.parquet and RUN_DIR/*/*rejects*.parquet)
    are carried into OUT/rejects.parquet. Shards already complete from an earlier run with
    the same config and inputs are kept, not rewritten.

    Exit code 0: every utterance is in a shard; 3: finished, with rejects.
    """
    import dataclasses

    import pyarrow.parquet as pq

    from lst_data.rejects import read_rejects
    from lst_data.shards.join import JoinTables, Provenance, join_records
    from lst_data.shards.writer import FlacFromPaths, write_shards
    from lst_data.summary import print_summary
    from lst_data.tokenize.tokenizer import load_tokenizer

    config = load_run_config(config_path, runner)
    overrides = {
        k: v
        for k, v in {
            "split": split,
            "samples_per_shard": samples_per_shard,
            "include_audio": include_audio,
        }.items()
        if v is not None
    }
    config = dataclasses.replace(config, shard=dataclasses.replace(config.shard, **overrides))
    missing = [name for name in STAGE_TABLES.values() if not (run_dir / name).exists()]
    if missing:
        raise click.ClickException(f"{run_dir} lacks {', '.join(missing)}")
    tables = JoinTables(**{name: pq.read_table(run_dir / file) for name, file in STAGE_TABLES.items()})
    carried = sorted(
        {r for path in find_stage_rejects(run_dir, out) for r in read_rejects(path)},
        key=lambda r: (r.stage, r.id, r.code),
    )
    tokenizer_file = tokenizer_path or find_tokenizer(run_dir, config.tokenizer.model)
    vocab_size = load_tokenizer(tokenizer_file).vocab_size if tokenizer_file else None
    provenance = Provenance()
    audio_paths = dict(
        zip(tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist(), strict=True)
    )
    report = write_shards(
        join_records(tables, config, prior_rejects=carried, provenance=provenance),
        out,
        config,
        audio_source=FlacFromPaths(audio_paths) if config.shard.include_audio else None,
        carried_rejects=carried,
        provenance=provenance,
        tokenizer_vocab_size=vocab_size,
        workers=workers,
    )
    print_summary(
        f"shard {run_dir} -> {out}",
        [
            ("samples", str(report.samples)),
            ("hours", f"{report.hours:.3f}"),
            ("shards", f"{report.shards} ({report.shards_written} written, {report.shards_skipped} kept)"),
            ("rejected here", str(len(report.new_rejects))),
            ("rejected in all", str(len(report.rejects))),
            ("tokenizer vocab", str(vocab_size) if vocab_size else "unknown (no tokenizer model found)"),
            ("wall time", f"{report.seconds:.1f} s"),
        ],
        report.rejects,
    )
    if report.rejects:
        sys.exit(EXIT_WITH_REJECTS)
