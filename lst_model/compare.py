"""Global positions and FLOPs of the LST vs the flat models on the same utterances.

For every utterance: a speech-only example under each patching strategy, and an
interleaved example (its text/speech split drawn with the run's seed) in which positions
are counted per modality (a marker counts with the segment it opens). The baseline puts
every unit in its own position; the BPE SpeechLLM (`bpe_speechllm`) every piece of its unit
BPE (`lst_model.unit_bpe`, trained here on the training utterances with
`model.unit_bpe_vocab`), and the report gives its compression (units per piece). FLOPs are
forward FLOPs of the configured model sizes (`flops.row_cost`), for the LST under the
training strategy's static/aligned extremes.

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
from lst_model.config import PRESETS, ModelConfig, RunSpec
from lst_model.data import load_records, load_token_space, split_heldout
from lst_model.flops import row_cost
from lst_model.model import build_model, count_parameters
from lst_model.sequences import Example, SequenceBuilder
from lst_model.text_corpus import shard_text_corpus
from lst_model.tokens import TokenSpace
from lst_model.unit_bpe import merge_example
from lst_model.unit_pieces import KIND as BPE_KIND
from lst_model.unit_pieces import UnitBPE, train_unit_bpe

CONCRETE = ("static", "word_sil_sep", "word_sil_merged", "bpe")
FLAT = ("baseline", BPE_KIND)


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
        if first == space.speech_start or first >= space.unit_offset:  # a marker, unit or piece
            speech += int(length) if flat else 1
        elif first not in (space.bos, space.eos):
            text += int(length) if flat else 1
        token += int(length)
    return speech, text


def _per_token(positions: int, flops: int, tokens: int) -> dict[str, float]:
    return {"positions_per_token": positions / tokens, "flops_per_token": flops / tokens, "flops_per_position": flops / positions}


def mixture_cost(records: Sequence[SampleRecord], space: TokenSpace, spec: RunSpec, *, seed: int = 0,
                 texts: Sequence[np.ndarray] | None = None, mixture_tokens: int = 100_000,
                 unit_bpe: UnitBPE | None = None) -> dict:
    """Tokens, global positions and forward FLOPs of the training mixture, per model/strategy
    (per token of the unmerged stream); with `unit_bpe`, the BPE SpeechLLM's too."""
    result: dict[str, dict[str, float]] = {}
    models = {kind: updated(spec.model, {"kind": kind}) for kind in ("lst", *FLAT)}
    piece_space = None if unit_bpe is None else space.with_unit_bpe(unit_bpe)
    for strategy in CONCRETE:
        builder = SequenceBuilder(space, updated(spec.data, {"patching": strategy}), texts)
        stream = builder.example_stream(records, np.random.default_rng(seed), 0.0)
        tokens = 0
        positions = dict.fromkeys((strategy, *FLAT), 0)
        flops = dict.fromkeys((strategy, *FLAT), 0)
        while tokens < mixture_tokens:
            example = next(stream)
            tokens += len(example.tokens)
            positions[strategy] += len(example.patch_lengths)
            flops[strategy] += row_cost(models["lst"], space.size, _patch_index(example, False)).forward_flops
            if strategy != "static":  # the flat models' costs do not depend on the patching
                continue
            positions["baseline"] += len(example.tokens)
            flops["baseline"] += row_cost(models["baseline"], space.size, _patch_index(example, True)).forward_flops
            if piece_space is not None:
                merged = merge_example(example, piece_space)
                positions[BPE_KIND] += len(merged.tokens)
                flops[BPE_KIND] += row_cost(models[BPE_KIND], piece_space.size, _patch_index(merged, True)).forward_flops
        for name in (strategy, *FLAT) if strategy == "static" else (strategy,):
            if positions[name]:
                result[name] = _per_token(positions[name], flops[name], tokens)
    return result


