"""`lst-model`: train, score, compare and build tasks for the LST and the flat baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lst_data.core.cli_options import Commands, config_file_options, run_cli
from lst_model.config import load_run_spec


@click.group(cls=Commands)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Train and evaluate a small Latent Speech-Text Transformer on lst-data shards."""
    from lst_data.core.progress import setup_logging

    setup_logging(verbose)


def main() -> None:
    run_cli(cli, "lst-model")


_TEXT_HELP = ("Independent text corpus for the text share of the mixture: plain text (a document per line), "
              "JSONL with a 'text' field, or Parquet with a 'text' column. Without it the transcripts stand in.")
_TOKENIZER_HELP = "The shards' tokenizer for --text (default: tokenizer.model beside the shards or in a sibling stage folder)."


def _text_corpus(text_path: Path | None, tokenizer_path: Path | None, shard_dir: Path, space) -> list | None:
    """The --text corpus as BPE ids, or None when none is given."""
    from lst_model.text_corpus import TextCorpusError, find_tokenizer, load_text_corpus

    if text_path is None:
        return None
    tokenizer_path = tokenizer_path or find_tokenizer(shard_dir)
    if tokenizer_path is None:
        raise click.UsageError(f"--text needs the shards' tokenizer: none found near {shard_dir}; give --tokenizer")
    dataset = json.loads((shard_dir / "dataset.json").read_text(encoding="utf-8"))
    try:
        return load_text_corpus(text_path, tokenizer_path, dataset, space.text_vocab_size)
    except TextCorpusError as err:
        raise click.UsageError(str(err)) from None


@cli.command()
@click.option("--shards", "shard_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_file_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder; an existing checkpoint there is resumed.")
@click.option("--text", "text_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help=_TEXT_HELP)
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), help=_TOKENIZER_HELP)
def train(shard_dir: Path, config_path: Path | None, out_dir: Path, assignments: tuple[str, ...], text_path: Path | None,
          tokenizer_path: Path | None) -> None:
    """Train (or resume) on the shards' training utterances; held-out ones are left for `score`.

    Distributed: `torchrun --nproc_per_node N -m lst_model.cli train ...` (DDP; rank 0 prints and writes)."""
    from lst_model.data import load_records, load_token_space, split_heldout
    from lst_model.train import Distributed, plot_losses
    from lst_model.train import train as run_training

    spec = load_run_spec(config_path, assignments=assignments)
    space = load_token_space(shard_dir)
    texts = _text_corpus(text_path, tokenizer_path, shard_dir, space)
    main_rank = Distributed.from_env().main
    corpus = f", text corpus of {len(texts)} documents" if texts is not None else ""
    if spec.data.input == "stream":  # records are read by the DataLoader workers, never all at once
        from lst_data.shards.reader import ShardSet

        records = None
        summary = f"{ShardSet.from_dir(shard_dir).total_samples} utterances streamed ({spec.data.stream_mode})"
    else:
        records, heldout = split_heldout(load_records(shard_dir), spec.data.heldout_fraction)
        summary = f"{len(records)} training utterances ({len(heldout)} held out)"
    if main_rank:
        click.echo(f"{spec.model.kind}: {summary}{corpus}, {spec.steps} steps")

    def report(row: dict) -> None:
        click.echo(f"step {row['step'] + 1}/{spec.steps} loss {row['loss']:.4f} lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s")

    result = run_training(spec, records, space, out_dir, texts=texts, shard_dir=shard_dir, progress_callback=report)
    if not main_rank:
        return
    plot_losses({spec.model.kind: out_dir}, out_dir / "loss.png")
    click.echo(json.dumps({"out": str(result.out_dir), "steps": result.steps, "final_loss": result.final_loss,
                           "parameters": result.parameters, "tokens_per_second": round(result.tokens_per_second, 1),
                           "global_positions_per_second": round(result.positions_per_second, 1)}))


def _checkpoint_path(run: Path) -> Path:
    from lst_model.train import CHECKPOINT

    return run / CHECKPOINT if run.is_dir() else run


@cli.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder or checkpoint.pt.")
@click.option("--task", "task_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Items JSONL from `build-task`.")
@click.option("--shards", "shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Score the held-out continuation task of these shards.")
@click.option("--mode", type=click.Choice(["speech", "text", "both"]), default="both", show_default=True, help="Held-out task modality.")
@click.option("--seed", default=0, show_default=True, help="Held-out task: distractor and label choice.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write per-item scores (JSONL).")
@click.option("--device", default="cpu", show_default=True)
def score(run: Path, task_path: Path | None, shard_dir: Path | None, mode: str, seed: int, out_path: Path | None, device: str) -> None:
    """Multiple-choice accuracy by summed and per-token log-likelihood of each ending."""
    from lst_model.data import is_heldout, load_records
    from lst_model.score import accuracy, read_items, score_items
    from lst_model.tasks import heldout_continuation_items
    from lst_model.train import load_model

    if (task_path is None) == (shard_dir is None):
        raise click.UsageError("give exactly one of --task and --shards")
    model, spec, space = load_model(_checkpoint_path(run), device)
    if task_path is not None:
        items = read_items(task_path)
    else:
        heldout = [r for r in load_records(shard_dir) if is_heldout(r.id, spec.data.heldout_fraction)]
        modes = ("speech", "text") if mode == "both" else (mode,)
        items = [item for m in modes for item in heldout_continuation_items(heldout, m, seed=seed)]
    scores = score_items(model, spec, space, items, device=device)
    results = {m: accuracy([s for s in scores if s.mode == m]) for m in sorted({s.mode for s in scores})}
    if out_path is not None:
        out_path.write_text("".join(json.dumps({"id": s.id, "mode": s.mode, "label": s.label, "sums": s.sums,
                                                "lengths": s.lengths}) + "\n" for s in scores), encoding="utf-8")
    click.echo(json.dumps(results))


