"""`lst-model`: train, score, generate, compare and build tasks for the LST and the flat baseline; asr and tts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lst_data.core.cli_options import Commands, StorageLocation, config_file_options, run_cli
from lst_data.core.errors import UserError
from lst_model.config import load_run_spec
from lst_model.tokens import check_same_space


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


_other_space_option = click.option(
    "--allow-other-token-space", "allow_other_space", is_flag=True,
    help="Experts: use shards whose tokenizer or codebook differ from the model's (same sizes); their ids "
         "then mean other pieces or units.")


def _text_corpus(text_path: Path | None, tokenizer_path: Path | None, shard_dir: Path, space) -> list | None:
    """The --text corpus as BPE ids, or None when none is given."""
    from lst_model.data import read_dataset_json
    from lst_model.text_corpus import TextCorpusError, find_tokenizer, load_text_corpus

    if text_path is None:
        return None
    tokenizer_path = tokenizer_path or find_tokenizer(shard_dir)
    if tokenizer_path is None:
        raise click.UsageError(f"--text needs the shards' tokenizer: none found near {shard_dir}; give --tokenizer")
    dataset = read_dataset_json(shard_dir)
    try:
        return load_text_corpus(text_path, tokenizer_path, dataset, space.text_vocab_size)
    except TextCorpusError as err:
        raise click.UsageError(str(err)) from None


@cli.command()
@click.option("--shards", "shard_dir", required=True, type=StorageLocation(exists=True),
              help="The shard folder, or its URL (s3://bucket/shards): tars are streamed from object storage.")
@config_file_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder; an existing checkpoint there is resumed.")
@click.option("--text", "text_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help=_TEXT_HELP)
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), help=_TOKENIZER_HELP)
@click.option("--init", "init_run", type=click.Path(exists=True, path_type=Path),
              help="Fine-tune: start from this run folder's (or checkpoint.pt's) weights (same model config and "
                   "token space), with a fresh optimizer and schedule; e.g. with --set data.task=asr.")
@_other_space_option
def train(shard_dir: Path, config_path: Path | None, out_dir: Path, assignments: tuple[str, ...], text_path: Path | None,
          tokenizer_path: Path | None, init_run: Path | None, allow_other_space: bool) -> None:
    """Train (or resume) on the shards' training utterances; held-out transcripts are left for `score`.

    The digests of the training transcripts go to training_texts.npy in --out (score's contamination check).
    Distributed: `torchrun --nproc_per_node N -m lst_model.cli train ...` (DDP; rank 0 prints and writes)."""
    import numpy as np

    from lst_model.data import (
        TRAINING_TEXTS,
        is_heldout,
        load_records,
        load_token_space,
        read_training_texts,
        split_heldout,
        write_training_texts,
    )
    from lst_model.train import Distributed, plot_losses
    from lst_model.train import train as run_training

    spec = load_run_spec(config_path, assignments=assignments)
    if text_path is not None and spec.data.task != "pretrain":
        raise click.BadParameter(f"data.task={spec.data.task} fine-tunes on utterances only; a text corpus is for "
                                 "data.task=pretrain", param_hint="--text")
    init = _checkpoint_path(init_run) if init_run is not None else None
    if init is not None and not init.is_file():
        raise click.BadParameter(f"{init_run} holds no {init.name}", param_hint="--init")
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
        if records is None:  # one pass over the records, without audio
            from lst_data.shards.reader import iter_records

            training_texts = (r.text for r in iter_records(shard_dir, with_audio=False)
                              if not is_heldout(r, spec.data.heldout_fraction))
        else:
            training_texts = (r.text for r in records)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_training_texts(out_dir, training_texts)
        pretrained_texts = read_training_texts(init.parent) if init is not None else None
        if pretrained_texts is not None:  # the init's weights saw these too (score's contamination check)
            np.save(out_dir / TRAINING_TEXTS, np.union1d(read_training_texts(out_dir), pretrained_texts), allow_pickle=False)
        click.echo(f"{spec.model.kind}: {summary}{corpus}, {spec.steps} steps")

    def report(row: dict) -> None:
        click.echo(f"step {row['step'] + 1}/{spec.steps} loss {row['loss']:.4f} lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s")

    result = run_training(spec, records, space, out_dir, texts=texts, shard_dir=shard_dir, progress_callback=report,
                          init=init, allow_other_token_space=allow_other_space)
    if not main_rank:
        return
    plot_losses({spec.model.kind: out_dir}, out_dir / "loss.png")
    click.echo(json.dumps({"out": str(result.out_dir), "steps": result.steps, "final_loss": result.final_loss,
                           "parameters": result.parameters, "tokens_per_second": round(result.tokens_per_second, 1),
                           "global_positions_per_second": round(result.positions_per_second, 1)}))


def _checkpoint_path(run: Path) -> Path:
    from lst_model.train import CHECKPOINT

    return run / CHECKPOINT if run.is_dir() else run


def _pairs(value: str) -> tuple[str, ...]:
    from lst_model.items import PAIRS

    pairs = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    if not pairs or any(p not in PAIRS for p in pairs):
        raise click.BadParameter(f"a comma-separated subset of {','.join(PAIRS)}, got {value!r}", param_hint="--pairs")
    return pairs


@cli.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder or checkpoint.pt.")
@click.option("--task", "task_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Items JSONL (lst_model.items).")
@click.option("--shards", "shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Score continuation items built from these shards' held-out utterances (same-speaker distractors).")
@click.option("--pairs", default="s2s,t2t,s2t,t2s", show_default=True, help="--shards: modality pairs to build.")
@click.option("--endings", "n_endings", default=2, show_default=True, type=click.IntRange(2, 64), help="--shards: endings per item.")
@click.option("--seed", default=0, show_default=True, help="--shards: distractor and label choice.")
@click.option("--patching", type=click.Choice(["static", "word_sil_sep", "word_sil_merged", "bpe"]), default=None,
              help="Speech patching for scoring (default: the run's data.eval_patching).")
@click.option("--drop-contaminated", is_flag=True, help="Score only items whose sources are not training transcripts.")
@click.option("--no-contamination-check", is_flag=True, help="Skip the check against the run's training transcripts.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write per-item scores (JSONL).")
@click.option("--device", default="cpu", show_default=True)
@_other_space_option
def score(run: Path, task_path: Path | None, shard_dir: Path | None, pairs: str, n_endings: int, seed: int,
          patching: str | None, drop_contaminated: bool, no_contamination_check: bool, out_path: Path | None,
          device: str, allow_other_space: bool) -> None:
    """Multiple-choice accuracy (± standard error) per modality pair, by summed and per-token
    log-likelihood of each ending. Prints a table on stderr and the figures as JSON on stdout.

    Items whose sources share a transcript with the model's training data are refused."""
    from lst_model.corpus_tasks import corpus_items
    from lst_model.data import contaminated, load_records, load_token_space, read_training_texts
    from lst_model.items import read_items
    from lst_model.score import accuracy_by_pair, format_accuracy_table, resolve_patching, score_items
    from lst_model.train import load_model

    if (task_path is None) == (shard_dir is None):
        raise click.UsageError("give exactly one of --task and --shards")
    checkpoint = _checkpoint_path(run)
    model, spec, space = load_model(checkpoint, device)
    patching = resolve_patching(spec, patching)
    report: dict = {"patching": "flat (baseline)" if spec.model.kind == "baseline" else patching}
    if task_path is not None:
        items = read_items(task_path)
    else:
        check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_space)
        items, skips = corpus_items(load_records(shard_dir), spec.data.heldout_fraction, pairs=_pairs(pairs),
                                    n_endings=n_endings, seed=seed)
        report["skipped_utterances"] = skips
    if not no_contamination_check:
        digests = read_training_texts(checkpoint.parent)
        if digests is None:
            raise UserError(f"{checkpoint.parent}: no training_texts.npy (a run from before the contamination check); "
                            "retrain, or pass --no-contamination-check")
        dirty = [item.id for item in items if contaminated(item.sources, digests)]
        if dirty and not drop_contaminated:
            raise UserError(f"{len(dirty)} of {len(items)} items share a transcript with the model's training data "
                            f"(first: {', '.join(dirty[:3])}); rebuild the task from held-out text or pass --drop-contaminated")
        if dirty:
            dropped = set(dirty)
            items = [item for item in items if item.id not in dropped]
            click.echo(f"dropped {len(dirty)} contaminated items of {len(items) + len(dirty)}", err=True)
        report["dropped_contaminated"] = len(dirty)
    if not items:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(report.get("skipped_utterances", {}).items()))
        raise UserError("no items to score" + (f": the held-out utterances gave none ({skipped}); a larger "
                                               "data.heldout_fraction or fewer --endings gives more" if skipped else ""))
    scores = score_items(model, spec, space, items, patching=patching, device=device)
    report["pairs"] = accuracy_by_pair(scores)
    if out_path is not None:
        out_path.write_text("".join(json.dumps(s.to_json()) + "\n" for s in scores), encoding="utf-8")
    click.echo("\n".join(format_accuracy_table(report["pairs"])), err=True)
    click.echo(json.dumps(report))


