"""Ingest settings (owned by the ingest stage)."""

from __future__ import annotations

from typing import Literal, get_args

from lst_data.core.config import Section, doc

Layout = Literal["auto", "mfa", "librispeech", "jsonl", "lhotse", "nemo", "hf"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


class HfColumns(Section):
    audio: str = doc("Hugging Face layout: the audio column ({bytes, path} structs, as datasets' Audio feature stores them).", "audio")
    text: str = doc("Hugging Face layout: the transcript column.", "text")
    id: str | None = doc("Hugging Face layout: the utterance id column; None names rows by their index.", "id")
    speaker: str | None = doc("Hugging Face layout: the speaker column (None, or a missing column: no speaker).", "speaker")


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
    normalizer: Literal["rules", "nemo"] = doc(
        "What writes numbers and symbols out when numbers = 'expand': 'rules' (lst_data.text's hand "
        "rules) or 'nemo' (NeMo's WFST text normaliser, the `nemo` extra); docs/ingest.md compares them.",
        "rules",
    )
    lowercase: bool = doc("Lower-case the normalized text.", True)
    audio_format: Literal["flac", "wav"] = doc(
        "Container for audio that had to be resampled or downmixed ('flac' or 'wav'); audio "
        "already at the target rate, mono, in wav/flac is referenced in place.",
        "flac",
    )
    layout: Layout = doc(
        "Corpus layout: 'auto' detects it; mfa, librispeech, jsonl (lst-data's own), lhotse (CutSet or "
        "Recording+SupervisionSet manifests), nemo (JSONL with audio_filepath/duration/text/offset), hf "
        "(datasets save_to_disk folder or parquet files). `--layout` is an alias.",
        "auto",
    )
    hf: HfColumns = doc("Column names of the Hugging Face layout.", HfColumns)
    long_recordings: Literal["reject", "segment"] = doc(
        "Utterances longer than max_duration: 'reject' (audio_too_long), or 'segment': align the whole "
        "recording with the align section's backend and cut it at aligned pauses into utterances within "
        "max_duration, each keeping its offset into the original audio (docs/interop.md).",
        "reject",
    )
    max_recording_duration: float = doc(
        "With long_recordings = 'segment': recordings longer than this (s) are still audio_too_long.",
        4 * 3600.0, gt=0, le=86400,
    )
    segment_min_pause: float = doc(
        "With long_recordings = 'segment': an aligned pause between two words must last at least this "
        "long (s) to be a cut point; the cut is at its middle.",
        0.15, gt=0, le=10,
    )
