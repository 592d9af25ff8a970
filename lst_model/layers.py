"""Transformer layers of the LST and the flat baselines, with BLT's options.

- norm: RMSNorm (BLT, eps 1e-5) or LayerNorm;
- feed-forward: SwiGLU (BLT: hidden = 2/3 * ratio * width, rounded up to `ffn_multiple_of`,
  no biases) or a GELU MLP;
- attention: multi-head, RoPE in self-attention, masks given as `MaskRule`s executed by the
  configured backend (lst_model.attention); no biases;
- `CrossAttention`: BLT's cross-attention block, normed queries and context, attention and a
  residual, no feed-forward (`Block` with `kv_dim` is the full-block alternative);
- initialisation: BLT's (truncated normal, std fan_in^-1/2, cut at 3 std; embeddings
  width^-1/2) or N(0, 0.02).

Incremental decoding (lst_model.incremental) calls the `cached_*` methods with explicit
boolean masks over a `KVCache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lst_model.attention import MaskRule, attend
from lst_model.config import ModelConfig


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary position embedding of x [B, H, T, D] at integer positions [B, T]."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = (positions.float()[..., None] * freqs)[:, None]  # [B, 1, T, half]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-5) if config.norm == "rmsnorm" else nn.LayerNorm(dim)


def swiglu_hidden(config: ModelConfig, dim: int) -> int:
    """BLT's SwiGLU width: 2/3 of ratio * dim (the same parameters as a ratio * dim MLP),
    rounded up to a multiple of `ffn_multiple_of`."""
    multiple = config.ffn_multiple_of
    return multiple * math.ceil(int(2 * config.mlp_ratio * dim / 3) / multiple)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: int, dropout: float):
        super().__init__(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim), nn.Dropout(dropout))


def make_feed_forward(config: ModelConfig, dim: int) -> nn.Module:
    if config.ffn == "swiglu":
        return SwiGLU(dim, swiglu_hidden(config, dim), config.dropout)
    return MLP(dim, config.mlp_ratio, config.dropout)


class Attention(nn.Module):
    """Multi-head attention; self-attention with RoPE when `rope_theta` is set, else cross-attention."""

    def __init__(self, dim: int, n_heads: int, kv_dim: int | None = None, rope_theta: float | None = None,
                 dropout: float = 0.0, backend: str = "dense"):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"width {dim} is not divisible by {n_heads} heads")
        self.n_heads, self.rope_theta, self.dropout, self.backend = n_heads, rope_theta, dropout, backend
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, rule: MaskRule, context: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """`positions` [B, T]: RoPE positions of self-attention (required when rope_theta is set)."""
        k, v = self.keys_values(x if context is None else context, positions)
        q = self.queries(x, positions)
        y = attend(q, k, v, rule, self.backend, self.dropout if self.training else 0.0)
        return self.merge_heads(y)

    def keys_values(self, context: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keys (rotated at `positions` in self-attention) and values [B, H, T, D/H] of `context`;
        incremental inference caches these (`KVCache`)."""
        b, t, _ = context.shape
        k, v = (z.view(b, t, self.n_heads, -1).transpose(1, 2) for z in self.kv(context).chunk(2, dim=-1))
        return self._rotated(k, positions), v

    def queries(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        b, t, _ = x.shape
        return self._rotated(self.q(x).view(b, t, self.n_heads, -1).transpose(1, 2), positions)

    def merge_heads(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """Queries from x (at `positions` in self-attention) attend to keys k and values v as the
        boolean `mask` [B, 1, Tq, Tk] allows (the cached path)."""
        y = F.scaled_dot_product_attention(self.queries(x, positions), k, v, attn_mask=mask)
        return self.merge_heads(y)

    def _rotated(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Queries or keys [B, H, T, D/H] rotated at `positions` (self-attention with RoPE), else as they are."""
        if self.rope_theta is None:
            return x
        if positions is None:
            raise ValueError("self-attention with RoPE needs the positions of its tokens")
        return rope(x, positions, self.rope_theta)


class KVCache:
    """Keys and values [1, H, L, D/H] of one attention layer over one document, in the order they
    came, with their positions [L] (used for the causal / windowed mask of self-attention)."""

    def __init__(self) -> None:
        self._entries: tuple[Tensor, Tensor, Tensor] | None = None  # keys, values, positions

    def __len__(self) -> int:
        return 0 if self._entries is None else self._entries[0].shape[2]

    @property
    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values and positions; an error while nothing has been cached (nothing to attend to)."""
        if self._entries is None:
            raise ValueError("the KV cache is empty: extend it before attending")
        return self._entries

    def extend(self, k: Tensor, v: Tensor, positions: Tensor | None = None) -> None:
        if positions is None:
            positions = torch.arange(len(self), len(self) + k.shape[2], device=k.device)
        if self._entries is None:
            self._entries = (k, v, positions)
        else:
            old_k, old_v, old_positions = self._entries
            self._entries = (torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2),
                             torch.cat([old_positions, positions]))

    def truncate(self, length: int) -> None:
        """Forget every entry from `length` on (a token decoded again replaces its entry)."""
        if self._entries is None:
            return
        k, v, positions = self._entries
        self._entries = (k[:, :, :length], v[:, :, :length], positions[:length])

    def visible(self, positions: Tensor, window: int | None) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values and the [1, 1, T, L'] mask for queries at `positions`: causal and, with a
        window, only the keys less than `window` positions back (older ones are not even read)."""
        k, v, keys = self.entries
        if window is not None:
            first = int(torch.searchsorted(keys, positions.min() - window + 1))
            k, v, keys = k[:, :, first:], v[:, :, first:], keys[first:]
        allowed = keys[None, :] <= positions[:, None]
        if window is not None:
            allowed &= (positions[:, None] - keys[None, :]) < window
        return k, v, allowed[None, None]

    def range_mask(self, first: Tensor, end: Tensor) -> Tensor:
        """[1, 1, T, L] mask: query t reads the cached entries [first[t], end[t])."""
        index = torch.arange(len(self), device=first.device)[None, :]
        return ((index >= first[:, None]) & (index < end[:, None]))[None, None]


class Block(nn.Module):
    """Pre-norm transformer block: (self- or cross-) attention, then the feed-forward."""

    def __init__(self, config: ModelConfig, dim: int, n_heads: int, *, rope_theta: float | None = None,
                 kv_dim: int | None = None):
        super().__init__()
        self.norm_attn = make_norm(config, dim)
        self.norm_context = make_norm(config, kv_dim) if kv_dim is not None else None
        self.attn = Attention(dim, n_heads, kv_dim=kv_dim, rope_theta=rope_theta, dropout=config.dropout,
                              backend=config.attention)
        self.norm_mlp = make_norm(config, dim)
        self.mlp = make_feed_forward(config, dim)

    def forward(self, x: Tensor, rule: MaskRule, context: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        if context is not None and self.norm_context is not None:
            context = self.norm_context(context)
        return self.residual(x, self.attn(self.norm_attn(x), rule, context, positions))

    def residual(self, x: Tensor, attended: Tensor) -> Tensor:
        x = x + attended
        return x + self.mlp(self.norm_mlp(x))

    def cached_self_attention(self, x: Tensor, cache: KVCache, positions: Tensor, window: int | None = None) -> Tensor:
        """Self-attention block over new tokens x [1, T, D] at `positions` [T], after the keys in
        `cache` (which it extends): causal, and within `window` positions when given."""
        h = self.norm_attn(x)
        cache.extend(*self.attn.keys_values(h, positions[None]), positions)
        k, v, mask = cache.visible(positions, window)
        return self.residual(x, self.attn.attend(h, k, v, mask, positions[None]))

    def cached_cross_attention(self, x: Tensor, cache: KVCache, first: Tensor, end: Tensor) -> Tensor:
        """Cross-attention block: query t of x [1, T, D] reads the context entries
        [first[t], end[t]) held (normed and projected) in `cache`."""
        k, v, _ = cache.entries
        return self.residual(x, self.attn.attend(self.norm_attn(x), k, v, cache.range_mask(first, end)))

    def extend_context(self, cache: KVCache, context: Tensor) -> None:
        """Append context entries [1, T, kv_dim] to a cross-attention cache."""
        if self.norm_context is None:
            raise ValueError("extend_context needs a cross-attention block (one made with kv_dim)")
        cache.extend(*self.attn.keys_values(self.norm_context(context)))


class CrossAttention(nn.Module):
    """BLT's cross-attention block: x + attention(norm(x) -> norm(context)), no feed-forward."""

    def __init__(self, config: ModelConfig, dim: int, n_heads: int, kv_dim: int):
        super().__init__()
        self.norm_attn = make_norm(config, dim)
        self.norm_context = make_norm(config, kv_dim)
        self.attn = Attention(dim, n_heads, kv_dim=kv_dim, dropout=config.dropout, backend=config.attention)

    def forward(self, x: Tensor, rule: MaskRule, context: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        if context is None:
            raise ValueError("cross-attention needs a context")
        return x + self.attn(self.norm_attn(x), rule, self.norm_context(context))

    def cached_cross_attention(self, x: Tensor, cache: KVCache, first: Tensor, end: Tensor) -> Tensor:
        k, v, _ = cache.entries
        return x + self.attn.attend(self.norm_attn(x), k, v, cache.range_mask(first, end))

    def extend_context(self, cache: KVCache, context: Tensor) -> None:
        cache.extend(*self.attn.keys_values(self.norm_context(context)))


def make_cross_attention(config: ModelConfig, dim: int, n_heads: int, kv_dim: int) -> Block | CrossAttention:
    """The configured cross-attention: BLT's feed-forward-free block, or a full block."""
    if config.cross_attn_ffn:
        return Block(config, dim, n_heads, kv_dim=kv_dim)
    return CrossAttention(config, dim, n_heads, kv_dim)


# The per-layer modules: FSDP shards each of them as a unit and activation checkpointing
# recomputes each of them in the backward pass.
LAYER_TYPES: tuple[type[nn.Module], ...] = (Block, CrossAttention)


def _truncated_normal(weight: Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


def initialize(model: nn.Module, scheme: str) -> None:
    """Weights of every Linear and Embedding of `model` by `scheme` ('blt' or 'normal');
    norms keep weight 1 (and bias 0), biases start at 0."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if scheme == "blt":
                _truncated_normal(module.weight, module.in_features ** -0.5)
            else:
                nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if scheme == "blt":
                _truncated_normal(module.weight, module.embedding_dim ** -0.5)
            else:
                nn.init.normal_(module.weight, std=0.02)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
