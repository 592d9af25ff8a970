"""Exported models (lst_model.pretrained, `lst-model export`): the folder gives the checkpoint's
logits, loads with plain safetensors + json and without the training code, and its
config.json and weights are checked field by field and tensor by tensor."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from support.toy_corpus import synthetic_records, write_synthetic_shards

from lst_data.core.digests import file_sha256
from lst_data.core.errors import ConfigError, InputError
from lst_model.cli import cli
from lst_model.config import load_run_spec
from lst_model.data import load_token_space, read_training_texts
from lst_model.export import export_checkpoint
from lst_model.model import (
    Batch,
    FlatTransformer,
    LatentSpeechTextTransformer,
    count_parameters,
    load_pretrained,
)
from lst_model.pretrained import CONFIG, WEIGHTS
from lst_model.tokens import TokenSpace
from lst_model.train import (
    CHECKPOINT,
    checkpoint_path,
    load_checkpoint,
    load_model,
    read_log,
    train_on_shards,
)

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {"lst": LatentSpeechTextTransformer, "baseline": FlatTransformer}


def _spec(kind: str, **model):
    return load_run_spec(overrides={
        "preset": "tiny",
        "model": {"kind": kind, "d_global": 32, "d_local": 32, **model},
        "data": {"seq_positions": 32, "heldout_fraction": 0.4},
        "train": {"batch_size": 2, "budget_positions": 2 * 32 * 3, "log_every": 1, "threads": 1, "device": "cpu"},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Toy shards (3 speakers), an LST and a baseline trained 3 steps on them, and each run exported."""
    root = tmp_path_factory.mktemp("pretrained")
    shards = write_synthetic_shards(root / "shards", 30, speakers=3)
    for kind in CLASSES:
        train_on_shards(_spec(kind), shards, root / kind, announce=lambda _: None)
        export_checkpoint(root / kind / CHECKPOINT, root / f"{kind}-export")
    return SimpleNamespace(root=root, shards=shards, run=lambda kind: root / kind, export=lambda kind: root / f"{kind}-export")


def _batch(space: TokenSpace, flat: bool) -> Batch:
    """Two rows: text then speech in patches of 4 (one of them shorter, so padded)."""
    speech = [space.speech_start, *space.units_to_ids([3, 3, 7, 9, 11, 2, 2, 5])]
    long = SimpleNamespace(tokens=[space.bos, space.text_start, 5, 17, 40, *speech, space.eos],
                           patch_lengths=[1, 1, 1, 1, 1, 1, 4, 4, 1])
    short = SimpleNamespace(tokens=[space.bos, *speech[:5]], patch_lengths=[1, 1, 4])
    return Batch.from_examples([long, short], space.pad, flat=flat)


