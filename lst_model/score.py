"""Multiple-choice scoring by log-likelihood of each ending given the prompt.

Items are `lst_model.items.ChoiceItem`s of any modality pair. Each ending is scored as the
sum of log p(token | everything before it) over the ending's tokens only, and per token
(the sum / its length, which does not favour short endings); the prediction is the ending
with the highest score. The scored sequences:

    s2s  BOS <s> prompt-units ending-units
    t2t  BOS <t> prompt-bpe ending-bpe
    s2t  BOS <s> prompt-units <t> ending-bpe
    t2s  BOS <t> prompt-bpe <s> ending-units

(the marker that switches modality belongs to the prompt: it is given, not scored).

Speech is patched `static` (p = data.patch_size; in s2s prompt + ending are one stream, as
the paper evaluates, so no aligner is needed at inference) or with an aligned strategy, from
each speech side's `patches[strategy]` (s2s: the prompt's patches, then the ending's). The
flat kinds (`FLAT_KINDS`) put every token in its own position and ignore the patching.

A third score, lm-eval's `acc_norm`, divides each ending's sum by the length in characters
of its text (a speech ending: its transcript), which does not depend on how finely a
modality is tokenized; an item one of whose endings carries no text is normalized per
token instead, and counted (`acc_norm_fallback`).

`lst_model.minimal_pairs` scores prompt-less pairs through the same `side_ids` and
`sequence_log_likelihoods`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from lst_data.core.errors import UserError
from lst_model.config import RunSpec
from lst_model.data import contaminated, read_training_texts
from lst_model.items import (
    ALIGNED_STRATEGIES,
    PAIRS,
    ChoiceItem,
    InvalidItem,
    Side,
    pair_label,
)
from lst_model.model import FLAT_KINDS, Batch, token_log_probs
from lst_model.sequences import Example, static_patch_lengths
from lst_model.tokens import TokenSpace
from lst_model.unit_bpe import merged_choice_example

SCORING_PATCHINGS = ("static", *ALIGNED_STRATEGIES)
SCORING_MODES = ("multiple-choice", "minimal-pairs")


@dataclass(frozen=True)
class ItemScore:
    """The summed log-likelihood, token count and text length in characters (0: no text) of
    every ending of one item."""

    id: str
    pair: str
    label: int
    sums: list[float]
    lengths: list[int]
    chars: list[int]

    @property
    def per_token(self) -> list[float]:
        return [s / n for s, n in zip(self.sums, self.lengths, strict=True)]

    @property
    def normalized_by_chars(self) -> bool:
        """Every ending has text, so acc_norm divides by characters (else it falls back to per token)."""
        return all(n > 0 for n in self.chars)

    @property
    def per_char(self) -> list[float]:
        """acc_norm's scores: sum / characters of each ending's text (per token without text)."""
        if not self.normalized_by_chars:
            return self.per_token
        return [s / n for s, n in zip(self.sums, self.chars, strict=True)]

    @property
    def correct_sum(self) -> bool:
        return int(np.argmax(self.sums)) == self.label

    @property
    def correct_per_token(self) -> bool:
        return int(np.argmax(self.per_token)) == self.label

    @property
    def correct_norm(self) -> bool:
        return int(np.argmax(self.per_char)) == self.label

    def to_json(self) -> dict:
        return {"id": self.id, "pair": self.pair, "label": self.label, "sums": self.sums, "lengths": self.lengths,
                "chars": self.chars, "correct_sum": self.correct_sum, "correct_per_token": self.correct_per_token,
                "correct_norm": self.correct_norm}


def _aligned_patches(side: Side, owner: str, what: str, strategy: str) -> list[int]:
    if strategy not in side.patches:
        raise InvalidItem(f"{owner}: its speech {what} has no {strategy} patches; score with --patching static, "
                          "or rebuild the task from aligned audio (corpus tasks and build-task carry them)")
    return list(side.patches[strategy])


def choice_example(item: ChoiceItem, ending: Side, space: TokenSpace, patching: str, patch_size: int) -> tuple[Example, int]:
    """The scored sequence of one ending, and the index of the ending's first token."""
    prompt, owner = item.prompt, f"item {item.id}"
    parts: list[tuple[Sequence[int] | np.ndarray, Sequence[int]]] = [([space.bos, marker(prompt, space)], [1, 1])]
    if item.pair == "s2s" and patching == "static":  # one speech stream: patches run across the prompt/ending cut
        units = space.units_to_ids(np.array([*prompt.tokens, *ending.tokens], dtype=np.int64))
        parts.append((units, static_patch_lengths(len(units), patch_size)))
    else:
        parts.append(side_ids(prompt, owner, "prompt", space, patching, patch_size))
        if ending.modality != prompt.modality:
            parts.append(([marker(ending, space)], [1]))
        parts.append(side_ids(ending, owner, "ending", space, patching, patch_size))
    tokens = np.concatenate([np.asarray(t, dtype=np.int64) for t, _ in parts])
    lengths = np.array([n for _, part in parts for n in part], dtype=np.int64)
    return Example(tokens, lengths, item.pair), len(tokens) - len(ending.tokens)


