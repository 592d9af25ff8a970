"""Benchmark of the streaming training input (lst_model.stream): utterances/s through the
whole input pipeline (read, decode, build examples, pack, collate; 2 DataLoader workers)
against a raw `tarfile` read of the same shards (and the shard reader alone in one process,
what bounds each worker), its packed global positions/s against what the trainer consumes
(tiny preset, CPU, measured in the same run), and the streaming process's peak memory
over one epoch of 8000 toy utterances against 1000 (memory must not grow with the corpus).

    .venv/bin/python benchmarks/bench_input.py [--utterances 4000] [--workers 2] [--shards DIR]

Without --shards it writes toy shards (support.toy_corpus, through the shard stage's writer).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support

os.environ.setdefault("OMP_NUM_THREADS", "1")


def raw_tar_samples_per_second(shard_dir: Path) -> tuple[float, int]:
    """Every member of every tar read into memory with the standard library; samples = distinct keys."""
    began = time.perf_counter()
    keys = 0
    for tar_path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            last = None
            for member in tar:
                tar.extractfile(member).read()
                key = member.name.split(".", 1)[0]
                keys += key != last
                last = key
    return keys / (time.perf_counter() - began), keys


def stream_peak_rss_mb(shard_dir: Path) -> float:
    """Peak RSS (MB) of a fresh process that streams one epoch of `shard_dir` (imports included)."""
    done = subprocess.run([sys.executable, __file__, "--rss-of", str(shard_dir)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _print_peak_rss(shard_dir: Path) -> None:
    import torch

    from lst_model.config import load_run_spec
    from lst_model.data import load_token_space
    from lst_model.stream import PackedShardStream

    torch.set_num_threads(1)
    spec = load_run_spec(overrides={"preset": "tiny", "data": {"input": "stream", "heldout_fraction": 0.0}})
    dataset = PackedShardStream(shard_dir, spec, load_token_space(shard_dir), rows=8)
    for _ in dataset:
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-of", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--utterances", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=Path)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each rate (the best is printed)")
    args = parser.parse_args()
    if args.rss_of:
        _print_peak_rss(args.rss_of)
        return

    import torch
    from support.toy_corpus import write_synthetic_shards
    from torch.utils.data import DataLoader

    from lst_data.format.loader import shard_pipeline
    from lst_model.config import load_run_spec, replace
    from lst_model.data import load_records, load_token_space
    from lst_model.stream import PackedShardStream
    from lst_model.train import read_log, train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or write_synthetic_shards(Path(tmp) / "shards", args.utterances, samples_per_shard=100)
        space = load_token_space(shards)
        spec = load_run_spec(overrides={"preset": "tiny", "data": {"input": "stream", "heldout_fraction": 0.0,
                                                                   "patching": "curriculum"},
                                        "train": {"batch_size": 8, "loader_workers": args.workers,
                                                  "budget_positions": 8 * 128 * args.train_steps, "threads": 1,
                                                  "log_every": args.train_steps, "checkpoint_every": 10**9}})
        raw_tar_samples_per_second(shards)  # warm the page cache for every measurement
        pipeline_runs, reader_runs, raw_runs = [], [], []
        for _ in range(args.repeats):  # interleaved, best of each: the machine is shared
            raw_rate, n_samples = raw_tar_samples_per_second(shards)
            raw_runs.append(raw_rate)

            # one exact epoch through the DataLoader, worker start included
            loader = DataLoader(PackedShardStream(shards, spec, space, rows=spec.train.batch_size), batch_size=None,
                                num_workers=args.workers, prefetch_factor=4)
            began = time.perf_counter()
            positions = batches = 0
            for item in loader:
                positions += int(item["cost"][0, 1])
                batches += 1
            seconds = time.perf_counter() - began
            pipeline_runs.append((n_samples / seconds, positions / seconds))

            # the shard reader alone, in one process like the raw read (what bounds each worker above)
            began = time.perf_counter()
            read = sum(len(batch) for batch in shard_pipeline(shards, batch_size=32, shuffle=True, with_audio=False))
            reader_runs.append(read / (time.perf_counter() - began))
        raw_rate, reader_rate = max(raw_runs), max(reader_runs)
        pipeline_rate, produced = max(pipeline_runs)
        n_shards = len(list(shards.glob("*.tar")))

        rss_small, rss_large = (stream_peak_rss_mb(write_synthetic_shards(Path(tmp) / f"rss{n}", n, samples_per_shard=100))
                                for n in (1000, 8000))

        run = Path(tmp) / "run"
        train(replace(spec, data={"input": "memory"}), load_records(shards), space, run)
        trainer_rate = read_log(run)[-1]["positions_per_s"]

    print(f"# {n_samples} utterances in {n_shards} shards, {args.workers} workers, "
          f"{batches} micro-batches of 8 x 128 positions in the epoch")
    print(f"input_pipeline_samples_per_s: {pipeline_rate:.0f} utterances/s (reference: raw tarfile read "
          f"{raw_rate:.0f} samples/s, ratio {pipeline_rate / raw_rate:.2f})")
    print(f"shard_reader_samples_per_s_one_process: {reader_rate:.0f} samples/s (reference: raw tarfile read {raw_rate:.0f} "
          f"samples/s, ratio {reader_rate / raw_rate:.2f})")
    print(f"input_stream_peak_rss_8000_utterances: {rss_large:.0f} MB (reference: 1000 utterances {rss_small:.0f} MB, "
          f"ratio {rss_large / rss_small:.2f})")
    print(f"input_pipeline_packed_positions_per_s: {produced:.0f} positions/s (reference: trainer consumption "
          f"{trainer_rate:.0f} positions/s, tiny preset, CPU 1 thread, ratio {produced / trainer_rate:.2f})")


if __name__ == "__main__":
    main()
