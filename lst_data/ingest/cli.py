"""`lst-data ingest`."""

from __future__ import annotations

from pathlib import Path

import click

from lst_data.core.cli_options import config_options, load_run_config
from lst_data.core.lock import locks_run_folder
from lst_data.ingest.config import LAYOUTS

layout_option = click.option(
    "--layout", type=click.Choice(LAYOUTS), default=None,
    help="Alias of --set ingest.layout=... (default: auto, detected from the corpus).")


@click.command("ingest")
@click.argument("corpus", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@layout_option
@config_options
@locks_run_folder
def ingest(corpus: Path, out: Path, layout: str | None, config_path: Path | None, assignments: tuple[str, ...],
           runner: str | None) -> None:
    """Read CORPUS (MFA folders, LibriSpeech, a JSONL manifest, lhotse or NeMo manifests, a Hugging
    Face dataset) into OUT/manifest.parquet.

    Exit code 0: every utterance ingested; 3: finished, with rejects (see OUT/rejects.parquet).
    """
    import json

    from lst_data.core.summary import finish_stage_command
    from lst_data.ingest.stage import ignored_notes, ingest_corpus

    config = load_run_config(config_path, assignments, runner, aliases={"ingest.layout": layout})
    report = ingest_corpus(corpus, out, config)
    notes = ignored_notes(json.loads((out / "ingest.json").read_text(encoding="utf-8")))
    finish_stage_command(f"ingest {corpus} -> {out}", report, config, notes=notes)
