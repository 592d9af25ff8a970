"""Attention masks as rules, and the backends that execute them.

Every attention of the LST (local windowed self-attention, patch pooling, global
self-attention, decoder cross-attention) and of the flat baselines is described once, as a
`MaskRule`: a function `allowed(b, q, k)` over broadcastable index tensors, FlexAttention's
`mask_mod` without the head argument. Three backends execute a rule and give the same
result (tests/test_attention.py):

- dense:   the rule evaluated on the whole [B, Tq, Tk] grid, a boolean mask for
           `scaled_dot_product_attention`. The reference; memory O(Tq * Tk).
- flex:    `torch.nn.attention.flex_attention` with a `BlockMask` built from the rule, so
           fully masked blocks are skipped and nothing of size Tq * Tk is stored. Compiled on
           CUDA; eager on CPU (correct, but the eager kernel materialises the scores: use it
           there for tests only).
- chunked: queries in chunks of QUERY_CHUNK, each against only the keys the rule can allow
           (a causal rule: keys up to the chunk's end; a windowed one: the last `window`
           keys before it), with the rule evaluated for that chunk only. Memory O(Tq * (chunk +
           window)) for the windowed local layers and O(chunk * Tk) for the others: linear in
           the sequence length on any device.

`auto` picks flex on CUDA and, on CPU, dense for short sequences (fewer, larger kernel
calls) and chunked beyond DENSE_MAX_QUERIES.

A rule's dense mask or block mask is built once, by the first layer that runs it, and reused
by the other layers of the forward pass (the rules are made per batch).

A rule must leave no query without a key (dense and chunked softmax an empty row into
NaN): padding forms its own document, and empty padding patches see every token.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "dense", "flex", "chunked"]
BACKENDS: tuple[str, ...] = ("auto", "dense", "flex", "chunked")
QUERY_CHUNK = 128
DENSE_MAX_QUERIES = 1024

Allowed = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MaskRule:
    """Which keys each query may attend: `allowed(b, q, k)` -> bool, for index tensors that
    broadcast against each other (batch row, query index, key index). `causal` promises
    that no key after its query is allowed and `window` that no key `window` or more
    positions before it is; the chunked backend then reads only the keys in between."""

    allowed: Allowed
    batch: int
    n_queries: int
    n_keys: int
    causal: bool = False
    window: int | None = None
    # the dense mask or block mask, built by the first layer that runs the rule and reused by the others
    built: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def dense(self, device: torch.device) -> Tensor:
        """[B, 1, Tq, Tk] boolean mask."""
        if "dense" not in self.built:
            b = torch.arange(self.batch, device=device)[:, None, None]
            q = torch.arange(self.n_queries, device=device)[None, :, None]
            k = torch.arange(self.n_keys, device=device)[None, None, :]
            self.built["dense"] = self.allowed(b, q, k).expand(self.batch, self.n_queries, self.n_keys)[:, None]
        return cast(Tensor, self.built["dense"])

    def key_range(self, first_query: int, end_query: int) -> tuple[int, int]:
        """The keys [start, end) that queries [first_query, end_query) may read."""
        end = min(self.n_keys, end_query) if self.causal else self.n_keys
        start = max(0, first_query - self.window + 1) if self.window is not None else 0
        return start, max(end, start + 1)


def document_causal_rule(document: Tensor, window: int | None = None) -> MaskRule:
    """Self-attention over [B, T] elements with document ids: query i attends key j when both
    lie in one document, j <= i and (with a window) i - j < window. Padding (-1) is a
    document of its own."""

    def allowed(b: Tensor, q: Tensor, k: Tensor) -> Tensor:
        same = (document[b, q] == document[b, k]) & (k <= q)
        return same & (q - k < window) if window is not None else same

    rows, length = document.shape
    return MaskRule(allowed, rows, length, length, causal=True, window=window)


def resolve_backend(backend: str, device: torch.device, n_queries: int) -> str:
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "flex"
    return "dense" if n_queries <= DENSE_MAX_QUERIES else "chunked"


def attend(q: Tensor, k: Tensor, v: Tensor, rule: MaskRule, backend: str, dropout: float = 0.0) -> Tensor:
    """Attention of q [B, H, Tq, D] over k, v [B, H, Tk, D] as `rule` allows, by `backend`."""
    chosen = resolve_backend(backend, q.device, q.shape[2])
    if chosen == "flex":
        if dropout:
            raise ValueError("model.attention 'flex' does not apply attention dropout; use 'dense' or 'chunked' with model.dropout > 0")
        return _flex(q, k, v, rule)
    if chosen == "chunked":
        return _chunked(q, k, v, rule, dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=rule.dense(q.device), dropout_p=dropout)


def _chunked(q: Tensor, k: Tensor, v: Tensor, rule: MaskRule, dropout: float) -> Tensor:
    device = q.device
    b = torch.arange(rule.batch, device=device)[:, None, None]
    outputs = []
    for first in range(0, rule.n_queries, QUERY_CHUNK):
        end = min(first + QUERY_CHUNK, rule.n_queries)
        start, stop = rule.key_range(first, end)
        queries = torch.arange(first, end, device=device)[None, :, None]
        keys = torch.arange(start, stop, device=device)[None, None, :]
        mask = rule.allowed(b, queries, keys).expand(rule.batch, end - first, stop - start)[:, None]
        outputs.append(F.scaled_dot_product_attention(q[:, :, first:end], k[:, :, start:stop], v[:, :, start:stop],
                                                      attn_mask=mask, dropout_p=dropout))
    return torch.cat(outputs, dim=2)


def _flex(q: Tensor, k: Tensor, v: Tensor, rule: MaskRule) -> Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Tensor, h: Tensor, q_index: Tensor, k_index: Tensor) -> Tensor:
        return rule.allowed(b, q_index, k_index)

    if "block" not in rule.built:
        rule.built["block"] = create_block_mask(mask_mod, rule.batch, None, rule.n_queries, rule.n_keys, device=q.device)
    block_mask = rule.built["block"]
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():  # eager on CPU is the documented reference use
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return cast(Tensor, flex_attention(q, k, v, block_mask=block_mask))


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic shapes after the first new length (packed rows change width from step to step)
    return cast(Callable[..., Tensor], torch.compile(flex_attention))
