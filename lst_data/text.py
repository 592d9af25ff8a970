"""Transcript normalization shared by every stage (aligner, tokenizer, shards).

One function decides what a "word" is, so the aligner's words, the BPE pieces' words and
the words in the shard are the same list. The result is the *spoken form*: lower-case (by
default), punctuation-free, space-separated words, numbers written out. The rules, in the
order they run (docs/ingest.md has examples of each):

1. Unicode NFKC (composed: a letter and its marks stay one word); format characters (zero-width space, joiners, BOM, soft hyphen: category
   Cf) are deleted, so they never split a word; curly apostrophes become "'".
2. Non-speech annotations in brackets, parentheses, braces or angle brackets ("[beep tone]",
   "(laughs)", "<beep ascending>")
   are removed; a transcript that held nothing else is flagged `nonspeech_only`.
3. Numbers (`numbers='expand'`, the default) become words with num2words: times ("3:30"),
   money ("$5"), percentages ("50%"), ordinals ("1st"), decimals ("2.5"), years (1100-2099
   standing alone), grouped cardinals ("1,000"), digits glued to letters ("h323", "mp3":
   read digit by digit), numbers with leading zeros ("007": digit by digit), cardinals.
   'flag' keeps digits and flags `digits`; 'reject' flags them the same way (ingest rejects).
4. Hyphens, dashes, slashes and underscores separate words ("well-known" -> "well known":
   the lexicon's hyphenated entries are the concatenation of their parts' pronunciations).
   Apostrophes inside a word stay ("don't", "o'clock"), as does the possessive plural's
   ("actors'"), both as the CMU lexicon spells them; quote marks around a word go.
5. A word mixing Latin letters with look-alike letters of another script (Cyrillic "а" in
   "cаt") is kept and flagged `mixed_script`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import regex

NumberPolicy = Literal["flag", "expand", "reject"]
Normalizer = Literal["rules", "nemo"]

_ANNOTATION = re.compile(r"\[[^\[\]]*\]|\([^()]*\)|\{[^{}]*\}|<[^<>]*>")
_SPLIT = re.compile(r"[\s\-\u2010-\u2015\u2212/_]+")
# A word: letters, digits and combining marks (a Devanagari virama or vowel sign, Arabic
# harakat and Hebrew niqqud belong to their letter: Python's \w has no marks, so `regex`'s
# Unicode classes), with inner apostrophes and a possessive plural's.
_WORD = regex.compile(r"[\p{L}\p{N}\p{M}]+(?:'[\p{L}\p{N}\p{M}]+)*(?:(?<=s)'(?![\p{L}\p{N}\p{M}]))?")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_DIGIT = re.compile(r"\d")

_TIME = re.compile(r"\b(\d{1,2}):(\d{2})(?:\s?([ap])\.?m\b\.?)?", re.IGNORECASE)
_CLOCK_HOUR = re.compile(r"\b(\d{1,2})\s?([ap])\.?m\b\.?", re.IGNORECASE)
_RATIO = re.compile(r"(?<![\d:.])(\d+(?:\.\d+)?):(\d)(?![\d:])")
_MONEY = re.compile(r"([$£€¥])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"
                    r"(?:\s?(k|m|mn|bn|b|thousand|million|billion|trillion)\b)?", re.IGNORECASE)
_NEGATIVE = re.compile(r"(?<![\w.,])[-\u2212](?=\d)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_ORDINAL = re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th)\b", re.IGNORECASE)
# A decimal point is followed by a digit; a sentence's full stop after it is not one.
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d]|\.\d)")
_DECADE = re.compile(r"(?<![\w'])(?:(1[0-9]|20)|')(\d)0s\b")
_FRACTION = re.compile(r"(?<![\d/])(\d)/(\d{1,2})(?![\d/])")
# Units after a number: abbreviations a reader expands (a bare "m" is left: metres or million).
_UNITS = re.compile(r"(?<=\d)\s?(km|kg|cm|mm|mph|km/h|lbs?|°C|°F)(?![\w])", re.IGNORECASE)
_UNIT_WORDS = {"km": "kilometers", "kg": "kilograms", "cm": "centimeters", "mm": "millimeters", "mph": "miles per hour",
               "km/h": "kilometers per hour", "lb": "pounds", "lbs": "pounds", "°c": "degrees celsius",
               "°f": "degrees fahrenheit"}
_GROUPED = re.compile(r"\b(\d{1,3}(?:,\d{3})+)(?:\.(\d+))?\b")
# Currency: (one, many) of the unit and of its hundredth (None: no minor unit is spoken).
_CURRENCIES = {"$": (("dollar", "dollars"), ("cent", "cents")), "£": (("pound", "pounds"), ("penny", "pence")),
               "€": (("euro", "euros"), ("cent", "cents")), "¥": (("yen", "yen"), None)}
_SCALES = {"k": "thousand", "thousand": "thousand", "m": "million", "mn": "million", "million": "million",
           "b": "billion", "bn": "billion", "billion": "billion", "trillion": "trillion"}
_GLUED = re.compile(r"(?<=[^\W\d_])\d+|\d+(?=[^\W\d_])")
_LEADING_ZERO = re.compile(r"\b0\d+\b")
_YEAR = re.compile(r"\b(?:1[1-9]|20)\d\d\b")
_CARDINAL = re.compile(r"\d+")


@dataclass(frozen=True)
class NormalizedText:
    text: str
    flags: tuple[str, ...] = ()

    @property
    def words(self) -> list[str]:
        return self.text.split()


@functools.lru_cache(maxsize=4096)  # num2words takes ~10 us a number; transcripts repeat the same few
def _spoken(value: int | str, to: str = "cardinal") -> str:
    from num2words import num2words

    return f" {num2words(value, lang='en', to=to)} "


def _digit_by_digit(digits: str) -> str:
    return " " + " ".join(_spoken(int(d)).strip() for d in digits) + " "


def _time(match: re.Match[str]) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    half = f" {match.group(3).lower()} m " if match.group(3) else " "  # "7:05am": "seven oh five a m"
    if hours > 24 or minutes > 59:
        return _spoken(hours) + _spoken(minutes) + half
    if minutes == 0:
        return _spoken(hours) + (" o'clock " if not match.group(3) else half)
    return _spoken(hours) + (" oh" + _spoken(minutes) if minutes < 10 else _spoken(minutes)) + half


def _money(match: re.Match[str]) -> str:
    """"$5.50": five dollars and fifty cents; "£3.2bn": three point two billion pounds; "€40": forty euros."""
    (one, many), minor = _CURRENCIES[match.group(1)]
    whole, fraction, scale = int(match.group(2).replace(",", "")), match.group(3), match.group(4)
    if scale:
        return f"{_amount(match.group(2), fraction)} {_SCALES[scale.lower()]} {many} "
    if fraction and (len(fraction) != 2 or minor is None):
        return f"{_amount(match.group(2), fraction)} {many} "
    spoken = _spoken(whole) + (f" {one} " if whole == 1 else f" {many} ")
    if fraction and minor is not None and int(fraction):  # (minor is there: checked above)
        cents = int(fraction)
        spoken += " and" + _spoken(cents) + f" {minor[0] if cents == 1 else minor[1]} "
    return spoken


def _decade(match: re.Match[str]) -> str:
    """"1980s": nineteen eighties; "'90s": nineties; "1900s": nineteen hundreds; "2000s": two thousands."""
    century, decade = match.group(1), int(match.group(2))
    if century and not decade and int(century) % 10 == 0:  # "2000s": two thousands
        return f" {_spoken(int(century) * 100).strip()}s "
    tens = "hundreds" if decade == 0 else _spoken(decade * 10).strip()
    if decade:
        tens = tens[:-1] + "ies" if tens.endswith("y") else tens + "s"
    return f" {_spoken(int(century)).strip()} {tens} " if century else f" {tens} "


def _fraction(match: re.Match[str]) -> str:
    """"1/2": one half; "3/4": three quarters; "2/3": two thirds. Not a fraction when the top is not
    smaller ("24/7", "50/50" are read number by number)."""
    top, bottom = int(match.group(1)), int(match.group(2))
    if not 0 < top < bottom:
        return match.group(0).replace("/", " ")
    name = {2: "half", 4: "quarter"}.get(bottom) or _spoken(bottom, to="ordinal").strip()
    if top > 1:
        name = "halves" if name == "half" else name + "s"
    return f"{_spoken(top)} {name} "


def _decimal(whole: str, fraction: str) -> str:
    return _spoken(int(whole)) + " point " + _digit_by_digit(fraction)


def _amount(whole: str, fraction: str | None) -> str:
    """A number as read aloud: "1,250" one thousand two hundred and fifty; "3.2" three point two."""
    whole = whole.replace(",", "")
    return _decimal(whole, fraction) if fraction else _spoken(int(whole))


# (pattern, replacement) in the order they apply: each rule sees what the earlier left.
_NUMBER_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_TIME, _time),
    (_CLOCK_HOUR, lambda m: f"{_spoken(int(m.group(1)))} {m.group(2).lower()} m "),
    (_RATIO, lambda m: f" {m.group(1)} to {m.group(2)} "),
    (_MONEY, _money),
    (_NEGATIVE, lambda m: " minus "),
    (_PERCENT, lambda m: _amount(*m.group(1).partition(".")[::2]) + " percent "),
    (_UNITS, lambda m: f" {_UNIT_WORDS[m.group(1).lower()]} "),
    (_DECADE, _decade),
    (_FRACTION, _fraction),
    (_ORDINAL, lambda m: _spoken(int(m.group(1).replace(",", "")), to="ordinal")),
    (_GROUPED, lambda m: _amount(m.group(1), m.group(2))),
    (_DECIMAL, lambda m: _decimal(m.group(1), m.group(2))),
    (_GLUED, lambda m: _digit_by_digit(m.group(0))),
    (_LEADING_ZERO, lambda m: _digit_by_digit(m.group(0))),
    (_YEAR, lambda m: _spoken(int(m.group(0)), to="year")),
    (_CARDINAL, lambda m: _spoken(int(m.group(0)))),
)


def expand_numbers(text: str) -> str:
    """`text` with every digit written out as English words (the rules of step 3)."""
    for pattern, replace in _NUMBER_RULES:
        text = pattern.sub(replace, text)
    return text


def remove_format_characters(text: str) -> str:
    """Delete Unicode format characters (Cf: zero-width space and joiners, BOM, soft hyphen)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _script(ch: str) -> str:
    """The script word of a letter's Unicode name ('LATIN', 'CYRILLIC', 'GREEK', ...)."""
    return unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]


