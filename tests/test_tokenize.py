"""Tokenizers tied to words (lst_data.tokenize.tokenizer), the CLI, and the tokenize stage.

Every model here is made by the test itself: a SentencePiece BPE trained on a few
sentences, a SentencePiece model trained with LLaMA-2's trainer settings (byte fallback,
digit splitting) standing in for the real LLaMA-2 `tokenizer.model`, which cannot be
downloaded here, and Hugging Face `tokenizer.json` files trained with `tokenizers`.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lst_data.config import RunConfig
from lst_data.core.config import RayConfig, updated
from lst_data.core.runner import run_stage
from lst_data.tokenize.stage import TOKENS_SCHEMA, TokenizeStage, prepare_tokenizer
from lst_data.tokenize.tokenizer import TokenPiece, load_tokenizer, train_tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "she sells sea shells by the sea shore",
    "don't count your chickens before they hatch",
    "the early bird catches the worm",
    "all that glitters is not gold",
    "café au lait with a croissant",
] * 4
MARK = "\u2581"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok") / "bpe.model", vocab_size=120, seed=0)


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory):
    """A SentencePiece BPE with LLaMA-2's trainer settings (byte fallback, split digits, identity)."""
    import sentencepiece as spm

    path = tmp_path_factory.mktemp("llama") / "tokenizer.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sorted(CORPUS)),
        model_prefix=str(path.with_suffix("")),
        model_type="bpe",
        vocab_size=320,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        character_coverage=0.99995,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return load_tokenizer(path)


def _hf_tokenizer_json(path, pre_tokenizer, vocab_size=120):
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
    )
    tok.save(str(path))
    return path


def _spelled(pieces: list[TokenPiece], n_words: int) -> list[str]:
    return ["".join(p.piece for p in pieces if p.word_index == w).replace(MARK, "") for w in range(n_words)]


def test_training_is_deterministic_and_ignores_input_order(tmp_path):
    a = train_tokenizer(CORPUS, tmp_path / "a.model", vocab_size=100, seed=7)
    shuffled = list(CORPUS)
    random.Random(1).shuffle(shuffled)
    b = train_tokenizer(shuffled, tmp_path / "b.model", vocab_size=100, seed=7)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.hash == b.hash and len(a.hash) == 64
    assert a.kind == "sentencepiece" and a.vocab_size == 100


def test_vocab_size_is_a_soft_limit_but_too_small_is_a_clear_error(tmp_path):
    small = train_tokenizer(CORPUS, tmp_path / "big.model", vocab_size=5000, seed=0)
    assert 40 < small.vocab_size < 5000
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(CORPUS, tmp_path / "tiny.model", vocab_size=12, seed=0)
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", "  "], tmp_path / "none.model", vocab_size=100, seed=0)


def test_pieces_are_the_normal_encoding_of_the_sentence_tied_to_words(bpe):
    words = "the lazy fox catches a croissant".split()
    pieces = bpe.encode_words(words)
    assert [p.id for p in pieces] == bpe.encode(" ".join(words)), "same ids as encoding the sentence"
    assert _spelled(pieces, len(words)) == words
    first = {}
    for p in pieces:
        first.setdefault(p.word_index, p.piece)
    assert all(piece.startswith(MARK) for piece in first.values()), "each word starts with a ▁ piece"
    assert sum(p.piece.count(MARK) for p in pieces) == len(words), "no ▁ inside a word"


