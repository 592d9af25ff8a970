"""Progress bars and logging set-up for long steps (tqdm: plain lines when not a terminal)."""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", disable: bool = False) -> tqdm:
    """One live line: done / total, rate, ETA; callers add `rejects=` as a postfix."""
    quiet = disable or os.environ.get("LST_DATA_NO_PROGRESS") == "1"
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
