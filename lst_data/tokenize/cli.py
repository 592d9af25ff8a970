"""`lst-data tokenizer train|encode`: train a corpus BPE, look at how text is split."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("tokenizer")
def tokenizer() -> None:
    """Train a SentencePiece BPE on a corpus, or inspect how a tokenizer splits words."""


@tokenizer.command("train")
@click.argument("manifest_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file to write."
)
@click.option("--vocab-size", type=int, default=None, help="Pieces to learn (default: tokenizer.vocab_size).")
@click.option("--seed", type=int, default=None, help="Training seed (default: the config's seed).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run config (YAML) for tokenizer.* and seed.",
)
def train(
    manifest_dir: Path, out: Path, vocab_size: int | None, seed: int | None, config_path: Path | None
) -> None:
    """Train a BPE on the normalized transcripts of MANIFEST_DIR/manifest.parquet (or a .parquet file)."""
    import pyarrow.parquet as pq

    from lst_data.ingest.cli import load_run_config
    from lst_data.tokenize.tokenizer import train_tokenizer

    config = load_run_config(config_path, None)
    manifest = manifest_dir / "manifest.parquet" if manifest_dir.is_dir() else manifest_dir
    texts = pq.read_table(manifest, columns=["normalized_text"])["normalized_text"].to_pylist()
    try:
        trained = train_tokenizer(
            texts,
            out,
            vocab_size if vocab_size is not None else config.tokenizer.vocab_size,
            seed if seed is not None else config.seed,
            character_coverage=config.tokenizer.character_coverage,
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from err
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
