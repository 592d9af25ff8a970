"""Streaming training input: sequences built and packed inside DataLoader workers.

Each worker runs the shard reader's webdataset pipeline (`lst_data.format.loader.shard_pipeline`:
shards split by rank and by worker, a seeded shuffle buffer, 'epoch' = every sample once
per epoch, 'resampled' = shards drawn with replacement), drops held-out utterances (by
transcript, `lst_model.data.is_heldout`), turns the rest into examples mixed by token share (`SequenceBuilder.examples_from`: each
utterance is used once; text examples come from the worker's `TextReader` of the text corpus),
packs them into rows and collates micro-batches. Only token tensors (and the micro-batch's cost under both models, a
few integers) cross the process boundary; no record list is ever held, so memory does not
grow with the corpus.

Order and resume: worker w of rank r in epoch e draws from seed (seed, e, r, w); the
DataLoader takes micro-batches from its workers in turn, so the sequence of micro-batches
is a function of (seed, epoch, ranks, workers). `StreamCursor` counts the micro-batches
consumed in the epoch; a resumed run restarts the epoch and skips that many (it rebuilds
them, which costs input time but no trainer time). Curriculum progress inside a worker is
estimated from the micro-batch index it is about to produce.

The text corpus is a stream of its own, with one reader per (rank, worker) (reader
rank * workers + worker of ranks * workers: `lst_model.text_corpus`). It does not restart with
the shards' epoch: each micro-batch carries its worker's text position after it, the cursor
keeps the latest it consumed of every worker, and the next shard epoch's workers start their
text readers there. `StreamPosition.text` holds those start positions of the current epoch, so
a resumed run rebuilds the epoch's micro-batches, text included, exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lst_data.core.storage import location
from lst_model.config import RunSpec
from lst_model.data import is_heldout
from lst_model.flops import SameDataCost
from lst_model.model import FLAT_KINDS, Batch
from lst_model.sequences import pack
from lst_model.text_corpus import TextPosition, TextReader, TextStream
from lst_model.tokens import TokenSpace
from lst_model.unit_bpe import sequence_builder

READ_BATCH = 32  # records per reader batch inside a worker (the reader batches in the pipeline)


@dataclasses.dataclass
class StreamPosition:
    """Where the input stream is: epoch and micro-batches of it consumed (the data position of a checkpoint)."""

    epoch: int = 0
    batches: int = 0
    first_step_batch: int = 0  # global micro-batch index at which this epoch began (curriculum progress)
    # with a text corpus: each worker's text position (a TextPosition as a list) when this epoch
    # began; [] = every worker at the start of the text stream
    text: list[list[int]] = dataclasses.field(default_factory=list)


class PackedShardStream(IterableDataset):
    """Micro-batches of packed training rows (as tensors), built in the worker that reads the shards."""

    def __init__(self, shard_dir: str | Path, spec: RunSpec, space: TokenSpace, *, rows: int, world_size: int = 1,
                 texts: TextStream | None = None) -> None:
        self.shard_dir = location(shard_dir)
        self.spec = spec
        self.space = space
        self.rows = rows
        self.world_size = world_size
        self.texts = texts
        self.position = StreamPosition()
        if texts is not None:  # refused here, in one line, rather than inside a worker
            texts.check_readers(world_size * max(1, spec.train.loader_workers))

    def text_reader(self, rank: int, worker: int, n_workers: int) -> TextReader | None:
        """The worker's reader of the text corpus, at its position when the epoch began."""
        if self.texts is None:
            return None
        start = TextPosition(*self.position.text[worker]) if self.position.text else TextPosition()
        return self.texts.reader(rank * n_workers + worker, self.world_size * n_workers, self.spec.train.seed, start)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        import webdataset as wds

        from lst_data.format.loader import shard_pipeline

        rank, _, worker, n_workers = wds.utils.pytorch_worker_info()
        data, t = self.spec.data, self.spec.train
        # cast: shard_pipeline reads URLs too (through `location`), though its annotation names local paths only
        pipeline = shard_pipeline(cast(Path, self.shard_dir), batch_size=READ_BATCH, shuffle=True, mode=data.stream_mode,
                                  seed=t.seed, shuffle_buffer=data.shuffle_buffer, world_size=self.world_size,
                                  num_workers=max(1, n_workers), with_audio=False)
        pipeline.set_epoch(self.position.epoch)
        records = (r for batch in pipeline for r in batch if not is_heldout(r, data.heldout_fraction))
        produced = 0
        total_batches = self.spec.steps * t.grad_accum

        def progress() -> float:
            return min(1.0, (self.position.first_step_batch + produced * max(1, n_workers) + worker) / total_batches)

        texts = self.text_reader(rank, worker, max(1, n_workers))
        builder = sequence_builder(self.space, data, texts)
        rng = np.random.default_rng([t.seed, self.position.epoch, rank, worker])
        examples = builder.examples_from(lambda: next(records, None), rng, progress)
        flat = self.spec.model.kind in FLAT_KINDS
        same_data = SameDataCost.of(self.spec.model, self.space.size, self.space.pad)
        while True:
            sequences = []
            for _ in range(self.rows):
                first = next(examples, None)
                if first is None:
                    break
                sequences.append(pack(chain([first], examples), data.seq_positions, flat))
            if len(sequences) < self.rows:
                return  # the worker's part of the epoch is over (a ragged last micro-batch is dropped)
            batch = Batch.from_examples(sequences, self.space.pad, flat)
            produced += 1
            item = {"tokens": batch.tokens, "patch_index": batch.patch_index, "n_patches": batch.n_patches,
                    "document": batch.document, "cost": same_data.cost(sequences)}
            if batch.target is not None:
                item["target"] = batch.target
            if texts is not None:
                item["text_position"] = torch.tensor([worker, *texts.position])
            yield item


