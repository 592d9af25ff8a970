"""Attention backends: FlexAttention block masks and query-chunked attention give the dense
reference's logits on random packings (documents, patchings, padding, decoder windows,
queries per patch), and the chunked local stack's peak memory grows linearly with the
sequence length (the dense one's quadratically)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.peak_memory import PeakMemory

import lst_model.attention as attention
from lst_data.core.config import updated
from lst_model.config import ModelConfig
from lst_model.model import Batch, build_model, document_causal_rule, positions_in_document
from lst_model.sequences import Example

VOCAB = 40
PAD = VOCAB - 1


def _random_packing(rng: np.random.Generator, rows: int) -> list[Example]:
    """Rows of 1-3 documents with random tokens and random patch lengths (1-7), of
    different lengths (so the shorter rows are padded)."""
    examples = []
    for _ in range(rows):
        lengths = [int(n) for n in rng.integers(1, 8, size=int(rng.integers(4, 20)))]
        n = sum(lengths)
        cuts = sorted(int(c) for c in rng.choice(np.arange(1, len(lengths)), size=int(rng.integers(0, 3)), replace=False))
        bounds = [0, *cuts, len(lengths)]
        documents = [sum(lengths[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        examples.append(Example(rng.integers(0, PAD, size=n), np.array(lengths), "speech",
                                document_lengths=np.array(documents)))
    return examples


CONFIGS = {
    "blt": {},
    "all-states-k1-mean": {"decoder_window": None, "cross_attn_k": 1, "patch_pooling": "mean"},
    "window3-ffn-cross": {"decoder_window": 3, "cross_attn_ffn": True, "norm": "layernorm", "ffn": "gelu"},
}


@pytest.mark.parametrize("kind", ["lst", "baseline"])
@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_flex_and_chunked_equal_dense_on_random_packings(kind, variant, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_CHUNK", 16)  # several chunks per row, windows crossing chunks
    base = ModelConfig(kind=kind, d_global=32, n_global_heads=2, d_local=32, n_local_heads=2, n_decoder_layers=2,
                       local_window=5, ffn_multiple_of=8, **CONFIGS[variant])
    rng = np.random.default_rng(sorted(CONFIGS).index(variant))
    for trial in range(3):
        examples = _random_packing(rng, rows=3)
        batch = Batch.from_examples(examples, PAD, flat=kind == "baseline")
        torch.manual_seed(trial)
        model = build_model(updated(base, {"attention": "dense"}), VOCAB).eval()
        with torch.no_grad():
            reference = model(batch)
            for backend in ("flex", "chunked"):
                model_with = build_model(updated(base, {"attention": backend}), VOCAB).eval()
                model_with.load_state_dict(model.state_dict())
                logits = model_with(batch)
                valid = batch.valid
                torch.testing.assert_close(logits[valid], reference[valid], rtol=0, atol=2e-5, msg=f"{backend} trial {trial}")


def test_auto_picks_flex_on_cuda_and_chunks_long_cpu_rows():
    cpu = torch.device("cpu")
    assert attention.resolve_backend("auto", torch.device("cuda"), 10) == "flex"
    assert attention.resolve_backend("auto", cpu, attention.DENSE_MAX_QUERIES) == "dense"
    assert attention.resolve_backend("auto", cpu, attention.DENSE_MAX_QUERIES + 1) == "chunked"
    assert attention.resolve_backend("dense", cpu, 10**6) == "dense"


def _local_stack_peak(config: ModelConfig, length: int) -> int:
    torch.manual_seed(0)
    model = build_model(config, VOCAB).eval()
    document = torch.zeros(1, length, dtype=torch.long)
    document[:, length // 2:] = 1  # two documents
    x = torch.randn(1, length, config.d_local)
    with torch.no_grad(), PeakMemory() as memory:
        rule = document_causal_rule(document, config.local_window)
        positions = positions_in_document(document)
        for block in [*model.encoder, *model.decoder_self]:
            x = block(x, rule, positions=positions)
    return memory.peak


def test_chunked_local_stack_memory_grows_linearly_with_length():
    config = ModelConfig(d_local=64, n_local_heads=2, local_window=64, n_decoder_layers=2)
    chunked = [_local_stack_peak(updated(config, {"attention": "chunked"}), n) for n in (1024, 2048, 4096)]
    dense = [_local_stack_peak(updated(config, {"attention": "dense"}), n) for n in (1024, 2048, 4096)]
    for smaller, larger in zip(chunked, chunked[1:], strict=False):
        assert 1.8 < larger / smaller < 2.2, chunked
    assert dense[2] / dense[1] > 3.5, dense  # the measurement sees a quadratic term where there is one
    assert chunked[2] < dense[2] / 5


def test_chunked_whole_lst_memory_grows_linearly_with_length():
    """Pooling, global and decoder cross-attention too: at fixed patch size the whole
    forward's peak grows linearly in the tokens."""
    config = ModelConfig(d_global=64, n_global_heads=2, d_local=64, n_local_heads=2, local_window=64,
                         attention="chunked", ffn_multiple_of=16)
    peaks = []
    for length in (2048, 4096):
        example = Example(np.ones(length, dtype=np.int64), np.full(length // 4, 4), "speech")
        batch = Batch.from_examples([example], PAD)
        torch.manual_seed(0)
        model = build_model(config, VOCAB).eval()
        with torch.no_grad(), PeakMemory() as memory:
            model(batch)
        peaks.append(memory.peak)
    assert 1.8 < peaks[1] / peaks[0] < 2.3, peaks
