"""Corpus -> shards in one job: ingest -> align -> units -> tokenize -> shard.

Run it locally (`lst-data build CORPUS --out RUN`, `make corpus`) or on a cluster
(`ray job submit ... -- python -m pipelines.build_corpus CORPUS --out RUN`). The driver only
plans: it lists the corpus into partitions that follow the shard order
(`lst_data.core.partitions`), and each step runs one task per partition in which a worker
reads its input partition, computes, and writes its output partition. The run directory:

    RUN/config.yaml          the resolved config of the run
    RUN/plan/                entries.parquet/ (the corpus listing, by partition), listing rejects
    RUN/ingest/              manifest.parquet/, rejects.parquet/, parts/, ingest.json, audio/<part>/
    RUN/align/               alignments.parquet/, rejects.parquet/, parts/, oov.parquet, align.json
    RUN/units/               codebook.npy (+ .json), units.parquet/, rejects.parquet/, parts/, units.json
    RUN/tokenize/            tokenizer.model, tokens.parquet/, rejects.parquet/, parts/, tokenize.json
    RUN/encode/              samples.parquet/: each partition's checked, encoded samples in shard order
    RUN/shards/              {split}-NNNNNN.tar + .json sidecars, index.parquet, rejects.parquet, dataset.json,
                             shard.json
    RUN/build.json           what ran, what was kept, wall time per stage, reject counts

A `<table>.parquet/` folder holds one `part-NNNNN.parquet` per partition (pyarrow reads the
folder as one table). Resume: each partition of a step has a marker (`parts/part-NNNNN.json`)
holding the hash of exactly what it was made from: its config sections, the content of the
files they name, what the upstream steps recorded for that partition, and the fitted
codebook or tokenizer. A rerun keeps every partition whose hash is unchanged, so adding an
utterance reruns the partitions it falls in (and a fit on the whole corpus, when the run
trains its codebook or tokenizer, refits and reruns everything downstream of it). The shard
writers keep every finished shard whose content is unchanged. A killed run therefore
resumes to the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from lst_data import __version__
from lst_data.config import RunConfig
from lst_data.core.cli_options import StorageLocation, config_options, load_run_config, run_cli
from lst_data.core.config import canonical_hash, to_dict
from lst_data.core.errors import InputError, UserError
from lst_data.core.fingerprint import files_fingerprint, listing_fingerprint
from lst_data.core.lock import OutputLocked, exclusive_output
from lst_data.core.partitions import (
    PartitionPlan,
    marker_path,
    part_file,
    part_is_done,
    partition_count,
    read_marker,
    remove_parts_beyond,
    route_to_partitions,
    table_path,
    write_json_atomic,
    write_part,
)
from lst_data.core.rejects import Reject, merge_rejects, read_rejects, rejects_to_table
from lst_data.core.runner import DONE_FILE, REJECTS_FILE, StagePartitions, TableParts, finish_stage, map_items
from lst_data.core.stage import Resources, Stage
from lst_data.core.storage import StoragePath, is_remote, location, remove_tree
from lst_data.format.layout import read_dataset
from lst_data.ingest.cli import layout_option
from lst_data.ingest.stage import AUDIO_FOLDER, Ignored, spill_listing

STEP_ORDER = ("ingest", "align", "units", "tokenize", "shard")
PLAN_FOLDER = "plan"
ENCODE_FOLDER = "encode"
REJECTS_TABLE = "rejects"
LISTING_REJECTS = "listing"  # the corpus reader's rejects, beside ingest's partitions in rejects.parquet/


@dataclass(frozen=True)
class Step:
    name: str
    sections: tuple[str, ...]  # config sections the output depends on
    reads: tuple[str, ...]  # steps whose outputs it reads
    folder: str  # under the run directory
    table: str  # the table it writes per partition


@dataclass
class StepOutcome:
    name: str
    skipped: bool
    seconds: float
    rejects: list[Reject]
    figures: dict[str, Any]
    reason: str  # why it was kept or run again
    parts_run: int = 0
    parts: int = 0


STEPS = {
    "ingest": Step("ingest", ("ingest",), (), "ingest", "manifest"),
    "align": Step("align", ("align",), ("ingest",), "align", "alignments"),
    "units": Step("units", ("units",), ("ingest",), "units", "units"),
    "tokenize": Step("tokenize", ("tokenizer",), ("ingest",), "tokenize", "tokens"),
    "shard": Step("shard", ("shard",), ("ingest", "align", "units", "tokenize"), "shards", "samples"),
}


@dataclass
class CorpusPlan:
    """What the driver keeps of the corpus listing: O(partitions), plus the reader's rejects."""

    partitions: PartitionPlan
    entry_hashes: list[str]  # per partition: the content of its entries (transcripts, audio size and mtime)
    rejects: list[Reject]
    ignored: list[Ignored]

    @property
    def names(self) -> list[str]:
        return self.partitions.names

    @property
    def listing_hash(self) -> str:
        return canonical_hash({"rejects": [asdict(r) for r in self.rejects], "ignored": [asdict(i) for i in self.ignored]})


