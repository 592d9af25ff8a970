"""The Latent Speech-Text Transformer (BLT-style) and the flat baseline.

LST forward pass over a packed sequence of N tokens grouped into M global positions:

1. patch encoder: token embeddings -> windowed causal self-attention layer(s); each patch's
   query starts as the mean of its tokens' states and cross-attends to its own tokens only;
2. global transformer: causal self-attention over the M patch vectors, RoPE (theta 5e5);
3. patch decoder: token states (from the encoder) cross-attend, in every layer, to a learned
   start vector and the global outputs of the patches before *its target's* patch (BLT's
   `decoder_patch_ids_from_lengths`): token i, which predicts token i + 1 in patch P(i+1),
   sees g_0 .. g_{P(i+1)-1}. So the last token of patch j reads g_j (which holds nothing
   later than that token), tokens inside patch j never see g_j (it already contains their
   targets), and a row's last token, which has no target, uses its own patch. Then windowed
   causal self-attention;
4. one head over the whole token space; token i predicts token i + 1.

Packed rows hold several documents (examples): every attention (local windowed, patch
pooling, global, decoder cross-attention) is block-causal per document, and RoPE positions
restart at each document, so a document's logits do not depend on what was packed before it.

Text tokens and markers are patches of length 1, so they follow the same path.
The baseline is a plain causal transformer over the same token stream, with the same
document masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lst_model.config import ModelConfig


@dataclass
class Batch:
    tokens: Tensor  # [B, N] token ids, PAD after each row's end
    patch_index: Tensor  # [B, N] global position of each token, -1 on padding
    n_patches: Tensor  # [B] global positions per row
    document: Tensor  # [B, N] document (packed example) of each token within its row, -1 on padding
    target: Tensor | None = None  # [B, N] bool: the token is a loss target (None: every real token)

    @classmethod
    def from_examples(cls, examples: Sequence, pad_id: int, flat: bool = False) -> Batch:
        """Right-pad examples (tokens + patch_lengths [+ document_lengths, target_mask]) into
        tensors; `flat` makes every token a patch. An example without document_lengths is one
        document; the batch has a target mask when any example has one."""
        width = max(len(ex.tokens) for ex in examples)
        tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
        patch_index = torch.full((len(examples), width), -1, dtype=torch.long)
        document = torch.full((len(examples), width), -1, dtype=torch.long)
        n_patches = torch.zeros(len(examples), dtype=torch.long)
        masks = [getattr(ex, "target_mask", None) for ex in examples]
        target = torch.zeros((len(examples), width), dtype=torch.bool) if any(m is not None for m in masks) else None
        for row, ex in enumerate(examples):
            n = len(ex.tokens)
            tokens[row, :n] = torch.as_tensor(ex.tokens)
            if target is not None:
                target[row, :n] = True if masks[row] is None else torch.as_tensor(masks[row])
            doc_lengths = getattr(ex, "document_lengths", None)
            doc_lengths = torch.as_tensor([n] if doc_lengths is None else doc_lengths)
            document[row, :n] = torch.repeat_interleave(torch.arange(len(doc_lengths)), doc_lengths)
            if flat:
                patch_index[row, :n] = torch.arange(n)
                n_patches[row] = n
            else:
                lengths = torch.as_tensor(ex.patch_lengths)
                patch_index[row, :n] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
                n_patches[row] = len(lengths)
        return cls(tokens, patch_index, n_patches, document, target)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.tokens.to(device), self.patch_index.to(device), self.n_patches.to(device),
                     self.document.to(device), None if self.target is None else self.target.to(device))

    def with_tokens(self, tokens: Tensor) -> Batch:
        return Batch(tokens, self.patch_index, self.n_patches, self.document, self.target)

    @property
    def valid(self) -> Tensor:
        return self.patch_index >= 0

    @property
    def loss_targets(self) -> Tensor:
        """[B, N-1] bool: token i + 1 is a loss target (real, and in the target mask when there is one)."""
        real = self.valid[:, 1:]
        return real if self.target is None else real & self.target[:, 1:]


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary position embedding of x [B, H, T, D] at integer positions [B, T]."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = (positions.float()[..., None] * freqs)[:, None]  # [B, 1, T, half]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention; self-attention with RoPE when `rope_theta` is set, else cross-attention."""

    def __init__(self, dim: int, n_heads: int, kv_dim: int | None = None, rope_theta: float | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"width {dim} is not divisible by {n_heads} heads")
        self.n_heads, self.rope_theta, self.dropout = n_heads, rope_theta, dropout
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, mask: Tensor, context: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """`positions` [B, T]: RoPE positions of self-attention (required when rope_theta is set)."""
        k, v = self.keys_values(x if context is None else context, positions)
        return self.attend(x, k, v, mask, positions)

    def keys_values(self, context: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keys (rotated at `positions` in self-attention) and values [B, H, T, D/H] of `context`;
        incremental inference caches these (`KVCache`)."""
        b, t, _ = context.shape
        k, v = (z.view(b, t, self.n_heads, -1).transpose(1, 2) for z in self.kv(context).chunk(2, dim=-1))
        return self._rotated(k, positions), v

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """Queries from x (at `positions` in self-attention) attend to keys k and values v."""
        b, t, d = x.shape
        q = self._rotated(self.q(x).view(b, t, self.n_heads, -1).transpose(1, 2), positions)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def _rotated(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Queries or keys [B, H, T, D/H] rotated at `positions` (self-attention with RoPE), else as they are."""
        if self.rope_theta is None:
            return x
        if positions is None:
            raise ValueError("self-attention with RoPE needs the positions of its tokens")
        return rope(x, positions, self.rope_theta)


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: int, dropout: float):
        super().__init__(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim), nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm transformer block: (self- or cross-) attention, then MLP."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, dropout: float, *, rope_theta: float | None = None, kv_dim: int | None = None):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(kv_dim) if kv_dim is not None else None
        self.attn = Attention(dim, n_heads, kv_dim=kv_dim, rope_theta=rope_theta, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor, mask: Tensor, context: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        if context is not None and self.norm_context is not None:
            context = self.norm_context(context)
        return self.residual(x, self.attn(self.norm_attn(x), mask, context, positions))

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

    def cached_cross_attention(self, x: Tensor, cache: KVCache, visible: Tensor) -> Tensor:
        """Cross-attention block: query t of x [1, T, D] reads the first visible[t] entries of the
        context held (normed and projected) in `cache`."""
        mask = torch.arange(len(cache), device=x.device)[None, :] < visible[:, None]
        k, v, _ = cache.entries
        return self.residual(x, self.attn.attend(self.norm_attn(x), k, v, mask[None, None]))

    def extend_context(self, cache: KVCache, context: Tensor) -> None:
        """Append context entries [1, T, kv_dim] to a cross-attention cache."""
        if self.norm_context is None:
            raise ValueError("extend_context needs a cross-attention block (one made with kv_dim)")
        cache.extend(*self.attn.keys_values(self.norm_context(context)))


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


def document_causal_mask(document: Tensor, window: int | None = None) -> Tensor:
    """[B, 1, T, T] bool from document ids [B, T]: query i may attend key j when both lie in
    one document, j <= i (and i - j < window). Padding (-1) forms its own document, so no
    query row is empty."""
    i = torch.arange(document.shape[1], device=document.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= (i[:, None] - i[None, :]) < window
    return (allowed[None] & (document[:, :, None] == document[:, None, :]))[:, None]


def positions_in_document(document: Tensor) -> Tensor:
    """[B, T] index of each element within its run of equal document ids (RoPE restarts per document)."""
    index = torch.arange(document.shape[1], device=document.device).expand_as(document)
    starts = torch.ones_like(document, dtype=torch.bool)
    starts[:, 1:] = document[:, 1:] != document[:, :-1]
    return index - torch.cummax(torch.where(starts, index, 0), dim=1).values


def patch_documents(batch: Batch, n_patches: int) -> Tensor:
    """[B, M] document of each global position (-1 for a row's padding positions)."""
    rows = batch.tokens.shape[0]
    out = torch.full((rows, n_patches + 1), -1, dtype=torch.long, device=batch.tokens.device)
    index = torch.where(batch.valid, batch.patch_index, n_patches)  # padding tokens go to a spare column
    return out.scatter(1, index, batch.document)[:, :n_patches]


def target_patch_index(batch: Batch) -> Tensor:
    """[B, N] patch of each token's target (the next token); a row's last token, which has
    no target, keeps its own patch. BLT's decoder patch ids."""
    following = torch.cat([batch.patch_index[:, 1:], torch.full_like(batch.patch_index[:, :1], -1)], dim=1)
    return torch.where(following >= 0, following, batch.patch_index)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class FlatTransformer(nn.Module):
    """Baseline: every token (text, marker or unit) is its own global position."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        c = config
        self.config = config
        self.embed = nn.Embedding(vocab_size, c.d_global)
        self.blocks = nn.ModuleList(
            Block(c.d_global, c.n_global_heads, c.mlp_ratio, c.dropout, rope_theta=c.rope_theta) for _ in range(c.n_global_layers)
        )
        self.norm = nn.LayerNorm(c.d_global)
        self.head = nn.Linear(c.d_global, vocab_size, bias=False)
        self.apply(_init_weights)

    def forward(self, batch: Batch) -> Tensor:
        x = self.embed(batch.tokens)
        mask = document_causal_mask(batch.document)
        positions = positions_in_document(batch.document)
        for block in self.blocks:
            x = block(x, mask, positions=positions)
        return self.head(self.norm(x))


def as_blocks(modules: nn.ModuleList) -> list[Block]:
    """The Blocks of a ModuleList of Blocks, typed as such (torch types a ModuleList's items as Module)."""
    return cast(list[Block], list(modules))


def _local_block(c: ModelConfig, *, rope_theta: float | None = None, kv_dim: int | None = None) -> Block:
    """A block of the LST's patch encoder or decoder (local width and heads)."""
    return Block(c.d_local, c.n_local_heads, c.mlp_ratio, c.dropout, rope_theta=rope_theta, kv_dim=kv_dim)


class LatentSpeechTextTransformer(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        c = config
        self.config = config
        self.embed = nn.Embedding(vocab_size, c.d_local)
        self.encoder = nn.ModuleList(_local_block(c, rope_theta=c.rope_theta) for _ in range(c.n_encoder_layers))
        self.patch_cross = _local_block(c, kv_dim=c.d_local)
        self.to_global = nn.Linear(c.d_local, c.d_global)
        self.global_blocks = nn.ModuleList(
            Block(c.d_global, c.n_global_heads, c.mlp_ratio, c.dropout, rope_theta=c.rope_theta) for _ in range(c.n_global_layers)
        )
        self.global_norm = nn.LayerNorm(c.d_global)
        self.global_start = nn.Parameter(torch.zeros(c.d_global))
        self.decoder_cross = nn.ModuleList(_local_block(c, kv_dim=c.d_global) for _ in range(c.n_decoder_layers))
        self.decoder_self = nn.ModuleList(_local_block(c, rope_theta=c.rope_theta) for _ in range(c.n_decoder_layers))
        self.norm = nn.LayerNorm(c.d_local)
        self.head = nn.Linear(c.d_local, vocab_size, bias=False)
        self.apply(_init_weights)

    def forward(self, batch: Batch) -> Tensor:
        tokens, patch_index, document = batch.tokens, batch.patch_index, batch.document
        n_patches = int(batch.n_patches.max())
        device = tokens.device
        local_mask = document_causal_mask(document, self.config.local_window)
        token_positions = positions_in_document(document)

        x = self.embed(tokens)
        for block in self.encoder:
            x = block(x, local_mask, positions=token_positions)

        membership = patch_index[:, None, :] == torch.arange(n_patches, device=device)[None, :, None]  # [B, M, N]
        patches = self.pool_patches(x, membership)

        patch_document = patch_documents(batch, n_patches)
        h = self.to_global(patches)
        global_mask = document_causal_mask(patch_document)
        patch_positions = positions_in_document(patch_document)
        for block in self.global_blocks:
            h = block(h, global_mask, positions=patch_positions)
        h = self.global_norm(h)

        # Token i sees [start, g_k for k < P(i+1) in its own document]; context index 0 is the start.
        context = torch.cat([self.global_start.expand(h.shape[0], 1, -1).to(h.dtype), h], dim=1)
        before_target = torch.arange(n_patches, device=device)[None, None, :] < target_patch_index(batch)[:, :, None]
        same_document = patch_document[:, None, :] == document[:, :, None]
        start = torch.ones_like(before_target[:, :, :1])
        visible = torch.cat([start, before_target & same_document], dim=2)  # [B, N, M + 1]
        y = x
        for cross, self_block in zip(self.decoder_cross, self.decoder_self, strict=True):
            y = cross(y, visible[:, None], context=context)
            y = self_block(y, local_mask, positions=token_positions)
        return self.head(self.norm(y))

    def pool_patches(self, x: Tensor, membership: Tensor) -> Tensor:
        """Patch vectors [B, M, D] from token states x [B, N, D] and membership [B, M, N]: patch j's
        query is the mean of its tokens' states and attends to those tokens only."""
        counts = membership.sum(-1, keepdim=True)
        queries = (membership.to(x.dtype) @ x) / counts.clamp(min=1).to(x.dtype)
        membership = membership | (counts == 0)  # padding patches: any key, result unused
        return self.patch_cross(queries, membership[:, None], context=x)


def build_model(config: ModelConfig, vocab_size: int) -> nn.Module:
    if config.kind == "baseline":
        return FlatTransformer(config, vocab_size)
    return LatentSpeechTextTransformer(config, vocab_size)


def token_log_probs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token[i+1] | tokens[..i]) for every i: [B, N-1] (float32)."""
    return torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def summed_next_token_loss(logits: Tensor, batch: Batch) -> Tensor:
    """Next-token cross-entropy summed over the loss targets (`Batch.loss_targets`; the caller
    divides by the step's target count, so micro-batches and ranks add up to the mean over
    the whole step)."""
    targets = batch.tokens[:, 1:].masked_fill(~batch.loss_targets, -100)
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
