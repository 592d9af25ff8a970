"""Pieces of the model, generation and training loop that the end-to-end tests only reach
indirectly: KV caches and cached runners, same-data costing, a step's counts and the log's
throughput window, and the errors that name a wrong call instead of failing somewhere inside."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records

from lst_data.core.config import updated
from lst_model.asr_tts import split_prompt
from lst_model.config import ModelConfig, load_run_spec
from lst_model.flops import SameDataCost, batch_cost
from lst_model.incremental import CachedFlat, CachedLST, cached_runner
from lst_model.model import Attention, Batch, Block, KVCache, build_model
from lst_model.sequences import SequenceBuilder, training_sequences
from lst_model.tokens import TokenSpace
from lst_model.train import Distributed, MicroBatch, StepCounts, Tally

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(12, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
SMALL = ModelConfig(d_global=32, n_global_layers=1, n_global_heads=2, d_local=32, n_local_heads=2,
                    n_encoder_layers=1, n_decoder_layers=1, local_window=8)


def _sequences(rows: range, flat: bool = False):
    builder = SequenceBuilder(SPACE, load_run_spec().data)
    return training_sequences(builder, RECORDS, seed=0, step=0, rows=rows, positions=32, flat=flat, progress=0.0)


def test_kv_cache_extends_truncates_and_refuses_to_attend_while_empty():
    cache = KVCache()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="empty"):
        cache.entries  # noqa: B018 (the property is what is tested)
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache.extend(k, v)
    cache.extend(k[:, :, :1], v[:, :, :1])
    keys, values, positions = cache.entries
    assert len(cache) == 4 and positions.tolist() == [0, 1, 2, 3]
    assert torch.equal(keys[:, :, 3], k[:, :, 0]) and torch.equal(values[:, :, :3], v)
    cache.truncate(2)
    assert len(cache) == 2 and cache.entries[2].tolist() == [0, 1]
    _, _, mask = cache.visible(torch.tensor([1]), window=1)
    assert mask.shape == (1, 1, 1, 1) and mask.all()  # with a window of 1 only the key at its own position is read


def test_self_attention_with_rope_needs_positions_and_cross_attention_a_context_norm():
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="needs the positions"):
        Attention(8, 2, rope_theta=10_000.0).keys_values(x)
    assert Attention(8, 2).keys_values(x)[0].shape == (1, 2, 3, 4)  # cross-attention: no rotation, no positions
    with pytest.raises(ValueError, match="cross-attention block"):
        Block(ModelConfig(), 8, 2, rope_theta=10_000.0).extend_context(KVCache(), x)


def test_cached_runner_matches_the_run_kind():
    lst, flat = build_model(SMALL, SPACE.size), build_model(updated(SMALL, {"kind": "baseline"}), SPACE.size)
    assert isinstance(cached_runner(lst, flat=False), CachedLST)
    assert isinstance(cached_runner(flat, flat=True), CachedFlat)
    with pytest.raises(ValueError, match="model.kind is baseline, but the model is a LatentSpeechTextTransformer"):
        cached_runner(lst, flat=True)


def test_same_data_cost_is_batch_cost_under_each_kind():
    sequences = _sequences(range(2))
    cost = SameDataCost.of(SMALL, SPACE.size, SPACE.pad).cost(sequences)
    assert cost.dtype == torch.int64 and cost.shape == (2, 3)
    for row, kind in zip(cost.tolist(), SameDataCost.MODEL_KINDS, strict=True):
        expected = batch_cost(updated(SMALL, {"kind": kind}), SPACE.size, Batch.from_examples(sequences, SPACE.pad, kind == "baseline"))
        assert row == [expected.tokens, expected.global_positions, expected.train_flops]
    lst, baseline = cost.tolist()
    assert lst[0] == baseline[0] == baseline[1]  # the same tokens; the baseline makes each one a global position


def test_step_counts_sum_targets_and_costs_over_micro_batches():
    micro = [MicroBatch(Batch.from_examples(_sequences(range(r, r + 1)), SPACE.pad), torch.tensor([[r + 1, 2, 3], [4, 5, 6]]))
             for r in range(2)]
    counts = StepCounts.of(micro, Distributed(), torch.device("cpu"))
    assert counts.targets == sum(int(m.batch.loss_targets.sum()) for m in micro)
    assert counts.same_data == {"lst": {"tokens": 3, "global_positions": 4, "train_flops": 6},
                                "baseline": {"tokens": 8, "global_positions": 10, "train_flops": 12}}


def test_tally_accumulates_and_a_log_row_starts_a_new_window():
    tally = Tally({"tokens": 100, "global_positions": 50, "train_flops": 7})
    counts = StepCounts(9, {"lst": {"tokens": 10, "global_positions": 4, "train_flops": 30},
                            "baseline": {"tokens": 10, "global_positions": 10, "train_flops": 60}})
    tally.add(counts.same_data["lst"], 0.5)
    tally.add(counts.same_data["lst"], 1.5)
    row = tally.log_row(3, 2.5, 1e-3, 0.75, counts, "lst")
    assert row["window"] == {"tokens": 20, "global_positions": 8, "seconds": 2.0}
    assert (row["tokens_per_s"], row["positions_per_s"]) == (10.0, 4.0)
    assert row["cumulative"] == {"tokens": 120, "global_positions": 58, "train_flops": 67}
    assert (row["tokens"], row["global_positions"]) == (10, 4)
    assert row["same_data"] == {"lst": {"global_positions": 4, "train_flops": 30},
                                "baseline": {"global_positions": 10, "train_flops": 60}}
    assert tally.window.tokens == 0 and tally.window.seconds == 0.0


def test_examples_that_need_a_record_or_a_target_mask_say_so():
    builder = SequenceBuilder(SPACE, load_run_spec().data)
    with pytest.raises(ValueError, match="a speech example needs a record"):
        builder.sample_example(2, None, np.random.default_rng(0), 0.0)
    with pytest.raises(ValueError, match="not a fine-tuning example"):
        split_prompt(builder.speech_example(RECORDS[0], "static"))
