"""`lst-model`: train, score, generate, compare and build tasks for the LST and the flat baseline; asr and tts."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lst_data.core.cli_options import Commands, StorageLocation, config_file_options, run_cli
from lst_model.config import load_run_spec

if TYPE_CHECKING:
    from lst_model.asr_tts import Selection
    from lst_model.tasks import CommandTTS


@click.group(cls=Commands)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Train and evaluate a small Latent Speech-Text Transformer on lst-data shards."""
    from lst_data.core.progress import setup_logging

    setup_logging(verbose)


def main() -> None:
    run_cli(cli, "lst-model")


_TEXT_HELP = ("Independent text corpus for the text share of the mixture: a file, a folder, a glob or a URL (s3://...) "
              "of .txt (a document per line), .jsonl (a 'text' field) or .parquet (a 'text' column) files; training "
              "streams it. Without it the transcripts stand in.")
_TOKENIZER_HELP = "The shards' tokenizer for --text (default: tokenizer.model beside the shards or in a sibling stage folder)."


_other_space_option = click.option(
    "--allow-other-token-space", "allow_other_space", is_flag=True,
    help="Experts: use shards whose tokenizer or codebook differ from the model's (same sizes); their ids "
         "then mean other pieces or units.")


def _option_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Show the library's OptionErrors as click shows a bad option value, or a usage error when
    no one option is at fault (raised inside the callback, so click names the command)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from lst_model.errors import OptionError

        try:
            command(*args, **kwargs)
        except OptionError as err:
            if err.option is None:
                raise click.UsageError(str(err)) from None
            raise click.BadParameter(str(err), param_hint=err.option) from None

    return run


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@cli.command()
@click.option("--shards", "shard_dir", required=True, type=StorageLocation(exists=True),
              help="The shard folder, or its URL (s3://bucket/shards): tars are streamed from object storage.")
@config_file_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder; an existing checkpoint there is resumed.")
@click.option("--text", "text_path", metavar="PATH|GLOB|URL", help=_TEXT_HELP)
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), help=_TOKENIZER_HELP)
@click.option("--init", "init_run", type=click.Path(exists=True, path_type=Path),
              help="Fine-tune: start from this run folder's (checkpoint.pt's, or exported folder's) weights (same model config and "
                   "token space), with a fresh optimizer and schedule; e.g. with --set data.task=asr.")
@_other_space_option
@_option_errors
def train(shard_dir: Path, config_path: Path | None, out_dir: Path, assignments: tuple[str, ...], text_path: str | None,
          tokenizer_path: Path | None, init_run: Path | None, allow_other_space: bool) -> None:
    """Train (or resume) on the shards' training utterances; held-out transcripts are left for `score`.

    The digests of the training transcripts go to training_texts.npy in --out (score's contamination check).
    Distributed: `torchrun --nproc_per_node N -m lst_model.cli train ...` (DDP; rank 0 prints and writes)."""
    from lst_model.train import checkpoint_path, train_on_shards

    spec = load_run_spec(config_path, assignments=assignments)
    if text_path is not None and spec.data.task != "pretrain":
        raise click.BadParameter(f"data.task={spec.data.task} fine-tunes on utterances only; a text corpus is for "
                                 "data.task=pretrain", param_hint="--text")
    init = checkpoint_path(init_run) if init_run is not None else None
    if init is not None and not init.is_file():
        raise click.BadParameter(f"{init_run} holds no {init.name}", param_hint="--init")

    def report(row: dict[str, Any]) -> None:
        click.echo(f"step {row['step'] + 1}/{spec.steps} loss {row['loss']:.4f} lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s")

    result = train_on_shards(spec, shard_dir, out_dir, text_path=text_path, tokenizer_path=tokenizer_path, init=init,
                             allow_other_token_space=allow_other_space, announce=click.echo, progress_callback=report)
    if result is not None:  # rank 0
        click.echo(json.dumps(result.summary()))


def _pairs(value: str) -> tuple[str, ...]:
    from lst_model.items import PAIRS

    pairs = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    if not pairs or any(p not in PAIRS for p in pairs):
        raise click.BadParameter(f"a comma-separated subset of {','.join(PAIRS)}, got {value!r}", param_hint="--pairs")
    return pairs


@cli.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder, checkpoint.pt, or a folder written by lst-model export.")
@click.option("--mode", type=click.Choice(["multiple-choice", "minimal-pairs"]), default="multiple-choice", show_default=True,
              help="multiple-choice: which ending follows the prompt; minimal-pairs: is the good side of each pair "
                   "more likely than the bad one, without a prompt (sWUGGY / sBLIMP style).")
