"""Minimal pairs without a prompt (sWUGGY / sBLIMP style): the pairs file, the builder's word
swaps in speech and text, the scoring (EOS counted, ties half) on hand-set next-token
probabilities, both model families, and `lst-model score --mode minimal-pairs` end to end
on real toy shards with a briefly trained run. Speech comes from the synthetic toy corpus
(exact word, piece and silence frames, as a forced aligner would ideally give)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.toy_corpus import synthetic_records
from test_score import HAND, BigramStub

from lst_data.format.patching import patch_lengths
from lst_data.format.records import BpePiece, SampleRecord, Silence, Word
from lst_model.cli import cli
from lst_model.config import ModelConfig, load_run_spec
from lst_model.data import canonical_transcript, load_records, split_heldout
from lst_model.items import InvalidItem, MinimalPair, Side, read_minimal_pairs, write_jsonl
from lst_model.minimal_pairs import (
    accuracy_by_modality,
    format_minimal_pair_table,
    minimal_pairs_from_records,
    score_minimal_pairs,
    swap_words,
)
from lst_model.model import build_model
from lst_model.tokens import TokenSpace

FPS = 25.0


def _word(word: str, first: int, last: int) -> Word:
    return Word(word, first / FPS, (last + 1) / FPS, first, last)


def _hand_record() -> SampleRecord:
    """14 frames: silence 0-1, "the" 2-3, silence 4, "cat" 5-7 (two pieces), "sat" 8-9,
    silence 10-11, "down" 12, silence 13."""
    units = np.array([0, 0, 5, 6, 1, 7, 8, 9, 10, 11, 0, 1, 12, 0], dtype=np.int16)
    words = (_word("the", 2, 3), _word("cat", 5, 7), _word("sat", 8, 9), _word("down", 12, 12))
    pieces = (BpePiece(20, "the", 0, 2, 3), BpePiece(21, "ca", 1, 5, 6), BpePiece(22, "t", 1, 7, 7),
              BpePiece(23, "sat", 2, 8, 9), BpePiece(24, "down", 3, 12, 12))
    silences = tuple(Silence(a / FPS, (b + 1) / FPS, a, b) for a, b in ((0, 1), (4, 4), (10, 11), (13, 13)))
    return SampleRecord("hand", "the cat sat down", "spk", 14 / FPS, 16000, FPS, units, words, pieces, silences)


def test_swapping_two_words_moves_their_frames_and_everything_between():
    """Swapping "cat" (3 frames) and "down" (1 frame): "down" takes "cat"'s onset, "sat" and
    the pause after it move 2 frames earlier, "cat" ends where "down" ended; the leading and
    trailing silence stay. Expected spans and patches worked out by hand."""
    swapped = swap_words(_hand_record(), 1, 3)
    assert swapped.units.tolist() == [0, 0, 5, 6, 1, 12, 10, 11, 0, 1, 7, 8, 9, 0]
    assert swapped.text == "the down sat cat"
    assert [(w.word, w.start_frame, w.end_frame) for w in swapped.words] == \
        [("the", 2, 3), ("down", 5, 5), ("sat", 6, 7), ("cat", 10, 12)]
    assert swapped.words[3].start == pytest.approx(10 / FPS) and swapped.words[3].end == pytest.approx(13 / FPS)
    assert [(p.id, p.word_index, p.start_frame, p.end_frame) for p in swapped.bpe] == \
        [(20, 0, 2, 3), (24, 1, 5, 5), (23, 2, 6, 7), (21, 3, 10, 11), (22, 3, 12, 12)]
    assert [(s.start_frame, s.end_frame) for s in swapped.silences] == [(0, 1), (4, 4), (8, 9), (13, 13)]
    assert patch_lengths(swapped, "word_sil_sep") == [2, 2, 1, 1, 2, 2, 3, 1]
    assert patch_lengths(swapped, "word_sil_merged") == [5, 1, 4, 4]
    assert patch_lengths(swapped, "bpe") == [2, 2, 1, 1, 2, 2, 2, 1, 1]
    with pytest.raises(ValueError, match="first < second"):
        swap_words(_hand_record(), 2, 2)


def _chunks(values, lengths):
    bounds = np.cumsum([0, *lengths])
    return [tuple(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_built_pairs_swap_two_distinct_words_in_speech_and_text():
    """Each held-out utterance gives a speech and a text pair: good is the utterance, bad the
    same with two distinct words exchanged. In speech the word_sil_sep chunks of units (one a
    word or a pause) are the good ones with the two words' chunks exchanged; in text the
    words' BPE pieces are."""
    records = synthetic_records(40, seed=4, speakers=2)
    by_id = {r.id: r for r in records}
    pairs, skips = minimal_pairs_from_records(records, 0.5, seed=3)
    heldout = split_heldout(records, 0.5)[1]
    assert skips == {} and len(pairs) == 2 * len(heldout) > 0
    assert [p.modality for p in pairs[:2]] == ["speech", "text"]
    for pair in pairs:
        record = by_id[pair.id.rsplit(":", 1)[0]]
        assert pair.sources == (canonical_transcript(record.text),) and pair.good.text == record.text
        good_words, bad_words = pair.good.text.split(), pair.bad.text.split()
        i, j = [k for k, (g, b) in enumerate(zip(good_words, bad_words, strict=True)) if g != b]
        assert (bad_words[i], bad_words[j]) == (good_words[j], good_words[i])
        if pair.modality == "text":
            per_word = [tuple(p.id for p in record.bpe if p.word_index == k) for k in range(len(record.words))]
            per_word[i], per_word[j] = per_word[j], per_word[i]
            assert pair.bad.tokens == tuple(t for word in per_word for t in word)
            continue
        assert pair.good.tokens == tuple(record.units.tolist()) and len(pair.bad.tokens) == len(pair.good.tokens)
        good_chunks = _chunks(pair.good.tokens, pair.good.patches["word_sil_sep"])
        starts = np.cumsum([0, *pair.good.patches["word_sil_sep"]]).tolist()
        a, b = starts.index(record.words[i].start_frame), starts.index(record.words[j].start_frame)
        good_chunks[a], good_chunks[b] = good_chunks[b], good_chunks[a]
        assert _chunks(pair.bad.tokens, pair.bad.patches["word_sil_sep"]) == good_chunks
        for strategy in ("word_sil_merged", "bpe"):
            assert sum(pair.bad.patches[strategy]) == len(pair.bad.tokens)
    assert minimal_pairs_from_records(records, 0.5, seed=3)[0] == pairs, "same seed, same pairs"
    assert minimal_pairs_from_records(records, 0.5, seed=4)[0] != pairs
    same_word = dataclasses.replace(_hand_record(), words=tuple(w._replace(word="the") for w in _hand_record().words))
    assert minimal_pairs_from_records([same_word], 1.0) == ([], {"no_two_distinct_words": 1})


