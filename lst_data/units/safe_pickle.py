"""A pickle loader for published k-means codebooks that runs nothing named in the file.

fairseq's `learn_kmeans.py` and textlesslib save sklearn KMeans / MiniBatchKMeans with
joblib (or plain pickle). `RestrictedUnpickler` resolves numpy's array/dtype/scalar
reconstruction (object arrays refused), sklearn's k-means classes and joblib's array
wrapper to inert stand-ins, and every other global to `_Inert`: sklearn is never imported
or instantiated, and a planted `os.system` is never called. Only plain data comes out.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np


class PickledEstimator:
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


def _frombuffer(buffer: Any, dtype: np.dtype, shape: Any, order: Literal["C", "F", "A"]) -> np.ndarray:
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

    # The pure-Python unpickler's internals used here, which typeshed's stub of it leaves out.
    stack: list[Any]
    read: Callable[[int], bytes]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in _ESTIMATOR_MODULES and name in _ESTIMATOR_NAMES:
            return PickledEstimator
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
        super().load_build()  # type: ignore[misc]  # typeshed's `pickle._Unpickler` lacks load_build
        if isinstance(inst, _JoblibArrayWrapper):
            self.stack[-1] = self._read_joblib_array(inst.state)

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
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


def restricted_loads(data: bytes) -> Any:
    """The object pickled in `data`, read by `RestrictedUnpickler` (pickle.UnpicklingError if refused)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()
