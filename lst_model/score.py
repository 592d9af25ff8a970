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

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lst_data.core.errors import UserError
from lst_model.config import RunSpec
from lst_model.data import contaminated, load_records, load_token_space, read_training_texts
from lst_model.items import (
    ALIGNED_STRATEGIES,
    PAIRS,
    ChoiceItem,
    InvalidItem,
    Side,
    pair_label,
    read_items,
    write_jsonl,
)
from lst_model.model import Batch, token_log_probs
from lst_model.sequences import Example, static_patch_lengths
from lst_model.tokens import TokenSpace, check_same_space

log = logging.getLogger(__name__)

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
    parts: list[tuple[Sequence[int] | np.ndarray, Sequence[int]]] = [([space.bos, _marker(prompt, space)], [1, 1])]
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


def without_contaminated(items: Sequence[ChoiceItem], run_dir: Path, drop: bool) -> tuple[list[ChoiceItem], int]:
    """The items none of whose sources the run trained on (its `training_texts.npy`), and how many
    were left out; a UserError when the run has no digests, or when some item is contaminated
    and `drop` is False."""
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


@dataclass(frozen=True)
class ScoreRun:
    """What `lst-model score` found: its report (patching, skipped and dropped items, accuracy
    per pair) and the per-item scores."""

    report: dict[str, Any]
    scores: list[ItemScore]


def score_checkpoint(
    checkpoint: Path,
    *,
    task_path: Path | None = None,
    shard_dir: Path | None = None,
    pairs: Sequence[str] = PAIRS,
    n_endings: int = 2,
    seed: int = 0,
    patching: str | None = None,
    drop_contaminated: bool = False,
    check_contamination: bool = True,
    device: str = "cpu",
    allow_other_token_space: bool = False,
    out_path: Path | None = None,
    notify: Callable[[str], None] = log.info,
) -> ScoreRun:
    """Score a checkpoint on the items of `task_path`, or on continuation items built from the
    held-out utterances of `shard_dir` (`corpus_items` with `pairs`, `n_endings`, `seed`). Items sharing a transcript with the
    run's training data are refused, or left out with `drop_contaminated` (`notify` is told
    how many). `out_path`: write the per-item scores (JSONL)."""
    from lst_model.corpus_tasks import corpus_items
    from lst_model.train import load_model

    model, spec, space = load_model(checkpoint, device)
    patching = resolve_patching(spec, patching)
    report: dict[str, Any] = {"patching": "flat (baseline)" if spec.model.kind == "baseline" else patching}
    if task_path is not None:
        items = read_items(task_path)
    elif shard_dir is not None:
        check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_token_space)
        items, report["skipped_utterances"] = corpus_items(load_records(shard_dir), spec.data.heldout_fraction,
                                                           pairs=pairs, n_endings=n_endings, seed=seed)
    else:
        raise ValueError("give a task file or the shards to build one from")
    if check_contamination:
        kept, dropped = without_contaminated(items, checkpoint.parent, drop_contaminated)
        if dropped:
            notify(f"dropped {dropped} contaminated items of {len(items)}")
        items, report["dropped_contaminated"] = kept, dropped
    if not items:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(report.get("skipped_utterances", {}).items()))
        raise UserError("no items to score" + (f": the held-out utterances gave none ({skipped}); a larger "
                                               "data.heldout_fraction or fewer --endings gives more" if skipped else ""))
    scores = score_items(model, spec, space, items, patching=patching, device=device)
    report["pairs"] = accuracy_by_pair(scores)
    if out_path is not None:
        write_jsonl((s.to_json() for s in scores), out_path)
    return ScoreRun(report, scores)
