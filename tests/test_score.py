"""Scoring of held-out continuation items. Models are small and randomly initialised
(task building from text sets: tests/test_build_task.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lst_model.config import ModelConfig, load_run_spec
from lst_model.model import build_model
from lst_model.score import ChoiceItem, accuracy, read_items, score_items, write_items
from lst_model.sequences import crop_patch_lengths
from lst_model.synthetic import ToyLanguage, synthetic_dataset_json, synthetic_records
from lst_model.tasks import heldout_continuation_items
from lst_model.tokens import TokenSpace

LANGUAGE = ToyLanguage.make(2)
RECORDS = synthetic_records(12, seed=2, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
SMALL = ModelConfig(d_global=32, n_global_layers=1, n_global_heads=2, d_local=32, n_local_heads=2, local_window=8)


def _model(kind):
    torch.manual_seed(0)
    spec = load_run_spec(overrides={"model": {**SMALL.model_dump(), "kind": kind}})
    return build_model(spec.model, SPACE.size).eval(), spec


@pytest.mark.parametrize("kind", ["lst", "baseline"])
@pytest.mark.parametrize("mode", ["speech", "text"])
def test_score_is_the_sum_of_autoregressive_next_token_log_probs(kind, mode):
    """Scoring one padded batch must equal scoring each token from its prefix alone."""
    from lst_model.model import Batch
    from lst_model.score import choice_example

    model, spec = _model(kind)
    items = heldout_continuation_items(RECORDS, mode, seed=1)[:3]
    scores = score_items(model, spec, SPACE, items, batch_size=4)
    flat = kind == "baseline"
    for item, score in zip(items, scores, strict=True):
        for ending, total in zip(item.endings, score.sums, strict=True):
            example, first = choice_example(item, ending, SPACE, 4)
            expected = 0.0
            for t in range(first, len(example.tokens)):
                # Generation knows where token t's (static) patch lies, not its value: a placeholder
                # stands at t, so token t-1 reads the global states up to the patch before t's (BLT).
                tokens = np.concatenate([example.tokens[:t], [SPACE.pad]])
                prefix = dataclasses.replace(example, tokens=tokens, patch_lengths=np.array(crop_patch_lengths(example.patch_lengths, 0, t + 1)))
                with torch.no_grad():
                    logits = model(Batch.from_examples([prefix], SPACE.pad, flat))
                expected += float(torch.log_softmax(logits[0, -2].float(), -1)[example.tokens[t]])
            assert total == pytest.approx(expected, abs=1e-3)
        assert score.lengths == [len(e) for e in item.endings]


@pytest.mark.parametrize("mode", ["speech", "text"])
def test_heldout_items_hold_the_true_continuation(mode):
    items = heldout_continuation_items(RECORDS, mode, seed=0, continuation_words=3)
    assert len(items) == len([r for r in RECORDS if len(r.words) >= 6])
    assert {i.label for i in items} == {0, 1}
    for item in items:
        record = next(r for r in RECORDS if item.id == f"{r.id}:{mode}")
        true = item.endings[item.label]
        if mode == "speech":
            joined = item.prompt + true
            assert joined == record.units[: len(joined)].tolist()
        else:
            pieces = [p.id for p in record.bpe]
            assert item.prompt + true == pieces[: len(item.prompt) + len(true)]
        assert item.endings[1 - item.label] != true


def test_items_roundtrip_and_accuracy(tmp_path):
    items = heldout_continuation_items(RECORDS, "text")
    assert read_items(write_items(items, tmp_path / "items.jsonl")) == items
    model, spec = _model("lst")
    scores = score_items(model, spec, SPACE, items)
    result = accuracy(scores)
    assert result["n"] == len(items)
    assert result["acc_sum"] == sum(int(np.argmax(s.sums)) == s.label for s in scores) / len(items)
    with pytest.raises(ValueError):
        ChoiceItem("x", "text", [1], [[2]], label=1)
