"""BPE piece frame spans (lst_data.tokenize.spans): tiers, tiling invariants, edge cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lst_data.format.frames import FrameSpan, word_frame_spans
from lst_data.tokenize.spans import bpe_frame_spans, piece_char_count
from lst_data.tokenize.tokenizer import TokenPiece

RATE = 25  # 40 ms frames


def _pieces(per_word: list[list[str]]) -> list[TokenPiece]:
    return [TokenPiece(i, p, w) for w, parts in enumerate(per_word) for i, p in enumerate(parts)]


def test_piece_char_count_ignores_markers():
    assert piece_char_count("\u2581hel") == 3
    assert piece_char_count("lo") == 2
    assert piece_char_count("\u2581") == 0
    assert piece_char_count("\u0120world") == 5  # byte-level BPE marker
    assert piece_char_count("##ing") == 3  # WordPiece continuation
    assert piece_char_count("<0xE2>") == 1


def test_character_tier_cuts_at_the_first_character_of_each_piece():
    # "hello" at 0.40-0.80 s = frames 10..19; pieces "▁he" + "llo"; 'l' (char 2) starts at 0.57 s,
    # frame floor(0.57 * 25) = 14, so "▁he" gets 10..13 and "llo" 14..19.
    chars = [
        {"char": c, "start": 0.40 + 0.085 * i, "end": 0.40 + 0.085 * (i + 1), "word_index": 0}
        for i, c in enumerate("hello")
    ]
    spans = bpe_frame_spans(
        [FrameSpan(10, 19)],
        _pieces([["\u2581he", "llo"]]),
        words=["hello"],
        chars=chars,
        phones=None,
        frame_rate=RATE,
        n_frames=30,
    )
    assert spans == [FrameSpan(10, 13), FrameSpan(14, 19)]


def test_phone_tier_shares_phones_by_character_counts():
    # "rabbit" (6 chars) -> "▁rab" (3) + "bit" (3); 5 phones r ae b ih t: the cut is at phone
    # round(3/6 * 5) = round(2.5) = 3 (halves up), i.e. 'ih' starting at 0.30 s -> frame 7.
    phones = [
        {"phone": p, "start": s, "end": e, "word_index": 0}
        for p, s, e in [("R", 0.0, 0.1), ("AE", 0.1, 0.2), ("B", 0.2, 0.3), ("IH", 0.3, 0.4), ("T", 0.4, 0.6)]
    ]
    spans = bpe_frame_spans(
        [FrameSpan(0, 14)],
        _pieces([["\u2581rab", "bit"]]),
        words=["rabbit"],
        chars=None,
        phones=phones,
        frame_rate=RATE,
        n_frames=15,
    )
    assert spans == [FrameSpan(0, 6), FrameSpan(7, 14)]


def test_frames_tier_splits_proportionally_to_characters():
    # 12 frames for "▁un" (2 chars) + "believ" (6) + "able" (4) = 12 chars: 2, 6, 4 frames.
    spans = bpe_frame_spans(
        [FrameSpan(3, 14)],
        _pieces([["\u2581un", "believ", "able"]]),
        words=["unbelievable"],
        chars=None,
        phones=None,
        frame_rate=RATE,
        n_frames=20,
    )
    assert spans == [FrameSpan(3, 4), FrameSpan(5, 10), FrameSpan(11, 14)]


def test_word_without_characters_falls_back_to_phones_then_frames():
    chars = [
        {"char": c, "start": 0.0 + 0.04 * i, "end": 0.04 * (i + 1), "word_index": 0}
        for i, c in enumerate("ab")
    ]
    phones = [
        {"phone": "X", "start": 0.2, "end": 0.28, "word_index": 1},
        {"phone": "Y", "start": 0.28, "end": 0.4, "word_index": 1},
    ]
    spans = bpe_frame_spans(
        [FrameSpan(0, 1), FrameSpan(5, 9), FrameSpan(10, 13)],
        _pieces([["\u2581a", "b"], ["\u2581c", "d"], ["\u2581e", "f"]]),
        words=["ab", "cd", "ef"],
        chars=chars,
        phones=phones,
        frame_rate=RATE,
        n_frames=14,
    )
    assert spans[:2] == [FrameSpan(0, 0), FrameSpan(1, 1)]  # chars: 'b' starts at 0.04 s
    assert spans[2:4] == [FrameSpan(5, 6), FrameSpan(7, 9)]  # phones: 'Y' starts at 0.28 s = frame 7
    assert spans[4:] == [FrameSpan(10, 11), FrameSpan(12, 13)]  # frames: 2 + 2


def test_word_with_fewer_frames_than_pieces_leaves_some_pieces_empty():
    spans = bpe_frame_spans(
        [FrameSpan(4, 5), FrameSpan(6, 5)],
        _pieces([["\u2581a", "b", "c"], ["\u2581d", "e"]]),
        words=["abc", "de"],
        chars=None,
        phones=None,
        frame_rate=RATE,
        n_frames=8,
    )
    assert spans[:3] == [FrameSpan(4, 4), FrameSpan(5, 4), FrameSpan(5, 5)]
    assert spans[3:] == [FrameSpan(6, 5), FrameSpan(6, 5)], (
        "a word with no frames gives every piece an empty span"
    )


def test_lone_marker_piece_gets_no_frames():
    spans = bpe_frame_spans(
        [FrameSpan(0, 9)],
        _pieces([["\u2581", "42"]]),
        words=["42"],
        chars=None,
        phones=None,
        frame_rate=RATE,
        n_frames=10,
    )
    assert spans == [FrameSpan(0, -1), FrameSpan(0, 9)]


def test_inconsistent_inputs_raise():
    with pytest.raises(ValueError, match="outside"):
        bpe_frame_spans(
            [FrameSpan(0, 3)],
            [TokenPiece(1, "\u2581a", 1)],
            words=["a"],
            chars=None,
            phones=None,
            frame_rate=RATE,
            n_frames=4,
        )
    with pytest.raises(ValueError, match="goes back"):
        bpe_frame_spans(
            [FrameSpan(0, 1), FrameSpan(2, 3)],
            [TokenPiece(1, "\u2581b", 1), TokenPiece(2, "\u2581a", 0)],
            words=["a", "b"],
            chars=None,
            phones=None,
            frame_rate=RATE,
            n_frames=4,
        )
    with pytest.raises(ValueError, match="word spans"):
        bpe_frame_spans(
            [FrameSpan(0, 1)], [], words=["a", "b"], chars=None, phones=None, frame_rate=RATE, n_frames=4
        )


PIECE_TEXT = st.text(alphabet="abcdefgh", min_size=0, max_size=5)


@st.composite
def aligned_utterance(draw):
    """Words with times in ms (sometimes overlapping), pieces per word, optional char/phone tiers."""
    n_words = draw(st.integers(min_value=1, max_value=8))
    n_frames = draw(st.integers(min_value=1, max_value=120))
    starts = sorted(draw(st.lists(st.integers(0, 5000), min_size=n_words, max_size=n_words)))
    intervals = [(s, s + draw(st.integers(0, 800))) for s in starts]
    per_word = [
        ["\u2581" + draw(PIECE_TEXT)] + draw(st.lists(PIECE_TEXT.filter(bool), max_size=3))
        for _ in range(n_words)
    ]
    words = ["".join(p.lstrip("\u2581") for p in parts) or "x" for parts in per_word]

    def tier(label: str):
        if not draw(st.booleans()):
            return None
        entries = []
        for w, (s, e) in enumerate(intervals):
            if draw(st.booleans()):  # this word has entries in the tier
                times = sorted(draw(st.lists(st.integers(s - 100, e + 100), min_size=2, max_size=10)))
                entries += [
                    {label: "?", "start": max(a, 0) / 1000, "end": max(b, 0) / 1000, "word_index": w}
                    for a, b in zip(times, times[1:], strict=False)
                ]
        return entries

    return intervals, per_word, words, tier("char"), tier("phone"), n_frames


@settings(deadline=None)  # a shared 2-core machine makes timings noisy
@given(aligned_utterance())
def test_pieces_tile_their_word_span_exactly(utterance):
    intervals, per_word, words, chars, phones, n_frames = utterance
    word_spans = word_frame_spans([(s / 1000, e / 1000) for s, e in intervals], RATE, n_frames)
    pieces = _pieces(per_word)
    spans = bpe_frame_spans(
        word_spans, pieces, words=words, chars=chars, phones=phones, frame_rate=RATE, n_frames=n_frames
    )
    assert len(spans) == len(pieces)
    for w, word_span in enumerate(word_spans):
        mine = [span for span, piece in zip(spans, pieces, strict=True) if piece.word_index == w]
        owning = [span for span in mine if span.length > 0]
        if word_span.length > 0:
            assert owning[0].start == word_span.start and owning[-1].end == word_span.end
        for a, b in zip(owning, owning[1:], strict=False):
            assert b.start == a.end + 1, f"word {w}: pieces {a} and {b} leave a gap or overlap"
        for a, b in zip(mine, mine[1:], strict=False):
            assert b.start >= a.start, f"word {w}: piece {b} starts before {a}"
        for span in mine:
            assert span.length >= 0, "an empty span is end = start - 1, never shorter"
            assert 0 <= span.start < n_frames and span.end < n_frames, f"{span} leaves [0, {n_frames})"
            # An empty piece sits where its frames would start, pulled back onto the last frame.
            assert word_span.start <= span.start <= min(word_span.end + 1, n_frames - 1)
        assert sum(span.length for span in mine) == max(word_span.length, 0)
