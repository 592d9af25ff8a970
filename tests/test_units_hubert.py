"""HuBERT / wav2vec2 checkpoints: fairseq and Hugging Face layouts, frame counts, batching.

Real weights (mHuBERT-25Hz, HuBERT base) cannot be downloaded here, so every test builds a
small randomly initialised torchaudio model, writes it in the on-disk layout a user would
have (fairseq .pt dict with cfg; HF folder with config.json + safetensors/bin), with the
key names of that format spelled out below independently of the loader, and loads it
through the same path `units.checkpoint` takes. Expected features come from the original
torchaudio model, never from the loader.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_layout import hf_config, write_hf_folder  # tests/ is on sys.path under pytest
from test_units import _manifest, _signal, assign_units
from torchaudio.models import wav2vec2_model

from lst_data.core.config import RayConfig, updated
from lst_data.format.frames import frames_for_duration
from lst_data.ssl_checkpoints import CheckpointError, load_checkpoint, parse_conv_layers
from lst_data.units.config import UnitsConfig
from lst_data.units.encoders import HubertEncoder
from lst_data.units.stage import train_codebook

SR = 16000
# mHuBERT-25Hz's conv stack at a tiny width: hop S = 5 * 2^7 = 640, receptive field R = 720.
CONV_25HZ = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 3"
CONV_50HZ = [(24, 10, 5)] + [(24, 3, 2)] * 4 + [(24, 2, 2)] * 2  # HuBERT base: S = 320, R = 400


def _tiny_args(conv, mode: str, conv_bias: bool, layer_norm_first: bool) -> dict:
    return {
        "extractor_mode": mode,
        "extractor_conv_layer_config": conv,
        "extractor_conv_bias": conv_bias,
        "encoder_embed_dim": 48,
        "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": 16,
        "encoder_pos_conv_groups": 4,
        "encoder_num_layers": 3,
        "encoder_num_heads": 4,
        "encoder_attention_dropout": 0.0,
        "encoder_ff_interm_features": 96,
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0,
        "encoder_layer_norm_first": layer_norm_first,
        "encoder_layer_drop": 0.0,
        "aux_num_out": None,
    }


def _tiny_model(conv, mode: str, conv_bias: bool, layer_norm_first: bool, seed: int):
    torch.manual_seed(seed)
    model = wav2vec2_model(**_tiny_args(conv, mode, conv_bias, layer_norm_first)).eval()
    with torch.no_grad():  # move every norm off its identity init so a mis-mapped key shows
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


_POS = "encoder.transformer.pos_conv_embed.conv."


def _to_fairseq_key(key: str) -> str:
    """torchaudio name -> fairseq name (fairseq/models/wav2vec/wav2vec2.py module layout)."""
    rules = [
        (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        (r"feature_extractor\.conv_layers\.0\.layer_norm\.(weight|bias)$", r"GN"),
        (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
        (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
        (re.escape(_POS) + r"parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
        (re.escape(_POS) + r"parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
        (re.escape(_POS) + "bias", "encoder.pos_conv.0.bias"),
        (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
        (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
        (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
        (
            r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.",
            r"encoder.layers.\1.fc1.",
        ),
        (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
        (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
    ]
    for pattern, target in rules:
        if re.match(pattern, key):
            if target == "GN":  # group norm of the first conv block: Sequential index 2
                return "feature_extractor.conv_layers.0.2." + key.rsplit(".", 1)[1]
            return re.sub(pattern, target, key)
    raise AssertionError(f"no fairseq name for {key}")


def _write_fairseq(model, path: Path, cfg_style: str, extra: dict | None = None) -> Path:
    state = {_to_fairseq_key(k): v.clone() for k, v in model.state_dict().items()}
    # pretraining-only tensors a real HuBERT checkpoint carries
    state.update(
        {
            "mask_emb": torch.randn(48),
            "label_embs_concat": torch.randn(504, 16),
            "final_proj.weight": torch.randn(16, 48),
            "final_proj.bias": torch.randn(16),
        }
    )
    model_cfg = {
        "_name": "hubert",
        "extractor_mode": "default",
        "conv_feature_layers": CONV_25HZ,
        "encoder_attention_heads": 4,
        "layer_norm_first": False,
        "activation_fn": "gelu",
    }
    task_cfg = {"_name": "hubert_pretraining", "sample_rate": SR, "normalize": False}
    if cfg_style == "hydra":
        checkpoint = {"args": None, "cfg": {"model": model_cfg, "task": task_cfg}, "model": state}
    else:  # pre-hydra fairseq: one argparse.Namespace for everything
        checkpoint = {"args": argparse.Namespace(**{**task_cfg, **model_cfg}), "model": state}
    checkpoint.update(extra or {})
    torch.save(checkpoint, path)
    return path


def _write_huggingface(
    model, folder: Path, conv, mode, conv_bias, layer_norm_first, weights: str, prefix: str
):
    config = hf_config(
        _tiny_args(conv, mode, conv_bias, layer_norm_first),
        model_type="hubert" if prefix == "hubert." else "wav2vec2",
        architectures=["HubertModel"],
        # Training-time dropouts as real configs carry them: the loader must run without them.
        feat_proj_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, hidden_dropout=0.1, layerdrop=0.1,
    )
    extra = {prefix + "masked_spec_embed": torch.randn(48), "lm_head.weight": torch.randn(10, 48)}  # unused by units
    return write_hf_folder(folder, config, model.state_dict(), prefix=prefix, weights=weights, extra_state=extra)


def _reference(model, wave: torch.Tensor, pad: tuple[int, int], layer: int, pool: int) -> torch.Tensor:
    """The original torchaudio model's layer output for one padded utterance, pooled."""
    with torch.no_grad():
        out = model.extract_features(F.pad(wave, pad)[None], num_layers=layer)[0][-1][0]
    n = out.shape[0] // pool
    return out[: n * pool].reshape(n, pool, -1).mean(1)