def batch_from_tensors(item: dict[str, torch.Tensor]) -> Batch:
    return Batch(item["tokens"], item["patch_index"], item["n_patches"], item["document"], item.get("target"))


class StreamCursor:
    """Micro-batches from DataLoader workers across epochs, with a resumable position.

    `any_exhausted(flag)` makes every rank agree that an epoch ended when one rank's part
    did (identity without DDP), so ranks stay in step."""

    def __init__(self, dataset: PackedShardStream, num_workers: int, position: StreamPosition | None = None,
                 any_exhausted: Callable[[bool], bool] = bool) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.position = position or StreamPosition()
        self.any_exhausted = any_exhausted
        self._iterator: Iterator[dict[str, torch.Tensor]] | None = None
        self._text_now: list[list[int]] = []  # each worker's text position after its last consumed micro-batch

    def _start(self) -> Iterator[dict[str, torch.Tensor]]:
        """A fresh DataLoader iterator at the current position (epoch, micro-batches consumed)."""
        skip = self.position.batches
        self.dataset.position = dataclasses.replace(self.position, batches=0)
        self._text_now = [list(p) for p in self.position.text]
        if self.dataset.texts is not None and not self._text_now:
            self._text_now = [list(TextPosition()) for _ in range(max(1, self.num_workers))]
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=4 if self.num_workers else None, persistent_workers=False)
        iterator = iter(loader)
        for _ in range(skip):  # resume mid-epoch: rebuild and drop what was already consumed
            item = next(iterator, None)
            if item is None:
                raise ValueError("the checkpoint's stream position lies beyond the end of its epoch")
            self._consumed(item)
        return iterator

    def _consumed(self, item: dict[str, torch.Tensor]) -> None:
        if "text_position" in item:
            worker, *position = item["text_position"].tolist()
            self._text_now[worker] = position

    def next(self) -> dict[str, torch.Tensor]:
        for _ in range(2):
            if self._iterator is None:
                self._iterator = self._start()
            item = next(self._iterator, None)
            exhausted = self.any_exhausted(item is None)
            if item is not None and not exhausted:
                self._consumed(item)
                self.position.batches += 1
                return item
            self.position = StreamPosition(self.position.epoch + 1, 0,
                                           self.position.first_step_batch + self.position.batches, self._text_now)
            self._iterator = None
        raise ValueError(f"an epoch of {self.dataset.shard_dir} yields no micro-batch of {self.dataset.rows} rows "
                         "for some rank; use fewer rows, ranks or workers, or stream_mode 'resampled'")

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self.position)
