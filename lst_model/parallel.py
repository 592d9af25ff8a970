"""How the training loop spreads a model over torchrun's processes (DDP or FSDP2) and
recomputes activations (activation checkpointing).

Both work on the model's per-layer modules (`lst_model.model.LAYER_TYPES`): each is one
FSDP shard unit (its weights are all-gathered just before it runs and freed after) and one
activation-checkpointing unit (only its inputs are kept; it runs again in the backward pass).
Neither changes parameter names, so checkpoints hold an unsharded model's `state_dict()`
whichever way the run trained (`full_state_dicts`), and `lst_model.train.load_model` reads
them all alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from lst_model.config import TrainConfig
from lst_model.model import LAYER_TYPES

log = logging.getLogger(__name__)

# Gathered to rank 0's CPU: the others get empty dicts and never hold the whole model at once.
_FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
_FULL = StateDictOptions(full_state_dict=True)


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost modules of one of LAYER_TYPES within `model`, in module order."""
    found: list[nn.Module] = []
    for child in model.children():
        found.extend([child] if isinstance(child, LAYER_TYPES) else layer_modules(child))
    return found


def prepare_model(model: nn.Module, train: TrainConfig, world_size: int, device: torch.device) -> nn.Module:
    """`model` (in place) ready to train under `train.parallel` and `train.activation_checkpointing`;
    before the optimizer is made, since FSDP replaces the parameters with sharded ones.

    Checkpointing comes first so that FSDP's gather and free run inside the recomputation too.
    With one process there is nothing to shard and 'fsdp' trains the plain model."""
    layers = layer_modules(model)
    if train.activation_checkpointing:
        for layer in layers:
            checkpoint(layer)  # non-reentrant; preserves the RNG state, so dropout draws the same masks again
    if train.parallel == "fsdp" and world_size == 1:
        log.info("train.parallel = 'fsdp' with one process: nothing to shard, training the plain model")
    if train.parallel == "fsdp" and world_size > 1:
        mesh = init_device_mesh(device.type, (world_size,))
        precision = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                     if device.type == "cuda" else MixedPrecisionPolicy())  # CUDA trains in bf16 (train.py's autocast)
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=precision)
        fully_shard(model, mesh=mesh, mp_policy=precision)  # the rest: embeddings, norms, head, glue layers
    return model


def for_training(model: nn.Module, world_size: int) -> nn.Module:
    """What the loop calls forward on: `model` wrapped in DDP under torchrun with train.parallel
    'ddp', else `model` itself (plain, or already sharded in place by `prepare_model`)."""
    if world_size > 1 and not isinstance(model, FSDPModule):
        return DistributedDataParallel(model)
    return model


def gradient_sync(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """Around a micro-step's forward and backward: reduce gradients over the ranks only when
    `sync` (the step's last micro-step); the others accumulate locally, without communication."""
    if sync:
        return nullcontext()
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_accumulating(model)
    return nullcontext()


@contextmanager
def _fsdp_accumulating(model: FSDPModule) -> Any:
    """No reduce-scatter, and the layers stay gathered for the next micro-step's forward."""
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients to norm at most `max_norm`; their norm before (over all shards when
    they are FSDP's DTensors, whose local norms alone would differ per rank)."""
    parameters = list(parameters)
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weights and optimizer state as the unsharded model's and its optimizer's `state_dict()`.
    Every rank must call this; under FSDP only rank 0 gets them (on CPU), the others empty dicts."""
    if not isinstance(model, FSDPModule):
        return model.state_dict(), optimizer.state_dict()
    weights = get_model_state_dict(model, options=_FULL_ON_RANK0)
    by_name: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=_FULL_ON_RANK0)
    if not by_name:
        return weights, {}
    number = {name: index for index, name in enumerate(_parameter_names(model, optimizer))}
    return weights, _rekeyed(by_name, number.__getitem__)


def load_weights(model: nn.Module, weights: dict[str, Any]) -> None:
    """Load an unsharded model's `state_dict()` (each rank keeps its shards under FSDP)."""
    if isinstance(model, FSDPModule):
        set_model_state_dict(model, weights, options=_FULL)
    else:
        model.load_state_dict(weights)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load what `full_state_dicts` saved of the optimizer."""
    if not isinstance(model, FSDPModule):
        optimizer.load_state_dict(saved)
        return
    names = _parameter_names(model, optimizer)  # torch's sharded loader matches parameters by name
    set_optimizer_state_dict(model, optimizer, _rekeyed(saved, names.__getitem__), options=_FULL)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters in the order `optimizer.state_dict()` numbers them."""
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    return [name_of[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def _rekeyed(optimizer_state: dict[str, Any], key: Callable[[Any], Any]) -> dict[str, Any]:
    """An optimizer state dict with each parameter's key k (its number, or its name) replaced by key(k)."""
    return {"state": {key(k): value for k, value in optimizer_state["state"].items()},
            "param_groups": [{**group, "params": [key(k) for k in group["params"]]}
                             for group in optimizer_state["param_groups"]]}
