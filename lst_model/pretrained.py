"""Trained models as a Hugging Face-style folder that loads without the training code.

    FOLDER/config.json         how to build the model, the token space its ids mean, defaults
                               for scoring and generation (fields: `PretrainedConfig.to_json`)
    FOLDER/model.safetensors   one tensor per state-dict entry; tied entries are stored once
                               (config.json `tied_weights` maps each alias to the stored name)
    FOLDER/unit_bpe.model      bpe_speechllm: the unit BPE whose pieces follow the units
    FOLDER/training_texts.npy  the run's training-transcript digests, when it had them
                               (`lst-model score`'s contamination check)

`save_pretrained` / `lst_model.export.export_checkpoint` (`lst-model export`) write it;
`LatentSpeechTextTransformer.from_pretrained` / `FlatTransformer.from_pretrained`
(`PretrainedMixin`) and `lst_model.model.load_pretrained` (any kind) read it back, check
config.json field by field and load the weights strictly. Loading imports the model and
token-space modules, not the training code (`lst_model.train` and the shard readers of
`lst_model.data`). This module does not import `lst_model.model`, whose classes inherit
`PretrainedMixin` from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lst_data import __version__
from lst_data.core.config import canonical_hash, to_dict, validate_section
from lst_data.core.digests import file_sha256
from lst_data.core.errors import ConfigError, InputError
from lst_model.config import FLAT_KINDS, ModelConfig, RunSpec
from lst_model.errors import OptionError
from lst_model.layers import count_parameters
from lst_model.tokens import TokenSpace
from lst_model.unit_pieces import UNIT_BPE_FILE

FORMAT = "lst-model-pretrained"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The data-section fields that scoring, generation and asr/tts read of a run; the others shape
# only the training mixture and are left at their defaults in a loaded folder's RunSpec.
INFERENCE_FIELDS = ("task", "eval_patching", "patch_size", "heldout_fraction")

_REQUIRED: dict[str, type] = {"format": str, "format_version": int, "kind": str, "vocab_size": int, "model": dict,
                              "token_space": dict, "token_space_sha256": str}
_OPTIONAL: dict[str, type] = {"lst_model_version": str, "data": dict, "weights_dtype": str, "tied_weights": dict,
                              "source": dict}


def token_space_sha256(space: TokenSpace) -> str:
    """sha256 of the canonical JSON of the token space (sizes and the tokenizer / codebook hashes it knows)."""
    return canonical_hash(space.to_dict())


@dataclass(frozen=True)
class PretrainedConfig:
    """What an exported folder's config.json says. `spec`: the model config and the data fields
    of INFERENCE_FIELDS (the rest at their defaults)."""

    spec: RunSpec
    space: TokenSpace
    weights_dtype: str = "float32"
    tied_weights: dict[str, str] = field(default_factory=dict)  # alias -> the stored tensor it shares
    source: dict[str, Any] = field(default_factory=dict)  # what it was exported from (checkpoint sha256, step, ...)
    lst_model_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        data = to_dict(self.spec.data)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lst_model_version": self.lst_model_version,
            "kind": self.spec.model.kind,
            "vocab_size": self.space.size,
            "model": to_dict(self.spec.model),
            "data": {name: data[name] for name in INFERENCE_FIELDS},
            "token_space": self.space.to_dict(),
            "token_space_sha256": token_space_sha256(self.space),
            "weights_dtype": self.weights_dtype,
            "tied_weights": dict(sorted(self.tied_weights.items())),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str, unit_bpe_model: bytes | None = None) -> PretrainedConfig:
        """Checked field by field: a ConfigError naming the field and what is allowed (`where`:
        the file; `unit_bpe_model`: the unit BPE beside it, which a bpe_speechllm's token space names)."""
        _check_fields(data, where)
        if data["format"] != FORMAT:
            raise ConfigError(f"{where}: field format: {data['format']!r} is not {FORMAT!r} (not an lst-model export)")
        version = data["format_version"]
        if version != FORMAT_VERSION:
            newer = "; a newer lst_model wrote it" if version > FORMAT_VERSION else ""
            raise ConfigError(f"{where}: field format_version: {version} is not supported (this lst_model reads "
                              f"{FORMAT_VERSION}{newer})")
        try:  # every ModelConfig field, so a field this lst_model does not know is refused by name
            spec = validate_section(RunSpec, {"model": data["model"], "data": data.get("data", {})})
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if data["kind"] != spec.model.kind:
            raise ConfigError(f"{where}: field kind: {data['kind']!r} != model.kind {spec.model.kind!r}")
        try:
            space = TokenSpace.from_dict(data["token_space"], unit_bpe_model)
        except KeyError as err:
            raise ConfigError(f"{where}: field token_space.{err.args[0]} is missing") from None
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}: field token_space: {err}") from None
        if data["vocab_size"] != space.size:
            raise ConfigError(f"{where}: field vocab_size: {data['vocab_size']} != the token space's size {space.size}")
        if data["token_space_sha256"] != token_space_sha256(space):
            raise ConfigError(f"{where}: field token_space_sha256 does not match token_space (sha256 "
                              f"{token_space_sha256(space)}): the file was edited")
        tied = data.get("tied_weights", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
            raise ConfigError(f"{where}: field tied_weights: must map tensor names to tensor names")
        return cls(spec, space, data.get("weights_dtype", "float32"), tied, data.get("source", {}),
                   data.get("lst_model_version", "unknown"))


def _check_fields(data: dict[str, Any], where: str) -> None:
    """Every required field there, each field of its JSON type, no field this format does not have."""
    for name in _REQUIRED:
        if name not in data:
            raise ConfigError(f"{where}: field {name} is missing (required: {', '.join(_REQUIRED)})")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(unknown)}; known: {', '.join([*_REQUIRED, *_OPTIONAL])}")
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        value = data.get(name)
        if name in data and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ConfigError(f"{where}: field {name} must be a JSON {_JSON_TYPES[kind]} (got {value!r:.60})")


