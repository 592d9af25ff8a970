"""Stages: named batch transforms with declared inputs, outputs, resources and hooks.

A stage (NeMo Curator's shape) declares its name, the resources one worker needs, the
input columns it reads, the table it writes and that table's Arrow schema. It loads its
model once per worker in `setup` and then maps batches of rows to result rows plus
rejects. Stage-wide work happens on the driver in two optional hooks: `prepare` before any
batch (train the codebook, the tokenizer, the MFA model) and `finalize` after the last one
(the OOV report), which sees only the small per-partition `summarize` results, never the rows. Nothing in a stage knows about Ray: `lst_data.core.runner` is the only
code that does, so every stage's core is testable as a plain function over a list of dicts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from lst_data.core.rejects import Reject

if TYPE_CHECKING:
    from lst_data.core.config import RayConfig
    from lst_data.core.runner import TableParts
    from lst_data.core.storage import StoragePath


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks the scheduler for."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class StageResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


class Stage(ABC):
    """A named batch transform with declared inputs, output table, resources and hooks."""

    name: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...]]
    output_schema: ClassVar[pa.Schema]
    # The table the runner writes: OUT/<table>.parquet (manifest, alignments, units, tokens).
    table: ClassVar[str]
    # The run-config section this stage's output depends on (hashed into its provenance).
    config_section: ClassVar[str]
    resources: Resources = Resources()
    # Set by `prepare` when it fitted a model anew on the whole input (not kept from an earlier run).
    refitted: str | None = None

    def prepare(self, inputs: TableParts, out_dir: StoragePath, ray: RayConfig) -> list[Reject]:
        """Stage-wide work on the driver before any batch (e.g. train a model into out_dir).

        `inputs` is read one partition at a time, so the driver holds one partition (or a
        bounded sample) at most. Returns rejects found on the way (utterances that could not
        contribute).
        """
        return []

    def fitted(self) -> dict[str, Any]:
        """Hashes of what `prepare` fitted or loaded (a codebook, a BPE): every partition's output
        depends on them, so a partition is redone when they change."""
        return {}

    def open_partition(self, part: str) -> None:  # noqa: B027  (optional hook)
        """Called in the worker before the batches of one partition (e.g. clear its scratch files)."""

    def setup(self) -> None:  # noqa: B027  (optional hook)
        """Load models once per worker. Called before the first batch."""

    @abstractmethod
    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        """Map input rows to output rows and rejects. Raise only for bugs and infrastructure faults."""

    def teardown(self) -> None:  # noqa: B027  (optional hook)
        """Release what `setup` holds (a subprocess, temporary files). Called after the last
        batch of a worker; on Ray, also when an actor ends."""

    def summarize(self, output: pa.Table) -> dict[str, Any]:
        """A small JSON summary of one partition's output, made in the worker (counts, histograms)."""
        return {}

    def finalize(self, summaries: list[dict[str, Any]], out_dir: StoragePath) -> dict[str, Any]:
        """Stage-wide work on the driver after the last batch, from the partitions' summaries;
        returns figures for the report."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """What this stage's output was made with (models, hashes), for `<stage>.json`."""
        return {}

    def reject(self, utterance_id: str, code: str, detail: str) -> Reject:
        return Reject(id=utterance_id, stage=self.name, code=code, detail=detail)
