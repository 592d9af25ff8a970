"""ASR / TTS fine-tuning: target masks, the example layouts, `train --init`, the metrics, the
`asr` / `tts` commands, and a sanity run: a tiny LST pretrained and then fine-tuned on 8
espeak-ng demo utterances (built by the real pipeline) transcribes them with WER < 10 %."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records, write_synthetic_shards

from lst_data.core.errors import ConfigError
from lst_data.format.layout import read_dataset
from lst_model.cli import cli
from lst_model.config import load_run_spec
from lst_model.data import load_records, load_token_space
from lst_model.metrics import character_error_rate, length_ratio, unit_edit_distance, word_error_rate
from lst_model.model import Batch, build_model, summed_next_token_loss
from lst_model.sequences import (
    SequenceBuilder,
    pack,
    speech_patch_lengths,
    static_patch_lengths,
    training_sequences,
)
from lst_model.stream import PackedShardStream, batch_from_tensors
from lst_model.tokens import TokenSpace
from lst_model.train import CHECKPOINT, load_checkpoint, read_log, train

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(12, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))


def _spec(task: str = "asr", steps: int = 2, **sections):
    return load_run_spec(overrides={
        "preset": "tiny",
        "model": {"d_global": 32, "d_local": 32, **sections.pop("model", {})},
        "data": {"task": task, "seq_positions": 64, "patching": "static", **sections.pop("data", {})},
        "train": {"batch_size": 2, "budget_positions": 2 * 64 * steps, "log_every": 1, "warmup_steps": 1, "threads": 1,
                  **sections.pop("train", {})},
    })


# --- layouts and masks -------------------------------------------------------------------------

def test_asr_and_tts_examples_token_by_token():
    record = RECORDS[0]
    builder = SequenceBuilder(SPACE, _spec().data)
    units = [SPACE.unit_offset + int(u) for u in record.units]
    text = [p.id for p in record.bpe]
    unit_patches = static_patch_lengths(len(units), 4)

    asr = builder.asr_example(record, "static")
    assert asr.kind == "asr"
    assert asr.tokens.tolist() == [SPACE.bos, SPACE.speech_start, *units, SPACE.text_start, *text, SPACE.eos]
    assert asr.patch_lengths.tolist() == [1, 1, *unit_patches, 1, *[1] * len(text), 1]
    assert asr.target_mask.tolist() == [False] * (3 + len(units)) + [True] * (len(text) + 1)

    tts = builder.tts_example(record, "static")
    assert tts.kind == "tts"
    assert tts.tokens.tolist() == [SPACE.bos, SPACE.text_start, *text, SPACE.speech_start, *units, SPACE.eos]
    assert tts.patch_lengths.tolist() == [1, 1, *[1] * len(text), 1, *unit_patches, 1]
    assert tts.target_mask.tolist() == [False] * (3 + len(text)) + [True] * (len(units) + 1)

    aligned = builder.asr_example(record, "word_sil_sep")
    assert aligned.tokens.tolist() == asr.tokens.tolist()
    assert aligned.patch_lengths[2:-len(text) - 2].tolist() == \
        speech_patch_lengths(record, 0, record.n_frames, "word_sil_sep", 4) != unit_patches


def test_asr_tts_mixes_both_directions_and_the_same_data_for_both_models():
    builder = SequenceBuilder(SPACE, _spec("asr_tts", data={"patching": "curriculum"}).data)
    kinds = [ex.kind for _, ex in zip(range(400), builder.example_stream(RECORDS, np.random.default_rng(3), 0.5), strict=False)]
    assert 0.4 < kinds.count("asr") / len(kinds) < 0.6 and set(kinds) == {"asr", "tts"}
    for progress in (0.0, 0.5, 1.0):  # curriculum: aligned, then mixed, then static patches
        lst, flat = (training_sequences(builder, RECORDS, seed=1, step=0, rows=[0, 1], positions=64, flat=f,
                                        progress=progress) for f in (False, True))
        for a, b in zip(lst, flat, strict=True):
            assert len(a.patch_lengths) == 64 and len(b.tokens) == 64
            assert a.target_mask is not None and b.target_mask is not None
            n = int(b.document_lengths[0])  # the baseline reaches fewer tokens of the same stream
            assert a.tokens[:n].tolist() == b.tokens[:n].tolist() and a.target_mask[:n].tolist() == b.target_mask[:n].tolist()


def test_pack_keeps_target_masks():
    builder = SequenceBuilder(SPACE, _spec().data)
    masked = builder.asr_example(RECORDS[0], "static")
    plain = builder.text_example(RECORDS[1])
    packed = pack(iter([masked, plain, masked]), len(masked.patch_lengths) + len(plain.patch_lengths) + 3, flat=False)
    n, m = len(masked.tokens), len(plain.tokens)
    assert packed.target_mask.tolist() == masked.target_mask.tolist() + [True] * m + [False] * (len(packed.tokens) - n - m)
    assert pack(iter([plain, plain]), 2 * len(plain.tokens), flat=True).target_mask is None


def test_target_mask_puts_the_loss_on_the_output_side_only():
    torch.manual_seed(0)
    spec = _spec()
    model = build_model(spec.model, SPACE.size).eval()
    example = SequenceBuilder(SPACE, spec.data).asr_example(RECORDS[0], "static")
    batch = Batch.from_examples([example], SPACE.pad)
    with torch.no_grad():
        logits = model(batch)
        masked = float(summed_next_token_loss(logits, batch))
        unmasked = float(summed_next_token_loss(logits, Batch(batch.tokens, batch.patch_index, batch.n_patches, batch.document)))
    # By hand: -log softmax(logits at i - 1)[token i] over the text tokens and EOS.
    log_probs = torch.log_softmax(logits[0].double(), dim=-1).numpy()
    outputs = [i for i in range(1, len(example.tokens)) if example.target_mask[i]]
    assert len(outputs) == len(RECORDS[0].bpe) + 1 and example.tokens[outputs[-1]] == SPACE.eos
    expected = -sum(log_probs[i - 1, example.tokens[i]] for i in outputs)
    everything = -sum(log_probs[i - 1, example.tokens[i]] for i in range(1, len(example.tokens)))
    assert masked == pytest.approx(expected, rel=1e-5)
    assert unmasked == pytest.approx(everything, rel=1e-5) and unmasked > masked
    assert int(batch.loss_targets.sum()) == len(outputs)


def test_streaming_input_carries_the_target_mask(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", 12)
    spec = _spec("tts", data={"input": "stream", "heldout_fraction": 0.0}, train={"loader_workers": 0})
    item = next(iter(PackedShardStream(shards, spec, load_token_space(shards), rows=2)))
    batch = batch_from_tensors(item)
    assert batch.target is not None and batch.target.shape == batch.tokens.shape
    assert 0 < int(batch.loss_targets.sum()) < int(batch.valid[:, 1:].sum())
    # A target is a unit or EOS in a TTS fine-tuning batch.
    targets = batch.tokens[:, 1:][batch.loss_targets]
    assert bool(((targets >= SPACE.unit_offset) | (targets == SPACE.eos)).all())
    train(spec, None, load_token_space(shards), tmp_path / "run", shard_dir=shards)
    assert all(np.isfinite(r["loss"]) for r in read_log(tmp_path / "run"))


# --- fine-tuning from a pretrained checkpoint -----------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrained") / "run"
    train(_spec("pretrain", steps=2), RECORDS, SPACE, run)
    return run / CHECKPOINT


def test_init_starts_from_the_pretrained_weights_with_a_fresh_schedule(pretrained, tmp_path):
    spec = _spec("asr", steps=1, train={"lr": 1e-9, "warmup_steps": 0})
    train(spec, RECORDS, SPACE, tmp_path / "ft", init=pretrained)
    before, after = load_checkpoint(pretrained)["model"], load_checkpoint(tmp_path / "ft" / CHECKPOINT)
    assert all(torch.allclose(before[k], after["model"][k], atol=1e-6) for k in before)
    assert after["scheduler"]["last_epoch"] == 1 and after["step"] == 1
    sha = hashlib.sha256(pretrained.read_bytes()).hexdigest()
    assert after["init_sha256"] == sha
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init"] == {"checkpoint": str(pretrained), "sha256": sha}
    fresh = build_model(spec.model, SPACE.size).state_dict()
    assert not all(torch.allclose(fresh[k], after["model"][k], atol=1e-6) for k in fresh)


@pytest.mark.parametrize("change,named", [({"model": {"d_global": 64}}, "model.d_global 32 != 64"),
                                          ({"model": {"n_global_layers": 3}}, "model.n_global_layers 2 != 3")])
def test_init_refuses_another_model_config(pretrained, tmp_path, change, named):
    with pytest.raises(ConfigError, match=named):
        train(_spec("asr", **change), RECORDS, SPACE, tmp_path / "ft", init=pretrained)


def test_init_refuses_another_token_space_and_resume_refuses_another_init(pretrained, tmp_path):
    with pytest.raises(ConfigError, match="token space"):
        train(_spec("asr"), RECORDS, TokenSpace(SPACE.text_vocab_size, SPACE.n_units + 1), tmp_path / "other", init=pretrained)
    train(_spec("asr", steps=4), RECORDS, SPACE, tmp_path / "ft", init=pretrained, stop_at_step=1)
    with pytest.raises(ConfigError, match="another --init"):
        train(_spec("asr", steps=4), RECORDS, SPACE, tmp_path / "ft")
    train(_spec("pretrain", steps=1, train={"seed": 5}), RECORDS, SPACE, tmp_path / "pre2")
    with pytest.raises(ConfigError, match="another --init"):
        train(_spec("asr", steps=4), RECORDS, SPACE, tmp_path / "ft", init=tmp_path / "pre2" / CHECKPOINT)
    train(_spec("asr", steps=4), RECORDS, SPACE, tmp_path / "ft", init=pretrained)  # the same init resumes
    assert [r["step"] for r in read_log(tmp_path / "ft")] == [0, 1, 2, 3]


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_against_hand_counted_edits():
    # "the cat sat" -> "the cat sit on": 1 substitution + 1 insertion; "a b" -> "a": 1 deletion; 5 words.
    assert word_error_rate(["the cat sat", "a b"], ["the cat sit on", "a"]) == pytest.approx(3 / 5)
    # "abcd" -> "abxd": 1 substitution; "xy" -> "xyz": 1 insertion; 6 characters.
    assert character_error_rate(["abcd", "xy"], ["abxd", "xyz"]) == pytest.approx(2 / 6)
    assert word_error_rate(["same words"], ["same words"]) == 0.0
    # [1,2,3,4] -> [1,3,4]: 1 deletion; [5,5] -> [5,5,6,7]: 2 insertions; 6 reference units.
    refs, hyps = [np.array([1, 2, 3, 4]), [5, 5]], [[1, 3, 4], np.array([5, 5, 6, 7])]
    assert unit_edit_distance(refs, hyps) == pytest.approx(3 / 6)
    assert length_ratio(refs, hyps) == pytest.approx(7 / 6)
    assert unit_edit_distance([[10, 11]], [[]]) == 1.0
    with pytest.raises(ValueError, match="2 references but 1"):
        unit_edit_distance(refs, hyps[:1])


# --- commands ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_run")
    shards = write_synthetic_shards(root / "shards", 12)
    train(_spec("asr_tts", data={"heldout_fraction": 0.2}), load_records(shards), load_token_space(shards), root / "run")
    return root / "shards", root / "run"


@pytest.mark.parametrize("args,named", [
    (["--split", "bogus"], "--split"),
    (["--limit", "0"], "--limit"),
    (["--ids", "nope,also_nope"], "nope, also_nope"),
])
def test_asr_and_tts_bad_flags_are_one_line_usage_errors(synthetic_run, args, named):
    shards, run = synthetic_run
    for command in ("asr", "tts"):
        result = CliRunner().invoke(cli, [command, "--model", str(run), "--shards", str(shards), *args])
        assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output, result.output


def test_asr_needs_a_tokenizer_and_the_models_token_space(synthetic_run, tmp_path):
    shards, run = synthetic_run
    result = CliRunner().invoke(cli, ["asr", "--model", str(run), "--shards", str(shards)])
    assert result.exit_code == 2 and "no tokenizer found" in result.output
    other = tmp_path / "other"
    other.mkdir()
    dataset = read_dataset(shards)  # the shards' own dataset.json, but for a codebook of another size
    dataset["units"]["k"] = SPACE.n_units + 1
    (other / "dataset.json").write_text(json.dumps(dataset))
    result = CliRunner().invoke(cli, ["tts", "--model", str(run), "--shards", str(other)])
    assert result.exit_code == 2 and "is not the model's" in result.output, result.output


def test_tts_command_writes_one_line_per_utterance(synthetic_run, tmp_path):
    shards, run = synthetic_run
    result = CliRunner().invoke(cli, ["tts", "--model", str(run), "--shards", str(shards), "--split", "train",
                                      "--limit", "2", "--out", str(tmp_path / "tts.jsonl")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    lines = [json.loads(line) for line in (tmp_path / "tts.jsonl").read_text().splitlines()]
    assert summary["utterances"] == len(lines) == 2
    units = [np.array(line["units"]) for line in lines]
    assert all(((u >= 0) & (u < SPACE.n_units)).all() for u in units)  # only units were allowed
    refs = [line["reference_units"] for line in lines]
    assert summary["unit_edit_distance"] == pytest.approx(unit_edit_distance(refs, units))
    assert summary["length_ratio"] == pytest.approx(length_ratio(refs, units))


def test_train_init_mismatch_is_one_line_exit_2(synthetic_run, tmp_path):
    shards, run = synthetic_run
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--out", str(tmp_path / "ft"), "--init", str(run),
                                      "--set", "preset=tiny", "--set", "data.task=asr"])
    assert result.exit_code == 2 and "model.d_global 32 != 64" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--out", str(tmp_path / "ft"), "--init", str(tmp_path)])
    assert result.exit_code == 2 and "holds no checkpoint.pt" in result.output
    text = tmp_path / "texts.txt"
    text.write_text("some words\n")
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--out", str(tmp_path / "ft"), "--text", str(text),
                                      "--set", "data.task=tts"])
    assert result.exit_code == 2 and "a text corpus is for data.task=pretrain" in result.output


# --- sanity: fine-tuned ASR and TTS on 8 demo utterances ----------------------------------------

SANITY_UTTERANCES = 8


def _demo_spec(task: str, steps: int):
    return load_run_spec(overrides={
        "preset": "tiny", "data": {"task": task, "patching": "static", "seq_positions": 128},
        "train": {"batch_size": 4, "budget_positions": 4 * 128 * steps, "lr": 3e-3, "warmup_steps": 10, "threads": 1,
                  "log_every": 50, "checkpoint_every": 10_000},
    })


@pytest.fixture(scope="module")
def demo_pretrained(demo_build, tmp_path_factory):
    """A tiny LST pretrained (the default mixture) for 100 steps on 8 demo utterances."""
    shards = demo_build / "shards"
    records = load_records(shards)[:SANITY_UTTERANCES]
    out = tmp_path_factory.mktemp("demo_pretrained")
    train(_demo_spec("pretrain", 100), records, load_token_space(shards), out)
    return shards, records, out / CHECKPOINT


def test_fine_tuned_asr_transcribes_its_demo_utterances(demo_pretrained, tmp_path):
    shards, records, init = demo_pretrained
    train(_demo_spec("asr", 200), records, load_token_space(shards), tmp_path / "asr", init=init)
    ids = ",".join(r.id for r in records)
    result = CliRunner().invoke(cli, ["asr", "--model", str(tmp_path / "asr"), "--shards", str(shards), "--split", "all",
                                      "--ids", ids, "--out", str(tmp_path / "asr.jsonl")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print("sanity asr:", summary)
    lines = [json.loads(line) for line in (tmp_path / "asr.jsonl").read_text().splitlines()]
    assert [line["reference"] for line in lines] == [r.text for r in records]
    assert summary["utterances"] == SANITY_UTTERANCES and summary["wer"] < 0.10, lines
    # the same utterances through the pretrained model: a warning, and far from transcribing them
    before = CliRunner().invoke(cli, ["asr", "--model", str(init), "--shards", str(shards), "--split", "all", "--ids", ids])
    assert before.exit_code == 0 and "data.task=pretrain, not asr; fine-tune it first" in before.stderr
    assert json.loads(before.stdout.strip().splitlines()[-1])["wer"] > 0.5


@pytest.mark.slow  # 300 fine-tuning steps over ~140-unit outputs: about 15 s of CPU on top of the ASR run
def test_fine_tuned_tts_reproduces_its_demo_units(demo_pretrained, tmp_path):
    shards, records, init = demo_pretrained
    train(_demo_spec("tts", 300), records, load_token_space(shards), tmp_path / "tts", init=init)
    result = CliRunner().invoke(cli, ["tts", "--model", str(tmp_path / "tts"), "--shards", str(shards), "--split", "all",
                                      "--ids", ",".join(r.id for r in records)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print("sanity tts:", summary)
    assert summary["utterances"] == SANITY_UTTERANCES and summary["stopped"] == SANITY_UTTERANCES
    assert summary["unit_edit_distance"] < 0.3 and 0.8 < summary["length_ratio"] < 1.25, summary


def test_prompts_are_the_training_layout_up_to_the_first_target():
    from lst_model.asr_tts import eval_strategy, split_prompt

    record = RECORDS[0]
    spec = _spec(data={"eval_patching": "word_sil_sep"})
    builder = SequenceBuilder(SPACE, spec.data)
    assert eval_strategy(record, spec) == "word_sil_sep"
    assert eval_strategy(dataclasses.replace(record, words=()), spec) == "static"
    prompt, lengths = split_prompt(builder.asr_example(record, eval_strategy(record, spec)))
    assert prompt.tolist() == [SPACE.bos, SPACE.speech_start, *(SPACE.unit_offset + record.units), SPACE.text_start]
    assert lengths.tolist() == [1, 1, *speech_patch_lengths(record, 0, record.n_frames, "word_sil_sep", 4), 1]
    prompt, lengths = split_prompt(builder.tts_example(record, "static"))
    assert prompt.tolist() == [SPACE.bos, SPACE.text_start, *[p.id for p in record.bpe], SPACE.speech_start]
    assert lengths.tolist() == [1] * len(prompt)


def test_cli_fine_tuning_keeps_the_pretrained_runs_training_texts(tmp_path):
    """score's contamination check must see what the init's weights were trained on too."""
    from lst_model.data import read_training_texts, split_heldout, transcript_digests

    shards = write_synthetic_shards(tmp_path / "shards", 16)
    common = ["--shards", str(shards), "--set", "preset=tiny", "--set", "data.seq_positions=32",
              "--set", "train.batch_size=2", "--set", "train.budget_positions=64", "--set", "train.threads=1"]
    runner = CliRunner()
    result = runner.invoke(cli, ["train", *common, "--out", str(tmp_path / "pre"), "--set", "data.heldout_fraction=0.2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", *common, "--out", str(tmp_path / "ft"), "--init", str(tmp_path / "pre"),
                                 "--set", "data.task=asr", "--set", "data.heldout_fraction=0.6"])
    assert result.exit_code == 0, result.output
    own = transcript_digests(r.text for r in split_heldout(load_records(shards), 0.6)[0])
    pre, ft = read_training_texts(tmp_path / "pre"), read_training_texts(tmp_path / "ft")
    assert set(own.tolist()) < set(pre.tolist())  # more held out in the fine-tune: its own texts are fewer
    assert np.array_equal(ft, pre)