@click.option("--task", "task_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Items JSONL (lst_model.items), or with --mode minimal-pairs a minimal-pairs JSONL.")
@click.option("--shards", "shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Score continuation items built from these shards' held-out utterances (same-speaker distractors); "
                   "with --mode minimal-pairs, each held-out utterance vs itself with two words swapped.")
@click.option("--pairs", default="s2s,t2t,s2t,t2s", show_default=True, help="--shards: modality pairs to build.")
@click.option("--endings", "n_endings", default=2, show_default=True, type=click.IntRange(2, 64), help="--shards: endings per item.")
@click.option("--seed", default=0, show_default=True, help="--shards: distractor and label choice (minimal pairs: the swapped words).")
@click.option("--patching", type=click.Choice(["static", "word_sil_sep", "word_sil_merged", "bpe"]), default=None,
              help="Speech patching for scoring (default: the run's data.eval_patching).")
@click.option("--drop-contaminated", is_flag=True, help="Score only items whose sources are not training transcripts.")
@click.option("--no-contamination-check", is_flag=True, help="Skip the check against the run's training transcripts.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write per-item scores (JSONL).")
@click.option("--device", default="cpu", show_default=True)
@_other_space_option
def score(run: Path, mode: str, task_path: Path | None, shard_dir: Path | None, pairs: str, n_endings: int, seed: int,
          patching: str | None, drop_contaminated: bool, no_contamination_check: bool, out_path: Path | None,
          device: str, allow_other_space: bool) -> None:
    """Multiple-choice accuracy (± standard error) per modality pair, by summed, per-token and
    per-character (acc_norm) log-likelihood of each ending; or minimal-pair accuracy per
    modality. Prints a table on stderr and the figures as JSON on stdout.

    Items whose sources share a transcript with the model's training data are refused."""
    from lst_model.evaluate import score_checkpoint
    from lst_model.train import checkpoint_path

    if (task_path is None) == (shard_dir is None):
        raise click.UsageError("give exactly one of --task and --shards")
    corpus_pairs = _pairs(pairs) if shard_dir is not None else ()  # --pairs shapes only the items built from --shards
    result = score_checkpoint(checkpoint_path(run), mode=mode, task_path=task_path, shard_dir=shard_dir, pairs=corpus_pairs,
                              n_endings=n_endings, seed=seed, patching=patching, drop_contaminated=drop_contaminated,
                              check_contamination=not no_contamination_check, device=device,
                              allow_other_token_space=allow_other_space, out_path=out_path, notify=_echo_err)
    click.echo("\n".join(result.table), err=True)
    click.echo(json.dumps(result.report))


@cli.command()
@click.option("--shards", "shard_dir", required=True, type=StorageLocation(exists=True),
              help="The shard folder, or its URL (s3://bucket/shards): tars are streamed from object storage.")
@config_file_options
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--text", "text_path", metavar="PATH|GLOB|URL", help=_TEXT_HELP)
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), help=_TOKENIZER_HELP)
@click.option("--mixture-tokens", default=100_000, show_default=True, help="Tokens of the training mixture drawn for its figures.")
@_option_errors
def compare(shard_dir: Path, config_path: Path | None, assignments: tuple[str, ...], as_json: bool, text_path: str | None,
            tokenizer_path: Path | None, mixture_tokens: int) -> None:
    """Global positions and FLOPs: per utterance and over the training mixture, LST (each patching) vs the flat baseline."""
    from lst_model.compare import compare_shards, format_report

    spec = load_run_spec(config_path, assignments=assignments)
    report = compare_shards(shard_dir, spec, text_path=text_path, tokenizer_path=tokenizer_path, mixture_tokens=mixture_tokens)
    if text_path is None:
        click.echo("warning: no --text corpus: the transcripts stand in for the text share", err=True)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(format_report(report)))


