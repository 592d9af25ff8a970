"""The library functions behind `lst-model`'s commands, called directly (the CLI tests reach
them through click): training on shards, scoring, asr/tts, generation, compare and build-task."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.toy_corpus import write_synthetic_shards

from lst_data.core.errors import UserError
from lst_data.format.reader import iter_records
from lst_data.tokenize.tokenizer import load_tokenizer, train_tokenizer
from lst_model.asr_tts import Selection, recognize_shards, synthesize_shards
from lst_model.compare import compare, compare_shards
from lst_model.config import load_run_spec
from lst_model.corpus_tasks import build_corpus_task
from lst_model.data import (
    TrainingUtterances,
    is_heldout,
    load_records,
    load_token_space,
    read_dataset_json,
    read_training_texts,
    transcript_digests,
    write_training_texts,
)
from lst_model.errors import OptionError
from lst_model.evaluate import score_checkpoint
from lst_model.generate import GenerationReport, generate_from_checkpoint, sample_prompt, text_prompt
from lst_model.items import ChoiceItem, Side, pair_counts_line, read_items, write_jsonl
from lst_model.score import without_contaminated
from lst_model.tasks import BuildResult, Dropped
from lst_model.text_corpus import TextCorpusError, shard_text_corpus
from lst_model.train import CHECKPOINT, checkpoint_path, read_log, train_on_shards
from lst_model.unit_pieces import train_unit_bpe

SENTENCES = ["the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun",
             "speech and text share one model here so the units and the pieces meet",
             "pack my box with five dozen liquor jugs and sphinx of black quartz judge my vow"] * 6


def _spec(**data):
    return load_run_spec(overrides={
        "preset": "tiny",
        "model": {"d_global": 32, "d_local": 32},
        "data": {"seq_positions": 32, "heldout_fraction": 0.4, **data},
        "train": {"batch_size": 2, "budget_positions": 2 * 32 * 4, "log_every": 2, "threads": 1},
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Toy shards (3 speakers) with a tokenizer of their vocabulary beside them, and an LST
    trained on them for 4 steps by `train_on_shards`; what it announced."""
    root = tmp_path_factory.mktemp("commands")
    shards = write_synthetic_shards(root / "shards", 30, speakers=3)
    train_tokenizer(SENTENCES, root / "tokenize" / "tokenizer.model", vocab_size=96, seed=0)
    announced: list[str] = []
    logged: list[dict] = []
    result = train_on_shards(_spec(), shards, root / "lst", announce=announced.append, progress_callback=logged.append)
    return shards, root / "lst", result, announced, logged


def test_train_on_shards_records_the_training_transcripts_and_plots(run):
    shards, out, result, announced, logged = run
    utterances = TrainingUtterances.of(shards, _spec().data)
    assert announced == [f"lst: {len(utterances.records)} training utterances "
                         f"({30 - len(utterances.records)} held out), 4 steps"]
    assert [row["step"] for row in logged] == [row["step"] for row in read_log(out)] == [1, 3]
    assert result.summary()["steps"] == 4 and result.summary()["final_loss"] == logged[-1]["loss"]
    assert (out / "loss.png").stat().st_size > 0
    np.testing.assert_array_equal(read_training_texts(out), transcript_digests(r.text for r in utterances.records))


def test_streamed_training_utterances_give_the_same_transcripts(run):
    shards = run[0]
    loaded = TrainingUtterances.of(shards, _spec().data)
    streamed = TrainingUtterances.of(shards, _spec(input="stream").data)
    assert streamed.records is None and streamed.summary == "30 utterances streamed (epoch)"
    assert list(streamed.transcripts()) == list(loaded.transcripts()) == [r.text for r in loaded.records]
    assert not any(is_heldout(r, 0.4) for r in loaded.records)


def test_training_texts_keep_earlier_and_inherited_digests(tmp_path):
    write_training_texts(tmp_path, ["one text"])
    write_training_texts(tmp_path, ["two texts"], inherited=transcript_digests(["three texts"]))
    np.testing.assert_array_equal(read_training_texts(tmp_path), transcript_digests(["one text", "two texts", "three texts"]))


def test_checkpoint_path_of_a_run_folder_or_a_file(run):
    out = run[1]
    assert checkpoint_path(out) == out / CHECKPOINT
    assert checkpoint_path(out / CHECKPOINT) == out / CHECKPOINT


def test_dataset_json_is_read_checked_and_its_faults_are_one_line(run, tmp_path):
    assert read_dataset_json(run[0])["units"]["k"] == load_token_space(run[0]).n_units
    with pytest.raises(UserError, match="has no dataset.json: not the shards of a finished"):
        read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"tokenizer": {"vocab_size": 7}, "units": {"k": 5}}))
    with pytest.raises(UserError, match=r"dataset.json: not a dataset record: .*required"):
        read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").unlink()
    (tmp_path / "dataset.json").mkdir()
    with pytest.raises(UserError, match="dataset.json is unreadable"):
        read_dataset_json(tmp_path)


