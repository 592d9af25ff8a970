"""Output paths stay inside their output folder.

Config validation already refuses names that could escape (no path separators in a shard
split, a fixed set of audio formats, keys of `[A-Za-z0-9_-]`). This is the writers' own
check on the resolved path, so that no future field or key can write outside OUT.
"""

from __future__ import annotations

from pathlib import Path


def inside(root: Path, name: str) -> Path:
    """`root / name`, refusing (as a bug) any name whose resolved path leaves `root`."""
    base = root.resolve()
    target = (root / name).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"refusing to write {target}: outside the output folder {base}")
    return target