def plan_corpus(corpus: StoragePath, run_dir: StoragePath, config: RunConfig) -> CorpusPlan:
    """List the corpus into partitions under RUN/plan, streaming: the driver holds one chunk of the
    listing, then one partition, at a time. Unchanged partitions are not rewritten."""
    folder = run_dir / PLAN_FOLDER
    # The driver's own spill files: beside the plan, or in the system temp dir for a run on a store.
    scratch = Path(tempfile.mkdtemp(prefix="lst-listing-")) if is_remote(run_dir) else run_dir / PLAN_FOLDER / ".listing"
    shutil.rmtree(scratch, ignore_errors=True)
    spill = scratch / "entries.parquet"
    rows, rejects, ignored = spill_listing(corpus, config.ingest, spill)
    if not rows and not rejects:
        shutil.rmtree(scratch, ignore_errors=True)
        found = f"; {len(ignored)} files ignored, e.g. {ignored[0].path} ({ignored[0].reason})" if ignored else ""
        raise InputError(f"CORPUS: nothing to build in {corpus}: no audio file with a transcript{found}")
    # Pieces of a cut long recording get new ids, and 'id' order has no hash ranges to cut:
    # both keep the whole corpus in one partition.
    single = config.shard.order != "hash" or config.ingest.long_recordings == "segment"
    count = partition_count(rows, config.ray.partition_rows, config.ray.min_partitions, single)
    plan = PartitionPlan(count, config.seed)
    hashes = []
    for part, entries in zip(plan.names, route_to_partitions(spill, plan, scratch / "routed"), strict=True):
        digest = listing_fingerprint(entries, "audio_path", {"partitions": count})
        path = part_file(folder, "entries", part)
        marker = read_marker(folder, part)
        if marker is None or marker.get("hash") != digest or not path.is_file():
            write_part(entries, path)
            write_json_atomic(marker_path(folder, part), {"hash": digest, "rows": entries.num_rows})
        hashes.append(digest)
    shutil.rmtree(scratch)
    remove_parts_beyond(folder, ["entries"], plan.names)
    return CorpusPlan(plan, hashes, rejects, ignored)


def step_base_inputs(config: RunConfig, name: str) -> dict[str, str]:
    """What a step's output depends on besides its inputs: its config sections (+ seed) and the
    content of every file those sections name."""
    names = STEPS[name].sections
    if name == "ingest" and config.ingest.long_recordings == "segment":
        names = (*names, "align")  # long recordings are aligned to be cut
    return {
        "sections": canonical_hash({"step": name, "seed": config.seed,
                                    "sections": {s: to_dict(getattr(config, s)) for s in names}}),
        "files": canonical_hash(files_fingerprint([getattr(config, s) for s in names])),
    }


