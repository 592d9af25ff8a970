"""BPE spans and patches on the espeak-ng demo corpus, against its exact word boundaries.

The chain is the real one: ingest -> corpus BPE -> tokenize stage (on Ray) -> word and
piece frame spans -> patches. Word times come from ground_truth.json (each word was
synthesized separately, so its boundaries are known to the sample), standing in for an
aligner's output.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from lst_data.config import RunConfig
from lst_data.core.config import RayConfig
from lst_data.core.runner import run_stage
from lst_data.demo import load_ground_truth
from lst_data.format.frames import frames_for_duration, silence_frame_runs, word_frame_spans
from lst_data.format.patching import average_patch_sizes, patches
from lst_data.format.records import BpePiece, SampleRecord, Silence, Word
from lst_data.ingest.stage import ingest_corpus
from lst_data.tokenize.spans import bpe_frame_spans
from lst_data.tokenize.stage import TokenizeStage, prepare_tokenizer
from lst_data.tokenize.tokenizer import TokenPiece

RATE = 25.0


@pytest.mark.ray
def test_demo_corpus_tokens_spans_and_patches(demo_corpus, ray_local, tmp_path):
    config = RunConfig()
    manifest = ingest_corpus(
        demo_corpus, tmp_path / "ingest", RunConfig(ray=RayConfig(runner="local"))
    ).read_output()
    tokenizer = prepare_tokenizer(
        config.tokenizer, manifest["normalized_text"].to_pylist(), tmp_path, config.seed
    )
    stage = TokenizeStage(model_path=tokenizer.path, expected_hash=tokenizer.hash)
    report = run_stage(
        stage,
        manifest.select(["id", "normalized_text"]),
        tmp_path / "tokenize",
        RunConfig(ray=RayConfig(num_workers=1)),
        show_progress=False,
    )
    assert report.rejects == [] and report.rows_out == manifest.num_rows
    tokens = {row["id"]: row for row in pq.read_table(tmp_path / "tokenize" / "tokens.parquet").to_pylist()}

    records = []
    for utt in load_ground_truth(demo_corpus)["utterances"]:
        n_frames = frames_for_duration(utt["duration"], RATE)
        words = [w["word"] for w in utt["words"]]
        word_spans = word_frame_spans([(w["start"], w["end"]) for w in utt["words"]], RATE, n_frames)
        pieces = [TokenPiece(**p) for p in tokens[utt["id"]]["pieces"]]
        assert [p.id for p in pieces] == tokenizer.encode(utt["normalized_text"])
        spans = bpe_frame_spans(
            word_spans, pieces, words=words, chars=None, phones=None, frame_rate=RATE, n_frames=n_frames
        )
        record = SampleRecord(
            id=utt["id"],
            text=utt["normalized_text"],
            speaker=utt["speaker"],
            duration=utt["duration"],
            sample_rate=16000,
            frame_rate=RATE,
            units=np.zeros(n_frames, dtype=np.int16),
            words=tuple(
                Word(w["word"], w["start"], w["end"], s.start, s.end)
                for w, s in zip(utt["words"], word_spans, strict=True)
            ),
            bpe=tuple(
                BpePiece(p.id, p.piece, p.word_index, s.start, s.end)
                for p, s in zip(pieces, spans, strict=True)
            ),
            silences=tuple(
                Silence(r.start / RATE, (r.end + 1) / RATE, r.start, r.end)
                for r in silence_frame_runs(word_spans, n_frames)
            ),
        )
        records.append(record)

        word_patches = [p for p in patches(record, "word_sil_sep") if p.kind == "word"]
        onsets = [math.floor(w["start"] * RATE) for w in utt["words"]]
        assert len(word_patches) == len(words), "espeak words last > 40 ms, so every word owns frames"
        for patch, onset in zip(word_patches, onsets, strict=True):
            # a word starts at its onset frame, or one later when the previous word (joined by
            # a 10-35 ms gap) already claimed that frame
            assert patch.start in (onset, onset + 1)
        silence_patches = [p for p in patches(record, "word_sil_sep") if p.kind == "silence"]
        for pause in utt["pauses"]:
            middle = int((pause["start"] + pause["end"]) / 2 * RATE)
            assert any(p.start <= middle < p.start + p.length for p in silence_patches), (
                f"pause {pause} has no silence patch"
            )
        bpe_starts = {p.start for p in patches(record, "bpe")}
        assert {p.start for p in word_patches} <= bpe_starts

    summary = average_patch_sizes(records)
    # espeak words last 0.2-0.6 s (5-15 frames at 25 Hz); pieces are shorter than words.
    sep, bpe = summary["word_sil_sep"], summary["bpe"]
    assert 4 <= sep["mean_word_or_piece_patch"] <= 16
    assert bpe["mean_word_or_piece_patch"] < sep["mean_word_or_piece_patch"]
    assert summary["word_sil_merged"]["mean_all"] > sep["mean_all"]
    assert summary["static"]["mean_all"] <= 4
