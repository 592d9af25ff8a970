"""Global positions and FLOPs of the LST vs the flat baseline on the same utterances.

For every utterance: a speech-only example under each patching strategy, and an
interleaved example (its text/speech split drawn with the run's seed) in which positions
are counted per modality (a marker counts with the segment it opens). The baseline puts
every unit in its own position. FLOPs are forward FLOPs of the configured model sizes
(`flops.row_cost`), for the LST under the training strategy's static/aligned extremes.

The whole-mixture figure (the paper's Table 13: 3.00 -> 2.42 global positions, ratio 0.807
with static p = 4): the training example stream (token shares of `DataConfig`, text from the
text corpus when one is given) is drawn until `mixture_tokens` tokens, and its global
positions and forward FLOPs are counted for the LST under each concrete strategy and for the
baseline, per token of the stream. The paper's absolute figures use another denominator;
the ratio is what compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lst_data.core.config import updated
from lst_data.core.errors import UserError
from lst_data.format.records import SampleRecord
from lst_model.config import RunSpec
from lst_model.data import load_records, load_token_space
from lst_model.flops import row_cost
from lst_model.sequences import Example, SequenceBuilder
from lst_model.text_corpus import shard_text_corpus
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


def mixture_cost(records: Sequence[SampleRecord], space: TokenSpace, spec: RunSpec, *, seed: int = 0,
                 texts: Sequence[np.ndarray] | None = None, mixture_tokens: int = 100_000) -> dict:
    """Tokens, global positions and forward FLOPs of the training mixture, per model/strategy."""
    result: dict[str, dict[str, float]] = {}
    base_model = updated(spec.model, {"kind": "baseline"})
    lst_model = updated(spec.model, {"kind": "lst"})
    for strategy in CONCRETE:
        builder = SequenceBuilder(space, updated(spec.data, {"patching": strategy}), texts)
        stream = builder.example_stream(records, np.random.default_rng(seed), 0.0)
        totals = {"tokens": 0, "lst_positions": 0, "lst_flops": 0, "baseline_flops": 0}
        while totals["tokens"] < mixture_tokens:
            example = next(stream)
            totals["tokens"] += len(example.tokens)
            totals["lst_positions"] += len(example.patch_lengths)
            totals["lst_flops"] += row_cost(lst_model, space.size, _patch_index(example, False)).forward_flops
            if strategy == "static":  # the baseline's cost does not depend on the patching
                totals["baseline_flops"] += row_cost(base_model, space.size, _patch_index(example, True)).forward_flops
        if strategy == "static":
            result["baseline"] = {"positions_per_token": 1.0, "flops_per_token": totals["baseline_flops"] / totals["tokens"],
                                  "flops_per_position": totals["baseline_flops"] / totals["tokens"]}
        result[strategy] = {"positions_per_token": totals["lst_positions"] / totals["tokens"],
                            "flops_per_token": totals["lst_flops"] / totals["tokens"],
                            "flops_per_position": totals["lst_flops"] / totals["lst_positions"]}
    return result


def compare(records: Sequence[SampleRecord], space: TokenSpace, spec: RunSpec, seed: int = 0,
            texts: Sequence[np.ndarray] | None = None, mixture_tokens: int = 100_000) -> dict:
    """Per-utterance means and totals, and the whole training mixture; see the module doc."""
    builder = SequenceBuilder(space, spec.data)
    lst_model = updated(spec.model, {"kind": "lst"})
    base_model = updated(spec.model, {"kind": "baseline"})
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
        "mixture": mixture_cost(records, space, spec, seed=seed, texts=texts, mixture_tokens=mixture_tokens),
    }


def compare_shards(shard_dir: str | Path, spec: RunSpec, *, text_path: str | Path | None = None,
                   tokenizer_path: str | Path | None = None, mixture_tokens: int = 100_000) -> dict:
    """`compare` over a shard set's utterances, the text share from the --text corpus when one
    is given (`shard_text_corpus`), else from the transcripts."""
    space = load_token_space(shard_dir)
    records = load_records(shard_dir)
    if not records:
        raise UserError(f"--shards: {shard_dir} holds no samples (every utterance of its build was rejected)")
    texts = shard_text_corpus(text_path, tokenizer_path, shard_dir, space.text_vocab_size) if text_path is not None else None
    return compare(records, space, spec, seed=spec.train.seed, texts=texts, mixture_tokens=mixture_tokens)


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
    mixture = report["mixture"]
    ref = mixture["baseline"]
    for name in CONCRETE:
        row = mixture[name]
        lines.append(f"mixture_positions_per_token_{name}: {row['positions_per_token']:.3f} (reference: baseline "
                     f"{ref['positions_per_token']:.3f}, ratio {row['positions_per_token'] / ref['positions_per_token']:.3f})")
    for name in CONCRETE:
        row = mixture[name]
        lines.append(f"mixture_forward_flops_per_token_{name}: {row['flops_per_token']:.4g} FLOP (reference: baseline "
                     f"{ref['flops_per_token']:.4g} FLOP, ratio {row['flops_per_token'] / ref['flops_per_token']:.3f})")
        lines.append(f"mixture_forward_flops_per_global_position_{name}: {row['flops_per_position']:.4g} FLOP (reference: "
                     f"baseline {ref['flops_per_position']:.4g} FLOP, ratio {row['flops_per_position'] / ref['flops_per_position']:.3f})")
    return lines