@dataclass
class BuildContext:
    corpus: StoragePath
    run_dir: StoragePath
    shards: StoragePath  # RUN/shards, or a URL
    config: RunConfig
    plan: CorpusPlan
    show_progress: bool = True

    def folder(self, step: str) -> StoragePath:
        """Where a step's output lives (the shard step's: the shard folder or URL)."""
        return self.shards if step == "shard" else self.run_dir / STEPS[step].folder

    def dir(self, step: str) -> StoragePath:
        path = self.folder(step)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def recorded_hashes(self, step: str) -> list[str]:
        """What `step` recorded for each partition: the hash its markers hold (never what it is
        expected to hold), so a step downstream of a partial run sees the tables that exist."""
        folder = self.run_dir / STEPS[step].folder
        hashes = []
        for part in self.plan.names:
            marker = read_marker(folder, part)
            if marker is None or not part_file(folder, STEPS[step].table, part).is_file():
                raise UserError(f"--steps: the {step} step has no output for partition {part} in {self.run_dir}; "
                                f"run it first (e.g. --steps {step},...)")
            hashes.append(marker["hash"])
        return hashes

    def upstream(self, step: str) -> list[dict[str, str]]:
        """Per partition, the recorded hash of every step `step` reads (ingest reads the plan)."""
        if step == "ingest":
            return [{"entries": h} for h in self.plan.entry_hashes]
        recorded = {r: self.recorded_hashes(r) for r in STEPS[step].reads}
        return [{r: recorded[r][i] for r in recorded} for i in range(len(self.plan.names))]

    def tasks(self, step: str, folder: StoragePath, tables: list[str], fitted: dict[str, Any],
              task_fields: Callable[[str], dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(tasks for the partitions to run, markers of the partitions kept) of a step."""
        base = step_base_inputs(self.config, step)
        todo, kept = [], {}
        for part, reads in zip(self.plan.names, self.upstream(step), strict=True):
            inputs = {**base, "partitions": self.plan.partitions.count, "reads": reads, "fitted": fitted}
            digest = canonical_hash(inputs)
            marker = part_is_done(folder, part, digest, tables)
            if marker is not None:
                kept[part] = marker
            else:
                todo.append({"part": part, "out_dir": str(folder), "hash": digest, "inputs": inputs, **task_fields(part)})
        remove_parts_beyond(folder, tables, self.plan.names)
        # Largest partitions first (by their input's bytes): the workers then finish together.
        todo.sort(key=lambda task: -_bytes(location(task.get("input") or task["tables"]["manifest"])))
        return todo, kept


def _bytes(path: StoragePath) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _step_inputs(ctx: BuildContext, step: str) -> dict[str, Any]:
    """Everything a whole step depends on (stored in its done.json): a match keeps it unread."""
    inputs: dict[str, Any] = {**step_base_inputs(ctx.config, step), "partitions": ctx.plan.partitions.count,
                              "reads": ctx.upstream(step)}
    if step == "ingest":
        inputs["listing"] = ctx.plan.listing_hash
    return inputs


def _stage_for(step: str, ctx: BuildContext) -> Stage:
    config = ctx.config
    if step == "ingest":
        from lst_data.ingest.stage import IngestStage

        return IngestStage(config.ingest, ctx.dir("ingest") / AUDIO_FOLDER, corpus=ctx.corpus, align=config.align,
                           ignored=ctx.plan.ignored)
    if step == "align":
        from lst_data.align.stage import AlignStage

        return AlignStage(config.align)
    if step == "units":
        from lst_data.units.stage import UnitsStage

        return UnitsStage(config.units, config.seed)
    from lst_data.tokenize.stage import TokenizeStage

    return TokenizeStage(config.tokenizer, config.seed)


def _drop_older_layout(folder: StoragePath, tables: list[str]) -> None:
    """A step folder written before partitions (one file per table) is redone from scratch."""
    if any(table_path(folder, t).is_file() for t in tables):
        remove_tree(folder)
        folder.mkdir(parents=True)


def _run_stage_step(ctx: BuildContext, name: str, inputs: dict[str, Any]) -> StepOutcome:
    started = time.perf_counter()
    config, step = ctx.config, STEPS[name]
    folder = ctx.dir(name)
    stage = _stage_for(name, ctx)
    tables = [stage.table, "rejects"]
    _drop_older_layout(folder, tables)
    (folder / DONE_FILE).unlink(missing_ok=True)
    source_folder, source_table = (PLAN_FOLDER, "entries") if name == "ingest" else (STEPS["ingest"].folder, "manifest")
    sources = [part_file(ctx.run_dir / source_folder, source_table, p) for p in ctx.plan.names]
    parts = TableParts(list(sources), fingerprint=canonical_hash(inputs["reads"]))
    if parts.num_rows:
        # Whole-corpus fits (codebook, BPE) reject nothing the partitions do not reject themselves.
        stage.prepare(parts, folder, config.ray)
    todo, markers = ctx.tasks(name, folder, tables, stage.fitted(), lambda part: {
        "input": str(sources[ctx.plan.names.index(part)])})
    worker = StagePartitions(stage, config.ray.batch_size)
    for task, marker in zip(todo, map_items(worker, todo, config.ray, resources=stage.resources, desc=name,
                                             show_progress=ctx.show_progress), strict=True):
        markers[task["part"]] = marker
    ordered = [markers[p] for p in ctx.plan.names]
    listing: list[Reject] = []
    if name == "ingest":
        for stale in (folder / AUDIO_FOLDER).glob("part-*"):
            if stale.name not in ctx.plan.names:  # a plan with fewer partitions than the last
                remove_tree(stale)
        listing = ctx.plan.rejects
        (table_path(folder, "rejects")).mkdir(parents=True, exist_ok=True)
        write_part(rejects_to_table(listing), part_file(folder, "rejects", LISTING_REJECTS))
    figures = stage.finalize([m["summary"] for m in ordered], folder)
    report = finish_stage(
        name, folder, rows_in=sum(m["rows_in"] for m in ordered) + len(listing),
        rows_out=sum(m["rows_out"] for m in ordered), rejects=read_rejects(table_path(folder, REJECTS_TABLE)),
        started=started, config=config, config_section=stage.config_section, provenance=stage.provenance(),
        figures=figures, fingerprint=inputs, rejects_written=True,
    )
    return StepOutcome(name, False, report.seconds, [r for r in report.rejects if r.stage == step.name], figures,
                       f"; {stage.refitted}" if stage.refitted else "", len(todo), len(ctx.plan.names))


def _run_shard_step(ctx: BuildContext, name: str, inputs: dict[str, Any]) -> StepOutcome:
    from lst_data.format.contract import STAGE
    from lst_data.shards.build import StageOutputs, shard_provenance
    from lst_data.shards.parallel import ENCODED_TABLE, EncodePartitions, write_partitioned_shards
    from lst_data.tokenize import load_tokenizer

    started = time.perf_counter()
    config, run_dir = ctx.config, ctx.run_dir
    out = ctx.dir(name)
    (out / DONE_FILE).unlink(missing_ok=True)
    encode_dir = run_dir / ENCODE_FOLDER
    tables = [ENCODED_TABLE, "rejects"]
    earlier = STEPS[name].reads

    def task_fields(part: str) -> dict[str, Any]:
        return {
            "tables": {table: str(part_file(run_dir / STEPS[s].folder, STEPS[s].table, part))
                       for table, s in (("manifest", "ingest"), ("alignments", "align"), ("units", "units"),
                                        ("tokens", "tokenize"))},
            "earlier_rejects": [str(p) for s in earlier
                                if (p := part_file(run_dir / STEPS[s].folder, "rejects", part)).exists()],
        }

    todo, markers = ctx.tasks(name, encode_dir, tables, {}, task_fields)
    for task, marker in zip(todo, map_items(EncodePartitions(config), todo, config.ray, resources=Resources(cpus=1.0),
                                             desc="encode", show_progress=ctx.show_progress), strict=True):
        markers[task["part"]] = marker
    ordered = [markers[p] for p in ctx.plan.names]
    encoded = [part_file(encode_dir, ENCODED_TABLE, p) for p in ctx.plan.names]
    carried = merge_rejects(r for s in earlier for r in read_rejects(table_path(run_dir / STEPS[s].folder, REJECTS_TABLE)))
    outputs = StageOutputs.from_run_dir(run_dir)
    tokenizer = load_tokenizer(outputs.tokenizer) if outputs.tokenizer else None

    def run_tasks(worker: Any, tasks: list[dict[str, Any]]) -> Any:
        return map_items(worker, tasks, config.ray, resources=Resources(cpus=1.0), desc="shard", unit="shard",
                         show_progress=ctx.show_progress)

    report = write_partitioned_shards(encoded, ordered, out, config, carried_rejects=carried,
                                      tokenizer_vocab_size=tokenizer.vocab_size if tokenizer else None,
                                      run_tasks=run_tasks)
    manifest_rows = sum(m["rows_out"] for m in (read_marker(run_dir / "ingest", p) or {"rows_out": 0}
                                                for p in ctx.plan.names))
    finish_stage(
        STAGE, out, rows_in=manifest_rows, rows_out=report.samples, rejects=report.rejects, started=started,
        config=config, config_section="shard", provenance=shard_provenance(config, outputs.tokenizer, tokenizer, report),
        figures=report.figures(), fingerprint=inputs, rejects_written=True,
    )
    return StepOutcome(name, False, time.perf_counter() - started, [r for r in report.rejects if r.stage == STAGE],
                       report.figures(), "", len(todo), len(ctx.plan.names))


def _kept_outcome(ctx: BuildContext, name: str, inputs: dict[str, Any]) -> StepOutcome | None:
    """The outcome of a step whose stored output was made from exactly `inputs` and is all there; else None."""
    folder = ctx.folder(name)
    marker = folder / DONE_FILE
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("hash") != canonical_hash(inputs) or not _outputs_present(ctx, name):
        return None
    rejects = [r for r in read_rejects(folder / REJECTS_FILE) if r.stage == name]
    return StepOutcome(name, True, 0.0, rejects, stored.get("figures", {}), "inputs unchanged", 0, len(ctx.plan.names))


def _outputs_present(ctx: BuildContext, name: str) -> bool:
    """A kept step must have its outputs: every partition's table (the shards: every tar)."""
    if name == "shard":
        try:
            shards = read_dataset(ctx.shards)["shards"]
        except (OSError, ValueError):
            return False
        return all((ctx.shards / s).is_file() for s in shards)
    folder = ctx.run_dir / STEPS[name].folder
    return all(part_file(folder, STEPS[name].table, p).is_file() for p in ctx.plan.names)


def redo_reason(folder: StoragePath, step: str, inputs: dict[str, Any]) -> str:
    """Why a step must run (it was not kept): what changed since its stored output in `folder`."""
    marker = folder / DONE_FILE
    if not marker.exists():
        return "not run yet" if not marker.parent.exists() else "no done.json (unfinished)"
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return "done.json unreadable"
    before = stored.get("inputs") or {}
    if stored.get("hash") == canonical_hash(inputs):
        return "outputs missing"
    labels = {"sections": "config", "files": "files named in the config", "listing": "corpus listing",
              "partitions": "partition count"}
    changed = [labels[k] for k in labels if before.get(k) != inputs.get(k)]
    if before.get("reads") != inputs["reads"]:
        changed.append("corpus content" if step == "ingest" else "upstream output")
    return "changed: " + ", ".join(changed) if changed else "inputs changed"


@dataclass
class BuildReport:
    outcomes: list[StepOutcome]
    run_dir: StoragePath
    shards: StoragePath
    seconds: float

    @property
    def rejects(self) -> list[Reject]:
        """Every reject once: the shard step carries the earlier steps' rejects too."""
        return merge_rejects(r for o in self.outcomes for r in o.rejects)


def build_corpus(
    corpus: str | StoragePath, run_dir: str | StoragePath, config: RunConfig, *, steps: tuple[str, ...] = STEP_ORDER,
    shards: str | StoragePath | None = None, on_step: Callable[[StepOutcome], None] | None = None,
    show_progress: bool = True,
) -> BuildReport:
    """Run (or resume) the steps over `corpus` into `run_dir`, holding the run directory's lock; the
    shards go to `shards` (default RUN/shards). Each may be a local path or a URL."""
    started = time.perf_counter()
    corpus, run_dir = location(corpus, "CORPUS"), location(run_dir, "--out")
    shard_dir = run_dir / STEPS["shard"].folder if shards is None else location(shards, "--shards")
    check_not_inside(corpus, run_dir, "--out")
    check_not_inside(corpus, shard_dir, "--shards")
    if "align" in steps or config.ingest.long_recordings == "segment":
        config.align.check_inputs_exist()
    fresh = not run_dir.exists()
    with exclusive_output(run_dir):
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=True), encoding="utf-8")
        try:
            plan = plan_corpus(corpus, run_dir, config)
        except UserError:
            if fresh:  # a corpus that cannot be read leaves no run folder behind that --resume would need
                remove_tree(run_dir)
            raise
        ctx = BuildContext(corpus, run_dir, shard_dir, config, plan, show_progress)
        outcomes: list[StepOutcome] = []
        hashes: dict[str, str] = {}
        for name in steps:
            inputs = _step_inputs(ctx, name)
            hashes[name] = canonical_hash(inputs)
            outcome = _kept_outcome(ctx, name, inputs)
            if outcome is None:
                reason = redo_reason(ctx.folder(name), name, inputs)
                run = _run_shard_step if name == "shard" else _run_stage_step
                outcome = run(ctx, name, inputs)
                outcome.reason = reason + outcome.reason  # a step adds what it refit
            outcomes.append(outcome)
            if on_step is not None:
                on_step(outcome)
        report = BuildReport(outcomes, run_dir, shard_dir, time.perf_counter() - started)
        _write_build_json(report, config, hashes)
    return report


