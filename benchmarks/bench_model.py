"""Benchmark of lst_model: positions (LST vs baseline), held-out accuracy at equal
global-position budget over 3 seeds, and CPU training throughput.

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
    args = parser.parse_args()

    import torch

    from lst_model.compare import compare
    from lst_model.config import load_run_spec
    from lst_model.data import load_records, load_token_space, split_heldout
    from lst_model.score import accuracy, score_items
    from lst_model.synthetic import write_synthetic_shards
    from lst_model.tasks import heldout_continuation_items
    from lst_model.train import load_model, plot_losses, train

    torch.set_num_threads(1)
    steps = args.steps or (60 if args.quick else 300)
    seeds = [0] if args.quick else [0, 1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or write_synthetic_shards(Path(tmp) / "shards", args.utterances)
        space = load_token_space(shards)
        records = load_records(shards)
        base = {
            "preset": "tiny",
            "data": {"seq_positions": 128, "patching": "curriculum", "heldout_fraction": 0.2},
            "train": {"batch_size": 8, "budget_positions": 8 * 128 * steps, "log_every": 10,
                      "checkpoint_every": 10**9, "warmup_steps": max(1, steps // 10), "threads": 1},
        }
        spec = load_run_spec(overrides=base)
        train_records, heldout = split_heldout(records, spec.data.heldout_fraction)

        report = compare(records, space, spec)
        inter = report["interleaved"]
        print(f"interleaved_speech_to_text_positions_lst_static: {inter['static']['speech_to_text']:.2f} :1 "
              f"(reference: baseline {inter['baseline']['speech_to_text']:.2f} :1, ratio "
              f"{inter['baseline']['speech_to_text'] / inter['static']['speech_to_text']:.2f})")
        for strategy in ("static", "word_sil_sep", "word_sil_merged", "bpe"):
            lst = report["speech_only"]["positions_per_utterance"][strategy]
            ref = report["speech_only"]["positions_per_utterance"]["baseline"]
            print(f"speech_positions_per_utterance_{strategy}: {lst:.1f} positions (reference: baseline {ref:.1f} positions, ratio {ref / lst:.2f})")

        results: dict[str, dict[str, list[float]]] = {"lst": {}, "baseline": {}}
        throughput: dict[str, list[float]] = {"lst": [], "baseline": []}
        for seed in seeds:
            for kind in ("lst", "baseline"):
                run_spec = load_run_spec(overrides={**base, "model": {"kind": kind}, "train": {**base["train"], "seed": seed}})
                out = Path(tmp) / f"{kind}-{seed}"
                result = train(run_spec, train_records, space, out)
                throughput[kind].append(result.tokens_per_second)
                model, loaded, _ = load_model(out / "checkpoint.pt")
                for mode in ("speech", "text"):
                    items = heldout_continuation_items(heldout, mode, seed=seed)
                    acc = accuracy(score_items(model, loaded, space, items))
                    results[kind].setdefault(f"{mode}_acc_per_token", []).append(acc["acc_per_token"])
                    results[kind].setdefault(f"{mode}_acc_sum", []).append(acc["acc_sum"])
                results[kind].setdefault("final_loss", []).append(result.final_loss)
            if seed == 0 and args.plot:
                plot_losses({"lst": Path(tmp) / "lst-0", "baseline": Path(tmp) / "baseline-0"}, args.plot)

        n_items = len(heldout_continuation_items(heldout, "speech"))
        print(f"# {len(train_records)} training / {len(heldout)} held-out utterances, {n_items} items per mode, "
              f"{steps} steps x 8 x 128 global positions per run, seeds {seeds}")
        for metric in results["lst"]:
            lst, ref = results["lst"][metric], results["baseline"][metric]
            print(f"heldout_{metric}: {_fmt(lst)} (reference: baseline {_fmt(ref)}, ratio {statistics.mean(lst) / statistics.mean(ref):.2f})")
        lst_tps, ref_tps = statistics.mean(throughput["lst"]), statistics.mean(throughput["baseline"])
        print(f"train_throughput_cpu_1thread: {lst_tps:.0f} tokens/s (reference: baseline {ref_tps:.0f} tokens/s, ratio {lst_tps / ref_tps:.2f})")


def _fmt(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}"


if __name__ == "__main__":
    main()
