"""Ingest over real files made here: every corpus layout and every reject code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from lst_data.config import load_config
from lst_data.core.rejects import REJECT_CODES, read_rejects
from lst_data.format.schema import validation_errors
from lst_data.ingest.stage import ingest_corpus

RATE_IN = 22050


def tone(seconds: float, rate: int = RATE_IN, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def write(path: Path, samples: np.ndarray, rate: int = RATE_IN, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, **kwargs)
    return path


def local_config(**ingest):
    return load_config(overrides={"ray": {"runner": "local"}, "ingest": ingest})


def codes_by_id(out: Path) -> dict[str, str]:
    return {r.id: r.code for r in read_rejects(out / "rejects.parquet")}


@pytest.fixture
def mfa_corpus(tmp_path: Path) -> Path:
    """Speaker folders with one good file per format and one bad file per reject code."""
    root = tmp_path / "corpus"
    good = root / "alice"
    write(good / "a_wav.wav", tone(1.5, channels=2))  # stereo 22.05 kHz: downmixed + resampled
    write(good / "a_flac.flac", tone(1.2, rate=16000), rate=16000)  # referenced in place
    write(good / "a_ogg.ogg", tone(1.2), subtype="VORBIS")
    write(good / "a_mp3.mp3", tone(1.2), format="MP3", subtype="MPEG_LAYER_III")
    for stem, text in [("a_wav", "Hello, World!"), ("a_flac", "It's 3 o'clock"), ("a_ogg", "good ogg"), ("a_mp3", "good mp3")]:
        (good / f"{stem}.lab").write_text(text, encoding="utf-8")

    bad = root / "bob"
    (bad / "b_unreadable.wav").parent.mkdir(parents=True, exist_ok=True)
    (bad / "b_unreadable.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    (bad / "b_unreadable.lab").write_text("some words", encoding="utf-8")
    write(bad / "b_empty.wav", np.zeros(0, dtype=np.float32))
    (bad / "b_empty.lab").write_text("no audio here", encoding="utf-8")
    write(bad / "b_short.wav", tone(0.1))
    (bad / "b_short.lab").write_text("hi", encoding="utf-8")
    write(bad / "b_notext.wav", tone(1.0))
    write(bad / "b_blank.wav", tone(1.0))
    (bad / "b_blank.lab").write_text("  ... !!  \n", encoding="utf-8")
    write(bad / "b_latin1.wav", tone(1.0))
    (bad / "b_latin1.lab").write_bytes("café au lait".encode("latin-1"))
    write(bad / "b_wordy.wav", tone(0.5))
    (bad / "b_wordy.lab").write_text(" ".join(["supercalifragilistic"] * 10), encoding="utf-8")
    write(bad / "b_long.wav", tone(4.0))
    (bad / "b_long.lab").write_text("this one is too long", encoding="utf-8")
    # The same id in another speaker folder.
    write(root / "carol" / "a_ogg.wav", tone(1.0))
    (root / "carol" / "a_ogg.lab").write_text("duplicate", encoding="utf-8")
    return root


def test_mfa_layout_every_format_and_reject(mfa_corpus: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = ingest_corpus(mfa_corpus, out, local_config(max_duration=3.0))
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    by_id = {row["id"]: row for row in manifest}
    assert sorted(by_id) == ["a_flac", "a_mp3", "a_ogg", "a_wav"]
    assert codes_by_id(out) == {
        "b_unreadable": "audio_unreadable",
        "b_empty": "audio_empty",
        "b_short": "audio_too_short",
        "b_notext": "transcript_missing",
        "b_blank": "transcript_empty",
        "b_latin1": "transcript_not_utf8",
        "b_wordy": "transcript_too_long",
        "b_long": "audio_too_long",
        "a_ogg": "duplicate_id",
    }
    assert len(report.rejects) == 9
    # Decoded, downmixed, resampled: 1.5 s at 16 kHz, measured after decoding.
    wav = by_id["a_wav"]
    assert wav["source_sample_rate"] == RATE_IN and wav["sample_rate"] == 16000
    assert abs(wav["num_samples"] - 24000) <= 2
    assert set(wav["flags"]) == {"resampled", "downmixed"}
    stored, rate = sf.read(wav["audio_path"])
    assert rate == 16000 and stored.ndim == 1 and len(stored) == wav["num_samples"]
    assert Path(wav["audio_path"]).is_relative_to(out)
    # Already 16 kHz mono flac: referenced in place, not copied.
    assert by_id["a_flac"]["audio_path"] == by_id["a_flac"]["source_path"]
    # Numbers are spoken out by default (ingest.numbers = 'expand'); the original stays in `text`.
    assert by_id["a_flac"]["flags"] == ["numbers_expanded"]
    assert by_id["a_wav"]["normalized_text"] == "hello world"
    assert by_id["a_flac"]["normalized_text"] == "it's three o'clock"
    assert "3" in by_id["a_flac"]["text"]
    for row in manifest:
        assert validation_errors(row, "manifest") == []
    for reject in pq.read_table(out / "rejects.parquet").to_pylist():
        assert validation_errors(reject, "reject") == []
    provenance = json.loads((out / "ingest.json").read_text())
    # Input counts the reader's rejects too (a duplicate id, a line that is no entry): 13 = 4 + 9.
    assert provenance["counts"] == {"input": 13, "output": 4, "rejects": 9}
    assert provenance["figures"]["utterances"] == 4 == report.figures["utterances"]
    assert provenance["figures"]["hours"] == pytest.approx(sum(r["duration"] for r in manifest) / 3600)
    assert provenance["figures"]["speakers"] == len({r["speaker"] for r in manifest})


def test_digits_can_be_rejected_or_expanded(tmp_path: Path):
    corpus = tmp_path / "c"
    write(corpus / "s" / "n1.wav", tone(1.5))
    (corpus / "s" / "n1.lab").write_text("I have 3 cats", encoding="utf-8")
    report = ingest_corpus(corpus, tmp_path / "r", local_config(numbers="reject"))
    assert [r.code for r in report.rejects] == ["transcript_has_digits"]
    report = ingest_corpus(corpus, tmp_path / "e", local_config(numbers="expand"))
    assert report.read_output()["normalized_text"].to_pylist() == ["i have three cats"]
    assert report.read_output()["flags"].to_pylist() == [["numbers_expanded", "resampled"]]


def test_librispeech_layout(tmp_path: Path):
    chapter = tmp_path / "libri" / "103" / "1240"
    write(chapter / "103-1240-0000.flac", tone(1.0, rate=16000), rate=16000)
    write(chapter / "103-1240-0001.flac", tone(1.3, rate=16000), rate=16000)
    (chapter / "103-1240.trans.txt").write_text(
        "103-1240-0000 CHAPTER ONE MISSUS RACHEL\n103-1240-0001 HE WAS THERE\n103-1240-0002 NO AUDIO FOR ME\n",
        encoding="utf-8",
    )
    report = ingest_corpus(tmp_path / "libri", tmp_path / "out", local_config())
    rows = report.read_output().to_pylist()
    assert [(r["id"], r["speaker"], r["normalized_text"]) for r in rows] == [
        ("103-1240-0000", "103", "chapter one missus rachel"),
        ("103-1240-0001", "103", "he was there"),
    ]
    assert [(r.id, r.code) for r in report.rejects] == [("103-1240-0002", "audio_missing")]


def test_jsonl_manifest_with_bad_lines(tmp_path: Path):
    write(tmp_path / "audio" / "x.wav", tone(1.0))
    lines = [
        json.dumps({"id": "utt.1/x", "audio": "audio/x.wav", "text": "relative path works", "speaker": "s1"}),
        "{not json",
        json.dumps({"id": "no-audio-field", "text": "x"}),
        json.dumps({"id": "gone", "audio": "audio/missing.wav", "text": "missing audio"}),
        "",
    ]
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    report = ingest_corpus(manifest, tmp_path / "out", local_config())
    (row,) = report.read_output().to_pylist()
    assert row["id"] == "utt.1/x" and row["speaker"] == "s1"
    # Keys are WebDataset-safe and distinct from any other id.
    assert row["key"].startswith("utt_1_x_") and "." not in row["key"] and "/" not in row["key"]
    assert sorted(r.code for r in report.rejects) == ["audio_missing", "corpus_entry_invalid", "corpus_entry_invalid"]


def test_every_ingest_code_is_registered():
    ingest_codes = {
        "audio_missing", "audio_unreadable", "audio_empty", "audio_too_short", "audio_too_long",
        "transcript_missing", "transcript_empty", "transcript_not_utf8", "transcript_too_long",
        "transcript_has_digits", "duplicate_id", "corpus_entry_invalid",
    }
    assert ingest_codes <= set(REJECT_CODES)


@pytest.mark.ray
def test_ray_ingest_equals_local(ray_local, mfa_corpus: Path, tmp_path: Path):
    local = ingest_corpus(mfa_corpus, tmp_path / "local", local_config(max_duration=3.0))
    on_ray = ingest_corpus(
        mfa_corpus, tmp_path / "ray", load_config(overrides={"ingest": {"max_duration": 3.0}, "ray": {"runner": "ray", "num_workers": 2, "batch_size": 3}})
    )
    strip = ["audio_path"]  # resampled copies live under each run's own folder
    assert local.read_output().drop_columns(strip).equals(on_ray.read_output().drop_columns(strip))
    assert sorted(map(tuple, map(vars, local.rejects))) == sorted(map(tuple, map(vars, on_ray.rejects)))


def test_cli_ingest_exit_code_and_summary(mfa_corpus: Path, tmp_path: Path):
    from click.testing import CliRunner

    from lst_data.cli import cli

    result = CliRunner().invoke(cli, ["ingest", str(mfa_corpus), "--out", str(tmp_path / "o"), "--runner", "local"])
    assert result.exit_code == 3, result.output
    assert "audio_unreadable" in result.output and "utterances" in result.output
    clean = tmp_path / "clean"
    write(clean / "s" / "ok.wav", tone(1.0))
    (clean / "s" / "ok.lab").write_text("fine", encoding="utf-8")
    result = CliRunner().invoke(cli, ["ingest", str(clean), "--out", str(tmp_path / "o2"), "--runner", "local"])
    assert result.exit_code == 0, result.output
    assert "rejects: none" in result.output
