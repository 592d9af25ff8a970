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

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lst_data.core.errors import UserError
from lst_data.format.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.errors import OptionError
from lst_model.incremental import cached_runner
from lst_model.sequences import static_patch_lengths
from lst_model.text_corpus import normalize_like_transcripts
from lst_model.tokens import TokenSpace, check_same_space
from lst_model.unit_bpe import refuse_generation

if TYPE_CHECKING:
    from lst_data.tokenize.tokenizer import Tokenizer

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


def prompt_from(space: TokenSpace, *, text_ids: Sequence[int] | np.ndarray | None = None,
                units: Sequence[int] | np.ndarray | None = None, then: str | None = None) -> np.ndarray:
    """`BOS <t> text` (BPE ids) or `BOS <s> units` (raw unit ids), then, when `then` names the
    other modality, its marker, so generation continues in it (`then` = the prompt's own
    modality or None: no marker, the open segment continues)."""
    if then is not None and then not in MODALITIES:
        raise ValueError(f"then must be one of {MODALITIES} or None, got {then!r}")
    if text_ids is not None and units is None:
        modality, body, marker = "text", space.text_to_ids(text_ids), space.text_start
    elif units is not None and text_ids is None:
        modality, body, marker = "speech", space.units_to_ids(units), space.speech_start
    else:
        raise ValueError("give exactly one of text_ids and units")
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

    def __init__(self, model: nn.Module, spec: RunSpec, space: TokenSpace, prompt_tokens: Sequence[int] | np.ndarray,
                 prompt_patch_lengths: Sequence[int] | np.ndarray | None = None):
        tokens = [int(t) for t in prompt_tokens]
        if not tokens or min(tokens) < 0 or max(tokens) >= space.size:
            raise ValueError(f"the prompt needs at least one token, each in [0, {space.size})")
        refuse_generation(spec)
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
        self._runner = cached_runner(model, self.flat)
        # the next-token logits, or the cached forward step that computes them (run when asked for)
        self._logits: Tensor | partial[Tensor] = partial(self._runner.prefill, tokens, list(lengths), last_open)

    @property
    def global_steps(self) -> int:
        return self._runner.global_steps

    @property
    def logits(self) -> Tensor:
        """float32 logits [V] of the token after `tokens`."""
        return self._run_pending()

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
        self._logits = partial(self._runner.step, token, joins, self.last_patch_open)

    @torch.no_grad()
    def _run_pending(self) -> Tensor:
        if isinstance(self._logits, partial):
            self._logits = self._logits()
        return self._logits


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
    prompt_tokens: Sequence[int] | np.ndarray,
    prompt_patch_lengths: Sequence[int] | np.ndarray | None = None,
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


def text_prompt(space: TokenSpace, text: str, tokenizer: Tokenizer, dataset: dict[str, Any], then: str | None = None) -> np.ndarray:
    """A text prompt (`prompt_from`): `text` normalized as the shards' transcripts were (their
    dataset.json's ingest settings) and encoded with their tokenizer."""
    ids = tokenizer.encode(normalize_like_transcripts(text, dataset))
    if not ids:
        raise OptionError("--text: nothing is left of it after normalization")
    return prompt_from(space, text_ids=ids, then=then)


def sample_prompt(space: TokenSpace, shard_dir: str | Path, sample_id: str, *, seconds: float | None = None,
                  words: int | None = None, then: str | None = None) -> np.ndarray:
    """A speech prompt (`prompt_from`): the units of shard utterance `sample_id`, all of them or
    its first `seconds` or `words` (`record_prompt_units`)."""
    from lst_data.format.reader import iter_records

    record = next((r for r in iter_records(shard_dir, with_audio=False) if r.id == sample_id), None)
    if record is None:
        raise OptionError(f"--sample {sample_id}: no utterance with that id in {shard_dir}")
    return prompt_from(space, units=record_prompt_units(record, seconds=seconds, words=words), then=then)


