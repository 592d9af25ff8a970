"""`lst-data units train-kmeans` and `lst-data units assign`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from lst_data.ingest.cli import config_options, load_run_config


def _units_config(config, **overrides):
    """RunConfig with the units options given on the command line applied."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, units=dataclasses.replace(config.units, **given))


def encoder_options(fn):
    fn = click.option(
        "--encoder",
        type=click.Choice(["mfcc", "logmel", "hubert"]),
        default=None,
        help="Override units.encoder.",
    )(fn)
    fn = click.option(
        "--checkpoint",
        type=click.Path(exists=True, path_type=str),
        default=None,
        help="Override units.checkpoint (hubert: fairseq .pt or Hugging Face folder).",
    )(fn)
    fn = click.option("--layer", type=int, default=None, help="Override units.layer (hubert, 1-based).")(fn)
    fn = click.option("--frame-rate", type=float, default=None, help="Override units.frame_rate (Hz).")(fn)
    fn = click.option("--device", default=None, help="Override units.device (auto, cpu, cuda).")(fn)
    return fn


@click.group("units")
def units() -> None:
    """Speech units: train a k-means codebook, assign unit ids (int16, 25 Hz by default)."""


@units.command("train-kmeans")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Codebook file to write (.npy, plus a .npy.json sidecar).",
)
@click.option("--k", type=int, default=None, help="Override units.k (clusters).")
@click.option("--sample-frames", type=int, default=None, help="Override units.sample_frames.")
@click.option("--steps", "kmeans_steps", type=int, default=None, help="Override units.kmeans_steps.")
@encoder_options
@config_options
def train_kmeans(
    manifest_dir: Path, out: Path, config_path: Path | None, runner: str | None, **overrides
) -> None:
    """Train a codebook on frames sampled from MANIFEST_DIR/manifest.parquet."""
    from lst_data.core.summary import finish_command
    from lst_data.units.stage import read_manifest, train_codebook

    config = _units_config(load_run_config(config_path, runner), **overrides)
    manifest = read_manifest(manifest_dir)
    report = train_codebook(manifest, out, config.units, config.seed, config.ray)
    finish_command(
        f"units train-kmeans {manifest_dir} -> {out}",
        [
            (
                "encoder",
                f"{config.units.encoder} @ {config.units.frame_rate:g} Hz, dim {report.codebook.dim}",
            ),
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


@units.command("assign")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--codebook",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Codebook: .npy, torch file, or sklearn k-means saved by joblib/pickle (read safely); "
    "default: units.codebook of the config.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (units.parquet, units_rejects.parquet, units.json).",
)
@encoder_options
@config_options
def assign(
    manifest_dir: Path,
    codebook: Path | None,
    out: Path,
    config_path: Path | None,
    runner: str | None,
    **overrides,
) -> None:
    """Unit ids for every utterance of MANIFEST_DIR/manifest.parquet.

    Exit code 0: every utterance has units; 3: finished, with rejects.
    """
    from lst_data.core.summary import finish_command
    from lst_data.units.stage import assign_units, read_manifest

    config = _units_config(load_run_config(config_path, runner), **overrides)
    codebook = codebook or (Path(config.units.codebook) if config.units.codebook else None)
    if codebook is None:
        raise click.UsageError("no codebook: pass --codebook or set units.codebook in --config")
    manifest = read_manifest(manifest_dir)
    report = assign_units(manifest, codebook, out, config.units, config.ray)
    hours = report.frames / config.units.frame_rate / 3600
    finish_command(
        f"units assign {manifest_dir} -> {report.units_path}",
        [
            ("utterances", f"{report.utterances} of {manifest.num_rows}"),
            ("frames", f"{report.frames} ({hours:.3f} h at {config.units.frame_rate:g} Hz)"),
            (
                "encoder",
                config.units.encoder
                + (f" layer {config.units.layer}" if config.units.encoder == "hubert" else ""),
            ),
            ("codebook", f"k = {report.codebook.k}, sha256 {report.codebook.sha256[:16]}"),
            ("wall time", f"{report.seconds:.1f} s ({config.ray.runner})"),
            ("config hash", config.section_hash("units")[:12]),
        ],
        report.rejects,
    )
