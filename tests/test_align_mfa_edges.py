"""MFA's word-edge extension (lst_data.align.mfa_edges) on a signal with known sound spans.
Needs no MFA: the alignment is what MFA gives on the demo model (onset late, end early)."""

from __future__ import annotations

import numpy as np
import pytest

from lst_data.align.base import Alignment, Interval
from lst_data.align.mfa_edges import extend_into_audible_silence

RATE = 16000


def signal_with_sound(spans: list[tuple[float, float, float]], duration: float) -> np.ndarray:
    """Noise floor at -60 dB plus sines of the given amplitude over (start, end) spans."""
    rng = np.random.default_rng(0)
    samples = rng.normal(0.0, 0.001, int(duration * RATE)).astype(np.float32)
    t = np.arange(samples.size) / RATE
    for start, end, amplitude in spans:
        inside = (t >= start) & (t < end)
        samples[inside] += amplitude * np.sin(2 * np.pi * 220 * t[inside])
    return samples


# A weak onset (-30 dB, like /dh/) 0.30-0.40 s, the vowel 0.40-0.60 s, a quiet pause, a second word.
SOUND = signal_with_sound([(0.30, 0.40, 0.03), (0.40, 0.60, 0.5), (0.90, 1.20, 0.5)], 1.5)
MFA_LIKE = Alignment(
    words=[Interval("the", 0.40, 0.55), Interval("cat", 0.90, 1.20)],
    phones=[Interval("DH", 0.40, 0.41, 0), Interval("AH1", 0.41, 0.55, 0), Interval("K", 0.90, 1.0, 1),
            Interval("AE1", 1.0, 1.1, 1), Interval("T", 1.1, 1.2, 1)],
    labelled_silences=[Interval("<eps>", 0.0, 0.40), Interval("<eps>", 0.55, 0.90), Interval("<eps>", 1.20, 1.5)],
)


def test_words_get_their_audible_edges_back_and_the_pause_stays():
    out = extend_into_audible_silence(MFA_LIKE, SOUND, RATE, 40.0, 0.15)
    (the, cat) = out.words
    assert the.start == pytest.approx(0.30, abs=0.006) and the.end == pytest.approx(0.60, abs=0.006)
    assert cat.start == pytest.approx(0.90, abs=0.006) and cat.end == pytest.approx(1.20, abs=0.006)
    assert out.phones[0].start == the.start and out.phones[1].end == the.end  # edge phones follow
    pause = [s for s in out.labelled_silences if s.start >= the.end and s.end <= cat.start]
    assert pause and pause[0].end - pause[0].start > 0.25  # the comma pause is still silence
    assert all(s.end <= w.start or s.start >= w.end for s in out.labelled_silences for w in out.words)


def test_extension_is_bounded_and_never_enters_a_neighbour():
    capped = extend_into_audible_silence(MFA_LIKE, SOUND, RATE, 40.0, 0.05)
    assert capped.words[0].start == pytest.approx(0.35, abs=1e-6)
    sound_then_quiet = signal_with_sound([(0.0, 0.95, 0.5)], 1.5)
    touching = Alignment(words=[Interval("a", 0.2, 0.5), Interval("b", 0.6, 0.9)])
    (a, b) = extend_into_audible_silence(touching, sound_then_quiet, RATE, 40.0, 0.5).words
    assert (a.start, a.end, b.start) == (0.0, 0.6, 0.6)  # the gap goes to the earlier word, no overlap
    assert b.end == pytest.approx(0.95, abs=0.006)
    assert extend_into_audible_silence(MFA_LIKE, SOUND, RATE, 40.0, 0.0) is MFA_LIKE