@dataclass(frozen=True)
class GenerationReport:
    """A generation as `lst-model generate` reports it: with the prompt's length, the generated
    units (raw unit ids) and text (decoded when a tokenizer is at hand), and the speed."""

    model_kind: str
    prompt_tokens: int
    generation: Generation
    units: list[int]
    text_ids: list[int]
    text: str | None
    tokens_per_second: float

    @classmethod
    def of(cls, model_kind: str, prompt_tokens: int, generation: Generation, space: TokenSpace,
           tokenizer: Tokenizer | None, seconds: float) -> GenerationReport:
        new = generation.new_tokens.tolist()
        text_ids = [t for t in new if t < space.text_vocab_size]
        return cls(model_kind, prompt_tokens, generation, [t - space.unit_offset for t in new if space.is_unit(t)],
                   text_ids, tokenizer.decode(text_ids) if tokenizer is not None else None, len(new) / seconds)

    def to_json(self) -> dict[str, Any]:
        g = self.generation
        return {
            "model": self.model_kind, "prompt_tokens": self.prompt_tokens, "tokens": g.tokens.tolist(),
            "new_tokens": g.new_tokens.tolist(), "patch_lengths": g.patch_lengths.tolist(), "units": self.units,
            "text": self.text, "global_steps": g.global_steps, "stopped": g.stopped,
            "tokens_per_second": round(self.tokens_per_second, 1),
        }

    def headline(self) -> str:
        """One line: how much was generated, in how many global steps, how fast, and why it ended."""
        g = self.generation
        end = "stopped at a stop token" if g.stopped else "reached --max-new-tokens"
        return (f"{self.model_kind}: {len(g.new_tokens)} new tokens ({len(self.units)} units, {len(self.text_ids)} text) in "
                f"{g.global_steps} global steps, {self.tokens_per_second:.0f} tokens/s; {end}")


def _prompt_tokenizer(tokenizer_path: Path | None, shard_dir: Path | None, text_prompt_given: bool) -> Path | None:
    """The shards' tokenizer: the one given, else the one beside `shard_dir`; a text prompt needs one."""
    from lst_model.text_corpus import find_tokenizer

    tokenizer_path = tokenizer_path or (find_tokenizer(shard_dir) if shard_dir is not None else None)
    if text_prompt_given and tokenizer_path is None:
        where = f"none found near {shard_dir}" if shard_dir is not None else "give --tokenizer, or --shards to find it"
        raise OptionError(f"--text needs the shards' tokenizer: {where}")
    return tokenizer_path


def generate_from_checkpoint(
    checkpoint: Path,
    *,
    text: str | None = None,
    sample_id: str | None = None,
    prompt_seconds: float | None = None,
    prompt_words: int | None = None,
    shard_dir: Path | None = None,
    tokenizer_path: Path | None = None,
    continue_in: str = "same",
    max_new_tokens: int = 200,
    sampler: Sampler = Sampler(),
    device: str = "cpu",
    allow_other_token_space: bool = False,
    out_path: Path | None = None,
) -> GenerationReport:
    """`lst-model generate`: continue a text prompt (encoded with the shards' tokenizer, given or
    found beside `shard_dir`) or the units of shard utterance `sample_id`, in the prompt's own
    modality (`continue_in` 'same') or in 'speech' or 'text'. `out_path`: write the report as JSON."""
    from lst_data.tokenize import load_tokenizer
    from lst_model.data import load_token_space, read_dataset_json
    from lst_model.train import load_model

    tokenizer_path = _prompt_tokenizer(tokenizer_path, shard_dir, text is not None)
    model, spec, space = load_model(checkpoint, device)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    if tokenizer is not None and tokenizer.vocab_size != space.text_vocab_size:
        raise OptionError(f"--tokenizer {tokenizer_path}: vocabulary {tokenizer.vocab_size} != the model's {space.text_vocab_size}")
    dataset: dict[str, Any] = {}
    if shard_dir is not None:
        dataset = read_dataset_json(shard_dir)
        check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_token_space)
    then = None if continue_in == "same" else continue_in
    if text is not None and tokenizer is not None:
        prompt = text_prompt(space, text, tokenizer, dataset, then)
    elif sample_id is not None and shard_dir is not None:
        prompt = sample_prompt(space, shard_dir, sample_id, seconds=prompt_seconds, words=prompt_words, then=then)
    else:
        raise ValueError("give a text prompt, or a sample id and the shards that hold it")
    started = time.perf_counter()
    result = generate(model, spec, space, prompt, max_new_tokens=max_new_tokens, sampler=sampler, device=device)
    report = GenerationReport.of(spec.model.kind, len(prompt), result, space, tokenizer, time.perf_counter() - started)
    if out_path is not None:
        out_path.write_text(json.dumps(report.to_json()) + "\n", encoding="utf-8")
    return report