def _utterance_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The model, the shards and which of their utterances `asr` and `tts` run on."""
    for option in reversed([
        click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder, checkpoint.pt or exported folder (fine-tuned with data.task asr, tts or asr_tts)."),
        click.option("--shards", "shard_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)),
        click.option("--split", type=click.Choice(["train", "heldout", "all"]), default="heldout", show_default=True,
                     help="Utterances of the model's training split, of the held-out split, or all."),
        click.option("--ids", default=None, help="Comma-separated utterance ids (within --split)."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many utterances (after --ids)."),
        click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write per-utterance results (JSONL)."),
        click.option("--device", default="cpu", show_default=True),
        _other_space_option,
    ]):
        fn = option(fn)
    return fn


def _selection(split: str, ids: str | None, limit: int | None) -> Selection:
    from lst_model.asr_tts import Selection

    return Selection(split, tuple(i for i in ids.split(",") if i) if ids is not None else None, limit)


@cli.command()
@_utterance_options
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path),
              help="The shards' tokenizer (default: tokenizer.model beside the shards or in a sibling stage folder).")
@_option_errors
def asr(run: Path, shard_dir: Path, split: str, ids: str | None, limit: int | None, out_path: Path | None, device: str,
        allow_other_space: bool, tokenizer_path: Path | None) -> None:
    """Greedy transcripts of utterances' units; WER and CER against their normalized transcripts."""
    from lst_model.asr_tts import recognize_shards
    from lst_model.train import checkpoint_path

    summary = recognize_shards(checkpoint_path(run), shard_dir, _selection(split, ids, limit), tokenizer_path=tokenizer_path,
                               device=device, allow_other_token_space=allow_other_space, out_path=out_path, warn=_warn)
    click.echo(json.dumps(summary))


@cli.command()
@_utterance_options
@_option_errors
def tts(run: Path, shard_dir: Path, split: str, ids: str | None, limit: int | None, out_path: Path | None, device: str,
        allow_other_space: bool) -> None:
    """Greedy units of utterances' transcripts; unit edit distance (per reference unit) and
    generated/reference length ratio against their units."""
    from lst_model.asr_tts import synthesize_shards
    from lst_model.train import checkpoint_path

    summary = synthesize_shards(checkpoint_path(run), shard_dir, _selection(split, ids, limit), device=device,
                                allow_other_token_space=allow_other_space, out_path=out_path, warn=_warn)
    click.echo(json.dumps(summary))


def _tts_command(tts_argv: str | None) -> CommandTTS:
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
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Multiple-choice JSONL (HellaSwag, StoryCloze or {context, endings, label}). Without it: continuation "
                   "items from the shards' own held-out utterances (same-speaker distractors, lst_model.corpus_tasks).")
@click.option("--shards", "shard_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The shard set the task is for: its tokenizer, codebook and pipeline config make the sides.")
@click.option("--pairs", default="s2s,t2t,s2t,t2s", show_default=True, help="Modality pairs to build (prompt 2 endings; s speech, t text).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Items JSONL; the dropped items go to NAME.rejects.jsonl beside it.")
@click.option("--voices", default=None, help="TTS voices, comma-separated; each item is spoken in one of them, chosen by its id. [default: the demo corpus's espeak-ng voices]")
@click.option("--tts", "tts_argv", default=None, help='TTS command as a JSON list with "{out}" for the wav it writes and "{voice}"; text on stdin. Default: espeak-ng.')
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Build the first N items only.")
@click.option("--runner", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="How the lst-data stages run over the synthesized audio (local: in this process, fastest for small sets).")
@click.option("--heldout-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Without --input: the held-out share of transcripts (must be the training run's data.heldout_fraction). "
                   "[default: the data.heldout_fraction default]")
@click.option("--endings", "n_endings", default=2, show_default=True, type=click.IntRange(2, 64), help="Without --input: endings per item.")
@click.option("--seed", default=0, show_default=True, help="Without --input: distractor and label choice.")
def build_task(input_path: Path | None, shard_dir: Path, pairs: str, out_path: Path, voices: str | None, tts_argv: str | None,
               limit: int | None, runner: str, heldout_fraction: float | None, n_endings: int, seed: int) -> None:
    """Turn a text multiple-choice set into items of each modality pair for `score`.

    Speech sides: each item's context and endings synthesized in one voice and run through
    the shards' own pipeline (align, units, tokenize). Exit code 0: every item built; 3: some dropped.
    """
    from lst_data.core.summary import EXIT_WITH_REJECTS
    from lst_model.corpus_tasks import build_corpus_task
    from lst_model.tasks import DEFAULT_VOICES, build_task, has_speech

    chosen = list(_pairs(pairs))
    if input_path is None:
        for line in build_corpus_task(shard_dir, chosen, out_path, heldout_fraction=heldout_fraction, n_endings=n_endings,
                                      seed=seed, limit=limit):
            click.echo(line)
        return
    voice_names = _names(voices, "--voices") if voices is not None else list(DEFAULT_VOICES)
    tts = _tts_command(tts_argv) if any(map(has_speech, chosen)) else None
    result = build_task(input_path, shard_dir, chosen, out_path, tts=tts, voices=voice_names, limit=limit, runner=runner)
    for line in result.summary(chosen, out_path):
        click.echo(line)
    if result.dropped:
        sys.exit(EXIT_WITH_REJECTS)


