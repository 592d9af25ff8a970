"""Peak memory of the tensors torch allocates on any device, CPU included (torch has no
CPU memory statistics): a dispatch mode adds each new output storage's bytes and subtracts
them when the last tensor on that storage is freed."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """`with PeakMemory() as memory: ...` then `memory.peak` (bytes of the largest set of
    tensors alive at once that were created inside the block)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tensors_on: dict[int, int] = {}

    def _release(self, storage: int, nbytes: int) -> None:
        self._tensors_on[storage] -= 1
        if not self._tensors_on[storage]:
            del self._tensors_on[storage]
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key not in self._tensors_on:
                self._tensors_on[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._tensors_on[key] += 1
            weakref.finalize(tensor, self._release, key, nbytes)
        return out
