"""KV-cached (incremental) forward passes of one document, for generation.

`CachedLST` and `CachedFlat` compute, token by token, what `forward` computes over the
whole sequence, keeping per-layer keys and values instead of recomputing them:

- LST: the patch encoder's windowed self-attention (a token reads the keys of the last
  `local_window` positions; older ones are not read), the global transformer (one step per
  batch of closed patches), the decoder's cross-attention context (the start vector, then
  the global output of every closed patch, each normed and projected once per layer) and
  the decoder's windowed self-attention. A patch is pooled and passed through the global
  transformer when it closes; a token is decoded reading the global outputs of every patch
  closed at that moment, which is what `forward` gives it when its successor lies in the
  patch after the last closed one (see docs/generation.md for the rule that decides it).
- baseline: the causal transformer's self-attention, one global step per token.

Both take the same calls: `prefill(tokens, patch_lengths, last_open)` for the prompt, then
`step(token, joins, leave_open)` per accepted token; each returns the float32 next-token
logits [V]. Positions (RoPE) are token indices (local layers, baseline) and patch indices
(global transformer) in the document.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lst_model.model import (
    FlatTransformer,
    KVCache,
    LatentSpeechTextTransformer,
    as_blocks,
    as_cross_attention,
)


class CachedLST:
    def __init__(self, model: LatentSpeechTextTransformer):
        self.model = model
        self.window = model.config.local_window
        self.device = model.global_start.device
        self.encoder_caches = [KVCache() for _ in model.encoder]
        self.global_caches = [KVCache() for _ in model.global_blocks]
        self.context_caches = [KVCache() for _ in model.decoder_cross]
        self.decoder_caches = [KVCache() for _ in model.decoder_self]
        self.encoder = as_blocks(model.encoder)
        self.global_blocks = as_blocks(model.global_blocks)
        self.decoder_cross = as_cross_attention(model.decoder_cross)
        self.decoder_self = as_blocks(model.decoder_self)
        start = model.context_entries(model.global_start[None, None])
        for cross, cache in zip(self.decoder_cross, self.context_caches, strict=True):
            cross.extend_context(cache, start)
        self.encoded = torch.zeros(0, model.config.d_local, device=self.device)  # encoder outputs [N, D]
        self.closed_tokens = 0  # tokens in closed patches; the rest form the open patch
        self.n_patches = 0  # closed patches (global outputs in the decoder context)
        self.global_steps = 0

    @property
    def n_tokens(self) -> int:
        return self.encoded.shape[0]

    def prefill(self, tokens: Sequence[int], patch_lengths: Sequence[int], last_open: bool) -> Tensor:
        """The prompt: encode it, close its patches (all, or all but an open last one) in one
        global step, and decode every token as `forward` would."""
        self._encode(tokens)
        lengths = list(patch_lengths)
        self._close(lengths[:-1] if last_open else lengths)
        patch_index = torch.repeat_interleave(torch.arange(len(lengths), device=self.device),
                                              torch.as_tensor(lengths, device=self.device))
        visible = torch.cat([patch_index[1:], torch.tensor([self.n_patches], device=self.device)])
        return self._decode(0, visible)

    def step(self, token: int, joins: bool, leave_open: bool) -> Tensor:
        """One more token: it `joins` the open patch or starts a new one (an open patch not
        joined closes first, and its last token is decoded again, now reading that patch's
        global output); `leave_open` keeps the token's patch open for the next one."""
        if self.closed_tokens < self.n_tokens and not joins:
            self._close([self.n_tokens - self.closed_tokens])
            self._decode(self.n_tokens - 1, torch.tensor([self.n_patches], device=self.device))
        self._encode([token])
        if not leave_open:
            self._close([self.n_tokens - self.closed_tokens])
        return self._decode(self.n_tokens - 1, torch.tensor([self.n_patches], device=self.device))

    def _encode(self, tokens: Sequence[int]) -> None:
        positions = torch.arange(self.n_tokens, self.n_tokens + len(tokens), device=self.device)
        x = self.model.embed(torch.as_tensor(tokens, device=self.device))[None]
        for block, cache in zip(self.encoder, self.encoder_caches, strict=True):
            x = block.cached_self_attention(x, cache, positions, self.window)
        self.encoded = torch.cat([self.encoded, x[0]])

    def _close(self, lengths: Sequence[int]) -> None:
        """Pool the next patches (`lengths` tokens each, from the first unclosed token), run them
        through the global transformer (one step) and add their outputs to the decoder context."""
        if not lengths:
            return
        m = self.model
        x = self.encoded[self.closed_tokens : self.closed_tokens + sum(lengths)][None]
        patch_of = torch.repeat_interleave(torch.arange(len(lengths), device=self.device),
                                           torch.as_tensor(lengths, device=self.device))
        h = m.global_inputs(x, patch_of[None], len(lengths))
        positions = torch.arange(self.n_patches, self.n_patches + len(lengths), device=self.device)
        for block, cache in zip(self.global_blocks, self.global_caches, strict=True):
            h = block.cached_self_attention(h, cache, positions)
        context = m.context_entries(m.global_norm(h))
        for cross, cache in zip(self.decoder_cross, self.context_caches, strict=True):
            cross.extend_context(cache, context)
        self.closed_tokens += sum(lengths)
        self.n_patches += len(lengths)
        self.global_steps += 1

    def _decode(self, first: int, visible: Tensor) -> Tensor:
        """Decoder states of tokens first.. (replacing any cached ones), token t reading the
        context as `forward` gives it when visible[t] patches precede its target's patch: the
        start vector and those patches' global outputs, the last `decoder_window` of them;
        logits of the last token."""
        m = self.model
        for cache in self.decoder_caches:
            cache.truncate(first)
        positions = torch.arange(first, self.n_tokens, device=self.device)
        k, window = m.config.cross_attn_k, m.config.decoder_window
        first_state = torch.zeros_like(visible) if window is None else (visible + 1 - window).clamp(min=0)
        y = self.encoded[first:][None]
        layers = zip(self.decoder_cross, self.decoder_self, self.context_caches, self.decoder_caches, strict=True)
        for cross, self_block, context_cache, decoder_cache in layers:
            y = cross.cached_cross_attention(y, context_cache, first_state * k, (visible + 1) * k)
            y = self_block.cached_self_attention(y, decoder_cache, positions, self.window)
        return m.head(m.norm(y[0, -1])).float()