def _write_build_json(report: BuildReport, config: RunConfig, hashes: dict[str, str]) -> None:
    summary = {
        "toolkit_version": __version__,
        "config_hash": config.hash,
        "shards": str(report.shards),
        "step_hashes": hashes,
        "steps": [
            {"name": o.name, "skipped": o.skipped, "seconds": round(o.seconds, 3), "rejects": len(o.rejects),
             "figures": o.figures, "partitions": o.parts, "partitions_run": o.parts_run, "reason": o.reason}
            for o in report.outcomes
        ],
    }
    (report.run_dir / "build.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _print_step(o: StepOutcome) -> None:
    if o.skipped:
        click.echo(f"[{o.name}] kept ({o.reason})", err=True)
    else:
        click.echo(f"[{o.name}] ran {o.parts_run} of {o.parts} partitions in {o.seconds:.1f} s ({o.reason})", err=True)


def print_build_summary(report: BuildReport, config: RunConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    from lst_data.core.summary import print_summary
    from lst_data.ingest.stage import ignored_notes

    console = Console(soft_wrap=True)
    table = Table(title=f"build {report.run_dir}", title_justify="left")
    for column in ("step", "status", "wall s", "share", "rejects", "figures"):
        table.add_column(column, justify="left" if column in ("step", "status", "figures") else "right")
    ran = sum(o.seconds for o in report.outcomes) or 1.0
    for o in report.outcomes:
        figures = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in o.figures.items())
        table.add_row(o.name, "kept" if o.skipped else "ran", f"{o.seconds:.1f}", f"{o.seconds / ran:.0%}",
                      str(len(o.rejects)), figures)
    console.print(table)
    by_step = {o.name: o.figures for o in report.outcomes}
    hours_in = float(by_step.get("ingest", {}).get("hours", 0.0))
    hours_out = float(by_step.get("shard", {}).get("hours_out", 0.0))
    totals = [("hours in (ingested)", f"{hours_in:.4f}"), ("hours out (in shards)", f"{hours_out:.4f}"),
              ("wall time", f"{report.seconds:.1f} s")]
    if hours_in and not any(o.skipped for o in report.outcomes):
        totals.append(("real-time factor", f"{report.seconds / (hours_in * 3600):.3f} (wall s per audio s)"))
    ingest_json = report.run_dir / STEPS["ingest"].folder / "ingest.json"
    notes = ignored_notes(json.loads(ingest_json.read_text(encoding="utf-8"))) if ingest_json.exists() else []
    print_summary("totals", totals, report.rejects, console=console, config=config, notes=notes)


def parse_steps(value: str) -> tuple[str, ...]:
    """--steps as the named steps in pipeline order (each once); one line, exit 2, for a wrong list."""
    named = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in named if s not in STEPS]
    if unknown:
        raise UserError(f"--steps: unknown steps {unknown}; known: {', '.join(STEP_ORDER)}")
    if not named:
        raise UserError(f"--steps: {value!r} names no step; give some of {', '.join(STEP_ORDER)}")
    return tuple(s for s in STEP_ORDER if s in named)


