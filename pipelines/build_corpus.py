"""Corpus -> shards in one job: ingest -> align -> units -> tokenize -> shard.

Run it locally (`lst-data build CORPUS --out RUN`, `make corpus`) or on a cluster
(`ray job submit ... -- python -m pipelines.build_corpus CORPUS --out RUN`). Each stage
streams its rows through Ray Data (or in-process with `--runner local`) and writes its
tables under its own folder of the run directory:

    RUN/config.yaml          the resolved config of the run
    RUN/ingest/              manifest.parquet, rejects.parquet, ingest.json, audio/
    RUN/align/               alignments.parquet, rejects.parquet, oov.parquet, align.json
    RUN/units/               codebook.npy (+ .json), units.parquet, rejects.parquet, units.json
    RUN/tokenize/            tokenizer.model, tokens.parquet, rejects.parquet, tokenize.json
    RUN/shards/              {split}-NNNNNN.tar + .json sidecars, index.parquet, rejects.parquet, dataset.json,
                             shard.json
    RUN/build.json           what ran, what was kept, wall time per stage, reject counts

Every step is one stage run by `lst_data.core.runner` (the shard writer ends the same way), so
each folder also holds `done.json`, written last. Resume: a step is done when `RUN/<step>/done.json` holds the hash of everything its output
depends on (its config sections, the seed, and the hashes of the steps it reads). A rerun
skips done steps and redoes the rest; the shard step also keeps every finished shard. A
killed run therefore resumes to the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from lst_data import __version__
from lst_data.config import RunConfig
from lst_data.core.cli_options import config_options, load_run_config, run_cli
from lst_data.core.config import canonical_hash, to_dict
from lst_data.core.errors import UserError
from lst_data.core.fingerprint import files_fingerprint, listing_fingerprint
from lst_data.core.lock import OutputLocked, exclusive_output
from lst_data.core.rejects import Reject, merge_rejects, read_rejects
from lst_data.core.runner import DONE_FILE, REJECTS_FILE, StageReport
from lst_data.ingest.cli import layout_option
from lst_data.ingest.stage import list_configured_corpus

STEP_ORDER = ("ingest", "align", "units", "tokenize", "shard")


@dataclass(frozen=True)
class Step:
    name: str
    sections: tuple[str, ...]  # config sections the output depends on
    reads: tuple[str, ...]  # steps whose outputs it reads
    run: Callable[[BuildContext, dict[str, Any]], StageReport]  # (context, input fingerprints) -> report
    folder: str  # under the run directory


@dataclass
class StepOutcome:
    name: str
    skipped: bool
    seconds: float
    rejects: list[Reject]
    figures: dict[str, Any]
    reason: str  # why it was kept or run again


@dataclass
class BuildContext:
    corpus: Path
    run_dir: Path
    config: RunConfig
    listing: tuple[Any, list[Reject], list[Any]]  # the corpus reader's entries table, rejects and ignored files

    def dir(self, step: str) -> Path:
        path = self.run_dir / STEPS[step].folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def manifest_dir(self) -> Path:
        return self.run_dir / STEPS["ingest"].folder


def _ingest(ctx: BuildContext, fingerprint: dict[str, Any]) -> StageReport:
    from lst_data.ingest.stage import ingest_corpus

    return ingest_corpus(ctx.corpus, ctx.dir("ingest"), ctx.config, listing=ctx.listing, fingerprint=fingerprint)


def _align(ctx: BuildContext, fingerprint: dict[str, Any]) -> StageReport:
    from lst_data.align.stage import align_manifest

    return align_manifest(ctx.manifest_dir, ctx.dir("align"), ctx.config, fingerprint=fingerprint)


def _units(ctx: BuildContext, fingerprint: dict[str, Any]) -> StageReport:
    from lst_data.units.stage import quantize_manifest

    return quantize_manifest(ctx.manifest_dir, ctx.dir("units"), ctx.config, fingerprint=fingerprint)


def _tokenize(ctx: BuildContext, fingerprint: dict[str, Any]) -> StageReport:
    from lst_data.tokenize.stage import tokenize_manifest

    return tokenize_manifest(ctx.manifest_dir, ctx.dir("tokenize"), ctx.config, fingerprint=fingerprint)


def _shard(ctx: BuildContext, fingerprint: dict[str, Any]) -> StageReport:
    from lst_data.shards.build import StageOutputs, build_shards

    outputs = StageOutputs.from_run_dir(ctx.run_dir)
    return build_shards(outputs, ctx.dir("shard"), ctx.config, fingerprint=fingerprint)


STEPS = {
    "ingest": Step("ingest", ("ingest",), (), _ingest, "ingest"),
    "align": Step("align", ("align",), ("ingest",), _align, "align"),
    "units": Step("units", ("units",), ("ingest",), _units, "units"),
    "tokenize": Step("tokenize", ("tokenizer",), ("ingest",), _tokenize, "tokenize"),
    "shard": Step("shard", ("shard",), ("ingest", "align", "units", "tokenize"), _shard, "shards"),
}


def step_inputs(config: RunConfig, corpus_fingerprint: str) -> dict[str, dict[str, Any]]:
    """What every step's output depends on, by component: config sections (+ seed), the content
    of every file those sections name, the corpus listing (ingest), and the upstream steps."""
    inputs: dict[str, dict[str, Any]] = {}
    for name in STEP_ORDER:
        step = STEPS[name]
        names = step.sections
        if name == "ingest" and config.ingest.long_recordings == "segment":
            names = (*names, "align")  # long recordings are aligned to be cut
        sections = [getattr(config, s) for s in names]
        inputs[name] = {
            "sections": canonical_hash({"step": name, "seed": config.seed,
                                        "sections": {s: to_dict(getattr(config, s)) for s in names}}),
            "files": canonical_hash(files_fingerprint(sections)),
            "corpus": corpus_fingerprint if name == "ingest" else None,
            "reads": {r: canonical_hash(inputs[r]) for r in step.reads},
        }
    return inputs


def _done_marker(run_dir: Path, step: str) -> Path:
    return run_dir / STEPS[step].folder / DONE_FILE


def redo_reason(run_dir: Path, step: str, inputs: dict[str, Any]) -> str | None:
    """None when the step's stored output was made from exactly these inputs; else why it must run."""
    marker = _done_marker(run_dir, step)
    if not marker.exists():
        return "not run yet" if not marker.parent.exists() else "no done.json (unfinished)"
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return "done.json unreadable"
    if stored.get("hash") == canonical_hash(inputs):
        return None
    before = stored.get("inputs") or {}
    changed = [k for k in ("sections", "files", "corpus") if before.get(k) != inputs[k]]
    changed += [f"{r} output" for r, h in inputs["reads"].items() if (before.get("reads") or {}).get(r) != h]
    labels = {"sections": "config", "files": "files named in the config", "corpus": "corpus content"}
    return "changed: " + ", ".join(labels.get(c, c) for c in changed) if changed else "inputs changed"