class CachedFlat:
    """The baseline: every token its own global position (patch arguments are ignored)."""

    def __init__(self, model: FlatTransformer):
        self.model = model
        self.device = model.head.weight.device
        self.blocks = as_blocks(model.blocks)
        self.caches = [KVCache() for _ in self.blocks]
        self.n_tokens = 0
        self.global_steps = 0

    def prefill(self, tokens: Sequence[int], patch_lengths: Sequence[int] = (), last_open: bool = False) -> Tensor:
        return self._extend(tokens)

    def step(self, token: int, joins: bool = False, leave_open: bool = False) -> Tensor:
        return self._extend([token])

    def _extend(self, tokens: Sequence[int]) -> Tensor:
        positions = torch.arange(self.n_tokens, self.n_tokens + len(tokens), device=self.device)
        x = self.model.embed(torch.as_tensor(tokens, device=self.device))[None]
        for block, cache in zip(self.blocks, self.caches, strict=True):
            x = block.cached_self_attention(x, cache, positions)
        self.n_tokens += len(tokens)
        self.global_steps += 1
        return self.model.head(self.model.norm(x[0, -1])).float()


def cached_runner(model: nn.Module, flat: bool) -> CachedLST | CachedFlat:
    """The cached forward pass of `model`: the baseline's when `flat`, else the LST's."""
    if flat and isinstance(model, FlatTransformer):
        return CachedFlat(model)
    if not flat and isinstance(model, LatentSpeechTextTransformer):
        return CachedLST(model)
    raise ValueError(f"the run's model.kind is {'baseline' if flat else 'lst'}, but the model is a {type(model).__name__}")
