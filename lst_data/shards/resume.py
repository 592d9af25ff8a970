"""What a rerun keeps of an earlier run's shards, and what it removes.

A shard is kept when its tar and sidecar exist, the sidecar has this run's config hash,
the tar's size and sha256 are the sidecar's, and the incoming samples (ids and the bytes
of their JSON + units members, re-encoded from the joined records; no audio is read)
match the sidecar's `content_sha256`. The content check catches upstream tables that
changed under an unchanged config. A shard that exists but fails a check is rewritten,
and the reason is reported. Tars beyond the last shard of this run (an earlier, longer
run of the same split) and tars of another split (a run whose `shard.split` changed) are
removed, so the directory describes exactly this run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lst_data.core.storage import StoragePath
from lst_data.format.contract import sidecar_problems
from lst_data.format.layout import Sidecar, shard_index, shard_paths, shard_split, sidecar_path
from lst_data.shards.members import EncodedSample, content_digest

log = logging.getLogger(__name__)


def earlier_shard(tar_path: Path, config_hash: str) -> tuple[Sidecar | None, str | None]:
    """(sidecar, None) for a whole shard of an earlier run with this config; else (None, why not).

    `why not` is None when there is no earlier shard at all (nothing to report).
    """
    side = sidecar_path(tar_path)
    if not tar_path.exists():
        return None, None
    if not side.exists():
        return None, "no sidecar"
    try:
        sidecar = Sidecar.read(side)
    except (ValueError, TypeError) as err:
        return None, f"unreadable sidecar ({err})"
    if sidecar.config_hash != config_hash:
        return None, "written with another config"
    problems = sidecar_problems(tar_path, sidecar)
    return (None, problems[0]) if problems else (sidecar, None)


def same_samples(sidecar: Sidecar, encoded: list[EncodedSample]) -> bool:
    """Whether `encoded` are the samples the sidecar's shard holds (ids and JSON + units bytes)."""
    return (
        len(encoded) == sidecar.samples
        and encoded[0].record_id == sidecar.first_id
        and encoded[-1].record_id == sidecar.last_id
        and content_digest(encoded) == sidecar.content_sha256
    )


def remove_unfinished(out: StoragePath) -> None:
    """Temporary files of an interrupted run (tars and JSON are renamed into place when whole)."""
    for stale_tmp in out.glob(".*.tmp"):
        stale_tmp.unlink()


def remove_stale_shards(out: StoragePath, split: str, first_stale: int) -> list[str]:
    """Remove the tars (and sidecars) of `split` numbered `first_stale` or above, and those of any
    other split (a run whose `shard.split` changed), so the folder holds this run only; their names."""
    removed = []
    for tar_path in shard_paths(out):
        if shard_split(tar_path) != split or shard_index(tar_path) >= first_stale:
            log.info("removing %s, left over from an earlier run", tar_path.name)
            tar_path.unlink()
            sidecar_path(tar_path).unlink(missing_ok=True)
            removed.append(tar_path.name)
    return removed
