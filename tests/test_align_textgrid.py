"""TextGrid import and the MFA backend's pure parts, on real MFA output
(/work/shared/fixtures/mfa: `mfa align` / `mfa align_one` TextGrids with empty and <eps>
silences). MFA itself runs only where it is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lst_data.align.base import AlignFailure, Alignment, AlignRequest, OovWord
from lst_data.align.config import AlignConfig, MfaConfig, TextGridConfig
from lst_data.align.mfa_backend import collect_batch_output, parse_worker_response, write_batch_corpus
from lst_data.align.stage import AlignStage
from lst_data.audio import write_audio

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


@pytest.mark.skipif(shutil.which("mfa") is None, reason="Montreal Forced Aligner (`mfa`) is not installed here")
@pytest.mark.slow
def test_mfa_worker_aligns_demo_corpus(demo_corpus, tmp_path):
    import os

    from lst_data.align.stage import align_manifest
    from lst_data.config import load_config
    from lst_data.ingest.stage import ingest_corpus

    model = os.environ.get("LST_DATA_MFA_MODEL", "english_us_arpa")
    config = load_config(overrides={"ray": {"runner": "local"}, "align": {"backend": "mfa", "mfa": {"acoustic_model": model}}})
    ingest_corpus(demo_corpus, tmp_path / "m", config)
    report = align_manifest(tmp_path / "m", tmp_path / "a", config)
    alignments = report.read_output()
    assert alignments.num_rows + len(report.rejects) == 12 and alignments.num_rows > 0
    assert MfaConfig().mode == "worker"


FAKE_MFA_PYTHON = '''#!{python}
"""Stand-in for MFA's interpreter running mfa_worker.py (MFA cannot be installed here):
speaks the worker protocol, spreads the words evenly, logs requests, dies on 'crash'."""
import json, os, sys
log = open(os.path.join(os.environ["MFA_ROOT_DIR"], "..", "requests.jsonl"), "a")
print(json.dumps({{"ready": True, "mfa_version": "fake"}}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    log.write(line); log.flush()
    words = request["text"].split()
    if "crash" in words:
        sys.exit(3)
    step = (request["end"] - request["begin"]) / (len(words) + 2)
    out = [{{"label": "<eps>", "begin": 0.0, "end": step, "phones": []}}]
    for i, w in enumerate(words):
        b, e = step * (i + 1), step * (i + 2)
        out.append({{"label": w.upper(), "begin": b, "end": e, "phones": [{{"label": "AH0", "begin": b, "end": e}}]}})
    print(json.dumps({{"id": request["id"], "words": out, "likelihood": -1.0}}), flush=True)
'''


def test_mfa_worker_protocol_with_a_stand_in_process(tmp_path):
    """The parent side of worker mode against a fake MFA process (MFA itself is not installable here)."""
    import json
    import sys

    fake = tmp_path / "fake_mfa_python"
    fake.write_text(FAKE_MFA_PYTHON.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    config = AlignConfig(backend="mfa", mfa=MfaConfig(python=str(fake), acoustic_model="english_us_arpa",
                                                      root_dir=str(tmp_path)))
    stage = AlignStage(config)
    write_audio(tmp_path / "a.wav", 0.3 * np.sin(np.arange(32000, dtype=np.float32) / 10), 16000)
    base = {"key": "k", "audio_path": str(tmp_path / "a.wav"), "duration": 2.0, "speaker": "s"}
    batch = [{**base, "id": "ok", "normalized_text": "the blorft sat"},
             {**base, "id": "dies", "normalized_text": "crash now"},
             {**base, "id": "after", "normalized_text": "the cat"}]
    result = stage.process_batch(batch)
    assert [r["id"] for r in result.rows] == ["ok", "after"]  # the worker was restarted after dying
    assert [(r.id, r.code) for r in result.rejects] == [("dies", "align_failed")]
    ok = result.rows[0]
    assert [w["word"] for w in ok["words"]] == ["the", "blorft", "sat"] and ok["oov"] == [{"word": "blorft", "source": "letters"}]
    assert ok["backend"] == "mfa" and ok["silences"][0]["rule"] == "label"
    requests = [json.loads(line) for line in next(tmp_path.glob("lst_mfa_*/requests.jsonl")).read_text().splitlines()]
    assert requests[0]["pronunciations"] == {"blorft": "B L AA1 R F T"} and requests[0]["text"] == "the blorft sat"
    stage.aligner.close()


FAKE_MFA = '''#!{python}
"""Stand-in for `mfa align CORPUS DICT MODEL OUT ...` (MFA cannot be installed here): writes
OUT/SPEAKER/STEM.TextGrid with evenly spread words, and, like MFA, silently leaves out
utterances it 'cannot align' (here: transcripts containing 'unalignable'), exiting 0."""
import json, os, pathlib, sys
import textgrid
command, corpus, dictionary, model, out = sys.argv[1:6]
assert command == "align" and "--no_tokenization" in sys.argv, sys.argv
pathlib.Path(os.environ["MFA_ROOT_DIR"], "..", "calls.jsonl").resolve().open("a").write(json.dumps(sys.argv[1:]) + "\\n")
for lab in sorted(pathlib.Path(corpus).glob("*/*.lab")):
    words = lab.read_text().split()
    if "unalignable" in words:
        continue
    grid = textgrid.TextGrid(minTime=0.0, maxTime=2.0)
    tier = textgrid.IntervalTier(name="words", minTime=0.0, maxTime=2.0)
    step = 2.0 / (len(words) + 2)
    for i, w in enumerate(words):
        tier.add(step * (i + 1), step * (i + 2), w)
    grid.append(tier)
    target = pathlib.Path(out) / lab.parent.name / (lab.stem + ".TextGrid")
    target.parent.mkdir(parents=True, exist_ok=True)
    grid.write(str(target))
'''


def test_mfa_batch_mode_with_a_stand_in_executable(tmp_path):
    """`mfa align` per batch against a fake `mfa` (MFA itself is not installable here): the
    corpus, dictionary and arguments it is given, and the utterance it leaves out."""
    import json
    import sys

    fake = tmp_path / "mfa"
    fake.write_text(FAKE_MFA.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    write_audio(tmp_path / "a.wav", 0.3 * np.sin(np.arange(32000, dtype=np.float32) / 10), 16000)
    config = AlignConfig(backend="mfa", mfa=MfaConfig(executable=str(fake), mode="batch", acoustic_model="english_us_arpa",
                                                      root_dir=str(tmp_path)))
    base = {"audio_path": str(tmp_path / "a.wav"), "duration": 2.0}
    batch = [{**base, "id": "a/1", "key": "a_1", "speaker": "alice", "normalized_text": "the blorft sat"},
             {**base, "id": "b/1", "key": "b_1", "speaker": "bob", "normalized_text": "an unalignable one"},
             {**base, "id": "b/2", "key": "b_2", "speaker": "bob", "normalized_text": "the cat"}]
    result = AlignStage(config).process_batch(batch)
    assert [r["id"] for r in result.rows] == ["a/1", "b/2"]
    assert [(r.id, r.code) for r in result.rejects] == [("b/1", "align_failed")]
    assert result.rows[0]["oov"] == [{"word": "blorft", "source": "letters"}]
    calls = [json.loads(line) for line in next(tmp_path.glob("lst_mfa_*/calls.jsonl")).read_text().splitlines()]
    assert len(calls) == 1 and calls[0][0] == "align" and calls[0][3] == "english_us_arpa"
