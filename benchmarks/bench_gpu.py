"""GPU benchmark (one CUDA device): training throughput and MFU of the `base` preset in bf16
for the LST and the flat baseline, and the HuBERT-base-sized encoder + k-means assignment
in x real time.

    .venv/bin/python benchmarks/bench_gpu.py [--steps 20] [--seq-positions 1024] [--batch-size 8]
                                             [--peak-tflops 989]

Data: toy utterances in the real token space (32k BPE + 501 units), mixed and packed as in
training (33 % interleaved / 67 % text by tokens, static p = 4). MFU = the analytic training
FLOPs (3 x forward, `lst_model.flops`, attention pairs the masks allow) per second over the
device's dense bf16 peak (`--peak-tflops`, default H100/H200 SXM: 989). HuBERT weights are
random (none can be downloaded here): speed does not depend on them. Prints
`name: figure unit (reference: figure unit, ratio X)`; without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support


def _train_throughput(kind: str, args, space, records, device) -> tuple[float, float]:
    """(tokens/s, training FLOP/s) of `args.steps` timed steps after 3 warm-up steps."""
    import torch

    from lst_model.config import load_run_spec
    from lst_model.flops import batch_cost
    from lst_model.model import Batch, build_model, summed_next_token_loss
    from lst_model.sequences import SequenceBuilder, training_sequences
    from lst_model.train import make_optimizer

    spec = load_run_spec(overrides={"preset": "base", "model": {"kind": kind},
                                    "data": {"patching": "static", "seq_positions": args.seq_positions},
                                    "train": {"batch_size": args.batch_size}})
    torch.manual_seed(0)
    model = build_model(spec.model, space.size).to(device)
    optimizer = make_optimizer(model, spec)
    builder = SequenceBuilder(space, spec.data)
    flat = kind == "baseline"
    batches = []
    for step in range(args.steps + 3):
        sequences = training_sequences(builder, records, seed=0, step=step, rows=range(args.batch_size),
                                       positions=args.seq_positions, flat=flat, progress=1.0)
        batch = Batch.from_examples(sequences, space.pad, flat)
        batches.append((batch.to(device), batch_cost(spec.model, space.size, batch)))
    tokens = flops = 0
    for index, (batch, cost) in enumerate(batches):
        if index == 3:
            torch.cuda.synchronize()
            began = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = summed_next_token_loss(model(batch), batch) / batch.valid[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= 3:
            tokens += cost.tokens
            flops += cost.train_flops
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return tokens / seconds, flops / seconds


def _hubert_real_time(device, seconds_of_audio: float = 160.0, batch: int = 16) -> float:
    """x real time of HuBERT-base (layer 11 features) + nearest of 501 centroids, bf16."""
    import torch
    import torchaudio

    from lst_data.units.nearest import NearestCentroid

    model = torchaudio.models.hubert_base().to(device).eval()
    assign = NearestCentroid(torch.randn(501, 768), device=device)
    clip = int(seconds_of_audio / batch * 16000)
    audio = torch.randn(batch, clip, device=device)
    runs = []
    for _ in range(4):
        torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            features, _ = model.extract_features(audio, num_layers=11)
            units = assign(features[-1].reshape(-1, 768))
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - began)
        assert units.numel() > 0
    return seconds_of_audio / min(runs[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-positions", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: skipped (no CUDA device)")
        return
    from support.toy_corpus import ToyLanguage, synthetic_records

    from lst_model.tokens import TokenSpace

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    language = ToyLanguage.make(0, n_words=2000, text_vocab_size=32000, n_units=501)
    records = synthetic_records(400, seed=0, min_words=10, max_words=40, language=language)
    space = TokenSpace(32000, 501)
    print(f"# {torch.cuda.get_device_name(device)}, base preset, bf16 autocast, batch {args.batch_size} x "
          f"{args.seq_positions} global positions, {args.steps} timed steps")
    results = {kind: _train_throughput(kind, args, space, records, device) for kind in ("lst", "baseline")}
    (lst_tps, lst_fps), (base_tps, base_fps) = results["lst"], results["baseline"]
    peak = args.peak_tflops * 1e12
    print(f"train_tokens_per_s_base_bf16: {lst_tps:.0f} tokens/s (reference: baseline {base_tps:.0f} tokens/s, "
          f"ratio {lst_tps / base_tps:.2f})")
    print(f"train_mfu_base_bf16: {100 * lst_fps / peak:.1f} % (reference: baseline {100 * base_fps / peak:.1f} %, "
          f"ratio {lst_fps / base_fps:.2f})")
    hubert = _hubert_real_time(device)
    print(f"hubert_base_kmeans_units_real_time: {hubert:.0f} x real time (reference: real time 1 x, ratio {hubert:.0f})")


if __name__ == "__main__":
    main()