@cli.command()
@click.option("--shards", "shard_dir", required=True, type=StorageLocation(exists=True),
              help="The shard folder, or its URL (s3://bucket/shards): tars are streamed from object storage.")
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
    records = load_records(shard_dir)
    if not records:
        raise UserError(f"--shards: {shard_dir} holds no samples (every utterance of its build was rejected)")
    texts = _text_corpus(text_path, tokenizer_path, shard_dir, space)
    if texts is None:
        click.echo("warning: no --text corpus: the transcripts stand in for the text share", err=True)
    report = run_compare(records, space, spec, seed=spec.train.seed, texts=texts, mixture_tokens=mixture_tokens)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(format_report(report)))


def _utterance_options(fn):
    """The model, the shards and which of their utterances `asr` and `tts` run on."""
    for option in reversed([
        click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder or checkpoint.pt (fine-tuned with data.task asr, tts or asr_tts)."),
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


def _model_and_utterances(run: Path, shard_dir: Path, split: str, ids: str | None, limit: int | None, device: str,
                          allow_other_space: bool):
    """The model, its spec and token space, and the selected records (usage errors for a
    token space that is not the shards', unknown ids, or an empty selection)."""
    from lst_model.data import load_records, load_token_space, split_heldout
    from lst_model.train import load_model

    model, spec, space = load_model(_checkpoint_path(run), device)
    check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_space)
    records = load_records(shard_dir)
    if split != "all":
        train_records, heldout = split_heldout(records, spec.data.heldout_fraction)
        records = train_records if split == "train" else heldout
    if ids is not None:
        by_id = {r.id: r for r in records}
        wanted = [i for i in ids.split(",") if i]
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise click.BadParameter(f"not in the {split} split of {shard_dir}: {', '.join(missing)}", param_hint="--ids")
        records = [by_id[i] for i in wanted]
    records = records[:limit]
    if not records:
        raise click.UsageError(f"no utterances selected (--split {split})")
    return model, spec, space, records


def _warn_unless_fine_tuned(spec, task: str) -> None:
    """A model not fine-tuned for `task` still runs (zero-shot, through what interleaving taught it), with a warning."""
    if spec.data.task not in (task, "asr_tts"):
        click.echo(f"warning: this model was trained with data.task={spec.data.task}, not {task}; fine-tune it first "
                   f"(lst-model train --init RUN --set data.task={task}) for meaningful figures", err=True)


def _write_jsonl(path: Path | None, rows) -> None:
    if path is not None:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@cli.command()
@_utterance_options
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path),
              help="The shards' tokenizer (default: tokenizer.model beside the shards or in a sibling stage folder).")
