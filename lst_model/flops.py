"""Compute accounting: global positions and FLOPs of the LST and the flat models.

Forward FLOPs are counted per row from the architecture (matmul FLOPs = 2 * m * n * k):
projections and MLPs per position, attention scores + weighted values as 4 * d per
attended (query, key) pair, the patch queries and the output head (pooling is no matmul). With
`dense=True` the pairs are every (query, key) of the padded-free row, which is what a dense
masked attention kernel executes (and what torch's FlopCounterMode reports for everything but the
attention pairs, which it does not see inside CPU masked SDPA); the default
counts only the pairs the masks allow, the work an efficient kernel would do. Training
costs about 3x the forward pass (backward = 2x forward).

The flat models (`model.FLAT_KINDS`) are costed alike, from their rows as given: a
bpe_speechllm row holds merged speech (one position per piece) and its head covers the
larger vocabulary of its token space (`vocab_size` includes the pieces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from lst_data.core.config import updated
from lst_model.config import ModelConfig
from lst_model.layers import swiglu_hidden
from lst_model.model import FLAT_KINDS, Batch
from lst_model.sequences import Example


@dataclass(frozen=True)
class Cost:
    tokens: int
    global_positions: int
    forward_flops: int  # everything, attention included
    attention_flops: int  # the (query, key) pair part: scores and weighted values

    @property
    def train_flops(self) -> int:
        return 3 * self.forward_flops

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.tokens, self.global_positions, self.forward_flops, self.attention_flops)


def _feed_forward(n: int, d: int, config: ModelConfig) -> int:
    if config.ffn == "swiglu":
        return 3 * 2 * n * d * swiglu_hidden(config, d)
    return 2 * n * d * config.mlp_ratio * d * 2


def _attention(n_q: int, d: int, n_kv: int | None = None) -> int:
    """Matmul FLOPs of an attention's projections: q/out over the queries, k/v over the keys."""
    return 2 * n_q * d * d * 2 + 2 * (n_q if n_kv is None else n_kv) * d * 2 * d


def _block(n: int, d: int, config: ModelConfig) -> int:
    """Matmul FLOPs of one self-attention block outside attention pairs."""
    return _attention(n, d) + _feed_forward(n, d, config)


def _cross(n_q: int, n_kv: int, d: int, config: ModelConfig) -> int:
    """Matmul FLOPs of one cross-attention (with its feed-forward when it has one)."""
    return _attention(n_q, d, n_kv) + (_feed_forward(n_q, d, config) if config.cross_attn_ffn else 0)


def _window_pairs(n: int, window: int | None, dense: bool) -> int:
    if dense:
        return n * n
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def _document_pairs(sizes: list[int], window: int | None, dense: bool) -> int:
    """Attended pairs of block-causal (windowed) attention over documents of these sizes."""
    if dense:
        return sum(sizes) ** 2
    return sum(_window_pairs(size, window, False) for size in sizes)


def _decoder_states(patch_index: torch.Tensor, first_patch: torch.Tensor, window: int | None) -> int:
    """Global states (the start vector included) the decoder's tokens read, summed over tokens:
    the states of the token's document before its target's patch and the start vector, the
    last `window` of them (see model.py)."""
    following = torch.cat([patch_index[1:], patch_index[-1:]])
    states = (following - first_patch).clamp(min=0) + 1
    return int(states.sum() if window is None else states.clamp(max=window).sum())


