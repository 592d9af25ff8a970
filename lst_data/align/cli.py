"""`lst-data align` and `lst-data export-textgrid`."""

from __future__ import annotations

from pathlib import Path

import click

from lst_data.core.cli_options import config_options, load_run_config
from lst_data.core.lock import locks_run_folder


@click.command("align")
@click.argument("manifest_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--backend", type=click.Choice(["pocketsphinx", "mfa", "ctc", "textgrid", "lhotse"]), default=None,
              help="Alias of --set align.backend=... (default: pocketsphinx).")
@click.option("--textgrid-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Alias of --set align.textgrid.directory=... (backend textgrid).")
@click.option("--ctc-checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="Alias of --set align.ctc.checkpoint=... (backend ctc).")
@click.option("--mfa-model", default=None, help="Alias of --set align.mfa.acoustic_model=... (backend mfa).")
@config_options
@locks_run_folder
def align(manifest_dir: Path, out: Path, backend: str | None, textgrid_dir: str | None, ctc_checkpoint: str | None,
          mfa_model: str | None, config_path: Path | None, assignments: tuple[str, ...], runner: str | None) -> None:
    """Align MANIFEST_DIR/manifest.parquet into OUT (alignments.parquet, rejects.parquet, oov.parquet).

    Exit code 0: every utterance aligned; 3: finished, with rejects (see OUT/rejects.parquet).
    """
    from lst_data.align.stage import align_manifest
    from lst_data.core.summary import finish_stage_command

    config = load_run_config(config_path, assignments, runner, aliases={
        "align.backend": backend, "align.textgrid.directory": textgrid_dir,
        "align.ctc.checkpoint": ctc_checkpoint, "align.mfa.acoustic_model": mfa_model,
    })
    report = align_manifest(manifest_dir, out, config)
    finish_stage_command(f"align {manifest_dir} -> {out} ({config.align.backend})", report, config)


@click.command("export-textgrid")
@click.argument("alignments", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--manifest", type=click.Path(exists=True, path_type=Path), default=None,
              help="manifest.parquet (or its directory) for exact durations; else the last interval's end.")
def export_textgrid(alignments: Path, out: Path, manifest: Path | None) -> None:
    """Write one Praat TextGrid per utterance (tiers 'words' and 'phones', silences as 'sil').

    ALIGNMENTS is alignments.parquet or the directory holding it. Files are named by the
    utterance's WebDataset-safe key (KEY.TextGrid).
    """
    from lst_data.align.export import export_textgrids

    written = export_textgrids(alignments, out, manifest)
    click.echo(f"wrote {written} TextGrids to {out}")
