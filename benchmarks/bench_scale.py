"""How a build scales with the corpus: driver memory, shard-step time per hour, Ray vs local, workers.

The demo corpus is replicated (hard links) to SMALL and 8 x SMALL hours, with TextGrids of
its exact word boundaries so that alignment costs nothing and the data plane is what is
measured. Every build runs as its own `lst-data build` process; its driver's RssAnon (private
memory) is sampled while it runs. Prints `name: figure unit (reference: figure unit, ratio X)`
lines, each against a reference measured in the same run:

- driver peak RssAnon per added hour, against the peak at SMALL hours (ratio large / small), with
  partitions of one size (`ray.partition_rows`) at both sizes;
- shard-step seconds per hour in-process (one core) at 8 x SMALL, against SMALL (ratio: 1.0 is linear);
- Ray (2 workers) against the in-process runner at SMALL hours with TextGrids (Ray's fixed cost),
  and the default build (PocketSphinx) at --ray-hours, in-process against Ray;
- the align step with PocketSphinx on 2 Ray workers against 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")

from lst_data.core.memory import run_sampling_memory  # noqa: E402
from lst_data.demo import load_ground_truth, replicate_corpus, synthesize_demo_corpus  # noqa: E402

MIB = 1024


def build(corpus: Path, out: Path, overrides: dict, steps: str | None = None) -> tuple[dict, float, float]:
    """(build.json, driver peak RssAnon in MiB, wall seconds) of one `lst-data build` process."""
    config = out.with_suffix(".yaml")
    config.write_text(json.dumps(overrides))  # JSON is YAML
    command = [sys.executable, "-m", "lst_data.cli", "build", str(corpus), "--out", str(out), "--config", str(config)]
    if steps:
        command += ["--steps", steps]
    run = run_sampling_memory(command, env={**os.environ, "LST_DATA_NO_PROGRESS": "1"})
    if run.returncode not in (0, 3):
        raise SystemExit(f"build failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads((out / "build.json").read_text()), run.peak_rss_anon_kib / MIB, run.seconds


def step_seconds(report: dict, name: str) -> float:
    return next(s["seconds"] for s in report["steps"] if s["name"] == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=1.0, help="the small corpus (the large one is 8x)")
    parser.add_argument("--ray-hours", type=float, default=1.0,
                        help="corpus of the default (PocketSphinx) builds: in-process vs Ray, 1 vs 2 workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp_path = Path(tmp)
        demo = synthesize_demo_corpus(tmp_path / "demo")
        demo_hours = sum(u["duration"] for u in load_ground_truth(demo)["utterances"]) / 3600
        corpora = {}
        for label, hours in (("small", args.hours), ("large", 8 * args.hours), ("full", args.ray_hours)):
            copies = max(1, round(hours / demo_hours))
            corpora[label] = (tmp_path / label, tmp_path / f"{label}_tg", copies * demo_hours)
            replicate_corpus(demo, tmp_path / label, copies, textgrids=None if label == "full" else tmp_path / f"{label}_tg")
        base = {"units": {"k": 50, "sample_frames": 50000}, "tokenizer": {"vocab_size": 200}}

        def textgrid(label: str, ray: dict) -> dict:
            return {**base, "align": {"backend": "textgrid", "textgrid": {"directory": str(corpora[label][1])}},
                    "ray": ray}

        # Partitions of one size at both corpus sizes (8 at the small one): what the driver holds
        # per partition is then the same, and only what grows with the corpus shows.
        small_utterances = round(corpora["small"][2] / demo_hours) * len(load_ground_truth(demo)["utterances"])
        ray2 = {"runner": "ray", "num_workers": 2, "cpus_per_worker": 0.5, "partition_rows": -(-small_utterances // 8)}
        local = {"runner": "local", "partition_rows": ray2["partition_rows"]}
        small_h, large_h = corpora["small"][2], corpora["large"][2]
        _, small_peak, ray_small = build(corpora["small"][0], tmp_path / "ray_small", textgrid("small", ray2))
        _, large_peak, _ = build(corpora["large"][0], tmp_path / "ray_large", textgrid("large", ray2))
        per_hour = (large_peak - small_peak) / (large_h - small_h)
        print(f"driver_peak_rss_anon_per_added_hour: {per_hour:.2f} MiB/h (reference: {small_peak:.0f} MiB peak at "
              f"{small_h:.2f} h; {large_peak:.0f} MiB at {large_h:.2f} h, ratio {large_peak / small_peak:.3f})")

        small_local, _, local_small = build(corpora["small"][0], tmp_path / "local_small", textgrid("small", local))
        large_local, _, _ = build(corpora["large"][0], tmp_path / "local_large", textgrid("large", local))
        small_rate = step_seconds(small_local, "shard") / small_h
        large_rate = step_seconds(large_local, "shard") / large_h
        print(f"shard_step_seconds_per_hour: {large_rate:.2f} s/h at {large_h:.2f} h (reference: {small_rate:.2f} s/h "
              f"at {small_h:.2f} h, ratio {large_rate / small_rate:.2f})")
        for name in ("ingest", "align", "units", "tokenize", "shard"):
            print(f"local_step_{name}_seconds_per_hour: {step_seconds(large_local, name) / large_h:.2f} s/h "
                  f"(reference: {step_seconds(small_local, name) / small_h:.2f} s/h at {small_h:.2f} h, ratio "
                  f"{(step_seconds(large_local, name) / large_h) / max(step_seconds(small_local, name) / small_h, 1e-9):.2f})")
        print(f"ray_vs_local_textgrid_build_{small_h:.0f}h: {ray_small:.1f} s on Ray, 2 workers (reference: "
              f"{local_small:.1f} s in-process, ratio {ray_small / local_small:.2f}; no aligner: the fixed cost of Ray)")

        # The default build (PocketSphinx alignment) at --ray-hours: in-process, Ray with 1 worker, with 2.
        full_corpus, _, full_h = corpora["full"]
        runs = {}
        for label, ray in (("local", {"runner": "local"}), ("ray1", {**ray2, "num_workers": 1}), ("ray2", ray2)):
            report, _, wall = build(full_corpus, tmp_path / f"full_{label}", {**base, "ray": ray})
            runs[label] = (report, wall)
        local_wall, (one, _), (two, two_wall) = runs["local"][1], runs["ray1"], runs["ray2"]
        print(f"ray_vs_local_build_{full_h:.1f}h: {two_wall:.1f} s on Ray, 2 workers (reference: {local_wall:.1f} s "
              f"in-process, ratio {two_wall / local_wall:.2f}; PocketSphinx, {full_h * 3600 / two_wall:.0f}x real time)")
        one_s, two_s = step_seconds(one, "align"), step_seconds(two, "align")
        print(f"align_scaling_2_vs_1_workers: {two_s:.1f} s with 2 (reference: {one_s:.1f} s with 1 Ray worker, "
              f"{full_h:.2f} h PocketSphinx, ratio {one_s / two_s:.2f})")


if __name__ == "__main__":
    main()
