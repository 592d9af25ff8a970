"""Generation: continue a text or speech prompt of one document with KV caches.

`generate` samples one token at a time (greedy, temperature, top-k) from the cached forward
pass of `lst_model.incremental`. Patching of generated tokens (the LST's global positions):
text tokens and markers are patches of their own; consecutive speech units are patched
statically, p = spec.data.patch_size units per patch. Which patch the *next* token falls in
decides what the current token reads (BLT's decoder patch ids), so a token is decoded
under the continuation rule (docs/generation.md): inside a speech patch of fewer than p
units, the next token is predicted as a unit of the same patch; otherwise the patch closes
(one global step) first. A non-unit sampled inside an open patch closes it there, and the
previous token is decoded again so the caches equal a full forward over the final sequence.
So U units continuing from a patch boundary take ceil(U/p) global steps (the baseline: U).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lst_data.core.errors import UserError
from lst_data.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.incremental import CachedFlat, CachedLST
from lst_model.sequences import static_patch_lengths
from lst_model.tokens import TokenSpace

MODALITIES = ("speech", "text")


@dataclass(frozen=True)
class Sampler:
    """temperature 0 = greedy (argmax); top_k 0 = no top-k cut; seed of the torch.Generator."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0:
            raise ValueError(f"temperature ({self.temperature}) and top_k ({self.top_k}) must not be negative")

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def choose(self, logits: Tensor, generator: torch.Generator, allowed: Tensor | None = None) -> int:
        """One token id from next-token logits [V] (on CPU, so draws do not depend on the device);
        `allowed` [V] bool masks the others out."""
        logits = logits.detach().float().cpu()
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        if self.temperature == 0:
            return int(torch.argmax(logits))
        scaled = logits / self.temperature
        if self.top_k:
            kth = torch.topk(scaled, min(self.top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))


@dataclass(frozen=True)
class Generation:
    tokens: np.ndarray  # prompt + generated ids (token space ids)
    new_tokens: np.ndarray  # generated ids only (a stop token, when hit, is the last one)
    patch_lengths: np.ndarray  # global positions of `tokens` (sum == len(tokens)); baseline: all 1
    global_steps: int  # global-transformer invocations (the prefill counts as one)
    stopped: bool  # a stop token ended it (else max_new_tokens did)


def model_patch_lengths(tokens: Sequence[int], space: TokenSpace, patch_size: int) -> list[int]:
    """The model's own patching of a token stream: every non-unit token is a patch; each run of
    consecutive units is cut statically into patches of `patch_size` (the last takes the rest)."""
    lengths: list[int] = []
    run = 0
    for token in tokens:
        if space.is_unit(int(token)):
            run += 1
            continue
        lengths += static_patch_lengths(run, patch_size) + [1]
        run = 0
    return lengths + static_patch_lengths(run, patch_size)


def prompt_from(space: TokenSpace, *, text_ids: Sequence[int] | None = None, units: Sequence[int] | None = None,
                then: str | None = None) -> np.ndarray:
    """`BOS <t> text` (BPE ids) or `BOS <s> units` (raw unit ids), then, when `then` names the
    other modality, its marker, so generation continues in it (`then` = the prompt's own
    modality or None: no marker, the open segment continues)."""
    if (text_ids is None) == (units is None):
        raise ValueError("give exactly one of text_ids and units")
    if then is not None and then not in MODALITIES:
        raise ValueError(f"then must be one of {MODALITIES} or None, got {then!r}")
    modality = "text" if text_ids is not None else "speech"
    if modality == "text":
        body, marker = space.text_to_ids(text_ids), space.text_start
    else:
        body, marker = space.units_to_ids(units), space.speech_start
    tail = [] if then in (None, modality) else [space.speech_start if then == "speech" else space.text_start]
    return np.concatenate([[space.bos, marker], body, tail]).astype(np.int64)


class PromptError(UserError, ValueError):
    """A prompt cut that the utterance cannot give (longer than it is)."""


def record_prompt_units(record: SampleRecord, *, seconds: float | None = None, words: int | None = None) -> np.ndarray:
    """An utterance's units as a speech prompt: all of them, its first `seconds`, or the frames
    of its first `words` words (a word takes the silence after it, as in interleaving)."""
    if seconds is not None and words is not None:
        raise ValueError("give at most one of seconds and words")
    n_frames = record.n_frames
    if seconds is not None:
        n_frames = round(seconds * record.frame_rate)
        if not 0 < n_frames <= record.n_frames:
            raise PromptError(f"--prompt-seconds {seconds}: sample {record.id} has {record.n_frames / record.frame_rate:.2f} s "
                              f"({record.n_frames} frames); a prompt needs 1 frame up to all of them")
    elif words is not None:
        if not 0 < words <= len(record.words):
            raise PromptError(f"--prompt-words {words}: sample {record.id} has {len(record.words)} words")
        n_frames = record.words[words].start_frame if words < len(record.words) else record.n_frames
    return np.asarray(record.units[:n_frames], dtype=np.int64)


