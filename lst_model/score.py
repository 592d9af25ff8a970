"""Multiple-choice scoring by log-likelihood of each continuation given the prompt.

An item is ``prompt`` + several ``endings`` in one modality: unit ids (speech -> speech) or
BPE ids (text -> text), in the shard's raw id spaces. Each ending is scored as the sum of
log p(token | everything before it) over its tokens, and per token (the sum / its length,
which does not favour short endings); the prediction is the ending with the highest score.

Sequences are ``BOS <s> prompt-units ending-units`` or ``BOS <t> prompt-bpe ending-bpe``.
Speech is patched statically (p = data.patch_size) over prompt + ending as one stream, as
the paper evaluates, so no aligner is needed at inference; the flat baseline puts every
token in its own position.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lst_data.core.errors import UserError
from lst_model.config import RunSpec
from lst_model.model import Batch, token_log_probs
from lst_model.sequences import Example, static_patch_lengths
from lst_model.tokens import TokenSpace

MODES = ("speech", "text")


class InvalidItem(UserError, ValueError):
    """A task item that cannot be scored (user data, named by its id)."""


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    mode: str  # "speech" (unit ids) or "text" (BPE ids)
    prompt: list[int]
    endings: list[list[int]]
    label: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidItem(f"item {self.id}: mode must be one of {MODES}, got {self.mode!r}")
        if not 0 <= self.label < len(self.endings) or any(len(e) == 0 for e in self.endings):
            raise InvalidItem(f"item {self.id}: needs non-empty endings and a label among them")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ChoiceItem:
        return cls(str(data["id"]), data["mode"], [int(t) for t in data["prompt"]],
                   [[int(t) for t in e] for e in data["endings"]], int(data["label"]))


@dataclass(frozen=True)
class ItemScore:
    id: str
    mode: str
    label: int
    sums: list[float]
    lengths: list[int]

    @property
    def per_token(self) -> list[float]:
        return [s / n for s, n in zip(self.sums, self.lengths, strict=True)]

    @property
    def correct_sum(self) -> bool:
        return int(np.argmax(self.sums)) == self.label

    @property
    def correct_per_token(self) -> bool:
        return int(np.argmax(self.per_token)) == self.label


def write_items(items: Iterable[ChoiceItem], path: str | Path) -> Path:
    Path(path).write_text("".join(json.dumps(i.to_json()) + "\n" for i in items), encoding="utf-8")
    return Path(path)


def read_items(path: str | Path) -> list[ChoiceItem]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ChoiceItem.from_json(json.loads(line)) for line in lines if line.strip()]


def choice_example(item: ChoiceItem, ending: Sequence[int], space: TokenSpace, patch_size: int) -> tuple[Example, int]:
    """The scored sequence of one ending, and the index of the ending's first token."""
    if item.mode == "speech":
        body = space.units_to_ids(np.concatenate([item.prompt, ending]).astype(np.int64))
        head = [space.bos, space.speech_start]
        lengths = [1, 1, *static_patch_lengths(len(body), patch_size)]
    else:
        body = space.text_to_ids([*item.prompt, *ending])
        head = [space.bos, space.text_start]
        lengths = [1] * (len(body) + 2)
    tokens = np.concatenate([head, body]).astype(np.int64)
    return Example(tokens, np.array(lengths, dtype=np.int64), item.mode), len(head) + len(item.prompt)


@torch.no_grad()
def score_items(
    model: nn.Module,
    spec: RunSpec,
    space: TokenSpace,
    items: Sequence[ChoiceItem],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> list[ItemScore]:
    if spec.data.eval_patching != "static":
        raise InvalidItem("scoring patches speech statically; aligned evaluation needs alignments the items do not carry")
    model.eval()
    flat = spec.model.kind == "baseline"
    jobs = [(i, e, *choice_example(item, ending, space, spec.data.patch_size))
            for i, item in enumerate(items) for e, ending in enumerate(item.endings)]
    sums = {(i, e): 0.0 for i, e, _, _ in jobs}
    for begin in range(0, len(jobs), batch_size):
        chunk = jobs[begin : begin + batch_size]
        batch = Batch.from_examples([ex for _, _, ex, _ in chunk], space.pad, flat).to(device)
        log_probs = token_log_probs(model(batch), batch.tokens)  # [B, N-1]: entry t-1 scores token t
        for row, (i, e, ex, first) in enumerate(chunk):
            sums[(i, e)] = float(log_probs[row, first - 1 : len(ex.tokens) - 1].sum())
    return [
        ItemScore(item.id, item.mode, item.label, [sums[(i, e)] for e in range(len(item.endings))], [len(x) for x in item.endings])
        for i, item in enumerate(items)
    ]


def accuracy(scores: Sequence[ItemScore]) -> dict[str, float | int]:
    """Accuracy by summed and by per-token log-likelihood (and the item count)."""
    n = len(scores)
    return {
        "n": n,
        "acc_sum": sum(s.correct_sum for s in scores) / n if n else float("nan"),
        "acc_per_token": sum(s.correct_per_token for s in scores) / n if n else float("nan"),
    }
