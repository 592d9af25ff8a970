"""The aligner's silence spans between aligned words, and trimming of quiet word edges.

These spans are the aligner's evidence, not the shard's silence: a shard's silence is every
run of frames no word claims (`lst_data.format.frames.silence_frame_runs`), and an aligner
span only names the rule of the run it overlaps most (`lst_data.shards.join`).

Aligner silence spans are the stretches between consecutive words (and before the first / after
the last word) that qualify, one span per stretch, tagged with the rule that made it:

- 'label': the aligner put a silence-labelled or empty interval there (`sil`, `sp`, `<eps>`...),
  whatever its length;
- 'edge':  the stretch before the first or after the last word;
- 'gap':   a stretch between two words of at least `min_silence` seconds.

Trimming exists because HMM aligners hand the closure before a word-initial stop (and
often a whole comma pause) to the word: on the demo corpus PocketSphinx put 2 of 19
comma pauses inside the next word. Windows of 5 ms quieter than the threshold at a
word's edges are moved out of the word, so they become part of a gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from lst_data.align.base import Alignment, Interval

TRIM_WINDOW_S = 0.005
SUSTAINED_WINDOWS = 3  # 15 ms of sound marks where a word really starts or ends
MIN_UNIT_S = 0.010  # a trimmed word's first/last phone (or character) keeps at least this much
_NOISE_MARGIN_DB = 6.0
_EDGE_EPSILON_S = 0.001  # a leading/trailing stretch shorter than this is rounding, not silence


def loud_windows(samples: np.ndarray, sample_rate: int, trim_db: float) -> np.ndarray:
    """Boolean per 5 ms window: louder than max(peak - trim_db, noise floor + 6 dB)."""
    hop = max(1, int(round(TRIM_WINDOW_S * sample_rate)))
    n = len(samples) // hop
    if n == 0:
        return np.zeros(0, dtype=bool)
    level = 20 * np.log10(np.abs(samples[: n * hop]).reshape(n, hop).max(axis=1) + 1e-9)
    threshold = max(float(level.max()) - trim_db, float(np.percentile(level, 10)) + _NOISE_MARGIN_DB)
    return level >= threshold


def trim_quiet_edges(alignment: Alignment, samples: np.ndarray, sample_rate: int, trim_db: float) -> Alignment:
    """Move quiet 5 ms windows at each word's edges out of the word (phones/chars clipped along).

    The word is cut to [first, last] sustained loud stretch inside it (3 windows = 15 ms)."""
    if trim_db <= 0:
        return alignment
    loud = loud_windows(samples, sample_rate, trim_db)
    if loud.size == 0:
        return alignment
    units = alignment.phones or alignment.chars or []
    words: list[Interval] = []
    for index, word in enumerate(alignment.words):
        first = int(np.floor(round(word.start / TRIM_WINDOW_S, 6)))
        last = min(int(np.ceil(round(word.end / TRIM_WINDOW_S, 6))), loud.size)
        inside = _sustained(loud[first:last])
        if inside.size == 0:
            words.append(word)  # nothing audible: leave the aligner's decision alone
            continue
        start = max(word.start, (first + inside[0]) * TRIM_WINDOW_S)
        end = min(word.end, (first + inside[-1] + SUSTAINED_WINDOWS) * TRIM_WINDOW_S)
        mine = [u for u in units if u.word_index == index]
        if mine:  # never trim a whole phone away: a quiet /h/ is still the word's first phone
            start = min(start, max(word.start, mine[0].end - MIN_UNIT_S))
            end = max(end, min(word.end, mine[-1].start + MIN_UNIT_S))
        words.append(replace(word, start=round(start, 6), end=round(end, 6)))
    return replace(
        alignment,
        words=words,
        phones=_clip_to_words(alignment.phones, words),
        chars=None if alignment.chars is None else _clip_to_words(alignment.chars, words),
    )


def _sustained(loud: np.ndarray) -> np.ndarray:
    """Indices where SUSTAINED_WINDOWS loud windows in a row begin. A lone loud window at a
    word's edge is usually the neighbour's tail caught by the aligner's 10 ms frames (or a
    click), and must not stop the trim."""
    if loud.size < SUSTAINED_WINDOWS:
        return np.flatnonzero(loud) if loud.all() else np.zeros(0, dtype=np.int64)
    runs = np.lib.stride_tricks.sliding_window_view(loud, SUSTAINED_WINDOWS).all(axis=1)
    return np.flatnonzero(runs)


def _clip_to_words(units: Sequence[Interval], words: Sequence[Interval]) -> list[Interval]:
    clipped = []
    for unit in units:
        if not 0 <= unit.word_index < len(words):
            clipped.append(unit)
            continue
        word = words[unit.word_index]
        start = min(max(unit.start, word.start), word.end)
        clipped.append(replace(unit, start=start, end=min(max(unit.end, start), word.end)))
    return clipped


def silence_spans(
    words: Sequence[Interval], labelled: Sequence[Interval], duration: float, min_silence: float
) -> list[Interval]:
    """Silence spans (label = rule) between time-ordered `words` over [0, duration]."""
    bounds = [0.0, *[t for w in words for t in (w.start, w.end)], duration]
    spans: list[Interval] = []
    for index in range(0, len(bounds), 2):
        start, end = bounds[index], bounds[index + 1]
        if end - start <= _EDGE_EPSILON_S:
            continue
        is_edge = index == 0 or index == len(bounds) - 2
        if any(min(end, s.end) - max(start, s.start) > 0 for s in labelled):
            rule = "label"
        elif is_edge:
            rule = "edge"
        elif end - start >= min_silence:
            rule = "gap"
        else:
            continue
        spans.append(Interval(rule, round(start, 6), round(end, 6)))
    return spans
