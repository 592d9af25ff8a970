"""Global positions and FLOPs of the LST vs the flat baseline on the same utterances.

For every utterance: a speech-only example under each patching strategy, and an
interleaved example (its text/speech split drawn with the run's seed) in which positions
are counted per modality (a marker counts with the segment it opens). The baseline puts
every unit in its own position. FLOPs are forward FLOPs of the configured model sizes
(`flops.row_cost`), for the LST under the training strategy's static/aligned extremes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from lst_data.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.flops import row_cost
from lst_model.sequences import Example, SequenceBuilder
from lst_model.tokens import TokenSpace

CONCRETE = ("static", "word_sil_sep", "word_sil_merged", "bpe")


def _patch_index(example: Example, flat: bool) -> torch.Tensor:
    if flat:
        return torch.arange(len(example.tokens))
    return torch.repeat_interleave(torch.arange(len(example.patch_lengths)), torch.as_tensor(example.patch_lengths))


def _modality_positions(example: Example, space: TokenSpace, flat: bool) -> tuple[int, int]:
    """(speech, text) positions of an interleaved example; BOS/EOS count as neither."""
    speech = text = 0
    token = 0
    for length in example.patch_lengths:
        ids = example.tokens[token : token + length]
        first = int(ids[0])
        if first == space.speech_start or space.is_unit(first):
            speech += int(length) if flat else 1
        elif first not in (space.bos, space.eos):
            text += int(length) if flat else 1
        token += int(length)
    return speech, text


def compare(records: Sequence[SampleRecord], space: TokenSpace, spec: RunSpec, seed: int = 0) -> dict:
    """Per-utterance means and totals; see the module doc."""
    builder = SequenceBuilder(space, spec.data)
    lst_model = dataclasses.replace(spec.model, kind="lst")
    base_model = dataclasses.replace(spec.model, kind="baseline")
    rng = np.random.default_rng(seed)
    speech_positions = {name: 0 for name in ("baseline", *CONCRETE)}
    interleaved = {name: [0, 0] for name in ("baseline", *CONCRETE)}
    flops = {name: 0 for name in ("baseline", *CONCRETE)}
    text_positions = 0
    for record in records:
        text_positions += len(record.bpe)
        speech_positions["baseline"] += record.n_frames
        flops["baseline"] += row_cost(base_model, space.size, _patch_index(builder.speech_example(record, "static"), True)).forward_flops
        state = int(rng.integers(2**63))
        for strategy in CONCRETE:
            example = builder.speech_example(record, strategy)
            speech_positions[strategy] += len(example.patch_lengths) - 2
            flops[strategy] += row_cost(lst_model, space.size, _patch_index(example, False)).forward_flops
            mixed = builder.interleaved_example(record, np.random.default_rng(state), strategy)
            for name, flat in ((strategy, False), ("baseline", True)):
                if name == "baseline" and strategy != "static":
                    continue
                s, t = _modality_positions(mixed, space, flat)
                interleaved[name][0] += s
                interleaved[name][1] += t
    n = max(1, len(records))
    return {
        "utterances": len(records),
        "speech_only": {
            "positions_per_utterance": {k: v / n for k, v in speech_positions.items()},
            "baseline_over_lst": {k: speech_positions["baseline"] / v for k, v in speech_positions.items() if v and k != "baseline"},
            "forward_flops_per_utterance": {k: v / n for k, v in flops.items()},
        },
        "text_positions_per_utterance": text_positions / n,
        "interleaved": {
            k: {"speech_positions": s, "text_positions": t, "speech_to_text": s / t if t else float("nan")}
            for k, (s, t) in interleaved.items()
        },
    }


def format_report(report: dict) -> list[str]:
    lines = [f"utterances: {report['utterances']}", f"text positions per utterance: {report['text_positions_per_utterance']:.1f}"]
    speech = report["speech_only"]
    for name, value in speech["positions_per_utterance"].items():
        ratio = speech["baseline_over_lst"].get(name)
        lines.append(
            f"speech-only positions per utterance [{name}]: {value:.1f}"
            + (f" (baseline/LST {ratio:.2f}x)" if ratio else "")
            + f", forward GFLOPs {speech['forward_flops_per_utterance'][name] / 1e9:.4f}"
        )
    for name, row in report["interleaved"].items():
        lines.append(f"interleaved speech:text positions [{name}]: {row['speech_to_text']:.2f}:1")
    return lines
