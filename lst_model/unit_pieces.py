"""Unit BPE pieces: a sentencepiece BPE over speech-unit sequences (the BPE SpeechLLM's
vocabulary; lst_model.unit_bpe applies it to examples and runs).

Training: one "sentence" per training utterance, its units as one word (each unit is one
private-use character, no whitespace splitting, no normalization), sorted, plus one sentence
per unit so that every unit is a piece and any unit sequence encodes (`model.unit_bpe_vocab`
pieces, the unknown piece 0 included, which is never produced). Single thread, fixed seed:
the same utterances give the same pieces.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lst_data.core.errors import ConfigError

KIND = "bpe_speechllm"
UNIT_BPE_FILE = "unit_bpe.model"  # beside a bpe_speechllm run's checkpoint (which holds it too)
FIRST_UNIT_CHARACTER = 0xF0000  # Unicode plane 15, private use: never whitespace, untouched by any normalization
MAX_UNITS = 65534  # the plane's private-use characters
MAX_PIECE_UNITS = 16  # longest piece, in units (sentencepiece's max_sentencepiece_length)
SEED = 0


def unit_text(units: Sequence[int] | np.ndarray) -> str:
    """Units as the characters the BPE reads (one private-use character per unit)."""
    return "".join(map(chr, (np.asarray(units, dtype=np.int64) + FIRST_UNIT_CHARACTER).tolist()))


@functools.lru_cache(maxsize=8)
def _processor(model: bytes):  # -> sentencepiece.SentencePieceProcessor (untyped)
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model)


@functools.lru_cache(maxsize=8)
def _piece_units(model: bytes) -> tuple[np.ndarray, ...]:
    """The units of every piece (the unknown piece 0: none)."""
    processor = _processor(model)
    return tuple(np.array([] if processor.is_unknown(i) else [ord(c) - FIRST_UNIT_CHARACTER for c in processor.id_to_piece(i)],
                          dtype=np.int64) for i in range(processor.get_piece_size()))


@dataclass(frozen=True)
class UnitBPE:
    """A trained unit BPE: its serialized sentencepiece model (equal models, equal BPEs)."""

    model: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    @property
    def n_pieces(self) -> int:
        return int(_processor(self.model).get_piece_size())

    def encode(self, units: Sequence[int] | np.ndarray) -> np.ndarray:
        """Piece indices [0, n_pieces) of one unit sequence (encoded as a whole)."""
        return np.asarray(_processor(self.model).encode(unit_text(units)), dtype=np.int64)

    def decode(self, pieces: Sequence[int] | np.ndarray) -> np.ndarray:
        """The units of a piece sequence."""
        table = _piece_units(self.model)
        return np.concatenate([np.zeros(0, dtype=np.int64), *(table[int(p)] for p in pieces)])

    def compression(self, unit_sequences: Iterable[np.ndarray]) -> float:
        """Units per piece over these sequences (each encoded on its own)."""
        units = pieces = 0
        for sequence in unit_sequences:
            units += len(sequence)
            pieces += len(self.encode(sequence))
        return units / pieces if pieces else float("nan")


def train_unit_bpe(unit_sequences: Iterable[Sequence[int] | np.ndarray], n_units: int, vocab_size: int) -> UnitBPE:
    """A BPE of `vocab_size` pieces (fewer when the sequences allow no more merges) over these
    unit sequences of a codebook of `n_units`; see the module doc."""
    import sentencepiece as spm

    if n_units > MAX_UNITS:
        raise ConfigError(f"model.kind {KIND}: a codebook of {n_units} units is more than the unit BPE can write "
                          f"({MAX_UNITS})")
    if vocab_size < n_units + 1:
        raise ConfigError(f"model.unit_bpe_vocab: {vocab_size} is too small; it must be at least the codebook size + 1 "
                          f"({n_units + 1}: every unit and the unknown piece)")
    sentences = sorted(unit_text(units) for units in unit_sequences if len(units))
    singles = [unit_text([u]) for u in range(n_units)]
    model = io.BytesIO()
    spm.set_random_generator_seed(SEED)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences + singles), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, split_by_whitespace=False, split_by_unicode_script=False,
        split_by_number=False, add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        byte_fallback=False, max_sentencepiece_length=MAX_PIECE_UNITS, max_sentence_length=2**30, num_threads=1,
        shuffle_input_sentence=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2)
    return UnitBPE(model.getvalue())


# ---------------------------------------------------------------------------------------------
