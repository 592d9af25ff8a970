"""GPU benchmark (one CUDA device; under 5 minutes on one H100):

1. training: the `base` preset in bf16 autocast, LST and flat baseline, `--steps` timed steps
   of `--batch-size` x `--seq-positions` global positions: tokens/s and MFU, the analytic
   training FLOPs (`lst_model.flops`: 3 x forward, attention pairs the masks allow) per second
   over the device's dense bf16 peak: 989 TFLOP/s for an H100 SXM and an H200 (from the
   device name), otherwise the PEAK_ENV variable below, in TFLOP/s (without it: no MFU);
2. attention: the base LST with `model.attention` 'flex' against 'dense', one packed row of
   1024, 4096 and 16384 global positions: time of a forward + backward pass and peak GPU
   memory (an out-of-memory is reported as such);
3. speech units: a HuBERT-base-shaped encoder (mHuBERT-25Hz's conv stack, 12 layers of 768,
   features of layer 11) run through the units stage's own encoder in bf16, then 501-way
   nearest-centroid assignment, in x real time. Its weights are random (nothing can be
   downloaded here): the speed does not depend on them.

    .venv/bin/python benchmarks/bench_gpu.py [--steps 20] [--seq-positions 1024] [--batch-size 8]

Data: toy utterances in the real token space (32k BPE + 501 units), mixed and packed as in
training (33 % interleaved / 67 % text by tokens, static p = 4). Prints
`name: figure unit (reference: figure unit, ratio X)`; the reference is the flat baseline,
the dense attention or real time, measured in the same run. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support

PEAK_ENV = "BENCH_GPU_PEAK_TFLOPS"
WARMUP_STEPS = 3
ATTENTION_POSITIONS = (1024, 4096, 16384)
UNIT_SECONDS, UNIT_UTTERANCE_SECONDS, UNIT_BATCH = 320, 10, 16


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the device: known for the H100 SXM and the H200 (not their
    NVL/PCIe boards, which run at lower clocks), else from PEAK_ENV, else None."""
    sxm_names = ("H100 SXM", "H100 80GB HBM3", "H200")
    if "NVL" not in device_name and any(name in device_name for name in sxm_names):
        return 989e12
    value = os.environ.get(PEAK_ENV)
    if value is None:
        return None
    try:
        return float(value) * 1e12
    except ValueError:
        sys.exit(f"bench_gpu: {PEAK_ENV}={value!r} is not a number (the device's dense bf16 peak in TFLOP/s, e.g. 989)")


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spec(kind: str, positions: int, batch_size: int, **model: Any) -> Any:
    from lst_model.config import load_run_spec

    return load_run_spec(overrides={"preset": "base", "model": {"kind": kind, **model},
                                    "data": {"patching": "static", "seq_positions": positions},
                                    "train": {"batch_size": batch_size}})


def _batches(spec: Any, space: Any, records: Sequence[Any], steps: int) -> list[tuple[Any, Any]]:
    """(Batch, its lst_model.flops Cost) of `steps` training steps, packed as the trainer packs them."""
    from lst_model.flops import batch_cost
    from lst_model.model import FLAT_KINDS, Batch
    from lst_model.sequences import SequenceBuilder, training_sequences

    builder = SequenceBuilder(space, spec.data)
    flat = spec.model.kind in FLAT_KINDS
    batches = []
    for step in range(steps):
        sequences = training_sequences(builder, records, seed=0, step=step, rows=range(spec.train.batch_size),
                                       positions=spec.data.seq_positions, flat=flat, progress=1.0)
        batch = Batch.from_examples(sequences, space.pad, flat)
        batches.append((batch, batch_cost(spec.model, space.size, batch)))
    return batches


def _training_step(model: Any, optimizer: Any, batch: Any, device: Any) -> None:
    import torch

    from lst_model.model import summed_next_token_loss

    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = summed_next_token_loss(model(batch), batch) / batch.loss_targets.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_throughput(spec: Any, space: Any, records: Sequence[Any], steps: int, device: Any) -> tuple[float, float]:
    """(tokens/s, training FLOP/s) of `steps` timed steps after WARMUP_STEPS untimed ones."""
    import torch

    from lst_model.model import build_model
    from lst_model.train import make_optimizer

    torch.manual_seed(0)
    model = build_model(spec.model, space.size).to(device)
    optimizer = make_optimizer(model, spec)
    batches = [(batch.to(device), cost) for batch, cost in _batches(spec, space, records, WARMUP_STEPS + steps)]
    for batch, _ in batches[:WARMUP_STEPS]:
        _training_step(model, optimizer, batch, device)
    _synchronize(device)
    began = time.perf_counter()
    for batch, _ in batches[WARMUP_STEPS:]:
        _training_step(model, optimizer, batch, device)
    _synchronize(device)
    seconds = time.perf_counter() - began
    timed = [cost for _, cost in batches[WARMUP_STEPS:]]
    return sum(c.tokens for c in timed) / seconds, sum(c.train_flops for c in timed) / seconds


