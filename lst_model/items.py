"""Multiple-choice items: one JSONL format for every modality pair (S→S, T→T, S→T, T→S);
and minimal pairs (`MinimalPair`: a good and a bad side, no prompt), whose lines are
`{"id": "...", "good": SIDE, "bad": SIDE, "sources": [...]}` with sides as below.

An item is a prompt and two or more endings; every ending has one modality, the prompt may
have the other. Each side carries its tokens in the shard's raw id spaces (unit ids for
speech, BPE ids for text), its normalized transcript, and, for speech, the aligned patch
lengths of its audio under each aligned strategy (empty when the side was not aligned: it
can then only be scored with static patches). `voice` is the speaker or TTS voice of all
the speech sides of the item; `sources` are the normalized transcripts the item was made
from, which `score` checks against the model's training transcripts.

One line per item, schema `schemas/choice_item.v1.json`:

    {"id": "...", "pair": "s2t", "label": 1, "voice": "spk_gb",
     "sources": ["the river was cold ..."],
     "prompt": {"modality": "speech", "tokens": [...], "text": "...", "patches": {"word_sil_sep": [...]}},
     "endings": [{"modality": "text", "tokens": [...], "text": "...", "patches": {}}, ...]}

Reading trusts nothing: a line over `MAX_LINE_BYTES` or of the wrong shape is an
`InvalidItem` naming the file and line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lst_data.core.errors import UserError
from lst_data.format.records import parse_json

MODALITIES = ("speech", "text")
PAIRS = ("s2s", "t2t", "s2t", "t2s")
ALIGNED_STRATEGIES = ("word_sil_sep", "word_sil_merged", "bpe")
MAX_LINE_BYTES = 16 * 2**20
MAX_ENDINGS = 64


class InvalidItem(UserError, ValueError):
    """A task item that cannot be scored (user data, named by its id or line)."""


def pair_name(prompt_modality: str, ending_modality: str) -> str:
    """'s2t' for a speech prompt with text endings."""
    return f"{prompt_modality[0]}2{ending_modality[0]}"


def pair_label(pair: str) -> str:
    """'S→T' for 's2t' (reports and plots)."""
    return f"{pair[0].upper()}→{pair[2].upper()}"


@dataclass(frozen=True)
class Side:
    """A prompt or an ending."""

    modality: str
    tokens: tuple[int, ...]
    text: str = ""
    patches: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidItem(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.modality == "text" and self.patches:
            raise InvalidItem("a text side has no speech patches")
        for strategy, lengths in self.patches.items():
            if strategy not in ALIGNED_STRATEGIES:
                raise InvalidItem(f"patches: unknown aligned strategy {strategy!r}; known: {', '.join(ALIGNED_STRATEGIES)}")
            if any(n <= 0 for n in lengths) or sum(lengths) != len(self.tokens):
                raise InvalidItem(f"patches.{strategy}: lengths must be positive and sum to the {len(self.tokens)} tokens")

    def to_json(self) -> dict[str, Any]:
        return {"modality": self.modality, "tokens": list(self.tokens), "text": self.text,
                "patches": {k: list(v) for k, v in self.patches.items()}}

    @classmethod
    def from_json(cls, data: Any) -> Side:
        if not isinstance(data, dict):
            raise InvalidItem("a side must be an object")
        patches = data.get("patches") or {}
        if not isinstance(patches, dict):
            raise InvalidItem("patches must be an object of strategy -> lengths")
        return cls(_string(data, "modality"), _ints(data.get("tokens"), "tokens"), str(data.get("text", "")),
                   {str(k): _ints(v, f"patches.{k}") for k, v in patches.items()})


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    prompt: Side
    endings: tuple[Side, ...]
    label: int
    voice: str | None = None
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.endings) < 2 or len(self.endings) > MAX_ENDINGS:
            raise InvalidItem(f"item {self.id}: needs 2 to {MAX_ENDINGS} endings, got {len(self.endings)}")
        if len({e.modality for e in self.endings}) != 1:
            raise InvalidItem(f"item {self.id}: all endings must have one modality")
        if any(not e.tokens for e in self.endings) or not self.prompt.tokens:
            raise InvalidItem(f"item {self.id}: the prompt and every ending need tokens")
        if not 0 <= self.label < len(self.endings):
            raise InvalidItem(f"item {self.id}: label {self.label} is not among its {len(self.endings)} endings")

    @property
    def pair(self) -> str:
        return pair_name(self.prompt.modality, self.endings[0].modality)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pair": self.pair, "label": self.label, "voice": self.voice, "sources": list(self.sources),
                "prompt": self.prompt.to_json(), "endings": [e.to_json() for e in self.endings]}

    @classmethod
    def from_json(cls, data: Any) -> ChoiceItem:
        if not isinstance(data, dict):
            raise InvalidItem("an item must be a JSON object")
        item_id = _string(data, "id")
        try:
            if "endings" not in data and "good" in data:
                raise InvalidItem("this is a minimal pair, not a multiple-choice item: score it with --mode minimal-pairs")
            endings = data.get("endings")
            if not isinstance(endings, list):
                raise InvalidItem("endings must be a list")
            sources = _sources(data)
            label = data.get("label")
            if type(label) is not int:
                raise InvalidItem("label must be an integer")
            voice = data.get("voice")
            item = cls(item_id, Side.from_json(data.get("prompt")), tuple(Side.from_json(e) for e in endings[: MAX_ENDINGS + 1]),
                       label, None if voice is None else str(voice), sources)
        except InvalidItem as err:
            message = str(err)
            raise InvalidItem(message if message.startswith("item ") else f"item {item_id}: {message}") from None
        if "pair" in data and data["pair"] != item.pair:
            raise InvalidItem(f"item {item_id}: pair {data['pair']!r} does not match its sides ({item.pair})")
        return item


@dataclass(frozen=True)
class MinimalPair:
    """Two sides of one modality, `good` the one a model should find more likely (sWUGGY /
    sBLIMP style: a word vs a non-word, a sentence vs an ungrammatical one); no prompt.
    `sources` as an item's (what `score` checks against the training transcripts)."""

    id: str
    good: Side
    bad: Side
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.good.modality != self.bad.modality:
            raise InvalidItem(f"pair {self.id}: good and bad must have one modality, got {self.good.modality} "
                              f"and {self.bad.modality}")
        if not self.good.tokens or not self.bad.tokens:
            raise InvalidItem(f"pair {self.id}: good and bad need tokens")

    @property
    def modality(self) -> str:
        return self.good.modality

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "good": self.good.to_json(), "bad": self.bad.to_json(), "sources": list(self.sources)}

    @classmethod
    def from_json(cls, data: Any) -> MinimalPair:
        if not isinstance(data, dict):
            raise InvalidItem("a minimal pair must be a JSON object")
        pair_id = _string(data, "id")
        try:
            if "endings" in data and "good" not in data:
                raise InvalidItem("this is a multiple-choice item, not a minimal pair: score it without --mode minimal-pairs")
            sides = {key: _named_side(data, key) for key in ("good", "bad")}
            pair = cls(pair_id, sides["good"], sides["bad"], _sources(data))
        except InvalidItem as err:
            message = str(err)
            raise InvalidItem(message if message.startswith("pair ") else f"pair {pair_id}: {message}") from None
        return pair


