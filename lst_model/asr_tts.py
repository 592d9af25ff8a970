"""ASR and TTS with a fine-tuned model (`data.task` asr, tts or asr_tts): greedy generation
from the training layout's input side, scored against the utterance's other side.

- ASR: prompt ``BOS <s> units <t>``, the units patched with `data.eval_patching` (an
  aligned strategy uses the record's alignment; a record without words is patched
  statically); only text ids and EOS may be emitted; the BPE ids
  are decoded with the shards' tokenizer and compared with the normalized transcript.
- TTS: prompt ``BOS <t> text <s>``; only units and EOS may be emitted; the units are
  compared with the utterance's units.

The prompt is the fine-tuning example itself (`SequenceBuilder.asr_example` /
`tts_example`) cut where its loss targets begin, so inference reads exactly the layout
training wrote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lst_data.format.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.data import load_records, load_token_space, split_heldout
from lst_model.errors import OptionError
from lst_model.items import write_jsonl
from lst_model.metrics import character_error_rate, length_ratio, unit_edit_distance, word_error_rate
from lst_model.sequences import ALIGNED, Example, SequenceBuilder
from lst_model.tokens import TokenSpace, check_same_space

log = logging.getLogger(__name__)

# Generation caps, from the input side only (the reference output is not looked at): far above
# any real output, they only stop a model that never emits EOS. ASR: at most one BPE token per
# unit frame; TTS: 0.3 s of speech per character (read speech is about 0.07 s per character).
ASR_EXTRA_TOKENS = 16
TTS_SECONDS_PER_CHARACTER = 0.3
TTS_EXTRA_UNITS = 16


@dataclass(frozen=True)
class AsrResult:
    id: str
    reference: str
    hypothesis: str
    stopped: bool  # EOS was emitted before the cap

    def to_json(self) -> dict:
        return {"id": self.id, "reference": self.reference, "hypothesis": self.hypothesis, "stopped": self.stopped}


@dataclass(frozen=True)
class TtsResult:
    id: str
    reference: np.ndarray  # unit ids of the utterance
    units: np.ndarray  # generated unit ids
    stopped: bool

    def to_json(self) -> dict:
        return {"id": self.id, "reference_units": self.reference.tolist(), "units": self.units.tolist(),
                "stopped": self.stopped}


def eval_strategy(record: SampleRecord, spec: RunSpec) -> str:
    """The concrete patching of a prompt's units: `data.eval_patching` when it is static or an
    aligned strategy the record has an alignment for, else static."""
    strategy = spec.data.eval_patching
    return strategy if strategy in ALIGNED and record.words else "static"


def split_prompt(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """A fine-tuning example cut where its targets begin (a patch boundary: the output's
    opening marker is a patch of its own): prompt tokens and their patch lengths."""
    if example.target_mask is None:
        raise ValueError(f"a {example.kind} example has no target mask: not a fine-tuning example")
    first = int(np.argmax(example.target_mask))
    patches = int(np.searchsorted(np.cumsum(example.patch_lengths), first)) + 1
    return example.tokens[:first], example.patch_lengths[:patches]


def _output(generation) -> np.ndarray:
    """The emitted tokens without the stop token."""
    tokens = np.asarray(generation.new_tokens, dtype=np.int64)
    return tokens[:-1] if generation.stopped else tokens


def recognize(model: nn.Module, spec: RunSpec, space: TokenSpace, records: Sequence[SampleRecord],
              decode: Callable[[list[int]], str], *, device: str = "cpu") -> list[AsrResult]:
    """Greedy text of each utterance's units; `decode` turns BPE ids into text."""
    from lst_model.generate import generate

    builder = SequenceBuilder(space, spec.data)
    allowed = np.array([*range(space.text_vocab_size), space.eos], dtype=np.int64)
    results = []
    for record in records:
        prompt, lengths = split_prompt(builder.asr_example(record, eval_strategy(record, spec)))
        cap = record.n_frames + ASR_EXTRA_TOKENS
        generation = generate(model, spec, space, prompt, lengths, max_new_tokens=cap, allowed=allowed, device=device)
        hypothesis = decode([int(t) for t in _output(generation)])
        results.append(AsrResult(record.id, record.text, hypothesis, bool(generation.stopped)))
    return results


def synthesize(model: nn.Module, spec: RunSpec, space: TokenSpace, records: Sequence[SampleRecord], *,
               device: str = "cpu") -> list[TtsResult]:
    """Greedy units of each utterance's transcript."""
    from lst_model.generate import generate

    builder = SequenceBuilder(space, spec.data)
    allowed = np.array([space.eos, *range(space.unit_offset, space.size)], dtype=np.int64)
    results = []
    for record in records:
        prompt, lengths = split_prompt(builder.tts_example(record, "static"))  # no units in a TTS prompt
        cap = math.ceil(TTS_SECONDS_PER_CHARACTER * len(record.text) * record.frame_rate) + TTS_EXTRA_UNITS
        generation = generate(model, spec, space, prompt, lengths, max_new_tokens=cap, allowed=allowed, device=device)
        units = _output(generation) - space.unit_offset
        results.append(TtsResult(record.id, np.asarray(record.units, dtype=np.int64), units, bool(generation.stopped)))
    return results


