"""Continuation items from a shard set's own held-out utterances, in all four modality pairs.

For each held-out utterance (`lst_model.data.split_heldout`: by canonical transcript) with
enough words, one question: which ending follows the prompt?

- prompt: the utterance's first words (half of them, at least `min_prompt_words`); in speech
  frames [0, F(cut)) where F(k) is word k's first frame, so it keeps the leading silence and
  the pause after its last word, as a training speech segment does;
- true ending: its next `continuation_words` words, frames [F(cut), F(cut + k)) (F(n) = n_frames);
- distractors (`n_endings - 1`): as many words from *other held-out utterances of the same
  speaker*, so voice, channel and recording conditions cannot tell the endings apart, and
  neither can familiarity: a distractor is never a training utterance. (An earlier version
  filled up from the speaker's training utterances; on the demo shards both models then
  picked the memorised distractor in every item, accuracy 0/4 in all four pairs, so the task
  measured memorisation.) A distractor never starts at its utterance's first word (no true
  ending does, and the leading silence would give it away), and it ends at its utterance's
  end exactly when the true ending does (same trailing-silence cue on both). Utterances
  with the prompt's transcript and spans with the true ending's words are never distractors.

The question is rendered in every requested pair (s2s, t2t, s2t, t2s) with one label
position (random by `seed`), so the pairs differ only in modality. Speech sides carry their
units and the record's aligned patches (`lst_data.format.patching`, cropped to the span) under every
aligned strategy; text sides the span's BPE ids. `text` is the span's words, `voice` the
speaker, `sources` the canonical transcript of the prompt's (held-out) utterance.

An utterance that gives no item is counted under its reason in the returned skips:
`too_few_words`, `speaker_has_too_few_heldout_utterances`, `empty_span` (a span without frames or
without BPE pieces).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from lst_data.format.patching import patch_lengths
from lst_data.format.records import SampleRecord
from lst_model.config import DataConfig
from lst_model.data import canonical_transcript, is_heldout, load_records
from lst_model.items import ALIGNED_STRATEGIES, PAIRS, ChoiceItem, Side, pair_counts_line, write_items
from lst_model.sequences import crop_patch_lengths

log = logging.getLogger(__name__)

class Utterance:
    """A record with what spans of it need: word starts, BPE ids per word, aligned patches
    (the sides of corpus items and of `lst_model.minimal_pairs`)."""

    def __init__(self, record: SampleRecord) -> None:
        self.record = record
        self.canonical = canonical_transcript(record.text)
        self.starts = [0] + [w.start_frame for w in record.words[1:]] + [record.n_frames]
        self.pieces: dict[int, list[int]] = defaultdict(list)
        for piece in record.bpe:
            self.pieces[piece.word_index].append(piece.id)

    @cached_property
    def patches(self) -> dict[str, list[int]]:
        """The record's aligned patches (computed only for utterances that make a side)."""
        patches = {}
        for strategy in ALIGNED_STRATEGIES:
            try:
                patches[strategy] = patch_lengths(self.record, strategy)
            except ValueError:  # spans that do not tile (e.g. words without BPE): that strategy is left out
                log.warning("%s: no %s patches, its items score with the others or static only", self.record.id, strategy)
        return patches

    @property
    def n_words(self) -> int:
        return len(self.record.words)

    def side(self, modality: str, first: int, stop: int) -> Side | None:
        """Words [first, stop) in one modality; None when the span is empty there."""
        words = " ".join(w.word for w in self.record.words[first:stop])
        if modality == "text":
            ids = [i for w in range(first, stop) for i in self.pieces.get(w, [])]
            return Side("text", tuple(ids), words) if ids else None
        begin, end = self.starts[first], self.starts[stop]
        if end <= begin:
            return None
        patches = {s: tuple(crop_patch_lengths(lengths, begin, end)) for s, lengths in self.patches.items()}
        return Side("speech", tuple(int(u) for u in self.record.units[begin:end]), words, patches)

    def span_words(self, first: int, stop: int) -> tuple[str, ...]:
        return tuple(w.word for w in self.record.words[first:stop])