def _named_side(data: dict, key: str) -> Side:
    if key not in data:
        raise InvalidItem(f"{key} is missing (a side: {{modality, tokens, text, patches}})")
    try:
        return Side.from_json(data[key])
    except InvalidItem as err:
        raise InvalidItem(f"{key}: {err}") from None


def _sources(data: dict) -> tuple[str, ...]:
    sources = data.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise InvalidItem("sources must be a list of strings")
    return tuple(sources)


def _string(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidItem(f"{key} must be a non-empty string")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v < 2**31 for v in value):
        raise InvalidItem(f"{what} must be a list of non-negative integers")
    return tuple(value)


def write_items(items: Iterable[ChoiceItem], path: str | Path) -> Path:
    return write_jsonl((item.to_json() for item in items), path, ensure_ascii=False)


def write_jsonl(rows: Iterable[Any], path: str | Path, *, ensure_ascii: bool = True) -> Path:
    """One JSON value a line (items, per-item scores, per-utterance results, dropped items)."""
    import json

    with Path(path).open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")
    return Path(path)


def pair_counts_line(items: Iterable[ChoiceItem], pairs: Sequence[str], path: str | Path) -> str:
    """`items: s2s N, t2t N, ... -> PATH`: how many items of each pair a task file holds."""
    counts = Counter(item.pair for item in items)
    return "items: " + ", ".join(f"{pair} {counts[pair]}" for pair in pairs) + f" -> {path}"


def jsonl_lines(path: str | Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line; a line over `max_bytes` is refused
    after reading at most that much of it, so a file without line ends never fills memory."""
    with Path(path).open("rb") as lines:
        number = 0
        while line := lines.readline(max_bytes + 1):
            number += 1
            if not line.strip():
                continue
            try:
                yield number, parse_json(line, max_bytes=max_bytes, what="line")
            except ValueError as err:
                raise InvalidItem(f"{path}:{number}: {err}") from None


def iter_items(path: str | Path) -> Iterator[ChoiceItem]:
    """Items of a JSONL file, one line at a time (bounded memory)."""
    for number, data in jsonl_lines(path):
        try:
            yield ChoiceItem.from_json(data)
        except InvalidItem as err:
            raise InvalidItem(f"{path}:{number}: {err}") from None


def read_items(path: str | Path) -> list[ChoiceItem]:
    return list(iter_items(path))


def read_minimal_pairs(path: str | Path) -> list[MinimalPair]:
    """The minimal pairs of a JSONL file (one `MinimalPair.to_json` a line); a malformed line
    or an id used twice is an `InvalidItem` naming the file and line."""
    pairs: list[MinimalPair] = []
    first_line: dict[str, int] = {}
    for number, data in jsonl_lines(path):
        try:
            pair = MinimalPair.from_json(data)
        except InvalidItem as err:
            raise InvalidItem(f"{path}:{number}: {err}") from None
        if pair.id in first_line:
            raise InvalidItem(f"{path}:{number}: pair {pair.id}: id already used on line {first_line[pair.id]}")
        first_line[pair.id] = number
        pairs.append(pair)
    return pairs
