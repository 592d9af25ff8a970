"""The Latent Speech-Text Transformer (BLT-style) and the flat baselines.

LST forward pass over a packed sequence of N tokens grouped into M global positions:

1. patch encoder: token embeddings -> windowed causal self-attention layer(s); each patch's
   pooled token states (max, BLT; or mean) make `cross_attn_k` queries that cross-attend to
   the patch's own tokens; the k results, side by side, are projected to the global width;
2. global transformer: causal self-attention over the M patch vectors, RoPE (theta 5e5);
3. patch decoder: token states (from the encoder) cross-attend, in every layer, to the
   decoder context: a learned start vector and the global outputs of the patches before
   *its target's* patch (BLT's `decoder_patch_ids_from_lengths`), each projected to k
   entries. Token i, which predicts token i + 1 in patch P(i+1), may read g_0 .. g_{P(i+1)-1}
   of its document: the last token of patch j reads g_j (which holds nothing later than
   that token), tokens inside patch j never see g_j (it already contains their targets),
   and a row's last token, which has no target, uses its own patch. `decoder_window` keeps
   the last states of that list (BLT: 1, the decoder patch only; the start vector counts as
   the state before a document's first patch). Then windowed causal self-attention;
4. one head over the whole token space; token i predicts token i + 1.

Layers (norms, feed-forward, initialisation, cross-attention with or without its own
feed-forward) follow BLT by default: lst_model.layers. Every attention is a `MaskRule`
executed by the configured backend: lst_model.attention.

Packed rows hold several documents (examples): every attention (local windowed, patch
pooling, global, decoder cross-attention) is block-causal per document, and RoPE positions
restart at each document, so a document's logits do not depend on what was packed before it.

Text tokens and markers are patches of length 1, so they follow the same path.
The flat baselines are plain causal transformers over the same token stream (units, or
units merged into BPE pieces), with the same document masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lst_model.attention import MaskRule, document_causal_rule
from lst_model.config import FLAT_KINDS, ModelConfig
from lst_model.layers import (
    LAYER_TYPES,
    Attention,
    Block,
    CrossAttention,
    KVCache,
    count_parameters,
    initialize,
    make_cross_attention,
    make_norm,
)
from lst_model.pretrained import PretrainedConfig, PretrainedMixin, checked_folder, read_config, with_weights

__all__ = ["FLAT_KINDS", "LAYER_TYPES", "Attention", "Block", "CrossAttention", "KVCache", "count_parameters"]  # the layers' home is lst_model.layers


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


def document_causal_mask(document: Tensor, window: int | None = None) -> Tensor:
    """[B, 1, T, T] bool from document ids [B, T]: the dense form of `document_causal_rule`."""
    return document_causal_rule(document, window).dense(document.device)


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


def document_first_patch(batch: Batch) -> Tensor:
    """[B, N] first patch of each token's document (-1 on padding)."""
    index = torch.arange(batch.tokens.shape[1], device=batch.tokens.device)
    first_token = index - positions_in_document(batch.document)
    return batch.patch_index.gather(1, first_token)


def pooling_rule(patch_index: Tensor, n_patches: int, queries_per_patch: int) -> MaskRule:
    """Patch queries (k per patch, patch-major) attend the tokens of their own patch; the
    queries of an empty (padding) patch attend every token, their result unused."""
    rows = patch_index.shape[0]
    counts = torch.zeros(rows, n_patches + 1, dtype=torch.long, device=patch_index.device)
    counts.scatter_add_(1, torch.where(patch_index >= 0, patch_index, n_patches), torch.ones_like(patch_index))
    empty = counts[:, :n_patches] == 0

    def allowed(b: Tensor, q: Tensor, k: Tensor) -> Tensor:
        patch = q // queries_per_patch
        return (patch_index[b, k] == patch) | empty[b, patch]

    return MaskRule(allowed, rows, n_patches * queries_per_patch, patch_index.shape[1])


def decoder_rule(batch: Batch, n_patches: int, entries_per_state: int, window: int | None) -> MaskRule:
    """Decoder cross-attention: token i reads the context [start, g_f .. g_{t-1}], where t is
    its target's patch and f the first patch of its document, each state `entries_per_state`
    entries (start first); with a window, only the last `window` states of that list."""
    target = target_patch_index(batch)
    first = document_first_patch(batch)

    def allowed(b: Tensor, q: Tensor, k: Tensor) -> Tensor:
        patch = k // entries_per_state - 1  # -1: the start vector
        t, f = target[b, q], first[b, q]
        state = (patch >= f) & (patch < t)
        start = patch < 0
        if window is not None:
            state = state & (patch >= t - window)
            start = start & (t - f < window)
        return state | start

    rows, length = batch.tokens.shape
    return MaskRule(allowed, rows, length, (n_patches + 1) * entries_per_state)


def pool_tokens(x: Tensor, patch_index: Tensor, n_patches: int, how: str) -> Tensor:
    """[B, M, D] max or mean of each patch's token states x [B, N, D] (0 for empty patches)."""
    index = torch.where(patch_index >= 0, patch_index, n_patches)[..., None].expand_as(x)
    out = x.new_zeros(x.shape[0], n_patches + 1, x.shape[2])
    reduce = "amax" if how == "max" else "mean"
    return out.scatter_reduce(1, index, x, reduce=reduce, include_self=False)[:, :n_patches]


