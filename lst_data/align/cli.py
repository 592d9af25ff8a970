"""`lst-data align` and `lst-data export-textgrid`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lst_data.ingest.cli import config_options


@click.command("align")
@click.argument("manifest_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--backend", type=click.Choice(["pocketsphinx", "mfa", "ctc", "textgrid"]), default=None,
              help="Override align.backend (default: pocketsphinx).")
@click.option("--textgrid-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Override align.textgrid.directory (backend textgrid).")
@click.option("--ctc-checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="Override align.ctc.checkpoint (backend ctc).")
@click.option("--mfa-model", default=None, help="Override align.mfa.acoustic_model (backend mfa).")
@config_options
def align(manifest_dir: Path, out: Path, backend: str | None, textgrid_dir: str | None, ctc_checkpoint: str | None,
          mfa_model: str | None, config_path: Path | None, runner: str | None) -> None:
    """Align MANIFEST_DIR/manifest.parquet into OUT (alignments.parquet, rejects.parquet, oov.parquet).

    Exit code 0: every utterance aligned; 3: finished, with rejects (see OUT/rejects.parquet).
    """
    from lst_data.align.stage import align_manifest
    from lst_data.config import ConfigError, load_config
    from lst_data.core.summary import finish_command

    overrides: dict[str, Any] = {"align": {}}
    if runner:
        overrides["ray"] = {"runner": runner}
    for value, path in ((backend, ("backend",)), (textgrid_dir, ("textgrid", "directory")),
                        (ctc_checkpoint, ("ctc", "checkpoint")), (mfa_model, ("mfa", "acoustic_model"))):
        if value is not None:
            section = overrides["align"]
            for key in path[:-1]:
                section = section.setdefault(key, {})
            section[path[-1]] = value
    try:
        config = load_config(config_path, overrides)
        report = align_manifest(manifest_dir, out, config)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    top_oov = ", ".join(f"{r['word']} ({r['source']}) x{r['count']}" for r in report.oov.slice(0, 5).to_pylist())
    finish_command(
        f"align {manifest_dir} -> {out} ({config.align.backend})",
        [
            ("utterances", str(report.alignments.num_rows + len(report.rejects))),
            ("aligned", str(report.alignments.num_rows)),
            ("rejected", str(len(report.rejects))),
            ("OOV words", f"{report.oov.num_rows}" + (f": {top_oov}" if top_oov else "")),
            ("audio", f"{report.audio_seconds / 3600:.3f} h"),
            ("wall time", f"{report.seconds:.1f} s ({config.ray.runner}), real-time factor {report.real_time_factor:.4f}"),
            ("config hash", config.section_hash("align")[:12]),
        ],
        report.rejects,
    )


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
