"""Long recordings -> utterances within `ingest.max_duration`, cut at aligned pauses.

With `ingest.long_recordings = 'segment'`, a recording longer than `max_duration` is
aligned as a whole by the align stage itself (same backend, same trimming and silence
rules as every utterance), then cut in the middle of pauses of at least
`segment_min_pause`: each piece runs from one cut to the next; a piece longer than
`max_duration` is split at its longest pause, recursively. Pieces keep their
offset into the original recording; the align step later aligns each piece again on its
own, exactly as a corpus cut by hand would be aligned. A stretch between pauses longer
than `max_duration` is rejected (segment_too_long); the other pieces still ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Piece:
    start: float  # s, in the recording
    end: float
    first_word: int
    stop_word: int  # one past the last word

    @property
    def duration(self) -> float:
        return self.end - self.start


def cut_at_pauses(words: list[dict[str, Any]], duration: float, max_duration: float, min_pause: float) -> list[Piece]:
    """Pieces covering [0, duration], cut in the middle of pauses >= min_pause between words.

    A piece longer than `max_duration` is split at its longest pause, and its halves likewise,
    so cuts fall on the most prominent pauses first (sentence ends before commas) and no piece
    is cut more than it must be. `words` are the aligned words ({start, end}, in order). A piece
    still longer than `max_duration` is returned as it is: no pause allowed a cut inside it.
    """
    pauses = [(b["start"] - a["end"], (a["end"] + b["start"]) / 2, index + 1)
              for index, (a, b) in enumerate(zip(words, words[1:], strict=False)) if b["start"] - a["end"] >= min_pause]

    def split(start: float, end: float, first: int, stop: int) -> list[Piece]:
        inside = [p for p in pauses if first < p[2] < stop]
        if end - start <= max_duration or not inside:
            return [Piece(round(start, 6), round(end, 6), first, stop)]
        _, at, word = max(inside, key=lambda p: (p[0], -abs(p[1] - (start + end) / 2)))
        return split(start, at, first, word) + split(at, end, word, stop)

    return split(0.0, duration, 0, len(words)) if words else []
