"""Check records against the shard contract before they are written, in worker processes if asked.

The contract's check is `contract.sample_errors` (schemas/sample.v1.json, the span checks,
JSON-ability): ~0.5 ms a sample, mostly the schema validator walking the sample's JSON.
`proven_tiling` first tries to prove a record fine from its typed fields, column by column
(~20x faster); a record it cannot prove fine, bad or merely unusual, gets `sample_errors`,
so a refused record is refused with the same reasons. What the proof finds, the record's
`FrameTiling`, travels with the record (`CheckedRecord`) to the dataset summary, which
counts patches from it.

Windows of records are checked in a process pool when `workers` > 1; a window bounds the
memory held, and results come back in input order, so the output does not depend on
`workers`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from operator import attrgetter, le, sub
from typing import Any, NamedTuple

import numpy as np

from lst_data.core.rejects import Reject
from lst_data.format.contract import STAGE, frame_count_problem, sample_errors
from lst_data.format.records import (
    MAX_FRAME_RATE,
    MAX_INT,
    MAX_SAMPLE_RATE,
    MAX_SECONDS,
    BpePiece,
    SampleRecord,
    Silence,
    Word,
)

CHECK_WINDOW = 512
_FIRST_FRAMES = attrgetter("start_frame")
_LAST_FRAMES = attrgetter("end_frame")
_NEXT = (1).__add__
# schemas/sample.v1.json's `aligner` and `units` objects: field -> the plain types it may have
_ALIGNER_FIELDS = {"backend": (str,), "model_hash": (str,)}
_UNITS_FIELDS = {"encoder": (str,), "layer": (int, type(None)), "codebook_hash": (str,), "k": (int,)}

FrameRuns = tuple[Sequence[int], Sequence[int]]  # runs of frames [start, stop): their starts, their stops


class FrameTiling(NamedTuple):
    """How a record's frames [0, n_frames) split into words and silence, and into BPE pieces and
    silence: the spans that own frames, in frame order (what `patching.patches` makes patches of)."""

    n_frames: int
    words: FrameRuns
    pieces: FrameRuns
    silences: FrameRuns  # maximal runs of frames no word owns


class CheckedRecord(NamedTuple):
    """A record that passed the contract; `tiling` is set when the fast proof passed it, so its
    values are plain and read back from its shard exactly as they are here."""

    record: SampleRecord
    tiling: FrameTiling | None


def _owned_runs(firsts: Sequence[int], lasts: Sequence[int], n_frames: int) -> FrameRuns | None:
    """The spans (inclusive first..last frames) that own frames, as runs, when they lie inside
    [0, n_frames) and each starts after the one before ends; None otherwise."""
    if min(map(sub, lasts, firsts), default=0) < 0:  # some spans own no frame (last = first - 1)
        owned = [(first, last) for first, last in zip(firsts, lasts, strict=True) if last >= first]
        firsts, lasts = tuple(first for first, _ in owned), tuple(last for _, last in owned)
    if firsts and (firsts[0] < 0 or lasts[-1] >= n_frames or any(map(le, firsts[1:], lasts[:-1]))):
        return None
    return tuple(firsts), tuple(map(_NEXT, lasts))


def _union_bounds(runs: FrameRuns) -> tuple[int, ...]:
    """The frames ascending, non-overlapping runs cover, as the start and stop of each maximal block."""
    starts, stops = runs
    if not starts:
        return ()
    cuts = [(stop, start) for stop, start in zip(stops, starts[1:], strict=False) if stop != start]
    return (starts[0], *chain.from_iterable(cuts), stops[-1])


def _tiling(
    n_frames: int, words: FrameRuns | None, pieces: FrameRuns | None, words_without_bpe: bool
) -> FrameTiling | None:
    """The tiling of owned word and piece runs, when pieces tile the frames words do (so that they
    and the silence between words tile all frames)."""
    if words is None or pieces is None or words_without_bpe:
        return None
    spoken = _union_bounds(words)
    if _union_bounds(pieces) != spoken:
        return None
    gaps = (0, *spoken, n_frames)  # silence runs: before the first block, between blocks, after the last
    silences = [(start, stop) for start, stop in zip(gaps[0::2], gaps[1::2], strict=True) if start < stop]
    silence_runs = (tuple(start for start, _ in silences), tuple(stop for _, stop in silences))
    return FrameTiling(n_frames, words, pieces, silence_runs)


def frame_tiling(record: SampleRecord) -> FrameTiling | None:
    """The record's frame tiling; None when its spans do not tile its frames (then `patching.patches`
    raises for the `word_sil_sep` or `bpe` strategy) or its frame indices are not ints."""
    try:
        firsts = [tuple(map(_FIRST_FRAMES, spans)) for spans in (record.words, record.bpe)]
        lasts = [tuple(map(_LAST_FRAMES, spans)) for spans in (record.words, record.bpe)]
    except AttributeError:  # not spans at all: `patches` fails on them as it always did
        return None
    if not set(map(type, (*firsts[0], *firsts[1], *lasts[0], *lasts[1]))) <= {int}:
        return None
    n_frames = record.n_frames
    return _tiling(
        n_frames,
        _owned_runs(firsts[0], lasts[0], n_frames),
        _owned_runs(firsts[1], lasts[1], n_frames),
        bool(record.words) and not record.bpe,
    )


def _columns(spans: Sequence[Any], kind: type[NamedTuple]) -> tuple[tuple[Any, ...], ...] | None:
    """The spans' fields as columns (None unless they are a tuple or list of `kind`)."""
    if type(spans) not in (tuple, list) or not set(map(type, spans)) <= {kind}:
        return None
    return tuple(zip(*spans, strict=True)) if spans else ((),) * len(kind._fields)


