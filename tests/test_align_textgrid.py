"""TextGrid import and the MFA backend's pure parts, on real MFA output
(/work/shared/fixtures/mfa: `mfa align` / `mfa align_one` TextGrids with empty and <eps>
silences). MFA itself runs in tests/test_align_mfa.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lst_data.align.base import AlignFailure, Alignment, AlignRequest, OovWord
from lst_data.align.config import AlignConfig, TextGridConfig
from lst_data.align.mfa_backend import collect_batch_output, parse_worker_response, write_batch_corpus
from lst_data.align.stage import AlignStage

MFA_FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "mfa"
# Words of each fixture, as read in Praat (the expected values are not produced by our reader).
FIXTURE_TEXT = {
    "mfa_align_one_spk_us_000": "the quick brown fox jumps over the lazy dog",
    "mfa_align_spk_f3_003": "six spoons of fresh snow peas",
    "mfa_align_spk_gb_002": "please call stella and ask her to bring these things with her from the store",
    "mfa_align_spk_rp_005": "the birch canoe slid on the smooth planks",
    "mfa_align_spk_us_001": "she sells sea shells by the sea shore",
}
DURATIONS = {"mfa_align_one_spk_us_000": 4.56994, "mfa_align_spk_f3_003": 3.258625, "mfa_align_spk_gb_002": 7.66,
             "mfa_align_spk_rp_005": 3.935188, "mfa_align_spk_us_001": 3.878063}

pytestmark = pytest.mark.skipif(not MFA_FIXTURES.is_dir(), reason=f"MFA fixtures not found at {MFA_FIXTURES}")


def rows(texts: dict[str, str] = FIXTURE_TEXT) -> list[dict]:
    return [
        {"id": utt, "key": utt, "audio_path": f"/nonexistent/{utt}.wav", "duration": DURATIONS[utt],
         "speaker": utt.split("_")[-2], "normalized_text": text}
        for utt, text in texts.items()
    ]


def textgrid_stage(directory: Path, **tiers) -> AlignStage:
    return AlignStage(AlignConfig(backend="textgrid", textgrid=TextGridConfig(directory=str(directory), **tiers)))


def test_imports_real_mfa_textgrids():
    result = textgrid_stage(MFA_FIXTURES).process_batch(rows())
    assert result.rejects == []
    by_id = {r["id"]: r for r in result.rows}
    assert {utt: " ".join(w["word"] for w in r["words"]) for utt, r in by_id.items()} == FIXTURE_TEXT

    six = by_id["mfa_align_spk_f3_003"]
    assert [(w["start"], w["end"]) for w in six["words"][:2]] == [(0.33, 0.39), (0.79, 1.2)]
    assert [(p["phone"], p["word_index"]) for p in six["phones"][:6]] == [
        ("S", 0), ("IH1", 0), ("K", 0), ("S", 0), ("S", 1), ("P", 1)]
    # Every empty interval of the word tier is a labelled silence, edges included.
    assert [(s["start"], s["end"], s["rule"]) for s in six["silences"]] == [
        (0.0, 0.33, "label"), (0.39, 0.79, "label"), (1.2, 1.28, "label"), (1.46, 1.63, "label"),
        (1.93, 2.08, "label"), (2.26, 2.55, "label"), (2.83, 3.258625, "label")]
    assert six["backend"] == "textgrid" and six["score"] is None and six["chars"] is None

    fox = by_id["mfa_align_one_spk_us_000"]  # <eps> silences from align_one; brown-fox touch
    assert (0.29, 0.55) == (fox["words"][0]["start"], fox["words"][0]["end"])
    assert not any(s["start"] == 1.53 for s in fox["silences"])  # no silence between 'brown' and 'fox'
    assert (1.94, 2.15, "label") in [(s["start"], s["end"], s["rule"]) for s in fox["silences"]]


def test_custom_tier_names_and_auto_detection(tmp_path):
    import textgrid

    grid = textgrid.TextGrid.fromFile(str(MFA_FIXTURES / "mfa_align_spk_us_001.TextGrid"))
    grid.tiers[0].name, grid.tiers[1].name = "orthography", "segments"
    grid.tiers.reverse()  # the word tier is no longer first
    grid.write(str(tmp_path / "utt.TextGrid"))
    row = rows({"mfa_align_spk_us_001": FIXTURE_TEXT["mfa_align_spk_us_001"]})[0] | {"id": "utt", "key": "utt"}

    named = textgrid_stage(tmp_path, word_tier="orthography", phone_tier="segments").process_batch([row])
    assert named.rejects == [] and len(named.rows[0]["phones"]) == 21  # SH IY1 | S EH1 L Z | ...: 21 phones
    # Without names and without 'word' in any tier name, the first tier is taken: the phones.
    guessed = textgrid_stage(tmp_path).process_batch([row])
    assert [r.code for r in guessed.rejects] == ["alignment_mismatch"]
    missing = textgrid_stage(tmp_path, word_tier="nope").process_batch([row])
    assert [r.code for r in missing.rejects] == ["align_failed"]


def test_wrong_transcript_and_missing_textgrid_become_rejects():
    texts = {"mfa_align_spk_f3_003": "six spoons of fresh snow beans", "mfa_align_spk_us_001": FIXTURE_TEXT["mfa_align_spk_us_001"]}
    batch = rows(texts) + [{**rows()[0], "id": "no_such_utterance", "key": "no_such_utterance"}]
    result = textgrid_stage(MFA_FIXTURES).process_batch(batch)
    assert [r["id"] for r in result.rows] == ["mfa_align_spk_us_001"]
    codes = {r.id: (r.code, r.detail) for r in result.rejects}
    assert codes["mfa_align_spk_f3_003"][0] == "alignment_mismatch" and "beans" in codes["mfa_align_spk_f3_003"][1]
    assert codes["no_such_utterance"][0] == "align_failed"


def requests(keys) -> list[AlignRequest]:
    return [AlignRequest(k, k, f"/data/{k}.wav", tuple(FIXTURE_TEXT[k].split()), DURATIONS[k], k.split("_")[-2]) for k in keys]


def test_mfa_batch_output_counts_utterances_mfa_left_out(tmp_path):
    out = tmp_path / "out"
    present = ["mfa_align_spk_f3_003", "mfa_align_spk_gb_002", "mfa_align_spk_rp_005"]
    for key in present:  # `mfa align` writes OUT/SPEAKER/KEY.TextGrid
        (out / key.split("_")[-2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(MFA_FIXTURES / f"{key}.TextGrid", out / key.split("_")[-2] / f"{key}.TextGrid")
    batch = requests([*present, "mfa_align_spk_us_001", "mfa_align_one_spk_us_000"])
    outcomes = collect_batch_output(batch, out)
    assert [type(o).__name__ for o in outcomes] == ["Alignment"] * 3 + ["AlignFailure"] * 2
    assert all("missing from MFA" in o.detail for o in outcomes if isinstance(o, AlignFailure))
    assert [w.label for w in outcomes[0].words] == FIXTURE_TEXT["mfa_align_spk_f3_003"].split()


def test_mfa_batch_corpus_layout(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    request = AlignRequest("spk/x.1", "spk_x_1_abc", str(audio), ("hello", "world"), 1.0, "spk one")
    write_batch_corpus([request], tmp_path / "corpus")
    folders = list((tmp_path / "corpus").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("spk_one")
    assert (folders[0] / "spk_x_1_abc.lab").read_text() == "hello world\n"
    assert (folders[0] / "spk_x_1_abc.wav").resolve() == audio.resolve()


def test_mfa_worker_response_parsing():
    response = {"id": "u", "likelihood": -42.5, "words": [
        {"label": "<eps>", "begin": 0.0, "end": 0.3, "phones": [{"label": "sil", "begin": 0.0, "end": 0.3}]},
        {"label": "hello", "begin": 0.3, "end": 0.7, "phones": [
            {"label": "HH", "begin": 0.3, "end": 0.4}, {"label": "AH0", "begin": 0.4, "end": 0.5},
            {"label": "L", "begin": 0.5, "end": 0.6}, {"label": "OW1", "begin": 0.6, "end": 0.7}]},
        {"label": "blorft", "begin": 0.7, "end": 1.1, "phones": [{"label": "B", "begin": 0.7, "end": 1.1}]},
    ]}
    parsed = parse_worker_response(response, [OovWord("blorft", "letters")])
    assert isinstance(parsed, Alignment)
    assert [(w.label, w.start, w.end) for w in parsed.words] == [("hello", 0.3, 0.7), ("blorft", 0.7, 1.1)]
    assert [p.word_index for p in parsed.phones] == [0, 0, 0, 0, 1]
    assert [(s.label, s.start, s.end) for s in parsed.labelled_silences] == [("<eps>", 0.0, 0.3)]
    assert parsed.score == -42.5 and parsed.oov == [OovWord("blorft", "letters")]
    failed = parse_worker_response({"id": "u", "error": "AlignmentError: beam too narrow"}, [])
    assert failed == AlignFailure("align_failed", "MFA: AlignmentError: beam too narrow")