def attention_cost(backend: str, positions: int, space: Any, records: Sequence[Any], device: Any) -> tuple[float, int] | None:
    """(seconds, peak bytes) of a forward + backward pass of the base LST over one packed row of
    `positions` global positions with `model.attention` = backend; None when out of memory."""
    import torch

    try:
        return _timed_pass(_spec("lst", positions, 1, attention=backend), space, records, device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        torch.cuda.empty_cache()  # the model and activations of this run are gone: give the next one their memory


def _timed_pass(spec: Any, space: Any, records: Sequence[Any], device: Any) -> tuple[float, int]:
    import torch

    from lst_model.model import build_model, summed_next_token_loss

    (batch, _), = _batches(spec, space, records, 1)
    batch = batch.to(device)
    model = build_model(spec.model, space.size).to(device)

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            summed_next_token_loss(model(batch), batch).backward()

    forward_backward()  # warm-up: flex compiles its kernels for this shape here
    _synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(3):
        forward_backward()
    _synchronize(device)
    return (time.perf_counter() - began) / 3, torch.cuda.max_memory_allocated(device)


def units_real_time(device: Any, folder: Path) -> float:
    """x real time of the HuBERT-base-shaped encoder (layer 11, bf16) + 501-way assignment over
    UNIT_SECONDS of audio in utterances of UNIT_UTTERANCE_SECONDS, UNIT_BATCH per forward pass."""
    import torch
    from bench_units import _write_hubert_base_25hz

    from lst_data.units.config import UnitsConfig
    from lst_data.units.encoders import build_encoder
    from lst_data.units.nearest import NearestCentroid

    # the CPU units benchmark's random HuBERT-base-sized model, read by the units stage's loader
    config = UnitsConfig(encoder="hubert", device=str(device), checkpoint=str(_write_hubert_base_25hz(folder)), layer=11)
    encoder = build_encoder(config)
    generator = torch.Generator().manual_seed(0)
    assign = NearestCentroid(torch.randn(501, encoder.dim, generator=generator), device=device)
    waves = [0.1 * torch.randn(16000 * UNIT_UTTERANCE_SECONDS, generator=generator)
             for _ in range(UNIT_SECONDS // UNIT_UTTERANCE_SECONDS)]

    def run() -> None:
        for begin in range(0, len(waves), UNIT_BATCH):
            for features in encoder.encode(waves[begin : begin + UNIT_BATCH]):
                assign(features)

    run()  # warm-up
    best = float("inf")
    for _ in range(3):
        _synchronize(device)
        began = time.perf_counter()
        run()
        _synchronize(device)
        best = min(best, time.perf_counter() - began)
    return UNIT_SECONDS / best


def print_training(args: argparse.Namespace, space: Any, records: Sequence[Any], device: Any, peak: float | None) -> None:
    (lst_tps, lst_fps), (base_tps, base_fps) = (
        train_throughput(_spec(kind, args.seq_positions, args.batch_size), space, records, args.steps, device)
        for kind in ("lst", "baseline"))
    print(f"train_tokens_per_s_base_bf16: {lst_tps:.0f} tokens/s (reference: baseline {base_tps:.0f} tokens/s, "
          f"ratio {lst_tps / base_tps:.2f})")
    if peak is None:
        print(f"# train_mfu_base_bf16: left out (unknown device peak; set {PEAK_ENV} to its dense bf16 TFLOP/s)")
        return
    print(f"train_mfu_base_bf16: {100 * lst_fps / peak:.1f} % (reference: baseline {100 * base_fps / peak:.1f} %, "
          f"ratio {lst_fps / base_fps:.2f}; peak {peak / 1e12:.0f} TFLOP/s)")


def print_attention(space: Any, records: Sequence[Any], device: Any) -> None:
    from lst_model.config import ModelConfig

    if "attention" not in ModelConfig.model_fields:
        print("# attention flex vs dense: skipped (this lst_model.config has no model.attention field)")
        return
    for positions in ATTENTION_POSITIONS:
        flex, dense = (attention_cost(backend, positions, space, records, device) for backend in ("flex", "dense"))
        if flex is None or dense is None:
            print(f"# attention_{positions}_positions: out of memory with {'flex' if flex is None else 'dense'}"
                  + (f" (flex: {flex[0] * 1e3:.0f} ms, {flex[1] / 2**30:.2f} GiB)" if flex is not None else ""))
            continue
        print(f"attention_flex_step_time_{positions}_positions: {flex[0] * 1e3:.0f} ms (reference: dense {dense[0] * 1e3:.0f} ms, "
              f"ratio {flex[0] / dense[0]:.2f})")
        print(f"attention_flex_peak_memory_{positions}_positions: {flex[1] / 2**30:.2f} GiB (reference: dense "
              f"{dense[1] / 2**30:.2f} GiB, ratio {flex[1] / dense[1]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description="LST training throughput, MFU, attention backends and HuBERT units on one GPU")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--seq-positions", type=int, default=1024, help="global positions per training row")
    parser.add_argument("--batch-size", type=int, default=8, help="training rows per step")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: skipped (no CUDA device)")
        return
    from support.toy_corpus import ToyLanguage, synthetic_records

    from lst_model.tokens import TokenSpace

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_flops(name)
    language = ToyLanguage.make(0, n_words=2000, text_vocab_size=32000, n_units=501)
    records = synthetic_records(400, seed=0, min_words=10, max_words=40, language=language)
    space = TokenSpace(32000, 501)
    print(f"# {name}, base preset, bf16 autocast; training: batch {args.batch_size} x {args.seq_positions} global "
          f"positions, {args.steps} timed steps after {WARMUP_STEPS}")
    print_training(args, space, records, device, peak)
    print_attention(space, records, device)
    with tempfile.TemporaryDirectory() as tmp:
        real_time = units_real_time(device, Path(tmp) / "hubert_base_25hz")
    print(f"hubert_base_kmeans_units_real_time: {real_time:.0f} x real time (reference: real time 1 x, ratio {real_time:.0f}; "
          f"random weights, layer 11, {UNIT_SECONDS} s of audio in {UNIT_UTTERANCE_SECONDS} s utterances)")


if __name__ == "__main__":
    main()