def asr(run: Path, shard_dir: Path, split: str, ids: str | None, limit: int | None, out_path: Path | None, device: str,
        allow_other_space: bool, tokenizer_path: Path | None) -> None:
    """Greedy transcripts of utterances' units; WER and CER against their normalized transcripts."""
    from lst_data.tokenize.tokenizer import load_tokenizer
    from lst_model.asr_tts import recognize
    from lst_model.metrics import character_error_rate, word_error_rate
    from lst_model.text_corpus import find_tokenizer

    model, spec, space, records = _model_and_utterances(run, shard_dir, split, ids, limit, device, allow_other_space)
    _warn_unless_fine_tuned(spec, "asr")
    tokenizer_path = tokenizer_path or find_tokenizer(shard_dir)
    if tokenizer_path is None:
        raise click.UsageError(f"no tokenizer found near {shard_dir}; give --tokenizer")
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != space.text_vocab_size:
        raise click.BadParameter(f"{tokenizer_path}: vocabulary {tokenizer.vocab_size} != the model's "
                                 f"{space.text_vocab_size}", param_hint="--tokenizer")
    results = recognize(model, spec, space, records, tokenizer.decode, device=device)
    _write_jsonl(out_path, (r.to_json() for r in results))
    references, hypotheses = [r.reference for r in results], [r.hypothesis for r in results]
    click.echo(json.dumps({"utterances": len(results), "wer": word_error_rate(references, hypotheses),
                           "cer": character_error_rate(references, hypotheses),
                           "stopped": sum(r.stopped for r in results)}))


