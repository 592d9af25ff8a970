"""Codebooks: k centroids, how they are stored and read, and nearest-centroid assignment.

Our own codebooks are a plain `.npy` (float32 [k, dim], read with allow_pickle=False) plus a
sidecar `<name>.json` (encoder, layer, frame rate, k, dim, sha256, training figures). The
codebook hash recorded in units.parquet and in shards is the sha256 of the codebook file's
bytes, so `sha256sum codebook.npy` verifies it.

Published codebooks are read too, without executing their pickles:
- `.npy`;
- torch files holding a tensor/array, or a dict with `cluster_centers` (SpiritLM's k-means
  format) or `centroids` (read with weights_only=True);
- sklearn KMeans / MiniBatchKMeans pickled by joblib (fairseq's `learn_kmeans.py`,
  textlesslib's `km.bin`) or by plain pickle, read by `lst_data.units.safe_pickle`; only
  `cluster_centers_` is taken.

This module is the storage format only; assignment is `lst_data.units.nearest`.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lst_data.core.digests import file_sha256
from lst_data.core.storage import StoragePath, local_input, location, write_bytes_atomic
from lst_data.ssl_checkpoints import safe_torch_load
from lst_data.units.safe_pickle import PickledEstimator, restricted_loads

__all__ = ["Codebook", "CodebookError", "load_codebook", "read_sklearn_centers", "save_codebook"]


class CodebookError(ValueError):
    """The file holds no codebook this loader can read safely."""


@dataclass
class Codebook:
    centroids: np.ndarray  # float32 [k, dim]
    sha256: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])


def sidecar_path(path: str | StoragePath) -> StoragePath:
    path = location(path)
    return path.with_name(path.name + ".json")


def save_codebook(centroids: np.ndarray | torch.Tensor, path: str | StoragePath, meta: dict[str, Any]) -> Codebook:
    """Write `path` (.npy, float32) and its sidecar JSON; return the codebook with its hash."""
    path = location(path)
    if path.suffix != ".npy":
        raise ValueError(f"codebooks are written as .npy, not {path.suffix!r}")
    array = np.ascontiguousarray(torch.as_tensor(centroids).detach().cpu().numpy(), dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    full_meta = {
        **meta,
        "k": int(array.shape[0]),
        "dim": int(array.shape[1]),
        "sha256": digest,
        "file": path.name,
    }
    sidecar_path(path).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Codebook(array, digest, str(path), full_meta)


def load_codebook(path: str | StoragePath) -> Codebook:
    """Read any supported codebook file; checks the sidecar's sha256 when there is one."""
    path = location(path)
    if not path.is_file():
        raise CodebookError(f"no codebook at {path}")
    with local_input(path) as local:
        digest = file_sha256(local)
        centroids = _read_centroids(local)
    if centroids.ndim != 2 or centroids.shape[0] < 1 or not np.issubdtype(centroids.dtype, np.floating):
        raise CodebookError(
            f"{path}: centroids must be a float [k, dim] array, got {centroids.dtype} {centroids.shape}"
        )
    if not np.isfinite(centroids).all():
        raise CodebookError(f"{path}: centroids contain NaN or inf")
    meta: dict[str, Any] = {}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if meta.get("sha256") not in (None, digest):
            raise CodebookError(
                f"{path}: sha256 {digest[:12]} differs from its sidecar's {meta['sha256'][:12]}"
            )
    return Codebook(np.ascontiguousarray(centroids, dtype=np.float32), digest, str(path), meta)


def _read_centroids(path: Path) -> np.ndarray:
    head = path.read_bytes()[:8]
    if head.startswith(b"\x93NUMPY"):
        return np.load(path, allow_pickle=False)
    if head.startswith(b"PK") or path.suffix in (".pt", ".pth"):
        return _centroids_from_torch(safe_torch_load(path), path)
    return read_sklearn_centers(path)


def _centroids_from_torch(obj: Any, path: Path) -> np.ndarray:
    if isinstance(obj, dict):
        for key in ("cluster_centers", "cluster_centers_", "centroids"):
            if key in obj:
                obj = obj[key]
                break
        else:
            raise CodebookError(
                f"{path}: torch file without cluster_centers / centroids (keys: {sorted(obj)[:8]})"
            )
    if isinstance(obj, torch.Tensor):
        return obj.float().numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise CodebookError(f"{path}: cannot read centroids from {type(obj).__name__}")


_COMPRESSED: dict[bytes, Callable[[bytes], bytes]] = {
    b"\x1f\x8b": gzip.decompress,
    b"BZ": bz2.decompress,
    b"\xfd7zXZ": lzma.decompress,
    b"\x78": zlib.decompress,
}


def read_sklearn_centers(path: str | Path) -> np.ndarray:
    """`cluster_centers_` of a joblib- or pickle-saved sklearn (MiniBatch)KMeans, read safely."""
    raw = Path(path).read_bytes()
    for magic, decompress in _COMPRESSED.items():
        if raw.startswith(magic):
            raw = decompress(raw)
            break
    if raw.startswith(b"ZF"):
        raise CodebookError(f"{path}: joblib's pre-0.10 compressed format is not supported")
    try:
        obj = restricted_loads(raw)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as err:
        raise CodebookError(f"{path}: not a codebook this loader reads safely ({err})") from err
    if isinstance(obj, PickledEstimator) and "cluster_centers_" in obj.state:
        return np.asarray(obj.state["cluster_centers_"])
    if isinstance(obj, np.ndarray):
        return obj
    raise CodebookError(
        f"{path}: pickle holds {type(obj).__name__}, not a k-means model with cluster_centers_"
    )
