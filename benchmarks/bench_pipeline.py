"""End-to-end build of the demo corpus: real-time factor, where the time goes, scaling, Ray overhead.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick | --utterances N | --hours H]

Prints `name: figure unit (reference: figure unit, ratio X)` lines. References are
measured in the same run: real time (audio seconds) for the real-time factor, the
1-worker run for scaling, and the in-process runner for Ray's overhead. Ray is started
once before the timed runs (its start-up is reported on its own line).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")

from lst_data.config import load_config  # noqa: E402
from lst_data.demo import load_ground_truth, replicate_corpus, synthesize_demo_corpus  # noqa: E402
from pipelines.build_corpus import build_corpus  # noqa: E402


def timed_build(corpus: Path, out: Path, overrides: dict) -> tuple[float, dict[str, float], float]:
    config = load_config(overrides=overrides)
    started = time.perf_counter()
    report = build_corpus(corpus, out, config)
    wall = time.perf_counter() - started
    hours = next(o.figures["hours"] for o in report.outcomes if o.name == "ingest")
    return wall, {o.name: o.seconds for o in report.outcomes}, float(hours) * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="12 utterances instead of 36")
    parser.add_argument("--utterances", type=int, default=None, help="demo utterances (default 36)")
    parser.add_argument("--hours", type=float, default=None,
                        help="copies of the demo corpus (audio hard-linked) making about this many hours")
    args = parser.parse_args()
    n = args.utterances or (12 if args.quick else 36)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus = synthesize_demo_corpus(tmp_path / "corpus", n_utterances=n)
        if args.hours:
            demo_hours = sum(u["duration"] for u in load_ground_truth(corpus)["utterances"]) / 3600
            replicate_corpus(corpus, tmp_path / "replicated", max(1, round(args.hours / demo_hours)))
            corpus = tmp_path / "replicated"
        base = {"units": {"k": 50}, "tokenizer": {"vocab_size": 200}}

        local_wall, local_steps, audio_s = timed_build(corpus, tmp_path / "local", {**base, "ray": {"runner": "local"}})
        print(f"build_local_rtf: {audio_s / local_wall:.1f}x real time (reference: 1.0x real time, ratio {audio_s / local_wall:.1f})")
        for step, seconds in local_steps.items():
            print(f"build_local_share_{step}: {seconds:.1f} s (reference: {local_wall:.1f} s whole build, ratio {seconds / local_wall:.2f})")

        from lst_data.core.config import RayConfig
        from lst_data.core.ray_env import ensure_ray

        started = time.perf_counter()
        ensure_ray(RayConfig())
        print(f"ray_startup: {time.perf_counter() - started:.1f} s (reference: {local_wall:.1f} s local build, ratio {(time.perf_counter() - started) / local_wall:.2f})")

        one_wall, _, _ = timed_build(corpus, tmp_path / "ray1", {**base, "ray": {"runner": "ray", "num_workers": 1}})
        two_wall, two_steps, _ = timed_build(corpus, tmp_path / "ray2", {**base, "ray": {"runner": "ray", "num_workers": 2}})
        print(f"build_ray_2workers_rtf: {audio_s / two_wall:.1f}x real time (reference: 1.0x real time, ratio {audio_s / two_wall:.1f})")
        print(f"build_scaling_2_vs_1_workers: {two_wall:.1f} s (reference: {one_wall:.1f} s with 1 worker, ratio {one_wall / two_wall:.2f})")
        for step, seconds in two_steps.items():
            print(f"build_ray_share_{step}: {seconds:.1f} s (reference: {two_wall:.1f} s whole build, ratio {seconds / two_wall:.2f})")
        overhead = two_wall / local_wall - 1
        print(f"ray_overhead_vs_local: {two_wall:.1f} s (reference: {local_wall:.1f} s in-process, ratio {two_wall / local_wall:.2f}; overhead {overhead:+.0%})")


if __name__ == "__main__":
    main()