def corpus_items(
    records: Sequence[SampleRecord],
    heldout_fraction: float,
    *,
    pairs: Sequence[str] = PAIRS,
    n_endings: int = 2,
    seed: int = 0,
    continuation_words: int = 3,
    min_prompt_words: int = 3,
) -> tuple[list[ChoiceItem], dict[str, int]]:
    """Items of the held-out utterances of `records` (split as training splits them), and the
    number of held-out utterances that gave none, by reason (see the module doc)."""
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        raise ValueError(f"pairs must be a non-empty subset of {PAIRS}, got {list(pairs)}")
    if n_endings < 2:
        raise ValueError(f"n_endings must be >= 2, got {n_endings}")
    k = continuation_words
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    heldout: list[Utterance] = []
    for record in records:
        if is_heldout(record, heldout_fraction):
            utterance = Utterance(record)
            by_speaker[record.speaker].append(utterance)
            heldout.append(utterance)
    rng = np.random.default_rng(seed)
    items: list[ChoiceItem] = []
    skips: Counter[str] = Counter()
    for utterance in heldout:
        n = utterance.n_words
        if n < min_prompt_words + k:
            skips["too_few_words"] += 1
            continue
        cut = min(max(min_prompt_words, n // 2), n - k)
        at_end = cut + k == n
        true_words = utterance.span_words(cut, cut + k)
        pool = by_speaker[utterance.record.speaker]
        distractors: list[tuple[Utterance, int]] = []
        for other in (pool[int(i)] for i in rng.permutation(len(pool))):
            if len(distractors) == n_endings - 1:
                break
            if other.canonical == utterance.canonical or other.n_words < k + (1 if at_end else 2):
                continue
            start = other.n_words - k if at_end else int(rng.integers(1, other.n_words - k))
            words = other.span_words(start, start + k)
            if words == true_words or any(words == o.span_words(s, s + k) for o, s in distractors):
                continue
            distractors.append((other, start))
        if len(distractors) < n_endings - 1:
            skips["speaker_has_too_few_heldout_utterances"] += 1
            continue
        label = int(rng.integers(n_endings))
        made = [_item(utterance, pair, cut, k, distractors, label) for pair in pairs]
        complete = [item for item in made if item is not None]
        if len(complete) < len(made):
            skips["empty_span"] += 1
        else:
            items.extend(complete)
    return items, dict(skips)


def build_corpus_task(shard_dir: str | Path, pairs: Sequence[str], out: str | Path, *, heldout_fraction: float | None = None,
                      n_endings: int = 2, seed: int = 0, limit: int | None = None) -> list[str]:
    """`lst-model build-task` without --input: the items of the shard set's held-out utterances
    (`corpus_items`; the first `limit` of each pair) written to `out`; the lines it prints: items
    per pair, and the held-out utterances that gave none, by reason. `heldout_fraction` must be
    the training run's (default: the data.heldout_fraction default)."""
    fraction = DataConfig().heldout_fraction if heldout_fraction is None else heldout_fraction
    items, skips = corpus_items(load_records(shard_dir), fraction, pairs=pairs, n_endings=n_endings, seed=seed)
    if limit is not None:
        items = items[: limit * len(pairs)]
    write_items(items, out)
    return [pair_counts_line(items, pairs, out),
            "held-out utterances without an item: "
            + (", ".join(f"{reason} {n}" for reason, n in sorted(skips.items())) if skips else "none")]


def _item(utterance: Utterance, pair: str, cut: int, k: int, distractors: list[tuple[Utterance, int]],
          label: int) -> ChoiceItem | None:
    """The question of `utterance` in one pair; None when one of its spans is empty in that modality."""
    prompt_modality, ending_modality = _modality(pair[0]), _modality(pair[2])
    prompt = utterance.side(prompt_modality, 0, cut)
    sides = [other.side(ending_modality, start, start + k) for other, start in distractors]
    sides.insert(label, utterance.side(ending_modality, cut, cut + k))
    endings = tuple(side for side in sides if side is not None)
    if prompt is None or len(endings) < len(sides):
        return None
    return ChoiceItem(f"{utterance.record.id}:{pair}", prompt, endings, label, utterance.record.speaker,
                      (utterance.canonical,))


def _modality(letter: str) -> str:
    return "speech" if letter == "s" else "text"
