"""Give MFA's words back the audible edges its silence model took from them.

An MFA model trained on little data (like the demo model: 160 synthetic utterances) learns
a silence model that also fits weak sounds: the /dh/ of "the" gets one 10 ms frame and its
first 80-110 ms go to the silence before it; quiet word endings (a final /d/, a fading
vowel) go to the silence after. Boosting silence (0.05-1.0), a lexicon silence probability
of 0.05 and MFA's boundary fine-tuning did not move these boundaries on the demo corpus
(measured in the worker: the median onset of "the" stayed 84-89 ms late). The audio does show them: the frames are far above
the noise floor. So each word's start moves back, and its end forward, over the loud 5 ms
windows (the trim's own criterion, lst_data.align.silence.loud_windows) that touch it,
never past the neighbouring word and at most `align.mfa.extend_edges` seconds. A real
pause stays: it is quiet, so nothing extends into it. The stage's trim, which runs
afterwards, uses the same criterion and so does not undo this.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lst_data.align.base import Alignment, Interval
from lst_data.align.silence import TRIM_WINDOW_S, loud_windows


def extend_into_audible_silence(alignment: Alignment, samples: np.ndarray, sample_rate: int,
                                trim_db: float, max_extension: float) -> Alignment:
    if max_extension <= 0 or not alignment.words:
        return alignment
    loud = loud_windows(samples, sample_rate, trim_db)
    limit = int(round(max_extension / TRIM_WINDOW_S))
    words = alignment.words
    extended: list[Interval] = []
    for index, word in enumerate(words):
        floor = extended[-1].end if extended else 0.0
        ceiling = words[index + 1].start if index + 1 < len(words) else len(loud) * TRIM_WINDOW_S
        first = int(np.ceil(round(word.start / TRIM_WINDOW_S, 6)))
        low = max(int(np.ceil(round(floor / TRIM_WINDOW_S, 6))), first - limit)
        while first > low and loud[first - 1]:
            first -= 1
        last = int(np.floor(round(word.end / TRIM_WINDOW_S, 6)))
        high = min(int(np.floor(round(ceiling / TRIM_WINDOW_S, 6))), last + limit, len(loud))
        while last < high and loud[last]:
            last += 1
        start = min(word.start, max(floor, first * TRIM_WINDOW_S))
        end = max(word.end, min(ceiling, last * TRIM_WINDOW_S))
        extended.append(replace(word, start=round(start, 6), end=round(end, 6)))
    return replace(
        alignment,
        words=extended,
        phones=_stretch_edge_units(alignment.phones, words, extended),
        labelled_silences=_outside(alignment.labelled_silences, extended),
    )


def _stretch_edge_units(units: list[Interval], before: list[Interval], after: list[Interval]) -> list[Interval]:
    """Each word's first phone starts, and its last phone ends, where the word now does."""
    out = []
    for unit in units:
        if 0 <= unit.word_index < len(after):
            old, new = before[unit.word_index], after[unit.word_index]
            unit = replace(unit, start=new.start if unit.start <= old.start else unit.start,
                           end=new.end if unit.end >= old.end else unit.end)
        out.append(unit)
    return out


def _outside(silences: list[Interval], words: list[Interval]) -> list[Interval]:
    """Silence intervals with the stretches words now cover cut away (empty ones dropped)."""
    out: list[Interval] = []
    for silence in silences:
        pieces = [(silence.start, silence.end)]
        for word in words:
            pieces = [p for a, b in pieces for p in ((a, min(b, word.start)), (max(a, word.end), b)) if p[1] - p[0] > 1e-6]
        out.extend(replace(silence, start=a, end=b) for a, b in pieces)
    return out
