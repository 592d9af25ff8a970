"""Activation checkpointing (lst_model.parallel) on one process: it recomputes every layer in
the backward pass and changes neither losses nor gradients, for the LST and the baseline.
FSDP and DDP under torchrun are in tests/test_train_distributed.py (slow)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records

from lst_model.config import load_run_spec, replace
from lst_model.model import LAYER_TYPES, build_model, summed_next_token_loss
from lst_model.parallel import clip_grad_norm, layer_modules, prepare_model
from lst_model.tokens import TokenSpace
from lst_model.train import CHECKPOINT, RecordRows, load_checkpoint, read_log, train, training_memory

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(30, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))


def _spec(kind: str, activation_checkpointing: bool = False):
    return load_run_spec(overrides={
        "preset": "tiny",
        "model": {"kind": kind, "d_global": 32, "d_local": 16},
        "data": {"seq_positions": 32, "patching": "curriculum"},
        "train": {"batch_size": 2, "budget_positions": 2 * 32 * 3, "log_every": 1, "warmup_steps": 1, "threads": 1,
                  "device": "cpu", "activation_checkpointing": activation_checkpointing},
    })


def _layer_calls(model: torch.nn.Module) -> list[int]:
    """A counter of the forward calls of the model's checkpointing units, counted from now on."""
    calls = [0]
    for layer in layer_modules(model):
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_activation_checkpointing_recomputes_layers_with_the_same_loss_and_gradients(kind):
    spec = _spec(kind)
    batch = RecordRows(spec, SPACE, RECORDS, None).micro_batch(0, range(2)).batch
    torch.manual_seed(0)
    plain = build_model(spec.model, SPACE.size)
    recomputing = prepare_model(copy.deepcopy(plain), _spec(kind, activation_checkpointing=True).train, 1,
                                torch.device("cpu"))
    layers = layer_modules(plain)
    assert layers and all(isinstance(layer, LAYER_TYPES) for layer in layers)
    losses, calls = [], []
    for model in (plain, recomputing):
        calls.append(_layer_calls(model))
        loss = summed_next_token_loss(model(batch), batch)
        loss.backward()
        losses.append(loss.detach())
    assert calls[0][0] == len(layers), "without checkpointing each layer runs once"
    assert calls[1][0] == 2 * len(layers), "with checkpointing each layer runs again in the backward pass"
    assert torch.equal(losses[0], losses[1])
    grads = [dict((name, p.grad) for name, p in model.named_parameters()) for model in (plain, recomputing)]
    assert grads[0].keys() == grads[1].keys(), "checkpointing keeps the parameter names"
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_training_with_activation_checkpointing_follows_the_same_trajectory(tmp_path, kind):
    train(_spec(kind), RECORDS, SPACE, tmp_path / "plain")
    train(_spec(kind, activation_checkpointing=True), RECORDS, SPACE, tmp_path / "recomputing")
    plain, recomputing = read_log(tmp_path / "plain"), read_log(tmp_path / "recomputing")
    assert [(r["loss"], r["grad_norm"]) for r in plain] == [(r["loss"], r["grad_norm"]) for r in recomputing]
    assert len(plain) == 3
    a = load_checkpoint(tmp_path / "plain" / CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / "recomputing" / CHECKPOINT)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_with_one_process_trains_the_plain_model(tmp_path, caplog):
    spec = _spec("baseline")
    train(spec, RECORDS, SPACE, tmp_path / "ddp")
    caplog.set_level(logging.INFO, logger="lst_model.parallel")
    train(replace(spec, train={"parallel": "fsdp"}), RECORDS, SPACE, tmp_path / "fsdp")
    assert any("nothing to shard" in record.getMessage() for record in caplog.records)
    assert [r["loss"] for r in read_log(tmp_path / "ddp")] == [r["loss"] for r in read_log(tmp_path / "fsdp")]


def test_clip_grad_norm_matches_torch_on_plain_tensors():
    torch.manual_seed(0)
    grads = [10 * torch.randn(8, 8), 10 * torch.randn(8)]
    ours, theirs = ([torch.nn.Parameter(torch.zeros_like(g)) for g in grads] for _ in range(2))
    for p, q, g in zip(ours, theirs, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    norm = clip_grad_norm(ours, 1.0)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(theirs, 1.0))) and norm > 1.0
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, theirs, strict=True))
    assert float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours]))) == pytest.approx(1.0)


def test_fsdp_splits_the_training_state_over_the_processes_in_the_memory_estimate():
    ddp, fsdp = _spec("lst"), replace(_spec("lst"), train={"parallel": "fsdp"})
    parameters, alone = training_memory(ddp, SPACE.size, 4)
    assert training_memory(fsdp, SPACE.size, 1) == (parameters, alone), "one process holds everything"
    assert alone - training_memory(fsdp, SPACE.size, 4)[1] == 16 * parameters - 16 * parameters // 4
