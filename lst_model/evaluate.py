"""`lst-model score`: a checkpoint scored on a task in either mode (`SCORING_MODES`):
multiple-choice items (lst_model.score) or minimal pairs (lst_model.minimal_pairs), from a
task file or built from the held-out utterances of a shard set."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lst_data.core.errors import UserError
from lst_model.corpus_tasks import corpus_items
from lst_model.data import load_records, load_token_space
from lst_model.items import PAIRS, read_items, read_minimal_pairs, write_jsonl
from lst_model.minimal_pairs import (
    PairScore,
    accuracy_by_modality,
    format_minimal_pair_table,
    minimal_pairs_from_records,
    score_minimal_pairs,
)
from lst_model.score import (
    SCORING_MODES,
    ItemScore,
    accuracy_by_pair,
    format_accuracy_table,
    patching_label,
    resolve_patching,
    score_items,
    without_contaminated,
)
from lst_model.tokens import check_same_space

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRun:
    """What `lst-model score` found: its report (mode, patching, skipped and dropped items,
    accuracy per modality pair or, for minimal pairs, per modality) and the per-item scores."""

    report: dict[str, Any]
    scores: list[ItemScore] | list[PairScore]

    @property
    def table(self) -> list[str]:
        """The report's accuracies as aligned text lines."""
        if self.report["mode"] == "minimal-pairs":
            return format_minimal_pair_table(self.report["modalities"])
        return format_accuracy_table(self.report["pairs"])


def _load_task(mode: str, task_path: Path | None, shard_dir: Path | None, seed: int, pairs: Sequence[str],
               n_endings: int, heldout_fraction: float) -> tuple[list[Any], dict[str, int] | None]:
    """The items (multiple-choice) or minimal pairs of `task_path`, or those built from the
    held-out utterances of `shard_dir` with the utterances that gave none, by reason."""
    if task_path is not None:
        return (read_items(task_path) if mode == "multiple-choice" else read_minimal_pairs(task_path)), None
    if shard_dir is None:
        raise ValueError("give a task file or the shards to build one from")
    records = load_records(shard_dir)
    if mode == "multiple-choice":
        return corpus_items(records, heldout_fraction, pairs=pairs, n_endings=n_endings, seed=seed)
    return minimal_pairs_from_records(records, heldout_fraction, seed=seed)


def score_checkpoint(
    checkpoint: Path,
    *,
    mode: str = "multiple-choice",
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
    """Score a checkpoint in `mode` (`SCORING_MODES`): on the items of `task_path`, or on
    continuation items built from the held-out utterances of `shard_dir` (`corpus_items` with
    `pairs`, `n_endings`, `seed`); for `minimal-pairs`, on the pairs of `task_path` or built
    from `shard_dir` (`lst_model.minimal_pairs.minimal_pairs_from_records` with `seed`).
    Items sharing a transcript with the run's training data are refused, or left out with
    `drop_contaminated` (`notify` is told how many). `out_path`: write the per-item scores (JSONL)."""
    from lst_model.train import load_model

    if mode not in SCORING_MODES:
        raise ValueError(f"mode must be one of {SCORING_MODES}, got {mode!r}")
    model, spec, space = load_model(checkpoint, device)
    patching = resolve_patching(spec, patching)
    report: dict[str, Any] = {"mode": mode, "patching": patching_label(spec, patching)}
    if shard_dir is not None and task_path is None:
        check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_token_space)
    items, skips = _load_task(mode, task_path, shard_dir, seed, pairs, n_endings, spec.data.heldout_fraction)
    if skips is not None:
        report["skipped_utterances"] = skips
    if check_contamination:
        kept, dropped = without_contaminated(items, checkpoint.parent, drop_contaminated)
        if dropped:
            notify(f"dropped {dropped} contaminated items of {len(items)}")
        items, report["dropped_contaminated"] = kept, dropped
    if not items:
        what = "items" if mode == "multiple-choice" else "minimal pairs"
        hint = "a larger data.heldout_fraction or fewer --endings gives more" if mode == "multiple-choice" else \
            "a larger data.heldout_fraction gives more"
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted((skips or {}).items()))
        raise UserError(f"no {what} to score" + (f": the held-out utterances gave none ({skipped}); {hint}" if skipped else ""))
    scores: list[ItemScore] | list[PairScore]
    if mode == "multiple-choice":
        scores = score_items(model, spec, space, items, patching=patching, device=device)
        report["pairs"] = accuracy_by_pair(scores)
    else:
        scores = score_minimal_pairs(model, spec, space, items, patching=patching, device=device)
        report["modalities"] = accuracy_by_modality(scores)
    if out_path is not None:
        write_jsonl((s.to_json() for s in scores), out_path)
    return ScoreRun(report, scores)
