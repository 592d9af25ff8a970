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
and the checkpoint. `train.parallel = 'fsdp'` shards the model over the ranks with FSDP2
instead, and `train.activation_checkpointing` recomputes each layer in the backward pass
(`lst_model.parallel`); checkpoints hold the unsharded state either way.

Fine-tuning (`init`): the weights come from a pretrained checkpoint (or exported folder) of the same model
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
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from lst_data.core.config import to_dict
from lst_data.core.digests import file_sha256
from lst_data.core.errors import ConfigError, InputError
from lst_data.format.records import SampleRecord
from lst_model.config import ModelConfig, RunSpec, run_spec_from_dict
from lst_model.data import TrainingUtterances, load_token_space, read_training_texts, write_training_texts
from lst_model.flops import SameDataCost
from lst_model.model import (
    FLAT_KINDS,
    Batch,
    build_model,
    count_parameters,
    load_pretrained,
    summed_next_token_loss,
)
from lst_model.parallel import (
    clip_grad_norm,
    for_training,
    full_state_dicts,
    gradient_sync,
    load_optimizer_state,
    load_weights,
    prepare_model,
)
from lst_model.pretrained import WEIGHTS, exported_folder, read_config, stored_tensors
from lst_model.sequences import training_sequences
from lst_model.stream import PackedShardStream, StreamCursor, StreamPosition, batch_from_tensors
from lst_model.text_corpus import TextPosition, TextReader, TextStream, open_text_stream
from lst_model.tokens import TokenSpace, check_same_space
from lst_model.unit_bpe import run_token_space, sequence_builder
from lst_model.unit_pieces import KIND as BPE_KIND

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

    def summary(self) -> dict[str, Any]:
        """The figures `lst-model train` prints last."""
        return {"out": str(self.out_dir), "steps": self.steps, "final_loss": self.final_loss, "parameters": self.parameters,
                "tokens_per_second": round(self.tokens_per_second, 1),
                "global_positions_per_second": round(self.positions_per_second, 1)}


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


def training_memory(spec: RunSpec, vocab_size: int, processes: int = 1) -> tuple[int, int]:
    """(parameters, bytes) a training process needs, roughly: fp32 weights, gradients and AdamW's
    two moments (16 bytes a parameter, split over the processes under FSDP), plus the activations
    of one micro-batch kept for backward."""
    m = spec.model

    def layers(count: int, width: int) -> int:  # attention (4 d^2) + MLP (2 ratio d^2)
        return count * (4 + 2 * m.mlp_ratio) * width * width

    parameters = layers(m.n_global_layers, m.d_global) + 2 * vocab_size * m.d_global
    if m.kind == "lst":
        parameters += (layers(m.n_encoder_layers + 2 * m.n_decoder_layers, m.d_local) + 2 * vocab_size * m.d_local
                       + 2 * m.d_global * m.d_local)
    rows = spec.train.batch_size // spec.train.grad_accum
    activations = 4 * rows * spec.data.seq_positions * m.n_global_layers * m.d_global * (16 + 2 * m.mlp_ratio)
    shards = processes if spec.train.parallel == "fsdp" else 1
    return parameters, 16 * parameters // shards + activations


def check_fits_memory(spec: RunSpec, vocab_size: int, device: torch.device, processes: int = 1) -> None:
    """Refuse, before allocating anything, a model that cannot train on this machine's memory."""
    parameters, needed = training_memory(spec, vocab_size, processes)
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


# ---------------------------------------------------------------------------------------------
# The run: what stays fixed while it trains, and the state a checkpoint holds


@dataclass(frozen=True)
class Provenance:
    """What a run's weights were trained from beyond its config and token space: a resumed run
    must read the same text corpus and start from the same --init checkpoint."""

    text_corpus: str  # TextStream.fingerprint(): its file list, tokenizer and normalization ('' without one)
    init: str | None  # the pretrained checkpoint a fine-tuning run started from
    init_sha256: str  # its sha256 ('' without one)

    @classmethod
    def of(cls, texts: TextStream | None, init: str | Path | None) -> Provenance:
        corpus = texts.fingerprint() if texts is not None else ""
        if init is None:
            return cls(corpus, None, "")
        return cls(corpus, str(init), file_sha256(init))


