"""Alignment accuracy against ground truth (the demo corpus's `ground_truth.json`).

Boundaries: every word's onset and offset is one boundary; the error is |aligned - true|
in seconds. A comma pause counts as found when one silence span covers at least half of
it (a pause the aligner put inside a word would be invisible to aligned patching).
Utterances the aligner rejected are counted, not scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PAUSE_COVERAGE = 0.5
TOLERANCES = (0.020, 0.050, 0.100)


@dataclass(frozen=True)
class AlignmentScores:
    utterances: int
    missing: int  # in the ground truth, not in the alignments (rejected)
    boundaries: int
    mean_abs_error: float
    median_abs_error: float
    within: dict[float, float]  # tolerance (s) -> share of boundaries within it
    pauses: int
    pauses_found: int

    def lines(self, name: str) -> list[str]:
        """Human-readable lines (used by the benchmark and the CLI)."""
        within = ", ".join(f"{share:.1%} within {int(tol * 1000)} ms" for tol, share in self.within.items())
        return [
            f"{name}: {self.utterances} utterances scored, {self.missing} rejected, {self.boundaries} boundaries",
            f"{name}: mean |error| {self.mean_abs_error * 1000:.1f} ms, median {self.median_abs_error * 1000:.1f} ms; {within}",
            f"{name}: comma pauses found as silence {self.pauses_found}/{self.pauses}",
        ]


def evaluate_alignments(alignments: Iterable[Mapping[str, Any]], ground_truth: Mapping[str, Any]) -> AlignmentScores:
    """Score alignment rows (ALIGNMENT_SCHEMA dicts) against `ground_truth.json`'s utterances."""
    by_id = {row["id"]: row for row in alignments}
    errors: list[float] = []
    pauses = found = scored = missing = 0
    for truth in ground_truth["utterances"]:
        row = by_id.get(truth["id"])
        if row is None:
            missing += 1
            continue
        scored += 1
        if [w["word"] for w in row["words"]] != [w["word"] for w in truth["words"]]:
            raise ValueError(f"{truth['id']}: aligned words differ from the ground truth's")
        for aligned, true in zip(row["words"], truth["words"], strict=True):
            errors += [abs(aligned["start"] - true["start"]), abs(aligned["end"] - true["end"])]
        for pause in truth["pauses"]:
            if pause["kind"] != "comma":
                continue
            pauses += 1
            length = pause["end"] - pause["start"]
            found += any(
                min(s["end"], pause["end"]) - max(s["start"], pause["start"]) >= PAUSE_COVERAGE * length
                for s in row["silences"]
            )
    err = np.asarray(errors, dtype=np.float64)
    return AlignmentScores(
        utterances=scored,
        missing=missing,
        boundaries=int(err.size),
        mean_abs_error=float(err.mean()) if err.size else float("nan"),
        median_abs_error=float(np.median(err)) if err.size else float("nan"),
        within={tol: float((err <= tol + 1e-9).mean()) if err.size else float("nan") for tol in TOLERANCES},
        pauses=pauses,
        pauses_found=found,
    )
