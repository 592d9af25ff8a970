"""Spans at the utterance's edges: no word, BPE piece or silence span leaves [0, n_frames).

The real corpus that found this had a BPE piece owning no frame at the very end of the
utterance ("bpe 1 frames 14..13 outside [0, 14)"). These properties join random words,
pieces and frame counts through the shard join and hold every record to the contract the
writer enforces.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lst_data.config import load_config
from lst_data.format.contract import sample_errors
from lst_data.format.frames import word_frame_spans
from lst_data.shards.join import join_one

FRAME_RATE = 25.0
CONFIG = load_config()

# Times in ms; a third of the words are pushed onto an edge (0 or the very end).
EDGE = st.sampled_from(["start", "end", "inside", "inside"])


@st.composite
def utterance(draw):
    n_frames = draw(st.integers(1, 30))
    duration_ms = int(n_frames * 1000 / FRAME_RATE)
    n_words = draw(st.integers(1, 6))
    times = []
    for _ in range(n_words):
        edge = draw(EDGE)
        if edge == "start":
            start = end = 0
            end = draw(st.integers(0, 40))
        elif edge == "end":
            start = draw(st.integers(max(duration_ms - 40, 0), duration_ms))
            end = duration_ms
        else:
            start = draw(st.integers(0, duration_ms))
            end = draw(st.integers(start, duration_ms))
        times.append((start, end))
    times.sort()
    words = [draw(st.text("abcdefgh", min_size=1, max_size=6)) for _ in range(n_words)]
    pieces = []
    for index, word in enumerate(words):
        cuts = sorted(set(draw(st.lists(st.integers(1, max(len(word) - 1, 1)), max_size=3))) - {len(word)})
        parts = [word[a:b] for a, b in zip([0, *cuts], [*cuts, len(word)], strict=True) if word[a:b]]
        pieces += [{"id": 3, "piece": ("\u2581" if j == 0 else "") + part, "word_index": index}
                   for j, part in enumerate(parts)]
        if draw(st.booleans()):  # a lone word-start marker: no characters, no frames of its own
            pieces.insert(len(pieces) - len(parts), {"id": 4, "piece": "\u2581", "word_index": index})
    return n_frames, duration_ms / 1000, times, words, pieces


@settings(deadline=None, max_examples=300)
@given(utterance())
def test_joined_spans_stay_inside_the_frames_at_both_edges(case):
    n_frames, duration, times, words, pieces = case
    manifest = {"id": "u", "duration": duration, "normalized_text": " ".join(words), "text": " ".join(words),
                "speaker": "s", "sample_rate": 16000}
    alignment = {"words": [{"word": w, "start": s / 1000, "end": e / 1000} for w, (s, e) in zip(words, times, strict=True)],
                 "chars": None, "phones": None, "silences": [], "backend": "test", "model_hash": "h"}
    units = {"units": np.zeros(n_frames, dtype=np.int16), "frame_rate": FRAME_RATE, "n_frames": n_frames,
             "encoder": "mfcc", "layer": 0, "codebook_hash": "c", "k": 8}
    tokens = {"pieces": pieces, "tokenizer_hash": "t"}
    record = join_one(manifest, alignment, units, tokens, CONFIG)
    for tier in (record.words, record.bpe, record.silences):
        for span in tier:
            assert 0 <= span.start_frame < n_frames and span.end_frame < n_frames, span
            assert span.end_frame >= span.start_frame - 1, span
    assert sample_errors(record) == []


@given(st.integers(1, 40), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 400)), min_size=1, max_size=8))
def test_word_spans_never_start_past_the_last_frame(n_frames, starts_and_lengths):
    intervals = sorted((s / 1000, (s + d) / 1000) for s, d in starts_and_lengths)  # often far past the end
    spans = word_frame_spans(intervals, FRAME_RATE, n_frames)
    assert all(0 <= s.start < n_frames and -1 <= s.end < n_frames and s.length >= 0 for s in spans)
    owned = [f for s in spans for f in range(s.start, s.end + 1)]
    assert owned == sorted(set(owned)), "a frame belongs to at most one word, in word order"
