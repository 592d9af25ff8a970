"""Documented dataclass fields, in a module of their own.

Every stage's config section imports `doc` from here, and `lst_data.config` imports the
sections: keeping `doc` out of `lst_data.config` means no import cycle, whichever module
is imported first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field that carries its documentation (shown by `lst-data config`)."""
    metadata = {"doc": text}
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return field(default_factory=default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)
