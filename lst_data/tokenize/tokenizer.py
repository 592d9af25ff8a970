"""BPE tokenizers whose every piece is tied to the word it belongs to.

LST interleaves text and speech at word boundaries and patches speech per BPE piece, so
each piece must know its word. Words are tokenized the way the tokenizer sees text in
normal use (joined by single spaces, one call), never word by word: a word-initial piece
then carries its `▁` marker exactly as in training and inference, and the ids in a shard
are the ids a text LM would see for the same sentence. Pieces are mapped back to words by
character offsets:

- a piece belongs to the word of the first visible character at or after its start. So a
  piece with visible characters belongs to the word of its first one; a piece that is only
  whitespace (SentencePiece's lone `▁` before a word it could not merge with, e.g. `▁` +
  `42`) belongs to the word that follows it; an empty piece (the dummy-prefix `▁` at the
  start, the first byte piece of a byte-fallback character) belongs to the word it sits in;
- a piece that straddles two words (possible only for tokenizers that do not split at
  whitespace) belongs to the word where it starts; the next word may then own no piece,
  which the tokenize stage reports as `tokenize_failed` rather than guessing.

An unknown piece is spelled with the text it stands for (SentencePiece's convention for
string output, applied to Hugging Face's `[UNK]` too); its id is the unk id.

Three kinds: a SentencePiece BPE trained on the corpus (`train_tokenizer`), a user's
SentencePiece `tokenizer.model` (e.g. LLaMA-2's) and a Hugging Face `tokenizer.json`
(read with `tokenizers`). `Tokenizer.hash` is the sha256 of the model file's bytes and
goes into the dataset provenance.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from lst_data.core.errors import UserError
from lst_data.core.storage import StoragePath, location, write_bytes_atomic


class TokenPiece(NamedTuple):
    """One BPE piece of a transcript and the index of the word it belongs to."""

    id: int
    piece: str
    word_index: int


class _Encoded(NamedTuple):
    """A piece with its [begin, end) character offsets in the encoded text."""

    id: int
    piece: str
    begin: int
    end: int


class Tokenizer(ABC):
    """A loaded tokenizer: `kind`, `hash` (sha256 of the model file), `vocab_size`, `path`."""

    kind: str

    def __init__(self, path: StoragePath, model_bytes: bytes) -> None:
        self.path = path
        self.hash = hashlib.sha256(model_bytes).hexdigest()

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def _encode_with_offsets(self, text: str) -> list[_Encoded]:
        """Pieces of `text` as the tokenizer normally produces them, with character offsets."""

    def encode(self, text: str) -> list[int]:
        """Plain ids of `text`, as a text LM would see them."""
        return [e.id for e in self._encode_with_offsets(text)]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of a sequence of ids (e.g. a model's generated text tokens)."""

    def encode_words(self, words: Sequence[str]) -> list[TokenPiece]:
        """Pieces of the words joined by single spaces, each tied to its word (see module doc)."""
        if not words:
            return []
        text = " ".join(words)
        if text.split() != list(words):
            bad = next(w for w in words if w.split() != [w])
            raise ValueError(f"a word must be non-empty and contain no whitespace, got {bad!r}")
        starts = []
        offset = 0
        for word in words:
            starts.append(offset)
            offset += len(word) + 1
        pieces = []
        for encoded in self._encode_with_offsets(text):
            # Words are joined by single spaces, so the first visible character at or after
            # the piece's start is at most one step away.
            visible = encoded.begin + (encoded.begin < len(text) and text[encoded.begin] == " ")
            pieces.append(TokenPiece(encoded.id, encoded.piece, bisect.bisect_right(starts, visible) - 1))
        return pieces

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, vocab_size={self.vocab_size}, hash={self.hash[:12]})"


class TokenizerFileError(UserError, ValueError):
    """A tokenizer path that is missing or holds no tokenizer (a user's mistake: one line, exit 2)."""


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: StoragePath, model_bytes: bytes) -> None:
        import sentencepiece as spm

        super().__init__(path, model_bytes)
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._sp.decode([int(i) for i in ids]))

    def _encode_with_offsets(self, text: str) -> list[_Encoded]:
        proto = self._sp.encode(text, out_type="proto")
        if text.isascii():  # byte offsets are character offsets
            return [_Encoded(p.id, p.piece, p.begin, p.end) for p in proto.pieces]
        # SentencePiece reports UTF-8 byte offsets; map them to character offsets.
        char_at_byte = _char_index_of_bytes(text)
        return [_Encoded(p.id, p.piece, char_at_byte[p.begin], char_at_byte[p.end]) for p in proto.pieces]


