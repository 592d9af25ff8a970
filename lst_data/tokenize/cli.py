"""`lst-data tokenize` (the stage) and `lst-data tokenizer train|encode` (train a BPE, see how text splits)."""

from __future__ import annotations

from pathlib import Path

import click

from lst_data.core.cli_options import config_options, load_run_config
from lst_data.core.lock import locks_run_folder


@click.command("tokenize")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (tokens.parquet, rejects.parquet, tokenize.json; tokenizer.model when trained).")
@click.option("--model", default=None, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Alias of --set tokenizer.model=...: SentencePiece .model or tokenizer.json; none: train a BPE into OUT.")
@click.option("--vocab-size", type=int, default=None, help="Alias of --set tokenizer.vocab_size=....")
@config_options
@locks_run_folder
def tokenize(manifest_dir: Path, out: Path, model: str | None, vocab_size: int | None, config_path: Path | None,
             assignments: tuple[str, ...], runner: str | None) -> None:
    """BPE pieces, each tied to its word, for every transcript of MANIFEST_DIR/manifest.parquet.

    Exit code 0: every transcript tokenized; 3: finished, with rejects.
    """
    from lst_data.core.summary import finish_stage_command
    from lst_data.tokenize.stage import tokenize_manifest

    config = load_run_config(config_path, assignments, runner,
                             aliases={"tokenizer.model": model, "tokenizer.vocab_size": vocab_size})
    finish_stage_command(f"tokenize {manifest_dir} -> {out}", tokenize_manifest(manifest_dir, out, config), config)


@click.group("tokenizer")
def tokenizer() -> None:
    """Train a SentencePiece BPE on a corpus, or inspect how a tokenizer splits words."""


@tokenizer.command("train")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file to write."
)
@click.option("--vocab-size", type=int, default=None, help="Alias of --set tokenizer.vocab_size=....")
@click.option("--seed", type=int, default=None, help="Alias of --set seed=... (the training seed).")
@config_options
def train(manifest_dir: Path, out: Path, vocab_size: int | None, seed: int | None, config_path: Path | None,
          assignments: tuple[str, ...], runner: str | None) -> None:
    """Train a BPE on the normalized transcripts of MANIFEST_DIR/manifest.parquet (or a .parquet file)."""
    from lst_data.core.errors import ConfigError
    from lst_data.core.runner import read_manifest
    from lst_data.tokenize.tokenizer import train_tokenizer

    config = load_run_config(config_path, assignments, runner,
                             aliases={"tokenizer.vocab_size": vocab_size, "seed": seed})
    texts = read_manifest(manifest_dir)["normalized_text"].to_pylist()
    try:
        trained = train_tokenizer(texts, out, config.tokenizer.vocab_size, config.seed,
                                  character_coverage=config.tokenizer.character_coverage)
    except ValueError as err:
        raise ConfigError(f"tokenizer.vocab_size: {err}") from err
    click.echo(f"{out}: {trained.vocab_size} pieces from {len(texts)} transcripts, sha256 {trained.hash}")


@tokenizer.command("encode")
@click.option(
    "--model",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="SentencePiece .model or Hugging Face tokenizer.json.",
)
@click.argument("text")
def encode(model: Path, text: str) -> None:
    """Normalize TEXT as the pipeline does and print its pieces with the words they belong to."""
    from lst_data.text import normalize_text
    from lst_data.tokenize.tokenizer import load_tokenizer

    loaded = load_tokenizer(model)
    words = normalize_text(text).words
    pieces = loaded.encode_words(words)
    click.echo(f"{loaded.kind} tokenizer, {loaded.vocab_size} pieces, sha256 {loaded.hash[:12]}")
    click.echo(f"{'#':>4} {'id':>7}  {'piece':<16} word")
    for n, piece in enumerate(pieces):
        click.echo(f"{n:>4} {piece.id:>7}  {piece.piece!r:<16} {piece.word_index}:{words[piece.word_index]}")
