"""Patching strategies (lst_data.format.patching) on hand-made and generated shard samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lst_data.format.frames import FrameSpan, frame_to_time, silence_frame_runs, word_frame_spans
from lst_data.format.patching import (
    PATCH_STRATEGIES,
    average_patch_sizes,
    patch_boundaries,
    patch_lengths,
    patches,
)
from lst_data.format.records import BpePiece, SampleRecord, Word
from lst_data.tokenize.spans import bpe_frame_spans
from lst_data.tokenize.tokenizer import TokenPiece

RATE = 25.0


def make_record(
    n_frames: int, word_spans: list[FrameSpan], piece_spans: list[tuple[int, FrameSpan]] = ()
) -> SampleRecord:
    """A sample with the given word and piece frame spans (times follow from the frames)."""
    words = tuple(
        Word(f"w{k}", frame_to_time(s.start, RATE), frame_to_time(s.end + 1, RATE), s.start, s.end)
        for k, s in enumerate(word_spans)
    )
    bpe = tuple(BpePiece(i, f"p{i}", w, s.start, s.end) for i, (w, s) in enumerate(piece_spans))
    return SampleRecord(
        id="utt",
        text=" ".join(w.word for w in words),
        speaker="spk",
        duration=n_frames / RATE,
        sample_rate=16000,
        frame_rate=RATE,
        units=np.zeros(n_frames, dtype=np.int16),
        words=words,
        bpe=bpe,
        silences=(),
    )


# 20 frames: silence 0-1, word 2-5, word 6-9, silence 10-12, word 13-17, silence 18-19.
EXAMPLE = make_record(
    20,
    [FrameSpan(2, 5), FrameSpan(6, 9), FrameSpan(13, 17)],
    [
        (0, FrameSpan(2, 3)),
        (0, FrameSpan(4, 5)),
        (1, FrameSpan(6, 9)),
        (2, FrameSpan(13, 13)),
        (2, FrameSpan(14, 17)),
    ],
)


def test_static_patches_are_fixed_size_with_a_short_last_one():
    assert patch_lengths(EXAMPLE, "static") == [4, 4, 4, 4, 4]
    assert patch_lengths(make_record(22, []), "static") == [4, 4, 4, 4, 4, 2]
    assert patch_lengths(make_record(22, []), "static", patch_size=5) == [5, 5, 5, 5, 2]
    assert patch_boundaries(make_record(22, []), "static") == [0, 4, 8, 12, 16, 20]


def test_word_patches_with_separate_silences():
    assert patch_lengths(EXAMPLE, "word_sil_sep") == [2, 4, 4, 3, 5, 2]
    assert [p.kind for p in patches(EXAMPLE, "word_sil_sep")] == [
        "silence",
        "word",
        "word",
        "silence",
        "word",
        "silence",
    ]


def test_merged_silence_joins_the_previous_word_and_leading_silence_the_first():
    assert patch_lengths(EXAMPLE, "word_sil_merged") == [6, 7, 7]
    assert patch_boundaries(EXAMPLE, "word_sil_merged") == [0, 6, 13]


def test_bpe_patches_one_per_piece_with_separate_silences():
    assert patch_lengths(EXAMPLE, "bpe") == [2, 2, 2, 4, 3, 1, 4, 2]


def test_empty_words_and_pieces_make_no_patch():
    record = make_record(
        6,
        [FrameSpan(0, 2), FrameSpan(3, 2), FrameSpan(3, 5)],
        [(0, FrameSpan(0, 2)), (1, FrameSpan(3, 2)), (2, FrameSpan(3, 2)), (2, FrameSpan(3, 5))],
    )
    assert patch_lengths(record, "word_sil_sep") == [3, 3]
    assert patch_lengths(record, "bpe") == [3, 3]


def test_utterance_without_words_is_one_silence_patch():
    record = make_record(9, [])
    for strategy in ("word_sil_sep", "word_sil_merged", "bpe"):
        assert patches(record, strategy) == [(0, 9, "silence")]


def test_spans_that_do_not_tile_the_frames_are_an_error():
    overlapping = make_record(10, [FrameSpan(0, 5), FrameSpan(4, 9)])
    with pytest.raises(ValueError, match="overlaps"):
        patch_lengths(overlapping, "word_sil_sep")
    past_end = make_record(10, [FrameSpan(0, 12)])
    with pytest.raises(ValueError, match="10 frames"):
        patch_lengths(past_end, "word_sil_sep")
    pieces_short_of_word = make_record(10, [FrameSpan(0, 9)], [(0, FrameSpan(0, 4))])
    with pytest.raises(ValueError, match="end at frame 5"):
        patch_lengths(pieces_short_of_word, "bpe")
    pieces_with_a_gap = make_record(10, [FrameSpan(0, 9)], [(0, FrameSpan(0, 3)), (0, FrameSpan(5, 9))])
    with pytest.raises(ValueError, match="leaves a gap"):
        patch_lengths(pieces_with_a_gap, "bpe")
    with pytest.raises(ValueError, match="no BPE"):
        patch_lengths(make_record(10, [FrameSpan(0, 9)]), "bpe")
    with pytest.raises(ValueError, match="unknown patch strategy"):
        patch_lengths(EXAMPLE, "bytes")


def test_average_patch_sizes_of_the_example():
    summary = average_patch_sizes([EXAMPLE, EXAMPLE])
    assert set(summary) == set(PATCH_STRATEGIES)
    assert summary["word_sil_sep"] == {
        "mean_word_or_piece_patch": 13 / 3,
        "mean_silence_patch": 7 / 3,
        "mean_all": 20 / 6,
        "n_patches": 12,
    }
    assert summary["word_sil_merged"] == {
        "mean_word_or_piece_patch": 20 / 3,
        "mean_silence_patch": None,
        "mean_all": 20 / 3,
        "n_patches": 6,
    }
    assert summary["bpe"]["mean_word_or_piece_patch"] == 13 / 5
    assert summary["static"]["mean_all"] == 4.0 and summary["static"]["n_patches"] == 10


@st.composite
def generated_record(draw) -> SampleRecord:
    n_frames = draw(st.integers(min_value=1, max_value=150))
    n_words = draw(st.integers(min_value=0, max_value=10))
    starts = sorted(draw(st.lists(st.integers(0, 7000), min_size=n_words, max_size=n_words)))
    intervals = [(s / 1000, (s + draw(st.integers(0, 900))) / 1000) for s in starts]
    word_spans = word_frame_spans(intervals, RATE, n_frames)
    per_word = [draw(st.integers(min_value=1, max_value=4)) for _ in range(n_words)]
    pieces = [
        TokenPiece(
            0, "\u2581" + "a" * draw(st.integers(0, 4)) if i == 0 else "b" * draw(st.integers(1, 4)), w
        )
        for w, n in enumerate(per_word)
        for i in range(n)
    ]
    words = [
        "".join(p.piece.lstrip("\u2581") for p in pieces if p.word_index == w) or "x" for w in range(n_words)
    ]
    piece_spans = bpe_frame_spans(
        word_spans, pieces, words=words, chars=None, phones=None, frame_rate=RATE, n_frames=n_frames
    )
    return make_record(
        n_frames, word_spans, [(p.word_index, s) for p, s in zip(pieces, piece_spans, strict=True)]
    )


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(generated_record(), st.sampled_from(PATCH_STRATEGIES), st.integers(min_value=1, max_value=8))
def test_patch_lengths_are_positive_and_sum_to_n_frames(record, strategy, patch_size):
    lengths = patch_lengths(record, strategy, patch_size=patch_size)
    assert all(length > 0 for length in lengths)
    assert sum(lengths) == record.n_frames
    boundaries = patch_boundaries(record, strategy, patch_size=patch_size)
    assert boundaries == [sum(lengths[:i]) for i in range(len(lengths))]


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(generated_record())
def test_aligned_boundaries_are_word_and_silence_boundaries(record):
    word_starts = {w.start_frame for w in record.words if w.n_frames > 0}
    silence_starts = {
        run.start
        for run in silence_frame_runs(
            [FrameSpan(w.start_frame, w.end_frame) for w in record.words], record.n_frames
        )
    }
    sep = set(patch_boundaries(record, "word_sil_sep"))
    assert sep == word_starts | silence_starts
    merged = set(patch_boundaries(record, "word_sil_merged"))
    assert merged == {0} | (word_starts - {min(word_starts, default=None)})
    bpe = set(patch_boundaries(record, "bpe"))
    assert sep <= bpe, "BPE patches refine word patches: every word/silence boundary is a piece boundary"
    assert len(bpe) == len(sep) + sum(1 for p in record.bpe if p.n_frames > 0) - len(word_starts)