@pytest.fixture(scope="module")
def fairseq_25hz(tmp_path_factory):
    model = _tiny_model(parse_conv_layers(CONV_25HZ), "group_norm", False, False, seed=0)
    path = _write_fairseq(model, tmp_path_factory.mktemp("fs") / "mhubert_tiny_25hz.pt", "hydra")
    return model, path


def test_parse_conv_layers_without_eval():
    assert parse_conv_layers(CONV_25HZ) == [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 3
    with pytest.raises(CheckpointError):
        parse_conv_layers("__import__('os').system('true')")


def test_fairseq_checkpoint_gives_the_models_features(fairseq_25hz):
    model, path = fairseq_25hz
    loaded = load_checkpoint(path)
    assert (
        loaded.source_format == "fairseq" and loaded.extractor_mode == "group_norm" and loaded.num_layers == 3
    )
    encoder = HubertEncoder(UnitsConfig(encoder="hubert", checkpoint=str(path), layer=2, device="cpu"))
    assert (encoder.hop, encoder.receptive_field, encoder.pool, encoder.dim) == (640, 720, 1, 48)
    wave = torch.from_numpy(_signal(1.3, 0))
    expected = _reference(model, wave, (40, 40), layer=2, pool=1)  # (R - S) / 2 = 40 each side
    got = encoder.encode([wave])[0]
    assert got.shape == (frames_for_duration(len(wave) / SR, 25.0), 48)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_old_argparse_checkpoint_with_foreign_objects_loads(tmp_path, fairseq_25hz):
    model, _ = fairseq_25hz

    class Dictionary:  # stands for fairseq.data.dictionary.Dictionary in a checkpoint's task_state
        def __init__(self) -> None:
            self.symbols = ["<s>", "a"]

    fake = types.ModuleType("fairseq_fake_dictionary")
    fake.Dictionary = Dictionary
    Dictionary.__module__, Dictionary.__qualname__ = "fairseq_fake_dictionary", "Dictionary"
    sys.modules["fairseq_fake_dictionary"] = fake
    try:
        path = _write_fairseq(
            model, tmp_path / "old.pt", "argparse", {"task_state": {"dictionaries": [Dictionary()]}}
        )
    finally:
        del sys.modules["fairseq_fake_dictionary"]
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(path, weights_only=True)  # what a plain safe load says about such a file
    encoder = HubertEncoder(UnitsConfig(encoder="hubert", checkpoint=str(path), layer=3, device="cpu"))
    wave = torch.from_numpy(_signal(0.9, 1))
    torch.testing.assert_close(
        encoder.encode([wave])[0], _reference(model, wave, (40, 40), 3, 1), rtol=1e-4, atol=1e-4
    )


def test_checkpoint_with_planted_code_is_refused_and_never_runs(tmp_path, fairseq_25hz):
    model, _ = fairseq_25hz
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = _write_fairseq(model, tmp_path / "evil.pt", "hydra", {"extra_state": Exploit()})
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("weights", "prefix", "mode", "conv_bias", "ln_first"),
    [
        ("safetensors", "", "group_norm", False, False),
        ("bin", "hubert.", "layer_norm", True, True),  # wav2vec2-large style: layer-norm convs, pre-LN
    ],
)
def test_huggingface_folder_gives_the_models_features(tmp_path, weights, prefix, mode, conv_bias, ln_first):
    model = _tiny_model(CONV_50HZ, mode, conv_bias, ln_first, seed=1)
    folder = _write_huggingface(model, tmp_path / "hf", CONV_50HZ, mode, conv_bias, ln_first, weights, prefix)
    loaded = load_checkpoint(folder)
    assert loaded.source_format == "huggingface" and loaded.extractor_mode == mode
    # 50 Hz model, 25 Hz units: pairs of frames are averaged
    encoder = HubertEncoder(UnitsConfig(encoder="hubert", checkpoint=str(folder), layer=3, device="cpu"))
    assert (encoder.hop, encoder.receptive_field, encoder.pool) == (320, 400, 2)
    wave = torch.from_numpy(_signal(1.01, 2))
    got = encoder.encode([wave])[0]
    assert got.shape[0] == frames_for_duration(len(wave) / SR, 25.0)
    torch.testing.assert_close(got, _reference(model, wave, (40, 40), 3, 2), rtol=1e-4, atol=1e-4)


