"""The independent text corpus (`--text`): three file formats read alike, normalized and
encoded with the shards' tokenizer (a real SentencePiece model trained here), fed into the
text share of training, and user errors as one-line exit-2 messages."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, write_synthetic_shards

from lst_data.format.layout import read_dataset
from lst_data.text import normalize_text
from lst_data.tokenize.tokenizer import load_tokenizer, train_tokenizer
from lst_model.cli import cli
from lst_model.text_corpus import find_tokenizer, iter_documents, load_text_corpus

DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine, they said; and 3 more!",
    "Speech and text share one model here.",
]
TRAINING_TEXT = [
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun",
    "a stitch in time saves nine they said and we all agreed with them at once",
    "speech and text share one model here so the units and the pieces meet",
    "pack my box with five dozen liquor jugs and sphinx of black quartz judge my vow",
    "how vexingly quick daft zebras jump when the wizard quickly jinxes the gnomes",
] * 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Toy shards (text vocabulary 96) with a SentencePiece model of that size in a stage folder beside them."""
    root = tmp_path_factory.mktemp("run")
    out = write_synthetic_shards(root / "shards", 20)
    tokenizer = train_tokenizer(TRAINING_TEXT, root / "tokenize" / "tokenizer.model", vocab_size=96, seed=0)
    assert tokenizer.vocab_size == ToyLanguage.make(0).text_vocab_size
    return out


def _write_all_formats(folder):
    (folder / "corpus.txt").write_text("\n".join(DOCUMENTS[:2]) + "\n\n" + DOCUMENTS[2] + "\n", encoding="utf-8")
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCUMENTS)),
                                         encoding="utf-8")
    pq.write_table(pa.table({"text": DOCUMENTS}), folder / "corpus.parquet")
    return [folder / name for name in ("corpus.txt", "corpus.jsonl", "corpus.parquet")]


def test_every_format_gives_the_shards_tokenizers_ids_of_the_normalized_text(shards, tmp_path):
    tokenizer_path = find_tokenizer(shards)
    assert tokenizer_path == shards.parent / "tokenize" / "tokenizer.model"
    tokenizer = load_tokenizer(tokenizer_path)
    expected = [tokenizer.encode(normalize_text(d).text) for d in DOCUMENTS]
    assert expected[0] != tokenizer.encode(DOCUMENTS[0]), "normalized (lowercase, no punctuation) as the transcripts were"
    dataset = read_dataset(shards)
    for path in _write_all_formats(tmp_path):
        assert list(iter_documents(path)) == DOCUMENTS, path.name
        ids = load_text_corpus(path, tokenizer_path, dataset, 96)
        assert [doc.tolist() for doc in ids] == expected, path.name
        assert all(doc.dtype == np.int32 for doc in ids)


def test_cli_trains_on_the_text_corpus(shards, tmp_path):
    text = _write_all_formats(tmp_path)[1]
    result = CliRunner().invoke(cli, [
        "train", "--shards", str(shards), "--out", str(tmp_path / "run"), "--text", str(text),
        "--set", "preset=tiny", "--set", "data.seq_positions=32", "--set", "train.batch_size=2",
        "--set", "train.budget_positions=128", "--set", "train.threads=1"])
    assert result.exit_code == 0, result.output
    assert "text corpus of 1 file, " in result.output and "(streamed)" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert len(config["text_corpus_sha256"]) == 64
    # resuming against another corpus is refused
    (tmp_path / "other.txt").write_text("other words entirely\n", encoding="utf-8")
    again = CliRunner().invoke(cli, [
        "train", "--shards", str(shards), "--out", str(tmp_path / "run"), "--text", str(tmp_path / "other.txt"),
        "--set", "preset=tiny", "--set", "data.seq_positions=32", "--set", "train.batch_size=2",
        "--set", "train.budget_positions=128", "--set", "train.threads=1"])
    assert again.exit_code == 2 and "another text corpus; use a new --out" in again.output


@pytest.mark.parametrize("content,message", [
    ('{"body": "no text field"}\n', "needs a string field 'text'"),
    ("\n\n", "no non-empty documents"),
])
def test_bad_text_corpus_is_a_one_line_user_error(shards, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(cli, ["compare", "--shards", str(shards), "--text", str(path), "--mixture-tokens", "100"])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_tokenizer_of_another_vocabulary_is_refused(shards, tmp_path):
    other = train_tokenizer(TRAINING_TEXT, tmp_path / "small.model", vocab_size=60, seed=0)
    assert other.vocab_size != 96
    (tmp_path / "c.txt").write_text("hello there\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["compare", "--shards", str(shards), "--text", str(tmp_path / "c.txt"),
                                       "--tokenizer", str(other.path), "--mixture-tokens", "100"])
    assert result.exit_code == 2 and "vocabulary 60 != the shards' 96" in result.output
