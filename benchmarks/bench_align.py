"""Alignment accuracy and throughput per backend on the espeak-ng demo corpus.

    .venv/bin/python benchmarks/bench_align.py [--quick] [--no-mfa]

Every MFA mode runs beside PocketSphinx when MFA is installed (`make setup-mfa`; model:
LST_DATA_MFA_MODEL, default the demo model `make setup-mfa` saves), each also without the
edge extension (align.mfa.extend_edges = 0: MFA's own boundaries, the "before").
The demo model was trained on demo-corpus utterances (the same sentences and voices; only
pauses and noise differ), so MFA's accuracy here is in-domain; PocketSphinx's model is generic.

Accuracy is measured against the corpus's exact word boundaries; its reference is a
uniform baseline measured in the same run (words spread over the audible stretch in
proportion to their letters), so the ratio says what the aligner adds. Throughput's
reference is real time: audio seconds per wall second on one core (local runner, one
worker, start-up and MFA training included), so ratio = 1 / real-time factor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from support.alignment_scores import AlignmentScores, evaluate_alignments  # noqa: E402

from lst_data.align.export import export_textgrids  # noqa: E402
from lst_data.align.mfa_install import mfa_missing  # noqa: E402
from lst_data.align.silence import TRIM_WINDOW_S, loud_windows  # noqa: E402
from lst_data.align.stage import align_manifest  # noqa: E402
from lst_data.audio import read_audio  # noqa: E402
from lst_data.config import load_config  # noqa: E402
from lst_data.core.runner import StageReport  # noqa: E402
from lst_data.demo import load_ground_truth, synthesize_demo_corpus  # noqa: E402
from lst_data.ingest.stage import ingest_corpus  # noqa: E402

TARGET_WITHIN_50MS = 0.85
# Mode 'train' on the benchmark corpus itself: a small recipe (MFA's default trains for minutes per
# hundred utterances with SAT passes a corpus this size cannot feed).
MFA_TRAIN_CONFIG = """\
training:
  - monophone: {num_iterations: 20, max_gaussians: 500, subset: 0}
  - triphone: {num_iterations: 15, num_leaves: 500, max_gaussians: 3000, subset: 0}
