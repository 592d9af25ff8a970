"""Import alignments lhotse supervisions already carry (`supervision.alignment`).

Like TextGrid import, no audio is read and nothing is trimmed: the manifest is the truth.
`align.lhotse.manifest` names the CutSet / SupervisionSet (or folder) to read, usually the
corpus itself; supervisions are matched by id. Alignment items are timed in the recording
(lhotse's convention, lst_data.lhotse_io), so the supervision's start is subtracted.
Word-tier items with silence labels (`<eps>`, `sil`, ...) and the silence tier become
labelled silences; phones are tied to the word whose span holds their midpoint.
"""

from __future__ import annotations

from pathlib import Path

from lst_data.align.base import (
    AlignFailure,
    Alignment,
    AlignRequest,
    ImportedAligner,
    Interval,
    hash_files,
    is_silence_label,
)
from lst_data.align.config import AlignConfig
from lst_data.align.textgrid_backend import lowercase_words
from lst_data.lhotse_io import Segment, read_segments


def _intervals(segment: Segment, tier: str | None) -> list[Interval]:
    items = (segment.supervision.alignment or {}).get(tier, []) if tier else []
    # Rounded to the microsecond, as aligned times are everywhere: a time that went into the recording
    # and back must land on the same frame.
    return [Interval(i.symbol, round(i.start - segment.start, 6), round(i.start + i.duration - segment.start, 6))
            for i in items]


def _word_index(phone: Interval, words: list[Interval]) -> int:
    middle = (phone.start + phone.end) / 2
    return next((k for k, w in enumerate(words) if w.start <= middle <= w.end), -1)


def segment_alignment(segment: Segment, word_tier: str, phone_tier: str | None, silence_tier: str | None) -> Alignment | None:
    tier = _intervals(segment, word_tier)
    if not tier:
        return None
    words = [i for i in tier if not is_silence_label(i.label)]
    silences = [i for i in tier if is_silence_label(i.label)] + _intervals(segment, silence_tier)
    phones = [Interval(p.label, p.start, p.end, _word_index(p, words)) for p in _intervals(segment, phone_tier)]
    return Alignment(words=words, phones=phones, labelled_silences=sorted(silences, key=lambda i: i.start))


class LhotseAligner(ImportedAligner):
    name = "lhotse"

    def __init__(self, config: AlignConfig) -> None:
        cfg = config.lhotse
        if cfg.manifest is None:
            raise ValueError("align.lhotse.manifest must name the lhotse manifest (or folder) with alignments")
        self.manifest, self.word_tier = Path(cfg.manifest), cfg.word_tier
        self.alignments: dict[str, Alignment | None] = {
            s.supervision.id: segment_alignment(s, cfg.word_tier, cfg.phone_tier, cfg.silence_tier)
            for s in read_segments(self.manifest) if isinstance(s, Segment)
        }
        self._model_hash = hash_files(extra=f"{self.manifest.resolve()}|{cfg.word_tier}|{cfg.phone_tier}|"
                                            f"{cfg.silence_tier}|{len(self.alignments)}")

    def align_one(self, request: AlignRequest) -> Alignment | AlignFailure:
        if request.id not in self.alignments:
            return AlignFailure("align_failed", f"no supervision {request.id!r} in {self.manifest}")
        alignment = self.alignments[request.id]
        if alignment is None:
            return AlignFailure("align_failed", f"supervision {request.id!r} has no {self.word_tier!r} alignment tier")
        return lowercase_words(alignment)
