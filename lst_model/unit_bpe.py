"""The unit BPE of the BPE SpeechLLM baseline (`model.kind: bpe_speechllm`).

A sentencepiece BPE over speech-unit sequences merges frequent runs of units into pieces;
each piece is one token and one global position of a flat transformer, text stays text BPE
tokens. It compresses speech like the LST's patches, with a fixed vocabulary instead of a
patch encoder.

The pieces themselves (training, encoding, decoding) are lst_model.unit_pieces.

Merging (`merge_example`): every contiguous run of unit ids of an example is encoded on its
own, so a piece never spans a segment boundary (a marker or text between two speech
segments), a document boundary of a packed row or a change of the target mask; a piece is a
loss target when its units are (they all agree). Training merges each example before packing,
so a row holds `data.seq_positions` pieces and other tokens, as many positions as the other
kinds' rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lst_data.core.errors import ConfigError
from lst_data.format.records import SampleRecord
from lst_model.config import DataConfig, RunSpec
from lst_model.errors import OptionError
from lst_model.sequences import Example, SequenceBuilder
from lst_model.tokens import TokenSpace
from lst_model.unit_pieces import KIND, UNIT_BPE_FILE, UnitBPE, train_unit_bpe

log = logging.getLogger(__name__)



def merge_example(example: Example, space: TokenSpace) -> Example:
    """`example` with every run of units re-encoded into pieces of `space.unit_bpe` (see the
    module doc): one global position per token, documents and target mask carried over."""
    if space.unit_bpe is None:
        raise ValueError("merging speech into pieces needs a token space with a unit BPE")
    tokens, targets = example.tokens, example.targets()
    lengths = np.array([len(tokens)]) if example.document_lengths is None else example.document_lengths
    documents = np.repeat(np.arange(len(lengths)), lengths)
    unit = (tokens >= space.unit_offset) & (tokens < space.piece_offset)
    changes = (unit[1:] != unit[:-1]) | (documents[1:] != documents[:-1]) | (targets[1:] != targets[:-1])
    bounds = [0, *(np.flatnonzero(changes) + 1).tolist(), len(tokens)]
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        run = tokens[start:stop]
        parts.append(space.unit_bpe.encode(run - space.unit_offset) + space.piece_offset if unit[start] else run)
    merged = np.concatenate(parts)
    runs = np.array([len(part) for part in parts])
    run_starts = np.array(bounds[:-1])
    merged_documents = np.repeat(documents[run_starts], runs)
    return Example(
        merged.astype(np.int64), np.ones(len(merged), dtype=np.int64), example.kind,
        None if example.document_lengths is None else np.bincount(merged_documents, minlength=len(lengths)),
        None if example.target_mask is None else np.repeat(targets[run_starts], runs))


def merged_choice_example(example: Example, first: int, space: TokenSpace) -> tuple[Example, int]:
    """A scored sequence whose ending starts at token `first`, merged: prompt and ending are
    encoded apart (no piece spans the cut, so the ending's pieces score it alone); the index
    of the ending's first token."""
    scored = merge_example(dataclasses.replace(example, target_mask=np.arange(len(example.tokens)) >= first), space)
    return dataclasses.replace(scored, target_mask=None), int(np.argmax(scored.targets()))


class PieceSequenceBuilder(SequenceBuilder):
    """A `SequenceBuilder` whose example streams hold merged examples: the same examples, drawn
    in the same order, as the other model kinds read, with their speech in pieces."""

    def __init__(self, space: TokenSpace, config: DataConfig, texts: Sequence[np.ndarray] | Iterator[np.ndarray] | None = None):
        if space.unit_bpe is None:
            raise ValueError("a PieceSequenceBuilder needs a token space with a unit BPE")
        super().__init__(space, config, texts)

    def examples_from(self, next_record: Callable[[], SampleRecord | None], rng: np.random.Generator,
                      progress: Callable[[], float]) -> Iterator[Example]:
        return (merge_example(example, self.space) for example in super().examples_from(next_record, rng, progress))


def sequence_builder(space: TokenSpace, config: DataConfig, texts: Sequence[np.ndarray] | Iterator[np.ndarray] | None = None) -> SequenceBuilder:
    """The training example builder of a model of this token space: merging with a unit BPE."""
    return SequenceBuilder(space, config, texts) if space.unit_bpe is None else PieceSequenceBuilder(space, config, texts)


# ---------------------------------------------------------------------------------------------
# A run's unit BPE


def training_unit_sequences(records: Sequence[SampleRecord] | None, shard_dir: str | Path | None,
                            heldout_fraction: float) -> Iterator[np.ndarray]:
    """The units of the training utterances: `records` (already without the held-out ones), or
    one pass over the shards without the held-out transcripts (streamed input)."""
    if records is not None:
        return (np.asarray(r.units, dtype=np.int64) for r in records)
    if shard_dir is None:
        raise ValueError("the unit BPE needs the training records or the shards")
    from lst_data.format.reader import iter_records
    from lst_model.data import is_heldout

    return (np.asarray(r.units, dtype=np.int64) for r in iter_records(shard_dir, with_audio=False)
            if not is_heldout(r, heldout_fraction))


def run_token_space(spec: RunSpec, space: TokenSpace, out_dir: Path, *, records: Sequence[SampleRecord] | None,
                    shard_dir: str | Path | None, init: tuple[str | Path, TokenSpace] | None, resuming: bool,
                    write: bool) -> TokenSpace:
    """The token space a run's model reads: the shards' `space`, and for bpe_speechllm its unit
    BPE's pieces. The BPE is the --init checkpoint's (`init`: its path and token space; a
    fine-tuned model keeps its pieces), else the one in the run folder when `resuming`, else
    trained on the training utterances; `write`: save it in the run folder (rank 0)."""
    if spec.model.kind != KIND:
        return space
    saved = out_dir / UNIT_BPE_FILE
    if init is not None:
        init_path, init_space = init
        unit_bpe = init_space.unit_bpe
        if unit_bpe is None:
            raise ConfigError(f"--init {init_path}: not a {KIND} checkpoint (it has no unit BPE)")
    elif resuming and saved.exists():
        unit_bpe = UnitBPE(saved.read_bytes())  # resuming: the checkpoint's own is compared with it
    else:
        unit_bpe = train_unit_bpe(training_unit_sequences(records, shard_dir, spec.data.heldout_fraction), space.n_units,
                                  spec.model.unit_bpe_vocab)
        log.info("unit BPE: %d pieces (sha256 %s)", unit_bpe.n_pieces, unit_bpe.sha256[:12])
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        saved.write_bytes(unit_bpe.model)
    return space.with_unit_bpe(unit_bpe)


def refuse_generation(spec: RunSpec) -> None:
    """Generation (and ASR/TTS through it) decodes unit by unit; a bpe_speechllm model emits
    pieces, which that decoding does not place: a one-line error."""
    if spec.model.kind == KIND:
        raise OptionError(f"model.kind {KIND}: generation, asr and tts are not supported for this model kind "
                          "(it emits unit-BPE pieces); use score or compare")