_JSON_TYPES = {str: "string", int: "integer", dict: "object"}


def exported_folder(path: Path) -> Path | None:
    """The exported folder `path` names (the folder, or its model.safetensors), else None."""
    folder = path.parent if path.name == WEIGHTS and path.is_file() else path
    return folder if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() else None


def read_config(folder: Path) -> PretrainedConfig:

    path = folder / CONFIG
    unit_bpe = folder / UNIT_BPE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no {CONFIG} there (not a folder written by lst-model export)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return PretrainedConfig.from_json(data, str(path), unit_bpe.read_bytes() if unit_bpe.is_file() else None)


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    tensors: int
    parameters: int
    bytes: int
    sha256: str  # of model.safetensors

    def summary(self) -> str:
        """The line `lst-model export` prints."""
        return (f"{self.out_dir}: {self.tensors} tensors, {self.parameters:,} parameters, {self.bytes:,} bytes, "
                f"sha256 {self.sha256}")


def weights_for_export(model: nn.Module, dtype: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors to store: CPU, contiguous, owning their memory (safetensors refuses shared
    storage), floating ones cast to `dtype` when given; and the tied entries (an entry that is
    the very same tensor as an earlier one: alias -> the earlier name)."""
    cast_to = _dtype(dtype)
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in model.state_dict().items():
        identity = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                    tensor.stride(), tensor.dtype)
        if identity in seen and tensor.numel():
            tied[name] = seen[identity]
            continue
        seen[identity] = name
        stored = tensor.detach().to("cpu")
        if cast_to is not None and stored.is_floating_point():
            stored = stored.to(cast_to)
        tensors[name] = stored.clone(memory_format=torch.contiguous_format)
    return tensors, tied


def _dtype(name: str | None) -> torch.dtype | None:
    if name is not None and name not in DTYPES:
        raise OptionError(f"{name!r} is not one of {', '.join(DTYPES)}", "--dtype")
    return None if name is None else DTYPES[name]


def _check_out_dir(out: Path) -> None:
    """Refuse a folder whose config.json is not an earlier export's (a run folder's would be overwritten)."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out} is a file; give a folder", "--out")
    existing = out / CONFIG
    if existing.is_file():
        try:
            ours = json.loads(existing.read_text(encoding="utf-8")).get("format") == FORMAT
        except (ValueError, AttributeError):
            ours = False
        if not ours:
            raise OptionError(f"{out} holds a {CONFIG} that is not an lst-model export (a run folder?); export into "
                              "a folder of its own", "--out")