def checked_example(owner: str, space: TokenSpace, build: Callable[..., tuple[Example, int]], *args: Any) -> tuple[Example, int]:
    """`build(*args)`, with ids outside the model's vocabulary or codebook named as the fault of `owner` (user data)."""
    try:
        return build(*args)
    except InvalidItem:
        raise
    except ValueError as err:  # the task was made with another tokenizer or codebook
        raise InvalidItem(f"{owner}: {err} (the model's token space: {space.to_dict()})") from None


def marker(side: Side, space: TokenSpace) -> int:
    """The token that opens a run of the side's modality (<s> or <t>)."""
    return space.speech_start if side.modality == "speech" else space.text_start


def side_ids(side: Side, owner: str, what: str, space: TokenSpace, patching: str, patch_size: int) -> tuple[np.ndarray, list[int]]:
    """A side's token ids and patch lengths (text: one position per token); `owner` and `what`
    name the side when it lacks the patching's patches."""
    if side.modality == "text":
        return space.text_to_ids(list(side.tokens)), [1] * len(side.tokens)
    units = space.units_to_ids(np.array(side.tokens, dtype=np.int64))
    lengths = static_patch_lengths(len(units), patch_size) if patching == "static" else _aligned_patches(side, owner, what, patching)
    return units, lengths


def resolve_patching(spec: RunSpec, patching: str | None) -> str:
    """The scoring patching: the one asked for, else the run's data.eval_patching; `static`
    for the flat kinds, which have one position per token whatever the patching."""
    chosen = patching or spec.data.eval_patching
    if chosen not in SCORING_PATCHINGS:
        raise InvalidItem(f"patching must be one of {', '.join(SCORING_PATCHINGS)}, got {chosen!r}")
    return "static" if spec.model.kind in FLAT_KINDS else chosen


def patching_label(spec: RunSpec, patching: str) -> str:
    """The report's name of the scoring patching: `flat (KIND)` for the flat kinds."""
    return f"flat ({spec.model.kind})" if spec.model.kind in FLAT_KINDS else patching