def compare(records: Sequence[SampleRecord], space: TokenSpace, spec: RunSpec, seed: int = 0,
            texts: Sequence[np.ndarray] | None = None, mixture_tokens: int = 100_000,
            unit_bpe: UnitBPE | None = None) -> dict:
    """Per-utterance means and totals, and the whole training mixture; see the module doc.
    `unit_bpe`: the BPE SpeechLLM's (default: trained on `records`)."""
    if unit_bpe is None:
        unit_bpe = train_unit_bpe((np.asarray(r.units) for r in records), space.n_units, spec.model.unit_bpe_vocab)
    piece_space = space.with_unit_bpe(unit_bpe)
    builder = SequenceBuilder(space, spec.data)
    models = {kind: updated(spec.model, {"kind": kind}) for kind in ("lst", *FLAT)}
    rng = np.random.default_rng(seed)
    names = (*FLAT, *CONCRETE)
    speech_positions = dict.fromkeys(names, 0)
    interleaved = {name: [0, 0] for name in names}
    flops = dict.fromkeys(names, 0)
    text_positions = 0
    for record in records:
        text_positions += len(record.bpe)
        state = int(rng.integers(2**63))
        for strategy in CONCRETE:
            example = builder.speech_example(record, strategy)
            speech_positions[strategy] += len(example.patch_lengths) - 2
            flops[strategy] += row_cost(models["lst"], space.size, _patch_index(example, False)).forward_flops
            mixed = builder.interleaved_example(record, np.random.default_rng(state), strategy)
            _add(interleaved[strategy], _modality_positions(mixed, space, False))
            if strategy != "static":  # the flat models' positions do not depend on the patching
                continue
            merged = merge_example(example, piece_space)
            for name, flat_example, flat_space in (("baseline", example, space), (BPE_KIND, merged, piece_space)):
                speech_positions[name] += int((flat_example.tokens >= space.unit_offset).sum())  # units or pieces
                flops[name] += row_cost(models[name], flat_space.size, _patch_index(flat_example, True)).forward_flops
            _add(interleaved["baseline"], _modality_positions(mixed, space, True))
            _add(interleaved[BPE_KIND], _modality_positions(merge_example(mixed, piece_space), piece_space, True))
    n = max(1, len(records))
    return {
        "utterances": len(records),
        "speech_only": {
            "positions_per_utterance": {k: v / n for k, v in speech_positions.items()},
            "baseline_over_lst": {k: speech_positions["baseline"] / speech_positions[k] for k in CONCRETE if speech_positions[k]},
            "forward_flops_per_utterance": {k: v / n for k, v in flops.items()},
        },
        "unit_bpe": {"pieces": unit_bpe.n_pieces, "sha256": unit_bpe.sha256,
                     "units_per_piece": speech_positions["baseline"] / speech_positions[BPE_KIND]
                     if speech_positions[BPE_KIND] else float("nan")},
        "text_positions_per_utterance": text_positions / n,
        "interleaved": {
            k: {"speech_positions": s, "text_positions": t, "speech_to_text": s / t if t else float("nan")}
            for k, (s, t) in interleaved.items()
        },
        "mixture": mixture_cost(records, space, spec, seed=seed, texts=texts, mixture_tokens=mixture_tokens,
                                unit_bpe=unit_bpe),
        "presets": preset_costs(records[:PRESET_UTTERANCES], space, piece_space, spec),
    }


PRESET_UTTERANCES = 200  # utterances the per-preset FLOPs are averaged over


def parameter_count(config: ModelConfig, vocab_size: int) -> int:
    """Parameters of a model, counted on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return count_parameters(build_model(config, vocab_size))


def preset_costs(records: Sequence[SampleRecord], space: TokenSpace, piece_space: TokenSpace, spec: RunSpec) -> dict:
    """Per preset and model kind: parameters and forward FLOPs per speech-only utterance
    (static patches for the LST), with the run's other model settings."""
    builder = SequenceBuilder(space, spec.data)
    speech = [builder.speech_example(record, "static") for record in records]
    merged = [merge_example(example, piece_space) for example in speech]
    n = max(1, len(speech))
    report: dict[str, dict] = {}
    for name, preset in PRESETS.items():
        row: dict[str, dict] = {}
        for kind, examples, kind_space in (("lst", speech, space), ("baseline", speech, space), (BPE_KIND, merged, piece_space)):
            config = updated(spec.model, {**preset, "kind": kind})
            flops = sum(row_cost(config, kind_space.size, _patch_index(example, kind != "lst")).forward_flops for example in examples)
            row[kind] = {"parameters": parameter_count(config, kind_space.size), "forward_flops_per_utterance": flops / n}
        report[name] = row
    return report


