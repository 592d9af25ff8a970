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
flat baseline puts every token in its own position and ignores the patching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lst_model.config import RunSpec
from lst_model.items import ALIGNED_STRATEGIES, PAIRS, ChoiceItem, InvalidItem, Side, pair_label
from lst_model.model import Batch, token_log_probs
from lst_model.sequences import Example, static_patch_lengths
from lst_model.tokens import TokenSpace

SCORING_PATCHINGS = ("static", *ALIGNED_STRATEGIES)


@dataclass(frozen=True)
class ItemScore:
    id: str
    pair: str
    label: int
    sums: list[float]
    lengths: list[int]

    @property
    def per_token(self) -> list[float]:
        return [s / n for s, n in zip(self.sums, self.lengths, strict=True)]

    @property
    def correct_sum(self) -> bool:
        return int(np.argmax(self.sums)) == self.label

    @property
    def correct_per_token(self) -> bool:
        return int(np.argmax(self.per_token)) == self.label

    def to_json(self) -> dict:
        return {"id": self.id, "pair": self.pair, "label": self.label, "sums": self.sums, "lengths": self.lengths,
                "correct_sum": self.correct_sum, "correct_per_token": self.correct_per_token}


def _aligned_patches(item: ChoiceItem, side: Side, what: str, strategy: str) -> list[int]:
    if strategy not in side.patches:
        raise InvalidItem(f"item {item.id}: its speech {what} has no {strategy} patches; score with --patching static, "
                          "or rebuild the task from aligned audio (corpus tasks and build-task carry them)")
    return list(side.patches[strategy])


def choice_example(item: ChoiceItem, ending: Side, space: TokenSpace, patching: str, patch_size: int) -> tuple[Example, int]:
    """The scored sequence of one ending, and the index of the ending's first token."""
    prompt = item.prompt
    parts = [([space.bos, _marker(prompt, space)], [1, 1])]
    if item.pair == "s2s" and patching == "static":  # one speech stream: patches run across the prompt/ending cut
        units = space.units_to_ids(np.array([*prompt.tokens, *ending.tokens], dtype=np.int64))
        parts.append((units, static_patch_lengths(len(units), patch_size)))
    else:
        parts.append(_side(item, prompt, "prompt", space, patching, patch_size))
        if ending.modality != prompt.modality:
            parts.append(([_marker(ending, space)], [1]))
        parts.append(_side(item, ending, "ending", space, patching, patch_size))
    tokens = np.concatenate([np.asarray(t, dtype=np.int64) for t, _ in parts])
    lengths = np.array([n for _, part in parts for n in part], dtype=np.int64)
    return Example(tokens, lengths, item.pair), len(tokens) - len(ending.tokens)


def _checked_example(item: ChoiceItem, ending: Side, space: TokenSpace, patching: str, patch_size: int) -> tuple[Example, int]:
    """`choice_example`, with ids outside the model's vocabulary or codebook named as the item's fault."""
    try:
        return choice_example(item, ending, space, patching, patch_size)
    except InvalidItem:
        raise
    except ValueError as err:  # the task was made with another tokenizer or codebook
        raise InvalidItem(f"item {item.id}: {err} (the model's token space: {space.to_dict()})") from None


def _marker(side: Side, space: TokenSpace) -> int:
    return space.speech_start if side.modality == "speech" else space.text_start


def _side(item: ChoiceItem, side: Side, what: str, space: TokenSpace, patching: str, patch_size: int) -> tuple[np.ndarray, list[int]]:
    """A side's token ids and patch lengths (text: one position per token)."""
    if side.modality == "text":
        return space.text_to_ids(list(side.tokens)), [1] * len(side.tokens)
    units = space.units_to_ids(np.array(side.tokens, dtype=np.int64))
    lengths = static_patch_lengths(len(units), patch_size) if patching == "static" else _aligned_patches(item, side, what, patching)
    return units, lengths


def resolve_patching(spec: RunSpec, patching: str | None) -> str:
    """The scoring patching: the one asked for, else the run's data.eval_patching."""
    chosen = patching or spec.data.eval_patching
    if chosen not in SCORING_PATCHINGS:
        raise InvalidItem(f"patching must be one of {', '.join(SCORING_PATCHINGS)}, got {chosen!r}")
    return chosen


@torch.no_grad()
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
    model.eval()
    flat = spec.model.kind == "baseline"
    if flat:
        patching = "static"  # the baseline has one position per token whatever the patching
    jobs = [(i, e, *_checked_example(item, ending, space, patching, spec.data.patch_size))
            for i, item in enumerate(items) for e, ending in enumerate(item.endings)]
    sums = {(i, e): 0.0 for i, e, _, _ in jobs}
    for begin in range(0, len(jobs), batch_size):
        chunk = jobs[begin : begin + batch_size]
        batch = Batch.from_examples([ex for _, _, ex, _ in chunk], space.pad, flat).to(device)
        log_probs = token_log_probs(model(batch), batch.tokens)  # [B, N-1]: entry t-1 scores token t
        for row, (i, e, ex, first) in enumerate(chunk):
            sums[(i, e)] = float(log_probs[row, first - 1 : len(ex.tokens) - 1].sum())
    return [
        ItemScore(item.id, item.pair, item.label, [sums[(i, e)] for e in range(len(item.endings))],
                  [len(x.tokens) for x in item.endings])
        for i, item in enumerate(items)
    ]


def binomial_standard_error(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy p over n independent items."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def accuracy(scores: Sequence[ItemScore]) -> dict[str, float | int]:
    """Accuracy by summed and by per-token log-likelihood, each with its standard error, and the item count."""
    n = len(scores)
    result: dict[str, float | int] = {"n": n}
    for name, correct in (("acc_sum", [s.correct_sum for s in scores]), ("acc_per_token", [s.correct_per_token for s in scores])):
        p = sum(correct) / n if n else float("nan")
        result[name] = p
        result[f"{name}_se"] = binomial_standard_error(p, n)
    return result


def accuracy_by_pair(scores: Sequence[ItemScore]) -> dict[str, dict[str, float | int]]:
    """`accuracy` of each modality pair present, in the order s2s, t2t, s2t, t2s."""
    return {pair: accuracy([s for s in scores if s.pair == pair]) for pair in PAIRS if any(s.pair == pair for s in scores)}


def format_accuracy_table(results: dict[str, dict[str, float | int]]) -> list[str]:
    """The per-pair figures as aligned text lines (accuracy ± standard error)."""
    lines = [f"{'pair':<5} {'n':>6}  {'acc (sum)':>15}  {'acc (per token)':>15}"]
    for pair, r in results.items():
        lines.append(f"{pair_label(pair):<5} {r['n']:>6}  {r['acc_sum']:>7.3f} ± {r['acc_sum_se']:.3f}  "
                     f"{r['acc_per_token']:>7.3f} ± {r['acc_per_token_se']:.3f}")
    return lines