@dataclass
class BuildReport:
    outcomes: list[StepOutcome]
    run_dir: Path
    seconds: float

    @property
    def rejects(self) -> list[Reject]:
        """Every reject once: the shard step carries the earlier steps' rejects too."""
        return merge_rejects(r for o in self.outcomes for r in o.rejects)


def build_corpus(
    corpus: str | Path, run_dir: str | Path, config: RunConfig, *, steps: tuple[str, ...] = STEP_ORDER,
    on_step: Callable[[StepOutcome], None] | None = None,
) -> BuildReport:
    """Run (or resume) the steps over `corpus` into `run_dir`, holding the run directory's lock."""
    started = time.perf_counter()
    corpus, run_dir = Path(corpus), Path(run_dir)
    with exclusive_output(run_dir):
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=True), encoding="utf-8")
        listing = list_configured_corpus(corpus, config.ingest)
        inputs = step_inputs(config, listing_fingerprint(listing[0], "audio_path", {
            "rejects": [asdict(r) for r in listing[1]], "ignored": [asdict(i) for i in listing[2]]}))
        ctx = BuildContext(corpus, run_dir, config, listing)
        outcomes: list[StepOutcome] = []
        for name in steps:
            reason = redo_reason(run_dir, name, inputs[name])
            if reason is None:
                marker = json.loads(_done_marker(run_dir, name).read_text(encoding="utf-8"))
                outcome = StepOutcome(name, True, 0.0, _stored_rejects(run_dir, name), marker.get("figures", {}),
                                      "inputs unchanged")
            else:
                _clear_step_folder(run_dir, name)
                report = STEPS[name].run(ctx, inputs[name])
                # The shard folder's rejects also carry every earlier stage's: count each step's own.
                own = [r for r in report.rejects if r.stage == name]
                outcome = StepOutcome(name, False, report.seconds, own, report.figures, reason)
            outcomes.append(outcome)
            if on_step is not None:
                on_step(outcome)
        report = BuildReport(outcomes, run_dir, time.perf_counter() - started)
        _write_build_json(report, config, {n: canonical_hash(i) for n, i in inputs.items()})
    return report


