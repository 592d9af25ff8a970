"""Benchmark of lst_model: a three-way toy comparison of the LST, the flat baseline and the
flat BPE speech LM (`model.kind` lst, baseline, bpe_speechllm), tiny preset, over 3 seeds, at

(a) equal global positions: the same `train.budget_positions` for every kind;
(b) equal training FLOPs: each flat kind's budget scaled by the same seed's LST training
    FLOPs over its own at (a) (both from the runs' logs, `cumulative.train_flops`), so that
    its training FLOPs match the LST's (whole steps: the achieved ratio is printed).

The LST trains with curriculum patching and is scored static. Held-out accuracy: corpus
continuation items of the held-out transcripts (2 endings, same-speaker distractors) in the
four pairs s2s, t2t, s2t, t2s, by summed, per-token and per-character (`acc_norm`)
log-likelihood, mean ± standard error over seeds. Per run also: final loss, global
positions, training FLOPs, CPU tokens/s (1 thread); per kind the parameter count. Two
markdown tables, and a PNG (per-token accuracy per pair, seed-0 loss curves against
training FLOPs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_model.py [--quick] [--steps N] [--shards DIR]

Without --shards it writes toy shards (support.toy_corpus: 600 utterances, 4 speakers,
through the shard stage's writer) into a temporary folder. Prints
`name: figure unit (reference: figure unit, ratio X)` lines; the reference is the flat
baseline of the same budget, measured in the same run (for the FLOP match itself: the LST).

Runtime, 2 cores, OMP_NUM_THREADS=1, measured with the tiny preset of the time on a machine
shared with other jobs (load about 4, so wall time about 2x CPU time): --quick (1 seed,
40 steps, 5 runs) 57 s wall, 28 s CPU; one seed of 200 steps 166 s wall, 81 s CPU (8 s of
it fixed: shards, positions). The default, 3 seeds x 600 steps (the flat kinds' FLOP-matched
runs take about 2.9x and 1.9x the LST's steps): about 12 minutes of CPU, about 24 minutes
wall at that load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support

os.environ.setdefault("OMP_NUM_THREADS", "1")

BATCH_SIZE = 8
SEQ_POSITIONS = 128
ACCURACY_METRICS = ("acc_per_token", "acc_sum", "acc_norm")
# Budget settings: the suffix of a flat kind's run name under each (the LST has one run per seed).
SETTINGS = {"equal_positions": "", "equal_flops": "_flops"}


@dataclass(frozen=True)
class Run:
    """One trained model's figures."""

    seed: int
    steps: int
    final_loss: float
    positions: int
    train_flops: int
    tokens_per_second: float
    parameters: int
    accuracy: dict[str, dict[str, float]]  # pair -> metric -> held-out accuracy