def _plain_object(value: Any, fields: Mapping[str, tuple[type, ...]]) -> bool:
    """A dict of exactly `fields`, each of one of its plain types (a number inside `from_json`'s bounds)."""
    return (
        type(value) is dict
        and value.keys() == fields.keys()
        and all(type(value[name]) in types for name, types in fields.items())
        and all(abs(v) <= MAX_INT for v in value.values() if type(v) is int)
    )


def _plain_scalars(record: SampleRecord) -> bool:
    """The schema's scalars, as plain values inside `SampleRecord.from_json`'s bounds."""
    return (
        type(record.id) is str
        and type(record.text) is str
        and type(record.speaker) is str
        and (record.text_original is None or type(record.text_original) is str)
        and record.id != ""
        and record.text != ""
        and type(record.duration) is float
        and 0 < record.duration <= MAX_SECONDS
        and type(record.sample_rate) is int
        and 1 <= record.sample_rate <= MAX_SAMPLE_RATE
        and type(record.frame_rate) is float
        and 0 < record.frame_rate <= MAX_FRAME_RATE
        and type(record.units) is np.ndarray
        and record.units.dtype.kind in "iu"
        and record.units.ndim == 1
        and 1 <= record.units.shape[0] <= MAX_INT
        and _plain_object(record.aligner, _ALIGNER_FIELDS)
        and _plain_object(record.unit_info, _UNITS_FIELDS)
    )