def _clear_step_folder(run_dir: Path, step: str) -> None:
    """A step that runs again starts from an empty folder, so nothing stale (an old tokenizer, converted
    audio of a deleted utterance) survives into its output. The shard folder keeps its shards: the
    writer verifies each against its sidecar and keeps only what it would write again."""
    folder = run_dir / STEPS[step].folder
    if step != "shard" and folder.is_dir():
        shutil.rmtree(folder)


def _stored_rejects(run_dir: Path, step: str) -> list[Reject]:
    """The rejects a kept step wrote: rows of its own stage in its folder's reject files.

    Filtering by stage matters for the shard folder, whose rejects.parquet also carries
    every earlier stage's rejects; step names are the stage names of their reject rows.
    """
    return [r for r in read_rejects(run_dir / STEPS[step].folder / REJECTS_FILE) if r.stage == step]


def _write_build_json(report: BuildReport, config: RunConfig, hashes: dict[str, str]) -> None:
    summary = {
        "toolkit_version": __version__,
        "config_hash": config.hash,
        "step_hashes": hashes,
        "steps": [
            {"name": o.name, "skipped": o.skipped, "seconds": round(o.seconds, 3), "rejects": len(o.rejects),
             "figures": o.figures}
            for o in report.outcomes
        ],
    }
    (report.run_dir / "build.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _print_step(o: StepOutcome) -> None:
    click.echo(f"[{o.name}] kept ({o.reason})" if o.skipped else f"[{o.name}] ran in {o.seconds:.1f} s ({o.reason})",
               err=True)


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
    figures = [("hours in (ingested)", f"{hours_in:.4f}"), ("hours out (in shards)", f"{hours_out:.4f}"),
               ("wall time", f"{report.seconds:.1f} s")]
    if hours_in and not any(o.skipped for o in report.outcomes):
        figures.append(("real-time factor", f"{report.seconds / (hours_in * 3600):.3f} (wall s per audio s)"))
    ingest_json = report.run_dir / STEPS["ingest"].folder / "ingest.json"
    notes = ignored_notes(json.loads(ingest_json.read_text(encoding="utf-8"))) if ingest_json.exists() else []
    print_summary("totals", figures, report.rejects, console=console, config=config, notes=notes)


@click.command("build")
@click.argument("corpus", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue a run in OUT: done steps and finished shards are kept.")
@layout_option
@config_options
@click.option("--steps", default=",".join(STEP_ORDER), show_default=True,
              help="Comma-separated steps to run, in pipeline order (e.g. ingest,align).")
def build_command(corpus: Path, out: Path, resume: bool, layout: str | None, config_path: Path | None,
                  assignments: tuple[str, ...], runner: str | None, steps: str) -> None:
    """Build shards from CORPUS into the run directory OUT (ingest, align, units, tokenize, shard).

    Exit code 0: every utterance is in the shards; 3: finished, with rejects; 1: failed.
    """
    from lst_data.core.summary import EXIT_WITH_REJECTS

    chosen = tuple(s.strip() for s in steps.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise UserError(f"--steps: unknown steps {unknown}; known: {', '.join(STEP_ORDER)}")
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"--out: {out} already holds a run: pass --resume to continue it, or choose another --out")
    config = load_run_config(config_path, assignments, runner, aliases={"ingest.layout": layout})
    try:
        report = build_corpus(corpus, out, config, steps=chosen, on_step=_print_step)
    except OutputLocked as err:
        click.echo(f"lst-data build: {err}", err=True)
        sys.exit(1)
    print_build_summary(report, config)
    if report.rejects:
        sys.exit(EXIT_WITH_REJECTS)


if __name__ == "__main__":
    run_cli(build_command, "build_corpus")