@cli.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder, checkpoint.pt, or a folder written by lst-model export.")
@click.option("--text", "prompt_text", help="Text prompt (normalized as the transcripts were, encoded with the shards' tokenizer).")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The shards' tokenizer, to encode --text and decode generated text (default: found beside --shards).")
@click.option("--shards", "shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Shards holding --sample (and, beside them, the tokenizer).")
@click.option("--sample", "sample_id", help="Speech prompt: the units of this shard utterance (its id).")
@click.option("--prompt-seconds", type=click.FloatRange(min=0, min_open=True), help="--sample: only its first S seconds.")
@click.option("--prompt-words", type=click.IntRange(min=1), help="--sample: only the frames of its first N words.")
@click.option("--continue-in", type=click.Choice(["same", "speech", "text"]), default="same", show_default=True,
              help="Modality of the continuation; the other modality's marker is appended to the prompt.")
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="Sample among the k most likely (0 = all).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the sampler.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the generation as JSON.")
@click.option("--device", default="cpu", show_default=True)
@_other_space_option
@_option_errors
def generate(run: Path, prompt_text: str | None, tokenizer_path: Path | None, shard_dir: Path | None, sample_id: str | None,
             prompt_seconds: float | None, prompt_words: int | None, continue_in: str, max_new_tokens: int,
             temperature: float, top_k: int, seed: int, out_path: Path | None, device: str,
             allow_other_space: bool) -> None:
    """Continue a text or speech prompt with the KV cache (greedy, temperature, top-k); EOS stops.

    Generated speech is unit ids (no vocoder). See docs/generation.md."""
    from lst_model.generate import Sampler, generate_from_checkpoint
    from lst_model.train import checkpoint_path

    if (prompt_text is None) == (sample_id is None):
        raise click.UsageError("give exactly one prompt: --text, or --shards with --sample")
    if sample_id is not None and shard_dir is None:
        raise click.UsageError("--sample needs --shards (the shards holding that utterance)")
    if sample_id is None and (prompt_seconds is not None or prompt_words is not None):
        raise click.UsageError("--prompt-seconds and --prompt-words cut a --sample prompt; they do not apply to --text")
    if prompt_seconds is not None and prompt_words is not None:
        raise click.UsageError("give at most one of --prompt-seconds and --prompt-words")
    report = generate_from_checkpoint(
        checkpoint_path(run), text=prompt_text, sample_id=sample_id, prompt_seconds=prompt_seconds, prompt_words=prompt_words,
        shard_dir=shard_dir, tokenizer_path=tokenizer_path, continue_in=continue_in, max_new_tokens=max_new_tokens,
        sampler=Sampler(temperature, top_k, seed), device=device, allow_other_token_space=allow_other_space, out_path=out_path)
    click.echo(report.headline())
    click.echo(json.dumps(report.to_json()))


@cli.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for config.json and model.safetensors (a new one, or an earlier export's).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="Cast the floating-point weights. [default: as trained]")
@_option_errors
def export(run: Path, out_dir: Path, dtype: str | None) -> None:
    """A run's model (RUN: run folder or checkpoint.pt) as a Hugging Face-style folder: model.safetensors,
    config.json and the token space, loadable with from_pretrained without the training code."""
    from lst_model.export import export_checkpoint
    from lst_model.train import checkpoint_path

    click.echo(export_checkpoint(checkpoint_path(run), out_dir, dtype=dtype).summary())


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--x", "x_axis", type=click.Choice(["global_positions", "tokens", "train_flops"]), default="global_positions", show_default=True)
def plot(runs: tuple[str, ...], out_path: Path, x_axis: str) -> None:
    """Loss curves of runs (LABEL=RUN_DIR or RUN_DIR) on one PNG."""
    from lst_model.train import plot_losses

    click.echo(str(plot_losses(dict(_labelled(run) for run in runs), out_path, x=x_axis)))


def _labelled(run: str) -> tuple[str, str]:
    """(label, run folder) of a LABEL=RUN_DIR argument; a bare RUN_DIR is labelled with its name."""
    label, given, folder = run.partition("=")
    return (label, folder) if given else (Path(run).name, run)


if __name__ == "__main__":
    main()
