"""Compute accounting: global positions and FLOPs of the LST and the flat baseline.

Forward FLOPs are counted per row from the architecture (matmul FLOPs = 2 * m * n * k):
projections and MLPs per position, attention scores + weighted values as 4 * d per
attended (query, key) pair, the pooling of patch queries and the output head. With
`dense=True` the pairs are every (query, key) of the padded-free row, which is what a dense
masked attention kernel executes (and what torch's FlopCounterMode reports for everything but the
attention pairs, which it does not see inside CPU masked SDPA); the default
counts only the pairs the masks allow, the work an efficient kernel would do. Training
costs about 3x the forward pass (backward = 2x forward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from lst_data.core.config import updated
from lst_model.config import ModelConfig
from lst_model.model import Batch
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


def _block(n_q: int, d: int, ratio: int, n_kv: int | None = None, d_kv: int | None = None) -> int:
    """Matmul FLOPs of one block outside attention pairs: q/out, k/v projections and the MLP."""
    n_kv, d_kv = (n_q, d) if n_kv is None else (n_kv, d_kv or d)
    return 2 * n_q * d * d * 2 + 2 * n_kv * d_kv * 2 * d + 2 * n_q * d * ratio * d * 2


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


def _decoder_pairs(patch_index: torch.Tensor, first_patch: torch.Tensor) -> int:
    """(token, context) pairs the decoder cross-attention allows: the start vector plus the
    global states of the token's document before its target's patch (see model.py)."""
    following = torch.cat([patch_index[1:], patch_index[-1:]])
    return int((following - first_patch).clamp(min=0).sum()) + len(patch_index)


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
    if c.kind == "baseline":
        attention = c.n_global_layers * 4 * c.d_global * _document_pairs(doc_tokens, None, dense)
        flops = c.n_global_layers * _block(n, c.d_global, c.mlp_ratio) + 2 * n * c.d_global * vocab_size
        return Cost(n, n, flops + attention, attention)
    m = int(patch_index.max()) + 1 if n else 0
    # documents and patches are contiguous and in order: a document's patches run from the
    # patch of its first token to the patch of its last
    doc_end = torch.tensor(doc_tokens).cumsum(0) - 1
    doc_first_patch = patch_index[doc_end - torch.tensor(doc_tokens) + 1] if n else patch_index
    doc_patches = (patch_index[doc_end] - doc_first_patch + 1).tolist() if n else []
    n_local = c.n_encoder_layers + c.n_decoder_layers
    attention = 4 * c.d_local * (
        n_local * _document_pairs(doc_tokens, c.local_window, dense)
        + (m * n if dense else n)  # patch queries -> their tokens
        + c.n_decoder_layers * (n * (m + 1) if dense else _decoder_pairs(patch_index, doc_first_patch[document]))  # tokens -> global states
    ) + 4 * c.d_global * c.n_global_layers * _document_pairs(doc_patches, None, dense)
    flops = n_local * _block(n, c.d_local, c.mlp_ratio)
    flops += 2 * m * n * c.d_local if dense else 2 * n * c.d_local  # mean-pooled patch queries
    flops += _block(m, c.d_local, c.mlp_ratio, n_kv=n, d_kv=c.d_local)
    flops += 2 * m * c.d_local * c.d_global
    flops += c.n_global_layers * _block(m, c.d_global, c.mlp_ratio)
    flops += c.n_decoder_layers * _block(n, c.d_local, c.mlp_ratio, n_kv=m + 1, d_kv=c.d_global)
    flops += 2 * n * c.d_local * vocab_size
    return Cost(n, m, flops + attention, attention)


def batch_cost(config: ModelConfig, vocab_size: int, batch: Batch, dense: bool = False) -> Cost:
    total = Cost(0, 0, 0, 0)
    for patch_index, document in zip(batch.patch_index, batch.document, strict=True):
        total = total + row_cost(config, vocab_size, patch_index, dense, document)
    return total


@dataclass(frozen=True)
class SameDataCost:
    """One model config as the LST and as the baseline, to cost the same packed rows under both
    (the compute-control figures of a training step: `cost` rows follow MODEL_KINDS, columns COUNTS)."""

    MODEL_KINDS: ClassVar[tuple[str, str]] = ("lst", "baseline")
    COUNTS: ClassVar[tuple[str, str, str]] = ("tokens", "global_positions", "train_flops")

    models: tuple[ModelConfig, ...]
    vocab_size: int
    pad_id: int

    @classmethod
    def of(cls, config: ModelConfig, vocab_size: int, pad_id: int) -> SameDataCost:
        return cls(tuple(updated(config, {"kind": kind}) for kind in cls.MODEL_KINDS), vocab_size, pad_id)

    def cost(self, sequences: Sequence[Example]) -> torch.Tensor:
        """[2, 3] int64: tokens, global positions and training FLOPs of `sequences` under each model."""
        costs = [batch_cost(model, self.vocab_size, Batch.from_examples(sequences, self.pad_id, model.kind == "baseline"))
                 for model in self.models]
        return torch.tensor([[c.tokens, c.global_positions, c.train_flops] for c in costs], dtype=torch.int64)
