"""Frame spans of BPE pieces: every piece gets a share of its word's frames.

The shard contract gives each word an inclusive frame span (lst_data.format.frames). A word's
pieces split that span among themselves: they tile it exactly (no gap, no overlap, in
order), so BPE-aligned patches refine word-aligned ones and never cross a word boundary.

Where the cut between two pieces falls comes from the finest tier the aligner produced
for that word:

1. characters ({char, start, end, word_index}): the cut before a piece is the start of
   its first character, so a piece covers [its first character's start, the next piece's
   first character's start) — the time->frame rule's floor applied to the piece's onset;
2. phones ({phone, start, end, word_index}): the word's phones are shared among its
   pieces in proportion to the pieces' character counts, and the cut is the start of the
   first phone that falls to the next piece;
3. frames only: the word's frames are shared in proportion to character counts.

A tier is used for a word only when it has entries for that word, so a word the
character aligner skipped still falls back to phones or frames. Character positions map
onto a tier's entries proportionally (position * entries / characters, rounded half up),
which is exact when the aligner's characters are the word's characters and degrades
gracefully when they differ (an aligner that drops apostrophes, byte-fallback pieces).
Cuts are clamped into the word's span and kept non-decreasing; a piece whose cuts
coincide gets an empty span (end = start - 1, never starting past the last frame), which happens when a word has fewer frames
(or phones) than pieces, or for a lone word-start marker piece ("▁"), which has no
characters and hence no sound of its own.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from lst_data.format.frames import FrameSpan, empty_span, time_to_frame_span
from lst_data.tokenize.tokenizer import TokenPiece

# Word-start markers of SentencePiece ("▁") and byte-level BPE ("Ġ"); WordPiece marks
# continuations instead ("##"). None of them is a character of the word.
_WORD_START_MARKERS = "\u2581\u0120"
_CONTINUATION_MARKER = "##"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def piece_char_count(piece: str) -> int:
    """How many characters of its word a piece stands for (markers excluded).

    A byte-fallback piece (`<0xE2>`) counts as one character: a multi-byte character
    split into bytes is then slightly over-weighted, which only nudges a proportional cut.
    """
    if piece.startswith("<0x") and _BYTE_PIECE.fullmatch(piece):
        return 1
    return len(piece.lstrip(_WORD_START_MARKERS).removeprefix(_CONTINUATION_MARKER))


def bpe_frame_spans(
    word_spans: Sequence[FrameSpan],
    pieces: Sequence[TokenPiece],
    *,
    words: Sequence[str],
    chars: Sequence[Mapping] | None,
    phones: Sequence[Mapping] | None,
    frame_rate: float,
    n_frames: int,
) -> list[FrameSpan]:
    """One frame span per piece (same order), tiling each word's span among its pieces.

    Raises ValueError when the inputs disagree (piece word indices out of range or out of
    order, words and spans of different lengths): the caller turns that into a reject.
    """
    if len(word_spans) != len(words):
        raise ValueError(f"{len(word_spans)} word spans for {len(words)} words")
    piece_indices = _pieces_by_word(pieces, len(words))
    chars_by_word = _intervals_by_word(chars)
    phones_by_word = _intervals_by_word(phones)
    spans: list[FrameSpan] = [FrameSpan(0, -1)] * len(pieces)
    for word_index, indices in piece_indices.items():
        word_span = word_spans[word_index]
        weights = [piece_char_count(pieces[i].piece) for i in indices]
        cuts = _cuts(
            word_span,
            weights,
            chars_by_word.get(word_index) or phones_by_word.get(word_index),
            frame_rate,
            n_frames,
        )
        for i, first, next_first in zip(indices, cuts, cuts[1:], strict=False):
            spans[i] = FrameSpan(first, next_first - 1) if next_first > first else empty_span(first, n_frames)
    return spans


def _pieces_by_word(pieces: Sequence[TokenPiece], n_words: int) -> dict[int, list[int]]:
    by_word: dict[int, list[int]] = defaultdict(list)
    previous = -1
    for i, piece in enumerate(pieces):
        if not 0 <= piece.word_index < n_words:
            raise ValueError(
                f"piece {i} ({piece.piece!r}) has word_index {piece.word_index} outside 0..{n_words - 1}"
            )
        if piece.word_index < previous:
            raise ValueError(
                f"piece {i} ({piece.piece!r}) goes back from word {previous} to {piece.word_index}"
            )
        previous = piece.word_index
        by_word[piece.word_index].append(i)
    return by_word


def _intervals_by_word(entries: Sequence[Mapping] | None) -> dict[int, list[float]]:
    """word index -> sorted start times of that word's characters or phones."""
    starts: dict[int, list[float]] = defaultdict(list)
    for entry in entries or ():
        if entry.get("word_index") is None:  # silence phones belong to no word
            continue
        starts[int(entry["word_index"])].append(float(entry["start"]))
    return {word: sorted(times) for word, times in starts.items()}


def _cuts(
    word_span: FrameSpan,
    weights: Sequence[int],
    tier_starts: Sequence[float] | None,
    frame_rate: float,
    n_frames: int,
) -> list[int]:
    """Frame where each piece starts, plus one past the word's end: len(weights) + 1 cuts."""
    total = sum(weights)
    if total == 0:  # only markers: share evenly rather than divide by zero
        weights, total = [1] * len(weights), len(weights)
    lo, hi = word_span.start, word_span.end + 1
    cuts = [lo]
    consumed = 0
    for weight in weights[:-1]:
        consumed += weight
        if tier_starts:
            entry = _round_half_up(consumed * len(tier_starts), total)
            if entry >= len(tier_starts):
                cut = hi
            else:
                cut = time_to_frame_span(tier_starts[entry], tier_starts[entry], frame_rate, n_frames).start
                cut = lo if entry == 0 else cut
        else:
            cut = lo + _round_half_up(consumed * (hi - lo), total)
        cuts.append(min(max(cut, cuts[-1]), hi))
    cuts.append(hi)
    return cuts


def _round_half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves up, in exact integer arithmetic."""
    return (2 * numerator + denominator) // (2 * denominator)
