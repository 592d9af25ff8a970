"""The per-sample contract checks, shared by the writer (before writing) and `lst-data validate`.

Kept free of webdataset/torch imports: the writer runs these in worker processes.
"""

from __future__ import annotations

import json

from lst_data.frames import frames_for_duration
from lst_data.patching import patches
from lst_data.records import SampleRecord
from lst_data.core.schemas import validation_errors

DEFAULT_FRAME_TOLERANCE = 2


def record_problems(record: SampleRecord, frame_tolerance: int = DEFAULT_FRAME_TOLERANCE) -> list[str]:
    """Contract violations of one decoded record (the JSON schema is checked separately)."""
    n = record.n_frames
    problems = []
    expected = frames_for_duration(record.duration, record.frame_rate)
    if abs(n - expected) > frame_tolerance:
        problems.append(f"{n} units for {record.duration:.3f} s (expected {expected} +- {frame_tolerance})")
    k = record.unit_info.get("k")
    if n and isinstance(k, int) and (record.units.min() < 0 or record.units.max() >= k):
        problems.append(f"unit ids outside [0, {k})")
    for tier, spans in (("word", record.words), ("bpe", record.bpe), ("silence", record.silences)):
        previous_end = -1
        for i, span in enumerate(spans):
            empty = span.end_frame == span.start_frame - 1
            if (
                span.start_frame < 0
                or span.start_frame >= n
                or span.end_frame >= n
                or (span.end_frame < span.start_frame and not empty)
            ):
                problems.append(f"{tier} {i} frames {span.start_frame}..{span.end_frame} outside [0, {n})")
            elif not empty and span.start_frame <= previous_end:
                problems.append(f"{tier} {i} starts at frame {span.start_frame}, not after {previous_end}")
            if not empty:
                previous_end = max(previous_end, span.end_frame)
    for i, piece in enumerate(record.bpe):
        if not 0 <= piece.word_index < len(record.words):
            problems.append(f"bpe {i} word_index {piece.word_index} outside the {len(record.words)} words")
    if record.text.split() != [w.word for w in record.words]:
        problems.append("text is not the words joined by spaces")
    if not problems:
        for strategy in ("word_sil_sep", "bpe"):
            try:
                patches(record, strategy)
            except ValueError as err:
                problems.append(f"{strategy} spans do not tile the frames: {err}")
    return problems


def sample_errors(record: SampleRecord, frame_tolerance: int = DEFAULT_FRAME_TOLERANCE) -> list[str]:
    """Why `record` may not be written: schemas/sample.v1.json, then the span checks, then JSON-ability."""
    data = record.to_json()
    try:
        json.dumps(data, allow_nan=False)
    except ValueError as err:  # NaN or infinity has no JSON form
        return [str(err)]
    return validation_errors(data, "sample") or record_problems(record, frame_tolerance)
