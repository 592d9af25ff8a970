"""One token space shared by text, markers and speech units.

Layout: ``[0, V)`` text BPE ids, then the five markers ``<t>``, ``<s>``, BOS, EOS, PAD, then
``[V + 5, V + 5 + K)`` speech units. Text ids keep their tokenizer value, so a BPE id from a
shard is used as is; a unit u becomes ``unit_offset + u``. A bpe_speechllm model's space also
has the pieces of its unit BPE (`lst_model.unit_bpe`) after the units: piece p becomes
``piece_offset + p``. One output head covers all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lst_model.unit_pieces import UnitBPE

MARKERS = ("<t>", "<s>", "<bos>", "<eos>", "<pad>")


@dataclass(frozen=True)
class TokenSpace:
    text_vocab_size: int
    n_units: int
    # What gave the ids their meaning: sha256 of the BPE model and of the codebook (None where
    # not recorded: older checkpoints and shard sets). Equality is by size; `differences` also
    # compares these where both sides know them.
    tokenizer_sha256: str | None = field(default=None, compare=False)
    codebook_sha256: str | None = field(default=None, compare=False)
    # bpe_speechllm: the BPE whose pieces (merged unit sequences) follow the units
    unit_bpe: UnitBPE | None = None

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
    def piece_offset(self) -> int:
        return self.unit_offset + self.n_units

    @property
    def n_pieces(self) -> int:
        return 0 if self.unit_bpe is None else self.unit_bpe.n_pieces

    @property
    def size(self) -> int:
        return self.piece_offset + self.n_pieces

    def units_to_ids(self, units: Sequence[int] | np.ndarray) -> np.ndarray:
        units = np.asarray(units, dtype=np.int64)
        if units.size and (units.min() < 0 or units.max() >= self.n_units):
            raise ValueError(f"unit ids must lie in [0, {self.n_units}); got [{units.min()}, {units.max()}]")
        return units + self.unit_offset

    def text_to_ids(self, bpe_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(bpe_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.text_vocab_size):
            raise ValueError(f"BPE ids must lie in [0, {self.text_vocab_size})")
        return ids

    def is_unit(self, token_id: int) -> bool:
        return self.unit_offset <= token_id < self.piece_offset

    def to_dict(self) -> dict[str, Any]:
        """The space as JSON; a unit BPE by its piece count and sha256 (its model travels beside it)."""
        hashes = {k: v for k, v in (("tokenizer_sha256", self.tokenizer_sha256),
                                    ("codebook_sha256", self.codebook_sha256)) if v is not None}
        pieces = {} if self.unit_bpe is None else {"unit_bpe": {"pieces": self.n_pieces, "sha256": self.unit_bpe.sha256}}
        return {"text_vocab_size": self.text_vocab_size, "n_units": self.n_units, **hashes, **pieces}

    @classmethod
    def from_dict(cls, data: dict[str, Any], unit_bpe_model: bytes | None = None) -> TokenSpace:
        """The space `to_dict` wrote; `unit_bpe_model` (the serialized unit BPE) when it names one."""
        named = data.get("unit_bpe")
        unit_bpe = None
        if named is not None:
            if unit_bpe_model is None:
                raise ValueError("the token space names a unit BPE, but its model is missing")
            unit_bpe = UnitBPE(unit_bpe_model)
            if unit_bpe.sha256 != named["sha256"]:
                raise ValueError(f"the unit BPE model's sha256 {unit_bpe.sha256[:12]} != the token space's {named['sha256'][:12]}")
        return cls(int(data["text_vocab_size"]), int(data["n_units"]), data.get("tokenizer_sha256"),
                   data.get("codebook_sha256"), unit_bpe)

    def with_unit_bpe(self, unit_bpe: UnitBPE) -> TokenSpace:
        """This space with the pieces of `unit_bpe` after the units (a bpe_speechllm model's space)."""
        return dataclasses.replace(self, unit_bpe=unit_bpe)

    def differences(self, other: TokenSpace) -> list[str]:
        """How `other` differs from this space: sizes, and tokenizer or codebook hashes and unit BPEs that both know."""
        found = []
        if (self.text_vocab_size, self.n_units) != (other.text_vocab_size, other.n_units):
            found.append(f"vocabulary {self.text_vocab_size} + {self.n_units} units != "
                         f"{other.text_vocab_size} + {other.n_units}")
        for name, what in (("tokenizer_sha256", "tokenizer"), ("codebook_sha256", "codebook")):
            ours, theirs = getattr(self, name), getattr(other, name)
            if ours and theirs and ours != theirs:
                found.append(f"{what} sha256 {ours[:12]} != {theirs[:12]}")
        if self.unit_bpe is not None and other.unit_bpe is not None and self.unit_bpe != other.unit_bpe:
            found.append(f"unit BPE sha256 {self.unit_bpe.sha256[:12]} != {other.unit_bpe.sha256[:12]}")
        return found

    @classmethod
    def from_dataset_json(cls, data: dict[str, Any]) -> TokenSpace:
        """Token space of a shard set, from its parsed ``dataset.json`` (read it with
        `lst_data.format.layout.read_dataset`, or `lst_model.data.load_token_space`).

        Reads the tokenizer vocabulary size and the codebook size k. Accepted shapes (the
        shard writer's, and the minimal one used before it existed):
        ``{"tokenizer": {"vocab_size": V}, "units": {"k": K}}``; a ``"config"`` section with
        the same ``tokenizer``/``units`` keys (the resolved RunConfig) is used as a fallback.
        """
        hashes = data.get("hashes")
        if not isinstance(hashes, dict):
            hashes = {}
        tokenizers = hashes.get("tokenizer") or []
        codebooks = {c.get("codebook_hash") for c in hashes.get("codebook") or [] if isinstance(c, dict)}
        return cls(_find_int(data, "tokenizer", "vocab_size"), _find_int(data, "units", "k"),
                   tokenizers[0] if len(tokenizers) == 1 else None,
                   next(iter(codebooks)) if len(codebooks) == 1 else None)


def _find_int(data: dict[str, Any], section: str, key: str) -> int:
    for where in (data, data.get("config") or {}, data.get("models") or {}):
        value = (where.get(section) or {}).get(key) if isinstance(where.get(section), dict) else None
        if value is not None:
            return int(value)
    raise KeyError(f"dataset.json has no {section}.{key} (looked at top level, config and models)")


OVERRIDE_FLAG = "--allow-other-token-space"


def check_same_space(model: TokenSpace, shards: TokenSpace, where: str, allow_other: bool = False) -> None:
    """A ConfigError (one line) when the shards' ids mean other tokens than the model's: other sizes
    always; another tokenizer or codebook of the same sizes unless `allow_other` (experts)."""
    from lst_data.core.errors import ConfigError

    differences = model.differences(shards)
    sizes_differ = (model.text_vocab_size, model.n_units) != (shards.text_vocab_size, shards.n_units)
    if differences and (sizes_differ or not allow_other):
        hint = "" if sizes_differ else f"; {OVERRIDE_FLAG} uses them anyway (their ids then mean other pieces or units)"
        raise ConfigError(f"{where}: the shards' token space is not the model's (model != shards: {'; '.join(differences)}){hint}")

