"""One build per output folder: an exclusive `flock` on OUT/.lock, held for the whole build.

The lock file records who holds it (pid, host, start time) so that a second build can say
whom it waits for. The kernel drops a `flock` when its process dies, however it dies, so a
lock file left by a dead build is taken over (with a warning naming the dead holder).
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from lst_data.core.storage import StoragePath, is_remote

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class OutputLocked(RuntimeError):
    """Another live build holds the lock on this output folder."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _record() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


@contextmanager
def exclusive_output(out_dir: StoragePath) -> Iterator[None]:
    """Hold OUT/.lock for the duration of the block; raise OutputLocked at once if another build holds it."""
    if is_remote(out_dir):
        with _object_lock(out_dir):
            yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = _holder(path.read_text(encoding="utf-8", errors="replace"))
            raise OutputLocked(f"{out_dir} is being built by another build ({held_by}); "
                               "wait for it to finish or choose another --out") from None
        previous = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        if previous.strip():
            log.warning("%s: taking over the lock of a build that ended without releasing it (%s)",
                        out_dir, _holder(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, _record().encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: the next build takes it without a warning
    finally:
        os.close(fd)


@contextmanager
def _object_lock(out_dir: StoragePath) -> Iterator[None]:
    """OUT/.lock on an object store: created only if absent (a conditional write), deleted at the end.

    A store cannot notice that its holder died: a lock left by a killed build stays until it
    is deleted, and the error says so.
    """
    path = out_dir / LOCK_FILE
    try:
        with path.open("xb") as handle:
            handle.write(_record().encode("utf-8"))
    except FileExistsError:
        try:
            held_by = _holder(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            held_by = "an unknown process"
        raise OutputLocked(f"{out_dir} is being built by another build ({held_by}); wait for it to finish, or, "
                           f"if that build was killed, delete {path}") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """For a stage command writing OUT: hold the lock of the build's run folder OUT is (or is a step
    folder of), so a stage command never writes into a run that a build is writing; OUT outside any
    run folder needs no lock."""
    run_dir = next((folder for folder in (out, out.parent) if (folder / LOCK_FILE).is_file()), None)
    if run_dir is None:
        yield
        return
    with exclusive_output(run_dir):
        yield


def locks_run_folder(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command whose `out` option is a folder: the body runs under `run_folder_lock`."""

    @functools.wraps(command)
    def locked(*args: Any, **kwargs: Any) -> Any:
        try:
            with run_folder_lock(Path(kwargs["out"])):
                return command(*args, **kwargs)
        except OutputLocked as err:  # as for a second build: one line, exit 1
            click.echo(f"lst-data {command.__name__}: {err}", err=True)
            sys.exit(1)

    return locked

