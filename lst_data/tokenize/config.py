"""Tokenizer settings (owned by the tokenize stage). The training seed is RunConfig.seed."""

from __future__ import annotations

from lst_data.core.config import Section, doc


class TokenizerConfig(Section):
    model: str | None = doc(
        "Path of a SentencePiece .model (e.g. LLaMA-2's tokenizer.model) or a Hugging Face "
        "tokenizer.json; None trains a SentencePiece BPE on the corpus's normalized transcripts.",
        None,
        names_file=True,
    )
    vocab_size: int = doc(
        "Vocabulary size when training a BPE on the corpus. A soft limit: a corpus too small "
        "for it yields fewer pieces; it must exceed the number of distinct characters + 4.",
        256,
        ge=8,
        le=1_000_000,
    )
    character_coverage: float = doc(
        "Share of the corpus's characters the trained BPE must cover (SentencePiece); rarer "
        "characters become <unk>. 1.0 keeps every character, right for one language.",
        1.0,
        gt=0,
        le=1,
    )