def _logits(model: torch.nn.Module, space: TokenSpace, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(_batch(space, kind != "lst"))


@pytest.mark.parametrize("kind", list(CLASSES))
def test_the_export_gives_the_checkpoints_logits(runs, kind):
    reference, spec, space = load_model(runs.run(kind) / CHECKPOINT)
    loaded = CLASSES[kind].from_pretrained(runs.export(kind))
    assert type(loaded) is CLASSES[kind] and not loaded.training
    assert loaded.token_space == space and loaded.config == spec.model
    expected = _logits(reference, space, kind)
    assert torch.equal(_logits(loaded, space, kind), expected)
    # load_model (score, generate, asr, tts) takes the folder or its model.safetensors as well
    for path in (runs.export(kind), runs.export(kind) / WEIGHTS):
        model, loaded_spec, loaded_space = load_model(path)
        assert torch.equal(_logits(model, loaded_space, kind), expected)
        assert loaded_spec.model == spec.model and loaded_spec.data.heldout_fraction == 0.4


def test_a_bpe_speechllm_export_carries_its_unit_bpe(runs, tmp_path):
    train_on_shards(_spec("bpe_speechllm", unit_bpe_vocab=48), runs.shards, tmp_path / "run", announce=lambda _: None)
    export_checkpoint(tmp_path / "run" / CHECKPOINT, tmp_path / "export")
    reference, _, space = load_model(tmp_path / "run" / CHECKPOINT)
    loaded = FlatTransformer.from_pretrained(tmp_path / "export")
    assert space.unit_bpe is not None and loaded.token_space.unit_bpe == space.unit_bpe
    assert (tmp_path / "export" / "unit_bpe.model").read_bytes() == space.unit_bpe.model
    assert torch.equal(_logits(loaded, space, "bpe_speechllm"), _logits(reference, space, "bpe_speechllm"))
    (tmp_path / "export" / "unit_bpe.model").unlink()
    with pytest.raises(ConfigError, match="field token_space: .*unit BPE"):
        load_pretrained(tmp_path / "export")


def test_the_export_loads_with_plain_safetensors_and_without_the_training_code(runs, tmp_path):
    folder = runs.export("lst")
    reference, _, space = load_model(runs.run("lst") / CHECKPOINT)
    tokens = _batch(space, flat=False)
    torch.save({"tokens": tokens.tokens, "patch_index": tokens.patch_index, "n_patches": tokens.n_patches,
                "document": tokens.document}, tmp_path / "batch.pt")
    script = f"""
import json, sys, torch
from safetensors.torch import load_file
config = json.load(open({str(folder / CONFIG)!r}))
tensors = load_file({str(folder / WEIGHTS)!r})
from lst_model.model import Batch, LatentSpeechTextTransformer
model = LatentSpeechTextTransformer.from_pretrained({str(folder)!r})
assert sorted(tensors) == sorted(model.state_dict()), "file and model tensors differ"
assert all(torch.equal(tensors[name], value) for name, value in model.state_dict().items())
assert config["kind"] == "lst" and config["vocab_size"] == model.token_space.size
with torch.no_grad():
    logits = model(Batch(**torch.load({str(tmp_path / "batch.pt")!r})))
torch.save(logits, {str(tmp_path / "logits.pt")!r})
print(sorted(m for m in sys.modules if m.startswith("lst_model")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded_modules = done.stdout.strip()
    assert "'lst_model.model'" in loaded_modules
    assert "'lst_model.train'" not in loaded_modules and "'lst_model.data'" not in loaded_modules
    with torch.no_grad():
        expected = reference(tokens)
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_bfloat16_export_stores_rounded_weights_and_loads_them_into_float32(runs, tmp_path):
    result = export_checkpoint(runs.run("lst") / CHECKPOINT, tmp_path / "bf16", dtype="bfloat16")
    stored = load_file(tmp_path / "bf16" / WEIGHTS)
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert result.bytes < 0.6 * (runs.export("lst") / WEIGHTS).stat().st_size
    trained = load_checkpoint(runs.run("lst") / CHECKPOINT)["model"]
    model, config = load_pretrained(tmp_path / "bf16")
    assert config.weights_dtype == "bfloat16"
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, trained[name].to(torch.bfloat16).float()), name


def test_config_json_carries_the_checkpoints_token_space_and_its_hash(runs):
    saved = load_checkpoint(runs.run("lst") / CHECKPOINT)
    config = json.loads((runs.export("lst") / CONFIG).read_text())
    assert config["token_space"] == saved["token_space"].to_dict() == load_token_space(runs.shards).to_dict()
    canonical = json.dumps(saved["token_space"].to_dict(), sort_keys=True, separators=(",", ":"))
    assert config["token_space_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert config["model"] == saved["spec"].model.model_dump(mode="json")  # every field, new ones included
    assert config["source"]["checkpoint_sha256"] == file_sha256(runs.run("lst") / CHECKPOINT)
    assert config["source"]["step"] == saved["step"] == 3
    assert (runs.export("lst") / "training_texts.npy").read_bytes() == (runs.run("lst") / "training_texts.npy").read_bytes()


def test_scoring_the_export_equals_scoring_the_run_and_other_shards_are_refused(runs, tmp_path):
    from lst_data.config import load_config
    from lst_data.shards.writer import write_shards

    scored = [CliRunner().invoke(cli, ["score", "--model", str(model), "--shards", str(runs.shards), "--endings", "2"])
              for model in (runs.run("lst"), runs.export("lst"))]
    assert [r.exit_code for r in scored] == [0, 0], scored[1].output
    assert json.loads(scored[0].stdout.splitlines()[-1]) == json.loads(scored[1].stdout.splitlines()[-1])
    other = tmp_path / "other"  # the same utterances under a 128-piece tokenizer: another token space
    write_shards(synthetic_records(6), other, load_config(), tokenizer_vocab_size=128, show_progress=False)
    refused = CliRunner().invoke(cli, ["score", "--model", str(runs.export("lst")), "--shards", str(other)])
    assert refused.exit_code == 2 and "token space is not the model's" in refused.output
    assert "vocabulary 96 + 32 units != 128 + 32" in refused.output and "Traceback" not in refused.output


def _edited_copy(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / CONFIG).read_text())
    edit(config)
    (copy / CONFIG).write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("vocab_size"), "field vocab_size is missing"),
    (lambda c: c.update(format_version=2), "field format_version: 2 is not supported (this lst_model reads 1; a newer"),
    (lambda c: c.update(kind="baseline"), "field kind: 'baseline' != model.kind 'lst'"),
    (lambda c: c["model"].update(kind="transformer"), "config field model.kind"),
    (lambda c: c["model"].update(experts_per_token=2), "unknown config field model.experts_per_token"),
    (lambda c: c.update(weights="model.bin"), "unknown field weights"),
    (lambda c: c.update(vocab_size="133"), "field vocab_size must be a JSON integer"),
    (lambda c: c["token_space"].update(n_units=64), "field vocab_size: 133 != the token space's size 165"),
    (lambda c: c["token_space"].update(codebook_sha256="0" * 64), "field token_space_sha256 does not match"),
    (lambda c: c.update(format="hf-transformers"), "field format: 'hf-transformers' is not 'lst-model-pretrained'"),
], ids=["missing", "version", "kind", "model-kind", "future-field", "unknown-field", "type", "vocab", "hash", "format"])
def test_config_json_errors_are_one_line_naming_the_field(runs, tmp_path, edit, message):
    copy = _edited_copy(runs.export("lst"), tmp_path, edit)
    with pytest.raises(ConfigError) as raised:
        load_pretrained(copy)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith(str(copy / CONFIG))


@pytest.mark.parametrize("cls,folder", [(LatentSpeechTextTransformer, "baseline"), (FlatTransformer, "lst")])
def test_from_pretrained_of_the_other_model_class_names_kind(runs, cls, folder):
    with pytest.raises(ConfigError, match=r"field kind: a '\w+' model is no " + cls.__name__):
        cls.from_pretrained(runs.export(folder))


def _tampered(tensors: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    name = sorted(name for name, t in tensors.items() if t.ndim == 2)[0]
    tensors = dict(tensors)
    if how == "shape":
        tensors[name] = tensors[name][:-1].contiguous()
    elif how == "missing":
        del tensors[name]
    else:
        tensors["adapter.weight"] = torch.zeros(2, 2)
    return tensors


@pytest.mark.parametrize("how,message", [("shape", r"tensor \S+ has shape \[\d+, \d+\], the config's model needs"),
                                         ("missing", r"tensor \S+ is missing \(1 missing in all"),
                                         ("extra", r"tensor adapter.weight is not a tensor of the config's lst model")],
                         ids=["shape", "missing", "extra"])
def test_tampered_weights_are_refused_naming_the_tensor(runs, tmp_path, how, message):
    copy = tmp_path / "copy"
    shutil.copytree(runs.export("lst"), copy)
    save_file(_tampered(load_file(copy / WEIGHTS), how), copy / WEIGHTS)
    with pytest.raises(InputError, match=message) as raised:
        LatentSpeechTextTransformer.from_pretrained(copy)
    assert "\n" not in str(raised.value)


def test_tied_weights_are_stored_once_and_loaded_into_both(runs, tmp_path):
    model, spec, space = load_model(runs.run("lst") / CHECKPOINT)
    model.head.weight = model.embed.weight  # tie the output head to the embedding
    result = model.save_pretrained(tmp_path / "tied", space, spec=spec)
    config = json.loads((tmp_path / "tied" / CONFIG).read_text())
    assert config["tied_weights"] == {"head.weight": "embed.weight"}
    assert "head.weight" not in load_file(tmp_path / "tied" / WEIGHTS) and result.tensors == len(model.state_dict()) - 1
    loaded = LatentSpeechTextTransformer.from_pretrained(tmp_path / "tied")
    assert torch.equal(loaded.head.weight, model.embed.weight)
    assert torch.equal(_logits(loaded, space, "lst"), _logits(model, space, "lst"))


def test_cli_export_reports_the_file_and_is_deterministic(runs, tmp_path):
    out = tmp_path / "exported"
    result = CliRunner().invoke(cli, ["export", str(runs.run("baseline")), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = FlatTransformer.from_pretrained(out)
    sha = file_sha256(out / WEIGHTS)
    assert result.output.strip() == (f"{out}: {len(model.state_dict())} tensors, {count_parameters(model):,} parameters, "
                                     f"{(out / WEIGHTS).stat().st_size:,} bytes, sha256 {sha}")
    assert sha == file_sha256(runs.export("baseline") / WEIGHTS)  # same checkpoint, same bytes
    assert (out / CONFIG).read_bytes() == (runs.export("baseline") / CONFIG).read_bytes()


@pytest.mark.parametrize("args,message", [
    (lambda r, out: [str(r.run("lst")), "--out", str(r.run("baseline"))], "--out"),  # a run folder's config.json
    (lambda r, out: [str(r.shards), "--out", str(out)], "no checkpoint there"),
    (lambda r, out: [str(r.run("lst")), "--out", str(out), "--dtype", "float16"], "--dtype"),
], ids=["run-folder-out", "no-checkpoint", "dtype"])
def test_cli_export_errors_are_one_line_exit_2(runs, tmp_path, args, message):
    before = (runs.run("baseline") / CONFIG).read_bytes()
    result = CliRunner().invoke(cli, ["export", *args(runs, tmp_path / "out")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    assert (runs.run("baseline") / CONFIG).read_bytes() == before


@pytest.mark.parametrize("kind", list(CLASSES))
def test_fine_tuning_from_an_export_equals_fine_tuning_from_its_checkpoint(runs, kind, tmp_path):
    """`--init` takes an exported folder: the same start weights, so the same losses, and the
    pretrained run's training transcripts are inherited through the folder's copy."""
    spec = _spec(kind)
    logs = {}
    for name, init in (("checkpoint", runs.run(kind) / CHECKPOINT), ("export", checkpoint_path(runs.export(kind)))):
        train_on_shards(spec, runs.shards, tmp_path / name, init=init, announce=lambda _: None)
        logs[name] = [(row["step"], row["loss"]) for row in read_log(tmp_path / name)]
    assert logs["export"] == logs["checkpoint"] and len(logs["export"]) == 3
    assert (read_training_texts(tmp_path / "export") == read_training_texts(tmp_path / "checkpoint")).all()