@cli.command()
@click.option("--shards", "shard_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_file_options
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--text", "text_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help=_TEXT_HELP)
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), help=_TOKENIZER_HELP)
@click.option("--mixture-tokens", default=100_000, show_default=True, help="Tokens of the training mixture drawn for its figures.")
def compare(shard_dir: Path, config_path: Path | None, assignments: tuple[str, ...], as_json: bool, text_path: Path | None,
            tokenizer_path: Path | None, mixture_tokens: int) -> None:
    """Global positions and FLOPs: per utterance and over the training mixture, LST (each patching) vs the flat baseline."""
    from lst_model.compare import compare as run_compare
    from lst_model.compare import format_report
    from lst_model.data import load_records, load_token_space

    spec = load_run_spec(config_path, assignments=assignments)
    space = load_token_space(shard_dir)
    texts = _text_corpus(text_path, tokenizer_path, shard_dir, space)
    if texts is None:
        click.echo("warning: no --text corpus: the transcripts stand in for the text share", err=True)
    report = run_compare(load_records(shard_dir), space, spec, seed=spec.train.seed, texts=texts, mixture_tokens=mixture_tokens)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(format_report(report)))


def _tts_command(tts_argv: str | None):
    from lst_model.tasks import DEFAULT_TTS, CommandTTS

    if tts_argv is None:
        return CommandTTS(DEFAULT_TTS)
    try:
        argv = json.loads(tts_argv)
    except ValueError as err:
        raise click.BadParameter(f"not JSON ({err}); expected a list such as "
                                 '["espeak-ng", "-v", "{voice}", "-w", "{out}", "--stdin"]', param_hint="--tts") from None
    if not isinstance(argv, list):
        raise click.BadParameter("expected a JSON list of strings", param_hint="--tts")
    return CommandTTS(argv)


def _names(value: str, what: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise click.BadParameter("give at least one name, comma-separated", param_hint=what)
    return names


@cli.command("build-task")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Multiple-choice JSONL (HellaSwag, StoryCloze or {context, endings, label}).")
@click.option("--shards", "shard_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The shard set the task is for: its tokenizer, codebook and pipeline config make the sides.")
@click.option("--pairs", default="s2s,t2t,s2t,t2s", show_default=True, help="Modality pairs to build (prompt 2 endings; s speech, t text).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Items JSONL; the dropped items go to NAME.rejects.jsonl beside it.")
@click.option("--voices", default=None, help="TTS voices, comma-separated; each item is spoken in one of them, chosen by its id. [default: the demo corpus's espeak-ng voices]")
@click.option("--tts", "tts_argv", default=None, help='TTS command as a JSON list with "{out}" for the wav it writes and "{voice}"; text on stdin. Default: espeak-ng.')
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Build the first N items only.")
@click.option("--runner", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="How the lst-data stages run over the synthesized audio (local: in this process, fastest for small sets).")
def build_task(input_path: Path, shard_dir: Path, pairs: str, out_path: Path, voices: str | None, tts_argv: str | None,
               limit: int | None, runner: str) -> None:
    """Turn a text multiple-choice set into items of each modality pair for `score`.

    Speech sides: each item's context and endings synthesized in one voice and run through
    the shards' own pipeline (align, units, tokenize). Exit code 0: every item built; 3: some dropped.
    """
    from lst_data.core.summary import EXIT_WITH_REJECTS
    from lst_model.tasks import (
        DEFAULT_VOICES,
        ShardBuild,
        build_choice_items,
        check_pairs,
        has_speech,
        read_choice_jsonl,
        write_build,
    )

    chosen = _names(pairs, "--pairs")
    check_pairs(chosen)
    voice_names = _names(voices, "--voices") if voices is not None else list(DEFAULT_VOICES)
    tts = _tts_command(tts_argv) if any(map(has_speech, chosen)) else None
    shards = ShardBuild.from_shard_dir(shard_dir)
    result = build_choice_items(read_choice_jsonl(input_path, limit), chosen, shards, tts=tts, voices=voice_names, runner=runner)
    rejects = write_build(result, out_path)
    per_pair = result.items_per_pair()
    click.echo("items: " + ", ".join(f"{p} {per_pair.get(p, 0)}" for p in chosen) + f" -> {out_path}")
    reasons = ", ".join(f"{reason} {n}" for reason, n in result.dropped_per_reason().items())
    click.echo(f"dropped: {len(result.dropped)} items" + (f" ({reasons})" if reasons else "") + f" -> {rejects}")
    if result.dropped:
        sys.exit(EXIT_WITH_REJECTS)


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--x", "x_axis", type=click.Choice(["global_positions", "tokens", "train_flops"]), default="global_positions", show_default=True)
def plot(runs: tuple[str, ...], out_path: Path, x_axis: str) -> None:
    """Loss curves of runs (LABEL=RUN_DIR or RUN_DIR) on one PNG."""
    from lst_model.train import plot_losses

    named = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in runs)
    click.echo(str(plot_losses(named, out_path, x=x_axis)))


if __name__ == "__main__":
    main()