def save_pretrained(model: nn.Module, spec_or_model_config: RunSpec | ModelConfig, space: TokenSpace, out_dir: str | Path,
                    *, dtype: str | None = None, source: dict[str, Any] | None = None) -> ExportResult:
    """Write `model` (built from the model config given, alone or in its run's RunSpec) and
    `space` into `out_dir`: model.safetensors, then config.json (each written whole, then
    renamed). `dtype` 'float32' or 'bfloat16' casts the floating tensors (None: as they are).
    `source`: what the weights came from, recorded as is."""

    spec = spec_or_model_config if isinstance(spec_or_model_config, RunSpec) else RunSpec(model=spec_or_model_config)
    if getattr(model, "config", spec.model) != spec.model:
        raise ValueError("the model was built from another model config than the one given")
    out = Path(out_dir)
    _check_out_dir(out)
    tensors, tied = weights_for_export(model, dtype)
    floating = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()})
    config = PretrainedConfig(spec, space, ",".join(floating) or "none", tied, dict(source or {}))
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS
    _replace(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if space.unit_bpe is not None:
        unit_bpe = space.unit_bpe.model
        _replace(out / UNIT_BPE_FILE, lambda tmp: tmp.write_bytes(unit_bpe))
    else:
        (out / UNIT_BPE_FILE).unlink(missing_ok=True)  # an earlier export's, of another model
    text = json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"
    _replace(out / CONFIG, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return ExportResult(out, len(tensors), count_parameters(model), weights.stat().st_size, file_sha256(weights))


def _replace(path: Path, write: Any) -> None:
    """`write(tmp)`, then rename tmp to `path`: a killed export never leaves a half-written file under its name."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Reading


def stored_tensors(folder: Path, config: PretrainedConfig) -> dict[str, Tensor]:
    """model.safetensors' tensors with the tied entries filled in (InputError: unreadable, or a tied name missing)."""
    path = folder / WEIGHTS
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise InputError(f"{folder}: no {WEIGHTS} there") from None
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a safetensors file ({str(err).strip().splitlines()[0][:200]})") from None
    for alias, stored in config.tied_weights.items():
        if stored not in tensors:
            raise InputError(f"{path}: tensor {stored} is missing (config.json's tied_weights shares it with {alias})")
        tensors[alias] = tensors[stored]
    return tensors


def _check_tensors(stored: dict[str, Tensor], expected: dict[str, Tensor], where: str, kind: str) -> None:
    """One line naming the first tensor that is missing, not the model's, or of another shape (or not floating when it should be)."""
    missing = [name for name in expected if name not in stored]
    if missing:
        raise InputError(f"{where}: tensor {missing[0]} is missing ({len(missing)} missing in all; the config's {kind} "
                         "model has it)")
    unexpected = [name for name in stored if name not in expected]
    if unexpected:
        raise InputError(f"{where}: tensor {unexpected[0]} is not a tensor of the config's {kind} model "
                         f"({len(unexpected)} such in all)")
    for name, tensor in expected.items():
        if stored[name].shape != tensor.shape:
            raise InputError(f"{where}: tensor {name} has shape {list(stored[name].shape)}, the config's model needs "
                             f"{list(tensor.shape)}")
        if stored[name].is_floating_point() != tensor.is_floating_point():
            raise InputError(f"{where}: tensor {name} is {stored[name].dtype}, the config's model needs {tensor.dtype}")


def with_weights(model: nn.Module, folder: Path, config: PretrainedConfig, device: str | torch.device,
                  dtype: torch.dtype | None) -> nn.Module:
    """`model` (built from `config`) with the folder's weights, on `device` (in `dtype` when given), in eval mode."""
    stored = stored_tensors(folder, config)
    _check_tensors(stored, model.state_dict(), str(folder / WEIGHTS), config.spec.model.kind)
    model.load_state_dict(stored)
    if isinstance(model, PretrainedMixin):  # every model class is
        model.token_space = config.space
    model = model.to(device)
    return (model if dtype is None else model.to(dtype)).eval()


def checked_folder(path: Path) -> Path:
    folder = exported_folder(path)
    if folder is None:
        raise InputError(f"{path}: not an exported folder (lst-model export writes {CONFIG} and {WEIGHTS} into one)")
    return folder


class PretrainedMixin:
    """`from_pretrained` and `save_pretrained` of the model classes, which inherit it.
    `token_space`: the ids' meaning (`TokenSpace.units_to_ids`, `text_to_ids`) of a model
    loaded from a folder."""

    FLAT: ClassVar[bool]  # a flat model class (FLAT_KINDS) or the LST
    config: ModelConfig
    token_space: TokenSpace | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Self:
        """This class's model of an exported folder; a ConfigError naming `kind` when the folder holds the other model class."""
        folder = checked_folder(Path(path))
        config = read_config(folder)
        kind = config.spec.model.kind
        if (kind in FLAT_KINDS) != cls.FLAT:
            right = "FlatTransformer" if kind in FLAT_KINDS else "LatentSpeechTextTransformer"
            raise ConfigError(f"{folder / CONFIG}: field kind: a {kind!r} model is no {cls.__name__}; load it with "
                              f"{right}.from_pretrained (or lst_model.model.load_pretrained, any kind)")
        model = cast(Any, cls)(config.spec.model, config.space.size)
        return cast(Self, with_weights(model, folder, config, device, dtype))

    def save_pretrained(self, out_dir: str | Path, space: TokenSpace | None = None, *, spec: RunSpec | None = None,
                        dtype: str | None = None) -> ExportResult:
        """`save_pretrained` of this model: `space` defaults to its `token_space`; `spec` (its run's
        RunSpec) adds the scoring defaults of its data section."""
        space = space or self.token_space
        if space is None:
            raise ValueError("give the token space the model was trained on (it has no token_space of its own)")
        return save_pretrained(cast(nn.Module, self), spec or self.config, space, out_dir, dtype=dtype)