def test_minimal_pairs_file_roundtrip_and_one_line_errors(tmp_path):
    pairs, _ = minimal_pairs_from_records(synthetic_records(20, seed=1), 0.5)
    assert read_minimal_pairs(write_jsonl((p.to_json() for p in pairs), tmp_path / "pairs.jsonl")) == pairs
    text = {"modality": "text", "tokens": [1, 2]}
    cases = [
        ({"id": "p", "good": text}, "pair p: bad is missing"),
        ({"id": "p", "good": text, "bad": {"modality": "speech", "tokens": [2]}},
         "pair p: good and bad must have one modality, got text and speech"),
        ({"id": "p", "good": {"modality": "text", "tokens": [-1]}, "bad": text},
         "pair p: good: tokens must be a list of non-negative integers"),
        ({"id": "p", "good": text, "bad": {"modality": "text", "tokens": []}}, "pair p: good and bad need tokens"),
        ({"good": text, "bad": text}, "id must be a non-empty string"),
        ({"id": "p", "prompt": text, "endings": [text, text], "label": 0}, "pair p: this is a multiple-choice item"),
        ([1, 2], "a minimal pair must be a JSON object"),
    ]
    for row, message in cases:
        path = write_jsonl([{"id": "fine", "good": text, "bad": text}, row], tmp_path / "bad.jsonl")
        with pytest.raises(InvalidItem) as caught:
            read_minimal_pairs(path)
        assert str(caught.value).startswith(f"{path}:2: {message}"), str(caught.value)
    twice = write_jsonl([{"id": "p", "good": text, "bad": text}] * 2, tmp_path / "twice.jsonl")
    with pytest.raises(InvalidItem, match=r"twice.jsonl:2: pair p: id already used on line 1"):
        read_minimal_pairs(twice)


