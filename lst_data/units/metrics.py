"""Unit-sequence similarity, for sanity checks of a codebook (same word -> similar units)."""

from __future__ import annotations

from collections.abc import Sequence


def normalized_edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Levenshtein distance between two unit sequences / the longer length (0 = equal, 1 = nothing shared)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1] / max(len(a), len(b), 1)
