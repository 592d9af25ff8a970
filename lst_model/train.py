"""Training loop: AdamW, warm-up + cosine, clipping, bf16 autocast on GPU, gradient
accumulation, DDP under torchrun, exact resume.

The budget is counted in global positions (batch_size * seq_positions per step), so an LST
and a baseline with equal budgets do the same number of global-transformer steps; the log
also records tokens and FLOPs so the two can be compared on either axis, and, per logged
step, what the same batch costs under both models (`same_data`).

Resume is exact because a step's data is a function of (seed, step, row) alone
(`sequences.training_sequences`): the data position is the step, and the checkpoint holds
model, optimizer, scheduler and every rank's RNG state; the log is cut back to the
checkpoint's step before training continues.

Distributed: `torchrun --nproc_per_node N -m lst_model.cli train ...` runs N processes with
torch's DistributedDataParallel (gloo on CPU, NCCL on GPU). The batch_size rows of a step
are split over ranks x grad_accum micro-steps; the loss is the sum of token losses over the
whole step divided by the step's target count (all-reduced first), so N processes give the
same step as one process accumulating N times as many micro-steps. Rank 0 writes the log
and the checkpoint.

Fine-tuning (`init`): the weights come from a pretrained checkpoint of the same model
config (all but dropout) and token space; the optimizer and schedule start fresh. The init
checkpoint's sha256 goes into config.json and every checkpoint, and a resume from another
init is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lst_data.core.config import to_dict, updated
from lst_data.core.digests import file_sha256
from lst_data.core.errors import ConfigError, InputError
from lst_data.records import SampleRecord
from lst_model.config import RunSpec, run_spec_from_dict
from lst_model.flops import batch_cost
from lst_model.model import Batch, build_model, count_parameters, summed_next_token_loss
from lst_model.sequences import SequenceBuilder, training_sequences
from lst_model.stream import PackedShardStream, StreamCursor, StreamPosition, batch_from_tensors
from lst_model.text_corpus import corpus_fingerprint
from lst_model.tokens import TokenSpace, check_same_space

log = logging.getLogger(__name__)

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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)


@dataclass(frozen=True)
class Distributed:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        tensor = torch.tensor(values, dtype=dtype, device=device)
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def rows(self, batch_size: int, grad_accum: int) -> list[range]:
        """This rank's rows of a step, one range per micro-step (rank-major, then micro-step)."""
        per = batch_size // (self.world_size * grad_accum)
        first = self.rank * grad_accum * per
        return [range(first + m * per, first + (m + 1) * per) for m in range(grad_accum)]


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


