"""Stages and the one adapter that runs them, on Ray Data or in this process.

A stage (NeMo Curator's shape) declares its name, the resources one worker needs, the
input columns it reads and the Arrow schema of the rows it writes. It loads its model
once per worker in `setup` and then maps batches of rows to result rows plus rejects.
Nothing in a stage knows about Ray: `run_stage` is the only place that does, so every
stage's core is testable as a plain function over a list of dicts.

Across the Ray boundary a batch travels as one Arrow table: the stage's output columns
plus three `_reject_*` columns; a row with `_reject_code` set is a reject. The driver
splits them again, so rejects ride the same stream as results and never vanish.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lst_data.config import RayConfig
from lst_data.progress import progress_bar
from lst_data.rejects import Reject

log = logging.getLogger(__name__)

_REJECT_FIELDS = [
    pa.field("_reject_stage", pa.string()),
    pa.field("_reject_code", pa.string()),
    pa.field("_reject_detail", pa.string()),
]


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
    """A named batch transform with declared inputs, outputs and resources."""

    name: ClassVar[str]
    input_columns: ClassVar[tuple[str, ...]]
    output_schema: ClassVar[pa.Schema]
    resources: Resources = Resources()

    def setup(self) -> None:  # noqa: B027  (optional hook)
        """Load models once per worker. Called before the first batch."""

    @abstractmethod
    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        """Map input rows to output rows and rejects. Raise only for bugs and infrastructure faults."""

    def reject(self, utterance_id: str, code: str, detail: str) -> Reject:
        return Reject(id=utterance_id, stage=self.name, code=code, detail=detail)


def _wire_schema(stage: Stage) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in stage.output_schema] + _REJECT_FIELDS)


def encode_result(stage: Stage, result: StageResult) -> pa.Table:
    """Results and rejects of one batch as one Arrow table (the wire format)."""
    rows = [dict(r, _reject_stage=None, _reject_code=None, _reject_detail=None) for r in result.rows]
    rows += [
        {"id": r.id, "_reject_stage": r.stage, "_reject_code": r.code, "_reject_detail": r.detail}
        for r in result.rejects
    ]
    return pa.Table.from_pylist(rows, schema=_wire_schema(stage))


def decode_result(stage: Stage, table: pa.Table) -> tuple[pa.Table, list[Reject]]:
    is_reject = pc.is_valid(table["_reject_code"])
    rejected = table.filter(is_reject).select(["id", *[f.name for f in _REJECT_FIELDS]]).to_pylist()
    ok = table.filter(pc.invert(is_reject)).drop_columns([f.name for f in _REJECT_FIELDS])
    rejects = [Reject(r["id"], r["_reject_stage"], r["_reject_code"], r["_reject_detail"]) for r in rejected]
    return ok.cast(stage.output_schema), rejects


class _StageWorker:
    """Ray Data callable class: one stage instance (and its model) per actor."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return encode_result(self.stage, self.stage.process_batch(batch.to_pylist()))


def _check_inputs(stage: Stage, table: pa.Table) -> None:
    missing = [c for c in stage.input_columns if c not in table.column_names]
    if missing:
        raise ValueError(f"stage {stage.name!r} needs columns {missing}; input has {table.column_names}")


def iter_stage(stage: Stage, table: pa.Table, ray_config: RayConfig) -> Iterator[tuple[pa.Table, list[Reject], int]]:
    """Run `stage` over `table`; yield (ok rows, rejects, input rows consumed) per batch, in input order."""
    _check_inputs(stage, table)
    if ray_config.runner == "local":
        stage.setup()
        for batch in table.to_batches(max_chunksize=ray_config.batch_size):
            result = stage.process_batch(batch.to_pylist())
            ok, rejects = decode_result(stage, encode_result(stage, result))
            yield ok, rejects, batch.num_rows
        return
    if ray_config.runner != "ray":
        raise ValueError(f"unknown runner {ray_config.runner!r} (use 'ray' or 'local')")
    from lst_data.ray_env import ensure_ray, stage_pool_size

    ray_data = ensure_ray(ray_config)
    # Blocks are cut here, in the driver: a repartition would need CPU tasks that the
    # actor pool may already hold (two 1-CPU actors on a 2-core machine deadlock).
    blocks = [table.slice(i, ray_config.batch_size) for i in range(0, table.num_rows, ray_config.batch_size)]
    ds = ray_data.from_arrow(blocks or [table])
    mapped = ds.map_batches(
        _StageWorker,
        fn_constructor_args=(stage,),
        batch_size=ray_config.batch_size,
        batch_format="pyarrow",
        compute=ray_data.ActorPoolStrategy(size=stage_pool_size(stage, ray_config)),
        num_cpus=stage.resources.cpus * ray_config.cpus_per_worker,
        num_gpus=stage.resources.gpus,
    )
    for wire in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
        ok, rejects = decode_result(stage, wire)
        yield ok, rejects, wire.num_rows


@dataclass
class StageReport:
    stage: str
    rows_in: int
    rows_out: int
    rejects: list[Reject]
    seconds: float

    @property
    def rejected(self) -> int:
        return len(self.rejects)


def run_stage_to_parquet(
    stage: Stage, table: pa.Table, out_path: str | Path, ray_config: RayConfig, *, show_progress: bool = True
) -> StageReport:
    """Stream `stage` over `table` into one Parquet file; return counts and rejects."""
    started = time.perf_counter()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    rejects: list[Reject] = []
    rows_out = 0
    with (
        pq.ParquetWriter(tmp, stage.output_schema) as writer,
        progress_bar(total=table.num_rows, desc=stage.name, unit="utt", disable=not show_progress) as bar,
    ):
        for ok, batch_rejects, consumed in iter_stage(stage, table, ray_config):
            if ok.num_rows:
                writer.write_table(ok)
            rows_out += ok.num_rows
            rejects.extend(batch_rejects)
            bar.update(consumed)
            bar.set_postfix(rejects=len(rejects))
    tmp.replace(out_path)
    return StageReport(stage.name, table.num_rows, rows_out, rejects, time.perf_counter() - started)
