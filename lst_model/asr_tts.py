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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from lst_data.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.sequences import ALIGNED, Example, SequenceBuilder
from lst_model.tokens import TokenSpace

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