def _rng_state(device: torch.device) -> torch.Tensor:
    """This process's torch RNG state (CPU, and CUDA when training there): dropout draws from it."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return torch.cat(states)


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    cpu = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu:].clone(), device)


def save_checkpoint(path: Path, *, model: nn.Module, optimizer, scheduler, step: int, spec: RunSpec, space: TokenSpace,
                    rng_states: list[torch.Tensor] | None = None, text_corpus: str | None = None,
                    stream: dict[str, int] | None = None, init_sha256: str | None = None) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,  # the data position: a step's rows are a function of (seed, step, row)
        "spec": json.dumps(to_dict(spec), sort_keys=True),
        "token_space": space.to_dict(),
        "rng_states": rng_states if rng_states is not None else [torch.get_rng_state()],  # one per rank
        "text_corpus": text_corpus or "",
        "init_sha256": init_sha256 or "",  # the pretrained checkpoint a fine-tuning run started from
    }
    if stream is not None:
        state["stream"] = stream  # streaming input: epoch and micro-batches consumed
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a killed run never leaves a half-written checkpoint


def training_memory(spec: RunSpec, vocab_size: int) -> tuple[int, int]:
    """(parameters, bytes) a training run needs, roughly: fp32 weights, gradients and AdamW's two
    moments (16 bytes a parameter), plus the activations of one micro-batch kept for backward."""
    m = spec.model

    def layers(count: int, width: int) -> int:  # attention (4 d^2) + MLP (2 ratio d^2)
        return count * (4 + 2 * m.mlp_ratio) * width * width

    parameters = layers(m.n_global_layers, m.d_global) + 2 * vocab_size * m.d_global
    if m.kind == "lst":
        parameters += (layers(m.n_encoder_layers + 2 * m.n_decoder_layers, m.d_local) + 2 * vocab_size * m.d_local
                       + 2 * m.d_global * m.d_local)
    rows = spec.train.batch_size // spec.train.grad_accum
    activations = 4 * rows * spec.data.seq_positions * m.n_global_layers * m.d_global * (16 + 2 * m.mlp_ratio)
    return parameters, 16 * parameters + activations


def check_fits_memory(spec: RunSpec, vocab_size: int, device: torch.device) -> None:
    """Refuse, before allocating anything, a model that cannot train on this machine's memory."""
    parameters, needed = training_memory(spec, vocab_size)
    if device.type == "cuda":
        available, where = torch.cuda.get_device_properties(device).total_memory, f"GPU ({device})"
    else:
        available, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory"
    if needed > available:
        raise ConfigError(
            f"model: about {parameters / 1e6:,.0f}M parameters need about {needed / 2**30:,.1f} GiB to train "
            f"(weights, gradients, AdamW state, one micro-batch's activations); this machine's {where} has "
            f"{available / 2**30:,.1f} GiB. Reduce model.d_global / model.n_global_layers, or train.batch_size "
            "(or raise train.grad_accum)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state, loaded without unpickling arbitrary objects (weights_only=True).
    A missing or unreadable file is the user's (an InputError: one line, exit 2)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint there (give a run folder holding {CHECKPOINT}, or the file itself)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        state["spec"] = run_spec_from_dict(json.loads(state["spec"]))
        state["token_space"] = TokenSpace.from_dict(state["token_space"])
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False, which would run arbitrary code
        raise InputError(f"{path}: not an lst-model checkpoint (not a torch file, or it holds objects other than "
                         "tensors and plain data)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as err:  # OSError: a truncated zip
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not an lst-model checkpoint ({reason[:200]})") from None
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunSpec, TokenSpace]:
    state = load_checkpoint(path, device)
    model = build_model(state["spec"].model, state["token_space"].size).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["spec"], state["token_space"]


def pretrained_weights(path: Path, spec: RunSpec, space: TokenSpace, device: torch.device,
                       allow_other_token_space: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint `path` for fine-tuning `spec`; a ConfigError naming
    what differs when its model config (dropout aside) or token space is not this run's."""
    state = load_checkpoint(path, device)
    theirs, ours = to_dict(state["spec"].model), to_dict(spec.model)
    differences = [f"model.{key} {theirs[key]!r} != {ours[key]!r}" for key in ours
                   if key != "dropout" and theirs[key] != ours[key]]
    if differences:
        raise ConfigError(f"--init {path}: the pretrained model differs: {'; '.join(differences)}")
    check_same_space(state["token_space"], space, f"--init {path}", allow_other_token_space)
    return state["model"]


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
    texts: Sequence[np.ndarray] | None = None,
    shard_dir: str | Path | None = None,
    stop_at_step: int | None = None,
    progress_callback=None,
    init: str | Path | None = None,
    allow_other_token_space: bool = False,
) -> TrainResult:
    """Train (or resume from `out_dir/checkpoint.pt`) until spec.steps, or until `stop_at_step`.

    `texts`: BPE ids of the text corpus for the text share (None: transcripts stand in).
    With `data.input = 'stream'` the rows come from `shard_dir` through `lst_model.stream`
    (DataLoader workers) and `records` is not used. `init`: a pretrained checkpoint to
    fine-tune from (see the module doc).
    Writes `checkpoint.pt`, `log.jsonl` (one line per logged step: loss, lr, tokens, global
    positions, FLOPs, throughput) and `config.json` into `out_dir` (rank 0). Under torchrun
    (WORLD_SIZE > 1) it joins or starts the process group and trains with DDP.
    """
    out = Path(out_dir)
    t = spec.train
    ranks = Distributed.from_env()
    device = resolve_device(t.device, ranks.local_rank)
    owns_group = ranks.world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if t.batch_size % (ranks.world_size * t.grad_accum):
        raise ConfigError(f"train.batch_size {t.batch_size} does not split over {ranks.world_size} processes x "
                         f"{t.grad_accum} accumulation steps")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    if texts is None and ranks.main and spec.data.task == "pretrain":
        log.warning("no text corpus: the transcripts of the speech utterances stand in for the text share "
                    "(the paper uses an independent text corpus; lst-model train --text)")
    fingerprint = corpus_fingerprint(texts) or ""
    init_sha256 = file_sha256(init) if init is not None else ""
    check_fits_memory(spec, space.size, device)
    torch.manual_seed(t.seed)  # identical initialisation on every rank
    model = build_model(spec.model, space.size).to(device)
    optimizer = make_optimizer(model, spec)
    total = spec.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup_steps, total, t.min_lr_ratio))
    start = 0
    stream_position = None
    checkpoint = out / CHECKPOINT
    torch.manual_seed(t.seed + ranks.rank)  # dropout: one stream per rank
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, device)
        if state["spec"].hash != spec.hash:
            raise ConfigError(f"--out {out}: its checkpoint was made with another config; use a new --out")
        check_same_space(state["token_space"], space, f"--out {out} (resuming its checkpoint)", allow_other_token_space)
        if state.get("text_corpus", "") != fingerprint:
            raise ConfigError(f"--out {out}: its checkpoint was trained on another text corpus; use a new --out")
        if state.get("init_sha256", "") != init_sha256:
            raise ConfigError(f"{checkpoint} was fine-tuned from another --init (sha256 "
                              f"{state.get('init_sha256') or 'none'}, this run: {init_sha256 or 'none'}); use a new --out")
        if len(state["rng_states"]) != ranks.world_size:
            raise ConfigError(f"--out {out}: its checkpoint was written by {len(state['rng_states'])} processes, this run has "
                              f"{ranks.world_size}; resume with as many")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng_states"][ranks.rank], device)
        start = state["step"]
        stream_position = state.get("stream")
    elif init is not None:
        model.load_state_dict(pretrained_weights(Path(init), spec, space, device, allow_other_token_space))
    # only rank 0 reads and rewrites the log (another rank could read it half-rewritten)
    log_rows = [row for row in read_log(out) if row["step"] < start] if ranks.main else []
    if ranks.main:
        (out / LOG).write_text("".join(json.dumps(row) + "\n" for row in log_rows), encoding="utf-8")
        (out / "config.json").write_text(json.dumps({"spec": to_dict(spec), "token_space": space.to_dict(),
                                                     "text_corpus_sha256": fingerprint or None,
                                                     "init": {"checkpoint": str(init), "sha256": init_sha256} if init else None,
                                                     "processes": ranks.world_size}, indent=2), encoding="utf-8")
    wrapped = nn.parallel.DistributedDataParallel(model) if ranks.world_size > 1 else model

    flat = spec.model.kind == "baseline"
    both_models = {kind: updated(spec.model, {"kind": kind}) for kind in ("lst", "baseline")}
    builder = SequenceBuilder(space, spec.data, texts)
    cursor = None
    if spec.data.input == "stream":
        if shard_dir is None:
            raise ValueError("data.input = 'stream' needs shard_dir")
        rows_per_micro = t.batch_size // (ranks.world_size * t.grad_accum)
        dataset = PackedShardStream(shard_dir, spec, space, rows=rows_per_micro, world_size=ranks.world_size, texts=texts)
        cursor = StreamCursor(dataset, t.loader_workers, StreamPosition(**stream_position) if stream_position else None,
                              any_exhausted=lambda flag: bool(ranks.all_sum([flag], device, torch.int64)[0]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    totals = log_rows[-1]["cumulative"] if log_rows else {"tokens": 0, "global_positions": 0, "train_flops": 0}
    stop = total if stop_at_step is None else min(total, stop_at_step)
    loss_value, window = float("nan"), {"tokens": 0, "global_positions": 0, "seconds": 0.0}
    wrapped.train()
    with (out / LOG).open("a", encoding="utf-8") if ranks.main else nullcontext() as log_file:
        for step in range(start, stop):
            began = time.perf_counter()
            micro_batches, costs = [], []
            for rows in ranks.rows(t.batch_size, t.grad_accum):
                if cursor is not None:
                    item = cursor.next()
                    micro_batches.append(batch_from_tensors(item))
                    costs.append(item["cost"])
                    continue
                sequences = training_sequences(
                    builder, records, seed=t.seed, step=step, rows=rows,
                    positions=spec.data.seq_positions, flat=flat, progress=step / total,
                )
                micro_batches.append(Batch.from_examples(sequences, space.pad, flat))
                costs.append(torch.tensor([[c.tokens, c.global_positions, c.train_flops] for c in
                                           (batch_cost(config, space.size, Batch.from_examples(sequences, space.pad, kind == "baseline"))
                                            for kind, config in both_models.items())]))
            sums = ranks.all_sum([sum(int(b.loss_targets.sum()) for b in micro_batches),
                                  *torch.stack(costs).sum(0).flatten().tolist()], device, torch.int64).tolist()
            n_targets = sums[0]
            same_data = {kind: {"tokens": sums[1 + 3 * i], "global_positions": sums[2 + 3 * i], "train_flops": sums[3 + 3 * i]}
                         for i, kind in enumerate(both_models)}
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for index, batch in enumerate(micro_batches):
                batch = batch.to(device)
                sync = index == len(micro_batches) - 1 or ranks.world_size == 1
                with (nullcontext() if sync else wrapped.no_sync()), autocast:
                    loss_sum = summed_next_token_loss(wrapped(batch), batch)
                # DDP averages gradients over ranks: scale back to the sum over the whole step
                (loss_sum * (ranks.world_size / n_targets)).backward()
                step_loss += float(loss_sum.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_value = float(ranks.all_sum([step_loss], device)[0]) / n_targets
            elapsed = time.perf_counter() - began
            cost = same_data[spec.model.kind]
            window = {"tokens": window["tokens"] + cost["tokens"],
                      "global_positions": window["global_positions"] + cost["global_positions"],
                      "seconds": window["seconds"] + elapsed}
            totals = {key: totals[key] + cost[key] for key in ("tokens", "global_positions", "train_flops")}
            if ranks.main and ((step + 1) % t.log_every == 0 or step + 1 == stop):
                row = {
                    "step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "tokens": cost["tokens"], "global_positions": cost["global_positions"],
                    "tokens_per_s": window["tokens"] / window["seconds"],
                    "positions_per_s": window["global_positions"] / window["seconds"],
                    "window": window, "cumulative": totals,
                    # this batch costed for both models (same tokens): the compute-control figure
                    "same_data": {kind: {"global_positions": c["global_positions"], "train_flops": c["train_flops"]}
                                  for kind, c in same_data.items()},
                }
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                window = {"tokens": 0, "global_positions": 0, "seconds": 0.0}
                if progress_callback is not None:
                    progress_callback(row)
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == stop:
                rng_states = [_rng_state(device)]
                if ranks.world_size > 1:
                    gathered: list[Any] = [None] * ranks.world_size
                    dist.all_gather_object(gathered, rng_states[0].cpu())
                    rng_states = gathered
                if ranks.main:
                    save_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, step=step + 1,
                                    spec=spec, space=space, rng_states=rng_states, text_corpus=fingerprint,
                                    init_sha256=init_sha256,
                                    stream=cursor.state() if cursor is not None else None)
    if ranks.world_size > 1:
        dist.barrier()  # every rank returns after rank 0's checkpoint is on disk
    if owns_group:
        dist.destroy_process_group()
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