def is_mixed_script(word: str) -> bool:
    """True for a word with Latin letters and letters of another script (a look-alike)."""
    if word.isascii():  # the common case, without a Unicode name lookup per letter
        return False
    scripts = {_script(ch) for ch in word if ch.isalpha()}
    return "LATIN" in scripts and len(scripts) > 1


def normalize_text(text: str, *, lowercase: bool = True, numbers: NumberPolicy = "expand",
                   normalizer: Normalizer = "rules") -> NormalizedText:
    """The spoken form of a transcript, with flags saying what needed attention.

    `normalizer` writes out numbers and symbols (`numbers = 'expand'`): 'rules', the hand
    rules below, or 'nemo', NeMo's WFST text normaliser (the `nemo` extra), whose output
    then goes through the same word rules (and the hand rules for any digit it left)."""
    if numbers not in ("flag", "expand", "reject"):
        raise ValueError(f"numbers must be 'flag', 'expand' or 'reject', got {numbers!r}")
    if normalizer not in ("rules", "nemo"):
        raise ValueError(f"normalizer must be 'rules' or 'nemo', got {normalizer!r}")
    flags: list[str] = []
    text = remove_format_characters(unicodedata.normalize("NFKC", text)).translate(_APOSTROPHES)
    without_annotations = _ANNOTATION.sub(" ", text)
    if without_annotations != text and not _WORD.search(without_annotations):
        flags.append("nonspeech_only")
    text = without_annotations.replace("&", " and ")  # "AT&T", "R&D", "Tom & Jerry"
    if _DIGIT.search(text):
        if numbers == "expand":
            text = expand_numbers(nemo_normalize(text) if normalizer == "nemo" else text)
            flags.append("numbers_expanded")
        else:
            flags.append("digits")
    if lowercase:
        text = text.lower()
    words = [w for chunk in _SPLIT.split(text) for w in _WORD.findall(chunk)]
    if any(is_mixed_script(w) for w in words):
        flags.append("mixed_script")
    return NormalizedText(" ".join(words), tuple(flags))


@functools.cache
def _nemo_normalizer() -> Any:
    """NeMo's English text normaliser, built once per process (its grammars are cached on disk)."""
    from lst_data.core.extras import require_extra

    module = require_extra("nemo_text_processing.text_normalization.normalize", "ingest.normalizer = 'nemo'")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lst-data" / "nemo-tn"
    cache.mkdir(parents=True, exist_ok=True)
    logging.getLogger("NeMo-text-processing").setLevel(logging.WARNING)
    return module.Normalizer(input_case="cased", lang="en", cache_dir=str(cache))


def nemo_normalize(text: str) -> str:
    """`text` with numbers and symbols written out by NeMo's WFST grammars."""
    return _nemo_normalizer().normalize(text, punct_post_process=True)

