"""ASR and TTS figures: word and character error rates, and the unit edit distance.

All three are corpus-level: the edits of every utterance summed, divided by the summed
reference length (so a long utterance weighs more than a short one, as in ASR papers).
WER and CER are `jiwer`'s (words split at whitespace; CER counts spaces as characters);
the unit edit distance is the Levenshtein distance between unit-id sequences
(`rapidfuzz`), normalised by the reference units.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """(substitutions + deletions + insertions) / reference words, over all utterances."""
    return float(jiwer.wer(list(references), list(hypotheses)))


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character edits / reference characters, over all utterances."""
    return float(jiwer.cer(list(references), list(hypotheses)))


def unit_edit_distance(references: Sequence[Sequence[int] | np.ndarray], hypotheses: Sequence[Sequence[int] | np.ndarray]) -> float:
    """Levenshtein distance between unit sequences / reference units, over all utterances."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references hold no units")
    edits = sum(Levenshtein.distance([int(u) for u in r], [int(u) for u in h])
                for r, h in zip(references, hypotheses, strict=True))
    return edits / total


def length_ratio(references: Sequence[Sequence[int] | np.ndarray], hypotheses: Sequence[Sequence[int] | np.ndarray]) -> float:
    """Generated units / reference units, over all utterances."""
    return sum(len(h) for h in hypotheses) / sum(len(r) for r in references)
