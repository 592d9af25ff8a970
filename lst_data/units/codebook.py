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
  textlesslib's `km.bin`) or by plain pickle: `RestrictedUnpickler` resolves numpy's
  array/dtype/scalar reconstruction (object arrays refused) and inert stand-ins for
  everything else; sklearn is never imported or instantiated, and only `cluster_centers_`
  is read.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lst_data.ssl_checkpoints import safe_torch_load


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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_codebook(centroids: np.ndarray | torch.Tensor, path: str | Path, meta: dict[str, Any]) -> Codebook:
    """Write `path` (.npy, float32) and its sidecar JSON; return the codebook with its hash."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"codebooks are written as .npy, not {path.suffix!r}")
    array = np.ascontiguousarray(torch.as_tensor(centroids).detach().cpu().numpy(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    tmp.replace(path)
    digest = sha256_file(path)
    full_meta = {
        **meta,
        "k": int(array.shape[0]),
        "dim": int(array.shape[1]),
        "sha256": digest,
        "file": path.name,
    }
    sidecar_path(path).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Codebook(array, digest, str(path), full_meta)


def load_codebook(path: str | Path) -> Codebook:
    """Read any supported codebook file; checks the sidecar's sha256 when there is one."""
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"no codebook at {path}")
    digest = sha256_file(path)
    centroids = _read_centroids(path)
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


# ---------------------------------------------------------------- sklearn / joblib pickles


class _Estimator:
    """Stand-in for a pickled sklearn estimator: holds its state, runs none of its code."""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


class _Inert:
    """Any other global in a codebook pickle (e.g. a RandomState in an estimator's state):
    calling or building it only records the arguments; nothing named in the file runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _JoblibArrayWrapper:
    """Stand-in for joblib.numpy_pickle.NumpyArrayWrapper: its array bytes follow in the stream."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("numpy _reconstruct of a non-ndarray class")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


def _scalar(dtype: np.dtype, data: bytes = b"") -> Any:
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy object scalars are refused")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buffer: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are refused")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _dtype(spec: str, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align=align, copy=copy)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object dtypes are refused")
    return dtype


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _JoblibArrayWrapper,
    ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"): _JoblibArrayWrapper,
    ("copyreg", "_reconstructor"): lambda cls, base, state: cls.__new__(cls),
}
_ESTIMATOR_MODULES = ("sklearn.cluster._kmeans", "sklearn.cluster.k_means_", "sklearn.cluster._k_means")
_ESTIMATOR_NAMES = ("KMeans", "MiniBatchKMeans")


class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: joblib's array layout needs load_build
    """Unpickles numpy arrays and sklearn k-means state; nothing else named in the file runs.

    numpy's reconstruction helpers are wrapped to refuse object arrays; sklearn's k-means
    classes and joblib's array wrapper resolve to stand-ins; every other global resolves to
    `_Inert`, so an estimator's odd attributes do not break loading and a planted
    `os.system` is never called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in _ESTIMATOR_MODULES and name in _ESTIMATOR_NAMES:
            return _Estimator
        return _Inert

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if (
            isinstance(inst, np.ndarray)
            and isinstance(state, tuple)
            and len(state) == 5
            and state[2].hasobject
        ):
            raise pickle.UnpicklingError("object arrays are refused")
        super().load_build()
        if isinstance(inst, _JoblibArrayWrapper):
            self.stack[-1] = self._read_joblib_array(inst.state)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    def _read_joblib_array(self, state: dict[str, Any]) -> np.ndarray:
        dtype = state["dtype"]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError("joblib array with an object dtype is refused")
        shape = tuple(int(x) for x in state["shape"])
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self.read(1)[0]
            self.read(padding)
        count = int(np.prod(shape)) if shape else 1
        data = self.read(count * dtype.itemsize)
        array = np.frombuffer(data, dtype=dtype, count=count).copy()
        return array.reshape(shape[::-1]).T if state.get("order") == "F" else array.reshape(shape)


_COMPRESSED = {
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
        obj = RestrictedUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as err:
        raise CodebookError(f"{path}: not a codebook this loader reads safely ({err})") from err
    if isinstance(obj, _Estimator) and "cluster_centers_" in obj.state:
        return np.asarray(obj.state["cluster_centers_"])
    if isinstance(obj, np.ndarray):
        return obj
    raise CodebookError(
        f"{path}: pickle holds {type(obj).__name__}, not a k-means model with cluster_centers_"
    )


# ---------------------------------------------------------------- assignment


class NearestCentroid:
    """argmin_j ||x - c_j||^2 as argmin_j (||c_j||^2 - 2 x . c_j): one matrix product.

    ||x||^2 is the same for every j and is left out. Works on whatever device the
    centroids were moved to; features are moved there if they are elsewhere.
    """

    def __init__(self, centroids: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32, device=device)
        self.half_norms = 0.5 * (self.centroids * self.centroids).sum(dim=1)

    @torch.inference_mode()
    def __call__(self, features: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """int64 [n] nearest-centroid ids of float [n, dim] features.

        Rows go through in chunks so the [chunk, k] score block stays small (8 MB for k = 500
        on CPU); GPUs get larger chunks to amortise kernel launches.
        """
        features = features.to(self.centroids.device, torch.float32)
        chunk = chunk or (65536 if self.centroids.device.type == "cuda" else 4096)
        out = torch.empty(features.shape[0], dtype=torch.long, device=self.centroids.device)
        for start in range(0, features.shape[0], chunk):
            block = features[start : start + chunk]
            scores = torch.addmm(self.half_norms, block, self.centroids.T, beta=1.0, alpha=-1.0)
            out[start : start + chunk] = scores.argmin(dim=1)
        return out