@dataclass(frozen=True)
class Selection:
    """Which utterances of a shard set `asr` and `tts` run on: those of one side of the model's
    train / held-out split (or all), then only `ids` (in their order), then the first `limit`."""

    split: str = "heldout"  # "train", "heldout" or "all"
    ids: tuple[str, ...] | None = None
    limit: int | None = None

    def of(self, records: Sequence[SampleRecord], heldout_fraction: float, where: str | Path) -> list[SampleRecord]:
        """The selected records; an OptionError for ids not in the split (of the shards at `where`) or an empty selection."""
        if self.split != "all":
            train_records, heldout = split_heldout(records, heldout_fraction)
            records = train_records if self.split == "train" else heldout
        if self.ids is not None:
            by_id = {r.id: r for r in records}
            missing = [i for i in self.ids if i not in by_id]
            if missing:
                raise OptionError(f"not in the {self.split} split of {where}: {', '.join(missing)}", "--ids")
            records = [by_id[i] for i in self.ids]
        selected = list(records[: self.limit])
        if not selected:
            raise OptionError(f"no utterances selected (--split {self.split})")
        return selected


def _model_and_utterances(checkpoint: Path, shard_dir: Path, selection: Selection, device: str,
                          allow_other_token_space: bool) -> tuple[nn.Module, RunSpec, TokenSpace, list[SampleRecord]]:
    """The model, its spec and token space (which must be the shards'), and the selected records."""
    from lst_model.train import load_model

    model, spec, space = load_model(checkpoint, device)
    check_same_space(space, load_token_space(shard_dir), f"--shards {shard_dir}", allow_other_token_space)
    return model, spec, space, selection.of(load_records(shard_dir), spec.data.heldout_fraction, shard_dir)


def _warn_unless_fine_tuned(spec: RunSpec, task: str, warn: Callable[[str], None]) -> None:
    """A model not fine-tuned for `task` still runs (zero-shot, through what interleaving taught it), with a warning."""
    if spec.data.task not in (task, "asr_tts"):
        warn(f"this model was trained with data.task={spec.data.task}, not {task}; fine-tune it first "
             f"(lst-model train --init RUN --set data.task={task}) for meaningful figures")


def recognize_shards(checkpoint: Path, shard_dir: Path, selection: Selection = Selection(), *,
                     tokenizer_path: Path | None = None, device: str = "cpu", allow_other_token_space: bool = False,
                     out_path: Path | None = None, warn: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """`lst-model asr`: greedy transcripts of the selected utterances, decoded with the shards'
    tokenizer (found near them unless given); WER and CER. `out_path`: one JSON line per utterance."""
    from lst_data.tokenize import load_tokenizer
    from lst_model.text_corpus import find_tokenizer

    model, spec, space, records = _model_and_utterances(checkpoint, shard_dir, selection, device, allow_other_token_space)
    _warn_unless_fine_tuned(spec, "asr", warn)
    tokenizer_path = tokenizer_path or find_tokenizer(shard_dir)
    if tokenizer_path is None:
        raise OptionError(f"no tokenizer found near {shard_dir}; give --tokenizer")
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != space.text_vocab_size:
        raise OptionError(f"{tokenizer_path}: vocabulary {tokenizer.vocab_size} != the model's {space.text_vocab_size}",
                          "--tokenizer")
    results = recognize(model, spec, space, records, tokenizer.decode, device=device)
    if out_path is not None:
        write_jsonl((r.to_json() for r in results), out_path)
    references, hypotheses = [r.reference for r in results], [r.hypothesis for r in results]
    return {"utterances": len(results), "wer": word_error_rate(references, hypotheses),
            "cer": character_error_rate(references, hypotheses), "stopped": sum(r.stopped for r in results)}


def synthesize_shards(checkpoint: Path, shard_dir: Path, selection: Selection = Selection(), *, device: str = "cpu",
                      allow_other_token_space: bool = False, out_path: Path | None = None,
                      warn: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """`lst-model tts`: greedy units of the selected utterances' transcripts; unit edit distance
    (per reference unit) and generated/reference length ratio. `out_path`: one JSON line per utterance."""
    model, spec, space, records = _model_and_utterances(checkpoint, shard_dir, selection, device, allow_other_token_space)
    _warn_unless_fine_tuned(spec, "tts", warn)
    results = synthesize(model, spec, space, records, device=device)
    if out_path is not None:
        write_jsonl((r.to_json() for r in results), out_path)
    references, generated = [r.reference for r in results], [r.units for r in results]
    return {"utterances": len(results), "unit_edit_distance": unit_edit_distance(references, generated),
            "length_ratio": length_ratio(references, generated), "stopped": sum(r.stopped for r in results)}
