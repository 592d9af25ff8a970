"""Training: exact resume, learning, logs/plots, and the CLI end to end on real shards
(written by the shard stage's writer from synthetic toy utterances)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records, write_synthetic_shards

from lst_model.cli import cli
from lst_model.config import load_run_spec, replace
from lst_model.tokens import TokenSpace
from lst_model.train import CHECKPOINT, load_checkpoint, lr_factor, read_log, train

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(30, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))


def _spec(kind: str = "lst", steps: int = 6, **train):
    return load_run_spec(overrides={
        "preset": "tiny",
        "model": {"kind": kind, "d_global": 32, "d_local": 32, "dropout": 0.1},
        "data": {"seq_positions": 32, "patching": "curriculum"},
        "train": {"batch_size": 2, "budget_positions": 2 * 32 * steps, "log_every": 1, "checkpoint_every": 100,
                  "warmup_steps": 2, "threads": 1, **train},
    })


@pytest.mark.parametrize("kind", ["lst", "baseline"])
def test_resume_gives_the_same_loss_trajectory(tmp_path, kind):
    spec = _spec(kind)
    train(spec, RECORDS, SPACE, tmp_path / "straight")
    train(spec, RECORDS, SPACE, tmp_path / "resumed", stop_at_step=3)
    assert [r["step"] for r in read_log(tmp_path / "resumed")] == [0, 1, 2]
    train(spec, RECORDS, SPACE, tmp_path / "resumed")
    straight = [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(tmp_path / "straight")]
    resumed = [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(tmp_path / "resumed")]
    assert straight == resumed and len(straight) == 6
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / "resumed" / CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_refuses_another_config(tmp_path):
    train(_spec(steps=2), RECORDS, SPACE, tmp_path / "run")
    with pytest.raises(ValueError, match="another config"):
        train(replace(_spec(steps=2), train={"lr": 1e-4}), RECORDS, SPACE, tmp_path / "run")


def test_learning_rate_schedule():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_loss_falls_and_budget_is_in_global_positions(tmp_path):
    spec = _spec("lst", steps=40, lr=3e-3)
    result = train(spec, RECORDS, SPACE, tmp_path / "run")
    rows = read_log(tmp_path / "run")
    assert result.steps == 40
    assert rows[-1]["cumulative"]["global_positions"] == 40 * 2 * 32
    assert rows[-1]["cumulative"]["tokens"] > rows[-1]["cumulative"]["global_positions"], "speech patches hold several tokens"
    same = rows[-1]["same_data"]
    assert same["lst"]["global_positions"] == 2 * 32 == rows[-1]["global_positions"]
    assert same["baseline"]["global_positions"] == rows[-1]["tokens"] > 2 * 32
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5


def test_cli_train_score_compare_plot(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", 40)
    config = tmp_path / "run.yaml"
    config.write_text(
        "preset: tiny\nmodel: {d_global: 32, d_local: 32}\ndata: {seq_positions: 32, heldout_fraction: 0.2}\n"
        "train: {batch_size: 2, budget_positions: 256, log_every: 2, threads: 1}\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    for kind in ("lst", "baseline"):
        result = runner.invoke(cli, ["train", "--shards", str(shards), "--config", str(config),
                                      "--out", str(tmp_path / kind), "--set", f"model.kind={kind}"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output.strip().splitlines()[-1])
        assert summary["steps"] == 4 and summary["tokens_per_second"] > 0
        assert (tmp_path / kind / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(cli, ["score", "--model", str(tmp_path / "lst"), "--shards", str(shards),
                                  "--out", str(tmp_path / "scores.jsonl")])
    assert result.exit_code == 0, result.output
    accuracies = json.loads(result.stdout)["pairs"]
    assert set(accuracies) == {"s2s", "t2t", "s2t", "t2s"} and accuracies["s2s"]["n"] > 0
    assert "S→T" in result.stderr, "the readable table goes to stderr"
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == sum(a["n"] for a in accuracies.values())
    result = runner.invoke(cli, ["compare", "--shards", str(shards), "--json", "--mixture-tokens", "5000"])
    assert result.exit_code == 0, result.output
    assert "transcripts stand in" in result.stderr
    report = json.loads(result.stdout)
    positions = report["speech_only"]["positions_per_utterance"]
    assert positions["baseline"] > 3 * positions["static"]
    result = runner.invoke(cli, ["plot", f"lst={tmp_path / 'lst'}", f"baseline={tmp_path / 'baseline'}",
                                  "--out", str(tmp_path / "both.png")])
    assert result.exit_code == 0 and (tmp_path / "both.png").stat().st_size > 1000


def test_demo_config_loads():
    from pathlib import Path

    spec = load_run_spec(Path(__file__).resolve().parent.parent / "lst_model" / "configs" / "demo.yaml")
    assert spec.model.d_global == 64 and spec.data.patching == "curriculum" and spec.steps == 300


@pytest.mark.slow
def test_trained_models_find_the_true_continuation(tmp_path):
    """Both models, trained briefly on toy utterances (a Markov chain over words), must pick
    the true held-out text continuation far above chance (0.5)."""
    from lst_model.corpus_tasks import corpus_items
    from lst_model.data import split_heldout
    from lst_model.score import accuracy, score_items
    from lst_model.train import load_model

    records = synthetic_records(300, seed=5, language=LANGUAGE)
    train_records, _ = split_heldout(records, 0.2)
    for kind in ("lst", "baseline"):
        spec = load_run_spec(overrides={"preset": "tiny", "model": {"kind": kind},
                                        "train": {"batch_size": 8, "budget_positions": 8 * 128 * 120, "threads": 1,
                                                  "checkpoint_every": 1000}})
        train(spec, train_records, SPACE, tmp_path / kind)
        model, spec, space = load_model(tmp_path / kind / CHECKPOINT)
        items, _ = corpus_items(records, 0.2, pairs=("t2t",))
        result = accuracy(score_items(model, spec, space, items))
        assert result["acc_per_token"] > 0.7, (kind, result)


@pytest.mark.parametrize("setting,field", [("data.input=bogus", "data.input"), ("train.grad_accum=3", "train.grad_accum"),
                                           ("data.stream_mode=sometimes", "data.stream_mode")])
def test_bad_run_settings_are_one_line_usage_errors(tmp_path, setting, field):
    shards = write_synthetic_shards(tmp_path / "shards", 4)
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--out", str(tmp_path / "run"), "--set", setting])
    assert result.exit_code == 2 and field in result.output and "Traceback" not in result.output


def test_a_model_path_that_is_no_checkpoint_is_one_line_exit_2(tmp_path):
    """score/asr/generate/train --init read checkpoints the user names: a folder without one,
    a file that is not one, or a truncated one is a one-line error, never a traceback."""
    shards = write_synthetic_shards(tmp_path / "shards", 6)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n", encoding="utf-8")
    run = tmp_path / "run"
    train(_spec(steps=1), RECORDS, SPACE, run)
    (tmp_path / "truncated.pt").write_bytes((run / CHECKPOINT).read_bytes()[:300])
    cases = [(tmp_path, "checkpoint"), (tmp_path / "notes.txt", "not an lst-model checkpoint"),
             (tmp_path / "truncated.pt", "not an lst-model checkpoint")]
    for path, message in cases:
        for args in (["score", "--model", str(path), "--shards", str(shards)],
                     ["generate", "--model", str(path), "--shards", str(shards), "--sample", "toy-00000"],
                     ["train", "--shards", str(shards), "--out", str(tmp_path / "ft"), "--init", str(path)]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 2 and message in result.output and str(path) in result.output, (args, result.output)
            assert "Traceback" not in result.output, (args, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