@torch.no_grad()
def sequence_log_likelihoods(
    model: nn.Module,
    spec: RunSpec,
    space: TokenSpace,
    sequences: Sequence[tuple[Example, int]],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> list[float]:
    """For each (example, first), the sum of log p(token | everything before it) over the
    example's tokens from index `first` on. The one place where scored sequences become model
    batches, for every scoring mode; the flat kinds give every token its own position, and
    bpe_speechllm reads speech as unit-BPE pieces (the scored part's apart from the rest's)."""
    model.eval()
    flat = spec.model.kind in FLAT_KINDS
    if space.unit_bpe is not None:
        sequences = [merged_choice_example(example, first, space) for example, first in sequences]
    sums: list[float] = []
    for begin in range(0, len(sequences), batch_size):
        chunk = sequences[begin : begin + batch_size]
        batch = Batch.from_examples([example for example, _ in chunk], space.pad, flat).to(device)
        log_probs = token_log_probs(model(batch), batch.tokens)  # [B, N-1]: entry t-1 scores token t
        sums.extend(float(log_probs[row, first - 1 : len(example.tokens) - 1].sum())
                    for row, (example, first) in enumerate(chunk))
    return sums


def score_items(
    model: nn.Module,
    spec: RunSpec,
    space: TokenSpace,
    items: Sequence[ChoiceItem],
    *,
    patching: str | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> list[ItemScore]:
    """Summed log-likelihood of every ending of every item (see the module doc); `patching`
    defaults to the run's data.eval_patching."""
    patching = resolve_patching(spec, patching)
    sequences = [checked_example(f"item {item.id}", space, choice_example, item, ending, space, patching, spec.data.patch_size)
                 for item in items for ending in item.endings]
    sums = iter(sequence_log_likelihoods(model, spec, space, sequences, batch_size=batch_size, device=device))
    return [
        ItemScore(item.id, item.pair, item.label, [next(sums) for _ in item.endings],
                  [len(e.tokens) for e in item.endings], [len(e.text) for e in item.endings])
        for item in items
    ]


def binomial_standard_error(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy p over n independent items."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def share_with_standard_error(name: str, credits: Sequence[float]) -> dict[str, float]:
    """`name`: the mean credit (1 right, 0 wrong, 0.5 a tie where ties count half) and
    `name_se`: its binomial standard error."""
    p = sum(credits) / len(credits) if credits else float("nan")
    return {name: p, f"{name}_se": binomial_standard_error(p, len(credits))}


def accuracy(scores: Sequence[ItemScore]) -> dict[str, float | int]:
    """Accuracy by summed, per-token and per-character (acc_norm) log-likelihood, each with
    its standard error; the item count, and how many items acc_norm normalized per token
    because an ending had no text."""
    result: dict[str, float | int] = {"n": len(scores)}
    result |= share_with_standard_error("acc_sum", [s.correct_sum for s in scores])
    result |= share_with_standard_error("acc_per_token", [s.correct_per_token for s in scores])
    result |= share_with_standard_error("acc_norm", [s.correct_norm for s in scores])
    result["acc_norm_fallback"] = sum(not s.normalized_by_chars for s in scores)
    return result


def accuracy_by_pair(scores: Sequence[ItemScore]) -> dict[str, dict[str, float | int]]:
    """`accuracy` of each modality pair present, in the order s2s, t2t, s2t, t2s."""
    return {pair: accuracy([s for s in scores if s.pair == pair]) for pair in PAIRS if any(s.pair == pair for s in scores)}


def format_table(results: dict[str, dict[str, float | int]], first: str, label: Callable[[str], str],
                 columns: Sequence[tuple[str, str]]) -> list[str]:
    """Aligned text lines: a row per entry of `results` (`label(key)`, n, then each
    (header, figure) of `columns` as figure ± its standard error)."""
    width = max([len(first), *(len(label(key)) for key in results)])
    lines = [f"{first:<{width}} {'n':>6}" + "".join(f"  {header:>17}" for header, _ in columns)]
    for key, r in results.items():
        lines.append(f"{label(key):<{width}} {r['n']:>6}"
                     + "".join(f"  {r[name]:>9.3f} ± {r[f'{name}_se']:.3f}" for _, name in columns))
    return lines


def format_accuracy_table(results: dict[str, dict[str, float | int]]) -> list[str]:
    """The per-pair figures as aligned text lines (accuracy ± standard error), and a note on
    the items acc_norm normalized per token."""
    lines = format_table(results, "pair", pair_label,
                         [("acc (sum)", "acc_sum"), ("acc (per token)", "acc_per_token"), ("acc_norm (chars)", "acc_norm")])
    fallback = sum(int(r["acc_norm_fallback"]) for r in results.values())
    if fallback:
        lines.append(f"acc_norm: {fallback} items with an ending without text were normalized per token")
    return lines


class _Sourced(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def sources(self) -> tuple[str, ...]: ...


SourcedT = TypeVar("SourcedT", bound=_Sourced)


def without_contaminated(items: Sequence[SourcedT], run_dir: Path, drop: bool) -> tuple[list[SourcedT], int]:
    """The items (or minimal pairs) none of whose sources the run trained on (its
    `training_texts.npy`), and how many were left out; a UserError when the run has no
    digests, or when some item is contaminated and `drop` is False."""
    digests = read_training_texts(run_dir)
    if digests is None:
        raise UserError(f"{run_dir}: no training_texts.npy (a run from before the contamination check); "
                        "retrain, or pass --no-contamination-check")
    dirty = [item.id for item in items if contaminated(item.sources, digests)]
    if dirty and not drop:
        raise UserError(f"{len(dirty)} of {len(items)} items share a transcript with the model's training data "
                        f"(first: {', '.join(dirty[:3])}); rebuild the task from held-out text or pass --drop-contaminated")
    dropped = set(dirty)
    return [item for item in items if item.id not in dropped], len(dirty)
