"""Scoring and task building. Models are small and randomly initialised; speech items are
synthesized with the real espeak-ng; the quantizer is a stand-in (the units stage's k-means
quantizer needs a trained codebook): 25 Hz frames binned by log energy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records

from lst_model.config import ModelConfig, load_run_spec
from lst_model.corpus_tasks import corpus_items
from lst_model.items import PAIRS, ChoiceItem, InvalidItem, Side, read_items, write_items
from lst_model.model import build_model
from lst_model.score import (
    ItemScore,
    accuracy,
    accuracy_by_pair,
    choice_example,
    format_accuracy_table,
    score_items,
)
from lst_model.sequences import crop_patch_lengths
from lst_model.tokens import TokenSpace

LANGUAGE = ToyLanguage.make(2)
RECORDS = synthetic_records(24, seed=2, language=LANGUAGE, speakers=2)
ITEMS, _ = corpus_items(RECORDS, 0.5, seed=1)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
SMALL = ModelConfig(d_global=32, n_global_layers=1, n_global_heads=2, d_local=32, n_local_heads=2, local_window=8)


def _model(kind):
    torch.manual_seed(0)
    spec = load_run_spec(overrides={"model": {**SMALL.model_dump(), "kind": kind}})
    return build_model(spec.model, SPACE.size).eval(), spec


@pytest.mark.parametrize("kind", ["lst", "baseline"])
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("patching", ["static", "word_sil_sep"])
def test_score_is_the_sum_of_autoregressive_next_token_log_probs(kind, pair, patching):
    """Scoring one padded batch must equal scoring each ending token from its prefix alone."""
    from lst_model.model import Batch

    model, spec = _model(kind)
    items = [i for i in ITEMS if i.pair == pair][:1]
    scores = score_items(model, spec, SPACE, items, patching=patching, batch_size=3)
    flat = kind == "baseline"
    for item, score in zip(items, scores, strict=True):
        for ending, total in zip(item.endings, score.sums, strict=True):
            example, first = choice_example(item, ending, SPACE, patching, 4)
            assert len(example.tokens) - first == len(ending.tokens)
            expected = 0.0
            for t in range(first, len(example.tokens)):
                # Generation knows where token t's patch lies, not its value: a placeholder
                # stands at t, so token t-1 reads the global states up to the patch before t's (BLT).
                tokens = np.concatenate([example.tokens[:t], [SPACE.pad]])
                prefix = dataclasses.replace(example, tokens=tokens, patch_lengths=np.array(crop_patch_lengths(example.patch_lengths, 0, t + 1)))
                with torch.no_grad():
                    logits = model(Batch.from_examples([prefix], SPACE.pad, flat))
                expected += float(torch.log_softmax(logits[0, -2].float(), -1)[example.tokens[t]])
            assert total == pytest.approx(expected, abs=1e-3)
        assert score.lengths == [len(e.tokens) for e in item.endings]


def test_items_roundtrip_and_accuracy(tmp_path):
    assert read_items(write_items(ITEMS, tmp_path / "items.jsonl")) == ITEMS
    model, spec = _model("lst")
    scores = score_items(model, spec, SPACE, ITEMS)
    result = accuracy_by_pair(scores)
    assert list(result) == list(PAIRS)
    for pair, figures in result.items():
        mine = [s for s in scores if s.pair == pair]
        assert figures["n"] == len(mine) > 0
        assert figures["acc_sum"] == sum(int(np.argmax(s.sums)) == s.label for s in mine) / len(mine)


def test_standard_errors_are_binomial():
    """3 of 4 right by sum (p = 0.75: s.e. sqrt(0.75 * 0.25 / 4) = 0.216506), 2 of 4 per token
    (item c's per-token scores are -4 and -1.5), 1 of 4 by acc_norm (per character: a -1 vs
    -0.5, b -1 vs -2, d -1 vs -5; item c has an ending without text, so per token)."""
    scores = [ItemScore("a", "s2s", 1, [-1.0, -2.0], [1, 1], [1, 4]), ItemScore("b", "s2s", 1, [-3.0, -2.0], [1, 1], [3, 1]),
              ItemScore("c", "s2s", 0, [-4.0, -6.0], [1, 4], [0, 3]), ItemScore("d", "s2s", 1, [-9.0, -5.0], [1, 1], [9, 1])]
    result = accuracy(scores)
    assert result["acc_sum"] == 0.75 and result["acc_per_token"] == 0.5 and result["acc_norm"] == 0.25
    assert result["acc_sum_se"] == pytest.approx(0.216506, abs=1e-6)
    assert result["acc_per_token_se"] == pytest.approx(0.25, abs=1e-12)  # sqrt(0.5 * 0.5 / 4)
    assert result["acc_norm_se"] == pytest.approx(0.216506, abs=1e-6)  # sqrt(0.25 * 0.75 / 4)
    assert result["acc_norm_fallback"] == 1 and result["n"] == 4
    assert np.isnan(accuracy([])["acc_sum_se"]) and np.isnan(accuracy([])["acc_norm"])
    table = format_accuracy_table({"s2s": result})
    assert table[1].split() == ["S→S", "4", "0.750", "±", "0.217", "0.500", "±", "0.250", "0.250", "±", "0.217"]
    assert table[2] == "acc_norm: 1 items with an ending without text were normalized per token"


HAND = TokenSpace(10, 6)  # <t> 10, <s> 11, BOS 12, unit u -> 15 + u
SPEECH_PROMPT = Side("speech", (3, 4, 5), "a b", {"word_sil_sep": (1, 2)})
SPEECH_ENDING = Side("speech", (0, 2), "c", {"word_sil_sep": (2,)})
TEXT_PROMPT = Side("text", (1, 2, 3), "a b")
TEXT_ENDING = Side("text", (7, 8), "c")
# pair -> (prompt, ending, static (p = 4) tokens and patch lengths, word_sil_sep patch lengths)
EXPECTED = {
    "s2s": (SPEECH_PROMPT, SPEECH_ENDING, [12, 11, 18, 19, 20, 15, 17], [1, 1, 4, 1], [1, 1, 1, 2, 2]),
    "t2t": (TEXT_PROMPT, TEXT_ENDING, [12, 10, 1, 2, 3, 7, 8], [1] * 7, [1] * 7),
    "s2t": (SPEECH_PROMPT, TEXT_ENDING, [12, 11, 18, 19, 20, 10, 7, 8], [1, 1, 3, 1, 1, 1], [1, 1, 1, 2, 1, 1, 1]),
    "t2s": (TEXT_PROMPT, SPEECH_ENDING, [12, 10, 1, 2, 3, 11, 15, 17], [1, 1, 1, 1, 1, 1, 2], [1, 1, 1, 1, 1, 1, 2]),
}


@pytest.mark.parametrize("pair", PAIRS)
def test_scored_sequence_of_every_pair_token_by_token(pair):
    prompt, ending, tokens, static, aligned = EXPECTED[pair]
    item = ChoiceItem("x", prompt, (ending, ending), 0)
    assert item.pair == pair
    for patching, lengths in (("static", static), ("word_sil_sep", aligned)):
        example, first = choice_example(item, ending, HAND, patching, 4)
        assert example.tokens.tolist() == tokens
        assert example.patch_lengths.tolist() == lengths, patching
        assert first == len(tokens) - 2, "only the ending's two tokens are scored"


def test_aligned_scoring_uses_the_side_patches():
    """On the LST, aligned patches change the scores (s2s: the prompt's patches, then the
    ending's); the flat baseline ignores the patching. A side without the strategy's patches
    is an InvalidItem saying how to score it."""
    items = [i for i in ITEMS if i.pair in ("s2s", "t2s")]
    lst, spec = _model("lst")
    static = score_items(lst, spec, SPACE, items, patching="static")
    aligned = score_items(lst, spec, SPACE, items, patching="word_sil_sep")
    assert all(a.sums != s.sums for a, s in zip(aligned, static, strict=True))
    example, _ = choice_example(items[0], items[0].endings[0], SPACE, "word_sil_merged", 4)
    assert example.patch_lengths.tolist()[2:] == [*items[0].prompt.patches["word_sil_merged"], *items[0].endings[0].patches["word_sil_merged"]]
    baseline, base_spec = _model("baseline")
    assert [s.sums for s in score_items(baseline, base_spec, SPACE, items, patching="bpe")] == \
        [s.sums for s in score_items(baseline, base_spec, SPACE, items, patching="static")]
    bare = dataclasses.replace(items[0], prompt=Side("speech", items[0].prompt.tokens, items[0].prompt.text))
    with pytest.raises(InvalidItem, match="no bpe patches; score with --patching static"):
        score_items(lst, spec, SPACE, [bare], patching="bpe")
    assert score_items(baseline, base_spec, SPACE, [bare], patching="bpe")[0].sums


def test_an_item_from_another_codebook_is_an_invalid_item():
    model, spec = _model("lst")
    item = ChoiceItem("far", Side("speech", (1, 2, 999)), (Side("speech", (1,)), Side("speech", (2,))), 0)
    with pytest.raises(InvalidItem, match=r"item far: unit ids must lie in \[0, 32\)"):
        score_items(model, spec, SPACE, [item])


class BigramStub(torch.nn.Module):
    """A stand-in model whose next-token distribution depends only on the current token, set
    by hand, so the expected log-likelihoods below are plain arithmetic (not code output)."""

    def __init__(self, size: int, probabilities: dict[int, dict[int, float]]) -> None:
        super().__init__()
        table = torch.full((size, size), 1.0 / size)
        for previous, chosen in probabilities.items():
            rest = (1.0 - sum(chosen.values())) / (size - len(chosen))
            table[previous] = rest
            for token, p in chosen.items():
                table[previous, token] = p
        self.log_table = torch.nn.Parameter(table.log(), requires_grad=False)

    def forward(self, batch):
        return self.log_table[batch.tokens]


def test_acc_norm_divides_by_the_characters_of_the_ending_text():
    """lm-eval's acc_norm: summed log-likelihood / characters of the ending (a speech ending:
    its transcript). With hand-set next-token probabilities (HAND ids: text id t is t, <s>
    11, unit u is 15 + u):
      a (t2t, label 1): "no" log 0.2 = -1.609 (-0.805/char) vs "a longer one" log(0.1 * 0.5) =
        -2.996 (-1.498/token, -0.250/char): the shorter ending wins by sum only;
      b (t2t, label 0): "abcdefghij" log 0.1 = -2.303 (-0.230/char) vs "ab" log(0.3 * 0.5) =
        -1.897 (-0.949/token and /char): acc_norm alone is right;
      c (t2s, label 1): "yes" in 2 units log(0.4 * 0.5) = -1.609 (-0.805/token, -0.536/char)
        vs "certainly" in 1 unit log 0.1 = -2.303 (-0.256/char): normalized by the
        transcript, not the units."""
    model = BigramStub(HAND.size, {1: {2: 0.2, 3: 0.1, 5: 0.1, 6: 0.3}, 3: {4: 0.5}, 6: {7: 0.5},
                                   11: {15: 0.4, 17: 0.1}, 15: {16: 0.5}})
    go = Side("text", (1,), "go")
    items = [ChoiceItem("a", go, (Side("text", (2,), "no"), Side("text", (3, 4), "a longer one")), 1),
             ChoiceItem("b", go, (Side("text", (5,), "abcdefghij"), Side("text", (6, 7), "ab")), 0),
             ChoiceItem("c", go, (Side("speech", (0, 1), "yes"), Side("speech", (2,), "certainly")), 1)]
    _, spec = _model("lst")
    a, b, c = score_items(model, spec, HAND, items, patching="static")
    expected = {"a": [math.log(0.2), math.log(0.05)], "b": [math.log(0.1), math.log(0.15)], "c": [math.log(0.2), math.log(0.1)]}
    for score in (a, b, c):
        assert score.sums == pytest.approx(expected[score.id], abs=1e-5)
    assert (a.chars, b.chars, c.chars) == ([2, 12], [10, 2], [3, 9])
    assert c.per_char == pytest.approx([math.log(0.2) / 3, math.log(0.1) / 9], abs=1e-5)
    assert [(s.correct_sum, s.correct_per_token, s.correct_norm) for s in (a, b, c)] == \
        [(False, True, True), (False, False, True), (False, False, True)]
    result = accuracy([a, b, c])
    assert (result["acc_sum"], result["acc_per_token"], result["acc_norm"], result["acc_norm_fallback"]) == (0, 1 / 3, 1, 0)
    assert a.to_json()["correct_norm"] is True and a.to_json()["chars"] == [2, 12]