def _add(totals: list[int], counts: tuple[int, int]) -> None:
    totals[0] += counts[0]
    totals[1] += counts[1]


def compare_shards(shard_dir: str | Path, spec: RunSpec, *, text_path: str | Path | None = None,
                   tokenizer_path: str | Path | None = None, mixture_tokens: int = 100_000) -> dict:
    """`compare` over a shard set's utterances, the text share from the --text corpus when one
    is given (`shard_text_corpus`), else from the transcripts; the unit BPE trained on the
    training utterances only (as a bpe_speechllm run trains it)."""
    space = load_token_space(shard_dir)
    records = load_records(shard_dir)
    if not records:
        raise UserError(f"--shards: {shard_dir} holds no samples (every utterance of its build was rejected)")
    texts = shard_text_corpus(text_path, tokenizer_path, shard_dir, space.text_vocab_size) if text_path is not None else None
    training, _ = split_heldout(records, spec.data.heldout_fraction)
    unit_bpe = train_unit_bpe((np.asarray(r.units) for r in training), space.n_units, spec.model.unit_bpe_vocab)
    return compare(records, space, spec, seed=spec.train.seed, texts=texts, mixture_tokens=mixture_tokens, unit_bpe=unit_bpe)


def format_presets(presets: dict) -> list[str]:
    lines = ["presets (parameters; forward GFLOPs per speech-only utterance, LST static p=4):"]
    for name, row in presets.items():
        cells = [f"{kind} {cost['parameters'] / 1e6:,.1f}M, {cost['forward_flops_per_utterance'] / 1e9:.3f}"
                 for kind, cost in row.items()]
        ratio = row["lst"]["forward_flops_per_utterance"] / row["baseline"]["forward_flops_per_utterance"]
        lines.append(f"  {name}: " + "; ".join(cells) + f" (LST/baseline FLOPs {ratio:.2f})")
    return lines


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
    if "unit_bpe" in report:
        pieces = report["unit_bpe"]
        lines.append(f"unit BPE [{BPE_KIND}]: {pieces['pieces']} pieces, {pieces['units_per_piece']:.2f} units per piece")
    for name, row in report["interleaved"].items():
        lines.append(f"interleaved speech:text positions [{name}]: {row['speech_to_text']:.2f}:1")
    mixture = report["mixture"]
    ref = mixture["baseline"]
    for name in (*CONCRETE, BPE_KIND):
        if name not in mixture:
            continue
        row = mixture[name]
        lines.append(f"mixture_positions_per_token_{name}: {row['positions_per_token']:.3f} (reference: baseline "
                     f"{ref['positions_per_token']:.3f}, ratio {row['positions_per_token'] / ref['positions_per_token']:.3f})")
    for name in (*CONCRETE, BPE_KIND):
        if name not in mixture:
            continue
        row = mixture[name]
        lines.append(f"mixture_forward_flops_per_token_{name}: {row['flops_per_token']:.4g} FLOP (reference: baseline "
                     f"{ref['flops_per_token']:.4g} FLOP, ratio {row['flops_per_token'] / ref['flops_per_token']:.3f})")
        lines.append(f"mixture_forward_flops_per_global_position_{name}: {row['flops_per_position']:.4g} FLOP (reference: "
                     f"baseline {ref['flops_per_position']:.4g} FLOP, ratio {row['flops_per_position'] / ref['flops_per_position']:.3f})")
    return lines + format_presets(report["presets"])
