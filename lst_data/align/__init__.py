"""Forced alignment: manifest -> word, phone (and character) intervals + silence spans. See docs/align.md.

`AlignStage` is the stage's public face for other stages (ingest aligns long recordings
with it before cutting them); it is imported on first use, since the stage module pulls in
the whole run config.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "AlignStage":
        from lst_data.align.stage import AlignStage

        return AlignStage
    raise AttributeError(f"module 'lst_data.align' has no attribute {name!r}")
