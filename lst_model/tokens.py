"""One token space shared by text, markers and speech units.

Layout: ``[0, V)`` text BPE ids, then the five markers ``<t>``, ``<s>``, BOS, EOS, PAD, then
``[V + 5, V + 5 + K)`` speech units. Text ids keep their tokenizer value, so a BPE id from a
shard is used as is; a unit u becomes ``unit_offset + u``. One output head covers all of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MARKERS = ("<t>", "<s>", "<bos>", "<eos>", "<pad>")


@dataclass(frozen=True)
class TokenSpace:
    text_vocab_size: int
    n_units: int

    def __post_init__(self) -> None:
        if self.text_vocab_size <= 0 or self.n_units <= 0:
            raise ValueError(f"text vocabulary ({self.text_vocab_size}) and codebook ({self.n_units}) must be positive")

    @property
    def text_start(self) -> int:
        return self.text_vocab_size

    @property
    def speech_start(self) -> int:
        return self.text_vocab_size + 1

    @property
    def bos(self) -> int:
        return self.text_vocab_size + 2

    @property
    def eos(self) -> int:
        return self.text_vocab_size + 3

    @property
    def pad(self) -> int:
        return self.text_vocab_size + 4

    @property
    def unit_offset(self) -> int:
        return self.text_vocab_size + len(MARKERS)

    @property
    def size(self) -> int:
        return self.unit_offset + self.n_units

    def units_to_ids(self, units: np.ndarray) -> np.ndarray:
        units = np.asarray(units, dtype=np.int64)
        if units.size and (units.min() < 0 or units.max() >= self.n_units):
            raise ValueError(f"unit ids must lie in [0, {self.n_units}); got [{units.min()}, {units.max()}]")
        return units + self.unit_offset

    def text_to_ids(self, bpe_ids: np.ndarray | list[int]) -> np.ndarray:
        ids = np.asarray(bpe_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.text_vocab_size):
            raise ValueError(f"BPE ids must lie in [0, {self.text_vocab_size})")
        return ids

    def is_unit(self, token_id: int) -> bool:
        return self.unit_offset <= token_id < self.size

    def to_dict(self) -> dict[str, int]:
        return {"text_vocab_size": self.text_vocab_size, "n_units": self.n_units}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenSpace:
        return cls(int(data["text_vocab_size"]), int(data["n_units"]))

    @classmethod
    def from_dataset_json(cls, data: dict[str, Any] | str | Path) -> TokenSpace:
        """Token space of a shard set, from its ``dataset.json`` (a path or the parsed dict).

        Reads the tokenizer vocabulary size and the codebook size k. Accepted shapes (the
        shard writer's, and the minimal one used before it existed):
        ``{"tokenizer": {"vocab_size": V}, "units": {"k": K}}``; a ``"config"`` section with
        the same ``tokenizer``/``units`` keys (the resolved RunConfig) is used as a fallback.
        """
        if not isinstance(data, dict):
            data = json.loads(Path(data).read_text(encoding="utf-8"))
        return cls(_find_int(data, "tokenizer", "vocab_size"), _find_int(data, "units", "k"))


def _find_int(data: dict[str, Any], section: str, key: str) -> int:
    for where in (data, data.get("config") or {}, data.get("models") or {}):
        value = (where.get(section) or {}).get(key) if isinstance(where.get(section), dict) else None
        if value is not None:
            return int(value)
    raise KeyError(f"dataset.json has no {section}.{key} (looked at top level, config and models)")
