from hypothesis import given
from hypothesis import strategies as st

from lst_data.text import normalize_text


def test_punctuation_case_and_apostrophes():
    assert normalize_text("Hello, World!  It\u2019s 'quoted' -- well-known.").text == "hello world it's quoted well known"


def test_digits_flagged_or_expanded():
    flagged = normalize_text("Room 101, please", numbers="flag")
    assert flagged.text == "room 101 please" and flagged.flags == ("digits",)
    expanded = normalize_text("Room 101, please")
    assert expanded.text == "room one hundred and one please" and expanded.flags == ("numbers_expanded",)


def test_keeps_case_when_asked_and_non_english_letters():
    assert normalize_text("Café Über", lowercase=False).text == "Café Über"


@given(st.text(max_size=80))
def test_normalized_text_is_idempotent_and_clean(text):
    once = normalize_text(text).text
    assert normalize_text(once).text == once
    assert "  " not in once and once == once.strip()
    assert not any(ch in once for ch in ",.!?;:\"")


# ---- the rules of docs/ingest.md, by example and as properties

import re  # noqa: E402

import pytest  # noqa: E402
from num2words import num2words  # noqa: E402

from lst_data.text import is_mixed_script  # noqa: E402

RULE_EXAMPLES = [
    ("Press 1, 2 or 323.", "press one two or three hundred and twenty three"),
    ("the 1st and 22nd", "the first and twenty second"),
    ("at 3:30, 3:00 or 3:05", "at three thirty three o'clock or three oh five"),
    ("2.5 and 50% and 12.5%", "two point five and fifty percent and twelve point five percent"),
    ("in 1999 and 2024", "in nineteen ninety nine and twenty twenty four"),
    ("h323 and mp3", "h three two three and mp three"),
    ("call 007", "call zero zero seven"),
    ("1,000,000 people", "one million people"),
    ("$5.25 and $1", "five dollars and twenty five cents and one dollar"),
    ("hello (laughs) world [noise] <beep ascending> {cough}", "hello world"),
    ("zero\u200bwidth \ufeffbom soft\u00adhyphen", "zerowidth bom softhyphen"),
    ("well-known actors' don't 'quoted'", "well known actors' don't quoted"),
]


@pytest.mark.parametrize(("raw", "spoken"), RULE_EXAMPLES)
def test_documented_rule_examples(raw, spoken):
    assert normalize_text(raw).text == spoken


def test_annotation_only_transcripts_are_flagged_and_look_alikes_flagged():
    assert normalize_text("[beep tone]").flags == ("nonspeech_only",)
    assert normalize_text("(laughs) [beep]").text == ""
    assert "mixed_script" in normalize_text("the c\u0430t sat").flags  # Cyrillic a
    assert "mixed_script" not in normalize_text("naïve Ελλάδα мир").flags  # whole words of one script each


LATIN_WORDS = st.lists(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), min_size=1, max_size=6)


@given(LATIN_WORDS, st.data())
def test_format_characters_never_split_a_word(words, data):
    spoken = " ".join(words)
    noisy = []
    for word in words:
        at = data.draw(st.integers(0, len(word)))
        mark = data.draw(st.sampled_from(["\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2060"]))
        noisy.append(word[:at] + mark + word[at:])
    assert normalize_text(" ".join(noisy)).text == spoken


@given(LATIN_WORDS, st.text(alphabet=st.characters(blacklist_characters="[]()<>{}"), max_size=20), st.integers(0, 5))
def test_bracketed_annotations_vanish_wherever_they_are(words, annotation, position):
    position = min(position, len(words))
    with_note = [*words[:position], f"[{annotation}]", *words[position:]]
    assert normalize_text(" ".join(with_note)).text == " ".join(words)


@given(st.integers(0, 10**12))
def test_any_integer_becomes_words_only(number):
    result = normalize_text(f"pay {number} now")
    assert not re.search(r"\d", result.text)
    assert result.words[0] == "pay" and result.words[-1] == "now"
    if not (1100 <= number <= 2099) and not str(number).startswith("0"):
        expected = normalize_text(num2words(number, lang="en"), numbers="flag").text
        assert result.text == f"pay {expected} now"


@given(st.integers(1, 10**6))
def test_ordinals_are_num2words_ordinals(number):
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    expected = normalize_text(num2words(number, lang="en", to="ordinal"), numbers="flag").text
    assert normalize_text(f"the {number}{suffix} time").text == f"the {expected} time"


@given(st.text(max_size=60))
def test_spoken_form_has_no_digits_format_characters_or_brackets(text):
    result = normalize_text(text)
    assert not re.search(r"\d", result.text)
    assert not any(ch in result.text for ch in "[](){}<>-\u200b\ufeff")
    for word in result.words:
        assert not word.startswith("'"), word


@given(LATIN_WORDS, st.integers(0, 5), st.sampled_from(["\u0430", "\u0435", "\u043e", "\u03bf"]))
def test_a_lookalike_inside_a_latin_word_is_flagged(words, which, lookalike):
    word = "x" + words[min(which, len(words) - 1)] + "a"  # a Latin letter stays beside the look-alike
    spoofed = re.sub("[aeo]", lookalike, word, count=1)
    assert is_mixed_script(spoofed) and not is_mixed_script(word)
