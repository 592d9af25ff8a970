"""Generation with KV caches: the cached decoder against full forward passes, global-step
counts, sampling, and `lst-model generate` end to end. Models are small, randomly initialised
(seeded) or trained for a few steps on real shards of synthetic toy utterances."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records, write_synthetic_shards

from lst_model.cli import cli
from lst_model.config import load_run_spec
from lst_model.generate import (
    Decoding,
    Sampler,
    generate,
    model_patch_lengths,
    prompt_from,
    record_prompt_units,
)
from lst_model.model import Batch, build_model
from lst_model.sequences import Example
from lst_model.tokens import TokenSpace
from lst_model.train import load_model

LANGUAGE = ToyLanguage.make(0)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
UNITS = [SPACE.unit_offset + u for u in range(SPACE.n_units)]
# Speech-heavy streams with frequent switches: units, both markers, EOS and a few text pieces.
MIXED = [*UNITS, SPACE.text_start, SPACE.speech_start, SPACE.eos, 3, 17, 40, 77]
PROMPTS = {
    "text": (prompt_from(SPACE, text_ids=[5, 9, 17, 3]), None),
    "text_then_speech": (prompt_from(SPACE, text_ids=[5, 9, 17, 3], then="speech"), None),
    "speech": (prompt_from(SPACE, units=[3, 4, 5, 6, 7, 8, 9]), None),  # ends inside a patch for p = 3, 4
    "speech_then_text": (prompt_from(SPACE, units=[3, 4, 5, 6, 7, 8, 9], then="text"), None),
    "aligned_speech": (prompt_from(SPACE, units=[3, 4, 5, 6, 7, 8, 9]), [1, 1, 2, 5]),  # word-like patches
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these tiny models run faster so on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(kind: str, patch_size: int = 4, window: int = 64, seed: int = 0, **layers):
    spec = load_run_spec(overrides={
        "model": {"kind": kind, "d_global": 32, "n_global_layers": 2, "n_global_heads": 2, "d_local": 16,
                  "n_local_heads": 2, "n_decoder_layers": 2, "local_window": window, **layers},
        "data": {"patch_size": patch_size},
    })
    torch.manual_seed(seed)
    return build_model(spec.model, SPACE.size).eval(), spec


def _full_forward_generation(model, spec, prompt, prompt_lengths, n_new, sampler, allowed):
    """Uncached reference: at every step a full forward over the prefix plus a placeholder next
    token, placed by the continuation rule (it joins the last patch when that is a speech patch
    of fewer than p units that generation may continue), and the same sampler draws."""
    flat, p = spec.model.kind == "baseline", spec.data.patch_size
    tokens = [int(t) for t in prompt]
    if flat:
        lengths, open_patch = [1] * len(tokens), False
    elif prompt_lengths is not None:
        lengths, open_patch = list(prompt_lengths), False
    else:
        lengths = model_patch_lengths(tokens, SPACE, p)
        open_patch = SPACE.is_unit(tokens[-1]) and lengths[-1] < p
    mask = torch.zeros(SPACE.size, dtype=torch.bool)
    mask[allowed] = True
    generator = sampler.generator()
    all_logits = []
    for _ in range(n_new):
        with_placeholder = [*lengths[:-1], lengths[-1] + 1] if open_patch else [*lengths, 1]
        example = Example(np.array([*tokens, SPACE.pad]), np.array(with_placeholder), "reference")
        with torch.no_grad():
            logits = model(Batch.from_examples([example], SPACE.pad, flat))[0, -2].float()
        token = sampler.choose(logits, generator, mask)
        unit = SPACE.is_unit(token)
        if open_patch and unit:
            lengths[-1] += 1
        else:
            lengths.append(1)
        open_patch = not flat and unit and lengths[-1] < p
        tokens.append(token)
        all_logits.append(logits)
    return tokens, lengths, torch.stack(all_logits)


def _cached_generation(model, spec, prompt, prompt_lengths, n_new, sampler, allowed):
    decoding = Decoding(model, spec, SPACE, prompt, prompt_lengths)
    mask = torch.zeros(SPACE.size, dtype=torch.bool)
    mask[allowed] = True
    generator = sampler.generator()
    all_logits = []
    for _ in range(n_new):
        all_logits.append(decoding.logits)
        decoding.accept(sampler.choose(decoding.logits, generator, mask))
    return decoding.tokens, decoding.patch_lengths, torch.stack(all_logits)


def _assert_cached_equals_full_forward(model, spec, prompt_name, sampler, allowed, n_new=24):
    prompt, prompt_lengths = PROMPTS[prompt_name]
    expected = _full_forward_generation(model, spec, prompt, prompt_lengths, n_new, sampler, allowed)
    tokens, lengths, logits = _cached_generation(model, spec, prompt, prompt_lengths, n_new, sampler, allowed)
    assert tokens == expected[0]
    assert lengths == expected[1]
    torch.testing.assert_close(logits, expected[2], atol=2e-5, rtol=1e-4)
    result = generate(model, spec, SPACE, prompt, prompt_lengths, max_new_tokens=n_new, sampler=sampler,
                      allowed=allowed, stop_tokens=())
    assert result.tokens.tolist() == tokens and result.new_tokens.tolist() == tokens[len(prompt):]
    assert result.patch_lengths.tolist() == lengths and result.patch_lengths.sum() == len(result.tokens)
    return tokens, lengths


@pytest.mark.parametrize("patch_size", [1, 3, 4])
@pytest.mark.parametrize("prompt_name", list(PROMPTS))
def test_cached_lst_equals_full_forward_token_for_token(patch_size, prompt_name):
    """Window 5 < the sequence: keys older than the window drop out of the cached attention too."""
    model, spec = _model("lst", patch_size, window=5)
    tokens, lengths = _assert_cached_equals_full_forward(model, spec, prompt_name, Sampler(temperature=1.0, seed=1), MIXED)
    assert len(tokens) > 2 * 5
    if patch_size > 1:  # the draws cover speech patches and switches out of them
        assert max(lengths) > 1 and any(not SPACE.is_unit(t) for t in tokens[len(PROMPTS[prompt_name][0]):])


# BLT's decoder (one global state per token, two entries each) and the wider alternatives
DECODERS = {"blt": {}, "all-states": {"decoder_window": None, "cross_attn_k": 1, "cross_attn_ffn": True},
            "three-states": {"decoder_window": 3, "patch_pooling": "mean"}}


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("prompt_name", ["text_then_speech", "speech", "speech_then_text"])
@pytest.mark.parametrize("sampler", [Sampler(), Sampler(temperature=0.8, top_k=5, seed=4)], ids=["greedy", "top5"])
def test_cached_lst_with_a_wide_window_and_greedy_or_top_k(prompt_name, sampler, decoder):
    model, spec = _model("lst", 4, window=64, seed=3, **DECODERS[decoder])
    _assert_cached_equals_full_forward(model, spec, prompt_name, sampler, list(range(SPACE.size)))


@pytest.mark.parametrize("prompt_name", ["text", "speech_then_text", "aligned_speech"])
@pytest.mark.parametrize("sampler", [Sampler(), Sampler(temperature=1.0, seed=2)], ids=["greedy", "sampled"])
def test_cached_baseline_equals_full_forward_token_for_token(prompt_name, sampler):
    model, spec = _model("baseline")
    tokens, lengths = _assert_cached_equals_full_forward(model, spec, prompt_name, sampler, MIXED)
    assert lengths == [1] * len(tokens)


def test_a_non_unit_inside_a_speech_patch_closes_it_and_redecodes_the_previous_token():
    model, spec = _model("lst", 4, window=64, seed=5)
    prompt = prompt_from(SPACE, units=[3, 4])  # BOS <s> u u: the speech patch is open (2 of 4)
    decoding = Decoding(model, spec, SPACE, prompt)
    assert decoding.patch_lengths == [1, 1, 2] and decoding.last_patch_open
    as_continuation = decoding.logits  # the last unit decoded as if a unit followed in its patch
    decoding.accept(SPACE.text_start)
    assert decoding.patch_lengths == [1, 1, 2, 1] and not decoding.last_patch_open

    def forward(tokens, lengths):
        example = Example(np.array([*tokens, SPACE.pad]), np.array(lengths), "reference")
        with torch.no_grad():
            return model(Batch.from_examples([example], SPACE.pad))[0]

    torch.testing.assert_close(as_continuation, forward(prompt.tolist(), [1, 1, 3])[-2], atol=2e-5, rtol=1e-4)
    after_marker = forward([*prompt.tolist(), SPACE.text_start], [1, 1, 2, 1, 1])
    torch.testing.assert_close(decoding.logits, after_marker[-2], atol=2e-5, rtol=1e-4)
    # The re-decode matters: in the final sequence the last unit reads its own patch's global
    # output, so its state (which the marker's decoder self-attention reads) has changed.
    assert not torch.allclose(as_continuation, after_marker[-3], atol=1e-3)
    # prefill (BOS, <s>), the unit patch closing under the marker, the marker's own patch
    assert decoding.global_steps == 3


@pytest.mark.parametrize("patch_size", [1, 3, 4])
@pytest.mark.parametrize("n_units", [1, 2, 4, 5, 9, 13])
def test_speech_continuation_takes_one_global_step_per_patch(patch_size, n_units):
    lst, lst_spec = _model("lst", patch_size)
    baseline, baseline_spec = _model("baseline", patch_size)
    whole_patches = prompt_from(SPACE, units=list(range(2, 2 + 2 * patch_size)))
    for prompt in (prompt_from(SPACE, text_ids=[5, 9], then="speech"), whole_patches):
        result = generate(lst, lst_spec, SPACE, prompt, max_new_tokens=n_units, allowed=UNITS)
        assert result.global_steps == math.ceil(n_units / patch_size)
        assert len(result.new_tokens) == n_units and not result.stopped
        new_patches = result.patch_lengths[len(model_patch_lengths(prompt, SPACE, patch_size)):]
        assert new_patches.tolist() == [patch_size] * (n_units // patch_size) + ([n_units % patch_size] if n_units % patch_size else [])
        flat = generate(baseline, baseline_spec, SPACE, prompt, max_new_tokens=n_units, allowed=UNITS)
        assert flat.global_steps == n_units


def test_text_continuation_takes_one_global_step_per_token():
    model, spec = _model("lst", 4)
    result = generate(model, spec, SPACE, PROMPTS["text"][0], max_new_tokens=7, allowed=range(SPACE.text_vocab_size))
    assert result.global_steps == 7 and result.patch_lengths.tolist() == [1] * len(result.tokens)


def test_model_patch_lengths_and_prompts():
    u = [SPACE.unit_offset + i for i in range(7)]
    tokens = [SPACE.bos, SPACE.speech_start, *u, SPACE.text_start, 4, 5, SPACE.speech_start, *u[:3]]
    assert model_patch_lengths(tokens, SPACE, 3) == [1, 1, 3, 3, 1, 1, 1, 1, 1, 3]
    assert model_patch_lengths(tokens, SPACE, 4) == [1, 1, 4, 3, 1, 1, 1, 1, 3]
    assert prompt_from(SPACE, units=[0, 2], then="text").tolist() == [SPACE.bos, SPACE.speech_start, u[0], u[2], SPACE.text_start]
    assert prompt_from(SPACE, text_ids=[7], then="speech").tolist() == [SPACE.bos, SPACE.text_start, 7, SPACE.speech_start]
    assert prompt_from(SPACE, text_ids=[7], then="text").tolist() == [SPACE.bos, SPACE.text_start, 7]
    with pytest.raises(ValueError, match="exactly one"):
        prompt_from(SPACE, text_ids=[7], units=[1])


def test_record_prompt_units_cut_at_seconds_or_words():
    record = synthetic_records(1, seed=0, language=LANGUAGE)[0]
    assert record_prompt_units(record).tolist() == record.units.tolist()
    assert len(record_prompt_units(record, seconds=0.2)) == round(0.2 * record.frame_rate)
    assert len(record_prompt_units(record, words=2)) == record.words[2].start_frame
    with pytest.raises(ValueError, match="has 6 words|has \\d+ words"):
        record_prompt_units(record, words=len(record.words) + 1)


def test_top_k_one_is_greedy_and_sampling_is_seeded():
    model, spec = _model("lst", 4, seed=2)
    prompt = PROMPTS["speech"][0]

    def run(sampler, **kw):
        return generate(model, spec, SPACE, prompt, max_new_tokens=20, sampler=sampler, stop_tokens=(), **kw).new_tokens.tolist()

    greedy = run(Sampler())
    assert run(Sampler(temperature=2.0, top_k=1, seed=9)) == greedy
    sampled = run(Sampler(temperature=1.5, seed=3))
    assert run(Sampler(temperature=1.5, seed=3)) == sampled
    assert run(Sampler(temperature=1.5, seed=4)) != sampled
    assert sampled != greedy
    allowed = set(UNITS[:5]) | {SPACE.eos}
    assert set(run(Sampler(temperature=1.5, seed=3), allowed=allowed)) <= allowed


def test_top_k_draws_only_among_the_k_most_likely():
    model, spec = _model("lst", 3, seed=2)
    decoding = Decoding(model, spec, SPACE, PROMPTS["speech"][0])
    sampler = Sampler(temperature=3.0, top_k=3, seed=0)
    generator = sampler.generator()
    for _ in range(15):
        logits = decoding.logits
        token = sampler.choose(logits, generator)
        assert token in torch.topk(logits, 3).indices.tolist()
        decoding.accept(token)


def test_a_stop_token_ends_generation_and_is_kept():
    model, spec = _model("lst", 4)
    result = generate(model, spec, SPACE, PROMPTS["text"][0], max_new_tokens=10, allowed=[SPACE.eos])
    assert result.new_tokens.tolist() == [SPACE.eos] and result.stopped and result.global_steps == 1
    assert result.tokens.tolist() == [*PROMPTS["text"][0].tolist(), SPACE.eos]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Real shards of toy utterances with a SentencePiece tokenizer of their vocabulary beside
    them, and an LST trained on them for a few steps through the CLI."""
    from lst_data.tokenize.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("generate")
    shards = write_synthetic_shards(root / "shards", 24)
    sentences = ["the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun",
                 "speech and text share one model here so the units and the pieces meet",
                 "pack my box with five dozen liquor jugs and sphinx of black quartz judge my vow"] * 6
    train_tokenizer(sentences, root / "tokenize" / "tokenizer.model", vocab_size=SPACE.text_vocab_size, seed=0)
    config = root / "run.yaml"
    config.write_text("preset: tiny\nmodel: {d_global: 32, d_local: 32, local_window: 8}\n"
                      "data: {seq_positions: 32, patch_size: 3}\n"
                      "train: {batch_size: 2, budget_positions: 1280, log_every: 10, threads: 1}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--config", str(config), "--out", str(root / "lst")])
    assert result.exit_code == 0, result.output
    return shards, root / "lst"


