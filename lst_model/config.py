"""Configuration of a model run: architecture, sequence building, training.

One YAML file overrides any subset of the defaults (same loader and unknown-key errors as
`lst_data.config`). `preset:` at the top of the file picks a model size from PRESETS first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lst_data.config import ConfigError, canonical_hash, from_dict, read_config_data, to_dict
from lst_data.config_fields import doc

STRATEGIES = ("static", "word_sil_sep", "word_sil_merged", "bpe", "mixed", "curriculum")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = doc("'lst' (patched speech) or 'baseline' (flat: every token its own position).", "lst")
    d_global: int = doc("Width of the global transformer.", 64)
    n_global_layers: int = doc("Layers of the global causal transformer.", 2)
    n_global_heads: int = doc("Attention heads in the global transformer.", 4)
    d_local: int = doc("Width of the patch encoder/decoder (LST only; paper proportion: d_global / 2).", 32)
    n_local_heads: int = doc("Attention heads in the patch encoder/decoder.", 2)
    n_encoder_layers: int = doc("Windowed self-attention layers in the patch encoder.", 1)
    n_decoder_layers: int = doc("Patch-decoder layers (each: cross-attention to global states + windowed self-attention).", 1)
    local_window: int = doc("Tokens each token attends to in the local (encoder/decoder) self-attention.", 64)
    mlp_ratio: int = doc("MLP hidden width / model width.", 4)
    rope_theta: float = doc("RoPE base (LST paper: 5e5).", 500000.0)
    dropout: float = doc("Dropout in attention outputs and MLPs.", 0.0)


@dataclass(frozen=True)
class DataConfig:
    patching: str = doc(f"Speech patching strategy: one of {', '.join(STRATEGIES)}.", "curriculum")
    aligned_strategy: str = doc("Aligned strategy that 'mixed' and 'curriculum' use when not static.", "word_sil_sep")
    patch_size: int = doc("Tokens per static patch (paper: 4).", 4)
    mixed_aligned_prob: float = doc("'mixed': probability that a sequence uses the aligned strategy.", 0.5)
    eval_patching: str = doc("Patching at evaluation/scoring (paper: static p=4, so no aligner is needed).", "static")
    interleaved_weight: float = doc("Token share of interleaved text/speech examples (paper: 0.33).", 0.33)
    text_weight: float = doc("Token share of text examples, from the --text corpus (paper: 0.67).", 0.67)
    speech_weight: float = doc("Token share of speech-only examples (paper: 0).", 0.0)
    min_text_words: int = doc("Interleaving: smallest text span L (words).", 2)
    max_text_words: int = doc("Interleaving: largest text span L (words).", 6)
    speech_ratio: float = doc("Interleaving: a speech span has about speech_ratio * L words (paper: 1/2).", 0.5)
    seq_positions: int = doc("Global positions per packed training sequence.", 128)
    heldout_fraction: float = doc(
        "Share of utterances (chosen by a hash of their id) kept out of training for the held-out "
        "continuation task.",
        0.1,
    )
    input: str = doc("'memory' (records loaded once; a step's rows are a function of (seed, step, row)) or "
                     "'stream' (built and packed in DataLoader workers from the shards; lst_model.stream).", "memory")
    stream_mode: str = doc("Streaming: 'epoch' (every utterance once per epoch) or 'resampled' (shards drawn with replacement).",
                           "epoch")
    shuffle_buffer: int = doc("Streaming: utterances in each worker's shuffle buffer.", 1000)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = doc("Seed of initialisation and data order.", 0)
    batch_size: int = doc("Sequences per optimizer step, over all processes and accumulation micro-steps.", 8)
    grad_accum: int = doc("Micro-steps per optimizer step (gradient accumulation); batch_size must divide by "
                          "processes x grad_accum.", 1)
    budget_positions: int = doc(
        "Training budget in global positions (steps = budget / (batch_size * seq_positions)); "
        "equal budgets compute-control LST against the baseline.",
        8 * 128 * 200,
    )
    lr: float = doc("Peak learning rate (AdamW).", 3e-3)
    min_lr_ratio: float = doc("Final learning rate / peak after the cosine decay.", 0.1)
    warmup_steps: int = doc("Linear warm-up steps.", 20)
    weight_decay: float = doc("AdamW weight decay (betas 0.9, 0.95).", 0.1)
    grad_clip: float = doc("Gradient-norm clip.", 1.0)
    log_every: int = doc("Steps between log lines.", 10)
    checkpoint_every: int = doc("Steps between checkpoints (the last step is always saved).", 100)
    device: str = doc("'auto' (cuda when available), 'cpu' or 'cuda'.", "auto")
    threads: int = doc("torch CPU threads (0 = torch's default).", 0)
    loader_workers: int = doc("Streaming input: DataLoader worker processes per rank (0 = in the training process).", 2)


@dataclass(frozen=True)
class RunSpec:
    model: ModelConfig = doc("Architecture.", ModelConfig)
    data: DataConfig = doc("Sequence building and patching.", DataConfig)
    train: TrainConfig = doc("Optimisation.", TrainConfig)

    @property
    def hash(self) -> str:
        return canonical_hash(to_dict(self))

    @property
    def steps(self) -> int:
        return max(1, self.train.budget_positions // (self.train.batch_size * self.data.seq_positions))

    def validate(self) -> RunSpec:
        if self.model.kind not in ("lst", "baseline"):
            raise ConfigError(f"model.kind must be 'lst' or 'baseline', got {self.model.kind!r}")
        for name in ("patching", "eval_patching"):
            if getattr(self.data, name) not in STRATEGIES:
                raise ConfigError(f"data.{name} must be one of {STRATEGIES}")
        if self.data.aligned_strategy not in STRATEGIES[1:4]:
            raise ConfigError(f"data.aligned_strategy must be one of {STRATEGIES[1:4]}")
        if self.data.input not in ("memory", "stream"):
            raise ConfigError(f"data.input must be 'memory' or 'stream', got {self.data.input!r}")
        if self.data.stream_mode not in ("epoch", "resampled"):
            raise ConfigError(f"data.stream_mode must be 'epoch' or 'resampled', got {self.data.stream_mode!r}")
        if self.train.grad_accum < 1 or self.train.batch_size % self.train.grad_accum:
            raise ConfigError(f"train.grad_accum must be >= 1 and divide train.batch_size ({self.train.batch_size})")
        weights = (self.data.interleaved_weight, self.data.text_weight, self.data.speech_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError("mixture weights must be non-negative and not all zero")
        return self


# Model sizes, all with the paper's (BLT-style) proportions: local width = global width / 2,
# one encoder layer, decoder layers about 0.36 x global layers (at least 1); most parameters
# sit in the global transformer. So at every size a speech utterance costs the LST fewer
# forward FLOPs than the baseline (tests/test_model.py). 'tiny' is for CPU tests and the demo;
# 'base' is about 110M parameters with a 32k BPE + 501 units.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_global": 64, "n_global_layers": 2, "n_global_heads": 4, "d_local": 32, "n_local_heads": 2,
             "n_encoder_layers": 1, "n_decoder_layers": 1, "local_window": 64},
    "small": {"d_global": 256, "n_global_layers": 6, "n_global_heads": 8, "d_local": 128, "n_local_heads": 4,
              "n_encoder_layers": 1, "n_decoder_layers": 2, "local_window": 128},
    "base": {"d_global": 768, "n_global_layers": 10, "n_global_heads": 12, "d_local": 384, "n_local_heads": 6,
             "n_encoder_layers": 1, "n_decoder_layers": 3, "local_window": 256},
}


def load_run_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunSpec:
    """Defaults, then `preset` (model size), then the YAML file at `path`, then `overrides`."""
    data = read_config_data(path, overrides)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        data["model"] = {**PRESETS[preset], **(data.get("model") or {})}
    return from_dict(RunSpec, data).validate()


def run_spec_from_dict(data: dict[str, Any]) -> RunSpec:
    return from_dict(RunSpec, data).validate()


def replace(spec: RunSpec, **sections: dict[str, Any]) -> RunSpec:
    """Copy of `spec` with some fields of some sections changed: replace(spec, model={"kind": "baseline"})."""
    changed = {name: dataclasses.replace(getattr(spec, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(spec, **changed).validate()