def proven_tiling(record: SampleRecord, frame_tolerance: int) -> FrameTiling | None:
    """The record's frame tiling when it is proven that `contract.sample_errors` finds nothing in it.

    Proven when its values are plain (`str`, `int`, finite `float` seconds and rates, the
    schema's types and what `SampleRecord.from_json` reads back unchanged: JSON-able),
    it meets the schema beyond types (non-empty id, text and words, at least one frame, k
    >= 1) and `record_problems`' checks (frame count, unit ids below k, spans inside the
    frames and ascending, words that are the text, spans that tile the frames). None
    otherwise, for bad records and for some fine ones.
    """
    if not _plain_scalars(record):
        return None
    n_frames, k = record.n_frames, record.unit_info["k"]
    if k < 1 or frame_count_problem(n_frames, record.duration, record.frame_rate, frame_tolerance) is not None:
        return None
    if not (0 <= record.units.min() and record.units.max() < k):
        return None
    words, bpe = _columns(record.words, Word), _columns(record.bpe, BpePiece)
    silences = _columns(record.silences, Silence)
    if words is None or bpe is None or silences is None:
        return None
    text_words, word_starts, word_ends, word_firsts, word_lasts = words
    piece_ids, pieces, word_indices, piece_firsts, piece_lasts = bpe
    silence_starts, silence_ends, silence_firsts, silence_lasts, rules = silences
    seconds = word_starts + word_ends + silence_starts + silence_ends
    firsts, lasts = word_firsts + piece_firsts + silence_firsts, word_lasts + piece_lasts + silence_lasts
    values_fine = (
        set(map(type, text_words + pieces + rules)) <= {str}
        and all(text_words)
        and set(map(type, seconds)) <= {float}
        and math.isfinite(sum(seconds))  # a NaN or an infinity makes the sum one
        and (not seconds or (0 <= min(seconds) and max(seconds) <= MAX_SECONDS))
        and set(map(type, firsts + lasts + piece_ids + word_indices)) <= {int}
        and (not firsts or (0 <= min(firsts) and max(firsts) < n_frames and max(lasts) < n_frames))
        and min(map(sub, lasts, firsts), default=0) >= -1  # a span that owns no frame ends one before it starts
        and min(silence_lasts, default=0) >= 0
        and (not piece_ids or (0 <= min(piece_ids) and max(piece_ids) <= MAX_INT))
        and (not word_indices or (0 <= min(word_indices) and max(word_indices) < len(text_words)))
        and record.text.split() == list(text_words)
    )
    if not values_fine or _owned_runs(silence_firsts, silence_lasts, n_frames) is None:
        return None
    return _tiling(
        n_frames,
        _owned_runs(word_firsts, word_lasts, n_frames),
        _owned_runs(piece_firsts, piece_lasts, n_frames),
        bool(text_words) and not piece_ids,
    )


def check_record(record: SampleRecord, frame_tolerance: int) -> tuple[FrameTiling | None, list[str]]:
    """(its tiling when proven fine, else None; why `record` may not be written, `contract.sample_errors`)."""
    tiling = proven_tiling(record, frame_tolerance)
    return (tiling, []) if tiling is not None else (None, sample_errors(record, frame_tolerance))


@contextlib.contextmanager
def check_pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """A process pool of `workers` (None for 1: check in this process)."""
    if workers <= 1:
        yield None
        return
    # spawn, not fork: the caller may hold threads (Ray, progress bars); a worker that dies
    # raises BrokenProcessPool instead of hanging the job
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def checked_records(
    records: Iterable[SampleRecord | Reject],
    rejects: list[Reject],
    frame_tolerance: int,
    pool: concurrent.futures.Executor | None,
) -> Iterator[CheckedRecord]:
    """Records that pass schemas/sample.v1.json and the span checks of `lst-data validate`.

    Incoming rejects and records that fail (code `invalid_record`) are appended to `rejects`.
    """
    check = functools.partial(check_record, frame_tolerance=frame_tolerance)
    window: list[SampleRecord] = []

    def checked() -> Iterator[CheckedRecord]:
        results = pool.map(check, window, chunksize=16) if pool is not None else map(check, window)
        for record, (tiling, errors) in zip(window, results, strict=True):
            if errors:
                rejects.append(Reject(record.id, STAGE, "invalid_record", "; ".join(errors[:3])))
            else:
                yield CheckedRecord(record, tiling)
        window.clear()

    for item in records:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        window.append(item)
        if len(window) >= CHECK_WINDOW:
            yield from checked()
    yield from checked()

