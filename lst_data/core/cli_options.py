"""Options every `lst-data` and `lst-model` command shares, and the one way user errors end.

`--config FILE` and repeatable `--set a.b=v` configure every command; a stage's own flags
(`--backend`, `--k`, ...) are documented aliases that become `--set` assignments, so there
is exactly one override mechanism. `run_cli` runs a click group so that a user error
(`UserError`, or click's own usage errors) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from lst_data.core.errors import EXIT_USAGE, UserError


def config_file_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config and --set (repeatable)."""
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="Run config (YAML); defaults in code (`lst-data config`, docs/model.md).")(fn)
    fn = click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
                      help="Override one config field, e.g. --set units.k=200 (repeatable; after --config).")(fn)
    return fn


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config, --set (repeatable) and --runner."""
    fn = config_file_options(fn)
    fn = click.option("--runner", type=click.Choice(["ray", "local"]), default=None,
                      help="Alias of --set ray.runner=...: Ray (default) or in-process.")(fn)
    return fn


def alias_assignments(aliases: dict[str, Any]) -> list[str]:
    """Stage flags given on the command line (None = not given) as `field=value` assignments.

    Values are written as JSON, which the YAML reading of `--set` parses back unchanged.
    """
    return [f"{field}={json.dumps(value)}" for field, value in aliases.items() if value is not None]


def load_run_config(config_path: Path | None, assignments: Sequence[str] = (), runner: str | None = None,
                    aliases: dict[str, Any] | None = None):
    """The run config of a command: defaults, --config, stage-flag aliases, --set, --runner."""
    from lst_data.config import load_config

    ordered = [*alias_assignments(aliases or {}), *assignments]
    if runner:
        ordered.append(f"ray.runner={runner}")
    return load_config(config_path, assignments=ordered)


class UserFacingError(click.ClickException):
    """A `UserError` as click shows it: one line, exit code 2."""

    exit_code = EXIT_USAGE


class Commands(click.Group):
    """A command group whose commands end a `UserError` as one line and exit 2, however they
    are invoked (the console script, `run_cli`, or click's test runner)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            raise UserFacingError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM becomes SystemExit so that exit handlers run: a local Ray started by this
    # process is shut down (its atexit hook), and no Ray process outlives the command.
    sys.exit(128 + signum)


def run_cli(group: click.Command, prog_name: str, args: Sequence[str] | None = None) -> None:
    """Run `group` (or a single command); user errors become one line `PROG: error: ...` and exit 2."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        rv = group.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{prog_name}: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        message = err.format_message().replace("\n", " ")
        ctx: click.Context | None = getattr(err, "ctx", None)  # a UsageError's: the command it is about
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        click.echo(f"{prog_name}: error: {message}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except UserError as err:
        click.echo(f"{prog_name}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as err:
        problem = disk_problem(err)
        if problem is None:
            raise
        click.echo(f"{prog_name}: error: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(rv if isinstance(rv, int) else 0)


class StorageLocation(click.ParamType):
    """A local path or a URL on any filesystem fsspec knows (s3://, gs://, hdfs://, ...);
    `exists` refuses one that is not there."""

    name = "path or URL"

    def __init__(self, exists: bool = False) -> None:
        self.exists = exists

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from lst_data.core.storage import location

        if not isinstance(value, str):
            return value
        try:
            path = location(value)
            found = not self.exists or path.exists()
        except (UserError, OSError) as err:
            self.fail(f"cannot open {value}: {err}", param, ctx)
        if not found:
            self.fail(f"{value} does not exist", param, ctx)
        return path


_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


def disk_problem(err: BaseException) -> str | None:
    """One line for a full, read-only or forbidden disk (the user's to fix), found anywhere in the
    chain of causes (a Ray task's error wraps its worker's); None for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        code = getattr(cause, "errno", None)
        where = getattr(cause, "filename", None)
        detail = f" ({where})" if where else ""
        if code in _FULL:
            return (f"no space left on the device{detail}: free some, then rerun the same command with --resume "
                    "to continue where it stopped")
        if code in _NOT_WRITABLE:
            return f"cannot write{detail}: {_NOT_WRITABLE[code]}; choose an output folder you can write"
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    return None