WORDS = st.lists(st.text(alphabet="abcdefghilmnorstuwé'", min_size=1, max_size=9), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(WORDS)
def test_any_words_map_back_to_themselves(bpe, words):
    pieces = bpe.encode_words(words)
    assert [p.word_index for p in pieces] == sorted(p.word_index for p in pieces)
    assert {p.word_index for p in pieces} == set(range(len(words)))
    assert _spelled(pieces, len(words)) == words
    assert [p.id for p in pieces] == bpe.encode(" ".join(words))


def test_unknown_characters_and_digits_stay_with_their_word(bpe, llama_like):
    words = ["zq", "42", "naïve", "fox"]
    pieces = bpe.encode_words(words)
    assert {p.word_index for p in pieces} == {0, 1, 2, 3}
    assert _spelled(pieces, 4) == words, "SentencePiece spells <unk> pieces with the text they stand for"
    # LLaMA-like: characters unseen in training ('4', '2', 'ï') become UTF-8 byte pieces.
    pieces = llama_like.encode_words(words)
    assert [p.piece for p in pieces if p.word_index == 1][-2:] == ["<0x34>", "<0x32>"]
    assert [p.piece for p in pieces if p.word_index == 2 and p.piece.startswith("<0x")] == [
        "<0xC3>",
        "<0xAF>",
    ]
    assert {p.word_index for p in pieces if p.piece.startswith("<0x")} == {1, 2}
    assert [p.id for p in pieces] == llama_like.encode(" ".join(words))


@pytest.mark.parametrize("pre", ["metaspace", "bytelevel", "whitespace"])
def test_hugging_face_tokenizer_json(tmp_path, pre):
    from tokenizers import pre_tokenizers

    pre_tokenizer = {
        "metaspace": pre_tokenizers.Metaspace(),
        "bytelevel": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "whitespace": pre_tokenizers.Whitespace(),
    }[pre]
    path = _hf_tokenizer_json(
        tmp_path / "tokenizer.json", pre_tokenizer, vocab_size=300 if pre == "bytelevel" else 120
    )
    tok = load_tokenizer(tmp_path)  # a directory holding tokenizer.json
    assert tok.kind == "huggingface" and tok.hash == load_tokenizer(path).hash
    words = "the early fox catches the croissant".split()
    pieces = tok.encode_words(words)
    assert [p.id for p in pieces] == tok.encode(" ".join(words))
    assert {p.word_index for p in pieces} == set(range(len(words)))
    for w, word in enumerate(words):
        text = "".join(p.piece for p in pieces if p.word_index == w)
        assert text.replace(MARK, "").replace("\u0120", "") == word


def test_hugging_face_unknown_pieces_are_spelled_with_their_text(tmp_path):
    from tokenizers import pre_tokenizers

    tok = load_tokenizer(_hf_tokenizer_json(tmp_path / "tokenizer.json", pre_tokenizers.Whitespace()))
    pieces = tok.encode_words(["süß", "fox"])
    unk_id = tok._tok.token_to_id("[UNK]")
    assert [p.piece for p in pieces if p.id == unk_id] == ["ü", "ß"]
    assert _spelled(pieces, 2) == ["süß", "fox"]


def test_a_piece_straddling_words_goes_to_the_word_where_it_starts(tmp_path):
    # No pre-tokenizer: BPE merges across spaces, so a piece can swallow whole words.
    tok = load_tokenizer(_hf_tokenizer_json(tmp_path / "t.json", None, vocab_size=200))
    text = "with a croissant"
    pieces = tok.encode_words(text.split())
    assert any(" " in p.piece.strip() for p in pieces), "this tokenizer is expected to merge across spaces"
    cursor = 0
    for p in pieces:
        begin = text.index(p.piece, cursor)
        first_visible = begin + (text[begin] == " ")
        assert p.word_index == text[:first_visible].count(" "), f"{p.piece!r} goes to the word it starts in"
        cursor = begin + len(p.piece)
    assert 1 not in {p.word_index for p in pieces}, "'a' lies inside a straddling piece"
    result = TokenizeStage(model_path=tok.path).process_batch([{"id": "u", "normalized_text": text}])
    assert result.rows == []
    assert [r.code for r in result.rejects] == ["tokenize_failed"]
    assert "straddles" in result.rejects[0].detail and "1:'a'" in result.rejects[0].detail


def test_load_tokenizer_needs_a_model():
    with pytest.raises(ValueError, match="train"):
        load_tokenizer(None)


def test_encode_words_rejects_words_with_spaces(bpe):
    assert bpe.encode_words([]) == []
    with pytest.raises(ValueError, match="whitespace"):
        bpe.encode_words(["two words"])
    with pytest.raises(ValueError, match="non-empty"):
        bpe.encode_words([""])


def test_stage_rows_rejects_and_parquet(bpe, tmp_path):
    stage = TokenizeStage(model_path=bpe.path, expected_hash=bpe.hash)
    rows = [
        {"id": "a", "normalized_text": "the quick brown fox"},
        {"id": "b", "normalized_text": ""},
        {"id": "c", "normalized_text": "sea shells"},
    ]
    table = pa.Table.from_pylist(rows)
    config = RunConfig(ray=RayConfig(runner="local", batch_size=2))
    report = run_stage(stage, table, tmp_path / "out", config, show_progress=False)
    assert [(r.id, r.stage, r.code) for r in report.rejects] == [("b", "tokenize", "tokenize_failed")]
    tokens = pq.read_table(tmp_path / "out" / "tokens.parquet")
    assert tokens.schema.equals(TOKENS_SCHEMA)
    assert tokens["id"].to_pylist() == ["a", "c"]
    assert set(tokens["tokenizer_hash"].to_pylist()) == {bpe.hash}
    first = [TokenPiece(**p) for p in tokens["pieces"][0].as_py()]
    assert first == bpe.encode_words("the quick brown fox".split())
    run_stage(stage, table, tmp_path / "again", config, show_progress=False)
    assert (tmp_path / "again" / "tokens.parquet").read_bytes() == (tmp_path / "out" / "tokens.parquet").read_bytes()


def test_stage_refuses_a_model_that_changed(bpe, tmp_path):
    with pytest.raises(RuntimeError, match="changed"):
        TokenizeStage(model_path=bpe.path, expected_hash="0" * 64).setup()


def test_prepare_tokenizer_trains_with_the_run_seed_or_loads_the_configured_model(bpe, tmp_path):
    config = RunConfig()
    trained = prepare_tokenizer(config.tokenizer, CORPUS, tmp_path, seed=config.seed)
    assert trained.path == tmp_path / "tokenizer.model"
    assert (
        trained.hash
        == train_tokenizer(CORPUS, tmp_path / "again.model", config.tokenizer.vocab_size, config.seed).hash
    )
    loaded = prepare_tokenizer(
        updated(config.tokenizer, {"model": str(bpe.path)}), [], tmp_path / "unused", seed=0
    )
    assert loaded.hash == bpe.hash and not (tmp_path / "unused").exists()


def test_cli_train_and_encode(tmp_path):
    from lst_data.cli import cli
    from lst_data.core.tables import MANIFEST_SCHEMA

    rows = [
        {
            "id": f"u{i}",
            "key": f"u{i}",
            "audio_path": "x.wav",
            "source_path": "x.wav",
            "source_sample_rate": 16000,
            "sample_rate": 16000,
            "num_samples": 16000,
            "duration": 1.0,
            "speaker": "s",
            "text": t,
            "normalized_text": t,
            "flags": [],
        }
        for i, t in enumerate(CORPUS)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "manifest.parquet")
    runner = CliRunner()
    result = runner.invoke(
        cli, ["tokenizer", "train", str(tmp_path), "--out", str(tmp_path / "m.model"), "--vocab-size", "90"]
    )
    assert result.exit_code == 0, result.output
    assert load_tokenizer(tmp_path / "m.model").vocab_size == 90
    result = runner.invoke(
        cli, ["tokenizer", "encode", "--model", str(tmp_path / "m.model"), "The Fox, quickly!"]
    )
    assert result.exit_code == 0, result.output
    words = [line.rsplit(" ", 1)[-1] for line in result.output.splitlines()[2:]]
    assert words[0] == "0:the" and words[-1] == "2:quickly" and "1:fox" in words, (
        "normalized, one word per piece"
    )
    result = runner.invoke(
        cli, ["tokenizer", "train", str(tmp_path), "--out", str(tmp_path / "t.model"), "--vocab-size", "12"]
    )
    # user errors: one line naming the field, exit 2
    assert result.exit_code == 2 and "tokenizer.vocab_size" in result.output and "at least" in result.output
    result = runner.invoke(
        cli, ["tokenizer", "train", str(tmp_path), "--out", str(tmp_path / "t.model"), "--vocab-size", "5"]
    )
    assert result.exit_code == 2 and "tokenizer.vocab_size" in result.output
    assert not (tmp_path / "t.model").exists()
    # the stage: every transcript tokenized with the given model
    result = runner.invoke(
        cli, ["tokenize", str(tmp_path), "--model", str(tmp_path / "m.model"), "--out", str(tmp_path / "tok"),
              "--runner", "local"]
    )
    assert result.exit_code == 0, result.output
    tokens = pq.read_table(tmp_path / "tok" / "tokens.parquet")
    assert tokens["id"].to_pylist() == [f"u{i}" for i in range(len(CORPUS))]
    assert set(tokens["tokenizer_hash"].to_pylist()) == {load_tokenizer(tmp_path / "m.model").hash}


def test_decode_inverts_encode(bpe, llama_like, tmp_path):
    """ASR hypotheses are decoded with the shards' tokenizer: decode(encode(text)) == text."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers

    path = _hf_tokenizer_json(tmp_path / "tokenizer.json", pre_tokenizers.Metaspace())
    hf = Tokenizer.from_file(str(path))
    hf.decoder = decoders.Metaspace()  # a tokenizer.json as shipped names its decoder
    hf.save(str(path))
    text = "the early fox catches the croissant"
    for tok in (bpe, llama_like, load_tokenizer(path)):
        assert tok.decode(tok.encode(text)) == text, tok


@pytest.mark.parametrize("content, says", [
    (b"not a model", "not a SentencePiece model"),
    (b'{"truncated": ', "not a Hugging Face tokenizer.json"),
    (None, "unreadable (No such file or directory)"),  # a folder without a tokenizer.json
])
def test_a_tokenizer_path_without_a_tokenizer_is_one_line_exit_2(tmp_path, content, says):
    import subprocess
    import sys
    from pathlib import Path

    model = tmp_path / "tokenizer.model"
    if content is None:
        model.mkdir()
    else:
        model.write_bytes(content)
    named = model / "tokenizer.json" if content is None else model
    lst_data = Path(sys.executable).parent / "lst-data"
    proc = subprocess.run([str(lst_data), "tokenizer", "encode", "--model", str(model), "hello"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"tokenizer {named}: {says}" in lines[0], proc.stderr
