"""`lst-data stats|show|validate|diff|plot`: look into a shard directory.

All of them read shards through the checked reader (`lst_data.format.reader`), so they
are safe on shards from elsewhere, and none needs the stage tables that made the shards.
`stats`, `show`, `diff` and `plot` verify every tar they read against its sidecar (size,
sha256, samples) unless given `--no-verify`; `validate` always does. A shard that fails
ends the command with one line naming it and the reason (exit 2); `validate` lists every
problem (exit 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from lst_data.core.errors import InputError
from lst_data.format.records import SampleRecord
from lst_data.format.safe_tar import READ_ERRORS

_dir_arg = click.argument("shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
_verify_option = click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check each tar read against its sidecar (sha256, size, samples) first; --no-verify is faster and trusts the tars.",
)


def _console() -> Console:
    # wide enough that tables are not cut when the output is a pipe or a test runner
    return Console(width=160, soft_wrap=False)


@contextlib.contextmanager
def reading_shards(shard_dir: Path | str) -> Iterator[None]:
    """Shards that cannot be read end the command with one line (a user's input, not a bug)."""
    try:
        yield
    except READ_ERRORS as err:
        raise InputError(f"{shard_dir}: bad shard data ({err}); `lst-data validate {shard_dir}` lists the problems") from None


def _index_shards(shard_dir: Path, sample_id: str) -> list[Path]:
    """The tars index.parquet names for `sample_id`: only shard names of this directory are followed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lst_data.format.layout import INDEX_FILE, shard_paths

    table = pq.read_table(shard_dir / INDEX_FILE, columns=["id", "shard"])
    present = {p.name: p for p in shard_paths(shard_dir)}
    hits = table.filter(pc.equal(table["id"], sample_id))["shard"].to_pylist()
    strangers = [str(h)[:100] for h in hits if h not in present]
    if strangers:
        raise ValueError(f"{INDEX_FILE} names shard {strangers[0]!r}, which is not a shard of this directory")
    return [present[h] for h in hits]


def find_record(shard_dir: Path, sample_id: str, verify: bool = True) -> SampleRecord:
    """The record with `sample_id`: via index.parquet's shard column when present, else a scan."""
    from lst_data.format.layout import INDEX_FILE
    from lst_data.format.reader import iter_records, iter_shard

    candidates: Iterator[SampleRecord]
    with reading_shards(shard_dir):  # the search stops at the record: check whole tars first
        if (shard_dir / INDEX_FILE).exists():
            candidates = (
                r for tar in _index_shards(shard_dir, sample_id) for r in iter_shard(tar, verify=verify, scan_first=True)
            )
        else:
            candidates = iter_records(shard_dir, verify=verify, scan_first=True)
        for record in candidates:
            if record.id == sample_id:
                return record
    raise InputError(f"no sample {sample_id!r} in {shard_dir}")


def summary_figures(shard_dir: Path, patch_size: int, verify: bool = True) -> dict[str, Any]:
    """dataset.json's counts and patch lengths; tallied from the shards when it has none for `patch_size`.

    dataset.json's figures are used only when it lists exactly the tars present (and, with
    `verify`, each tar matches its sidecar). A tally always verifies the tars it reads
    (`tally_shards` reads them with the reader's default).
    """
    from lst_data.core.rejects import read_rejects
    from lst_data.format.layout import REJECTS_FILE
    from lst_data.format.reader import listed_shards, local_shard, verify_shard
    from lst_data.shards.summary import tally_shards

    with reading_shards(shard_dir):
        tars, summary = listed_shards(shard_dir)
        if summary is not None and summary.get("patch_lengths", {}).get("patch_size") == patch_size:
            for tar_path in tars if verify else ():
                with local_shard(tar_path) as local:  # the tar itself: the folder is local
                    verify_shard(local, count_samples=True)  # no sample is read: count them in a header scan
            return summary
    with reading_shards(shard_dir):
        tally = tally_shards(tars, patch_size=patch_size)
    return {"counts": tally.counts(len(tars), read_rejects(shard_dir / REJECTS_FILE)),
            "patch_lengths": tally.patch_length_counts()}


@click.command("stats")
@_dir_arg
@click.option("--patch-size", type=click.IntRange(min=1), default=4, show_default=True, help="p of the static strategy.")
@_verify_option
def stats(shard_dir: Path, patch_size: int, verify: bool) -> None:
    """Hours, utterances, units, words, BPE pieces, silence share, patch sizes and rejects of SHARD_DIR.

    The figures are dataset.json's (written with the shards), after checking that it lists
    the tars present and (unless --no-verify) that each tar matches its sidecar; without
    one, or for another --patch-size than it was written with, the shards are read and tallied.
    """
    import numpy as np

    from lst_data.core.rejects import read_rejects
    from lst_data.core.summary import print_rejects
    from lst_data.format.layout import REJECTS_FILE

    summary = summary_figures(shard_dir, patch_size, verify)
    counts = summary["counts"]
    console = _console()
    console.print(f"{shard_dir}: {counts['shards']} shards")
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    share = counts["silence_share"] or 0.0
    for name, value in (
        ("hours", f"{counts['hours']:.3f}"),
        ("utterances", str(counts["samples"])),
        ("units", str(counts["units"])),
        ("words", str(counts["words"])),
        ("bpe pieces", str(counts["bpe"])),
        ("silence share", f"{share:.1%}"),
    ):
        table.add_row(name, value)
    console.print(table)
    patch_table = Table(title=f"patch sizes (frames per patch, static p = {patch_size})", title_justify="left")
    for column in ("strategy", "patches", "mean", "p10", "median", "p90", "max"):
        patch_table.add_column(column, justify="left" if column == "strategy" else "right")
    for strategy, rows in summary["patch_lengths"]["counts"].items():
        if not rows:
            continue
        values = np.repeat([r["length"] for r in rows], [r["count"] for r in rows])
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        patch_table.add_row(
            strategy, str(values.size), f"{values.mean():.2f}", f"{p10:g}", f"{p50:g}", f"{p90:g}", str(values.max())
        )
    console.print(patch_table)
    print_rejects(read_rejects(shard_dir / REJECTS_FILE), console)


def segments(record: SampleRecord) -> list[dict[str, Any]]:
    """Words and silence runs in frame order, each with its BPE pieces: the rows of `show`."""
    rows = []
    for i, word in enumerate(record.words):
        pieces = [p for p in record.bpe if p.word_index == i]
        rows.append(
            {
                "kind": "word",
                "label": word.word,
                "start_frame": word.start_frame,
                "end_frame": word.end_frame,
                "start": word.start,
                "end": word.end,
                "bpe": " ".join(f"{p.piece}[{p.start_frame}-{p.end_frame}]" for p in pieces),
            }
        )
    for silence in record.silences:
        rows.append(
            {
                "kind": "silence",
                "label": f"<{silence.rule}>",
                "start_frame": silence.start_frame,
                "end_frame": silence.end_frame,
                "start": silence.start,
                "end": silence.end,
                "bpe": "",
            }
        )
    return sorted(rows, key=lambda r: (r["start_frame"], r["kind"] == "word"))


@click.command("show")
@_dir_arg
@click.argument("sample_id")
@_verify_option
def show(shard_dir: Path, sample_id: str, verify: bool) -> None:
    """One sample as a time-aligned table: words, BPE pieces, silences and their units."""
    record = find_record(shard_dir, sample_id, verify)
    console = _console()
    console.print(
        f"[bold]{record.id}[/bold]  speaker {record.speaker}  {record.duration:.3f} s  "
        f"{record.n_frames} frames at {record.frame_rate:g} Hz  audio: {'yes' if record.audio else 'no'}"
    )
    console.print(f"text: {record.text}")
    console.print(
        f"aligner: {json.dumps(record.aligner, sort_keys=True)}  units: {json.dumps(record.unit_info, sort_keys=True)}"
    )
    table = Table(title_justify="left")
    for column in ("frames", "time (s)", "word / silence", "bpe [frames]", "units"):
        table.add_column(column, overflow="fold")
    for row in segments(record):
        units = record.units[row["start_frame"] : row["end_frame"] + 1]
        table.add_row(
            f"{row['start_frame']}-{row['end_frame']}",
            f"{row['start']:.3f}-{row['end']:.3f}",
            row["label"],
            row["bpe"],
            " ".join(map(str, units.tolist())),
        )
    console.print(table)


@click.command("validate")
@_dir_arg
def validate(shard_dir: Path) -> None:
    """Check SHARD_DIR against the shard contract; exit 1 and list the problems if any."""
    from lst_data.format.contract import check_dir
    from lst_data.format.layout import shard_paths
    from lst_data.format.reader import ShardSet

    problems = list(check_dir(shard_dir))
    for problem in problems:
        click.echo(f"{problem.where}: {problem.what}")
    if problems:
        click.echo(f"{len(problems)} problem(s) in {shard_dir}", err=True)
        sys.exit(1)
    n_shards = len(shard_paths(shard_dir))
    click.echo(f"ok: {n_shards} shards, {ShardSet.from_dir(shard_dir).total_samples} samples in {shard_dir}")


def _digests(record: SampleRecord) -> dict[str, str]:
    """A short hash per part of a record, so two directories compare without holding their records."""
    data = record.to_json()
    parts = {
        name: data[name]
        for name in ("text", "speaker", "duration", "words", "bpe", "silences", "aligner", "units")
    }
    digests = {
        name: hashlib.sha1(json.dumps(v, sort_keys=True).encode()).hexdigest() for name, v in parts.items()
    }
    digests["unit ids"] = hashlib.sha1(record.units.astype("<i2").tobytes()).hexdigest()
    digests["audio"] = hashlib.sha1(record.audio or b"").hexdigest()
    return digests


def _differences(a: Path, b: Path, verify: bool) -> tuple[int, int, int]:
    """Print what differs between shard directories A and B; (differences, samples in A, shards in A)."""
    from lst_data.format.layout import shard_paths
    from lst_data.format.reader import iter_records
    from lst_data.format.safe_tar import read_sidecar

    differences = 0
    shards = {side: {p.name: p for p in shard_paths(d)} for side, d in (("A", a), ("B", b))}
    for name in sorted(shards["A"].keys() | shards["B"].keys()):
        pa_, pb = shards["A"].get(name), shards["B"].get(name)
        if pa_ is None or pb is None:
            click.echo(f"shard {name}: only in {'A' if pb is None else 'B'}")
            differences += 1
            continue
        sa, sb = (read_sidecar(p) for p in (pa_, pb))
        if sa.sha256 != sb.sha256:
            click.echo(f"shard {name}: bytes differ")
            differences += 1
    in_a = {r.id: _digests(r) for r in iter_records(a, verify=verify)}
    seen_b = set()
    for record in iter_records(b, verify=verify):
        seen_b.add(record.id)
        theirs = _digests(record)
        ours = in_a.get(record.id)
        if ours is None:
            click.echo(f"sample {record.id}: only in B")
        elif ours != theirs:
            click.echo(f"sample {record.id}: differs in {', '.join(k for k in ours if ours[k] != theirs[k])}")
        else:
            continue
        differences += 1
    for sample_id in sorted(in_a.keys() - seen_b):
        click.echo(f"sample {sample_id}: only in A")
        differences += 1
    return differences, len(in_a), len(shards["A"])


@click.command("diff")
@click.argument("a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_verify_option
def diff(a: Path, b: Path, verify: bool) -> None:
    """Which shards and samples differ between shard directories A and B, and in what; exit 1 when they differ."""
    with reading_shards(f"{a} or {b}"):
        differences, samples, shards = _differences(a, b, verify)
    if differences:
        click.echo(f"{differences} difference(s)")
        sys.exit(1)
    click.echo(f"identical: {samples} samples in {shards} shards")


@click.command("plot")
@_dir_arg
@click.argument("sample_id")
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Image file (.png)."
)
@click.option("--patch-size", type=int, default=4, show_default=True, help="p of the static strategy.")
@_verify_option
def plot(shard_dir: Path, sample_id: str, out: Path, patch_size: int, verify: bool) -> None:
    """Plot one sample: spectrogram (when the shard has audio) or units, with word, BPE, silence and patch tiers."""
    from lst_data.shards.plot import plot_record

    record = find_record(shard_dir, sample_id, verify)
    plot_record(record, out, patch_size=patch_size)
    click.echo(f"wrote {out}")
