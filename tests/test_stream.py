"""Streaming input (lst_model.stream) over real shards: an exact epoch uses every training
utterance once across ranks and workers, mid-epoch resume continues the same micro-batches
(real DataLoader workers), and training resumes from a checkpoint's stream position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.toy_corpus import ToyLanguage, synthetic_records, write_synthetic_shards

from lst_model.config import load_run_spec
from lst_model.data import is_heldout, load_token_space
from lst_model.stream import PackedShardStream, StreamCursor, StreamPosition
from lst_model.train import read_log, train

N = 60


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("stream") / "shards", N, samples_per_shard=8)


def _spec(**data):
    return load_run_spec(overrides={"preset": "tiny", "data": {"input": "stream", "seq_positions": 32,
                                                               "shuffle_buffer": 16, **data},
                                    "train": {"batch_size": 2, "budget_positions": 2 * 32 * 12, "threads": 1,
                                              "log_every": 1, "loader_workers": 2, "checkpoint_every": 1000}})


def test_an_exact_epoch_uses_every_training_utterance_once_over_ranks_and_workers(shards, monkeypatch):
    """Speech-only examples packed into one long row per worker: the units of its documents
    name the utterances, so the four (rank, worker) parts must tile the training set."""
    spec = _spec(speech_weight=1.0, interleaved_weight=0.0, text_weight=0.0, patching="static", seq_positions=10**6)
    space = load_token_space(shards)
    seen = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            stream = PackedShardStream(shards, spec, space, rows=1, world_size=2)
            for item in stream:
                tokens = item["tokens"][0]
                ends = torch.nonzero(tokens == space.eos).flatten().tolist()
                begin = 0
                for end in ends:
                    seen.append(tuple((tokens[begin + 2 : end] - space.unit_offset).tolist()))  # BOS <s> units EOS
                    begin = end + 1
    records = synthetic_records(N, 0, language=ToyLanguage.make(0))
    expected = sorted(tuple(r.units.tolist()) for r in records if not is_heldout(r, spec.data.heldout_fraction))
    assert sorted(seen) == expected


def test_cursor_resumes_mid_epoch_with_the_same_micro_batches(shards):
    spec = _spec()
    space = load_token_space(shards)
    straight = StreamCursor(PackedShardStream(shards, spec, space, rows=2), num_workers=2)
    items = [straight.next() for _ in range(5)]
    assert straight.state() == {"epoch": 0, "batches": 5, "first_step_batch": 0, "text": []}
    resumed = StreamCursor(PackedShardStream(shards, spec, space, rows=2), num_workers=2, position=StreamPosition(0, 3))
    for expected in items[3:]:
        got = resumed.next()
        assert all(torch.equal(got[key], expected[key]) for key in expected)
    assert not torch.equal(items[0]["tokens"], items[1]["tokens"])


def test_epochs_roll_over_and_differ(shards):
    spec = _spec()
    cursor = StreamCursor(PackedShardStream(shards, spec, load_token_space(shards), rows=2), num_workers=0)
    first_epoch = []
    while cursor.position.epoch == 0:
        first_epoch.append(cursor.next()["tokens"])
    second = cursor.next()["tokens"]
    assert cursor.position.epoch == 1 and len(first_epoch) > 3
    assert not torch.equal(second, first_epoch[0]), "a new epoch reshuffles"


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
def test_streamed_training_resumes_exactly(shards, tmp_path, mode):
    spec = _spec(stream_mode=mode)
    space = load_token_space(shards)
    train(spec, None, space, tmp_path / "straight", shard_dir=shards)
    train(spec, None, space, tmp_path / "resumed", shard_dir=shards, stop_at_step=7)
    position = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["stream"]
    assert position == [{"epoch": 0, "batches": 7, "first_step_batch": 0, "text": []}], "stopped mid-epoch, 7 micro-batches in"
    train(spec, None, space, tmp_path / "resumed", shard_dir=shards)
    straight = [(r["step"], r["loss"]) for r in read_log(tmp_path / "straight")]
    assert straight == [(r["step"], r["loss"]) for r in read_log(tmp_path / "resumed")] and len(straight) == 12
    assert np.isfinite([loss for _, loss in straight]).all()
