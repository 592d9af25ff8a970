"""Transcript normalization shared by every stage (aligner, tokenizer, shards).

One function decides what a "word" is, so the aligner's words, the BPE pieces' words and
the words in the shard are the same list. Normalized text is lower-case (by default),
punctuation-free, space-separated words; apostrophes inside words stay (don't, o'clock).
Digits are kept and flagged, expanded to English words, or rejected, by config.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_SPLIT = re.compile(r"[\s\-\u2010-\u2015/_]+")
# A word: letters, digits and marks, with inner apostrophes.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


@dataclass(frozen=True)
class NormalizedText:
    text: str
    flags: tuple[str, ...] = ()

    @property
    def words(self) -> list[str]:
        return self.text.split()


def _expand_number(match: re.Match[str]) -> str:
    from num2words import num2words

    token = match.group(0).replace(",", "")
    try:
        return " " + num2words(float(token) if "." in token else int(token), lang="en") + " "
    except (ValueError, OverflowError):
        return " " + " ".join(num2words(int(d), lang="en") for d in token if d.isdigit()) + " "


def normalize_text(text: str, *, lowercase: bool = True, numbers: str = "flag") -> NormalizedText:
    """Normalize a transcript; `numbers` is 'flag', 'expand' or 'reject' (flagged the same way)."""
    if numbers not in ("flag", "expand", "reject"):
        raise ValueError(f"numbers must be 'flag', 'expand' or 'reject', got {numbers!r}")
    flags: list[str] = []
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    if _DIGITS.search(text):
        if numbers == "expand":
            text = _DIGITS.sub(_expand_number, text)
            flags.append("numbers_expanded")
        else:
            flags.append("digits")
    if lowercase:
        text = text.lower()
    words = [w for chunk in _SPLIT.split(text) for w in _WORD.findall(chunk)]
    words = [w.replace(" ", "") for w in words]
    return NormalizedText(" ".join(words), tuple(flags))
