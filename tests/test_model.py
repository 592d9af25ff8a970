"""LST and flat baseline: causality under every patching, padding independence, FLOP
accounting against torch's counter, preset sizes. Models are small and randomly initialised."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lst_model.config import PRESETS, ModelConfig, load_run_spec
from lst_model.flops import batch_cost
from lst_model.model import Batch, build_model, count_parameters
from lst_model.sequences import SequenceBuilder, crop_patch_lengths
from lst_model.synthetic import ToyLanguage, synthetic_dataset_json, synthetic_records
from lst_model.tokens import TokenSpace

LANGUAGE = ToyLanguage.make(1)
RECORDS = synthetic_records(8, seed=1, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
SMALL = ModelConfig(d_global=32, n_global_layers=2, n_global_heads=2, d_local=32, n_local_heads=2,
                    n_encoder_layers=1, n_decoder_layers=2, local_window=8)


def _examples(strategy: str):
    builder = SequenceBuilder(SPACE, load_run_spec().data)
    record = RECORDS[2]
    return [builder.speech_example(record, strategy), builder.interleaved_example(record, np.random.default_rng(4), strategy)]


def _model(kind: str):
    torch.manual_seed(0)
    return build_model(dataclasses.replace(SMALL, kind=kind), SPACE.size).eval()


@pytest.mark.parametrize("kind,strategy", [("lst", "static"), ("lst", "word_sil_sep"), ("lst", "word_sil_merged"),
                                           ("lst", "bpe"), ("baseline", "static")])
def test_changing_a_future_token_never_changes_earlier_logits(kind, strategy):
    model = _model(kind)
    flat = kind == "baseline"
    for example in _examples(strategy):
        batch = Batch.from_examples([example], SPACE.pad, flat)
        with torch.no_grad():
            reference = model(batch)
        n = batch.tokens.shape[1]
        for t in (1, n // 3, n // 2, n - 2):
            changed = Batch(batch.tokens.clone(), batch.patch_index, batch.n_patches)
            changed.tokens[0, t] = (changed.tokens[0, t] + 7) % SPACE.size
            with torch.no_grad():
                logits = model(changed)
            torch.testing.assert_close(logits[0, :t], reference[0, :t], rtol=0, atol=1e-5)
            assert not torch.allclose(logits[0, t:], reference[0, t:], atol=1e-5), "the change is visible from t on"


def test_lst_patch_boundary_information_flow():
    """A token sees global states only of earlier patches: the last token of patch j is
    influenced by patch j-1's tokens through the global path, not just the local window."""
    model = _model("lst")
    example = _examples("static")[0]
    batch = Batch.from_examples([example], SPACE.pad)
    with torch.no_grad():
        reference = model(batch)
    changed = Batch(batch.tokens.clone(), batch.patch_index, batch.n_patches)
    changed.tokens[0, 2] = (changed.tokens[0, 2] + 3) % SPACE.size  # first unit, in patch 2
    with torch.no_grad():
        logits = model(changed)
    far = 2 + SMALL.local_window + 8  # beyond the local window: reachable only via global states
    assert not torch.allclose(logits[0, far], reference[0, far], atol=1e-6)


@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_rows_do_not_depend_on_padding_or_neighbours(kind):
    model = _model(kind)
    flat = kind == "baseline"
    short, long = _examples("word_sil_sep")[0], _examples("static")[1]
    short = dataclasses.replace(short, tokens=short.tokens[:30], patch_lengths=np.array(crop_patch_lengths(short.patch_lengths, 0, 30)))
    with torch.no_grad():
        alone = model(Batch.from_examples([short], SPACE.pad, flat))
        together = model(Batch.from_examples([long, short], SPACE.pad, flat))
    torch.testing.assert_close(together[1, :30], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_flop_accounting_matches_torch_counter(kind):
    """FlopCounterMode counts every matmul but not the pairs inside CPU masked SDPA, so the
    analytic dense count minus its attention-pair part must equal it exactly."""
    model = _model(kind)
    flat = kind == "baseline"
    batch = Batch.from_examples(_examples("bpe")[1:], SPACE.pad, flat)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch)
    cost = batch_cost(model.config, SPACE.size, batch, dense=True)
    assert cost.forward_flops - cost.attention_flops == counter.get_total_flops()
    assert batch_cost(model.config, SPACE.size, batch).forward_flops < cost.forward_flops or flat


def test_lst_uses_fewer_global_positions_than_baseline():
    example = _examples("static")[0]
    lst = batch_cost(dataclasses.replace(SMALL, kind="lst"), SPACE.size, Batch.from_examples([example], SPACE.pad))
    base = batch_cost(dataclasses.replace(SMALL, kind="baseline"), SPACE.size, Batch.from_examples([example], SPACE.pad, True))
    n_units = len(example.tokens) - 3
    assert base.global_positions == len(example.tokens)
    assert lst.global_positions == 3 + -(-n_units // 4)


def test_presets_span_tiny_to_about_100m_parameters():
    sizes = {}
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            sizes[name] = count_parameters(build_model(ModelConfig(**preset), 32000 + 5 + 501))
    assert sizes["tiny"] < 5e6
    assert 80e6 < sizes["base"] < 130e6
    assert sizes["tiny"] < sizes["small"] < sizes["base"]