def test_pairs_score_the_side_and_eos_and_ties_count_half():
    """Hand-set next-token probabilities (HAND ids: <t> 10, <s> 11, EOS 13, unit u is 15 + u;
    a token without a set row is uniform, 1/21; unset entries of a set row share what is left):
      t1: "1 2" 0.5 * 0.5 * p(EOS|2) 0.5 vs "2 1" 0.1 * 0.1 * p(EOS|1) 0.5/20;
      t2: "3 4" vs "4 3" differ only in p(EOS | last): 0.6 after 4, 0.7/20 after 3; without EOS a tie;
      s1: units 0 vs 1, both 0.2 then p(EOS) 1/21: a tie, credited half."""
    model = BigramStub(HAND.size, {10: {1: 0.5, 2: 0.1}, 1: {2: 0.5}, 2: {13: 0.5, 1: 0.1}, 3: {4: 0.3},
                                   4: {3: 0.3, 13: 0.6}, 11: {15: 0.2, 16: 0.2}})
    pairs = [MinimalPair("t1", Side("text", (1, 2)), Side("text", (2, 1))),
             MinimalPair("t2", Side("text", (3, 4)), Side("text", (4, 3))),
             MinimalPair("s1", Side("speech", (0,)), Side("speech", (1,)))]
    _, spec = _models("lst")
    t1, t2, s1 = score_minimal_pairs(model, spec, HAND, pairs)
    other = 0.4 / 19  # p(3 | <t>) = p(4 | <t>)
    assert (t1.good_sum, t1.bad_sum) == pytest.approx((math.log(0.125), math.log(0.01 * 0.025)), abs=1e-5)
    assert (t2.good_sum, t2.bad_sum) == pytest.approx((math.log(other * 0.3 * 0.6), math.log(other * 0.3 * 0.035)), abs=1e-5)
    assert s1.good_sum == pytest.approx(math.log(0.2 / 21), abs=1e-5) and s1.good_sum == s1.bad_sum
    assert (t1.good_length, s1.bad_length) == (3, 2), "the side's tokens and EOS"
    assert [(s.credit_sum, s.credit_per_token) for s in (t1, t2, s1)] == [(1.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
    result = accuracy_by_modality([t1, t2, s1])
    assert list(result) == ["speech", "text"]
    assert result["speech"] == {"n": 1, "acc_sum": 0.5, "acc_sum_se": 0.5, "acc_per_token": 0.5, "acc_per_token_se": 0.5,
                                "ties_sum": 1, "ties_per_token": 1}
    assert result["text"]["acc_sum"] == 1.0 and result["text"]["acc_sum_se"] == 0.0 and result["text"]["n"] == 2
    table = format_minimal_pair_table(result)
    assert table[1].split()[:5] == ["speech", "1", "0.500", "±", "0.500"]
    assert table[-1] == "speech: ties (counted half) 1 by sum, 1 per token"


SPACE = TokenSpace(96, 32)
SMALL = ModelConfig(d_global=32, n_global_layers=1, n_global_heads=2, d_local=32, n_local_heads=2, local_window=8)


def _models(kind):
    torch.manual_seed(0)
    spec = load_run_spec(overrides={"model": {**SMALL.model_dump(), "kind": kind}})
    return build_model(spec.model, SPACE.size).eval(), spec


def test_both_model_families_score_pairs_and_the_flat_one_ignores_the_patching():
    pairs, _ = minimal_pairs_from_records(synthetic_records(16, seed=2), 0.5)
    speech = [p for p in pairs if p.modality == "speech"]
    lst, spec = _models("lst")
    static = score_minimal_pairs(lst, spec, SPACE, speech, patching="static")
    aligned = score_minimal_pairs(lst, spec, SPACE, speech, patching="word_sil_sep")
    assert all(a.good_sum != s.good_sum for a, s in zip(aligned, static, strict=True))
    baseline, base_spec = _models("baseline")
    flat = [score_minimal_pairs(baseline, base_spec, SPACE, pairs, patching=p) for p in ("static", "bpe")]
    assert flat[0] == flat[1] and all(np.isfinite([s.good_sum, s.bad_sum]).all() for s in flat[0])
    bare = MinimalPair("bare", Side("speech", (1, 2)), Side("speech", (2, 1)))
    with pytest.raises(InvalidItem, match="pair bare: its speech good side has no bpe patches"):
        score_minimal_pairs(lst, spec, SPACE, [bare], patching="bpe")
    far = MinimalPair("far", Side("speech", (1, 999)), Side("speech", (2, 1)))
    with pytest.raises(InvalidItem, match=r"pair far: unit ids must lie in \[0, 32\)"):
        score_minimal_pairs(lst, spec, SPACE, [far])


# --- through the CLI, on a briefly trained run over real shards --------------------------

@pytest.fixture(scope="module")
def trained(tiny_cli_run):
    return tiny_cli_run


def _score(*args):
    return CliRunner().invoke(cli, ["score", *map(str, args)])


def test_score_minimal_pairs_from_shards_and_from_a_file(trained, tmp_path):
    root, shards = trained
    built = _score("--model", root / "run", "--mode", "minimal-pairs", "--shards", shards, "--out", tmp_path / "scores.jsonl")
    assert built.exit_code == 0, built.output
    report = json.loads(built.stdout)
    heldout = split_heldout(load_records(shards), 0.3)[1]
    assert report["mode"] == "minimal-pairs" and report["dropped_contaminated"] == 0 and report["skipped_utterances"] == {}
    assert list(report["modalities"]) == ["speech", "text"]
    for figures in report["modalities"].values():
        assert figures["n"] == len(heldout)
        assert 0 <= figures["acc_sum"] <= 1
        assert figures["acc_sum_se"] == pytest.approx(math.sqrt(figures["acc_sum"] * (1 - figures["acc_sum"]) / len(heldout)))
    assert "modality" in built.stderr and "acc (sum)" in built.stderr
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(heldout)
    assert sum(line["credit_sum"] for line in lines if line["modality"] == "text") / len(heldout) == report["modalities"]["text"]["acc_sum"]
    pairs, _ = minimal_pairs_from_records(load_records(shards), 0.3)
    task = write_jsonl((p.to_json() for p in pairs), tmp_path / "pairs.jsonl")
    from_file = _score("--model", root / "run", "--mode", "minimal-pairs", "--task", task)
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout)["modalities"] == report["modalities"]


def test_a_malformed_pairs_file_is_one_line_with_exit_2(trained, tmp_path):
    root, _ = trained
    task = write_jsonl([{"id": "p", "good": {"modality": "text", "tokens": [1]}}], tmp_path / "pairs.jsonl")
    result = _score("--model", root / "run", "--mode", "minimal-pairs", "--task", task)
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"Error: {task}:1: pair p: bad is missing (a side: {{modality, tokens, text, patches}})"]
    wrong_mode = _score("--model", root / "run", "--task", write_jsonl(
        [{"id": "p", "good": {"modality": "text", "tokens": [1]}, "bad": {"modality": "text", "tokens": [2]}}], tmp_path / "p2.jsonl"))
    assert wrong_mode.exit_code == 2
    assert wrong_mode.output.splitlines() == [f"Error: {tmp_path / 'p2.jsonl'}:1: item p: this is a minimal pair, not a "
                                              "multiple-choice item: score it with --mode minimal-pairs"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_trained_models_prefer_the_true_word_order(tmp_path, kind):
    """Trained briefly on toy utterances (a Markov chain over words), both models must find the
    held-out sentence more likely than its two-words-swapped copy far above chance (0.5) in
    text, by summed log-likelihood (the swap breaks likely word successions)."""
    from support.toy_corpus import ToyLanguage, synthetic_dataset_json

    from lst_model.train import CHECKPOINT, load_model, train

    language = ToyLanguage.make(5)
    records = synthetic_records(300, seed=5, language=language)
    spec = load_run_spec(overrides={"preset": "tiny", "model": {"kind": kind},
                                    "train": {"batch_size": 8, "budget_positions": 8 * 128 * 120, "threads": 1,
                                              "checkpoint_every": 1000}})
    train(spec, split_heldout(records, 0.2)[0], TokenSpace.from_dataset_json(synthetic_dataset_json(language)), tmp_path)
    model, spec, space = load_model(tmp_path / CHECKPOINT)
    pairs, _ = minimal_pairs_from_records(records, 0.2, modalities=("text",))
    result = accuracy_by_modality(score_minimal_pairs(model, spec, space, pairs))
    assert result["text"]["acc_sum"] > 0.7, result
