"""Corpus readers: turn a corpus on disk into `CorpusEntry` rows (no audio is decoded here)."""

from lst_data.corpus.readers import (
    CorpusEntry,
    detect_layout,
    read_corpus,
    read_jsonl,
    read_librispeech,
    read_mfa_layout,
)

__all__ = ["CorpusEntry", "detect_layout", "read_corpus", "read_jsonl", "read_librispeech", "read_mfa_layout"]
