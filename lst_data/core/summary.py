"""The end-of-run summary every command prints: counts, then rejects by stage and code."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lst_data.core.rejects import Reject, count_by_code, reject_meaning

if TYPE_CHECKING:
    from lst_data.config import RunConfig
    from lst_data.core.runner import StageReport

# Exit code of a data command that finished but rejected some input (1 stays "failed").
EXIT_WITH_REJECTS = 3


def finish_command(title: str, figures: Sequence[tuple[str, str]], rejects: Sequence[Reject],
                   config: RunConfig | None = None, notes: Sequence[str] = ()) -> None:
    """Print the summary; exit with EXIT_WITH_REJECTS when anything was rejected."""
    print_summary(title, figures, rejects, config=config, notes=notes)
    if rejects:
        sys.exit(EXIT_WITH_REJECTS)


def finish_stage_command(title: str, report: StageReport, config: RunConfig, notes: Sequence[str] = ()) -> None:
    """The summary of a command that ran one stage: its report's rows, runner and config hash."""
    figures = report.summary_rows()
    figures[-1] = (figures[-1][0], f"{figures[-1][1]} ({config.ray.runner})")
    figures.append(("config hash", config.hash[:12]))
    finish_command(title, figures, report.rejects, config=config, notes=notes)


def print_summary(title: str, figures: Sequence[tuple[str, str]], rejects: Iterable[Reject], console: Console | None = None,
                  *, config: RunConfig | None = None, notes: Sequence[str] = ()) -> None:
    """Figures, then `notes` (e.g. "ignored, because ..." lines), then rejects by code."""
    console = console or Console(stderr=False, soft_wrap=True)
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in figures:
        table.add_row(name, value)
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)
    print_rejects(rejects, console, config)


def print_rejects(rejects: Iterable[Reject], console: Console, config: RunConfig | None = None) -> None:
    """Rejects by stage and code, with what each code means under `config` (when given)."""
    counts = count_by_code(rejects)
    if not counts:
        console.print("rejects: none")
        return
    rej = Table(title=f"rejects: {sum(counts.values())}", title_justify="left")
    for column in ("stage", "code", "count", "meaning"):
        rej.add_column(column, justify="right" if column == "count" else "left")
    for (stage, code), n in sorted(counts.items()):
        rej.add_row(stage, code, str(n), Text(reject_meaning(code, config)))  # no markup: meanings hold [..]
    console.print(rej)
