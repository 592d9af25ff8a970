"""Benchmark of generation on CPU: KV-cached `lst_model.generate` against uncached generation
(a full forward pass over the whole prefix for every new token), for the LST and the flat
baseline, continuing a text prompt in speech (units only) and in text.

    .venv/bin/python benchmarks/bench_generate.py [--preset small] [--new-tokens 256]

Models are randomly initialised (seeded): throughput does not depend on the weights, and
greedy decoding over a fixed allowed set keeps both paths on the same tokens (checked).
Prints `name: figure unit (reference: figure unit, ratio X)` lines, the reference measured
in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", help="model size (lst_model.config.PRESETS)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text prompt length")
    parser.add_argument("--text-vocab", type=int, default=1000)
    parser.add_argument("--units", type=int, default=501)
    args = parser.parse_args()

    import numpy as np
    import torch

    from lst_model.config import load_run_spec
    from lst_model.generate import generate, model_patch_lengths, prompt_from
    from lst_model.model import Batch, build_model
    from lst_model.sequences import Example
    from lst_model.tokens import TokenSpace

    torch.set_num_threads(1)
    space = TokenSpace(args.text_vocab, args.units)
    text_prompt = list(np.random.default_rng(0).integers(0, args.text_vocab, args.prompt_tokens))
    tasks = {
        "speech": (prompt_from(space, text_ids=text_prompt, then="speech"), range(space.unit_offset, space.size)),
        "text": (prompt_from(space, text_ids=text_prompt), range(space.text_vocab_size)),
    }

    @torch.no_grad()
    def uncached(model, spec, prompt, allowed):
        """Greedy, one full forward per new token; the next token's patch by the continuation rule."""
        flat, p = spec.model.kind == "baseline", spec.data.patch_size
        mask = torch.full((space.size,), float("-inf"))
        mask[list(allowed)] = 0
        tokens = [int(t) for t in prompt]
        for _ in range(args.new_tokens):
            lengths = [1] * (len(tokens) + 1) if flat else model_patch_lengths([*tokens, space.unit_offset], space, p)
            batch = Batch.from_examples([Example(np.array([*tokens, space.pad]), np.array(lengths), "bench")], space.pad, flat)
            tokens.append(int(torch.argmax(model(batch)[0, -2] + mask)))
        return tokens

    results = {}
    for kind in ("lst", "baseline"):
        spec = load_run_spec(overrides={"preset": args.preset, "model": {"kind": kind}})
        torch.manual_seed(0)
        model = build_model(spec.model, space.size).eval()
        for task, (prompt, allowed) in tasks.items():
            started = time.perf_counter()
            result = generate(model, spec, space, prompt, max_new_tokens=args.new_tokens, allowed=allowed, stop_tokens=())
            cached_rate = args.new_tokens / (time.perf_counter() - started)
            started = time.perf_counter()
            reference = uncached(model, spec, prompt, allowed)
            uncached_rate = args.new_tokens / (time.perf_counter() - started)
            if reference != result.tokens.tolist():
                raise AssertionError(f"{kind} {task}: cached and uncached greedy generation differ")
            results[kind, task] = cached_rate, result.global_steps
            print(f"{kind} {task} generation, cached: {cached_rate:.1f} tokens/s "
                  f"(reference: uncached {uncached_rate:.1f} tokens/s, ratio {cached_rate / uncached_rate:.2f})")
    for task in tasks:
        (lst_rate, lst_steps), (flat_rate, flat_steps) = results["lst", task], results["baseline", task]
        print(f"lst {task} generation, cached: {lst_rate:.1f} tokens/s "
              f"(reference: baseline cached {flat_rate:.1f} tokens/s, ratio {lst_rate / flat_rate:.2f})")
        print(f"lst {task} global steps for {args.new_tokens} tokens: {lst_steps} steps "
              f"(reference: baseline {flat_steps} steps, ratio {lst_steps / flat_steps:.2f})")


if __name__ == "__main__":
    main()
