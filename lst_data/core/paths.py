"""Output paths stay inside their output folder.

Config validation already refuses names that could escape (no path separators in a shard
split, a fixed set of audio formats, keys of `[A-Za-z0-9_-]`). This is the writers' own
check on the resolved path, so that no future field or key can write outside OUT.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, overload

from lst_data.core.storage import StoragePath, is_remote

if TYPE_CHECKING:
    from upath import UPath


@overload
def inside(root: Path, name: str) -> Path: ...
@overload
def inside(root: UPath, name: str) -> UPath: ...
@overload
def inside(root: StoragePath, name: str) -> StoragePath: ...
def inside(root: StoragePath, name: str) -> StoragePath:
    """`root / name`, refusing (as a bug) any name whose resolved path leaves `root`; on an object
    store (no links to resolve), any name that is not one plain component."""
    if is_remote(root):
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"refusing to write {name!r}: outside the output folder {root}")
        return root / name
    base = root.resolve()
    target = (root / name).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"refusing to write {target}: outside the output folder {base}")
    return target