"""


def line(name: str, figure: float, unit: str, ref: float, ref_unit: str, ref_name: str = "") -> None:
    ratio = figure / ref if ref else float("nan")
    label = f"{ref_name} " if ref_name else ""
    print(f"{name}: {figure:.4g} {unit} (reference: {label}{ref:.4g} {ref_unit}, ratio {ratio:.3g})")


def uniform_baseline(truth: dict, corpus: Path) -> list[dict]:
    """Words spread over the audible stretch by letter count: what an aligner must beat."""
    rows = []
    for utt in truth["utterances"]:
        samples, rate = read_audio(corpus / utt["audio"], 16000)
        loud = np.flatnonzero(loud_windows(samples, rate, 40.0))
        start, end = loud[0] * TRIM_WINDOW_S, (loud[-1] + 1) * TRIM_WINDOW_S
        words = utt["normalized_text"].split()
        edges = start + (end - start) * np.concatenate([[0], np.cumsum([len(w) for w in words])]) / sum(map(len, words))
        rows.append({"id": utt["id"], "words": [{"word": w, "start": a, "end": b} for w, a, b in zip(words, edges, edges[1:], strict=False)],
                     "silences": [{"start": 0.0, "end": start}, {"start": end, "end": utt["duration"]}]})
    return rows


def report_backend(name: str, report: StageReport, audio_seconds: float, scores: AlignmentScores | None,
                   baseline: AlignmentScores) -> None:
    n = report.rows_out + len(report.rejects)
    line(f"align_{name}_speed", audio_seconds / report.seconds, "audio-s/s per core", 1.0, "audio-s/s", "real time")
    line(f"align_{name}_utterances", n / report.seconds, "utt/s per core", n / audio_seconds, "utt/s", "real time")
    line(f"align_{name}_aligned", report.rows_out, "utt", n, "utt", "all")
    if scores is None:
        return
    line(f"align_{name}_within_50ms", 100 * scores.within[0.05], "%", 100 * baseline.within[0.05], "%", "uniform")
    line(f"align_{name}_within_20ms", 100 * scores.within[0.02], "%", 100 * baseline.within[0.02], "%", "uniform")
    line(f"align_{name}_within_100ms", 100 * scores.within[0.1], "%", 100 * baseline.within[0.1], "%", "uniform")
    line(f"align_{name}_mean_abs_error", 1000 * scores.mean_abs_error, "ms", 1000 * baseline.mean_abs_error, "ms", "uniform")
    line(f"align_{name}_median_abs_error", 1000 * scores.median_abs_error, "ms", 1000 * baseline.median_abs_error, "ms", "uniform")
    line(f"align_{name}_pauses_found", scores.pauses_found, "pauses", scores.pauses, "pauses", "all comma pauses")
    line(f"align_{name}_target_within_50ms", 100 * scores.within[0.05], "%", 100 * TARGET_WITHIN_50MS, "%", "target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="12 utterances instead of 48")
    parser.add_argument("--no-mfa", action="store_true", help="skip MFA even where it is installed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_align_"))
    try:
        corpus = synthesize_demo_corpus(work / "corpus", n_utterances=12 if args.quick else 48)
        truth = load_ground_truth(corpus)
        local = {"ray": {"runner": "local", "batch_size": 16}}
        manifest = ingest_corpus(corpus, work / "manifest", load_config(overrides=local)).read_output()
        audio_seconds = sum(manifest["duration"].to_pylist())
        baseline = evaluate_alignments(uniform_baseline(truth, corpus), truth)

        def run(name: str, align: dict, score: bool = True, batch_size: int = 16) -> StageReport:
            start = time.perf_counter()
            overrides = {"ray": {"runner": "local", "batch_size": batch_size}, "align": align}
            report = align_manifest(work / "manifest", work / name, load_config(overrides=overrides))
            report.seconds = time.perf_counter() - start
            scores = evaluate_alignments(report.read_output().to_pylist(), truth) if score else None
            report_backend(name, report, audio_seconds, scores, baseline)
            return report

        run("pocketsphinx", {"backend": "pocketsphinx"})
        run("pocketsphinx_untrimmed", {"backend": "pocketsphinx", "trim_db": 0.0})
        export_textgrids(work / "pocketsphinx", work / "textgrids", work / "manifest")
        run("textgrid_roundtrip", {"backend": "textgrid", "textgrid": {"directory": str(work / "textgrids")}})
        run("ctc_tiny_random", {"backend": "ctc", "ctc": {"checkpoint": str(tiny_random_ctc(work / "ctc")), "device": "cpu"}},
            score=False)
        if args.no_mfa or mfa_missing():
            print(f"align_mfa: skipped ({'--no-mfa' if args.no_mfa else mfa_missing()})")
        else:
            run_mfa_modes(run, work, n_utterances=len(truth["utterances"]))
        alignments = pq.read_table(work / "pocketsphinx" / "alignments.parquet")
        print(f"align_pocketsphinx_rows: {alignments.num_rows} rows, {alignments.nbytes / 1024:.0f} KiB in memory")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_mfa_modes(run, work: Path, n_utterances: int) -> None:
    """worker, batch (one `mfa align` run over the corpus: speaker adaptation sees every
    utterance of a speaker) and train, each with and without the edge extension (train: with)."""
    model = os.environ.get("LST_DATA_MFA_MODEL", "demo160_english_arpa")
    (work / "mfa_train.yaml").write_text(MFA_TRAIN_CONFIG, encoding="utf-8")
    for extend, suffix in ((0.15, ""), (0.0, "_no_edge_extension")):
        run(f"mfa_worker{suffix}", {"backend": "mfa", "mfa": {"acoustic_model": model, "extend_edges": extend}})
    for extend, suffix in ((0.15, ""), (0.0, "_no_edge_extension")):
        run(f"mfa_batch{suffix}", {"backend": "mfa", "mfa": {"mode": "batch", "acoustic_model": model, "extend_edges": extend}},
            batch_size=n_utterances)
    run("mfa_train", {"backend": "mfa", "mfa": {"mode": "train", "train_config": str(work / "mfa_train.yaml")}},
        batch_size=n_utterances)


def tiny_random_ctc(directory: Path) -> Path:
    """A randomly initialised 1-layer wav2vec2 CTC model: times the pipeline, not a real model."""
    import json

    import torch
    from torchaudio.models import wav2vec2_model

    torch.manual_seed(0)
    vocab = ["<blank>", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]
    arguments = {
        "extractor_mode": "group_norm", "extractor_conv_layer_config": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
        "extractor_conv_bias": False, "encoder_embed_dim": 64, "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "encoder_num_layers": 2, "encoder_num_heads": 4,
        "encoder_attention_dropout": 0.0, "encoder_ff_interm_features": 128, "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0, "encoder_layer_norm_first": False, "encoder_layer_drop": 0.0, "aux_num_out": len(vocab),
    }
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(wav2vec2_model(**arguments).state_dict(), directory / "model.pt")
    (directory / "config.json").write_text(json.dumps(
        {"format": "lst-data-ctc", "model": arguments, "vocab": vocab, "blank": 0, "word_delimiter": "|", "lowercase": True}))
    return directory


if __name__ == "__main__":
    main()
