"""Benchmark of lst_model: positions (LST vs baseline), held-out accuracy (corpus
continuation items of the held-out transcripts, same-speaker distractors, s2s/t2t/s2t/t2s) at equal
global-position budget and at equal training FLOPs (a baseline given the LST run's FLOPs)
over 3 seeds (mean ± standard error), and CPU training throughput.

    .venv/bin/python benchmarks/bench_model.py [--quick] [--shards DIR] [--steps N]

Without --shards it writes toy shards (support.toy_corpus, through the shard stage's
writer) into a temporary folder. Prints `name: figure unit (reference: figure unit, ratio X)`
lines; the reference (the flat baseline) is measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 seed, few steps")
    parser.add_argument("--shards", type=Path, help="shard folder (default: toy shards)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--utterances", type=int, default=600, help="toy utterances when no --shards")
    parser.add_argument("--plot", type=Path, default=Path("build/bench/bench_model.png"),
                        help="PNG of the accuracies per pair and the seed-0 loss curves")
    parser.add_argument("--speech-weight", type=float, default=0.0,
                        help="share of speech-only examples (taken from the text share; paper mix: 0)")
    args = parser.parse_args()

    import torch
    from support.toy_corpus import write_synthetic_shards

    from lst_model.compare import compare
    from lst_model.config import load_run_spec
    from lst_model.corpus_tasks import corpus_items
    from lst_model.data import load_records, load_token_space, split_heldout
    from lst_model.items import PAIRS
    from lst_model.score import accuracy_by_pair, score_items
    from lst_model.train import load_model, read_log, train

    torch.set_num_threads(1)
    steps = args.steps or (60 if args.quick else 300)
    seeds = [0] if args.quick else [0, 1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or write_synthetic_shards(Path(tmp) / "shards", args.utterances, speakers=4)
        space = load_token_space(shards)
        records = load_records(shards)
        base = {
            "preset": "tiny",
            "data": {"seq_positions": 128, "patching": "curriculum", "heldout_fraction": 0.2,
                     "text_weight": 0.67 - args.speech_weight, "speech_weight": args.speech_weight},
            "train": {"batch_size": 8, "budget_positions": 8 * 128 * steps, "log_every": 10,
                      "checkpoint_every": 10**9, "warmup_steps": max(1, steps // 10), "threads": 1},
        }
        spec = load_run_spec(overrides=base)
        train_records, heldout = split_heldout(records, spec.data.heldout_fraction)

        report = compare(records, space, spec)
        mixture = report["mixture"]
        print(f"mixture_positions_per_token_static: {mixture['static']['positions_per_token']:.3f} (reference: baseline "
              f"{mixture['baseline']['positions_per_token']:.3f}, ratio "
              f"{mixture['static']['positions_per_token'] / mixture['baseline']['positions_per_token']:.3f}; paper 0.807)")
        inter = report["interleaved"]
        print(f"interleaved_speech_to_text_positions_lst_static: {inter['static']['speech_to_text']:.2f} :1 "
              f"(reference: baseline {inter['baseline']['speech_to_text']:.2f} :1, ratio "
              f"{inter['baseline']['speech_to_text'] / inter['static']['speech_to_text']:.2f})")
        for strategy in ("static", "word_sil_sep", "word_sil_merged", "bpe"):
            lst = report["speech_only"]["positions_per_utterance"][strategy]
            ref = report["speech_only"]["positions_per_utterance"]["baseline"]
            print(f"speech_positions_per_utterance_{strategy}: {lst:.1f} positions (reference: baseline {ref:.1f} positions, ratio {ref / lst:.2f})")

        # (arm, model kind, training patching); the FLOP-matched baseline gets as many training
        # FLOPs as the same seed's curriculum LST (the default training strategy).
        arms = {"lst_static": ("lst", "static"), "lst_aligned": ("lst", "word_sil_sep"),
                "lst_curriculum": ("lst", "curriculum"), "baseline": ("baseline", "static"),
                "baseline_flops": ("baseline", "static")}
        # (arm, scoring patching) rows of the table: LSTs trained with aligned patches are also scored aligned
        rows = [("lst_static", "static"), ("lst_aligned", "static"), ("lst_aligned", "word_sil_sep"),
                ("lst_curriculum", "static"), ("lst_curriculum", "word_sil_sep"), ("baseline", "static"),
                ("baseline_flops", "static")]
        results: dict[tuple[str, str], dict[str, list[float]]] = {row: {} for row in rows}
        throughput: dict[str, list[float]] = {arm: [] for arm in arms}
        flops: dict[str, list[float]] = {arm: [] for arm in arms}
        budget = base["train"]["budget_positions"]
        for seed in seeds:
            items, _ = corpus_items(records, spec.data.heldout_fraction, seed=seed)
            for arm, (kind, patching) in arms.items():
                arm_budget = round(budget * flops["lst_curriculum"][-1] / flops["baseline"][-1]) if arm == "baseline_flops" else budget
                run_spec = load_run_spec(overrides={**base, "model": {"kind": kind},
                                                    "data": {**base["data"], "patching": patching},
                                                    "train": {**base["train"], "seed": seed, "budget_positions": arm_budget}})
                out = Path(tmp) / f"{arm}-{seed}"
                result = train(run_spec, train_records, space, out)
                throughput[arm].append(result.tokens_per_second)
                flops[arm].append(read_log(out)[-1]["cumulative"]["train_flops"])
                model, loaded, _ = load_model(out / "checkpoint.pt")
                for row_arm, scoring in rows:
                    if row_arm != arm:
                        continue
                    scores = score_items(model, loaded, space, items, patching=scoring)
                    for pair, acc in accuracy_by_pair(scores).items():
                        for metric in ("acc_per_token", "acc_sum"):
                            results[(arm, scoring)].setdefault(f"{pair}_{metric}", []).append(acc[metric])

        items, skips = corpus_items(records, spec.data.heldout_fraction)
        n_items = sum(item.pair == "s2s" for item in items)
        print(f"# {len(train_records)} training / {len(heldout)} held-out utterances (split by transcript), "
              f"{n_items} items per modality pair (2 endings, same-speaker distractors; skipped utterances: {skips or 'none'}), "
              f"{steps} steps x 8 x 128 global positions per run, seeds {seeds}, speech-only share {args.speech_weight}")
        for arm in ("baseline", "baseline_flops"):
            lst_f, ref_f = statistics.mean(flops["lst_curriculum"]), statistics.mean(flops[arm])
            print(f"train_flops_per_run_lst_curriculum_vs_{arm}: {lst_f / 1e12:.3f} TFLOP (reference: {arm} "
                  f"{ref_f / 1e12:.3f} TFLOP, ratio {lst_f / ref_f:.2f})")
        for row in rows[:5]:
            for reference in ("baseline", "baseline_flops"):
                for pair in PAIRS:
                    lst, ref = results[row][f"{pair}_acc_per_token"], results[(reference, "static")][f"{pair}_acc_per_token"]
                    print(f"heldout_{pair}_acc_per_token_{row[0]}_scored_{row[1]}: {_fmt(lst)} (reference: {reference} "
                          f"{_fmt(ref)}, ratio {statistics.mean(lst) / statistics.mean(ref):.2f})")
        lst_tps, ref_tps = statistics.mean(throughput["lst_curriculum"]), statistics.mean(throughput["baseline"])
        print(f"train_throughput_cpu_1thread: {lst_tps:.0f} tokens/s (reference: baseline {ref_tps:.0f} tokens/s, ratio {lst_tps / ref_tps:.2f})")
        print()
        for line in _table(results, rows):
            print(line)
        if args.plot:
            _plot(results, rows, {arm: Path(tmp) / f"{arm}-0" for arm in arms}, args.plot)
            print(f"plot: {args.plot}")


def _table(results: dict, rows: list[tuple[str, str]]) -> list[str]:
    """Markdown table: per-token (and summed) accuracy per pair, mean ± s.e. over seeds."""
    from lst_model.items import PAIRS, pair_label

    header = "| model | scored | " + " | ".join(f"{pair_label(p)} per-token | {pair_label(p)} summed" for p in PAIRS) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(PAIRS))]
    for arm, scoring in rows:
        cells = [_fmt(results[(arm, scoring)][f"{p}_{m}"]) for p in PAIRS for m in ("acc_per_token", "acc_sum")]
        lines.append(f"| {arm} | {scoring} | " + " | ".join(cells) + " |")
    return lines


def _plot(results: dict, rows: list[tuple[str, str]], runs: dict[str, Path], out: Path) -> None:
    """Per-token accuracy per pair (bars, s.e. over seeds) and the seed-0 loss curves against training FLOPs."""
    import matplotlib

    from lst_model.items import PAIRS, pair_label

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lst_model.train import read_log

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        values = [results[row][f"{p}_acc_per_token"] for p in PAIRS]
        means = [statistics.mean(v) for v in values]
        errors = [statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0 for v in values]
        positions = [i + (index - (len(rows) - 1) / 2) * width for i in range(len(PAIRS))]
        bars.bar(positions, means, width, yerr=errors, capsize=2, label=f"{row[0]} ({row[1]})")
    bars.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    bars.set_xticks(range(len(PAIRS)), [pair_label(p) for p in PAIRS])
    bars.set_ylabel("held-out accuracy (per-token), mean ± s.e.")
    bars.set_ylim(0.3, 1.0)
    bars.legend(fontsize=7, ncol=2)
    for arm, run in runs.items():
        log = read_log(run)
        curves.plot([r["cumulative"]["train_flops"] for r in log], [r["loss"] for r in log], label=arm)
    curves.set_xlabel("cumulative training FLOPs (seed 0)")
    curves.set_ylabel("training loss")
    curves.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(values: list[float]) -> str:
    """mean ± standard error over seeds."""
    spread = f" ± {statistics.stdev(values) / len(values) ** 0.5:.3f} s.e." if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}"


if __name__ == "__main__":
    main()