@dataclass(frozen=True)
class Bench:
    """What every run shares: the config overrides, the training records and the run folder."""

    overrides: dict[str, Any]
    records: Sequence[Any]
    space: Any
    folder: Path

    def run(self, name: str, kind: str, steps: int, seed: int, items: Sequence[Any]) -> Run:
        """Train `kind` for `steps` steps into folder `name-seed`, then score it on `items`."""
        from lst_model.config import load_run_spec
        from lst_model.score import accuracy_by_pair, score_items
        from lst_model.train import load_model, read_log, train

        train_overrides = {**self.overrides["train"], "seed": seed, "budget_positions": steps * BATCH_SIZE * SEQ_POSITIONS,
                           "warmup_steps": max(1, steps // 10)}
        spec = load_run_spec(overrides={**self.overrides, "model": {"kind": kind}, "train": train_overrides})
        out = self.folder / f"{name}-{seed}"
        result = train(spec, self.records, self.space, out)
        cumulative = read_log(out)[-1]["cumulative"]
        model, loaded, _ = load_model(out / "checkpoint.pt")
        by_pair = accuracy_by_pair(score_items(model, loaded, self.space, items))
        accuracy = {pair: {m: float(acc[m]) for m in ACCURACY_METRICS} for pair, acc in by_pair.items()}
        return Run(seed, steps, result.final_loss, cumulative["global_positions"], cumulative["train_flops"],
                   result.tokens_per_second, result.parameters, accuracy)


def train_all(bench: Bench, records: Sequence[Any], heldout_fraction: float, steps: int,
              seeds: Sequence[int]) -> dict[str, list[Run]]:
    """Every run, by name: 'lst', and per flat kind `kind` (equal positions) and `kind_flops`."""
    from lst_model.corpus_tasks import corpus_items
    from lst_model.model import FLAT_KINDS

    runs: dict[str, list[Run]] = defaultdict(list)
    for seed in seeds:
        items, _ = corpus_items(records, heldout_fraction, seed=seed)
        lst = bench.run("lst", "lst", steps, seed, items)
        runs["lst"].append(lst)
        for kind in FLAT_KINDS:
            same_positions = bench.run(kind, kind, steps, seed, items)
            runs[kind].append(same_positions)
            flop_matched_steps = round(steps * lst.train_flops / same_positions.train_flops)
            runs[f"{kind}_flops"].append(bench.run(f"{kind}_flops", kind, flop_matched_steps, seed, items))
    return runs


def print_positions(records: Sequence[Any], space: Any, spec: Any) -> None:
    """Global positions of the LST against the baseline on these utterances (lst_model.compare)."""
    from lst_model.compare import compare

    report = compare(records, space, spec)
    mixture = report["mixture"]
    static, flat = mixture["static"]["positions_per_token"], mixture["baseline"]["positions_per_token"]
    print(f"mixture_positions_per_token_static: {static:.3f} (reference: baseline {flat:.3f}, ratio {static / flat:.3f}; paper 0.807)")
    inter = report["interleaved"]
    lst_ratio, flat_ratio = inter["static"]["speech_to_text"], inter["baseline"]["speech_to_text"]
    print(f"interleaved_speech_to_text_positions_lst_static: {lst_ratio:.2f} :1 (reference: baseline {flat_ratio:.2f} :1, "
          f"ratio {flat_ratio / lst_ratio:.2f})")
    per_utterance = report["speech_only"]["positions_per_utterance"]
    for strategy in ("static", "word_sil_sep", "word_sil_merged", "bpe"):
        lst, ref = per_utterance[strategy], per_utterance["baseline"]
        print(f"speech_positions_per_utterance_{strategy}: {lst:.1f} positions (reference: baseline {ref:.1f} positions, "
              f"ratio {ref / lst:.2f})")


def print_figures(runs: dict[str, list[Run]]) -> None:
    """The `name: figure (reference: ...)` lines: each kind against the flat baseline of the same budget."""
    compared = ("lst", "bpe_speechllm")
    baseline_parameters = runs["baseline"][0].parameters
    for kind in (name for name in runs if not name.endswith("_flops")):
        parameters = runs[kind][0].parameters
        print(f"parameters_{kind}: {parameters} (reference: baseline {baseline_parameters}, "
              f"ratio {parameters / baseline_parameters:.2f})")
    baseline_speed = _mean([r.tokens_per_second for r in runs["baseline"] + runs["baseline_flops"]])
    for kind in compared:
        speed = _mean([r.tokens_per_second for r in runs[kind] + runs.get(f"{kind}_flops", [])])
        print(f"train_throughput_cpu_1thread_{kind}: {speed:.0f} tokens/s (reference: baseline {baseline_speed:.0f} "
              f"tokens/s, ratio {speed / baseline_speed:.2f})")
    lst_flops = _mean([r.train_flops for r in runs["lst"]])
    for flat in (name for name in runs if name.endswith("_flops")):
        achieved = _mean([r.train_flops for r in runs[flat]])
        print(f"train_flops_per_run_{flat}: {achieved / 1e12:.4f} TFLOP (reference: lst {lst_flops / 1e12:.4f} TFLOP, "
              f"ratio {achieved / lst_flops:.3f})")
    for setting, suffix in SETTINGS.items():
        for kind in compared:
            _print_against_baseline(runs, kind if kind == "lst" else f"{kind}{suffix}", f"{kind}_{setting}", f"baseline{suffix}")


def _print_against_baseline(runs: dict[str, list[Run]], name: str, label: str, reference: str) -> None:
    """Run `name`'s positions, FLOPs, final loss and held-out accuracies against run `reference`'s."""
    from lst_model.items import PAIRS

    ours, theirs = runs[name], runs[reference]
    for figure, unit, digits, value in (("train_positions_per_run", " positions", 0, lambda r: r.positions),
                                        ("train_flops_per_run", " TFLOP", 4, lambda r: r.train_flops / 1e12),
                                        ("final_loss", " nats/token", 3, lambda r: r.final_loss)):
        a, b = [value(r) for r in ours], [value(r) for r in theirs]
        print(f"{figure}_{label}: {_fmt(a, digits)}{unit} (reference: {reference} {_fmt(b, digits)}{unit}, "
              f"ratio {_mean(a) / _mean(b):.3f})")
    for pair in PAIRS:
        for metric in ACCURACY_METRICS:
            a, b = _accuracies(ours, pair, metric), _accuracies(theirs, pair, metric)
            print(f"heldout_{pair}_{metric}_{label}: {_fmt(a)} (reference: {reference} {_fmt(b)}, ratio {_mean(a) / _mean(b):.2f})")


def tables(runs: dict[str, list[Run]]) -> list[str]:
    """Markdown: held-out accuracy per pair and metric (mean ± s.e. over seeds), then each run's figures."""
    from lst_model.items import PAIRS, pair_label

    metrics = ACCURACY_METRICS
    short = {"acc_per_token": "per-token", "acc_sum": "summed", "acc_norm": "norm"}
    lines = ["| model | budget | " + " | ".join(f"{pair_label(p)} {short[m]}" for p in PAIRS for m in metrics) + " |",
             "|" + "---|" * (2 + len(PAIRS) * len(metrics))]
    for name, kind_runs in runs.items():
        cells = [_fmt(_accuracies(kind_runs, p, m)) for p in PAIRS for m in metrics]
        lines.append(f"| {_kind(name)} | {_budget(name)} | " + " | ".join(cells) + " |")
    lines += ["", "| model | budget | seed | steps | final loss | global positions | training TFLOP | CPU tokens/s | parameters |",
              "|" + "---|" * 9]
    for name, kind_runs in runs.items():
        lines += [f"| {_kind(name)} | {_budget(name)} | {r.seed} | {r.steps} | {r.final_loss:.3f} | {r.positions} | "
                  f"{r.train_flops / 1e12:.4f} | {r.tokens_per_second:.0f} | {r.parameters} |" for r in kind_runs]
    return lines


def plot(runs: dict[str, list[Run]], folder: Path, out: Path) -> None:
    """Per-token accuracy per pair (bars, s.e. over seeds) and the seed-0 loss curves against training FLOPs."""
    import matplotlib

    from lst_model.items import PAIRS, pair_label
    from lst_model.train import read_log

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(runs)
    for index, (name, kind_runs) in enumerate(runs.items()):
        values = [_accuracies(kind_runs, p, "acc_per_token") for p in PAIRS]
        positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(PAIRS))]
        bars.bar(positions, [_mean(v) for v in values], width, yerr=[_standard_error(v) for v in values], capsize=2,
                 label=f"{_kind(name)} ({_budget(name)})")
        log = read_log(folder / f"{name}-0")
        curves.plot([row["cumulative"]["train_flops"] for row in log], [row["loss"] for row in log], label=name)
    bars.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    bars.set_xticks(range(len(PAIRS)), [pair_label(p) for p in PAIRS])
    bars.set_ylabel("held-out accuracy (per-token), mean ± s.e.")
    bars.set_ylim(0.3, 1.0)
    bars.legend(fontsize=7, ncol=2)
    curves.set_xlabel("cumulative training FLOPs (seed 0)")
    curves.set_ylabel("training loss")
    curves.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _kind(name: str) -> str:
    return name.removesuffix("_flops")


