"""LST and flat baseline: causality under every patching, padding independence, FLOP
accounting against torch's counter, preset sizes. Models are small and randomly initialised."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records
from torch.utils.flop_counter import FlopCounterMode

from lst_data.core.config import updated
from lst_model.config import PRESETS, SMALL_PRESET_MAX_WIDTH, ModelConfig, load_run_spec
from lst_model.flops import batch_cost
from lst_model.model import Batch, build_model, count_parameters
from lst_model.sequences import SequenceBuilder, crop_patch_lengths, pack
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
    return build_model(updated(SMALL, {"kind": kind}), SPACE.size).eval()


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
            changed = batch.with_tokens(batch.tokens.clone())
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
    changed = batch.with_tokens(batch.tokens.clone())
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


@pytest.mark.parametrize("strategy", ["static", "word_sil_sep"])
def test_decoder_reads_a_finished_patchs_global_state_at_its_last_token(strategy):
    """BLT wiring: token i sees g_k for k < patch(target of i). Shifting g_j changes the
    logits from the last token of patch j on, and at no earlier position."""
    model = _model("lst")
    example = _examples(strategy)[1]  # interleaved: one-token text patches and multi-token speech patches
    batch = Batch.from_examples([example], SPACE.pad)
    ends = np.cumsum(example.patch_lengths) - 1  # last token of each patch
    with torch.no_grad():
        reference = model(batch)
    multi = [j for j, n in enumerate(example.patch_lengths) if n > 1]
    single = [j for j, n in enumerate(example.patch_lengths) if n == 1 and j + 1 < len(example.patch_lengths)]
    for j in (single[1], single[-1], multi[0], multi[len(multi) // 2]):
        def shift(module, inputs, output, j=j):
            output = output.clone()
            output[:, j] += torch.linspace(-1, 1, output.shape[-1])  # not a constant: LayerNorm would remove it
            return output

        handle = model.global_norm.register_forward_hook(shift)
        with torch.no_grad():
            logits = model(batch)
        handle.remove()
        last = int(ends[j])
        torch.testing.assert_close(logits[0, :last], reference[0, :last], rtol=0, atol=1e-6)
        assert not torch.allclose(logits[0, last], reference[0, last], atol=1e-4), f"token {last} must read g_{j}"


@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_packed_documents_do_not_see_each_other(kind):
    """Block-causal masks and per-document RoPE: perturbing any token of example A leaves
    every logit of the next example B unchanged, and B's logits equal B's logits alone."""
    model = _model(kind)
    flat = kind == "baseline"
    first, second = _examples("word_sil_sep")
    packed = pack(iter([first, second]), 10**6, flat)
    batch = Batch.from_examples([packed], SPACE.pad, flat)
    n_a = len(first.tokens)
    with torch.no_grad():
        reference = model(batch)
        alone = model(Batch.from_examples([second], SPACE.pad, flat))
    torch.testing.assert_close(reference[0, n_a:], alone[0], rtol=0, atol=1e-5)
    generator = torch.Generator().manual_seed(0)
    for t in range(0, n_a, 3):
        changed = batch.with_tokens(batch.tokens.clone())
        changed.tokens[0, t] = int(torch.randint(SPACE.size, (1,), generator=generator))
        with torch.no_grad():
            logits = model(changed)
        torch.testing.assert_close(logits[0, n_a:], reference[0, n_a:], rtol=0, atol=1e-6)
    changed.tokens[0, :n_a] = SPACE.pad
    with torch.no_grad():
        assert not torch.allclose(model(changed)[0, :n_a], reference[0, :n_a], atol=1e-4), "A itself does change"


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
    lst = batch_cost(updated(SMALL, {"kind": "lst"}), SPACE.size, Batch.from_examples([example], SPACE.pad))
    base = batch_cost(updated(SMALL, {"kind": "baseline"}), SPACE.size, Batch.from_examples([example], SPACE.pad, True))
    n_units = len(example.tokens) - 3
    assert base.global_positions == len(example.tokens)
    assert lst.global_positions == 3 + -(-n_units // 4)


def test_presets_span_tiny_to_the_papers_sizes():
    sizes = {}
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            sizes[name] = count_parameters(build_model(ModelConfig(**preset), 32000 + 5 + 501))
    assert sizes["tiny"] < 5e6
    assert 80e6 < sizes["base"] < 130e6
    assert 380e6 < sizes["420m"] < 460e6
    assert 1.6e9 < sizes["1.8b"] < 2.0e9
    assert sizes["tiny"] < sizes["small"] < sizes["base"] < sizes["420m"] < sizes["1b"] < sizes["1.8b"]


def test_presets_floor_the_local_width_when_small_and_keep_the_papers_proportions_when_large():
    for name, preset in PRESETS.items():
        config = ModelConfig(**preset)
        assert config.d_global // config.n_global_heads >= 32 and config.d_local // config.n_local_heads >= 32, name
        if config.d_global <= SMALL_PRESET_MAX_WIDTH:
            assert config.d_local == config.d_global, name
        else:
            assert config.d_local * 2 == config.d_global, name
        assert config.n_encoder_layers == 1 and config.n_decoder_layers >= 1, name


@pytest.mark.parametrize("vocab", [SPACE, TokenSpace(32000, 501)], ids=["toy", "llama2+hubert"])
def test_every_preset_spends_fewer_flops_than_the_baseline_on_speech(vocab):
    """A speech-only utterance, static p=4: from 'base' on (local width = global / 2) the
    LST's forward FLOPs stay below the baseline's. The small presets keep the local width at
    the global width (a floor), which costs more than the baseline per token: they are
    compared at equal FLOPs instead (benchmarks/bench_model.py)."""
    builder = SequenceBuilder(vocab, load_run_spec().data)
    large = {name: preset for name, preset in PRESETS.items() if preset["d_global"] > SMALL_PRESET_MAX_WIDTH}
    assert set(large) == {"base", "420m", "1b", "1.8b"}
    for record in RECORDS:
        example = builder.speech_example(record, "static")
        for name, preset in large.items():
            lst = batch_cost(ModelConfig(**preset, kind="lst"), vocab.size, Batch.from_examples([example], vocab.pad))
            base = batch_cost(ModelConfig(**preset, kind="baseline"), vocab.size, Batch.from_examples([example], vocab.pad, True))
            assert lst.forward_flops < 0.7 * base.forward_flops, (name, record.id)


def test_sparse_attention_count_equals_the_pairs_the_masks_allow():
    """On a packed row of two documents, the default (non-dense) count must equal the True
    entries of the masks the model builds (local windowed, patch pooling, global, decoder
    cross-attention), with and without a decoder window."""
    from lst_model.model import decoder_rule, document_causal_rule, patch_documents, pooling_rule

    first, second = _examples("word_sil_sep")
    batch = Batch.from_examples([pack(iter([first, second]), 10**6, False)], SPACE.pad)
    n_patches = int(batch.n_patches.max())
    for window in (1, 3, None):
        config = updated(SMALL, {"kind": "lst", "decoder_window": window})
        k = config.cross_attn_k

        def pairs(rule):
            return int(rule.dense(torch.device("cpu")).sum())

        local = pairs(document_causal_rule(batch.document, config.local_window))
        pooling = pairs(pooling_rule(batch.patch_index, n_patches, k))
        global_pairs = pairs(document_causal_rule(patch_documents(batch, n_patches)))
        decoder = pairs(decoder_rule(batch, n_patches, k, window))
        n_local = config.n_encoder_layers + config.n_decoder_layers
        expected = (4 * config.d_local * (n_local * local + pooling + config.n_decoder_layers * decoder)
                    + 4 * config.d_global * config.n_global_layers * global_pairs)
        assert batch_cost(config, SPACE.size, batch).attention_flops == expected, window