@dataclass(frozen=True)
class TrainingRun:
    """What stays fixed while this process trains: the config, token space and provenance, the
    process's place among torchrun's processes, its device and the run folder."""

    spec: RunSpec
    space: TokenSpace
    provenance: Provenance
    ranks: Distributed
    device: torch.device
    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT

    def config_json(self) -> dict[str, Any]:
        """What config.json records of the run."""
        p = self.provenance
        return {"spec": to_dict(self.spec), "token_space": self.space.to_dict(), "text_corpus_sha256": p.text_corpus or None,
                "init": {"checkpoint": p.init, "sha256": p.init_sha256} if p.init is not None else None,
                "processes": self.ranks.world_size}


@dataclass
class TrainState:
    """What training changes and a checkpoint saves: weights, optimizer and schedule, and the data position."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0  # the next step; a step's rows are a function of (seed, step, row)
    stream: dict[str, Any] | None = None  # the input's position at `step` beyond the step: streamed shards, text corpus

    @classmethod
    def fresh(cls, spec: RunSpec, vocab_size: int, device: torch.device, world_size: int = 1) -> TrainState:
        t = spec.train
        torch.manual_seed(t.seed)  # identical initialisation on every rank
        model = prepare_model(build_model(spec.model, vocab_size).to(device), t, world_size, device)
        optimizer = make_optimizer(model, spec)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, t.warmup_steps, spec.steps, t.min_lr_ratio))
        return cls(model, optimizer, scheduler)

    def restore(self, saved: dict[str, Any], rank: int, device: torch.device) -> None:
        """Continue from a checkpoint (`load_checkpoint`): weights, optimizer, schedule, this rank's RNG, data position."""
        load_weights(self.model, saved["model"])
        load_optimizer_state(self.model, self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng_states"][rank], device)
        self.step = saved["step"]
        stream = saved.get("stream")  # one per rank (a single one in checkpoints written before text streams)
        self.stream = stream[rank] if isinstance(stream, list) else stream


# ---------------------------------------------------------------------------------------------
# Checkpoints: write and read them, and check that a run folder's is this run's before resuming it


def checkpoint_path(run: Path) -> Path:
    """The checkpoint of a run folder (of an exported folder: its model.safetensors), or `run` itself when it names a file."""
    if not run.is_dir():
        return run
    return run / WEIGHTS if exported_folder(run) is not None and not (run / CHECKPOINT).exists() else run / CHECKPOINT


def save_checkpoint(run: TrainingRun, state: TrainState, rng_states: list[torch.Tensor],
                    weights: dict[str, Any], optimizer: dict[str, Any],
                    streams: Sequence[dict[str, Any] | None] = ()) -> None:
    """Write `run.checkpoint` (rank 0): `state` with its unsharded `weights` and `optimizer`
    state (`full_state_dicts`), the run's identity and every rank's RNG state and input position."""
    saved: dict[str, Any] = {
        "model": weights,
        "optimizer": optimizer,
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,  # the data position: a step's rows are a function of (seed, step, row)
        "spec": json.dumps(to_dict(run.spec), sort_keys=True),
        "token_space": run.space.to_dict(),
        "rng_states": rng_states,  # one per rank
        "text_corpus": run.provenance.text_corpus,
        "init_sha256": run.provenance.init_sha256,  # the pretrained checkpoint a fine-tuning run started from
        **({"unit_bpe": run.space.unit_bpe.model} if run.space.unit_bpe is not None else {}),  # bpe_speechllm's pieces
    }
    if any(stream is not None for stream in streams):
        saved["stream"] = streams  # every rank's input position (streamed shards, text corpus)
    tmp = run.checkpoint.with_suffix(".tmp")
    torch.save(saved, tmp)
    tmp.replace(run.checkpoint)  # a killed run never leaves a half-written checkpoint


def _checkpoint_all_ranks(run: TrainingRun, state: TrainState) -> None:
    """Every rank's RNG state (and, under FSDP, its weight shards) goes to rank 0, which writes
    the checkpoint (every rank must call this)."""
    weights, optimizer = full_state_dicts(state.model, state.optimizer)
    rng_states, streams = [_rng_state(run.device)], [state.stream]
    if run.ranks.world_size > 1:
        gathered: list[Any] = [None] * run.ranks.world_size
        dist.all_gather_object(gathered, (rng_states[0].cpu(), state.stream))
        rng_states, streams = [rng for rng, _ in gathered], [stream for _, stream in gathered]
    if run.ranks.main:
        save_checkpoint(run, state, rng_states, weights, optimizer, streams)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state, loaded without unpickling arbitrary objects (weights_only=True).
    A missing or unreadable file is the user's (an InputError: one line, exit 2)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint there (give a run folder holding {CHECKPOINT}, or the file itself)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        state["spec"] = run_spec_from_dict(json.loads(state["spec"]))
        state["token_space"] = TokenSpace.from_dict(state["token_space"], state.get("unit_bpe"))
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False, which would run arbitrary code
        raise InputError(f"{path}: not an lst-model checkpoint (not a torch file, or it holds objects other than "
                         "tensors and plain data)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as err:  # OSError: a truncated zip
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not an lst-model checkpoint ({reason[:200]})") from None
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunSpec, TokenSpace]:
    """The model (eval mode), run spec and token space of a checkpoint, or of an exported folder
    or its model.safetensors (`lst_model.pretrained`: the spec has the model config and the
    data fields scoring and generation read)."""
    if exported_folder(Path(path)) is not None:
        model, config = load_pretrained(path, device)
        return model, config.spec, config.space
    state = load_checkpoint(path, device)
    model = build_model(state["spec"].model, state["token_space"].size).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state["spec"], state["token_space"]


def pretrained_state(path: Path, device: torch.device) -> tuple[ModelConfig, TokenSpace, dict[str, torch.Tensor]]:
    """The model config, token space and weights of a checkpoint, or of an exported folder (or
    its model.safetensors)."""
    folder = exported_folder(path)
    if folder is not None:
        config = read_config(folder)
        return config.spec.model, config.space, stored_tensors(folder, config)
    state = load_checkpoint(path, device)
    return state["spec"].model, state["token_space"], state["model"]


def pretrained_weights(path: Path, spec: RunSpec, space: TokenSpace, device: torch.device,
                       allow_other_token_space: bool = False) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint or exported folder `path` for fine-tuning `spec`; a
    ConfigError naming what differs when its model config (dropout aside) or token space is
    not this run's."""
    model, their_space, weights = pretrained_state(path, device)
    theirs, ours = to_dict(model), to_dict(spec.model)
    differences = [f"model.{key} {theirs[key]!r} != {ours[key]!r}" for key in ours
                   if key != "dropout" and theirs[key] != ours[key]]
    if differences:
        raise ConfigError(f"--init {path}: the pretrained model differs: {'; '.join(differences)}")
    check_same_space(their_space, space, f"--init {path}", allow_other_token_space)
    return weights


def _check_resumable(run: TrainingRun, saved: dict[str, Any], allow_other_token_space: bool) -> None:
    """A ConfigError unless the run folder's checkpoint was made by this run: the same config,
    token space, text corpus, --init and number of processes."""
    out, provenance = run.out, run.provenance
    if saved["spec"].hash != run.spec.hash:
        raise ConfigError(f"--out {out}: its checkpoint was made with another config; use a new --out")
    check_same_space(saved["token_space"], run.space, f"--out {out} (resuming its checkpoint)", allow_other_token_space)
    if saved.get("text_corpus", "") != provenance.text_corpus:
        raise ConfigError(f"--out {out}: its checkpoint was trained on another text corpus; use a new --out")
    if saved.get("init_sha256", "") != provenance.init_sha256:
        raise ConfigError(f"{run.checkpoint} was fine-tuned from another --init (sha256 "
                          f"{saved.get('init_sha256') or 'none'}, this run: {provenance.init_sha256 or 'none'}); use a new --out")
    if len(saved["rng_states"]) != run.ranks.world_size:
        raise ConfigError(f"--out {out}: its checkpoint was written by {len(saved['rng_states'])} processes, this run has "
                          f"{run.ranks.world_size}; resume with as many")


def _resume_or_initialize(run: TrainingRun, state: TrainState, allow_other_token_space: bool) -> None:
    """Continue from the run folder's checkpoint, else start from the --init checkpoint's weights (if any)."""
    if run.checkpoint.exists():
        saved = load_checkpoint(run.checkpoint, run.device)
        _check_resumable(run, saved, allow_other_token_space)
        state.restore(saved, run.ranks.rank, run.device)
    elif run.provenance.init is not None:
        load_weights(state.model, pretrained_weights(Path(run.provenance.init), run.spec, run.space, run.device,
                                                     allow_other_token_space))


# ---------------------------------------------------------------------------------------------
# Where a step's rows come from: built here from records, or streamed from DataLoader workers


@dataclass(frozen=True)
class MicroBatch:
    """Rows of one forward/backward pass, and what they cost under both models."""

    batch: Batch
    cost: torch.Tensor  # [kinds, 3] int64: its rows costed for `SameDataCost.kinds_of` the run's kind


class StepRows(Protocol):
    """The training input: this rank's micro-batches of each step."""

    def micro_batch(self, step: int, rows: range) -> MicroBatch:
        """Rows `rows` of step `step`, as one micro-batch."""
        ...

    def position(self) -> dict[str, Any] | None:
        """Where the input stands, for the checkpoint (None: the step alone says it)."""
        ...


class RecordRows:
    """Rows built in this process from a record list (data.input = 'memory'): a function of (seed, step, row),
    but for the text corpus, whose documents this rank's reader gives in the order the rows are built."""

    def __init__(self, spec: RunSpec, space: TokenSpace, records: Sequence[SampleRecord],
                 texts: TextReader | None) -> None:
        self.spec = spec
        self.pad = space.pad
        self.records = records
        self.texts = texts
        self.builder = sequence_builder(space, spec.data, texts)
        self.same_data = SameDataCost.of(spec.model, space.size, space.pad)

    def micro_batch(self, step: int, rows: range) -> MicroBatch:
        flat = self.spec.model.kind in FLAT_KINDS
        sequences = training_sequences(self.builder, self.records, seed=self.spec.train.seed, step=step, rows=rows,
                                       positions=self.spec.data.seq_positions, flat=flat, progress=step / self.spec.steps)
        return MicroBatch(Batch.from_examples(sequences, self.pad, flat), self.same_data.cost(sequences))

    def position(self) -> dict[str, Any] | None:
        return None if self.texts is None else {"text": list(self.texts.position)}


class StreamedRows:
    """Rows packed by DataLoader workers reading the shards (data.input = 'stream', `lst_model.stream`)."""

    def __init__(self, cursor: StreamCursor) -> None:
        self.cursor = cursor

    def micro_batch(self, step: int, rows: range) -> MicroBatch:
        item = self.cursor.next()  # the stream's next micro-batch of this rank's size: the step does not choose it
        return MicroBatch(batch_from_tensors(item), item["cost"])

    def position(self) -> dict[str, Any]:
        return self.cursor.state()


def _step_rows(run: TrainingRun, records: Sequence[SampleRecord] | None, texts: TextStream | None,
               shard_dir: str | Path | None, stream_position: dict[str, Any] | None) -> StepRows:
    """The input data.input names, streamed from `stream_position` (a resumed run's) when given."""
    spec, ranks = run.spec, run.ranks
    if spec.data.input == "memory":
        if records is None:
            raise ValueError("data.input = 'memory' needs records")
        start = TextPosition(*stream_position["text"]) if stream_position else TextPosition()
        reader = texts.reader(ranks.rank, ranks.world_size, spec.train.seed, start) if texts is not None else None
        return RecordRows(spec, run.space, records, reader)
    if shard_dir is None:
        raise ValueError("data.input = 'stream' needs shard_dir")
    rows_per_micro = spec.train.batch_size // (ranks.world_size * spec.train.grad_accum)
    dataset = PackedShardStream(shard_dir, spec, run.space, rows=rows_per_micro, world_size=ranks.world_size, texts=texts)
    cursor = StreamCursor(dataset, spec.train.loader_workers, StreamPosition(**stream_position) if stream_position else None,
                          any_exhausted=lambda flag: bool(ranks.all_sum([flag], run.device, torch.int64)[0]))
    return StreamedRows(cursor)


# ---------------------------------------------------------------------------------------------
# Accounting (tokens, global positions, FLOPs) and the log


@dataclass(frozen=True)
class StepCounts:
    """A step's figures over all its micro-batches and ranks."""

    targets: int  # loss targets: the step's loss is their summed cross-entropy divided by this
    same_data: dict[str, dict[str, int]]  # tokens, global_positions, train_flops of its rows under each model kind

    @classmethod
    def of(cls, micro_batches: Sequence[MicroBatch], ranks: Distributed, device: torch.device,
           kinds: Sequence[str] = SameDataCost.MODEL_KINDS) -> StepCounts:
        """`kinds`: the model kinds the micro-batches' cost rows are for (`SameDataCost.kinds_of`)."""
        sums = ranks.all_sum([sum(int(m.batch.loss_targets.sum()) for m in micro_batches),
                              *torch.stack([m.cost for m in micro_batches]).sum(0).flatten().tolist()],
                             device, torch.int64).tolist()
        counts = len(SameDataCost.COUNTS)
        return cls(sums[0], {kind: dict(zip(SameDataCost.COUNTS, sums[1 + counts * i : 1 + counts * (i + 1)], strict=True))
                             for i, kind in enumerate(kinds)})


@dataclass
class Window:
    """What was trained on since the last log row, and how long it took: the throughput figures."""

    tokens: int = 0
    global_positions: int = 0
    seconds: float = 0.0


@dataclass
class Tally:
    """Counts since the run began (the log's 'cumulative') and since the last log row."""

    totals: dict[str, int]
    window: Window = field(default_factory=Window)

    def add(self, cost: dict[str, int], seconds: float) -> None:
        """One more step, which cost `cost` (this run's model kind) and took `seconds`."""
        self.window = Window(self.window.tokens + cost["tokens"], self.window.global_positions + cost["global_positions"],
                             self.window.seconds + seconds)
        self.totals = {key: self.totals[key] + cost[key] for key in SameDataCost.COUNTS}

    def log_row(self, step: int, loss: float, lr: float, grad_norm: float, counts: StepCounts,
                model_kind: str) -> dict[str, Any]:
        """The log line of `step` (see `train`); the window starts again."""
        cost, window = counts.same_data[model_kind], self.window
        self.window = Window()
        return {
            "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": cost["tokens"], "global_positions": cost["global_positions"],
            "tokens_per_s": window.tokens / window.seconds,
            "positions_per_s": window.global_positions / window.seconds,
            "window": asdict(window), "cumulative": self.totals,
            # this batch costed for both models (same tokens): the compute-control figure
            "same_data": {kind: {"global_positions": c["global_positions"], "train_flops": c["train_flops"]}
                          for kind, c in counts.same_data.items()},
        }


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _restart_log(run: TrainingRun, start: int) -> Tally:
    """Cut log.jsonl back to the steps before `start` and write config.json; the counts so far.
    Only rank 0 reads and rewrites the log (another rank could read it half rewritten)."""
    if not run.ranks.main:
        return Tally(dict.fromkeys(SameDataCost.COUNTS, 0))
    rows = [row for row in read_log(run.out) if row["step"] < start]
    (run.out / LOG).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (run.out / "config.json").write_text(json.dumps(run.config_json(), indent=2), encoding="utf-8")
    return Tally(rows[-1]["cumulative"] if rows else dict.fromkeys(SameDataCost.COUNTS, 0))


# ---------------------------------------------------------------------------------------------
# The loop


def _optimizer_step(run: TrainingRun, state: TrainState, wrapped: nn.Module, micro_batches: Sequence[MicroBatch],
                    targets: int) -> tuple[float, float]:
    """Forward and backward over this rank's micro-batches, then one optimizer step; (the step's
    mean loss over all ranks, the gradient norm before clipping)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda" else nullcontext()
    state.optimizer.zero_grad(set_to_none=True)
    step_loss = 0.0
    for index, micro in enumerate(micro_batches):
        batch = micro.batch.to(run.device)
        with gradient_sync(wrapped, index == len(micro_batches) - 1):
            with autocast:
                loss_sum = summed_next_token_loss(wrapped(batch), batch)
            # DDP and FSDP average gradients over ranks: scale back to the sum over the whole step
            (loss_sum * (run.ranks.world_size / targets)).backward()
        step_loss += float(loss_sum.detach())
    grad_norm = clip_grad_norm(state.model.parameters(), run.spec.train.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    return float(run.ranks.all_sum([step_loss], run.device)[0]) / targets, grad_norm


def _is_due(done: int, every: int, stop: int) -> bool:
    return done % every == 0 or done == stop


def _train_steps(run: TrainingRun, state: TrainState, data: StepRows, stop: int, tally: Tally,
                 on_log: Callable[[dict[str, Any]], None] | None) -> float:
    """Steps state.step .. stop - 1, logging (rank 0) and checkpointing on schedule; the last step's loss."""
    t = run.spec.train
    wrapped = for_training(state.model, run.ranks.world_size)
    loss = float("nan")
    wrapped.train()
    with (run.out / LOG).open("a", encoding="utf-8") if run.ranks.main else nullcontext() as log_file:
        for step in range(state.step, stop):
            began = time.perf_counter()
            micro_batches = [data.micro_batch(step, rows) for rows in run.ranks.rows(t.batch_size, t.grad_accum)]
            counts = StepCounts.of(micro_batches, run.ranks, run.device, SameDataCost.kinds_of(run.spec.model.kind))
            loss, grad_norm = _optimizer_step(run, state, wrapped, micro_batches, counts.targets)
            state.step, state.stream = step + 1, data.position()
            tally.add(counts.same_data[run.spec.model.kind], time.perf_counter() - began)
            if log_file is not None and _is_due(step + 1, t.log_every, stop):
                row = tally.log_row(step, loss, float(state.scheduler.get_last_lr()[0]), grad_norm, counts, run.spec.model.kind)
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                if on_log is not None:
                    on_log(row)
            if _is_due(step + 1, t.checkpoint_every, stop):
                _checkpoint_all_ranks(run, state)
    return loss


def _result(run: TrainingRun, model: nn.Module, stop: int, last_loss: float | None) -> TrainResult:
    """The run's figures from its whole log (`last_loss` None: no step ran in this call)."""
    rows = read_log(run.out)
    seconds = sum(r["window"]["seconds"] for r in rows) or float("nan")
    if last_loss is None:
        last_loss = rows[-1]["loss"] if rows else float("nan")
    return TrainResult(
        out_dir=run.out,
        steps=stop,
        final_loss=last_loss,
        parameters=count_parameters(model),
        tokens_per_second=sum(r["window"]["tokens"] for r in rows) / seconds,
        positions_per_second=sum(r["window"]["global_positions"] for r in rows) / seconds,
    )


def _join_process_group(ranks: Distributed, device: torch.device) -> bool:
    """Start torch.distributed under torchrun unless the caller already did; whether this call started it."""
    owns_group = ranks.world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return owns_group


def _prepare_process(spec: RunSpec, ranks: Distributed, device: torch.device, out: Path, has_texts: bool) -> None:
    """Before anything is built: refuse a batch that does not split over the ranks, pick the
    device and thread count, make the run folder (rank 0)."""
    t = spec.train
    if t.batch_size % (ranks.world_size * t.grad_accum):
        raise ConfigError(f"train.batch_size {t.batch_size} does not split over {ranks.world_size} processes x "
                          f"{t.grad_accum} accumulation steps")
    if spec.model.attention == "flex" and device.type != "cuda":
        raise ConfigError("model.attention 'flex' trains on CUDA only (FlexAttention has no CPU backward); "
                          "use auto, dense or chunked")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    if not has_texts and ranks.main and spec.data.task == "pretrain":
        log.warning("no text corpus: the transcripts of the speech utterances stand in for the text share "
                    "(the paper uses an independent text corpus; lst-model train --text)")


def train(
    spec: RunSpec,
    records: Sequence[SampleRecord] | None,
    space: TokenSpace,
    out_dir: str | Path,
    *,
    texts: TextStream | None = None,
    shard_dir: str | Path | None = None,
    stop_at_step: int | None = None,
    progress_callback: Callable[[dict[str, Any]], None] | None = None,
    init: str | Path | None = None,
    allow_other_token_space: bool = False,
) -> TrainResult:
    """Train (or resume from `out_dir/checkpoint.pt`) until spec.steps, or until `stop_at_step`.

    `texts`: the text corpus for the text share, streamed (`lst_model.text_corpus`: one reader
    per rank, or per rank and DataLoader worker; None: transcripts stand in). With `data.input = 'stream'` the rows come from `shard_dir` through `lst_model.stream`
    (DataLoader workers) and `records` is not used (it may be None). `init`: a pretrained
    checkpoint to fine-tune from (see the module doc).
    Writes `checkpoint.pt`, `log.jsonl` (one line per logged step: loss, lr, tokens, global
    positions, FLOPs, throughput) and `config.json` into `out_dir` (rank 0). Under torchrun
    (WORLD_SIZE > 1) it joins or starts the process group and trains with DDP.
    """
    ranks = Distributed.from_env()
    device = resolve_device(spec.train.device, ranks.local_rank)
    owns_group = _join_process_group(ranks, device)
    _prepare_process(spec, ranks, device, Path(out_dir), texts is not None)
    init_space = (init, pretrained_state(Path(init), device)[1]) if init is not None and spec.model.kind == BPE_KIND else None
    space = run_token_space(spec, space, Path(out_dir), records=records, shard_dir=shard_dir, init=init_space,
                            resuming=(Path(out_dir) / CHECKPOINT).exists(), write=ranks.main)
    run = TrainingRun(spec, space, Provenance.of(texts, init), ranks, device, Path(out_dir))
    check_fits_memory(spec, space.size, device, ranks.world_size)
    state = TrainState.fresh(spec, space.size, device, ranks.world_size)
    torch.manual_seed(spec.train.seed + ranks.rank)  # dropout: one stream per rank
    _resume_or_initialize(run, state, allow_other_token_space)
    tally = _restart_log(run, state.step)
    data = _step_rows(run, records, texts, shard_dir, state.stream)
    start = state.step
    stop = spec.steps if stop_at_step is None else min(spec.steps, stop_at_step)
    loss = _train_steps(run, state, data, stop, tally, progress_callback)
    if ranks.world_size > 1:
        dist.barrier()  # every rank returns after rank 0's checkpoint is on disk
    if owns_group:
        dist.destroy_process_group()
    return _result(run, state.model, stop, loss if stop > start else None)


# ---------------------------------------------------------------------------------------------
# Training on a shard set from the command line, and loss curves


def train_on_shards(
    spec: RunSpec,
    shard_dir: Path,
    out_dir: Path,
    *,
    text_path: str | Path | None = None,
    tokenizer_path: Path | None = None,
    init: Path | None = None,
    allow_other_token_space: bool = False,
    announce: Callable[[str], None] = log.info,
    progress_callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult | None:
    """`lst-model train`: `train` on a shard set's training utterances, with the --text corpus
    (`open_text_stream`: a file, folder, glob or URL) when one is given. Rank 0 first records the digests of the training
    transcripts in `out_dir` (with those of the --init run: score's contamination check) and
    `announce`s what it trains on; after training it plots the losses to loss.png and returns
    the result (other ranks: None)."""
    space = load_token_space(shard_dir)
    texts = open_text_stream(text_path, tokenizer_path, shard_dir, space.text_vocab_size) if text_path is not None else None
    utterances = TrainingUtterances.of(shard_dir, spec.data)
    main = Distributed.from_env().main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_training_texts(out_dir, utterances.transcripts(), read_training_texts(init.parent) if init is not None else None)
        corpus = f", text corpus of {texts.describe()} (streamed)" if texts is not None else ""
        announce(f"{spec.model.kind}: {utterances.summary}{corpus}, {spec.steps} steps")
    result = train(spec, utterances.records, space, out_dir, texts=texts, shard_dir=shard_dir,
                   progress_callback=progress_callback, init=init, allow_other_token_space=allow_other_token_space)
    if not main:
        return None
    plot_losses({spec.model.kind: out_dir}, out_dir / "loss.png")
    return result


def plot_losses(runs: Mapping[str, str | Path], out_png: str | Path, x: str = "global_positions") -> Path:
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