def row_cost(config: ModelConfig, vocab_size: int, patch_index: torch.Tensor, dense: bool = False,
             document: torch.Tensor | None = None) -> Cost:
    """Cost of one row, given its tokens' global positions (-1 = padding, ignored) and
    documents (None: one document)."""
    valid = patch_index >= 0
    patch_index = patch_index[valid]
    document = torch.zeros_like(patch_index) if document is None else document[valid]
    n = int(patch_index.numel())
    doc_tokens = torch.bincount(document).tolist() if n else []
    c = config
    if c.kind in FLAT_KINDS:
        attention = c.n_global_layers * 4 * c.d_global * _document_pairs(doc_tokens, None, dense)
        flops = c.n_global_layers * _block(n, c.d_global, c) + 2 * n * c.d_global * vocab_size
        return Cost(n, n, flops + attention, attention)
    m = int(patch_index.max()) + 1 if n else 0
    # documents and patches are contiguous and in order: a document's patches run from the
    # patch of its first token to the patch of its last
    doc_end = torch.tensor(doc_tokens).cumsum(0) - 1
    doc_first_patch = patch_index[doc_end - torch.tensor(doc_tokens) + 1] if n else patch_index
    doc_patches = (patch_index[doc_end] - doc_first_patch + 1).tolist() if n else []
    n_local = c.n_encoder_layers + c.n_decoder_layers
    k, local = c.cross_attn_k, c.d_local
    decoder_entries = k * (n * (m + 1) if dense else _decoder_states(patch_index, doc_first_patch[document], c.decoder_window))
    attention = 4 * local * (
        n_local * _document_pairs(doc_tokens, c.local_window, dense)
        + k * (m * n if dense else n)  # patch queries -> their tokens
        + c.n_decoder_layers * decoder_entries  # tokens -> global states' entries
    ) + 4 * c.d_global * c.n_global_layers * _document_pairs(doc_patches, None, dense)
    flops = n_local * _block(n, local, c)
    flops += 2 * m * local * k * local + _cross(m * k, n, local, c)  # patch queries, pooling cross-attention
    flops += 2 * m * k * local * c.d_global
    flops += c.n_global_layers * _block(m, c.d_global, c)
    flops += 2 * (m + 1) * c.d_global * k * local  # decoder context entries
    flops += c.n_decoder_layers * _cross(n, (m + 1) * k, local, c)
    flops += 2 * n * local * vocab_size
    return Cost(n, m, flops + attention, attention)


def batch_cost(config: ModelConfig, vocab_size: int, batch: Batch, dense: bool = False) -> Cost:
    total = Cost(0, 0, 0, 0)
    for patch_index, document in zip(batch.patch_index, batch.document, strict=True):
        total = total + row_cost(config, vocab_size, patch_index, dense, document)
    return total


@dataclass(frozen=True)
class SameDataCost:
    """One model config as the LST and as the baseline, to cost the same packed rows under both
    (the compute-control figures of a training step: `cost` rows follow `kinds_of` its kind, columns COUNTS).
    A bpe_speechllm run's rows hold pieces, which the other kinds do not read: they are costed
    for bpe_speechllm alone."""

    MODEL_KINDS: ClassVar[tuple[str, str]] = ("lst", "baseline")
    COUNTS: ClassVar[tuple[str, str, str]] = ("tokens", "global_positions", "train_flops")

    models: tuple[ModelConfig, ...]
    vocab_size: int
    pad_id: int

    @classmethod
    def kinds_of(cls, model_kind: str) -> tuple[str, ...]:
        """The kinds the rows of a `model_kind` run are costed for."""
        return cls.MODEL_KINDS if model_kind in cls.MODEL_KINDS else (model_kind,)

    @classmethod
    def of(cls, config: ModelConfig, vocab_size: int, pad_id: int) -> SameDataCost:
        return cls(tuple(updated(config, {"kind": kind}) for kind in cls.kinds_of(config.kind)), vocab_size, pad_id)

    def cost(self, sequences: Sequence[Example]) -> torch.Tensor:
        """[kinds, 3] int64: tokens, global positions and training FLOPs of `sequences` under each model."""
        costs = [batch_cost(model, self.vocab_size, Batch.from_examples(sequences, self.pad_id, model.kind in FLAT_KINDS))
                 for model in self.models]
        return torch.tensor([[c.tokens, c.global_positions, c.train_flops] for c in costs], dtype=torch.int64)
