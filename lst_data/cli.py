"""`lst-data`: the command line of the toolkit.

Each stage owns its commands (`lst_data/<stage>/cli.py`, thin modules that import only
click at module level: a stage's heavy imports happen when its command runs). Every
command takes `--config FILE` and `--set a.b=v`; a user error is one line and exit 2.
"""

from __future__ import annotations

import click

from lst_data.align.cli import align, export_textgrid
from lst_data.core.cli_options import Commands, run_cli
from lst_data.demo import demo_corpus_command
from lst_data.export.cli import export
from lst_data.ingest.cli import ingest
from lst_data.shards.cli import shard
from lst_data.shards.inspect_cli import diff, plot, show, stats, validate
from lst_data.tokenize.cli import tokenize, tokenizer
from lst_data.units.cli import kmeans, units
from pipelines.build_corpus import build_command


@click.command("config")
@click.option("--defaults-yaml", is_flag=True, help="Print the full default config as YAML.")
def config_command(defaults_yaml: bool) -> None:
    """Show every config field with its default and meaning."""
    from lst_data.config import RunConfig
    from lst_data.core.config import describe, to_dict

    if defaults_yaml:
        import yaml

        click.echo(yaml.safe_dump(to_dict(RunConfig()), sort_keys=False))
        return
    for name, default, text in describe(RunConfig):
        click.echo(f"{name} = {default!r}\n    {text}")


@click.group(cls=Commands)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and Ray's own notices and warnings.")
@click.version_option(package_name="lst-data")
def cli(verbose: bool) -> None:
    """Prepare speech + text corpora for the Latent Speech-Text Transformer."""
    from lst_data.core.progress import setup_logging

    setup_logging(verbose)


for command in (ingest, align, export_textgrid, export, units, kmeans, tokenize, tokenizer, shard, build_command,
                stats, show, validate, diff, plot, demo_corpus_command, config_command):
    cli.add_command(command)


def main() -> None:
    run_cli(cli, "lst-data")


if __name__ == "__main__":
    main()
