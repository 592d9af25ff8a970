"""The streamed text corpus (`lst_model.text_corpus.TextStream`): readers of ranks x workers
share every document of an epoch exactly once, epochs reshuffle, a reader (and training, in
both input modes) resumes exactly, local folders, globs and memory:// URLs read alike, memory
stays bounded, the fingerprint reads no document, and bad corpora are one-line user errors.
A real SentencePiece model is trained here; nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records, write_synthetic_shards

import lst_model.text_corpus as text_corpus
from lst_data.core.storage import location, remove_tree
from lst_data.text import normalize_text
from lst_data.tokenize.tokenizer import load_tokenizer, train_tokenizer
from lst_model.cli import cli
from lst_model.config import load_run_spec
from lst_model.data import load_token_space
from lst_model.stream import PackedShardStream, StreamCursor, StreamPosition
from lst_model.text_corpus import READ_BATCH, TextCorpusError, TextPosition, TextStream
from lst_model.tokens import TokenSpace
from lst_model.train import RecordRows, load_checkpoint, read_log, train

REPO = Path(__file__).resolve().parent.parent
TRAINING_TEXT = [
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun",
    "a stitch in time saves nine they said and we all agreed with them at once",
    "pack my box with five dozen liquor jugs and sphinx of black quartz judge my vow",
    "how vexingly quick daft zebras jump when the wizard quickly jinxes the gnomes",
] * 4
WORDS = sorted(set(" ".join(TRAINING_TEXT).split()))
DATASET = synthetic_dataset_json(ToyLanguage.make(0))


def _documents(first: int, count: int) -> list[str]:
    """Distinct documents: document i spells i in base len(WORDS) with words, then a few more."""
    documents = []
    for i in range(first, first + count):
        digits, n = [], i
        while True:
            digits.append(WORDS[n % len(WORDS)])
            n //= len(WORDS)
            if not n:
                break
        documents.append(" ".join([*digits, *WORDS[i % 7 : i % 7 + 3]]).capitalize() + ".")
    return documents


TXT, JSONL, PARQUET = _documents(0, 60), _documents(60, 50), _documents(110, 40)


def _write_corpus(root) -> None:
    """Three formats in a folder tree (`root` a Path or a UPath), plus files a folder read skips."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("\n".join(TXT[:30]) + "\n\n" + "\n".join(TXT[30:]) + "\n", encoding="utf-8")
    (root / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in JSONL), encoding="utf-8")
    with (root / "c.parquet").open("wb") as handle:
        pq.write_table(pa.table({"text": PARQUET}), handle, row_group_size=16)
    (root / "README.md").write_text("not a document\n", encoding="utf-8")
    (root / ".hidden.txt").write_text("not a document either\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(TRAINING_TEXT, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=96, seed=0).path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root)
    return root


def _expected(tokenizer, documents) -> list[tuple[int, ...]]:
    encode = load_tokenizer(tokenizer).encode
    return [tuple(encode(normalize_text(d).text)) for d in documents]


def _epochs(reader, count: int = 1) -> list[list[tuple[int, ...]]]:
    """The documents a fresh `reader` gives in its first `count` text epochs (one list each)."""
    epochs: list[list[tuple[int, ...]]] = [[] for _ in range(count)]
    for ids in reader:
        if reader.position.epoch == count:
            return epochs
        epochs[reader.position.epoch].append(tuple(ids.tolist()))
    raise AssertionError("a text reader never ends")


def _stream_spec(**data):
    return load_run_spec(overrides={"preset": "tiny", "data": {"input": "stream", "seq_positions": 32, "shuffle_buffer": 16,
                                                               **data},
                                    "train": {"batch_size": 2, "budget_positions": 2 * 32 * 12, "threads": 1,
                                              "log_every": 1, "loader_workers": 2, "checkpoint_every": 1000}})


def test_two_ranks_by_two_workers_read_every_document_once_an_epoch(corpus, tokenizer, tmp_path):
    stream = TextStream.open(corpus, tokenizer, DATASET, 96)
    assert [f.name for f in stream.files] == ["a.txt", "c.parquet", "sub/b.jsonl"], "README.md and dot files are skipped"
    expected = sorted(_expected(tokenizer, TXT + JSONL + PARQUET))
    shards = write_synthetic_shards(tmp_path / "shards", 8)
    dataset = PackedShardStream(shards, _stream_spec(), load_token_space(shards), rows=1, world_size=2, texts=stream)
    readers = [dataset.text_reader(rank, worker, 2) for rank in range(2) for worker in range(2)]
    orders = []
    by_reader = [_epochs(reader, 2) for reader in readers]
    for epoch in range(2):
        shares = [epochs[epoch] for epochs in by_reader]
        assert all(shares), "every reader has a share"
        assert sorted(ids for share in shares for ids in share) == expected, f"epoch {epoch}: each document exactly once"
        orders.append([ids for share in shares for ids in share])
    assert orders[0] != orders[1], "the next epoch reads in another order"


def test_same_seed_same_documents_other_seed_other_order(corpus, tokenizer):
    def first(seed: int) -> list[list[int]]:
        reader = TextStream.open(corpus, tokenizer, DATASET, 96).reader(1, 3, seed)
        return [ids.tolist() for ids in islice(reader, 40)]

    assert first(7) == first(7)
    assert first(7) != first(8)


def test_a_reader_started_at_a_position_continues_as_the_uninterrupted_one(corpus, tokenizer):
    stream = TextStream.open(corpus, tokenizer, DATASET, 96)
    straight = stream.reader(1, 3, seed=5)
    documents, positions = [], []
    for ids in islice(straight, 260):  # about five epochs of this reader's share
        documents.append(ids.tolist())
        positions.append(straight.position)
    assert positions[-1].epoch >= 4
    for stop in (1, 7, 23, 49, 50, 51, 120, 200):
        resumed = stream.reader(1, 3, seed=5, start=TextPosition(*list(positions[stop - 1])))
        assert [ids.tolist() for ids in islice(resumed, 40)] == documents[stop : stop + 40], f"resumed after {stop}"


def test_a_memory_url_folder_and_glob_read_as_a_local_folder(corpus, tokenizer):
    root = location("memory://text-stream-test/corpus")
    try:
        _write_corpus(root)
        remote = TextStream.open("memory://text-stream-test/corpus", tokenizer, DATASET, 96)
        assert [f.name for f in remote.files] == ["a.txt", "c.parquet", "sub/b.jsonl"]
        assert sorted(_epochs(remote.reader(0, 1, seed=0))[0]) == sorted(_expected(tokenizer, TXT + JSONL + PARQUET))
        jsonl = TextStream.open("memory://text-stream-test/corpus/sub/*.jsonl", tokenizer, DATASET, 96)
        assert [f.name for f in jsonl.files] == ["b.jsonl"]
        assert sorted(_epochs(jsonl.reader(1, 2, seed=0))[0] + _epochs(jsonl.reader(0, 2, seed=0))[0]) == \
            sorted(_expected(tokenizer, JSONL))
    finally:
        remove_tree(root.parent)


def test_reading_holds_a_bounded_number_of_documents(tmp_path, tokenizer):
    lines = _documents(0, 100_000)
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": lines[:5000]}), tmp_path / "big.parquet")
    stream = TextStream.open(tmp_path / "big.txt", tokenizer, DATASET, 96)
    assert stream.files[0].size > 2 * 2**20
    tracemalloc.start()
    try:
        raw = sum(len(chunk) for block in stream.blocks(1) for chunk in stream.records(block))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raw == len(lines) and peak < stream.files[0].size / 16, \
        f"a pass over {stream.files[0].size:,} bytes peaked at {peak:,} bytes"
    for path in (tmp_path / "big.txt", tmp_path / "big.parquet"):
        reader = TextStream.open(path, tokenizer, DATASET, 96).reader(0, 1, seed=0)
        assert len(list(islice(reader, 3 * READ_BATCH))) == 3 * READ_BATCH
        assert 0 < reader.max_held <= READ_BATCH and reader.held < READ_BATCH, path.name


def test_the_fingerprint_lists_files_without_reading_them(corpus, tokenizer, tmp_path, monkeypatch):
    (tmp_path / "one.txt").write_text("\n".join(TXT) + "\n", encoding="utf-8")
    first = TextStream.open(tmp_path, tokenizer, DATASET, 96)
    assert TextStream.open(tmp_path, tokenizer, DATASET, 96).fingerprint() == first.fingerprint()
    assert TextStream.open(corpus, tokenizer, DATASET, 96).fingerprint() != first.fingerprint()

    def no_reading(*args):
        raise AssertionError("the fingerprint read a document")

    monkeypatch.setattr(text_corpus, "read_records", no_reading)
    with (tmp_path / "one.txt").open("a", encoding="utf-8") as handle:
        handle.write("one more document\n")
    changed = TextStream.open(tmp_path, tokenizer, DATASET, 96)
    assert changed.fingerprint() != first.fingerprint()
    uppercase = {**DATASET, "config": {"ingest": {"lowercase": False}}}
    assert TextStream.open(tmp_path, tokenizer, uppercase, 96).fingerprint() != changed.fingerprint()


@pytest.mark.parametrize("make,message", [
    (lambda root: root / "missing.txt", "no such file or folder"),
    (lambda root: (root / "c.csv").write_text("text\nhello\n") and root / "c.csv", "unsupported format"),
    (lambda root: (root / "notes.md").write_text("hi\n") and root, "no .txt, .jsonl, .parquet files there"),
    (lambda root: "nosuchfs://bucket/corpus/", "cannot open nosuchfs:// URLs"),
    (lambda root: pq.write_table(pa.table({"body": ["x"]}), root / "p.parquet") or root / "p.parquet",
     "needs a string column 'text'"),
])
def test_a_corpus_that_cannot_be_used_is_a_one_line_error(tmp_path, tokenizer, make, message):
    with pytest.raises(TextCorpusError, match=message) as caught:
        TextStream.open(make(tmp_path), tokenizer, DATASET, 96)
    assert str(caught.value).startswith("--text ") and "\n" not in str(caught.value)


def test_errors_found_while_reading_and_too_few_blocks_are_one_line_errors(tmp_path, tokenizer):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine words"}\n{"body": "no text"}\n', encoding="utf-8")
    reader = TextStream.open(tmp_path / "bad.jsonl", tokenizer, DATASET, 96).reader(0, 1, seed=0)
    with pytest.raises(TextCorpusError, match="the line at byte 23: each JSONL line needs a string field 'text'"):
        list(islice(reader, 2))
    (tmp_path / "tiny.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(TextCorpusError, match="cannot be shared by 4 readers"):
        TextStream.open(tmp_path / "tiny.txt", tokenizer, DATASET, 96).reader(0, 4, seed=0)
    (tmp_path / "blank.txt").write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(TextCorpusError, match="no non-empty documents"):
        next(TextStream.open(tmp_path / "blank.txt", tokenizer, DATASET, 96).reader(0, 1, seed=0))


def test_cli_refuses_a_corpus_that_matches_nothing_in_one_line(tmp_path, tokenizer):
    shards = write_synthetic_shards(tmp_path / "shards", 4)
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--out", str(tmp_path / "run"),
                                      "--text", str(tmp_path / "nope" / "*.jsonl"), "--tokenizer", str(tokenizer)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nope/*.jsonl: no .txt, .jsonl, .parquet files there" in result.output


# ---------------------------------------------------------------------------------------------
# Training input: the text stream's position is part of the training state


SPACE = TokenSpace.from_dataset_json(DATASET)
RECORDS = synthetic_records(30, seed=0, language=ToyLanguage.make(0))


def _memory_spec():
    return load_run_spec(overrides={
        "preset": "tiny", "model": {"d_global": 32, "d_local": 32},
        "data": {"seq_positions": 32, "patching": "static"},
        "train": {"batch_size": 2, "grad_accum": 2, "budget_positions": 2 * 32 * 6, "log_every": 1, "checkpoint_every": 100,
                  "warmup_steps": 2, "threads": 1}})


def test_memory_input_takes_text_documents_in_step_order_and_resumes_them(corpus, tokenizer):
    spec, stream = _memory_spec(), TextStream.open(corpus, tokenizer, DATASET, 96)
    straight = RecordRows(spec, SPACE, RECORDS, stream.reader(0, 1, spec.train.seed))
    batches, positions = [], []
    for step in range(6):
        batches.append([straight.micro_batch(step, rows).batch.tokens for rows in (range(0, 1), range(1, 2))])
        positions.append(straight.position())
    assert positions[0] != positions[1], "every step takes documents from the text stream"
    corpus_ids = {tuple(SPACE.text_to_ids(ids).tolist()) for ids in _expected(tokenizer, TXT + JSONL + PARQUET)}
    text_examples = []
    for tokens in (row.tolist() for step in batches for micro in step for row in micro):
        for start in range(len(tokens) - 1):
            if tokens[start : start + 2] == [SPACE.bos, SPACE.text_start] and SPACE.eos in tokens[start:]:
                text_examples.append(tuple(tokens[start + 2 : tokens.index(SPACE.eos, start)]))
    assert text_examples and set(text_examples) <= corpus_ids, "text examples are corpus documents, not transcripts"
    resumed = RecordRows(spec, SPACE, RECORDS, stream.reader(0, 1, spec.train.seed, TextPosition(*positions[2]["text"])))
    for step in range(3, 6):
        again = [resumed.micro_batch(step, rows).batch.tokens for rows in (range(0, 1), range(1, 2))]
        assert all(torch.equal(a, b) for a, b in zip(again, batches[step], strict=True)), f"step {step}"


def test_memory_input_training_resumes_the_text_stream_exactly(corpus, tokenizer, tmp_path):
    spec, stream = _memory_spec(), TextStream.open(corpus, tokenizer, DATASET, 96)
    train(spec, RECORDS, SPACE, tmp_path / "straight", texts=stream)
    train(spec, RECORDS, SPACE, tmp_path / "resumed", texts=stream, stop_at_step=3)
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert saved["text_corpus"] == stream.fingerprint()
    assert len(saved["stream"]) == 1 and saved["stream"][0]["text"][0] == 0, "one rank's text position, in epoch 0"
    train(spec, RECORDS, SPACE, tmp_path / "resumed", texts=stream)
    straight = [(r["step"], r["loss"]) for r in read_log(tmp_path / "straight")]
    assert straight == [(r["step"], r["loss"]) for r in read_log(tmp_path / "resumed")] and len(straight) == 6


def test_streamed_input_carries_text_positions_over_epochs_and_resumes_them(corpus, tokenizer, tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", 24, samples_per_shard=6)
    spec, space = _stream_spec(heldout_fraction=0.0), load_token_space(shards)
    stream = TextStream.open(corpus, tokenizer, DATASET, 96)

    def cursor(position: StreamPosition | None = None) -> StreamCursor:
        return StreamCursor(PackedShardStream(shards, spec, space, rows=2, texts=stream), num_workers=2, position=position)

    straight = cursor()
    items, states = [], []
    while straight.position.epoch < 2:
        states.append(straight.state())
        items.append(straight.next())
    rolled = next(i for i, state in enumerate(states) if state["epoch"] == 1)  # one micro-batch into epoch 1
    assert len(states[rolled]["text"]) == 2 and states[rolled]["text"] != [list(TextPosition())] * 2, \
        "epoch 1's workers continue the text stream where epoch 0's left it"
    for at in (2, rolled - 1, rolled, rolled + 1):
        resumed = cursor(StreamPosition(**states[at]))
        for expected in items[at : at + 3]:
            got = resumed.next()
            assert all(torch.equal(got[key], expected[key]) for key in expected), f"resumed at micro-batch {at}"


@pytest.mark.slow  # three torchrun launches on 2 shared cores (about a minute)
def test_two_processes_save_and_resume_each_ranks_text_position(corpus, tokenizer, tmp_path):
    job = REPO / "tests" / "ddp_train_job.py"
    spec = {"preset": "tiny", "model": {"d_global": 32, "d_local": 32},
            "data": {"seq_positions": 32, "patching": "static"},
            "train": {"batch_size": 4, "budget_positions": 4 * 32 * 6, "log_every": 1, "checkpoint_every": 100,
                      "warmup_steps": 2, "threads": 1, "device": "cpu"}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def run(out, stop_at=None):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(job),
                   "--out", str(out), "--spec", json.dumps(spec), "--text", str(corpus), "--tokenizer", str(tokenizer),
                   *(["--stop-at", str(stop_at)] if stop_at else [])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run(tmp_path / "straight")
    run(tmp_path / "resumed", stop_at=3)  # stops at step 3, then resumes from that checkpoint
    positions = [rank["text"] for rank in load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["stream"]]
    assert len(positions) == 2 and all(p != list(TextPosition()) for p in positions), "every rank's own reader's position"
    straight = [(r["step"], r["loss"]) for r in read_log(tmp_path / "straight")]
    assert straight == [(r["step"], r["loss"]) for r in read_log(tmp_path / "resumed")] and len(straight) == 6
