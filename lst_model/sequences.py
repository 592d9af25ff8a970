"""Training sequences built on the fly from whole utterances (`SampleRecord`s).

Three kinds of example, mixed by *token share* (`DataConfig` weights, paper: 33 %
interleaved, 67 % text, 0 % speech-only):

- text:        BOS <t> bpe... EOS, the next document of an independent text corpus (a
               `lst_model.text_corpus.TextReader`, taken in order); without one, the
               transcripts of the speech utterances stand in for it
- speech:      BOS <s> units... EOS
- interleaved: BOS, then alternating segments covering the utterance, each opened by its
  marker: a text span of L words (L uniform in [min_text_words, max_text_words]) as their
  BPE ids, then the next ~speech_ratio*L words as their unit frames, and so on; the first
  segment's modality is drawn at random so both switch directions occur. EOS last.

A speech segment of words [a, b) covers frames [F(a), F(b)) where F(k) is word k's first
frame, F(0) = 0 and F(n_words) = n_frames: a word takes the silence after it, and the
segments of an utterance tile its frames.

Fine-tuning (`data.task` other than 'pretrain') replaces the mixture with one example per
utterance, the loss on the output side only (`Example.target_mask`):

- asr: BOS <s> units... <t> bpe... EOS   targets: the BPE ids and EOS
- tts: BOS <t> bpe... <s> units... EOS   targets: the units and EOS
- asr_tts: each utterance one of the two, 50/50 by a draw from the row's rng.

The kind of the next example is the one furthest below its token share so far in the row's
stream (a deterministic deficit schedule: shares hold exactly, up to one example, in every
row, and the kinds do not depend on the patching, so the LST and the baseline read the same
stream).

Every example carries `patch_lengths` (global positions): 1 for each text or marker token,
the speech patches of the chosen strategy for units. Examples are packed into sequences of
exactly `seq_positions` global positions (the last example is cut at a patch boundary); a
packed sequence records its `document_lengths` so the model masks attention per document.
The flat baseline packs the same example stream with every token its own position (and
still knows the LST patching of its tokens, for compute accounting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import cycle

import numpy as np

from lst_data.format.records import SampleRecord
from lst_model.config import DataConfig
from lst_model.tokens import TokenSpace

ALIGNED = ("word_sil_sep", "word_sil_merged", "bpe")


KINDS = ("interleaved", "text", "speech")


@dataclass(frozen=True)
class Example:
    """Token ids of one example and the lengths of its global positions (sum == len(tokens));
    a packed sequence also has the token lengths of its documents (None: one document).
    `target_mask` (bool per token) says which tokens are loss targets (None: all of them):
    a fine-tuning example puts the loss on its output side only."""

    tokens: np.ndarray
    patch_lengths: np.ndarray
    kind: str
    document_lengths: np.ndarray | None = None
    target_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if int(self.patch_lengths.sum()) != len(self.tokens) or (self.patch_lengths <= 0).any():
            raise ValueError("patch_lengths must be positive and sum to the number of tokens")
        if self.document_lengths is not None and int(self.document_lengths.sum()) != len(self.tokens):
            raise ValueError("document_lengths must sum to the number of tokens")
        if self.target_mask is not None and self.target_mask.shape != self.tokens.shape:
            raise ValueError("target_mask must have one entry per token")

    def targets(self) -> np.ndarray:
        """The target mask, all True when none was given."""
        return np.ones(len(self.tokens), dtype=bool) if self.target_mask is None else self.target_mask

    def positions(self, flat: bool) -> int:
        return len(self.tokens) if flat else len(self.patch_lengths)


def static_patch_lengths(n_frames: int, patch_size: int) -> list[int]:
    """p tokens per patch; the last patch takes the remainder."""
    full, rest = divmod(n_frames, patch_size)
    return [patch_size] * full + ([rest] if rest else [])


def crop_patch_lengths(lengths: Sequence[int], start: int, stop: int) -> list[int]:
    """Patches of frames [start, stop): each patch intersected with the range, empty ones dropped.

    Aligned patches follow word/silence/BPE boundaries of the whole record; a speech segment
    of an interleaved example keeps those boundaries and only clips the patches at its ends.
    """
    cropped: list[int] = []
    begin = 0
    for length in lengths:
        end = begin + int(length)
        overlap = min(end, stop) - max(begin, start)
        if overlap > 0:
            cropped.append(overlap)
        begin = end
        if begin >= stop:
            break
    return cropped


def speech_patch_lengths(record: SampleRecord, start: int, stop: int, strategy: str, patch_size: int) -> list[int]:
    """Patches of the record's frames [start, stop) under a concrete strategy.

    Static patches restart at `start` (as they would for an utterance that began there);
    aligned ones come from `lst_data.format.patching` over the whole record and are cropped.
    """
    if strategy == "static":
        return static_patch_lengths(stop - start, patch_size)
    if strategy not in ALIGNED:
        raise ValueError(f"not a concrete patching strategy: {strategy!r}")
    from lst_data.format.patching import patch_lengths

    return crop_patch_lengths(patch_lengths(record, strategy, patch_size=patch_size), start, stop)


def curriculum_aligned_prob(progress: float) -> float:
    """P(u) of the paper: 1 for u < U/3, linear to 0 at 2U/3, 0 after (progress = u/U)."""
    if progress < 1 / 3:
        return 1.0
    if progress >= 2 / 3:
        return 0.0
    return float(2.0 - 3.0 * progress)


class SequenceBuilder:
    """Turns records (and text documents) into examples; `pack` makes sequences of them.

    `texts`: BPE id arrays of an independent text corpus for the text share, taken in order
    (an iterator such as a `TextReader`; a list is cycled); None, or an empty list, makes the
    records' transcripts stand in for it."""

    def __init__(self, space: TokenSpace, config: DataConfig,
                 texts: Sequence[np.ndarray] | Iterator[np.ndarray] | None = None):
        self.space = space
        self.config = config
        if isinstance(texts, Sequence):
            texts = cycle(texts) if texts else None
        self.texts = texts
        weights = np.array([config.interleaved_weight, config.text_weight, config.speech_weight], dtype=float)
        self.token_shares = weights / weights.sum()

    # strategy -----------------------------------------------------------------------------
    def resolve_strategy(self, strategy: str, rng: np.random.Generator, progress: float) -> str:
        """A concrete strategy for one example; draws from `rng` exactly once either way,
        so the example stream does not depend on the strategy (LST and baseline see the same data)."""
        draw = rng.random()
        if strategy == "mixed":
            return self.config.aligned_strategy if draw < self.config.mixed_aligned_prob else "static"
        if strategy == "curriculum":
            return self.config.aligned_strategy if draw < curriculum_aligned_prob(progress) else "static"
        return strategy

    # examples -----------------------------------------------------------------------------
    def text_example(self, record: SampleRecord) -> Example:
        """The record's transcript as a text example (the stand-in for a text corpus)."""
        return self.text_document_example([piece.id for piece in record.bpe])

    def text_document_example(self, bpe_ids: Sequence[int] | np.ndarray) -> Example:
        ids = self.space.text_to_ids(bpe_ids)
        tokens = np.concatenate([[self.space.bos, self.space.text_start], ids, [self.space.eos]])
        return Example(tokens.astype(np.int64), np.ones(len(tokens), dtype=np.int64), "text")

    def speech_example(self, record: SampleRecord, strategy: str) -> Example:
        body, lengths = self._speech_segment(record, 0, record.n_frames, strategy)
        tokens = np.concatenate([[self.space.bos], body, [self.space.eos]])
        return Example(tokens.astype(np.int64), np.array([1, *lengths, 1], dtype=np.int64), "speech")

    def interleaved_example(self, record: SampleRecord, rng: np.random.Generator, strategy: str) -> Example:
        n_words = len(record.words)
        starts = [0] + [w.start_frame for w in record.words[1:]] + [record.n_frames]
        pieces_by_word: dict[int, list[int]] = {}
        for piece in record.bpe:
            pieces_by_word.setdefault(piece.word_index, []).append(piece.id)
        token_parts: list[np.ndarray] = [np.array([self.space.bos])]
        length_parts: list[list[int]] = [[1]]
        speech = bool(rng.random() < 0.5)
        word = 0
        while word < n_words:
            text_len = int(rng.integers(self.config.min_text_words, self.config.max_text_words + 1))
            span = max(1, round(text_len * self.config.speech_ratio)) if speech else text_len
            stop = min(n_words, word + span)
            if speech and starts[stop] > starts[word]:
                body, lengths = self._speech_segment(record, starts[word], starts[stop], strategy)
                token_parts.append(body)
                length_parts.append(lengths)
            elif not speech:
                ids = [i for w in range(word, stop) for i in pieces_by_word.get(w, [])]
                if ids:
                    token_parts.append(np.concatenate([[self.space.text_start], self.space.text_to_ids(ids)]))
                    length_parts.append([1] * (len(ids) + 1))
            word = stop
            speech = not speech
        token_parts.append(np.array([self.space.eos]))
        length_parts.append([1])
        tokens = np.concatenate(token_parts).astype(np.int64)
        return Example(tokens, np.array([n for part in length_parts for n in part], dtype=np.int64), "interleaved")

    def asr_example(self, record: SampleRecord, strategy: str) -> Example:
        """BOS <s> units <t> text EOS, the loss on text + EOS."""
        return self._transcription_example(record, strategy, speech_first=True)

    def tts_example(self, record: SampleRecord, strategy: str) -> Example:
        """BOS <t> text <s> units EOS, the loss on units + EOS."""
        return self._transcription_example(record, strategy, speech_first=False)

    def _transcription_example(self, record: SampleRecord, strategy: str, speech_first: bool) -> Example:
        speech, speech_lengths = self._speech_segment(record, 0, record.n_frames, strategy)
        text = np.concatenate([[self.space.text_start], self.space.text_to_ids([piece.id for piece in record.bpe])])
        sides = [(speech, speech_lengths), (text, [1] * len(text))]
        (source, source_lengths), (output, output_lengths) = sides if speech_first else sides[::-1]
        tokens = np.concatenate([[self.space.bos], source, output, [self.space.eos]]).astype(np.int64)
        # The output's opening marker is given (it names the task); its content and EOS are the targets.
        mask = np.zeros(len(tokens), dtype=bool)
        mask[2 + len(source):] = True
        return Example(tokens, np.array([1, *source_lengths, *output_lengths, 1], dtype=np.int64),
                       "asr" if speech_first else "tts", target_mask=mask)

    def task_example(self, record: SampleRecord, rng: np.random.Generator, progress: float) -> Example:
        """One fine-tuning example of `data.task` (two draws from `rng` whatever the task,
        strategy or model, so the LST and the baseline see the same examples)."""
        strategy = self.resolve_strategy(self.config.patching, rng, progress)
        direction = rng.random()
        asr = self.config.task == "asr" or (self.config.task == "asr_tts" and direction < 0.5)
        return self.asr_example(record, strategy) if asr else self.tts_example(record, strategy)

    def _speech_segment(self, record: SampleRecord, start: int, stop: int, strategy: str) -> tuple[np.ndarray, list[int]]:
        units = self.space.units_to_ids(record.units[start:stop])
        lengths = speech_patch_lengths(record, start, stop, strategy, self.config.patch_size)
        return np.concatenate([[self.space.speech_start], units]), [1, *lengths]

    def next_kind(self, tokens_so_far: np.ndarray) -> int:
        """Index into KINDS of the kind furthest below its token share (ties: the larger share)."""
        deficit = self.token_shares * (tokens_so_far.sum() + 1) - tokens_so_far
        deficit[self.token_shares == 0] = -np.inf
        return int(np.argmax(deficit))

    def sample_example(self, kind: int, record: SampleRecord | None, rng: np.random.Generator, progress: float) -> Example:
        """One example of KINDS[kind] (a fixed number of draws per call, whatever the kind or
        strategy); `record` may be None only for a text example from the text corpus, which
        takes the corpus's next document."""
        strategy = self.resolve_strategy(self.config.patching, rng, progress)
        sub_seed = int(rng.integers(2**63))
        if kind == 1 and self.texts is not None:
            return self.text_document_example(next(self.texts))
        if record is None:
            raise ValueError(f"a {KINDS[kind]} example needs a record (only the text corpus gives examples without one)")
        if kind == 1:
            return self.text_example(record)
        if kind == 2 or not record.words:
            return self.speech_example(record, strategy)
        return self.interleaved_example(record, np.random.default_rng(sub_seed), strategy)

    # streams ------------------------------------------------------------------------------
    def example_stream(self, records: Sequence[SampleRecord], rng: np.random.Generator, progress: float) -> Iterator[Example]:
        """Examples mixed by token share (see the module doc), utterances drawn uniformly from a list."""
        return self.examples_from(lambda: records[int(rng.integers(len(records)))], rng, lambda: progress)

    def examples_from(self, next_record: Callable[[], SampleRecord | None], rng: np.random.Generator,
                      progress: Callable[[], float]) -> Iterator[Example]:
        """Examples mixed by token share; `next_record()` gives the next utterance (None: there
        are no more, and the stream ends). Text examples from a text corpus consume none.
        A fine-tuning task makes one task example of every utterance instead."""
        if self.config.task != "pretrain":
            while (record := next_record()) is not None:
                yield self.task_example(record, rng, progress())
            return
        tokens_so_far = np.zeros(len(KINDS))
        while True:
            kind = self.next_kind(tokens_so_far)
            from_corpus = kind == 1 and self.texts is not None
            record = None if from_corpus else next_record()
            if record is None and not from_corpus:
                return
            example = self.sample_example(kind, record, rng, progress())
            tokens_so_far[KINDS.index(example.kind)] += len(example.tokens)
            yield example