class HuggingFaceTokenizer(Tokenizer):
    kind = "huggingface"

    def __init__(self, path: StoragePath, model_bytes: bytes) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        super().__init__(path, model_bytes)
        self._tok = HfTokenizer.from_str(model_bytes.decode("utf-8"))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def _encode_with_offsets(self, text: str) -> list[_Encoded]:
        # No BOS/EOS or template tokens: the shard holds the transcript's pieces only; a
        # model adds its own markers (<t>/<s>) when it builds sequences.
        enc = self._tok.encode(text, add_special_tokens=False)
        # Spell unknown pieces with the text they stand for, as SentencePiece does.
        unk = getattr(self._tok.model, "unk_token", None)
        return [
            _Encoded(i, text[b:e] if t == unk else t, b, e)
            for i, t, (b, e) in zip(enc.ids, enc.tokens, enc.offsets, strict=True)
        ]


def _char_index_of_bytes(text: str) -> list[int]:
    """For every UTF-8 byte offset 0..len(bytes), the index of the character it falls in."""
    index = []
    for char_index, char in enumerate(text):
        index.extend([char_index] * len(char.encode("utf-8")))
    index.append(len(text))
    return index


def load_tokenizer(path: str | os.PathLike[str] | StoragePath | None) -> Tokenizer:
    """A SentencePiece `.model` or a Hugging Face `tokenizer.json` (decided by content)."""
    if path is None:
        raise ValueError(
            "no tokenizer model given: set tokenizer.model, or train one on the corpus with "
            "`lst-data tokenizer train` (train_tokenizer)"
        )
    path = location(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        model_bytes = path.read_bytes()
    except OSError as err:
        raise TokenizerFileError(f"tokenizer {path}: unreadable ({err.strerror or err})") from None
    hugging_face = model_bytes.lstrip()[:1] == b"{"
    try:
        return HuggingFaceTokenizer(path, model_bytes) if hugging_face else SentencePieceTokenizer(path, model_bytes)
    except Exception as err:  # sentencepiece raises RuntimeError, tokenizers a bare Exception
        kind = "a Hugging Face tokenizer.json" if hugging_face else "a SentencePiece model"
        raise TokenizerFileError(f"tokenizer {path}: not {kind} ({str(err).splitlines()[0][:200]})") from None


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | os.PathLike[str] | StoragePath,
    vocab_size: int,
    seed: int,
    *,
    character_coverage: float = 1.0,
) -> Tokenizer:
    """Train a SentencePiece BPE on `texts` and write it to `out_path` (same inputs -> same bytes).

    Determinism: sentences are sorted, training is single-threaded, the sampling seed is
    set, and every sentence is used (no random subsampling). The vocabulary is a soft
    limit: a corpus too small to yield `vocab_size` pieces gives a smaller vocabulary
    instead of failing; a `vocab_size` smaller than the corpus's character set is an error.
    Normalization is the identity because transcripts are already NFKC-normalized by
    `lst_data.text`, so pieces spell the words exactly.
    """
    import sentencepiece as spm

    sentences = sorted(t for t in texts if t.strip())
    if not sentences:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    out_path = location(out_path)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            hard_vocab_limit=False,
            max_sentence_length=1 << 16,
            minloglevel=2,
        )
    except RuntimeError as err:
        n_chars = len(set("".join(sentences).replace(" ", "")))
        raise ValueError(
            f"could not train a BPE with vocab_size={vocab_size} on {len(sentences)} sentences "
            f"({n_chars} distinct characters; the vocabulary needs one piece per character plus "
            f"'\u2581', <unk>, <s> and </s>, i.e. at least {n_chars + 4}): {err}"
        ) from err
    write_bytes_atomic(out_path, model.getvalue())
    return load_tokenizer(out_path)