@cli.command()
@_utterance_options
def tts(run: Path, shard_dir: Path, split: str, ids: str | None, limit: int | None, out_path: Path | None, device: str,
        allow_other_space: bool) -> None:
    """Greedy units of utterances' transcripts; unit edit distance (per reference unit) and
    generated/reference length ratio against their units."""
    from lst_model.asr_tts import synthesize
    from lst_model.metrics import length_ratio, unit_edit_distance

    model, spec, space, records = _model_and_utterances(run, shard_dir, split, ids, limit, device, allow_other_space)
    _warn_unless_fine_tuned(spec, "tts")
    results = synthesize(model, spec, space, records, device=device)
    _write_jsonl(out_path, (r.to_json() for r in results))
    references, generated = [r.reference for r in results], [r.units for r in results]
    click.echo(json.dumps({"utterances": len(results), "unit_edit_distance": unit_edit_distance(references, generated),
                           "length_ratio": length_ratio(references, generated),
                           "stopped": sum(r.stopped for r in results)}))


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


def _build_corpus_task(shard_dir: Path, pairs: list[str], out_path: Path, heldout_fraction: float | None, n_endings: int,
                       seed: int, limit: int | None) -> None:
    from lst_model.config import DataConfig
    from lst_model.corpus_tasks import corpus_items
    from lst_model.data import load_records
    from lst_model.items import write_items

    fraction = DataConfig().heldout_fraction if heldout_fraction is None else heldout_fraction
    items, skips = corpus_items(load_records(shard_dir), fraction, pairs=pairs, n_endings=n_endings, seed=seed)
    if limit is not None:
        items = items[: limit * len(pairs)]
    write_items(items, out_path)
    per_pair = {p: sum(item.pair == p for item in items) for p in pairs}
    click.echo("items: " + ", ".join(f"{p} {n}" for p, n in per_pair.items()) + f" -> {out_path}")
    click.echo("held-out utterances without an item: "
               + (", ".join(f"{reason} {n}" for reason, n in sorted(skips.items())) if skips else "none"))


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
    from lst_model.tasks import (
        DEFAULT_VOICES,
        ShardBuild,
        build_choice_items,
        has_speech,
        read_choice_jsonl,
        write_build,
    )

    chosen = list(_pairs(pairs))
    if input_path is None:
        _build_corpus_task(shard_dir, chosen, out_path, heldout_fraction, n_endings, seed, limit)
        return
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
@click.option("--model", "run", required=True, type=click.Path(exists=True, path_type=Path), help="Run folder or checkpoint.pt.")
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
def generate(run: Path, prompt_text: str | None, tokenizer_path: Path | None, shard_dir: Path | None, sample_id: str | None,
             prompt_seconds: float | None, prompt_words: int | None, continue_in: str, max_new_tokens: int,
             temperature: float, top_k: int, seed: int, out_path: Path | None, device: str,
             allow_other_space: bool) -> None:
    """Continue a text or speech prompt with the KV cache (greedy, temperature, top-k); EOS stops.

    Generated speech is unit ids (no vocoder). See docs/generation.md."""
    import time

    from lst_data.shards.reader import iter_records
    from lst_data.tokenize.tokenizer import load_tokenizer
    from lst_model.data import load_token_space, read_dataset_json
    from lst_model.generate import Sampler, prompt_from, record_prompt_units
    from lst_model.generate import generate as run_generation
    from lst_model.text_corpus import find_tokenizer, normalize_like_transcripts
    from lst_model.train import load_model

    if (prompt_text is None) == (sample_id is None):
        raise click.UsageError("give exactly one prompt: --text, or --shards with --sample")
    if sample_id is not None and shard_dir is None:
        raise click.UsageError("--sample needs --shards (the shards holding that utterance)")
    if sample_id is None and (prompt_seconds is not None or prompt_words is not None):
        raise click.UsageError("--prompt-seconds and --prompt-words cut a --sample prompt; they do not apply to --text")
    if prompt_seconds is not None and prompt_words is not None:
        raise click.UsageError("give at most one of --prompt-seconds and --prompt-words")
    tokenizer_path = tokenizer_path or (find_tokenizer(shard_dir) if shard_dir is not None else None)
    if prompt_text is not None and tokenizer_path is None:
        where = f"none found near {shard_dir}" if shard_dir is not None else "give --tokenizer, or --shards to find it"
        raise click.UsageError(f"--text needs the shards' tokenizer: {where}")
    model, spec, space = load_model(_checkpoint_path(run), device)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    if tokenizer is not None and tokenizer.vocab_size != space.text_vocab_size:
        raise click.UsageError(f"--tokenizer {tokenizer_path}: vocabulary {tokenizer.vocab_size} != the model's {space.text_vocab_size}")
    dataset = {}
    if shard_dir is not None:
        dataset = read_dataset_json(shard_dir)
        check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_space)
    then = None if continue_in == "same" else continue_in
    if prompt_text is not None:
        ids = tokenizer.encode(normalize_like_transcripts(prompt_text, dataset))
        if not ids:
            raise click.UsageError("--text: nothing is left of it after normalization")
        prompt = prompt_from(space, text_ids=ids, then=then)
    else:
        record = next((r for r in iter_records(shard_dir, with_audio=False) if r.id == sample_id), None)
        if record is None:
            raise click.UsageError(f"--sample {sample_id}: no utterance with that id in {shard_dir}")
        prompt = prompt_from(space, units=record_prompt_units(record, seconds=prompt_seconds, words=prompt_words), then=then)
    started = time.perf_counter()
    result = run_generation(model, spec, space, prompt, max_new_tokens=max_new_tokens,
                            sampler=Sampler(temperature, top_k, seed), device=device)
    tokens_per_second = len(result.new_tokens) / (time.perf_counter() - started)
    new = result.new_tokens.tolist()
    units = [t - space.unit_offset for t in new if space.is_unit(t)]
    text_ids = [t for t in new if t < space.text_vocab_size]
    summary = {
        "model": spec.model.kind, "prompt_tokens": len(prompt), "tokens": result.tokens.tolist(), "new_tokens": new,
        "patch_lengths": result.patch_lengths.tolist(), "units": units,
        "text": tokenizer.decode(text_ids) if tokenizer is not None else None,
        "global_steps": result.global_steps, "stopped": result.stopped, "tokens_per_second": round(tokens_per_second, 1),
    }
    if out_path is not None:
        out_path.write_text(json.dumps(summary) + "\n", encoding="utf-8")
    end = "stopped at a stop token" if result.stopped else "reached --max-new-tokens"
    click.echo(f"{spec.model.kind}: {len(new)} new tokens ({len(units)} units, {len(text_ids)} text) in "
               f"{result.global_steps} global steps, {tokens_per_second:.0f} tokens/s; {end}")
    click.echo(json.dumps(summary))


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
