"""Calibrates the alignment quality gate: correct transcripts vs transcripts of other utterances.

    .venv/bin/python benchmarks/bench_align_gate.py [--quick]

The demo corpus is aligned twice with PocketSphinx: once with its own transcripts, once
with every transcript moved to another utterance that says a different sentence (a
derangement: a swapped or misattributed transcript). An utterance is caught when the align
stage rejects it for any reason (the gate's alignment_low_score, or align_failed when no
path exists even on retry). Figures at the default `align.pocketsphinx.min_score`:

- false-reject rate: correct transcripts rejected (target 0 %);
- catch rate: mismatched transcripts rejected (target >= 95 %).

References, measured in the same run: the align stage without the gate (what the pipeline
caught before: only alignments that fail outright), and the gate's score without the
phone-loop normalization (the absolute forced-alignment score per frame at the strictest
threshold that still rejects no correct transcript). The margin line says how far apart
the two score populations are: the default threshold sits inside that gap. The cost line
is the align stage's wall time on the correct transcripts with the gate against without
it (local runner, one worker), both timed after the mismatched runs have warmed up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from lst_data.align.config import PocketsphinxConfig  # noqa: E402
from lst_data.align.stage import align_manifest  # noqa: E402
from lst_data.config import load_config  # noqa: E402
from lst_data.core.rejects import read_rejects  # noqa: E402
from lst_data.demo import synthesize_demo_corpus  # noqa: E402
from lst_data.ingest.stage import ingest_corpus  # noqa: E402

DEFAULT_MIN_SCORE = PocketsphinxConfig().min_score


def line(name: str, figure: float, unit: str, ref: float, ref_unit: str, ref_name: str) -> None:
    ratio = f"{figure / ref:.3g}" if ref else "n/a"
    print(f"{name}: {figure:.4g} {unit} (reference: {ref_name} {ref:.4g} {ref_unit}, ratio {ratio})")


def shuffled_manifest(manifest_dir: Path, out_dir: Path) -> Path:
    """The manifest with each utterance given the transcript of the next one that says something else."""
    table = pq.read_table(manifest_dir / "manifest.parquet")
    texts = table["normalized_text"].to_pylist()
    n = len(texts)
    moved = []
    for i, text in enumerate(texts):
        step = next(k for k in range(1, n) if texts[(i + k) % n] != text)
        moved.append(texts[(i + step) % n])
    out_dir.mkdir(parents=True, exist_ok=True)
    index = table.schema.get_field_index("normalized_text")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(moved)), out_dir / "manifest.parquet")
    return out_dir


def align(manifest_dir: Path, out_dir: Path, min_score: float | None) -> tuple[dict[str, float], set[str], float]:
    """(id -> score of the aligned utterances, ids rejected by the align stage, seconds the stage took)."""
    config = load_config(overrides={"ray": {"runner": "local", "batch_size": 16},
                                    "align": {"pocketsphinx": {"min_score": min_score}}})
    start = time.perf_counter()
    report = align_manifest(manifest_dir, out_dir, config)
    seconds = time.perf_counter() - start
    rows = report.read_output()
    scores = dict(zip(rows["id"].to_pylist(), pc.fill_null(rows["score"], float("nan")).to_pylist(), strict=True))
    return scores, {r.id for r in report.rejects}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="24 utterances instead of 72")
    with tempfile.TemporaryDirectory(prefix="bench_align_gate_") as tmp:
        calibrate(Path(tmp), n_utterances=24 if parser.parse_args().quick else 72)


def calibrate(work: Path, n_utterances: int) -> None:
    """Align correct and shuffled transcripts with and without the gate; print the figures."""
    corpus = synthesize_demo_corpus(work / "corpus", n_utterances=n_utterances)
    ingest_corpus(corpus, work / "correct", load_config(overrides={"ray": {"runner": "local"}}))
    shuffled = shuffled_manifest(work / "correct", work / "shuffled")
    n = pq.read_metadata(work / "correct" / "manifest.parquet").num_rows

    bad_gated, bad_gate_rejects, _ = align(shuffled, work / "a_bad", DEFAULT_MIN_SCORE)
    bad_absolute, bad_plain_rejects, _ = align(shuffled, work / "b_bad", None)
    good_gated, good_gate_rejects, gated_seconds = align(work / "correct", work / "a_good", DEFAULT_MIN_SCORE)
    good_absolute, good_plain_rejects, plain_seconds = align(work / "correct", work / "b_good", None)

    # Scores of every utterance that aligned, whatever the gate decided (the gate's score
    # is forced minus free; with the gate off the row's score is the absolute one).
    good_relative = list(good_gated.values())
    bad_relative = [float(r.detail.split()[1].rstrip(";")) for r in read_rejects(work / "a_bad" / "rejects.parquet")
                    if r.detail.startswith("score ")]
    bad_relative += list(bad_gated.values())
    absolute_threshold = min(good_absolute.values())
    absolute_caught = len(bad_plain_rejects) + sum(s < absolute_threshold for s in bad_absolute.values())

    line("align_gate_false_reject", 100 * len(good_gate_rejects) / n, "%", 100 * len(good_plain_rejects) / n, "%",
         "align stage without the gate")
    line("align_gate_catch", 100 * len(bad_gate_rejects) / n, "%", 100 * len(bad_plain_rejects) / n, "%",
         "align stage without the gate")
    line("align_gate_catch_vs_absolute_score", 100 * len(bad_gate_rejects) / n, "%", 100 * absolute_caught / n, "%",
         "absolute forced score at its 0 %-false-reject threshold")
    if good_relative and bad_relative:
        margin = min(good_relative) - max(bad_relative)
        line("align_gate_score_margin", margin, "score/frame", abs(min(good_relative) - DEFAULT_MIN_SCORE),
             "score/frame", "distance of the lowest correct score from the default threshold")
        print(f"align_gate_scores: correct min {min(good_relative):.2f}, mismatched max {max(bad_relative):.2f} "
              f"(of {len(bad_relative)} that aligned), default min_score {DEFAULT_MIN_SCORE:g}, n = {n}")
    print(f"align_gate_cost: {gated_seconds:.3g} s (reference: align stage without the gate (min_score None) "
          f"{plain_seconds:.3g} s, ratio {gated_seconds / plain_seconds:.2f})")

if __name__ == "__main__":
    main()
