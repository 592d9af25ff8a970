"""The one job runner: a stage over a table, on Ray or in this process, into a folder.

`run_stage(stage, table, out_dir, config)` always writes the same four files:

    OUT/<table>.parquet   the stage's rows (stage.output_schema)
    OUT/rejects.parquet   every reject of the stage (and those handed in by its reader)
    OUT/<stage>.json      provenance: toolkit version, config section and hash, counts,
                          what the stage reports about its models, figures
    OUT/done.json         written last: the fingerprint of the inputs (their hash and, by
                          component, what they were), figures, counts

Across the Ray boundary a batch travels as one Arrow table: the stage's output columns
plus three `_reject_*` columns; a row with `_reject_code` set is a reject. The driver
splits them again, so rejects ride the same stream as results and never vanish.

A stage over one table (the standalone stage commands) runs as a Ray Dataset's batches;
`map_items` (a build's partitions and shards) runs plain Ray tasks, so that what the driver
holds does not grow with the number of partitions.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lst_data import __version__
from lst_data.core.config import RayConfig, canonical_hash, to_dict
from lst_data.core.paths import inside
from lst_data.core.progress import progress_bar
from lst_data.core.rejects import Reject, merge_rejects, sorted_rejects_table, write_rejects
from lst_data.core.stage import Resources, Stage, StageResult
from lst_data.core.storage import StoragePath, location, parquet_file, read_parquet

if TYPE_CHECKING:
    from lst_data.config import RunConfig

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.parquet"
DONE_FILE = "done.json"

_REJECT_FIELDS = [
    pa.field("_reject_stage", pa.string()),
    pa.field("_reject_code", pa.string()),
    pa.field("_reject_detail", pa.string()),
]


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


_Target = TypeVar("_Target", bound="Stage | PartitionWorker")


@dataclass
class _BatchRunner(Generic[_Target]):
    """What a Ray task does with its input (a stage's batch, a partition's task): set `target`
    (a stage or a PartitionWorker) up once per worker process, then `run` per input."""

    target: _Target

    def setup(self) -> None:
        self.target.setup()

    def teardown(self) -> None:
        self.target.teardown()

    def run(self, batch: Any) -> Any:
        raise NotImplementedError


class _StageBatches(_BatchRunner[Stage]):
    """Rows of a stage's input -> the stage's wire table (results and rejects)."""

    def run(self, batch: pa.Table) -> pa.Table:
        assert isinstance(self.target, Stage)
        return encode_result(self.target, self.target.process_batch(batch.to_pylist()))


# The runner of the step this Ray worker process ran last, set up. Ray reuses its worker
# processes for later tasks, so a step's model is loaded once per process, and no process is
# started per step (an actor pool would start its processes, and import torch, for every step).
_READY: dict[str, _BatchRunner[Any]] = {}


def _run_cached(batch: Any, runner: _BatchRunner[Any], step_key: str) -> Any:
    ready = _READY.get(step_key)
    if ready is None:
        for earlier in _READY.values():
            earlier.teardown()
        _READY.clear()
        runner.setup()
        _READY[step_key] = ready = runner
    return ready.run(batch)


def _map_on_ray(blocks: list[pa.Table], runner: _BatchRunner[Any], resources: Resources, ray_config: RayConfig,
                batch_size: int) -> Iterator[pa.Table]:
    """`runner` over `blocks` as Ray tasks (a lost task is retried on another node); outputs in block order."""
    from lst_data.core.ray_env import ensure_ray, stage_pool_size

    ray_data = ensure_ray(ray_config)
    mapped = ray_data.from_arrow(blocks).map_batches(
        _run_cached, fn_kwargs={"runner": runner, "step_key": uuid.uuid4().hex}, batch_size=batch_size,
        batch_format="pyarrow", concurrency=min(stage_pool_size(resources, ray_config), len(blocks)),
        num_cpus=resources.cpus * ray_config.cpus_per_worker, num_gpus=resources.gpus,
    )
    yield from mapped.iter_batches(batch_size=None, batch_format="pyarrow")


def _check_inputs(stage: Stage, table: pa.Table) -> None:
    missing = [c for c in stage.input_columns if c not in table.column_names]
    if missing:
        raise ValueError(f"stage {stage.name!r} needs columns {missing}; input has {table.column_names}")


def iter_stage(stage: Stage, table: pa.Table, ray_config: RayConfig) -> Iterator[tuple[pa.Table, list[Reject], int]]:
    """Run `stage` over `table`; yield (ok rows, rejects, input rows consumed) per batch, in input order."""
    _check_inputs(stage, table)
    if ray_config.runner == "local":
        stage.setup()
        try:
            for batch in table.to_batches(max_chunksize=ray_config.batch_size):
                result = stage.process_batch(batch.to_pylist())
                ok, rejects = decode_result(stage, encode_result(stage, result))
                yield ok, rejects, batch.num_rows
        finally:
            stage.teardown()
        return
    # Blocks are cut here, in the driver: a repartition would need CPU tasks that the
    # workers may already hold (two 1-CPU workers on a 2-core machine deadlock).
    blocks = [table.slice(i, ray_config.batch_size) for i in range(0, table.num_rows, ray_config.batch_size)]
    for wire in _map_on_ray(blocks or [table], _StageBatches(stage), stage.resources, ray_config, ray_config.batch_size):
        ok, rejects = decode_result(stage, wire)
        yield ok, rejects, wire.num_rows


class TableParts:
    """A stage's input: one table in partitions, read one at a time.

    `fingerprint` names the content of all partitions together: a stage that fits a model
    on its whole input (a codebook, a BPE) keys the fitted file on it. A standalone stage
    command hands its one in-memory table as a single partition.
    """

    def __init__(self, sources: list[StoragePath | pa.Table], fingerprint: str | None = None) -> None:
        self.sources = sources
        self.fingerprint = fingerprint

    @classmethod
    def of_table(cls, table: pa.Table) -> TableParts:
        return cls([table])

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows if isinstance(s, pa.Table) else parquet_file(s).metadata.num_rows for s in self.sources)

    def iter_columns(self, columns: Iterable[str] | None) -> Iterator[pa.Table]:
        for source in self.sources:
            if isinstance(source, pa.Table):
                yield source if columns is None else source.select(list(columns))
            else:
                yield read_parquet(source, columns=None if columns is None else list(columns))

    def read(self, columns: Iterable[str] | None = None) -> pa.Table:
        """All partitions as one table: only for fits that need every row at once (MFA training)."""
        cols = None if columns is None else list(columns)
        return pa.concat_tables(list(self.iter_columns(cols)))


class PartitionWorker:
    """What a worker does with one task of `map_items`: `setup` once, then one call per task."""

    def setup(self) -> None:  # noqa: B027  (optional hook)
        """Load what every task needs (a model), once per worker process."""

    def teardown(self) -> None:  # noqa: B027  (optional hook)
        """Release what `setup` holds."""

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class _PartitionTask(_BatchRunner[PartitionWorker]):
    """A task dict -> the PartitionWorker's result dict."""

    def run(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.target(batch)


TASK_NAME_PREFIX = "lst-data:"  # Ray task names: lst-data:<worker class>, as the dashboard lists them


def _tasks_on_ray(tasks: list[dict[str, Any]], runner: _BatchRunner[Any], resources: Resources,
                  ray_config: RayConfig) -> Iterator[dict[str, Any]]:
    """`runner` over `tasks` as Ray tasks, results in task order.

    Plain tasks, not a Ray Dataset: the driver keeps the pool's worth of tasks running (a new one
    starts as soon as any finishes) and holds only the references not yet read, each freed once its
    result is read, so its memory does not grow with the number of partitions. Ray retries a task
    whose worker or node is lost.
    """
    import ray

    from lst_data.core.ray_env import ensure_ray, stage_pool_size

    ensure_ray(ray_config)
    remote = ray.remote(_run_cached).options(name=f"{TASK_NAME_PREFIX}{type(runner.target).__name__}",
                                           num_cpus=resources.cpus * ray_config.cpus_per_worker,
                                           num_gpus=resources.gpus)
    runner_ref, step_key = ray.put(runner), uuid.uuid4().hex
    queued = iter(tasks)
    unread: collections.deque[Any] = collections.deque()  # in task order
    running: list[Any] = []

    def start(count: int) -> None:
        for task in itertools.islice(queued, count):
            ref = remote.remote(task, runner_ref, step_key)
            unread.append(ref)
            running.append(ref)

    start(stage_pool_size(resources, ray_config))
    while unread:
        finished, _ = ray.wait(running, num_returns=1)
        running.remove(finished[0])
        start(1)
        while unread and (unread[0] not in running):
            yield ray.get(unread.popleft())


def map_items(worker: PartitionWorker, tasks: list[dict[str, Any]], ray_config: RayConfig, *, resources: Resources,
              desc: str, unit: str = "part", show_progress: bool = True) -> Iterator[dict[str, Any]]:
    """Run `worker` over `tasks` (JSON-able dicts) on Ray tasks or in this process; results in task order.

    Each task names files the worker reads and writes itself: only the small task and result
    dicts pass through the driver. On Ray, a task lost with its node is retried elsewhere.
    """
    with progress_bar(total=len(tasks), desc=desc, unit=unit, disable=not show_progress) as bar:
        if not tasks:
            return
        if ray_config.runner == "local":
            worker.setup()
            try:
                for task in tasks:
                    yield worker(task)
                    bar.update(1)
            finally:
                worker.teardown()
            return
        # What the driver read to plan this step (manifest parts, counts) is freed by now, but Arrow's
        # default pool (mimalloc) keeps the pages on its threads' heaps: given back here, the
        # driver's private memory does not grow with the partitions it planned over.
        pa.default_memory_pool().release_unused()
        for result in _tasks_on_ray(tasks, _PartitionTask(worker), resources, ray_config):
            yield result
            bar.update(1)


@dataclass
class StagePartitions(PartitionWorker):
    """Runs a stage over whole partitions: reads the input file, writes the output and rejects files,
    then the partition's marker (last, so a marker always means a whole partition)."""

    stage: Stage
    batch_size: int
    ready: bool = False

    def teardown(self) -> None:
        if self.ready:
            self.stage.teardown()
            self.ready = False

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        from lst_data.core.partitions import marker_path, part_file, write_json_atomic, write_part

        stage, out_dir, part = self.stage, location(task["out_dir"]), task["part"]
        table = read_parquet(location(task["input"]))
        _check_inputs(stage, table)
        if table.num_rows and not self.ready:  # no model is loaded for empty partitions (or corpora)
            stage.setup()
            self.ready = True
        stage.open_partition(part)
        outputs, rejects = [], []
        for batch in table.to_batches(max_chunksize=self.batch_size):
            ok, batch_rejects = decode_result(stage, encode_result(stage, stage.process_batch(batch.to_pylist())))
            outputs.append(ok)
            rejects += batch_rejects
        output = pa.concat_tables(outputs) if outputs else stage.output_schema.empty_table()
        write_part(output, part_file(out_dir, stage.table, part))
        rejects = merge_rejects(rejects)
        write_part(sorted_rejects_table(rejects), part_file(out_dir, "rejects", part))
        marker = {"hash": task["hash"], "inputs": task["inputs"], "rows_in": table.num_rows,
                  "rows_out": output.num_rows, "rejects": len(rejects), "summary": stage.summarize(output)}
        write_json_atomic(marker_path(out_dir, part), marker)
        return marker


@dataclass
class StageReport:
    """What one stage run did: counts, rejects, wall time and the stage's own figures."""

    stage: str
    out_dir: StoragePath
    rows_in: int
    rows_out: int
    rejects: list[Reject]
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None  # OUT/<table>.parquet of a row-transform stage

    def read_output(self) -> pa.Table:
        if self.output is None:
            raise ValueError(f"stage {self.stage!r} writes no table")
        return pq.read_table(self.output)

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def summary_rows(self) -> list[tuple[str, str]]:
        """(what, value) lines for the end-of-command summary."""
        rows = [("input rows", str(self.rows_in)), ("output rows", str(self.rows_out)),
                ("rejected", str(self.rejected))]
        rows += [(name.replace("_", " "), f"{value:.4g}" if isinstance(value, float) else str(value))
                 for name, value in self.figures.items()]
        rows.append(("wall time", f"{self.seconds:.1f} s"))
        return rows


def stream_to_parquet(
    stage: Stage, table: pa.Table, out_path: Path, ray_config: RayConfig, *, show_progress: bool = True,
) -> tuple[int, list[Reject]]:
    """Stream `stage` over `table` into one Parquet file (written under a temporary name)."""
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    rejects: list[Reject] = []
    rows_out = 0
    with (
        pq.ParquetWriter(tmp, stage.output_schema) as writer,
        progress_bar(total=table.num_rows, desc=stage.name, unit="utt", disable=not show_progress) as bar,
    ):
        if table.num_rows:
            for ok, batch_rejects, consumed in iter_stage(stage, table, ray_config):
                if ok.num_rows:
                    writer.write_table(ok)
                rows_out += ok.num_rows
                rejects.extend(batch_rejects)
                bar.update(consumed)
                bar.set_postfix(rejects=len(rejects))
    tmp.replace(out_path)
    return rows_out, rejects


def read_manifest(path: str | Path, out_dir: str | Path | None = None) -> pa.Table:
    """manifest.parquet (or the folder holding it): the input of every stage after ingest.

    `out_dir`, the reading stage's output folder, must not be the manifest's own: the stage
    would overwrite ingest's rejects.parquet and done.json there.
    """
    from lst_data.core.errors import InputError
    from lst_data.core.tables import MANIFEST_SCHEMA

    path = Path(path)
    if path.is_dir() and path.name != "manifest.parquet":
        path = path / "manifest.parquet"
    # `lst-data ingest` writes one file; a build's RUN/ingest holds a folder of partitions, which
    # pyarrow reads as one table, partitions in name order.
    if not (path.is_file() or (path.is_dir() and any(path.glob("*.parquet")))):
        raise InputError(f"no manifest at {path} (run `lst-data ingest` first)")
    if out_dir is not None and Path(out_dir).resolve() == path.parent.resolve():
        raise InputError(f"--out: {out_dir} holds the manifest; write this stage's output to a folder of its own")
    return pq.read_table(path, schema=MANIFEST_SCHEMA)


def write_json(path: StoragePath, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish_stage(
    name: str,
    out_dir: StoragePath,
    *,
    rows_in: int,
    rows_out: int,
    rejects: Iterable[Reject],
    started: float,
    config: RunConfig,
    config_section: str,
    provenance: dict[str, Any],
    figures: dict[str, Any],
    fingerprint: dict[str, Any] | None,
    rejects_written: bool = False,
) -> StageReport:
    """Write rejects.parquet (unless the partitions `rejects_written` it), <name>.json and, last,
    done.json; return the report.

    Shared by `run_stage`, the partitioned steps of a build and the shard writer.
    """
    rejects = merge_rejects(rejects)
    if not rejects_written:
        write_rejects(rejects, out_dir / REJECTS_FILE)
    seconds = time.perf_counter() - started
    counts = {"input": rows_in, "output": rows_out, "rejects": len(rejects)}
    write_json(out_dir / f"{name}.json", {
        "stage": name,
        "toolkit_version": __version__,
        "config": to_dict(getattr(config, config_section)),
        "config_hash": config.section_hash(config_section),
        "counts": counts,
        "figures": figures,
        **provenance,
    })
    write_json(out_dir / DONE_FILE, {
        "hash": None if fingerprint is None else canonical_hash(fingerprint), "inputs": fingerprint,
        "seconds": seconds, "figures": figures, "rejects": len(rejects),
    })
    return StageReport(name, out_dir, rows_in, rows_out, rejects, seconds, figures)


def run_stage(
    stage: Stage,
    table: pa.Table,
    out_dir: str | Path,
    config: RunConfig,
    *,
    prior_rejects: Iterable[Reject] = (),
    fingerprint: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> StageReport:
    """prepare -> batches (Ray or local) -> finalize; writes the four files of the module docstring.

    `prior_rejects` are rejects of this stage found before its batches ran (a corpus
    reader's); `fingerprint` identifies the inputs for resume (stored in done.json).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DONE_FILE).unlink(missing_ok=True)
    rejects = list(prior_rejects)
    rows_in = table.num_rows + len(rejects)  # what the stage was handed, its reader's rejects included
    rejects += stage.prepare(TableParts.of_table(table), out_dir, config.ray) if table.num_rows else []
    out_path = inside(out_dir, f"{stage.table}.parquet")
    rows_out, batch_rejects = stream_to_parquet(stage, table, out_path, config.ray, show_progress=show_progress)
    output = pq.read_table(out_path, schema=stage.output_schema)
    figures = stage.finalize([stage.summarize(output)], out_dir)
    report = finish_stage(
        stage.name, out_dir, rows_in=rows_in, rows_out=rows_out, rejects=[*batch_rejects, *rejects],
        started=started, config=config, config_section=stage.config_section, provenance=stage.provenance(),
        figures=figures, fingerprint=fingerprint,
    )
    report.output = out_path
    return report
