"""Ingest settings (owned by the ingest stage)."""

from __future__ import annotations

from typing import Literal

from lst_data.core.config import Section, doc


class IngestConfig(Section):
    sample_rate: int = doc("Audio is decoded, downmixed and resampled once to this rate (Hz).", 16000, ge=8000, le=192000)
    min_duration: float = doc("Utterances shorter than this (s) are rejected as audio_too_short.", 0.3, ge=0)
    max_duration: float = doc("Utterances longer than this (s) are rejected as audio_too_long.", 60.0, gt=0, le=86400)
    max_chars_per_second: float = doc(
        "Normalized transcript characters per second above which the transcript is far too long "
        "for its audio (transcript_too_long). Read speech is about 15.",
        40.0,
        gt=0,
    )
    numbers: Literal["flag", "expand", "reject"] = doc(
        "Digits in transcripts: 'expand' writes them as the English words a reader says "
        "(num2words: cardinals, ordinals, decimals, years, percentages, times, money; see "
        "docs/ingest.md), 'flag' keeps them and marks the row, 'reject' rejects the utterance "
        "(transcript_has_digits).",
        "expand",
    )
    lowercase: bool = doc("Lower-case the normalized text.", True)
    audio_format: Literal["flac", "wav"] = doc(
        "Container for audio that had to be resampled or downmixed ('flac' or 'wav'); audio "
        "already at the target rate, mono, in wav/flac is referenced in place.",
        "flac",
    )
