"""`lst-data ingest`."""

from __future__ import annotations

from pathlib import Path

import click

from lst_data.core.cli_options import config_options, load_run_config


@click.command("ingest")
@click.argument("corpus", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--layout", type=click.Choice(["auto", "mfa", "librispeech", "jsonl"]), default="auto", show_default=True)
@config_options
def ingest(corpus: Path, out: Path, layout: str, config_path: Path | None, assignments: tuple[str, ...],
           runner: str | None) -> None:
    """Read CORPUS (MFA folders, LibriSpeech, or a JSONL manifest) into OUT/manifest.parquet.

    Exit code 0: every utterance ingested; 3: finished, with rejects (see OUT/rejects.parquet).
    """
    import json

    from lst_data.core.summary import finish_stage_command
    from lst_data.ingest.stage import ignored_notes, ingest_corpus

    config = load_run_config(config_path, assignments, runner)
    report = ingest_corpus(corpus, out, config, layout=layout)
    notes = ignored_notes(json.loads((out / "ingest.json").read_text(encoding="utf-8")))
    finish_stage_command(f"ingest {corpus} -> {out}", report, config, notes=notes)
