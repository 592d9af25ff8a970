"""A synthetic corpus of `SampleRecord`s with learnable structure, for tests and benchmarks
when no shards are at hand (and to check the model learns before real data exists).

A toy language: word types with 1-3 BPE pieces each; sentences from a sparse first-order
Markov chain over words (each word has a few likely successors), so a continuation is
predictable from its prompt. Each piece has a unit prototype (2-4 units); a spoken word is
its pieces' prototypes with each unit repeated 1-2 times (duration jitter) and 5% of units
replaced at random (quantizer noise). Words are separated by 0-3 frames of silence units.
Word, piece and silence frame spans are exact, as a forced aligner would ideally give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lst_data.format.frames import FrameSpan, silence_frame_runs
from lst_data.format.records import BpePiece, SampleRecord, Silence, Word

FRAME_RATE = 25.0
SILENCE_UNITS = (0, 1)


@dataclass(frozen=True)
class ToyLanguage:
    word_pieces: tuple[tuple[int, ...], ...]  # BPE ids of each word type
    piece_units: dict[int, tuple[int, ...]]  # unit prototype of each BPE id
    successors: np.ndarray  # [n_words, n_successors] likely next word types
    text_vocab_size: int
    n_units: int

    @classmethod
    def make(cls, seed: int = 0, n_words: int = 40, text_vocab_size: int = 96, n_units: int = 32, n_successors: int = 3) -> ToyLanguage:
        rng = np.random.default_rng(seed)
        piece_ids = rng.permutation(text_vocab_size)
        word_pieces, cursor = [], 0
        for _ in range(n_words):
            n = int(rng.integers(1, 4))
            if cursor + n > text_vocab_size:
                cursor = 0
            word_pieces.append(tuple(int(p) for p in piece_ids[cursor : cursor + n]))
            cursor += n
        speech_units = np.arange(len(SILENCE_UNITS), n_units)
        piece_units = {int(p): tuple(int(u) for u in rng.choice(speech_units, int(rng.integers(2, 5)))) for p in range(text_vocab_size)}
        successors = np.stack([rng.choice(n_words, n_successors, replace=False) for _ in range(n_words)])
        return cls(tuple(word_pieces), piece_units, successors, text_vocab_size, n_units)

    def sentence(self, rng: np.random.Generator, n_words: int) -> list[int]:
        words = [int(rng.integers(len(self.word_pieces)))]
        while len(words) < n_words:
            if rng.random() < 0.9:
                words.append(int(rng.choice(self.successors[words[-1]])))
            else:
                words.append(int(rng.integers(len(self.word_pieces))))
        return words

    def record(self, rng: np.random.Generator, record_id: str, n_words: int, speaker: str = "toy") -> SampleRecord:
        units: list[int] = []
        words: list[Word] = []
        pieces: list[BpePiece] = []

        def silence(max_frames: int, min_frames: int = 0) -> None:
            units.extend(int(rng.choice(SILENCE_UNITS)) for _ in range(int(rng.integers(min_frames, max_frames + 1))))

        silence(3, 1)
        for index, word_type in enumerate(self.sentence(rng, n_words)):
            word_start = len(units)
            for piece in self.word_pieces[word_type]:
                piece_start = len(units)
                for unit in self.piece_units[piece]:
                    units.extend([unit] * int(rng.integers(1, 3)))
                pieces.append(BpePiece(piece, f"p{piece}", index, piece_start, len(units) - 1))
            words.append(_word(f"w{word_type}", word_start, len(units) - 1))
            silence(3)
        silence(3, 1)
        array = np.array(units, dtype=np.int16)
        noise = rng.random(len(array)) < 0.05
        array[noise] = rng.integers(0, self.n_units, int(noise.sum()))
        runs = silence_frame_runs([FrameSpan(w.start_frame, w.end_frame) for w in words], len(array))
        return SampleRecord(
            id=record_id,
            text=" ".join(w.word for w in words),
            speaker=speaker,
            duration=len(array) / FRAME_RATE,
            sample_rate=16000,
            frame_rate=FRAME_RATE,
            units=array,
            words=tuple(words),
            bpe=tuple(pieces),
            silences=tuple(Silence(r.start / FRAME_RATE, (r.end + 1) / FRAME_RATE, r.start, r.end) for r in runs),
            aligner={"backend": "synthetic", "model_hash": "none"},
            unit_info={"encoder": "synthetic", "layer": None, "codebook_hash": "none", "k": self.n_units},
        )


def _word(word: str, start_frame: int, end_frame: int) -> Word:
    return Word(word, start_frame / FRAME_RATE, (end_frame + 1) / FRAME_RATE, start_frame, end_frame)


def synthetic_records(n: int, seed: int = 0, min_words: int = 6, max_words: int = 14, language: ToyLanguage | None = None,
                      speakers: int = 1) -> list[SampleRecord]:
    """`n` toy utterances (ids `toy-00000`...) of one toy language (seeded); with several
    `speakers`, utterance i is spoken by `toy-spk{i % speakers}` (one speaker is `toy`)."""
    language = language or ToyLanguage.make(seed)
    rng = np.random.default_rng([seed, 1])
    return [language.record(rng, f"toy-{i:05d}", int(rng.integers(min_words, max_words + 1)),
                            "toy" if speakers == 1 else f"toy-spk{i % speakers}") for i in range(n)]


def synthetic_dataset_json(language: ToyLanguage) -> dict:
    """The minimal dataset.json of the toy corpus (what `TokenSpace.from_dataset_json` reads)."""
    return {"tokenizer": {"vocab_size": language.text_vocab_size}, "units": {"k": language.n_units}}


def write_synthetic_shards(out_dir, n: int, seed: int = 0, samples_per_shard: int = 100, speakers: int = 1) -> Path:
    """Real shards (the shard stage's writer) of `n` toy utterances, for the CLI and the demo."""
    from lst_data.config import load_config
    from lst_data.shards.writer import write_shards

    language = ToyLanguage.make(seed)
    config = load_config(overrides={"seed": seed, "shard": {"samples_per_shard": samples_per_shard}})
    write_shards(synthetic_records(n, seed, language=language, speakers=speakers), out_dir, config,
                 tokenizer_vocab_size=language.text_vocab_size, show_progress=False)
    return Path(out_dir)