def test_a_text_corpus_needs_the_shards_tokenizer(run, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    lone = write_synthetic_shards(tmp_path / "lone" / "shards", 4)
    with pytest.raises(TextCorpusError, match="--text needs the shards' tokenizer: none found near") as caught:
        shard_text_corpus(corpus, None, lone, 96)
    assert caught.value.option is None  # the CLI shows it as a usage error
    documents = shard_text_corpus(corpus, None, run[0], 96)
    assert len(documents) == len(SENTENCES) and all(doc.dtype == np.int32 and len(doc) for doc in documents)


def test_selection_splits_picks_ids_in_order_and_limits(run):
    records = load_records(run[0])
    train = Selection("train").of(records, 0.4, "here")
    heldout = Selection("heldout").of(records, 0.4, "here")
    assert {r.id for r in train} | {r.id for r in heldout} == {r.id for r in records}
    assert not {r.id for r in train} & {r.id for r in heldout}
    wanted = (heldout[2].id, heldout[0].id)
    assert [r.id for r in Selection("heldout", wanted).of(records, 0.4, "here")] == list(wanted)
    assert len(Selection("all", limit=3).of(records, 0.4, "here")) == 3
    with pytest.raises(OptionError, match=f"not in the train split of here: {heldout[0].id}") as caught:
        Selection("train", (heldout[0].id,)).of(records, 0.4, "here")
    assert caught.value.option == "--ids"
    with pytest.raises(OptionError, match="no utterances selected"):
        Selection("all", ()).of(records, 0.4, "here")


def test_asr_and_tts_on_shards_warn_write_and_summarize(run, tmp_path):
    shards, out = run[0], run[1]
    warnings: list[str] = []
    summary = recognize_shards(out / CHECKPOINT, shards, Selection(limit=2), out_path=tmp_path / "asr.jsonl",
                               warn=warnings.append)
    lines = [json.loads(line) for line in (tmp_path / "asr.jsonl").read_text().splitlines()]
    assert summary["utterances"] == len(lines) == 2 and set(summary) == {"utterances", "wer", "cer", "stopped"}
    assert summary["stopped"] == sum(line["stopped"] for line in lines)
    assert warnings == ["this model was trained with data.task=pretrain, not asr; fine-tune it first "
                        "(lst-model train --init RUN --set data.task=asr) for meaningful figures"]
    summary = synthesize_shards(out / CHECKPOINT, shards, Selection("train", limit=1), warn=warnings.append)
    assert summary["utterances"] == 1 and "not tts" in warnings[-1]
    small = train_tokenizer(SENTENCES, tmp_path / "small.model", vocab_size=46, seed=0).path
    with pytest.raises(OptionError, match="vocabulary 46 != the model's 96") as caught:
        recognize_shards(out / CHECKPOINT, shards, Selection(limit=1), tokenizer_path=small, warn=warnings.append)
    assert caught.value.option == "--tokenizer"


def test_contaminated_items_are_refused_or_dropped(run, tmp_path):
    shards, out = run[0], run[1]
    training = next(r for r in load_records(shards) if not is_heldout(r, 0.4))
    side = Side("text", (1, 2), "x")
    clean = ChoiceItem("clean", side, (side, side), 0, None, ("a sentence nobody trained on",))
    dirty = ChoiceItem("dirty", side, (side, side), 0, None, (training.text,))
    assert without_contaminated([clean, dirty], out, drop=True) == ([clean], 1)
    with pytest.raises(UserError, match=r"1 of 2 items share a transcript .*\(first: dirty\)"):
        without_contaminated([clean, dirty], out, drop=False)
    with pytest.raises(UserError, match="no training_texts.npy"):
        without_contaminated([clean], tmp_path, drop=True)


def test_score_checkpoint_reports_notes_and_writes_scores(run, tmp_path):
    shards, out = run[0], run[1]
    lines = build_corpus_task(shards, ["s2s", "t2t"], tmp_path / "task.jsonl", heldout_fraction=0.9)
    items = read_items(tmp_path / "task.jsonl")
    assert lines[0] == pair_counts_line(items, ["s2s", "t2t"], tmp_path / "task.jsonl")
    notes: list[str] = []
    result = score_checkpoint(out / CHECKPOINT, task_path=tmp_path / "task.jsonl", drop_contaminated=True,
                              out_path=tmp_path / "scores.jsonl", notify=notes.append)
    dropped = result.report["dropped_contaminated"]
    assert dropped > 0 and notes == [f"dropped {dropped} contaminated items of {len(items)}"]
    assert len(result.scores) == len(items) - dropped == len((tmp_path / "scores.jsonl").read_text().splitlines())
    assert sum(r["n"] for r in result.report["pairs"].values()) == len(result.scores)
    with pytest.raises(ValueError, match="give a task file or the shards"):
        score_checkpoint(out / CHECKPOINT)


def test_build_corpus_task_limits_each_pair_and_counts_the_skips(run, tmp_path):
    lines = build_corpus_task(run[0], ["t2t", "s2t"], tmp_path / "task.jsonl", heldout_fraction=0.4, limit=1)
    items = read_items(tmp_path / "task.jsonl")
    assert [item.pair for item in items] == ["t2t", "s2t"]
    assert lines[0] == f"items: t2t 1, s2t 1 -> {tmp_path / 'task.jsonl'}"
    assert lines[1].startswith("held-out utterances without an item: ")


def test_build_result_summary_names_the_rejects_file(tmp_path):
    side = Side("text", (1,), "x")
    item = ChoiceItem("a:t2t", side, (side, side), 1, None, ("x",))
    result = BuildResult([item], [Dropped("b", "tts_failed", "no voice", "prompt", "tts"), Dropped("c", "duplicate_id", "")])
    assert result.summary(["t2t", "s2s"], tmp_path / "task.jsonl") == [
        f"items: t2t 1, s2s 0 -> {tmp_path / 'task.jsonl'}",
        f"dropped: 2 items (build-task/duplicate_id 1, tts/tts_failed 1) -> {tmp_path / 'task.rejects.jsonl'}"]


def test_write_jsonl_escapes_unless_told_not_to(tmp_path):
    write_jsonl([{"text": "café"}, [1]], tmp_path / "a.jsonl")
    write_jsonl([{"text": "café"}], tmp_path / "b.jsonl", ensure_ascii=False)
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8") == '{"text": "caf\\u00e9"}\n[1]\n'
    assert (tmp_path / "b.jsonl").read_text(encoding="utf-8") == '{"text": "café"}\n'


def test_compare_shards_is_compare_over_the_shards_utterances(run):
    """... with the unit BPE trained on the training utterances only, as a bpe_speechllm run trains it."""
    spec = _spec()
    records, space = load_records(run[0]), load_token_space(run[0])
    training = [r for r in records if not is_heldout(r, spec.data.heldout_fraction)]
    assert 0 < len(training) < len(records)
    unit_bpe = train_unit_bpe((np.asarray(r.units) for r in training), space.n_units, spec.model.unit_bpe_vocab)
    expected = compare(records, space, spec, seed=spec.train.seed, mixture_tokens=2000, unit_bpe=unit_bpe)
    assert compare_shards(run[0], spec, mixture_tokens=2000) == expected


def test_prompts_from_text_and_from_a_sample(run):
    shards = run[0]
    space, dataset = load_token_space(shards), read_dataset_json(shards)
    tokenizer = load_tokenizer(shards.parent / "tokenize" / "tokenizer.model")
    prompt = text_prompt(space, "The QUICK brown fox!", tokenizer, dataset, then="speech")
    assert prompt.tolist() == [space.bos, space.text_start, *tokenizer.encode("the quick brown fox"), space.speech_start]
    with pytest.raises(OptionError, match="nothing is left of it after normalization"):
        text_prompt(space, "!!!", tokenizer, dataset)
    record = next(iter_records(shards, with_audio=False))
    units = sample_prompt(space, shards, record.id, words=2)
    first_frames = record.words[2].start_frame
    assert units.tolist() == [space.bos, space.speech_start, *(space.unit_offset + record.units[:first_frames]).tolist()]
    with pytest.raises(OptionError, match="--sample nope: no utterance with that id"):
        sample_prompt(space, shards, "nope")


def test_generate_from_checkpoint_reports_and_writes_what_it_generated(run, tmp_path):
    shards, out = run[0], run[1]
    report = generate_from_checkpoint(out / CHECKPOINT, text="the quick brown fox", shard_dir=shards, continue_in="speech",
                                      max_new_tokens=6, out_path=tmp_path / "g.json")
    assert isinstance(report, GenerationReport)
    written = json.loads((tmp_path / "g.json").read_text())
    assert written == json.loads(json.dumps(report.to_json()))
    space = load_token_space(shards)
    new = written["new_tokens"]
    assert written["units"] == [t - space.unit_offset for t in new if space.is_unit(t)]
    assert len(new) == 6 or written["stopped"]
    assert report.headline().startswith(f"lst: {len(new)} new tokens ({len(written['units'])} units, ")
    with pytest.raises(OptionError, match="--text needs the shards' tokenizer: give --tokenizer, or --shards"):
        generate_from_checkpoint(out / CHECKPOINT, text="hello")
    with pytest.raises(ValueError, match="give a text prompt, or a sample id"):
        generate_from_checkpoint(out / CHECKPOINT, sample_id="toy-00000")


def test_flex_attention_on_cpu_is_refused_before_training(run, tmp_path):
    """FlexAttention has no CPU backward: a user error naming the field, not a torch traceback."""
    spec = load_run_spec(overrides={**_spec().model_dump(), "model": {**_spec().model.model_dump(), "attention": "flex"},
                                    "train": {**_spec().train.model_dump(), "device": "cpu"}})
    with pytest.raises(UserError, match="model.attention 'flex' trains on CUDA only"):
        train_on_shards(spec, run[0], tmp_path / "flex")
