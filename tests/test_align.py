"""Align stage with real backends: PocketSphinx on espeak-ng speech, the silence and trim
rules on numpy audio, OOV handling, rejects, the CLI, and one run through Ray."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.alignment_scores import evaluate_alignments

from lst_data.align.base import Alignment, Interval
from lst_data.align.config import AlignConfig
from lst_data.align.lexicon import fallback_pronunciation, letter_pronunciation, write_mfa_dictionary
from lst_data.align.silence import silence_spans, trim_quiet_edges
from lst_data.align.stage import AlignStage, align_manifest
from lst_data.audio import write_audio
from lst_data.config import load_config
from lst_data.core.rejects import read_rejects
from lst_data.core.tables import ALIGNMENT_SCHEMA
from lst_data.demo import load_ground_truth
from lst_data.format.schema import validation_errors
from lst_data.ingest.stage import ingest_corpus

RATE = 16000


def local_config(**align):
    return load_config(overrides={"ray": {"runner": "local", "batch_size": 4}, "align": align})


@pytest.fixture(scope="module")
def demo_manifest(demo_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_manifest")
    ingest_corpus(demo_corpus, out, local_config())
    return out


@pytest.fixture(scope="module")
def pocketsphinx_run(demo_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ps_align")
    align_manifest(demo_manifest, out, local_config())
    return out


def espeak_corpus(root: Path, utterances: dict[str, str], speaker: str = "spk") -> Path:
    """An MFA-layout corpus of espeak-ng sentences (with half a second of silence around them)."""
    folder = root / speaker
    folder.mkdir(parents=True, exist_ok=True)
    for utt_id, text in utterances.items():
        raw = folder / f"{utt_id}.raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True, capture_output=True)
        from lst_data.audio import read_audio

        speech, _ = read_audio(raw, RATE)
        raw.unlink()
        pad = np.zeros(RATE // 2, dtype=np.float32)
        noise = np.random.default_rng(0).normal(0, 0.001, RATE + len(speech)).astype(np.float32)
        write_audio(folder / f"{utt_id}.wav", np.concatenate([pad, speech, pad]) + noise, RATE)
        (folder / f"{utt_id}.lab").write_text(text, encoding="utf-8")
    return root


# ---- pure rules ------------------------------------------------------------------------

def test_silence_spans_apply_label_edge_and_gap_rules():
    words = [Interval("a", 0.30, 0.50), Interval("b", 0.52, 0.80), Interval("c", 0.90, 1.20), Interval("d", 1.22, 1.40)]
    labelled = [Interval("sil", 1.20, 1.22)]  # a labelled silence shorter than min_silence still counts
    spans = silence_spans(words, labelled, duration=1.60, min_silence=0.05)
    assert [(s.start, s.end, s.label) for s in spans] == [
        (0.0, 0.30, "edge"),  # leading stretch
        (0.80, 0.90, "gap"),  # 100 ms >= 50 ms; the 20 ms join a-b is not silence
        (1.20, 1.22, "label"),
        (1.40, 1.60, "edge"),
    ]


def test_trim_moves_quiet_word_edges_into_the_gap():
    # 0.0-0.3 s near silence, 0.3-0.6 s a loud tone: an aligner that starts the word at 0.1 s
    # has absorbed 200 ms of pause.
    t = np.arange(int(0.9 * RATE)) / RATE
    audio = np.random.default_rng(1).normal(0, 0.001, t.size).astype(np.float32)
    loud = (t >= 0.3) & (t < 0.6)
    audio[loud] += 0.5 * np.sin(2 * np.pi * 200 * t[loud]).astype(np.float32)
    alignment = Alignment(
        words=[Interval("tone", 0.10, 0.75)],
        phones=[Interval("T", 0.10, 0.40, 0), Interval("OW", 0.40, 0.75, 0)],
    )
    trimmed = trim_quiet_edges(alignment, audio, RATE, trim_db=40)
    word = trimmed.words[0]
    assert abs(word.start - 0.30) <= 0.005 and abs(word.end - 0.60) <= 0.005
    assert trimmed.phones[0].start == word.start and trimmed.phones[-1].end == word.end
    assert trim_quiet_edges(alignment, audio, RATE, trim_db=0) is alignment


def test_fallback_pronunciations_record_their_source():
    assert fallback_pronunciation("café") == (["K", "AH0", "F", "EY1"], "cmudict")  # accents stripped
    phones, source = fallback_pronunciation("blorft")
    assert source == "letters" and phones == ["B", "L", "AA1", "R", "F", "T"]
    assert letter_pronunciation("shmoop") == ["SH", "M", "UW1", "P"]  # digraphs before letters
    assert fallback_pronunciation("日本") is None


def test_mfa_dictionary_from_cmudict(tmp_path):
    path = tmp_path / "batch.dict"
    sources = write_mfa_dictionary(path, ["the", "blorft", "the", "日本"])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "blorft\tB L AA1 R F T" in lines
    assert "the\tDH AH0" in lines and all(not line.startswith("日本") for line in lines)
    assert sources == {"blorft": "letters"}


# ---- PocketSphinx on speech with known boundaries ---------------------------------------

def test_pocketsphinx_meets_accuracy_target_on_demo_corpus(pocketsphinx_run, demo_corpus):
    table = pq.read_table(pocketsphinx_run / "alignments.parquet")
    assert table.schema.equals(ALIGNMENT_SCHEMA)
    scores = evaluate_alignments(table.to_pylist(), load_ground_truth(demo_corpus))
    assert scores.missing == 0 and scores.utterances == 12
    assert scores.within[0.05] >= 0.85, scores
    assert scores.pauses > 0 and scores.pauses_found == scores.pauses, scores


def test_pocketsphinx_rows_keep_the_contract(pocketsphinx_run, demo_manifest):
    manifest = {r["id"]: r for r in pq.read_table(demo_manifest / "manifest.parquet").to_pylist()}
    for row in pq.read_table(pocketsphinx_run / "alignments.parquet").to_pylist():
        source = manifest[row["id"]]
        assert validation_errors(row, "alignment") == []
        assert [w["word"] for w in row["words"]] == source["normalized_text"].split()
        assert row["backend"] == "pocketsphinx" and len(row["model_hash"]) == 64
        times = [t for w in row["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and 0 <= times[0] and times[-1] <= source["duration"]
        assert {p["word_index"] for p in row["phones"]} == set(range(len(row["words"])))
        for p in row["phones"]:
            word = row["words"][p["word_index"]]
            assert word["start"] <= p["start"] <= p["end"] <= word["end"]
        assert row["chars"] is None
        spans = [(s["start"], s["end"]) for s in row["silences"]]
        assert spans == sorted(spans) and {s["rule"] for s in row["silences"]} <= {"label", "gap", "edge"}
    assert read_rejects(pocketsphinx_run / "rejects.parquet") == []
    provenance = json.loads((pocketsphinx_run / "align.json").read_text())
    assert provenance["counts"]["output"] == 12 and provenance["figures"]["aligned"] == 12


def test_oov_words_get_a_recorded_pronunciation_or_a_reject(tmp_path):
    corpus = espeak_corpus(tmp_path / "corpus", {"u1": "the blorft sat down", "u2": "the cat sat down"})
    ingest_corpus(corpus, tmp_path / "manifest", local_config())

    report = align_manifest(tmp_path / "manifest", tmp_path / "g2p", local_config(oov="g2p"))
    rows = {r["id"]: r for r in report.read_output().to_pylist()}
    assert rows["u1"]["oov"] == [{"word": "blorft", "source": "letters"}] and rows["u2"]["oov"] == []
    assert [w["word"] for w in rows["u1"]["words"]] == ["the", "blorft", "sat", "down"]
    assert pq.read_table(tmp_path / "g2p" / "oov.parquet").to_pylist() == [{"word": "blorft", "source": "letters", "count": 1}]

    report = align_manifest(tmp_path / "manifest", tmp_path / "reject", local_config(oov="reject"))
    assert report.read_output()["id"].to_pylist() == ["u2"]
    assert [(r.id, r.stage, r.code) for r in read_rejects(tmp_path / "reject" / "rejects.parquet")] == [("u1", "align", "oov")]


def test_unreadable_audio_is_rejected_not_raised(tmp_path):
    stage = AlignStage(AlignConfig())
    row = {"id": "gone", "key": "gone", "audio_path": str(tmp_path / "missing.wav"), "duration": 1.0,
           "speaker": "s", "normalized_text": "hello world"}
    result = stage.process_batch([row])
    assert result.rows == [] and [(r.id, r.code) for r in result.rejects] == [("gone", "align_failed")]


# ---- CLI and Ray ------------------------------------------------------------------------

def test_cli_align_and_export_textgrid(demo_manifest, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(_cli(), ["align", str(demo_manifest), "--backend", "pocketsphinx", "--out", str(out), "--runner", "local"])
    assert result.exit_code == 0, result.output
    assert "aligned" in result.output and (out / "alignments.parquet").exists() and (out / "oov.parquet").exists()

    result = runner.invoke(_cli(), ["export-textgrid", str(out), "--out", str(tmp_path / "tg"), "--manifest", str(demo_manifest)])
    assert result.exit_code == 0, result.output
    import textgrid

    row = pq.read_table(out / "alignments.parquet").slice(0, 1).to_pylist()[0]
    grid = textgrid.TextGrid.fromFile(str(tmp_path / "tg" / f"{row['id']}.TextGrid"))
    assert [t.name for t in grid.tiers] == ["words", "phones"]
    words = [(i.mark, round(i.minTime, 6), round(i.maxTime, 6)) for i in grid.tiers[0] if i.mark and i.mark != "sil"]
    assert words == [(w["word"], w["start"], w["end"]) for w in row["words"]]
    assert sum(i.mark == "sil" for i in grid.tiers[0]) == len(row["silences"])

    result = runner.invoke(_cli(), ["align", str(demo_manifest), "--backend", "textgrid", "--out", str(tmp_path / "x")])
    # a user error: one line naming the field, exit 2
    assert result.exit_code == 2 and "align.textgrid.directory" in result.output
    assert "Traceback" not in result.output


def _cli():
    from lst_data.cli import cli

    return cli


@pytest.mark.ray
def test_align_stage_through_ray_matches_local(ray_local, demo_manifest, pocketsphinx_run, tmp_path):
    config = load_config(overrides={"ray": {"runner": "ray", "batch_size": 4, "num_workers": 2, "cpus_per_worker": 0.5}})
    report = align_manifest(demo_manifest, tmp_path, config)
    local = pq.read_table(pocketsphinx_run / "alignments.parquet")
    assert report.rejects == []
    assert report.read_output().sort_by("id").equals(local.sort_by("id"))


def test_pocketsphinx_result_does_not_depend_on_what_the_worker_aligned_before(demo_manifest):
    """Decoder state (cepstral mean, noise estimate) must not leak between utterances:
    otherwise Ray's batching would change the alignments."""
    from lst_data.align.base import AlignRequest
    from lst_data.align.pocketsphinx_backend import PocketsphinxAligner

    rows = pq.read_table(demo_manifest / "manifest.parquet").to_pylist()[:6]
    requests = [AlignRequest(r["id"], r["key"], r["audio_path"], tuple(r["normalized_text"].split()), r["duration"]) for r in rows]
    config = load_config().align

    def words(aligner, request):
        return [(w.start, w.end) for w in aligner.align_one(request).words]

    alone = {r.id: words(PocketsphinxAligner(config), r) for r in requests}
    shared = PocketsphinxAligner(config)
    backwards = {r.id: words(shared, r) for r in reversed(requests)}
    assert backwards == alone
