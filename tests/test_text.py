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
