"""`lst-data ingest` and `lst-data config`."""

from __future__ import annotations

from pathlib import Path

import click


def config_options(fn):
    fn = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      help="Run config (YAML); defaults in code (`lst-data config`).")(fn)
    fn = click.option("--runner", type=click.Choice(["ray", "local"]), default=None,
                      help="Override ray.runner: Ray Data (default) or in-process.")(fn)
    return fn


def load_run_config(config_path: Path | None, runner: str | None):
    from lst_data.config import ConfigError, load_config

    try:
        return load_config(config_path, {"ray": {"runner": runner}} if runner else None)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config") from err


@click.command("ingest")
@click.argument("corpus", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--layout", type=click.Choice(["auto", "mfa", "librispeech", "jsonl"]), default="auto", show_default=True)
@config_options
def ingest(corpus: Path, out: Path, layout: str, config_path: Path | None, runner: str | None) -> None:
    """Read CORPUS (MFA folders, LibriSpeech, or a JSONL manifest) into OUT/manifest.parquet.

    Exit code 0: every utterance ingested; 3: finished, with rejects (see OUT/rejects.parquet).
    """
    from lst_data.ingest.stage import ingest_corpus
    from lst_data.core.summary import finish_command

    config = load_run_config(config_path, runner)
    report = ingest_corpus(corpus, out, config, layout=layout)
    finish_command(
        f"ingest {corpus} -> {out}",
        [
            ("utterances", str(report.manifest.num_rows)),
            ("hours", f"{report.hours:.3f}"),
            ("speakers", str(report.speakers)),
            ("rejected", str(len(report.rejects))),
            ("wall time", f"{report.seconds:.1f} s ({config.ray.runner})"),
            ("config hash", config.section_hash("ingest")[:12]),
        ],
        report.rejects,
    )


@click.command("config")
@click.option("--defaults-yaml", is_flag=True, help="Print the full default config as YAML.")
def config_command(defaults_yaml: bool) -> None:
    """Show every config field with its default and meaning."""
    from lst_data.config import RunConfig, describe, to_dict

    if defaults_yaml:
        import yaml

        click.echo(yaml.safe_dump(to_dict(RunConfig()), sort_keys=False))
        return
    for name, default, text in describe():
        click.echo(f"{name} = {default!r}\n    {text}")
