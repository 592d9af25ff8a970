"""Minimal pairs scored without a prompt (sWUGGY / sBLIMP style): is the good side more
likely than the bad one?

A pair (`lst_model.items.MinimalPair`) is two sides of one modality. Each side is scored as
a whole document, exactly as training sees an utterance or a text:

    speech  BOS <s> units EOS
    text    BOS <t> bpe EOS

BOS and the marker are given (the same for both sides); the side's tokens and EOS are
scored, so a side's score is log p(tokens, end of document). EOS counts because training
documents end with it: "the sentence can end here" is part of what makes one of two word
orders the grammatical one. Speech is patched as for `score` (static p = data.patch_size,
or a side's own aligned `patches[strategy]`); the flat kinds give every token a position.

A pair is right when log p(good) > log p(bad), by summed log-likelihood (as sWUGGY and
sBLIMP compare) and per token (sum / (tokens + 1), for pairs of unequal length); a tie
counts half, so a model that cannot tell the sides apart scores 0.5, not 0 or 1.

`minimal_pairs_from_records` builds pairs from a shard set's held-out utterances: the
utterance (good) vs the same utterance with two distinct words swapped (bad), in speech
(the two words' unit frames exchanged, the pauses and words between them moved with their
frames; the aligned patches recomputed from the moved word, piece and silence spans) and in
text (the two words' BPE pieces exchanged).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lst_data.format.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.corpus_tasks import Utterance
from lst_model.data import is_heldout
from lst_model.items import MODALITIES, MinimalPair, Side
from lst_model.score import (
    checked_example,
    format_table,
    marker,
    resolve_patching,
    sequence_log_likelihoods,
    share_with_standard_error,
    side_ids,
)
from lst_model.sequences import Example
from lst_model.tokens import TokenSpace


@dataclass(frozen=True)
class PairScore:
    """Summed log-likelihood and scored token count (the side's tokens and EOS) of both sides of one pair."""

    id: str
    modality: str
    good_sum: float
    bad_sum: float
    good_length: int
    bad_length: int

    @property
    def credit_sum(self) -> float:
        return _credit(self.good_sum, self.bad_sum)

    @property
    def credit_per_token(self) -> float:
        return _credit(self.good_sum / self.good_length, self.bad_sum / self.bad_length)

    def to_json(self) -> dict:
        return {"id": self.id, "modality": self.modality, "good_sum": self.good_sum, "bad_sum": self.bad_sum,
                "good_length": self.good_length, "bad_length": self.bad_length,
                "credit_sum": self.credit_sum, "credit_per_token": self.credit_per_token}


def _credit(good: float, bad: float) -> float:
    return 1.0 if good > bad else 0.5 if good == bad else 0.0


def side_example(side: Side, owner: str, what: str, space: TokenSpace, patching: str, patch_size: int) -> tuple[Example, int]:
    """BOS <marker> side EOS, and the index of the side's first token (the scored ones run to the end)."""
    ids, lengths = side_ids(side, owner, what, space, patching, patch_size)
    tokens = np.concatenate([[space.bos, marker(side, space)], ids, [space.eos]]).astype(np.int64)
    return Example(tokens, np.array([1, 1, *lengths, 1], dtype=np.int64), side.modality), 2


def score_minimal_pairs(
    model: nn.Module,
    spec: RunSpec,
    space: TokenSpace,
    pairs: Sequence[MinimalPair],
    *,
    patching: str | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> list[PairScore]:
    """Both sides of every pair, scored as the module doc says; `patching` defaults to the
    run's data.eval_patching."""
    patching = resolve_patching(spec, patching)
    sequences = [checked_example(f"pair {pair.id}", space, side_example, side, f"pair {pair.id}", what, space, patching,
                                 spec.data.patch_size)
                 for pair in pairs for what, side in (("good side", pair.good), ("bad side", pair.bad))]
    sums = sequence_log_likelihoods(model, spec, space, sequences, batch_size=batch_size, device=device)
    return [PairScore(pair.id, pair.modality, sums[2 * k], sums[2 * k + 1], len(pair.good.tokens) + 1, len(pair.bad.tokens) + 1)
            for k, pair in enumerate(pairs)]


def pair_accuracy(scores: Sequence[PairScore]) -> dict[str, float | int]:
    """Share of pairs whose good side scores higher (ties half), by summed and per-token
    log-likelihood, each with its binomial standard error; the pair count and the ties."""
    result: dict[str, float | int] = {"n": len(scores)}
    result |= share_with_standard_error("acc_sum", [s.credit_sum for s in scores])
    result |= share_with_standard_error("acc_per_token", [s.credit_per_token for s in scores])
    result["ties_sum"] = sum(s.credit_sum == 0.5 for s in scores)
    result["ties_per_token"] = sum(s.credit_per_token == 0.5 for s in scores)
    return result


def accuracy_by_modality(scores: Sequence[PairScore]) -> dict[str, dict[str, float | int]]:
    """`pair_accuracy` of each modality present (speech, then text)."""
    return {m: pair_accuracy([s for s in scores if s.modality == m]) for m in MODALITIES if any(s.modality == m for s in scores)}


def format_minimal_pair_table(results: dict[str, dict[str, float | int]]) -> list[str]:
    """The per-modality figures as aligned text lines, and the ties when there are any."""
    lines = format_table(results, "modality", str, [("acc (sum)", "acc_sum"), ("acc (per token)", "acc_per_token")])
    ties = {m: (r["ties_sum"], r["ties_per_token"]) for m, r in results.items() if r["ties_sum"] or r["ties_per_token"]}
    lines.extend(f"{m}: ties (counted half) {by_sum} by sum, {per_token} per token" for m, (by_sum, per_token) in ties.items())
    return lines


# --- pairs from a shard set's held-out utterances -----------------------------------------


def swap_words(record: SampleRecord, first: int, second: int) -> SampleRecord:
    """`record` as if words `first` < `second` had been spoken in each other's place: their
    frames (units) are exchanged; the frames between them (words and pauses) move by the
    difference of the two words' lengths, the rest stay. Word, BPE piece and silence spans
    move with their frames (and times), words and pieces are renumbered in their new order,
    and the transcript is the new word order. The audio, which no longer matches, is dropped."""
    if not 0 <= first < second < len(record.words):
        raise ValueError(f"need word indices 0 <= first < second < {len(record.words)}, got {first}, {second}")
    a, b = record.words[first], record.words[second]
    a_start, a_stop, b_start, b_stop = a.start_frame, a.end_frame + 1, b.start_frame, b.end_frame + 1
    units = record.units
    moved_units = np.concatenate([units[:a_start], units[b_start:b_stop], units[a_stop:b_start], units[a_start:a_stop],
                                  units[b_stop:]])
    between = (b_stop - b_start) - (a_stop - a_start)
    shift = {first: b_stop - a_stop, second: a_start - b_start}  # word `second` now starts at a_start; `first` ends at b_stop
    order = [*range(first), second, *range(first + 1, second), first, *range(second + 1, len(record.words))]
    new_index = {old: new for new, old in enumerate(order)}

    def frames_moved(word_index: int) -> int:
        return shift.get(word_index, between if first < word_index < second else 0)

    seconds = 1 / record.frame_rate
    words = tuple(_moved(record.words[old], frames_moved(old), seconds) for old in order)
    pieces = sorted((_moved(p, frames_moved(p.word_index), seconds)._replace(word_index=new_index[p.word_index])
                     for p in record.bpe), key=lambda p: p.word_index)  # stable: a word's pieces keep their order
    silences = tuple(_moved(s, between if a_stop <= s.start_frame < b_start else 0, seconds) for s in record.silences)
    return dataclasses.replace(record, text=" ".join(w.word for w in words), units=moved_units, words=words,
                               bpe=tuple(pieces), silences=silences, audio=None, text_original=None)


def _moved(span: Any, frames: int, seconds_per_frame: float) -> Any:
    """A word, piece or silence span moved by `frames` (its times by as many frame durations)."""
    if not frames:
        return span
    fields = {"start_frame": span.start_frame + frames, "end_frame": span.end_frame + frames}
    if hasattr(span, "start"):
        fields |= {"start": span.start + frames * seconds_per_frame, "end": span.end + frames * seconds_per_frame}
    return span._replace(**fields)


def _swap_choice(record: SampleRecord, rng: np.random.Generator) -> tuple[int, int] | None:
    """Two words to swap, drawn from `rng`: each has frames and BPE pieces of its own, and
    their words differ; None when the utterance has no such two."""
    with_pieces = {p.word_index for p in record.bpe}
    eligible = [k for k, w in enumerate(record.words) if w.end_frame >= w.start_frame and k in with_pieces]
    candidates = [(i, j) for x, i in enumerate(eligible) for j in eligible[x + 1 :] if record.words[i].word != record.words[j].word]
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


def minimal_pairs_from_records(
    records: Sequence[SampleRecord],
    heldout_fraction: float,
    *,
    modalities: Sequence[str] = MODALITIES,
    seed: int = 0,
) -> tuple[list[MinimalPair], dict[str, int]]:
    """A pair per held-out utterance (split as training splits them) in each of `modalities`:
    the utterance vs the same utterance with two distinct words swapped (`swap_words`; which
    two is drawn from `seed`). Ids are `UTTERANCE_ID:MODALITY`; `sources` the utterance's
    canonical transcript. Also returns the held-out utterances that gave no pair, by reason:
    `no_two_distinct_words` (fewer than two different words with frames and pieces) and
    `swap_changes_nothing` (a side that came out identical, e.g. two words with the same units)."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    rng = np.random.default_rng(seed)
    pairs: list[MinimalPair] = []
    skips: Counter[str] = Counter()
    for record in records:
        if not is_heldout(record, heldout_fraction):
            continue
        choice = _swap_choice(record, rng)
        if choice is None:
            skips["no_two_distinct_words"] += 1
            continue
        good, bad = Utterance(record), Utterance(swap_words(record, *choice))
        sides = [(m, good.side(m, 0, good.n_words), bad.side(m, 0, bad.n_words)) for m in modalities]
        made = [MinimalPair(f"{record.id}:{m}", g, b, (good.canonical,)) for m, g, b in sides
                if g is not None and b is not None and g.tokens != b.tokens]
        if len(made) < len(sides):
            skips["swap_changes_nothing"] += 1
        else:
            pairs.extend(made)
    return pairs, dict(skips)