def test_cached_equals_full_forward_on_a_trained_model(trained_run):
    model, spec, _ = load_model(trained_run[1] / "checkpoint.pt")
    assert spec.data.patch_size == 3 and spec.model.local_window == 8
    for name in ("speech", "text_then_speech", "aligned_speech"):
        _assert_cached_equals_full_forward(model, spec, name, Sampler(temperature=1.0, seed=0), MIXED, n_new=30)
    _assert_cached_equals_full_forward(model, spec, "speech", Sampler(), list(range(SPACE.size)), n_new=30)


def test_cli_generate_from_text_and_from_a_sample(trained_run, tmp_path):
    shards, run = trained_run
    runner = CliRunner()
    out = tmp_path / "text.json"
    result = runner.invoke(cli, ["generate", "--model", str(run), "--shards", str(shards), "--text", "The quick brown fox",
                                 "--continue-in", "speech", "--max-new-tokens", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    human, printed = result.output.strip().splitlines()
    written = json.loads(out.read_text())
    assert json.loads(printed) == written and human.startswith("lst: ")
    assert written["tokens"][written["prompt_tokens"] - 1] == SPACE.speech_start
    assert written["tokens"][written["prompt_tokens"]:] == written["new_tokens"]
    assert sum(written["patch_lengths"]) == len(written["tokens"]) and written["tokens_per_second"] > 0
    assert written["units"] == [t - SPACE.unit_offset for t in written["new_tokens"] if SPACE.is_unit(t)]
    from lst_data.tokenize.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(shards.parent / "tokenize" / "tokenizer.model")
    assert tokenizer.decode(tokenizer.encode("the quick brown fox")) == "the quick brown fox"
    assert written["text"] == tokenizer.decode([t for t in written["new_tokens"] if t < SPACE.text_vocab_size])

    record = next(r for r in synthetic_records(24, seed=0) if len(r.words) > 3)
    result = runner.invoke(cli, ["generate", "--model", str(run), "--shards", str(shards), "--sample", record.id,
                                 "--prompt-words", "3", "--temperature", "1.0", "--top-k", "5", "--seed", "2",
                                 "--max-new-tokens", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    n_prompt_units = record.words[3].start_frame
    assert summary["prompt_tokens"] == 2 + n_prompt_units
    assert summary["tokens"][2 : 2 + n_prompt_units] == [SPACE.unit_offset + u for u in record.units[:n_prompt_units]]


@pytest.mark.parametrize(("args", "message"), [
    ([], "exactly one prompt"),
    (["--text", "hi", "--sample", "x", "--shards", "{shards}"], "exactly one prompt"),
    (["--sample", "toy-00000"], "--sample needs --shards"),
    (["--text", "hi"], "--text needs the shards' tokenizer"),
    (["--text", "hi", "--shards", "{shards}", "--prompt-words", "2"], "cut a --sample prompt"),
    (["--sample", "toy-00000", "--shards", "{shards}", "--prompt-words", "2", "--prompt-seconds", "1"], "at most one"),
    (["--sample", "nope", "--shards", "{shards}"], "no utterance with that id"),
    (["--sample", "toy-00000", "--shards", "{shards}", "--prompt-words", "999"], "--prompt-words 999"),
    (["--sample", "toy-00000", "--shards", "{shards}", "--temperature", "-1"], "--temperature"),
    (["--sample", "toy-00000", "--shards", "{shards}", "--continue-in", "video"], "--continue-in"),
])
def test_cli_generate_bad_flags_are_one_line_usage_errors(trained_run, args, message):
    shards, run = trained_run
    result = CliRunner().invoke(cli, ["generate", "--model", str(run), *[a.format(shards=shards) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
