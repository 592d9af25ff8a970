"""The PocketSphinx quality gate and retry, on real (espeak-ng) speech."""

from __future__ import annotations

import json

import pytest

from lst_data.align.base import AlignFailure, Alignment, AlignRequest
from lst_data.align.pocketsphinx_backend import PocketsphinxAligner
from lst_data.config import load_config
from lst_data.text import normalize_text


@pytest.fixture(scope="module")
def utterances(demo_corpus):
    truth = json.loads((demo_corpus / "ground_truth.json").read_text(encoding="utf-8"))
    return [(str(demo_corpus / u["audio"]), u["text"], u["duration"]) for u in truth["utterances"][:3]]


def request(audio: str, text: str, duration: float) -> AlignRequest:
    return AlignRequest("u", "u", audio, tuple(normalize_text(text).words), duration)


def aligner(**pocketsphinx) -> PocketsphinxAligner:
    return PocketsphinxAligner(load_config(overrides={"align": {"pocketsphinx": pocketsphinx}}).align)


def test_gate_passes_own_transcripts_and_rejects_others_after_a_retry(utterances):
    gated = aligner()
    for i, (audio, text, duration) in enumerate(utterances):
        own = gated.align_one(request(audio, text, duration))
        assert isinstance(own, Alignment) and own.score >= gated.ps_config.min_score, own
        other = gated.align_one(request(audio, utterances[(i + 1) % len(utterances)][1], duration))
        assert isinstance(other, AlignFailure), other
        assert other.code in ("align_failed", "alignment_low_score", "alignment_unaligned_speech")
        if other.code == "align_failed":  # the wider-beam decoder tried too
            assert "with retry_beam 1e-80" in other.detail
        elif other.code == "alignment_low_score":
            assert float(other.detail.split()[1]) < gated.ps_config.min_score


def test_gate_off_gives_the_absolute_score_and_no_phone_loop(utterances):
    audio, text, duration = utterances[0]
    plain, gated = aligner(min_score=None), aligner()
    absolute = plain.align_one(request(audio, text, duration))
    relative = gated.align_one(request(audio, text, duration))
    assert plain._phone_loop is None
    # The phone loop explains the audio at least as well as the transcript does.
    assert absolute.score < 0 and relative.score > absolute.score
    assert [w.label for w in absolute.words] == [w.label for w in relative.words]
    assert plain.model_hash != gated.model_hash
