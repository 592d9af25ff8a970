"""Load a user's HuBERT / wav2vec2 checkpoint into torchaudio's Wav2Vec2Model, safely.

Two on-disk formats are read, neither of whose libraries is installed here:

- fairseq `.pt` files (HuBERT base/large, mHuBERT-25Hz of SpiritLM and LST, wav2vec2):
  a pickled dict {"model": state dict, "cfg": {"model": ..., "task": ...}} or, in older
  files, {"args": argparse.Namespace, "model": ...}. torchaudio's `import_fairseq_model`
  wants a live fairseq module; instead the architecture is read from the state dict's
  shapes plus the few settings shapes cannot tell (conv strides, heads, layer-norm order),
  the model is built with torchaudio's `wav2vec2_model`, and the keys are renamed with
  torchaudio's own fairseq key map.
- Hugging Face folders (config.json + model.safetensors or pytorch_model.bin): the config
  goes through torchaudio's HF config reader and the weights into the same submodules
  torchaudio's `import_huggingface_model` fills.

Security: every pickle is read with `torch.load(weights_only=True)`. Globals that its
allowlist refuses (argparse.Namespace, fairseq config enums, fairseq Dictionary objects in
`task_state`) are bound to `PickledRecord`, an inert class that only remembers its
constructor arguments and state: nothing named in the file is imported or called. Globals
from modules torch blocks outright (os, sys, subprocess, ...) make the file a
CheckpointError.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchaudio.models import Wav2Vec2Model, wav2vec2_model
from torchaudio.models.wav2vec2.utils import import_fairseq, import_huggingface

# fairseq's defaults for settings a checkpoint may leave out (fairseq/models/hubert/hubert.py).
_FAIRSEQ_DEFAULT_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
_FAIRSEQ_DEFAULT_HEADS = 12


class CheckpointError(ValueError):
    """The file is not a checkpoint this loader understands (a config error, not a reject)."""


class PickledRecord:
    """Inert stand-in for a global a checkpoint names but weights do not need.

    Calling it (pickle REDUCE), creating it (NEWOBJ) and setting its state (BUILD) only
    store the arguments; `plain()` turns records back into dicts and values for reading
    configs. `global_name` is set on the per-name subclass.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledRecord:
        record = super().__new__(cls)
        record.__dict__["_args"] = args
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<record {self.global_name}>"


def plain(obj: Any) -> Any:
    """Configs as plain dicts/lists/scalars: records become their state (or enum value)."""
    if isinstance(obj, PickledRecord):
        fields = {k: v for k, v in obj.__dict__.items() if not k.startswith("_")}
        if fields:
            return {k: plain(v) for k, v in fields.items()}
        args = obj.__dict__.get("_args", ())
        return plain(args[0]) if len(args) == 1 else None
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with weights_only=True; unknown globals become inert `PickledRecord`s."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises UnpicklingError or RuntimeError)
        if "weights_only" not in str(err) and "Unsupported global" not in str(err):
            raise CheckpointError(f"{path}: not a torch checkpoint ({err})") from err
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (type(f"Record_{i}", (PickledRecord,), {"global_name": n}), n) for i, n in enumerate(names)]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (globals from modules torch blocks outright: os, sys, ...)
        raise CheckpointError(
            f"{path}: refused by the weights-only loader ({str(err).splitlines()[-3:]})"
        ) from err


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", without eval."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise CheckpointError(f"conv_feature_layers: unsupported expression {ast.dump(node)[:80]}")

    layers = value(ast.parse(spec, mode="eval").body)
    parsed = []
    for layer in layers:
        if not isinstance(layer, (list, tuple)) or len(layer) != 3:
            raise CheckpointError(f"conv_feature_layers: a layer is (dim, kernel, stride), not {str(layer)[:40]}")
        dim, kernel, stride = layer
        parsed.append((int(dim), int(kernel), int(stride)))
    return parsed


