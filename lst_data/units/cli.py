"""`lst-data units` (the stage) and `lst-data kmeans` (train a codebook only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lst_data.core.cli_options import config_options, load_run_config
from lst_data.core.errors import UserError
from lst_data.core.lock import locks_run_folder


def encoder_options(fn):
    fn = click.option("--encoder", type=click.Choice(["mfcc", "logmel", "hubert"]), default=None,
                      help="Alias of --set units.encoder=....")(fn)
    fn = click.option("--checkpoint", type=click.Path(exists=True, path_type=str), default=None,
                      help="Alias of --set units.checkpoint=... (hubert: fairseq .pt or Hugging Face folder).")(fn)
    fn = click.option("--layer", type=int, default=None, help="Alias of --set units.layer=... (hubert, 1-based).")(fn)
    fn = click.option("--frame-rate", type=float, default=None, help="Alias of --set units.frame_rate=... (Hz).")(fn)
    fn = click.option("--device", default=None, help="Alias of --set units.device=... (auto, cpu, cuda).")(fn)
    fn = click.option("--k", type=int, default=None, help="Alias of --set units.k=... (clusters).")(fn)
    return fn


def _units_aliases(options: dict[str, Any]) -> dict[str, Any]:
    return {f"units.{name}": value for name, value in options.items()}


@click.command("units")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (units.parquet, rejects.parquet, units.json; codebook.npy when trained).")
@click.option("--codebook", default=None, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Alias of --set units.codebook=...: .npy, torch file, or sklearn k-means saved by joblib/pickle "
                   "(read safely); none: train one on the manifest into OUT.")
@encoder_options
@config_options
@locks_run_folder
def units(manifest_dir: Path, out: Path, config_path: Path | None, assignments: tuple[str, ...],
          runner: str | None, **options: Any) -> None:
    """Unit ids for every utterance of MANIFEST_DIR/manifest.parquet (int16, 25 Hz by default).

    Exit code 0: every utterance has units; 3: finished, with rejects.
    """
    from lst_data.core.summary import finish_stage_command
    from lst_data.units.stage import quantize_manifest

    config = load_run_config(config_path, assignments, runner, aliases=_units_aliases(options))
    report = quantize_manifest(manifest_dir, out, config)
    finish_stage_command(f"units {manifest_dir} -> {out} ({config.units.encoder})", report, config)


@click.command("kmeans")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Codebook file to write (.npy, plus a .npy.json sidecar).")
@click.option("--sample-frames", type=int, default=None, help="Alias of --set units.sample_frames=....")
@click.option("--steps", "kmeans_steps", type=int, default=None, help="Alias of --set units.kmeans_steps=....")
@encoder_options
@config_options
def kmeans(manifest_dir: Path, out: Path, config_path: Path | None, assignments: tuple[str, ...],
           runner: str | None, **options: Any) -> None:
    """Train a codebook on frames sampled from MANIFEST_DIR/manifest.parquet (what `units` does without one)."""
    from lst_data.core.runner import read_manifest
    from lst_data.core.summary import finish_command
    from lst_data.units.stage import train_codebook

    if out.suffix != ".npy":  # checked before the k-means, not after it
        raise UserError(f"--out: {out} must name a .npy file (the codebook; its .npy.json sidecar goes beside it)")
    config = load_run_config(config_path, assignments, runner, aliases=_units_aliases(options))
    report = train_codebook(read_manifest(manifest_dir), out, config.units, config.seed, config.ray)
    finish_command(
        f"kmeans {manifest_dir} -> {out}",
        [
            ("encoder", f"{config.units.encoder} @ {config.units.frame_rate:g} Hz, dim {report.codebook.dim}"),
            ("k", str(report.codebook.k)),
            ("frames sampled", f"{report.sample_frames} of {report.corpus_frames}"),
            ("utterances used", str(report.utterances)),
            ("inertia (mean sq. dist.)", f"{report.inertia:.4g}"),
            ("clusters used", f"{report.used_clusters} / {report.codebook.k}"),
            ("time", f"encode {report.encode_seconds:.1f} s, k-means {report.kmeans_seconds:.1f} s"),
            ("codebook sha256", report.codebook.sha256[:16]),
        ],
        report.rejects,
    )
