"""Speech patches of a shard sample: how LST groups unit frames into global positions.

Only speech is patched; every text token is its own position. A strategy turns a sample's
frames [0, n_frames) into consecutive patches that tile them exactly, in frame order:

- ``static``: ``patch_size`` frames per patch, the last one shorter (the paper's p = 4);
- ``word_sil_sep``: one patch per word's frames, and every silence run (frames no word
  claims, `lst_data.format.frames.silence_frame_runs`) is a patch of its own ("sil sep");
- ``word_sil_merged``: silence runs join a neighbouring word ("sil merged"): a gap after
  a word extends that word's patch, and silence before the first word joins the first
  word. The preceding word is chosen so that every patch but the first starts exactly at
  a word onset (the boundary a text token also marks), and the model learns a pause as
  the tail of the word before it, where prosody puts it (phrase-final lengthening). Leading silence has no preceding word, so it
  goes to the first one. The paper does not say which neighbour it used; its average
  (9.4 = 5.8 + 3.7 x silences per word) is the same either way. An utterance with no
  word is one patch;
- ``bpe``: one patch per BPE piece's frames (`lst_data.tokenize.spans`), silence runs as
  their own patches. Silence is kept separate, not merged, so that every ``word_sil_sep``
  boundary is also a ``bpe`` boundary (pieces tile their word): BPE patching is a strict
  refinement of word patching and the two can be mixed per sequence.

Words and pieces with empty spans (no frames of their own) produce no patch. Silence is
the contract's one definition, the frames no word claims (`silence_frame_runs`), derived
here from the word spans; a valid sample's `silences` hold exactly these runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from lst_data.format.frames import FrameSpan, silence_frame_runs
from lst_data.format.records import SampleRecord

PATCH_STRATEGIES = ("static", "word_sil_sep", "word_sil_merged", "bpe")


class Patch(NamedTuple):
    """A run of `length` frames from `start`; kind is 'static', 'word', 'piece' or 'silence'."""

    start: int
    length: int
    kind: str


def patches(record: SampleRecord, strategy: str, *, patch_size: int = 4) -> list[Patch]:
    """The patches of `record` under `strategy`, in frame order, tiling [0, n_frames).

    Raises ValueError for an unknown strategy or when the record's spans do not tile its
    frames (overlapping words, pieces that do not cover their word, spans past the end).
    """
    n_frames = record.n_frames
    if strategy == "static":
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        return [Patch(s, min(patch_size, n_frames - s), "static") for s in range(0, n_frames, patch_size)]
    word_spans = [FrameSpan(w.start_frame, w.end_frame) for w in record.words]
    silences = [(run, "silence") for run in silence_frame_runs(word_spans, n_frames)]
    if strategy == "word_sil_sep":
        return _tile([*((s, "word") for s in word_spans), *silences], n_frames, record.id)
    if strategy == "word_sil_merged":
        return _merge_silences(_tile([*((s, "word") for s in word_spans), *silences], n_frames, record.id))
    if strategy == "bpe":
        if record.words and not record.bpe:
            raise ValueError(f"sample {record.id!r} has words but no BPE spans")
        pieces = [(FrameSpan(p.start_frame, p.end_frame), "piece") for p in record.bpe]
        return _tile([*pieces, *silences], n_frames, record.id)
    raise ValueError(f"unknown patch strategy {strategy!r}; known: {', '.join(PATCH_STRATEGIES)}")


def patch_lengths(record: SampleRecord, strategy: str, *, patch_size: int = 4) -> list[int]:
    """Patch lengths in frames, in frame order; they sum exactly to `record.n_frames`."""
    return [p.length for p in patches(record, strategy, patch_size=patch_size)]


def patch_boundaries(record: SampleRecord, strategy: str, *, patch_size: int = 4) -> list[int]:
    """First frame of every patch (starts at 0, strictly increasing)."""
    return [p.start for p in patches(record, strategy, patch_size=patch_size)]


def _tile(spans: Iterable[tuple[FrameSpan, str]], n_frames: int, sample_id: str) -> list[Patch]:
    """Non-empty spans as patches in frame order, checked to tile [0, n_frames) exactly."""
    result: list[Patch] = []
    cursor = 0
    for span, kind in sorted(((s, k) for s, k in spans if s.length > 0), key=lambda sk: sk[0].start):
        if span.start != cursor:
            problem = "overlaps the previous span" if span.start < cursor else "leaves a gap"
            raise ValueError(
                f"sample {sample_id!r}: {kind} span {tuple(span)} {problem} (expected start {cursor})"
            )
        result.append(Patch(span.start, span.length, kind))
        cursor = span.end + 1
    if cursor != n_frames:
        raise ValueError(
            f"sample {sample_id!r}: spans end at frame {cursor}, but the sample has {n_frames} frames"
        )
    return result


def _merge_silences(separate: list[Patch]) -> list[Patch]:
    """Silence joins the preceding word; leading silence joins the first word."""
    merged: list[Patch] = []
    leading = 0  # frames of silence seen before the first word
    for patch in separate:
        if patch.kind == "silence":
            if merged:
                last = merged[-1]
                merged[-1] = last._replace(length=last.length + patch.length)
            else:
                leading += patch.length
        elif not merged and leading:
            merged.append(Patch(0, patch.length + leading, "word"))
        else:
            merged.append(patch)
    if not merged and leading:  # no word at all: the whole utterance is one silence patch
        merged.append(Patch(0, leading, "silence"))
    return merged


def average_patch_sizes(
    records: Iterable[SampleRecord],
    *,
    strategies: Iterable[str] = PATCH_STRATEGIES,
    patch_size: int = 4,
) -> dict[str, dict[str, float | int | None]]:
    """Mean patch lengths (frames) per strategy, for the dataset summary.

    For each strategy: `mean_word_or_piece_patch` (word, piece or static patches),
    `mean_silence_patch` (None when the strategy has no silence patch), `mean_all` and
    `n_patches`. The paper's figures at 25 Hz: 5.8 word / 3.7 silence (sil sep), 9.4
    (sil merged), 5.0 (BPE), 4 (static p = 4).
    """
    strategies = tuple(strategies)
    frames: dict[str, dict[str, int]] = {s: defaultdict(int) for s in strategies}
    counts: dict[str, dict[str, int]] = {s: defaultdict(int) for s in strategies}
    for record in records:
        for strategy in strategies:
            for patch in patches(record, strategy, patch_size=patch_size):
                group = "silence" if patch.kind == "silence" else "speech"
                frames[strategy][group] += patch.length
                counts[strategy][group] += 1
    summary: dict[str, dict[str, float | int | None]] = {}
    for strategy in strategies:
        f, c = frames[strategy], counts[strategy]
        n_patches = c["speech"] + c["silence"]
        summary[strategy] = {
            "mean_word_or_piece_patch": f["speech"] / c["speech"] if c["speech"] else None,
            "mean_silence_patch": f["silence"] / c["silence"] if c["silence"] else None,
            "mean_all": (f["speech"] + f["silence"]) / n_patches if n_patches else None,
            "n_patches": n_patches,
        }
    return summary