@dataclass(frozen=True)
class LoadedModel:
    """A torchaudio model plus what the encoder needs to know about its input."""

    model: Wav2Vec2Model
    conv_layers: list[tuple[int, int, int]]  # (channels, kernel, stride)
    sample_rate: int
    normalize_waveform: bool
    extractor_mode: str
    num_layers: int
    source_format: str


def load_checkpoint(path: str | Path) -> LoadedModel:
    """A fairseq .pt file or a Hugging Face folder (or its config.json) -> LoadedModel."""
    path = Path(path)
    if path.is_dir() or path.name == "config.json":
        return load_huggingface(path if path.is_dir() else path.parent)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return load_fairseq(path)


# ---------------------------------------------------------------- fairseq


def _fairseq_configs(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = plain(checkpoint.get("cfg")) or {}
    args = plain(checkpoint.get("args")) or {}
    model_cfg = dict(cfg.get("model") or args)
    task_cfg = dict(cfg.get("task") or args)
    inner = model_cfg.get("w2v_args")  # fine-tuned models keep the pretraining config here
    if isinstance(inner, dict):
        model_cfg = {**model_cfg, **dict(inner.get("model") or inner)}
        task_cfg = {**dict(inner.get("task") or {}), **task_cfg}
    return model_cfg, task_cfg


def load_fairseq(path: str | Path) -> LoadedModel:
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    model_cfg, task_cfg = _fairseq_configs(checkpoint)
    state = {re.sub(r"^w2v_encoder\.(w2v_model\.)?", "", k): v for k, v in checkpoint["model"].items()}
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    n_conv = len(
        {m.group(1) for k in state if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.0\.weight", k))}
    )
    if n_conv == 0:
        raise CheckpointError(f"{path}: no feature_extractor.conv_layers.*.0.weight in the state dict")
    conv_weights = [state[f"feature_extractor.conv_layers.{i}.0.weight"] for i in range(n_conv)]
    spec = parse_conv_layers(str(model_cfg.get("conv_feature_layers") or _FAIRSEQ_DEFAULT_CONV))
    if [(w.shape[0], w.shape[2]) for w in conv_weights] != [(c, k) for c, k, _ in spec]:
        raise CheckpointError(f"{path}: conv_feature_layers {spec} does not match the conv weights")

    if "feature_extractor.conv_layers.0.2.1.weight" in state:
        extractor_mode = "layer_norm"
    elif "feature_extractor.conv_layers.0.2.weight" in state:
        extractor_mode = "group_norm"
    else:
        raise CheckpointError(
            f"{path}: conv feature extractor without normalization is not supported by torchaudio"
        )
    pos_v = state.get("encoder.pos_conv.0.weight_v")
    if pos_v is None:
        raise CheckpointError(f"{path}: no encoder.pos_conv.0.weight_v (weight-normed positional conv)")
    embed_dim = state["post_extract_proj.weight"].shape[0]
    num_layers = len({m.group(1) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    activation = str(model_cfg.get("activation_fn", "gelu"))
    if activation != "gelu":
        raise CheckpointError(f"{path}: activation_fn {activation!r}; torchaudio's model uses gelu")

    config = {
        "extractor_mode": extractor_mode,
        "extractor_conv_layer_config": spec,
        "extractor_conv_bias": "feature_extractor.conv_layers.0.0.bias" in state,
        "encoder_embed_dim": embed_dim,
        "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": pos_v.shape[2],
        "encoder_pos_conv_groups": embed_dim // pos_v.shape[1],
        "encoder_num_layers": num_layers,
        "encoder_num_heads": int(model_cfg.get("encoder_attention_heads", _FAIRSEQ_DEFAULT_HEADS)),
        "encoder_attention_dropout": 0.0,
        "encoder_ff_interm_features": state["encoder.layers.0.fc1.weight"].shape[0],
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0,
        "encoder_layer_norm_first": bool(model_cfg.get("layer_norm_first", False)),
        "encoder_layer_drop": 0.0,
    }
    model = wav2vec2_model(**config, aux_num_out=None)
    # torchaudio's fairseq key map; it passes HuBERT's label embeddings and the CTC head through.
    converted = import_fairseq._convert_state_dict(state)
    converted = {k: v for k, v in converted.items() if k != "label_embs_concat" and not k.startswith("aux.")}
    _load_strict(model, converted, path)
    return LoadedModel(
        model=model.eval(),
        conv_layers=spec,
        sample_rate=int(task_cfg.get("sample_rate", 16000)),
        normalize_waveform=bool(task_cfg.get("normalize", False)),
        extractor_mode=extractor_mode,
        num_layers=num_layers,
        source_format="fairseq",
    )


# ---------------------------------------------------------------- Hugging Face

_HF_PREFIXES = ("hubert.", "wav2vec2.")
# Hugging Face module -> torchaudio module it maps onto (as in torchaudio's `_build`).
_HF_SUBMODULES = {
    "feature_extractor.": "feature_extractor.",
    "feature_projection.": "encoder.feature_projection.",
    "encoder.": "encoder.transformer.",
}


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_path = folder / "model.safetensors"
    if safetensors_path.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_path))
    bin_path = folder / "pytorch_model.bin"
    if bin_path.is_file():
        state = safe_torch_load(bin_path)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{bin_path}: not a state dict")
        return dict(state)
    raise CheckpointError(f"{folder}: neither model.safetensors nor pytorch_model.bin")


def load_huggingface(folder: str | Path, *, ctc_head: bool = False) -> LoadedModel:
    """A Hugging Face folder -> LoadedModel; `ctc_head` keeps a *ForCTC model's `lm_head`
    as torchaudio's `aux` layer (what the CTC aligner needs; the units encoder drops it)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    hf = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = hf.get("model_type")
    if model_type not in ("hubert", "wav2vec2"):
        raise CheckpointError(f"{config_path}: model_type {model_type!r}; hubert and wav2vec2 are supported")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{config_path}: hidden_act {hf['hidden_act']!r}; torchaudio's model uses gelu")
    if model_type == "hubert" and not hf.get("feat_proj_layer_norm", True):
        raise CheckpointError(f"{config_path}: feat_proj_layer_norm = false has no torchaudio equivalent")
    try:
        config = import_huggingface._get_config(_AttributeView(hf))
    except KeyError as err:
        raise CheckpointError(f"{config_path}: missing {err}") from err
    config.update(
        encoder_projection_dropout=0.0,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_drop=0.0,
    )
    if ctc_head and "vocab_size" not in hf:
        raise CheckpointError(f"{config_path}: a CTC checkpoint needs vocab_size")
    model = wav2vec2_model(**config, aux_num_out=int(hf["vocab_size"]) if ctc_head else None)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in _read_hf_weights(folder).items():
        if ctc_head and key.startswith("lm_head."):
            state["aux." + key.removeprefix("lm_head.")] = tensor
            continue
        for prefix in _HF_PREFIXES:
            key = key.removeprefix(prefix)
        for source, target in _HF_SUBMODULES.items():
            if key.startswith(source):
                state[target + key[len(source) :]] = tensor
                break
    _load_strict(model, state, folder)
    conv = [(int(c), int(k), int(s)) for c, k, s in config["extractor_conv_layer_config"]]
    return LoadedModel(
        model=model.eval(),
        conv_layers=conv,
        sample_rate=int(hf.get("sampling_rate", 16000)),
        normalize_waveform=bool(hf.get("do_normalize", False)),
        extractor_mode=config["extractor_mode"],
        num_layers=config["encoder_num_layers"],
        source_format="huggingface",
    )


class _AttributeView:
    """config.json as the attribute object torchaudio's HF config reader expects."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(name) from None


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: Any) -> None:
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{where}: weights do not fit the architecture read from it: {err}") from err
