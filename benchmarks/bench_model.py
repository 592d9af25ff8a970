"""Benchmark of lst_model: positions (LST vs baseline), held-out accuracy (corpus
continuation items of the held-out transcripts, same-speaker distractors, s2s/t2t/s2t/t2s) at equal
global-position budget and at equal training FLOPs (a baseline given the LST run's FLOPs)
over 3 seeds (mean ± standard error), and CPU training throughput.

    .venv/bin/python benchmarks/bench_model.py [--quick] [--shards DIR] [--steps N]

Without --shards it writes toy shards (lst_model.synthetic, through the shard stage's
writer) into a temporary folder. Prints `name: figure unit (reference: figure unit, ratio X)`
lines; the reference (the flat baseline) is measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 seed, few steps")
    parser.add_argument("--shards", type=Path, help="shard folder (default: toy shards)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--utterances", type=int, default=600, help="toy utterances when no --shards")
    parser.add_argument("--plot", type=Path, help="write the loss curves of seed 0 to this PNG")
    parser.add_argument("--speech-weight", type=float, default=0.0,
                        help="share of speech-only examples (taken from the text share; paper mix: 0)")
    args = parser.parse_args()

    import torch

    from lst_model.compare import compare
    from lst_model.config import load_run_spec
    from lst_model.corpus_tasks import corpus_items
    from lst_model.data import load_records, load_token_space, split_heldout
    from lst_model.score import accuracy_by_pair, score_items
    from lst_model.synthetic import write_synthetic_shards
    from lst_model.train import load_model, plot_losses, read_log, train

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

        arms = ("lst", "baseline", "baseline_flop_matched")
        results: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}
        throughput: dict[str, list[float]] = {arm: [] for arm in arms}
        flops: dict[str, list[float]] = {arm: [] for arm in arms}
        for seed in seeds:
            for arm in arms:
                kind = "lst" if arm == "lst" else "baseline"
                budget = base["train"]["budget_positions"]
                if arm == "baseline_flop_matched":  # as many training FLOPs as this seed's LST run
                    budget = round(budget * flops["lst"][-1] / flops["baseline"][-1])
                run_spec = load_run_spec(overrides={**base, "model": {"kind": kind},
                                                    "train": {**base["train"], "seed": seed, "budget_positions": budget}})
                out = Path(tmp) / f"{arm}-{seed}"
                result = train(run_spec, train_records, space, out)
                throughput[arm].append(result.tokens_per_second)
                flops[arm].append(read_log(out)[-1]["cumulative"]["train_flops"])
                model, loaded, _ = load_model(out / "checkpoint.pt")
                items, _ = corpus_items(records, spec.data.heldout_fraction, seed=seed)
                for pair, acc in accuracy_by_pair(score_items(model, loaded, space, items)).items():
                    results[arm].setdefault(f"{pair}_acc_per_token", []).append(acc["acc_per_token"])
                    results[arm].setdefault(f"{pair}_acc_sum", []).append(acc["acc_sum"])
            if seed == 0 and args.plot:
                plot_losses({arm: Path(tmp) / f"{arm}-0" for arm in arms}, args.plot, x="train_flops")

        items, skips = corpus_items(records, spec.data.heldout_fraction)
        n_items = sum(item.pair == "s2s" for item in items)
        print(f"# {len(train_records)} training / {len(heldout)} held-out utterances (split by transcript), "
              f"{n_items} items per modality pair (skipped utterances: {skips or 'none'}), "
              f"{steps} steps x 8 x 128 global positions per run, seeds {seeds}, speech-only share {args.speech_weight}")
        lst_f = statistics.mean(flops["lst"])
        for arm in arms[1:]:
            ref_f = statistics.mean(flops[arm])
            print(f"train_flops_per_run_vs_{arm}: {lst_f / 1e12:.3f} TFLOP (reference: {arm} {ref_f / 1e12:.3f} TFLOP, ratio {lst_f / ref_f:.2f})")
        for arm in arms[1:]:
            for metric in results["lst"]:
                lst, ref = results["lst"][metric], results[arm][metric]
                print(f"heldout_{metric}_vs_{arm}: {_fmt(lst)} (reference: {arm} {_fmt(ref)}, ratio {statistics.mean(lst) / statistics.mean(ref):.2f})")
        lst_tps, ref_tps = statistics.mean(throughput["lst"]), statistics.mean(throughput["baseline"])
        print(f"train_throughput_cpu_1thread: {lst_tps:.0f} tokens/s (reference: baseline {ref_tps:.0f} tokens/s, ratio {lst_tps / ref_tps:.2f})")


def _fmt(values: list[float]) -> str:
    """mean ± standard error over seeds."""
    spread = f" ± {statistics.stdev(values) / len(values) ** 0.5:.3f} s.e." if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}"


if __name__ == "__main__":
    main()