def pack(examples: Iterator[Example], positions: int, flat: bool) -> Example:
    """Concatenate examples into exactly `positions` global positions (flat: every token is a
    position), cutting the last example at a patch (flat: token) boundary.

    The result always carries the LST patching of its tokens (a patch cut by a flat packing
    is shortened), so the same packed data can be costed for both models;
    `Batch.from_examples(..., flat=True)` makes every token its own position.
    """
    tokens: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    documents: list[int] = []
    masked = False
    used = 0
    for example in examples:
        if flat:
            n_tokens = min(len(example.tokens), positions - used)
            used += n_tokens
            ex_lengths = example.patch_lengths[np.cumsum(example.patch_lengths) - example.patch_lengths < n_tokens].copy()
            ex_lengths[-1] -= int(ex_lengths.sum()) - n_tokens
        else:
            ex_lengths = example.patch_lengths[: positions - used]
            n_tokens = int(ex_lengths.sum())
            used += len(ex_lengths)
        tokens.append(example.tokens[:n_tokens])
        lengths.append(ex_lengths)
        masks.append(example.targets()[:n_tokens])
        masked |= example.target_mask is not None
        documents.append(n_tokens)
        if used == positions:
            break
    return Example(np.concatenate(tokens), np.concatenate(lengths), "packed", np.array(documents, dtype=np.int64),
                   np.concatenate(masks) if masked else None)


def training_sequences(
    builder: SequenceBuilder,
    records: Sequence[SampleRecord],
    *,
    seed: int,
    step: int,
    rows: Sequence[int],
    positions: int,
    flat: bool,
    progress: float,
) -> list[Example]:
    """Packed sequences `rows` of one training step: a function of (seed, step, row), so
    a resumed run sees exactly the data an uninterrupted one would, and processes or
    accumulation micro-steps can each build just their rows. Each row has its own example
    stream, so the LST and the baseline start every row with the same examples (the
    baseline, with more positions per example, reaches fewer of them). The one exception: a
    text corpus given to `builder` is a stream, whose documents the rows take in the order
    they are built (its position is part of the training state)."""
    return [
        pack(builder.example_stream(records, np.random.default_rng([seed, step, row]), progress), positions, flat)
        for row in rows
    ]