def check_not_inside(corpus: StoragePath, folder: StoragePath, option: str) -> None:
    """A run or shard folder inside the corpus would be listed as corpus input by the next build."""
    inner, outer = str(folder).rstrip("/"), str(corpus).rstrip("/")
    if not is_remote(folder) and not is_remote(corpus):
        inner, outer = str(Path(inner).resolve()), str(Path(outer).resolve())
    if inner == outer or inner.startswith(outer + "/"):
        raise UserError(f"{option}: {folder} is inside the corpus {corpus}; its files would be read as corpus "
                        f"input on the next build. Choose a folder outside the corpus")


@click.command("build")
@click.argument("corpus", type=StorageLocation(exists=True))
@click.option("--out", required=True, type=StorageLocation(), help="Run directory: a folder or a URL.")
@click.option("--shards", type=StorageLocation(), default=None,
              help="Where the shards go: a folder or a URL (s3://bucket/shards, gs://...)  [default: OUT/shards]")
@click.option("--resume", is_flag=True, help="Continue a run in OUT: done steps and finished shards are kept.")
@layout_option
@config_options
@click.option("--steps", default=",".join(STEP_ORDER), show_default=True,
              help="Comma-separated steps to run, in pipeline order (e.g. ingest,align).")
def build_command(corpus: StoragePath, out: StoragePath, shards: StoragePath | None, resume: bool, layout: str | None, config_path: Path | None,
                  assignments: tuple[str, ...], runner: str | None, steps: str) -> None:
    """Build shards from CORPUS (a folder, a manifest, or a URL) into the run directory OUT (ingest,
    align, units, tokenize, shard).

    Exit code 0: every utterance is in the shards; 3: finished, with rejects; 1: failed.
    """
    from lst_data.core.summary import EXIT_WITH_REJECTS

    chosen = parse_steps(steps)
    if out.is_file():
        raise UserError(f"--out: {out} is a file; the run directory must be a folder")
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"--out: {out} already holds a run: pass --resume to continue it, or choose another --out")
    config = load_run_config(config_path, assignments, runner, aliases={"ingest.layout": layout})
    try:
        report = build_corpus(corpus, out, config, steps=chosen, shards=shards, on_step=_print_step)
    except OutputLocked as err:
        click.echo(f"lst-data build: {err}", err=True)
        sys.exit(1)
    print_build_summary(report, config)
    if report.rejects:
        sys.exit(EXIT_WITH_REJECTS)


if __name__ == "__main__":
    run_cli(build_command, "build_corpus")