def test_wrong_files_raise_checkpoint_errors(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "wavlm"}))
    with pytest.raises(CheckpointError, match="wavlm"):
        load_checkpoint(tmp_path / "hf")


@pytest.mark.parametrize("padding", ["center", "none"])
def test_hubert_frame_counts_follow_the_documented_formula(fairseq_25hz, padding):
    _, path = fairseq_25hz
    encoder = HubertEncoder(
        UnitsConfig(encoder="hubert", checkpoint=str(path), layer=1, hubert_padding=padding, device="cpu")
    )
    lengths = [100, 639, 640, 719, 720, 1279, 1359, 1360, 16000, 16079, 16080]
    feats = encoder.encode([torch.from_numpy(_signal(n / SR, n)) for n in lengths])
    for n, f in zip(lengths, feats, strict=True):
        expected = n // 640 if padding == "center" else (0 if n < 720 else (n - 720) // 640 + 1)
        assert f.shape[0] == encoder.num_frames(n) == expected, (padding, n)
        if padding == "center":
            assert expected == frames_for_duration(n / SR, 25.0)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_hubert_batch_equals_one_by_one(tmp_path, mode):
    model = _tiny_model(CONV_50HZ, mode, False, False, seed=3)
    folder = _write_huggingface(model, tmp_path / "hf", CONV_50HZ, mode, False, False, "safetensors", "")
    encoder = HubertEncoder(UnitsConfig(encoder="hubert", checkpoint=str(folder), layer=3, device="cpu"))
    waves = [torch.from_numpy(_signal(s, i)) for i, s in enumerate([0.3, 2.2, 1.05, 0.041])]
    for wave, feats in zip(waves, encoder.encode(waves), strict=True):
        torch.testing.assert_close(feats, encoder.encode([wave])[0], rtol=1e-4, atol=1e-4)


def test_hubert_units_end_to_end(tmp_path, fairseq_25hz):
    _, path = fairseq_25hz
    signals = {f"u{i}": _signal(0.5 + 0.4 * i, i) for i in range(5)}
    signals["tiny"] = _signal(0.03, 7)
    manifest = _manifest(tmp_path, signals)
    config = UnitsConfig(encoder="hubert", checkpoint=str(path), layer=2, k=6, device="cpu")
    local = RayConfig(runner="local", batch_size=3)
    train_codebook(manifest, tmp_path / "cb.npy", config, 0, local, show_progress=False)
    report = assign_units(manifest, tmp_path / "cb.npy", tmp_path / "out", config, local)
    rows = {r["id"]: r for r in report.read_output().to_pylist()}
    assert sorted(rows) == [f"u{i}" for i in range(5)]
    assert [(r.id, r.code) for r in report.rejects] == [("tiny", "units_failed")]
    for utt_id, row in rows.items():
        assert (row["encoder"], row["layer"], row["k"]) == ("hubert", 2, 6)
        assert row["n_frames"] == len(row["units"]) == len(signals[utt_id]) // 640
    again = assign_units(
        manifest,
        tmp_path / "cb.npy",
        tmp_path / "again",
        updated(config, {"batch_seconds": 0.5}),
        RayConfig(runner="local", batch_size=1),
    )
    assert again.read_output().equals(report.read_output())
    np.testing.assert_array_less(np.concatenate([r["units"] for r in rows.values()]), 6)
