"""Praat TextGrids in and out (the `textgrid` package does the file format).

Reading turns a TextGrid with a word tier (and optionally a phone tier) into an
`Alignment`: non-silence word intervals are the words, silence-labelled or empty
intervals on either tier are labelled silences, and each phone belongs to the word its
midpoint falls in. This is how MFA output (`mfa align`) and users' own TextGrids enter
the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lst_data.align.base import Alignment, Interval, is_silence_label


@dataclass(frozen=True)
class Tiers:
    words: list[Interval]  # every interval of the word tier, silences included
    phones: list[Interval] | None
    duration: float


def _pick_tier(names: Sequence[str], wanted: str | None, hint: str) -> str | None:
    if wanted is not None:
        return wanted if wanted in names else None
    return next((n for n in names if hint in n.lower()), None)


def read_tiers(path: str | Path, word_tier: str | None = None, phone_tier: str | None = None) -> Tiers:
    """Word and phone tiers of a TextGrid; raises ValueError when the word tier is missing."""
    import textgrid

    grid = textgrid.TextGrid.fromFile(str(path))
    interval_tiers = {tier.name: tier for tier in grid.tiers if isinstance(tier, textgrid.IntervalTier)}
    names = list(interval_tiers)
    word_name = _pick_tier(names, word_tier, "word") or (names[0] if names and word_tier is None else None)
    if word_name is None:
        raise ValueError(f"{Path(path).name}: no word tier {word_tier or ''!r} among tiers {names}")
    phone_name = _pick_tier([n for n in names if n != word_name], phone_tier, "phone")
    if phone_tier is not None and phone_name is None:
        raise ValueError(f"{Path(path).name}: no phone tier {phone_tier!r} among tiers {names}")

    def intervals(name: str) -> list[Interval]:
        return [Interval((i.mark or "").strip(), float(i.minTime), float(i.maxTime)) for i in interval_tiers[name]]

    return Tiers(intervals(word_name), intervals(phone_name) if phone_name else None, float(grid.maxTime))


def tiers_to_alignment(tiers: Tiers) -> Alignment:
    words = [w for w in tiers.words if not is_silence_label(w.label)]
    silences = [w for w in tiers.words if is_silence_label(w.label)]
    phones: list[Interval] = []
    for phone in tiers.phones or []:
        if is_silence_label(phone.label):
            silences.append(phone)
            continue
        middle = (phone.start + phone.end) / 2
        index = next((i for i, w in enumerate(words) if w.start <= middle <= w.end), -1)
        phones.append(Interval(phone.label, phone.start, phone.end, index))
    silences.sort(key=lambda s: (s.start, s.end))
    return Alignment(words=words, phones=phones, labelled_silences=silences)


def write_textgrid(
    path: str | Path,
    duration: float,
    words: Sequence[Interval],
    phones: Sequence[Interval] = (),
    silences: Sequence[Interval] = (),
) -> None:
    """A TextGrid with 'words' and 'phones' tiers; stretches between intervals are empty
    on the word tier and `sil` where a silence span lies (what MFA writes and Praat shows)."""
    import textgrid

    grid = textgrid.TextGrid(minTime=0.0, maxTime=duration)
    for name, intervals in (("words", words), ("phones", phones)):
        tier = textgrid.IntervalTier(name=name, minTime=0.0, maxTime=duration)
        for interval in _fill_gaps(intervals, silences, duration):
            tier.add(interval.start, interval.end, interval.label)
        grid.append(tier)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.write(str(path))


def _fill_gaps(intervals: Sequence[Interval], silences: Sequence[Interval], duration: float) -> list[Interval]:
    """`intervals` plus the stretches between them: `sil` over silence spans, empty elsewhere."""
    out: list[Interval] = []
    cursor = 0.0
    for interval in sorted(intervals, key=lambda i: i.start):
        if interval.end <= interval.start or interval.start < cursor:
            continue  # Praat cannot show empty or overlapping intervals
        out.extend(_gap(cursor, interval.start, silences))
        out.append(interval)
        cursor = interval.end
    out.extend(_gap(cursor, duration, silences))
    return out


def _gap(start: float, end: float, silences: Sequence[Interval]) -> list[Interval]:
    if end <= start:
        return []
    is_silence = any(min(end, s.end) - max(start, s.start) > 0 for s in silences)
    return [Interval("sil" if is_silence else "", start, end)]
