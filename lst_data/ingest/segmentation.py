"""Long recordings -> utterances within `ingest.max_duration`, cut at aligned pauses.

With `ingest.long_recordings = 'segment'`, a recording longer than `max_duration` is
aligned as a whole by the align stage itself (same backend, same trimming and silence
rules as every utterance), then cut in the middle of pauses of at least
`segment_min_pause`: each piece runs from one cut to the next, and the cuts are chosen
greedily, the latest pause that keeps the piece within `max_duration`. Pieces keep their
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
    """Pieces covering [0, duration] whose cuts lie in the middle of pauses >= min_pause between words.

    `words` are the aligned words ({start, end}, in order). A piece longer than `max_duration`
    is returned as it is: no pause allowed a cut inside it.
    """
    cuts = [((a["end"] + b["start"]) / 2, index + 1)
            for index, (a, b) in enumerate(zip(words, words[1:], strict=False)) if b["start"] - a["end"] >= min_pause]
    pieces: list[Piece] = []
    start, first = 0.0, 0
    while duration - start > max_duration:
        later = [c for c in cuts if c[0] > start]
        if not later:
            break
        fitting = [c for c in later if c[0] - start <= max_duration]
        at, stop = fitting[-1] if fitting else later[0]
        pieces.append(Piece(round(start, 6), round(at, 6), first, stop))
        start, first = at, stop
    pieces.append(Piece(round(start, 6), duration, first, len(words)))
    return [p for p in pieces if p.stop_word > p.first_word]