def _budget(name: str) -> str:
    if name == "lst":
        return "reference"
    return "LST's FLOPs" if name.endswith("_flops") else "LST's positions"


def _accuracies(runs: Sequence[Run], pair: str, metric: str) -> list[float]:
    return [r.accuracy[pair][metric] for r in runs]


def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values)


def _standard_error(values: Sequence[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    """mean ± standard error over seeds."""
    spread = f" ± {_standard_error(values):.{digits}f} s.e." if len(values) > 1 else ""
    return f"{_mean(values):.{digits}f}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description="LST vs flat baseline vs BPE speech LM on toy shards")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 steps")
    parser.add_argument("--shards", type=Path, help="shard folder (default: toy shards)")
    parser.add_argument("--steps", type=int, default=None, help="training steps of the reference budget (default 600)")
    parser.add_argument("--utterances", type=int, default=600, help="toy utterances when no --shards")
    parser.add_argument("--plot", type=Path, default=Path("build/bench/bench_model.png"),
                        help="PNG of the accuracies per pair and the seed-0 loss curves")
    parser.add_argument("--speech-weight", type=float, default=0.0,
                        help="share of speech-only examples (taken from the text share; paper mix: 0)")
    args = parser.parse_args()

    import torch
    from support.toy_corpus import write_synthetic_shards

    from lst_model.config import load_run_spec
    from lst_model.corpus_tasks import corpus_items
    from lst_model.data import load_records, load_token_space, split_heldout

    torch.set_num_threads(1)
    steps = args.steps or (40 if args.quick else 600)
    seeds = [0] if args.quick else [0, 1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or write_synthetic_shards(Path(tmp) / "shards", args.utterances, speakers=4)
        space = load_token_space(shards)
        records = load_records(shards)
        overrides = {
            "preset": "tiny",
            "data": {"seq_positions": SEQ_POSITIONS, "patching": "curriculum", "heldout_fraction": 0.2,
                     "text_weight": 0.67 - args.speech_weight, "speech_weight": args.speech_weight},
            "train": {"batch_size": BATCH_SIZE, "log_every": 10, "checkpoint_every": 10**9, "threads": 1},
        }
        spec = load_run_spec(overrides=overrides)
        train_records, heldout = split_heldout(records, spec.data.heldout_fraction)
        print_positions(records, space, spec)

        bench = Bench(overrides, train_records, space, Path(tmp))
        runs = train_all(bench, records, spec.data.heldout_fraction, steps, seeds)

        items, skips = corpus_items(records, spec.data.heldout_fraction)
        n_items = sum(item.pair == "s2s" for item in items)
        print(f"# {len(train_records)} training / {len(heldout)} held-out utterances (split by transcript), "
              f"{n_items} items per modality pair (2 endings, same-speaker distractors; skipped utterances: {skips or 'none'}), "
              f"reference budget {steps} steps x {BATCH_SIZE} x {SEQ_POSITIONS} global positions, tiny preset, seeds {seeds}, "
              f"speech-only share {args.speech_weight}")
        print_figures(runs)
        print()
        for line in tables(runs):
            print(line)
        if args.plot:
            plot(runs, Path(tmp), args.plot)
            print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
