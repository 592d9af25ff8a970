"""`lst-data`: the command line of the toolkit.

Each stage owns its commands (in `lst_data/<stage>/cli.py`); they are loaded lazily, so
`lst-data --help` stays fast and a stage's heavy imports (torch, ray) happen only when
that stage's command runs.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command or group
LAZY_COMMANDS: dict[str, str] = {
    "ingest": "lst_data.ingest.cli:ingest",
    "demo-corpus": "lst_data.demo:demo_corpus_command",
    "config": "lst_data.ingest.cli:config_command",
    "align": "lst_data.align.cli:align",
    "export-textgrid": "lst_data.align.cli:export_textgrid",
    "units": "lst_data.units.cli:units",
    "tokenizer": "lst_data.tokenize.cli:tokenizer",
    "shard": "lst_data.shards.cli:shard",
    "stats": "lst_data.shards.inspect_cli:stats",
    "show": "lst_data.shards.inspect_cli:show",
    "validate": "lst_data.shards.inspect_cli:validate",
    "diff": "lst_data.shards.inspect_cli:diff",
    "plot": "lst_data.shards.inspect_cli:plot",
    "build": "pipelines.build_corpus:build_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name and module_name.startswith(err.name):
                    return None  # that stage is not part of this install
                raise
            return getattr(module, attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="lst-data")
def main(verbose: bool) -> None:
    """Prepare speech + text corpora for the Latent Speech-Text Transformer."""
    from lst_data.core.progress import setup_logging

    setup_logging(verbose)


if __name__ == "__main__":
    main()
