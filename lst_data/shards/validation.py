"""Check records against the shard contract before they are written, in worker processes if asked.

Checking is most of the writer's time (jsonschema takes ~10 ms on a 30-word sample), so
windows of records are checked in a process pool when `workers` > 1; a window bounds the
memory held, and results come back in input order, so the output does not depend on
`workers`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
from collections.abc import Iterable, Iterator

from lst_data.core.rejects import Reject
from lst_data.records import SampleRecord
from lst_data.shards.contract import STAGE, sample_errors

CHECK_WINDOW = 512


@contextlib.contextmanager
def check_pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """A process pool of `workers` (None for 1: check in this process)."""
    if workers <= 1:
        yield None
        return
    # spawn, not fork: the caller may hold threads (Ray, progress bars); a worker that dies
    # raises BrokenProcessPool instead of hanging the job
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def valid_records(
    records: Iterable[SampleRecord | Reject],
    rejects: list[Reject],
    frame_tolerance: int,
    pool: concurrent.futures.Executor | None,
) -> Iterator[SampleRecord]:
    """Records that pass schemas/sample.v1.json and the span checks of `lst-data validate`.

    Incoming rejects and records that fail (code `invalid_record`) are appended to `rejects`.
    """
    check = functools.partial(sample_errors, frame_tolerance=frame_tolerance)
    window: list[SampleRecord] = []

    def checked() -> Iterator[SampleRecord]:
        results = pool.map(check, window, chunksize=16) if pool is not None else map(check, window)
        for record, errors in zip(window, results, strict=True):
            if errors:
                rejects.append(Reject(record.id, STAGE, "invalid_record", "; ".join(errors[:3])))
            else:
                yield record
        window.clear()

    for item in records:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        window.append(item)
        if len(window) >= CHECK_WINDOW:
            yield from checked()
    yield from checked()