class Decoding:
    """One document decoded incrementally: its tokens, their patches, the next-token `logits`.

    `accept(token)` places a token by the continuation rule; the cached forward runs lazily
    when the next logits are asked for, so the last accepted token costs nothing."""

    def __init__(self, model: nn.Module, spec: RunSpec, space: TokenSpace, prompt_tokens: Sequence[int],
                 prompt_patch_lengths: Sequence[int] | None = None):
        tokens = [int(t) for t in prompt_tokens]
        if not tokens or min(tokens) < 0 or max(tokens) >= space.size:
            raise ValueError(f"the prompt needs at least one token, each in [0, {space.size})")
        self.space = space
        self.flat = spec.model.kind == "baseline"
        self.patch_size = spec.data.patch_size
        if self.flat:
            lengths, last_open = [1] * len(tokens), False
        elif prompt_patch_lengths is not None:  # given (e.g. aligned) patches: the prompt's last one is complete
            lengths, last_open = [int(n) for n in prompt_patch_lengths], False
            if sum(lengths) != len(tokens) or min(lengths) <= 0:
                raise ValueError("prompt_patch_lengths must be positive and sum to the prompt's length")
        else:
            lengths = model_patch_lengths(tokens, space, self.patch_size)
            last_open = space.is_unit(tokens[-1]) and lengths[-1] < self.patch_size
        self.tokens, self.patch_lengths, self.last_patch_open = tokens, lengths, last_open
        model.eval()
        self._runner = CachedFlat(model) if self.flat else CachedLST(model)
        self._pending: tuple | None = ("prefill", tokens, list(lengths), last_open)
        self._logits: Tensor | None = None

    @property
    def global_steps(self) -> int:
        return self._runner.global_steps

    @property
    def logits(self) -> Tensor:
        """float32 logits [V] of the token after `tokens`."""
        self._run_pending()
        return self._logits

    def accept(self, token: int) -> None:
        """Append a token: a unit joins the open speech patch, anything else starts a patch."""
        self._run_pending()
        token = int(token)
        unit = self.space.is_unit(token)
        joins = self.last_patch_open and unit
        if joins:
            self.patch_lengths[-1] += 1
        else:
            self.patch_lengths.append(1)
        self.last_patch_open = not self.flat and unit and self.patch_lengths[-1] < self.patch_size
        self.tokens.append(token)
        self._pending = ("step", token, joins, self.last_patch_open)

    @torch.no_grad()
    def _run_pending(self) -> None:
        if self._pending is None:
            return
        kind, *args = self._pending
        self._logits = (self._runner.prefill if kind == "prefill" else self._runner.step)(*args)
        self._pending = None


def allowed_mask(space: TokenSpace, allowed: Iterable[int] | None) -> Tensor | None:
    """[V] bool of the ids the sampler may emit (None: every id)."""
    if allowed is None:
        return None
    ids = torch.as_tensor(sorted({int(t) for t in allowed}), dtype=torch.long)
    if not len(ids) or ids.min() < 0 or ids.max() >= space.size:
        raise ValueError(f"allowed must name at least one token id, each in [0, {space.size})")
    return torch.zeros(space.size, dtype=torch.bool).index_fill(0, ids, True)


def generate(
    model: nn.Module,
    spec: RunSpec,
    space: TokenSpace,
    prompt_tokens: Sequence[int],
    prompt_patch_lengths: Sequence[int] | None = None,
    *,
    max_new_tokens: int,
    sampler: Sampler = Sampler(),
    allowed: Iterable[int] | None = None,
    stop_tokens: Iterable[int] | None = None,
    device: str | torch.device = "cpu",
) -> Generation:
    """Continue `prompt_tokens` (token space ids, e.g. from `prompt_from`) by up to
    `max_new_tokens` tokens, stopping after a stop token (default: EOS).

    `prompt_patch_lengths` None: the model's own patching (`model_patch_lengths`), and a
    prompt ending inside a speech patch continues it; given (e.g. aligned patches): used for
    the prompt, whose last patch is then complete. `allowed`: the only ids the sampler may
    emit (e.g. units + EOS for TTS). `device`: where the model lives (it is moved there)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must not be negative, got {max_new_tokens}")
    model.to(device)
    decoding = Decoding(model, spec, space, prompt_tokens, prompt_patch_lengths)
    mask = allowed_mask(space, allowed)
    stops = {int(t) for t in (stop_tokens if stop_tokens is not None else (space.eos,))}
    generator = sampler.generator()
    new_tokens: list[int] = []
    stopped = False
    while len(new_tokens) < max_new_tokens and not stopped:
        token = sampler.choose(decoding.logits, generator, mask)
        decoding.accept(token)
        new_tokens.append(token)
        stopped = token in stops
    return Generation(np.array(decoding.tokens, dtype=np.int64), np.array(new_tokens, dtype=np.int64),
                      np.array(decoding.patch_lengths, dtype=np.int64), decoding.global_steps, stopped)
