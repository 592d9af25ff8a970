"""The time -> frame rule of the shard contract, in one place.

Every stage that turns seconds into unit frames (alignment export, BPE spans, shards,
patching in `lst_model`) calls these functions, so the rule cannot drift between them.

Rule (the shard contract, docs/shards.md): for frame rate f and n frames,
    start_frame = floor(start * f)
    end_frame   = max(start_frame, ceil(end * f) - 1)        (inclusive)
both clipped to [0, n - 1]; a frame claimed by two words goes to the earlier word.
Times are rounded to the microsecond before the rule, so 0.28 s at 25 Hz is exactly frame
7's end (7.000000000000001 would otherwise claim frame 7 as well as frame 6).

A word whose frames were all claimed by the previous word has no frames of its own: its
span is empty, written as end_frame = start_frame - 1, and placed where its frames would
have started, but never past the last frame (`empty_span`), so that every span's
start_frame is inside [0, n) even at the utterance's end.

Silence has one definition: every maximal run of frames no word claims
(`silence_frame_runs`). Word spans and silence runs therefore tile [0, n) exactly. The
writer stores these runs as a sample's `silences` (with times and the rule of the aligner
silence each overlaps most), the reader's contract checks the tiling, and patching
derives the same runs from the word spans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

_TIME_DECIMALS = 6


class FrameSpan(NamedTuple):
    """Inclusive frame span; empty when end == start - 1."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def empty_span(at: int, n_frames: int) -> FrameSpan:
    """The empty span (end = start - 1) at frame `at`, moved back onto the last frame if past it."""
    start = min(max(at, 0), n_frames - 1)
    return FrameSpan(start, start - 1)


def frames_for_duration(duration: float, frame_rate: float) -> int:
    """Number of whole frames that fit in `duration` seconds (the floor, as encoders give)."""
    return int(math.floor(round(duration * frame_rate, _TIME_DECIMALS)))


def time_to_frame_span(start: float, end: float, frame_rate: float, n_frames: int) -> FrameSpan:
    if n_frames <= 0:
        raise ValueError("n_frames must be positive")
    if end < start:
        raise ValueError(f"interval ends before it starts: {start} > {end}")
    first = math.floor(round(start * frame_rate, _TIME_DECIMALS))
    last = max(first, math.ceil(round(end * frame_rate, _TIME_DECIMALS)) - 1)
    first = min(max(first, 0), n_frames - 1)
    last = min(max(last, 0), n_frames - 1)
    return FrameSpan(first, last)


def word_frame_spans(
    intervals: Sequence[tuple[float, float]], frame_rate: float, n_frames: int
) -> list[FrameSpan]:
    """Frame spans of time-ordered word intervals; overlaps go to the earlier word."""
    spans: list[FrameSpan] = []
    next_free = 0
    for start, end in intervals:
        span = time_to_frame_span(start, end, frame_rate, n_frames)
        first = max(span.start, next_free)
        spans.append(FrameSpan(first, span.end) if span.end >= first else empty_span(first, n_frames))
        next_free = max(next_free, spans[-1].end + 1)
    return spans


def silence_frame_runs(word_spans: Sequence[FrameSpan], n_frames: int) -> list[FrameSpan]:
    """Maximal runs of frames that belong to no word (the complement of `word_spans`)."""
    runs: list[FrameSpan] = []
    cursor = 0
    for span in word_spans:
        if span.length <= 0:
            continue
        if span.start > cursor:
            runs.append(FrameSpan(cursor, span.start - 1))
        cursor = max(cursor, span.end + 1)
    if cursor < n_frames:
        runs.append(FrameSpan(cursor, n_frames - 1))
    return runs


def frame_to_time(frame: int, frame_rate: float) -> float:
    """Start time (s) of `frame`."""
    return round(frame / frame_rate, _TIME_DECIMALS)
