"""DDP and FSDP2 under torchrun (gloo, CPU): 2 processes train exactly as 1 process
accumulating twice as many micro-steps, including a checkpoint/resume in the middle, and their
checkpoint loads for scoring like a one-process one. Real torchrun, real process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lst_model.train import CHECKPOINT, Distributed, load_model, read_log

JOB = Path(__file__).with_name("ddp_train_job.py")
SPEC = {
    "preset": "tiny",
    "model": {"d_global": 32, "d_local": 16},
    "data": {"seq_positions": 32, "patching": "curriculum"},
    "train": {"batch_size": 4, "budget_positions": 4 * 32 * 6, "log_every": 1, "checkpoint_every": 100,
              "warmup_steps": 2, "threads": 1, "device": "cpu"},
}


def _run(out: Path, processes: int, stop_at: int | None = None, **train: object) -> None:
    spec = {**SPEC, "train": {**SPEC["train"], **train}}
    job = [str(JOB), "--out", str(out), "--spec", json.dumps(spec)] + (["--stop-at", str(stop_at)] if stop_at else [])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(JOB.parent.parent)}
    command = launcher + job if processes > 1 else [sys.executable, *job]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_rows_split_over_ranks_and_micro_steps():
    assert Distributed(0, 1).rows(8, 2) == [range(0, 4), range(4, 8)]
    assert Distributed(0, 2).rows(8, 1) == [range(0, 4)] and Distributed(1, 2).rows(8, 1) == [range(4, 8)]
    assert [list(r) for r in Distributed(1, 2).rows(8, 2)] == [[4, 5], [6, 7]]


@pytest.mark.slow  # 10 to 25 s each on 2 shared cores (three interpreter starts, two torchrun rendezvous)
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_twice_the_accumulation(tmp_path, parallel):
    """The two-process run also accumulates (2 micro-steps: gradient sync only on the last) and
    recomputes its layers (activation checkpointing), neither of which may change a step. Sharded
    or not, the reductions add the same floats in the same order here, so the DDP tolerance holds."""
    _run(tmp_path / "one", processes=1, grad_accum=4, parallel=parallel)
    _run(tmp_path / "two", processes=2, grad_accum=2, parallel=parallel, activation_checkpointing=True,
         stop_at=3)  # resumed from its step-3 checkpoint
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(6))
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"], (a["step"], a["grad_norm"], b["grad_norm"])
        assert a["cumulative"] == b["cumulative"], "both see the same rows, costed the same"
    assert one[-1]["loss"] < one[0]["loss"]
    alone, together = (load_model(tmp_path / run / CHECKPOINT)[0].state_dict() for run in ("one", "two"))
    assert alone.keys() == together.keys()
    for name, weight in alone.items():
        torch.testing.assert_close(together[name], weight, rtol=1e-4, atol=1e-6, msg=name)
