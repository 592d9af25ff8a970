"""Property tests of the time -> frame rule (lst_data.format.frames), checked against exact
rational arithmetic (fractions.Fraction) rather than the float code under test.

Times are drawn on a millisecond grid, so Fraction gives the true floor/ceil of t * f.
"""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from lst_data.format.frames import (
    FrameSpan,
    frame_to_time,
    frames_for_duration,
    silence_frame_runs,
    time_to_frame_span,
    word_frame_spans,
)

FRAME_RATES = st.sampled_from([25, 50, 100, 12.5, 16000 / 320])
millis = st.integers(min_value=0, max_value=20_000)


def _exact_span(start_ms: int, end_ms: int, frame_rate: float, n_frames: int) -> FrameSpan:
    rate = Fraction(frame_rate)
    first = math.floor(Fraction(start_ms, 1000) * rate)
    last = max(first, math.ceil(Fraction(end_ms, 1000) * rate) - 1)
    clip = lambda frame: min(max(frame, 0), n_frames - 1)  # noqa: E731
    return FrameSpan(clip(first), clip(last))


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(millis, millis, FRAME_RATES, st.integers(min_value=1, max_value=600))
def test_time_to_frame_span_is_floor_start_ceil_end_minus_one_clipped(a, b, frame_rate, n_frames):
    start_ms, end_ms = min(a, b), max(a, b)
    span = time_to_frame_span(start_ms / 1000, end_ms / 1000, frame_rate, n_frames)
    assert span == _exact_span(start_ms, end_ms, frame_rate, n_frames)
    assert 0 <= span.start <= span.end <= n_frames - 1


def test_time_to_frame_span_worked_examples_at_25_hz():
    # 40 ms frames: frame k covers [0.04k, 0.04(k+1)).
    assert time_to_frame_span(0.0, 0.04, 25, 100) == (0, 0)  # ends exactly at frame 1's start
    assert time_to_frame_span(0.04, 0.28, 25, 100) == (1, 6)  # 0.28 s is frame 7's start, not in it
    assert time_to_frame_span(0.05, 0.29, 25, 100) == (1, 7)
    assert time_to_frame_span(0.1, 0.1, 25, 100) == (2, 2)  # a point still owns its frame
    assert time_to_frame_span(3.9, 9.0, 25, 100) == (97, 99)  # clipped to the last frame
    assert time_to_frame_span(5.0, 6.0, 25, 100) == (99, 99)  # wholly past the end: clipped


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(st.integers(min_value=0, max_value=600_000), FRAME_RATES)
def test_frames_for_duration_is_the_floor(duration_ms, frame_rate):
    expected = math.floor(Fraction(duration_ms, 1000) * Fraction(frame_rate))
    assert frames_for_duration(duration_ms / 1000, frame_rate) == expected


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(st.integers(min_value=0, max_value=10_000), FRAME_RATES)
def test_frame_to_time_inverts_the_start_rule(frame, frame_rate):
    n = frame + 1
    assert (
        time_to_frame_span(
            frame_to_time(frame, frame_rate), frame_to_time(frame, frame_rate), frame_rate, n
        ).start
        == frame
    )


@st.composite
def word_intervals(draw):
    """Time-ordered (by start) word intervals in ms, overlapping sometimes, some past the end."""
    n_words = draw(st.integers(min_value=0, max_value=12))
    starts = sorted(draw(st.lists(millis, min_size=n_words, max_size=n_words)))
    lengths = draw(st.lists(st.integers(min_value=0, max_value=1500), min_size=n_words, max_size=n_words))
    return [(s, s + length) for s, length in zip(starts, lengths, strict=True)]


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(word_intervals(), FRAME_RATES, st.integers(min_value=1, max_value=800))
def test_word_spans_and_silence_runs_tile_all_frames(intervals_ms, frame_rate, n_frames):
    intervals = [(s / 1000, e / 1000) for s, e in intervals_ms]
    spans = word_frame_spans(intervals, frame_rate, n_frames)
    assert len(spans) == len(intervals)
    owner = [None] * n_frames
    for k, span in enumerate(spans):
        assert span.end >= span.start - 1, "an empty span is written end = start - 1, never shorter"
        for frame in range(span.start, span.end + 1):
            assert owner[frame] is None, f"frame {frame} claimed twice"
            owner[frame] = ("word", k)
    runs = silence_frame_runs(spans, n_frames)
    for run in runs:
        assert run.length > 0
        for frame in range(run.start, run.end + 1):
            assert owner[frame] is None, f"silence run {run} overlaps a word at frame {frame}"
            owner[frame] = "silence"
    assert None not in owner, "words and silence runs must cover every frame"
    # runs are maximal: two silence runs never touch
    assert all(a.end + 1 < b.start for a, b in zip(runs, runs[1:], strict=False))


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(word_intervals(), FRAME_RATES, st.integers(min_value=1, max_value=800))
def test_word_spans_follow_the_rule_and_earlier_word_wins(intervals_ms, frame_rate, n_frames):
    spans = word_frame_spans([(s / 1000, e / 1000) for s, e in intervals_ms], frame_rate, n_frames)
    claimed: set[int] = set()
    for (start_ms, end_ms), span in zip(intervals_ms, spans, strict=True):
        own = _exact_span(start_ms, end_ms, frame_rate, n_frames)
        own_frames = set(range(own.start, own.end + 1))
        given_frames = set(range(span.start, span.end + 1))
        assert given_frames <= own_frames, "a word only gets frames of its own interval"
        assert given_frames == own_frames - claimed, "a word gets exactly its frames no earlier word claimed"
        claimed |= given_frames


def test_overlapping_words_give_the_shared_frame_to_the_earlier_word():
    # word 0 ends in frame 2 (0.1 s), word 1 starts in frame 2 (0.09 s): frame 2 is word 0's.
    spans = word_frame_spans([(0.0, 0.1), (0.09, 0.2), (0.1, 0.11)], 25, 10)
    assert spans == [FrameSpan(0, 2), FrameSpan(3, 4), FrameSpan(5, 4)]
    assert silence_frame_runs(spans, 10) == [FrameSpan(5, 9)]
