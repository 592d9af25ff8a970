"""Write a torchaudio wav2vec2 / HuBERT model as a Hugging Face folder, for tests.

Real checkpoints cannot be downloaded here, so tests write small random models in the
layout a user's Hugging Face folder has (config.json + model.safetensors or
pytorch_model.bin). The config fields and key names are spelled out here from the
Hugging Face format itself, independently of lst_data.ssl_checkpoints, so loading the
folder back tests the loader rather than its own inverse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# torchaudio module -> Hugging Face module; anything else keeps its name under the prefix.
_TORCHAUDIO_TO_HF = (("encoder.feature_projection.", "feature_projection."), ("encoder.transformer.", "encoder."))


def hf_config(args: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The config.json of a model built with torchaudio's `wav2vec2_model(**args)`."""
    conv = args["extractor_conv_layer_config"]
    return {
        "feat_extract_norm": args["extractor_mode"].split("_")[0],
        "conv_dim": [c for c, _, _ in conv],
        "conv_kernel": [k for _, k, _ in conv],
        "conv_stride": [s for _, _, s in conv],
        "conv_bias": args["extractor_conv_bias"],
        "hidden_size": args["encoder_embed_dim"],
        "num_hidden_layers": args["encoder_num_layers"],
        "num_attention_heads": args["encoder_num_heads"],
        "intermediate_size": args["encoder_ff_interm_features"],
        "hidden_act": "gelu",
        "num_conv_pos_embeddings": args["encoder_pos_conv_kernel"],
        "num_conv_pos_embedding_groups": args["encoder_pos_conv_groups"],
        "do_stable_layer_norm": args["encoder_layer_norm_first"],
        "feat_proj_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "hidden_dropout": 0.0,
        "layerdrop": 0.0,
        "feat_proj_layer_norm": True,
        "sampling_rate": 16000,
        "do_normalize": False,
        **extra,
    }


def write_hf_folder(
    folder: Path,
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    prefix: str,
    weights: str = "safetensors",
    extra_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """config.json + weights of a torchaudio state dict; `aux.*` (a CTC head) becomes `lm_head.*`."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dict(config)))
    hf_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("aux."):
            hf_key = "lm_head." + key.removeprefix("aux.")
        else:
            for source, target in _TORCHAUDIO_TO_HF:
                key = key.replace(source, target)
            hf_key = prefix + key
        if weights == "bin":  # older transformers wrote the weight-norm halves as weight_g / weight_v
            hf_key = hf_key.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            )
        hf_state[hf_key] = value.clone().contiguous()
    hf_state.update(extra_state or {})
    if weights == "bin":
        torch.save(hf_state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(hf_state, str(folder / "model.safetensors"))
    return folder
