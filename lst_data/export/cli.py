"""`lst-data export lhotse|nemo RUN OUT` (TextGrids: `lst-data export-textgrid`)."""

from __future__ import annotations

from pathlib import Path

import click

RUN = click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
OUT = click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))


@click.group("export")
def export() -> None:
    """Export a build (RUN, from `lst-data build`) for lhotse or NeMo."""


@export.command("lhotse")
@RUN
@OUT
def export_lhotse_command(run_dir: Path, out: Path) -> None:
    """OUT/cuts.jsonl.gz: a lhotse CutSet with word/phone/silence/bpe alignments and units (OUT/units/)."""
    from lst_data.export.lhotse import CUTS_FILE, export_lhotse

    click.echo(f"{export_lhotse(run_dir, out)} cuts -> {out / CUTS_FILE}")


@export.command("nemo")
@RUN
@OUT
def export_nemo_command(run_dir: Path, out: Path) -> None:
    """OUT/manifest.json: a NeMo manifest (audio_filepath, offset, duration, text) with word timestamps."""
    from lst_data.export.nemo import MANIFEST_FILE, export_nemo

    click.echo(f"{export_nemo(run_dir, out)} utterances -> {out / MANIFEST_FILE}")