class FlatTransformer(PretrainedMixin, nn.Module):
    """Baseline: every token (text, marker or unit) is its own global position."""

    FLAT = True

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        c = config
        self.config = config
        self.embed = nn.Embedding(vocab_size, c.d_global)
        self.blocks = nn.ModuleList(Block(c, c.d_global, c.n_global_heads, rope_theta=c.rope_theta)
                                    for _ in range(c.n_global_layers))
        self.norm = make_norm(c, c.d_global)
        self.head = nn.Linear(c.d_global, vocab_size, bias=False)
        initialize(self, c.init)

    def forward(self, batch: Batch) -> Tensor:
        x = self.embed(batch.tokens)
        rule = document_causal_rule(batch.document)
        positions = positions_in_document(batch.document)
        for block in self.blocks:
            x = block(x, rule, positions=positions)
        return self.head(self.norm(x))


def as_blocks(modules: nn.ModuleList) -> list[Block]:
    """The Blocks of a ModuleList of Blocks, typed as such (torch types a ModuleList's items as Module)."""
    return cast(list[Block], list(modules))


def as_cross_attention(modules: nn.ModuleList) -> list[Block | CrossAttention]:
    return cast(list[Block | CrossAttention], list(modules))


class LatentSpeechTextTransformer(PretrainedMixin, nn.Module):
    FLAT = False

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        c = config
        self.config = config
        k, local = c.cross_attn_k, c.d_local
        self.embed = nn.Embedding(vocab_size, local)
        self.encoder = nn.ModuleList(Block(c, local, c.n_local_heads, rope_theta=c.rope_theta)
                                     for _ in range(c.n_encoder_layers))
        self.patch_queries = nn.Linear(local, k * local, bias=False)
        self.patch_cross = make_cross_attention(c, local, c.n_local_heads, local)
        self.to_global = nn.Linear(k * local, c.d_global, bias=False)
        self.global_blocks = nn.ModuleList(Block(c, c.d_global, c.n_global_heads, rope_theta=c.rope_theta)
                                           for _ in range(c.n_global_layers))
        self.global_norm = make_norm(c, c.d_global)
        self.global_start = nn.Parameter(torch.zeros(c.d_global))
        self.to_context = nn.Linear(c.d_global, k * local, bias=False)
        self.decoder_cross = nn.ModuleList(make_cross_attention(c, local, c.n_local_heads, local)
                                           for _ in range(c.n_decoder_layers))
        self.decoder_self = nn.ModuleList(Block(c, local, c.n_local_heads, rope_theta=c.rope_theta)
                                          for _ in range(c.n_decoder_layers))
        self.norm = make_norm(c, local)
        self.head = nn.Linear(local, vocab_size, bias=False)
        initialize(self, c.init)

    def forward(self, batch: Batch) -> Tensor:
        c = self.config
        document = batch.document
        n_patches = int(batch.n_patches.max())
        local_rule = document_causal_rule(document, c.local_window)
        token_positions = positions_in_document(document)

        x = self.embed(batch.tokens)
        for block in self.encoder:
            x = block(x, local_rule, positions=token_positions)

        h = self.global_inputs(x, batch.patch_index, n_patches)
        patch_document = patch_documents(batch, n_patches)
        global_rule = document_causal_rule(patch_document)
        patch_positions = positions_in_document(patch_document)
        for block in self.global_blocks:
            h = block(h, global_rule, positions=patch_positions)
        h = self.global_norm(h)

        context = self.context_entries(torch.cat([self.global_start.expand(h.shape[0], 1, -1).to(h.dtype), h], dim=1))
        cross_rule = decoder_rule(batch, n_patches, c.cross_attn_k, c.decoder_window)
        y = x
        for cross, self_block in zip(self.decoder_cross, self.decoder_self, strict=True):
            y = cross(y, cross_rule, context=context)
            y = self_block(y, local_rule, positions=token_positions)
        return self.head(self.norm(y))

    def global_inputs(self, x: Tensor, patch_index: Tensor, n_patches: int) -> Tensor:
        """[B, M, d_global] inputs of the global transformer from token states x [B, N, D]: each
        patch's pooled state makes k queries that attend the patch's tokens (BLT's
        cross_attn_k); the k results, side by side, are projected to the global width."""
        k = self.config.cross_attn_k
        rows, _, width = x.shape
        pooled = pool_tokens(x, patch_index, n_patches, self.config.patch_pooling)
        queries = self.patch_queries(pooled).view(rows, n_patches * k, width)
        patches = self.patch_cross(queries, pooling_rule(patch_index, n_patches, k), context=x)
        return self.to_global(patches.reshape(rows, n_patches, k * width))

    def context_entries(self, states: Tensor) -> Tensor:
        """[B, S * k, d_local] decoder context entries of global states [B, S, d_global]."""
        rows, count, _ = states.shape
        return self.to_context(states).view(rows, count * self.config.cross_attn_k, self.config.d_local)


def build_model(config: ModelConfig, vocab_size: int) -> nn.Module:
    if config.kind in FLAT_KINDS:
        return FlatTransformer(config, vocab_size)
    return LatentSpeechTextTransformer(config, vocab_size)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[nn.Module, PretrainedConfig]:
    """The model of an exported folder (any kind; the folder or its model.safetensors), and its
    config. Floating weights load into the model's float32 parameters unless `dtype` is given."""
    folder = checked_folder(Path(path))
    config = read_config(folder)
    model = build_model(config.spec.model, config.space.size)
    return with_weights(model, folder, config, device, dtype), config


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
