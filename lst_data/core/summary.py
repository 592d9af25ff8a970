"""The end-of-run summary every command prints: counts, then rejects by stage and code."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from lst_data.core.rejects import REJECT_CODES, Reject, count_by_code

if TYPE_CHECKING:
    from lst_data.config import RunConfig
    from lst_data.core.runner import StageReport

# Exit code of a data command that finished but rejected some input (1 stays "failed").
EXIT_WITH_REJECTS = 3


def finish_command(title: str, figures: Sequence[tuple[str, str]], rejects: Sequence[Reject]) -> None:
    """Print the summary; exit with EXIT_WITH_REJECTS when anything was rejected."""
    print_summary(title, figures, rejects)
    if rejects:
        sys.exit(EXIT_WITH_REJECTS)


def finish_stage_command(title: str, report: StageReport, config: RunConfig) -> None:
    """The summary of a command that ran one stage: its report's rows, runner and config hash."""
    figures = report.summary_rows()
    figures[-1] = (figures[-1][0], f"{figures[-1][1]} ({config.ray.runner})")
    figures.append(("config hash", config.hash[:12]))
    finish_command(title, figures, report.rejects)


def print_summary(title: str, figures: Sequence[tuple[str, str]], rejects: Iterable[Reject], console: Console | None = None) -> None:
    console = console or Console(stderr=False, soft_wrap=True)
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in figures:
        table.add_row(name, value)
    console.print(table)
    print_rejects(rejects, console)


def print_rejects(rejects: Iterable[Reject], console: Console) -> None:
    """Rejects by stage and code, with what each code means."""
    counts = count_by_code(rejects)
    if not counts:
        console.print("rejects: none")
        return
    rej = Table(title=f"rejects: {sum(counts.values())}", title_justify="left")
    for column in ("stage", "code", "count", "meaning"):
        rej.add_column(column, justify="right" if column == "count" else "left")
    for (stage, code), n in sorted(counts.items()):
        rej.add_row(stage, code, str(n), REJECT_CODES.get(code, ""))
    console.print(rej)
