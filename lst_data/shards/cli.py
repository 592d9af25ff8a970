"""`lst-data shard`: join a run directory's stage tables and write WebDataset shards."""

from __future__ import annotations

from pathlib import Path

import click

from lst_data.core.cli_options import config_options, load_run_config
from lst_data.core.lock import locks_run_folder


@click.command("shard")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Shard directory.")
@click.option("--split", default=None, help="Alias of --set shard.split=... (shard file name prefix).")
@click.option("--samples-per-shard", type=int, default=None, help="Alias of --set shard.samples_per_shard=....")
@click.option(
    "--include-audio/--no-audio", default=None, help="Alias of --set shard.include_audio=... (KEY.flac members)."
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
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes that check records against the contract (the writer's main cost); output is identical.",
)
@config_options
@locks_run_folder
def shard(
    run_dir: Path,
    out: Path,
    split: str | None,
    samples_per_shard: int | None,
    include_audio: bool | None,
    tokenizer_path: Path | None,
    workers: int,
    config_path: Path | None,
    assignments: tuple[str, ...],
    runner: str | None,
) -> None:
    """Join the stage tables of RUN_DIR by id and write shards to OUT.

    RUN_DIR is a `lst-data build` run (ingest/, align/, units/, tokenize/) or a folder with
    manifest.parquet, alignments.parquet, units.parquet and tokens.parquet side by side.
    Rejects of the earlier stages (every *rejects*.parquet in RUN_DIR or one folder below)
    are carried into OUT/rejects.parquet. Shards already complete from an earlier run with
    the same config and inputs are kept, not rewritten.

    Exit code 0: every utterance is in a shard; 3: finished, with rejects.
    """
    from lst_data.core.summary import finish_command
    from lst_data.shards.build import StageOutputs, build_shards

    config = load_run_config(
        config_path,
        assignments,
        runner,
        aliases={"shard.split": split, "shard.samples_per_shard": samples_per_shard, "shard.include_audio": include_audio},
    )
    outputs = StageOutputs.from_run_dir(run_dir, tokenizer_path or config.tokenizer.model)
    report = build_shards(outputs, out, config, workers=workers)
    figures = report.figures
    finish_command(
        f"shard {run_dir} -> {out}",
        [
            ("samples", str(figures["samples"])),
            ("hours", f"{figures['hours_out']:.3f}"),
            ("shards", f"{figures['shards']} ({figures['shards_written']} written, {figures['shards_kept']} kept)"),
            ("shards rewritten", str(figures["shards_rewritten"])),
            ("rejected here", str(len(report.new_rejects))),
            ("rejected in all", str(len(report.rejects))),
            ("tokenizer", str(outputs.tokenizer or "none found: dataset.json has no vocab_size")),
            ("wall time", f"{report.seconds:.1f} s"),
        ],
        report.rejects,
    )
