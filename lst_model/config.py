"""Configuration of a model run: architecture, sequence building, training.

One YAML file (`--config`) and `--set a.b=v` override any subset of the defaults, with the
same validated sections, loader and one-line errors as `lst_data` (`lst_data.core.config`).
`preset:` at the top of the file picks a model size from PRESETS first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import model_validator

from lst_data.core.config import (
    Section,
    canonical_hash,
    config_layers,
    doc,
    updated,
    validate_section,
)
from lst_data.core.errors import ConfigError

Strategy = Literal["static", "word_sil_sep", "word_sil_merged", "bpe", "mixed", "curriculum"]
AlignedStrategy = Literal["word_sil_sep", "word_sil_merged", "bpe"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class ModelConfig(Section):
    kind: Literal["lst", "baseline", "bpe_speechllm"] = doc(
        "'lst' (patched speech), 'baseline' (flat: every token its own position) or 'bpe_speechllm' (flat, with "
        "speech units merged into pieces by a BPE over unit sequences).", "lst")
    d_global: int = doc("Width of the global transformer.", 64, ge=1, le=65536)
    n_global_layers: int = doc("Layers of the global causal transformer.", 2, ge=1, le=1024)
    n_global_heads: int = doc("Attention heads in the global transformer.", 2, ge=1, le=1024)
    d_local: int = doc("Width of the patch encoder/decoder (LST only; paper proportion: d_global / 2, with a floor at "
                       "small sizes: see the presets).", 64, ge=1, le=65536)
    n_local_heads: int = doc("Attention heads in the patch encoder/decoder.", 2, ge=1, le=1024)
    n_encoder_layers: int = doc("Windowed self-attention layers in the patch encoder.", 1, ge=1, le=64)
    n_decoder_layers: int = doc("Patch-decoder layers (each: cross-attention to global states + windowed self-attention).", 1, ge=1, le=64)
    local_window: int = doc("Tokens each token attends to in the local (encoder/decoder) self-attention.", 64, ge=1)
    mlp_ratio: int = doc("MLP hidden width / model width.", 4, ge=1, le=64)
    rope_theta: float = doc("RoPE base (LST paper: 5e5).", 500000.0, gt=0)
    dropout: float = doc("Dropout in attention outputs and MLPs.", 0.0, ge=0, lt=1)
    attention: Literal["auto", "dense", "flex", "chunked"] = doc(
        "Attention kernel: 'flex' (FlexAttention block masks; compiled on CUDA), 'dense' (boolean masks + SDPA, "
        "the reference), 'chunked' (query chunks against the keys they may read: memory linear in the sequence) "
        "or 'auto' (flex on CUDA; on CPU dense up to 1024 queries, chunked beyond).", "auto")
    norm: Literal["rmsnorm", "layernorm"] = doc("Normalisation layers (BLT: RMSNorm).", "rmsnorm")
    ffn: Literal["swiglu", "gelu"] = doc("Feed-forward (BLT: SwiGLU with 2/3 * mlp_ratio * width hidden units).", "swiglu")
    ffn_multiple_of: int = doc("SwiGLU hidden width is rounded up to a multiple of this (BLT: 256).", 256, ge=1, le=4096)
    init: Literal["blt", "normal"] = doc("Initialisation: 'blt' (truncated normal, std fan_in^-1/2) or 'normal' "
                                         "(N(0, 0.02)).", "blt")
    cross_attn_ffn: bool = doc("Give the pooling and decoder cross-attention a feed-forward of their own (BLT: no).", False)
    cross_attn_k: int = doc("Patch-encoder queries per patch and decoder context entries per global state (BLT: 2).",
                            2, ge=1, le=16)
    decoder_window: int | None = doc(
        "Global states (patches) each decoder token reads, counting back from the one before its target's patch "
        "(BLT: 1, its own decoder patch only); null reads every earlier patch of its document.", 1, ge=1)
    patch_pooling: Literal["max", "mean"] = doc("Initial patch queries: max (BLT) or mean of the patch's token states.", "max")
    unit_bpe_vocab: int = doc(
        "bpe_speechllm only: pieces of the BPE over unit sequences, trained on the run's training utterances "
        "(at least the codebook size + 1: every unit is a piece; paper: about 1k).", 1000, ge=2, le=65536)


FLAT_KINDS = ("baseline", "bpe_speechllm")  # model kinds where every token is its own global position

Task = Literal["pretrain", "asr", "tts", "asr_tts"]


class DataConfig(Section):
    task: Task = doc("'pretrain' (the text/speech/interleaved mixture), or fine-tuning examples with the loss on the "
                     "output side only: 'asr' (BOS <s> units <t> text EOS), 'tts' (BOS <t> text <s> units EOS), "
                     "'asr_tts' (each utterance one of them, 50/50).", "pretrain")
    patching: Strategy = doc(f"Speech patching strategy: one of {', '.join(STRATEGIES)}.", "curriculum")
    aligned_strategy: AlignedStrategy = doc("Aligned strategy that 'mixed' and 'curriculum' use when not static.", "word_sil_sep")
    patch_size: int = doc("Tokens per static patch (paper: 4).", 4, ge=1, le=1024)
    mixed_aligned_prob: float = doc("'mixed': probability that a sequence uses the aligned strategy.", 0.5, ge=0, le=1)
    eval_patching: Literal["static", "word_sil_sep", "word_sil_merged", "bpe"] = doc(
        "Patching at evaluation/scoring: 'static' (paper: p=4, no aligner needed) or an aligned strategy "
        "(the items' speech sides must carry its patches).", "static")
    interleaved_weight: float = doc("Token share of interleaved text/speech examples (paper: 0.33).", 0.33, ge=0)
    text_weight: float = doc("Token share of text examples, from the --text corpus (paper: 0.67).", 0.67, ge=0)
    speech_weight: float = doc("Token share of speech-only examples (paper: 0).", 0.0, ge=0)
    min_text_words: int = doc("Interleaving: smallest text span L (words).", 2, ge=1)
    max_text_words: int = doc("Interleaving: largest text span L (words).", 6, ge=1)
    speech_ratio: float = doc("Interleaving: a speech span has about speech_ratio * L words (paper: 1/2).", 0.5, gt=0)
    seq_positions: int = doc("Global positions per packed training sequence.", 128, ge=2)
    heldout_fraction: float = doc(
        "Share of transcripts (chosen by a hash of the normalized transcript, so a sentence is held out in "
        "every voice) kept out of training for evaluation.",
        0.1,
        ge=0, lt=1,
    )
    input: Literal["memory", "stream"] = doc("'memory' (records loaded once; a step's rows are a function of (seed, step, row)) or "
                     "'stream' (built and packed in DataLoader workers from the shards; lst_model.stream).", "memory")
    stream_mode: Literal["epoch", "resampled"] = doc("Streaming: 'epoch' (every utterance once per epoch) or 'resampled' (shards drawn with replacement).",
                           "epoch")
    shuffle_buffer: int = doc("Streaming: utterances in each worker's shuffle buffer.", 1000, ge=1)


class TrainConfig(Section):
    seed: int = doc("Seed of initialisation and data order.", 0, ge=0, le=2**32 - 1)
    batch_size: int = doc("Sequences per optimizer step, over all processes and accumulation micro-steps.", 8, ge=1)
    grad_accum: int = doc("Micro-steps per optimizer step (gradient accumulation); batch_size must divide by "
                          "processes x grad_accum.", 1,
        ge=1,
    )
    budget_positions: int = doc(
        "Training budget in global positions (steps = budget / (batch_size * seq_positions)); "
        "equal budgets compute-control LST against the baseline.",
        8 * 128 * 200,
        ge=1,
    )
    lr: float = doc("Peak learning rate (AdamW).", 3e-3, gt=0, le=10)
    min_lr_ratio: float = doc("Final learning rate / peak after the cosine decay.", 0.1, ge=0, le=1)
    warmup_steps: int = doc("Linear warm-up steps.", 20, ge=0)
    weight_decay: float = doc("AdamW weight decay (betas 0.9, 0.95).", 0.1, ge=0)
    grad_clip: float = doc("Gradient-norm clip.", 1.0, gt=0)
    log_every: int = doc("Steps between log lines.", 10, ge=1)
    checkpoint_every: int = doc("Steps between checkpoints (the last step is always saved).", 100, ge=1)
    device: Literal["auto", "cpu", "cuda"] = doc("'auto' (cuda when available), 'cpu' or 'cuda'.", "auto")
    threads: int = doc("torch CPU threads (0 = torch's default).", 0, ge=0, le=1024)
    loader_workers: int = doc("Streaming input: DataLoader worker processes per rank (0 = in the training process).", 2, ge=0, le=256)
    parallel: Literal["ddp", "fsdp"] = doc(
        "Under torchrun: 'ddp' (every process holds the whole model) or 'fsdp' (FSDP2: weights, gradients and "
        "optimizer state sharded over the processes, one shard unit per layer). One process trains unsharded.", "ddp")
    activation_checkpointing: bool = doc(
        "Keep only each layer's inputs in the forward pass and recompute the layer in the backward pass "
        "(less activation memory, about a third more compute; same results).", False)


class RunSpec(Section):
    model: ModelConfig = doc("Architecture.", ModelConfig)
    data: DataConfig = doc("Sequence building and patching.", DataConfig)
    train: TrainConfig = doc("Optimisation.", TrainConfig)

    @property
    def hash(self) -> str:
        return canonical_hash(self)

    @property
    def steps(self) -> int:
        return max(1, self.train.budget_positions // (self.train.batch_size * self.data.seq_positions))

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(f"train.grad_accum ({self.train.grad_accum}) must divide train.batch_size ({self.train.batch_size})")
        if sum((self.data.interleaved_weight, self.data.text_weight, self.data.speech_weight)) <= 0:
            raise ValueError("data.interleaved_weight, text_weight and speech_weight must not all be zero")
        for width, heads in (("d_global", "n_global_heads"), ("d_local", "n_local_heads")):
            if getattr(self.model, width) % getattr(self.model, heads):
                raise ValueError(f"model.{width} ({getattr(self.model, width)}) must divide by model.{heads} "
                                 f"({getattr(self.model, heads)})")
        if self.data.min_text_words > self.data.max_text_words:
            raise ValueError("data.min_text_words must not exceed data.max_text_words")
        return self


# Model sizes. Small ones keep a floor on the local stack (head width >= 32, local width =
# global width): at 32-wide local layers with 16-dimensional heads the patch encoder and
# decoder are too narrow to carry a patch, and the flat baseline wins at equal positions.
# From 'base' on, the paper's (BLT's) proportion: local width = global width / 2, one encoder
# layer, most parameters in the global transformer, so a speech utterance costs the LST fewer
# FLOPs than the baseline (tests/test_model.py). '1b' has BLT-1B's published shapes (global
# 2048 x 25, local 1024, 9 decoder layers, cross_attn_k 2, window 512); '420m' and '1.8b' are
# the same family at the paper's two other compute-controlled sizes (parameters counted with
# a 32k BPE + 501 units; `lst-model compare` prints them). 'tiny' is for CPU tests and the demo.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_global": 64, "n_global_layers": 2, "n_global_heads": 2, "d_local": 64, "n_local_heads": 2,
             "n_encoder_layers": 1, "n_decoder_layers": 1, "local_window": 64, "ffn_multiple_of": 16},
    "small": {"d_global": 256, "n_global_layers": 6, "n_global_heads": 8, "d_local": 256, "n_local_heads": 8,
              "n_encoder_layers": 1, "n_decoder_layers": 2, "local_window": 128, "ffn_multiple_of": 64},
    "base": {"d_global": 768, "n_global_layers": 10, "n_global_heads": 12, "d_local": 384, "n_local_heads": 6,
             "n_encoder_layers": 1, "n_decoder_layers": 3, "local_window": 256},
    "420m": {"d_global": 1280, "n_global_layers": 16, "n_global_heads": 10, "d_local": 640, "n_local_heads": 10,
             "n_encoder_layers": 1, "n_decoder_layers": 6, "local_window": 512},
    "1b": {"d_global": 2048, "n_global_layers": 25, "n_global_heads": 16, "d_local": 1024, "n_local_heads": 16,
           "n_encoder_layers": 1, "n_decoder_layers": 9, "local_window": 512},
    "1.8b": {"d_global": 2304, "n_global_layers": 24, "n_global_heads": 18, "d_local": 1152, "n_local_heads": 18,
             "n_encoder_layers": 1, "n_decoder_layers": 8, "local_window": 512},
}
# The widths of the smallest presets, where the local stack keeps the global width.
SMALL_PRESET_MAX_WIDTH = 256


def load_run_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  assignments: Sequence[str] = ()) -> RunSpec:
    """Defaults, then `preset` (model size), then the YAML file at `path`, then `overrides`, then `--set`."""
    data = config_layers(path, overrides, assignments)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"config field preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        data["model"] = {**PRESETS[preset], **(data.get("model") or {})}
    return validate_section(RunSpec, data)


def run_spec_from_dict(data: dict[str, Any]) -> RunSpec:
    return validate_section(RunSpec, data)


def replace(spec: RunSpec, **sections: dict[str, Any]) -> RunSpec:
    """Copy of `spec` with some fields of some sections changed: replace(spec, model={"kind": "baseline"})."""
    return updated(spec, sections)
