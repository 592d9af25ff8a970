"""Training loop: AdamW, warm-up + cosine, clipping, bf16 autocast on GPU, exact resume.

The budget is counted in global positions (batch_size * seq_positions per step), so an LST
and a baseline with equal budgets do the same number of global-transformer steps; the log
also records tokens and FLOPs so the two can be compared on either axis, and, per logged
step, what the same batch costs under both models (`same_data`).

Resume is exact because a step's data is a function of (seed, step) alone
(`sequences.training_sequences`) and the checkpoint holds model, optimizer, scheduler and
torch RNG state; the log is cut back to the checkpoint's step before training continues.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lst_data.config import to_dict
from lst_data.records import SampleRecord
from lst_model.config import RunSpec, run_spec_from_dict
from lst_model.flops import batch_cost
from lst_model.model import Batch, build_model, count_parameters, next_token_loss
from lst_model.sequences import SequenceBuilder, training_sequences
from lst_model.tokens import TokenSpace

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    final_loss: float
    parameters: int
    tokens_per_second: float
    positions_per_second: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); weight decay on matrices only (not on norms, biases, start vectors)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": spec.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.train.lr, betas=(0.9, 0.95))


def save_checkpoint(path: Path, *, model: nn.Module, optimizer, scheduler, step: int, spec: RunSpec, space: TokenSpace) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "spec": json.dumps(to_dict(spec), sort_keys=True),
        "token_space": space.to_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a killed run never leaves a half-written checkpoint


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state, loaded without unpickling arbitrary objects (weights_only=True)."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    state["spec"] = run_spec_from_dict(json.loads(state["spec"]))
    state["token_space"] = TokenSpace.from_dict(state["token_space"])
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunSpec, TokenSpace]:
    state = load_checkpoint(path, device)
    model = build_model(state["spec"].model, state["token_space"].size).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["spec"], state["token_space"]


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train(
    spec: RunSpec,
    records: Sequence[SampleRecord],
    space: TokenSpace,
    out_dir: str | Path,
    *,
    stop_at_step: int | None = None,
    progress_callback=None,
) -> TrainResult:
    """Train (or resume from `out_dir/checkpoint.pt`) until spec.steps, or until `stop_at_step`.

    Writes `checkpoint.pt`, `log.jsonl` (one line per logged step: loss, lr, tokens, global
    positions, FLOPs, throughput) and `config.json` into `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = spec.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    model = build_model(spec.model, space.size).to(device)
    optimizer = make_optimizer(model, spec)
    total = spec.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup_steps, total, t.min_lr_ratio))
    start = 0
    checkpoint = out / CHECKPOINT
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, device)
        if state["spec"].hash != spec.hash or state["token_space"] != space:
            raise ValueError(f"{checkpoint} was made with another config or token space; use a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    log_rows = [row for row in read_log(out) if row["step"] < start]
    (out / LOG).write_text("".join(json.dumps(row) + "\n" for row in log_rows), encoding="utf-8")
    (out / "config.json").write_text(json.dumps({"spec": to_dict(spec), "token_space": space.to_dict()}, indent=2), encoding="utf-8")

    flat = spec.model.kind == "baseline"
    both_models = {kind: dataclasses.replace(spec.model, kind=kind) for kind in ("lst", "baseline")}
    builder = SequenceBuilder(space, spec.data)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    totals = log_rows[-1]["cumulative"] if log_rows else {"tokens": 0, "global_positions": 0, "train_flops": 0}
    stop = total if stop_at_step is None else min(total, stop_at_step)
    loss_value, window = float("nan"), {"tokens": 0, "global_positions": 0, "seconds": 0.0}
    model.train()
    with (out / LOG).open("a", encoding="utf-8") as log:
        for step in range(start, stop):
            began = time.perf_counter()
            sequences = training_sequences(
                builder, records, seed=t.seed, step=step, n_sequences=t.batch_size,
                positions=spec.data.seq_positions, flat=flat, progress=step / total,
            )
            batch = Batch.from_examples(sequences, space.pad, flat)
            same_data = {kind: batch_cost(config, space.size, Batch.from_examples(sequences, space.pad, kind == "baseline"))
                         for kind, config in both_models.items()}
            cost = same_data[spec.model.kind]
            batch = batch.to(device)
            with autocast:
                loss, _ = next_token_loss(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_value = float(loss.detach())
            elapsed = time.perf_counter() - began
            window = {"tokens": window["tokens"] + cost.tokens,
                      "global_positions": window["global_positions"] + cost.global_positions,
                      "seconds": window["seconds"] + elapsed}
            totals = {
                "tokens": totals["tokens"] + cost.tokens,
                "global_positions": totals["global_positions"] + cost.global_positions,
                "train_flops": totals["train_flops"] + cost.train_flops,
            }
            if (step + 1) % t.log_every == 0 or step + 1 == stop:
                row = {
                    "step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "tokens": cost.tokens, "global_positions": cost.global_positions,
                    "tokens_per_s": window["tokens"] / window["seconds"],
                    "positions_per_s": window["global_positions"] / window["seconds"],
                    "window": window, "cumulative": totals,
                    # this batch costed for both models (same tokens): the compute-control figure
                    "same_data": {kind: {"global_positions": c.global_positions, "train_flops": c.train_flops}
                                  for kind, c in same_data.items()},
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                window = {"tokens": 0, "global_positions": 0, "seconds": 0.0}
                if progress_callback is not None:
                    progress_callback(row)
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == stop:
                save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, step=step + 1, spec=spec, space=space)
    rows = read_log(out)
    seconds = sum(r["window"]["seconds"] for r in rows) or float("nan")
    return TrainResult(
        out_dir=out,
        steps=stop,
        final_loss=loss_value if stop > start else (rows[-1]["loss"] if rows else float("nan")),
        parameters=count_parameters(model),
        tokens_per_second=sum(r["window"]["tokens"] for r in rows) / seconds,
        positions_per_second=sum(r["window"]["global_positions"] for r in rows) / seconds,
    )


def plot_losses(runs: dict[str, str | Path], out_png: str | Path, x: str = "global_positions") -> Path:
    """Loss curves of several runs on one axis (x: cumulative 'global_positions', 'tokens' or 'train_flops')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run in runs.items():
        rows = read_log(run)
        ax.plot([r["cumulative"][x] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel(f"cumulative {x.replace('_', ' ')}")
    ax.set_ylabel("next-token cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
