import subprocess
import sys
from pathlib import Path

import pytest

from lst_data.config import RunConfig, load_config
from lst_data.core.config import describe
from lst_data.core.errors import ConfigError

LST_DATA = Path(sys.executable).parent / "lst-data"


def test_yaml_overrides_and_hash(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\ningest:\n  min_duration: 1\nray:\n  runner: local\n")
    config = load_config(path)
    assert config.seed == 3 and config.ingest.min_duration == 1.0 and config.ray.runner == "local"
    assert config.hash != RunConfig().hash
    # Only the ingest section changed: the units section hash is the one of the defaults
    # with this seed, and the ingest hash differs.
    assert config.section_hash("ingest") != load_config(overrides={"seed": 3}).section_hash("ingest")
    assert config.section_hash("units") == load_config(overrides={"seed": 3}).section_hash("units")


def test_assignments_override_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("units:\n  k: 50\n")
    config = load_config(path, overrides={"units": {"k": 60}}, assignments=["units.k=70", "ray.runner=local"])
    assert config.units.k == 70 and config.ray.runner == "local"
    assert load_config(path, overrides={"units": {"k": 60}}).units.k == 60


def test_unknown_field_and_wrong_type_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="ingest.min_duratoin"):
        load_config(overrides={"ingest": {"min_duratoin": 1}})
    with pytest.raises(ConfigError, match=r"config field seed: .*valid integer"):
        load_config(overrides={"seed": "zero"})


# Each YAML text is refused by load_config with one ConfigError line naming the field
# (or, for YAML-level problems, the key / construct) that is wrong.
BAD_CONFIGS = {
    "negative shard size": ("shard:\n  samples_per_shard: -1\n", "shard.samples_per_shard"),
    "negative shard bytes": ("shard:\n  max_shard_bytes: -1\n", "shard.max_shard_bytes"),
    "negative batch size": ("ray:\n  batch_size: -5\n", "ray.batch_size"),
    "negative duration": ("ingest:\n  min_duration: -0.5\n", "ingest.min_duration"),
    "k zero": ("units:\n  k: 0\n", "units.k"),
    "seed 1e32": ("seed: 1e32\n", "seed"),
    "seed 1.0e+32": ("seed: 1.0e+32\n", "seed"),
    "negative seed": ("seed: -1\n", "seed"),
    "unknown encoder": ("units:\n  encoder: wav2vec\n", "units.encoder"),
    "unknown runner": ("ray:\n  runner: spark\n", "ray.runner"),
    "unknown shard order": ("shard:\n  order: random\n", "shard.order"),
    "unknown numbers mode": ("ingest:\n  numbers: spell\n", "ingest.numbers"),
    "NaN": ("ingest:\n  max_duration: .nan\n", "ingest.max_duration"),
    "infinity": ("units:\n  frame_rate: .inf\n", "units.frame_rate"),
    "duplicate key": ("seed: 1\nseed: 2\n", "seed"),
    "duplicate nested key": ("units:\n  k: 3\n  k: 4\n", "'k'"),
    "alias": ("base: &common {k: 3}\nunits: *common\n", "alias"),
    "merge alias": ("units: &u {k: 3}\nalign:\n  <<: *u\n", "alias"),
    "address list": ("ray:\n  address: [1, 2]\n", "ray.address"),
    "split path": ('shard:\n  split: "../x"\n', "shard.split"),
    "audio format path": ('ingest:\n  audio_format: "x/../../x.wav"\n', "ingest.audio_format"),
    "string for int": ('units:\n  k: "100"\n', "units.k"),
    "frame rate not dividing the feature rate": ("units:\n  frame_rate: 30.0\n", "units.frame_rate"),
}


@pytest.mark.parametrize("text,field", BAD_CONFIGS.values(), ids=list(BAD_CONFIGS))
def test_bad_values_are_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert field in message
    assert "\n" not in message


def test_duplicate_key_and_alias_messages_say_what_is_wrong(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'seed'.*line 2"):
        load_config(path)
    path.write_text("base: &common {k: 3}\nunits: *common\n")
    with pytest.raises(ConfigError, match=r"aliases \(\*common\) are not allowed"):
        load_config(path)


def test_bad_assignment_values_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="units.k"):
        load_config(assignments=["units.k=0"])
    with pytest.raises(ConfigError, match="seed"):
        load_config(assignments=["seed=1e32"])
    with pytest.raises(ConfigError, match="ray.address"):
        load_config(assignments=["ray.address=[1, 2]"])
    with pytest.raises(ConfigError, match="FIELD.PATH=VALUE"):
        load_config(assignments=["units.k"])


def test_cli_bad_set_is_one_line_exit_2_and_writes_nothing(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(LST_DATA), "ingest", str(corpus), "--out", str(out), "--set", "units.k=0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "units.k" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (out / "manifest.parquet").exists()
    assert not out.exists()


def test_every_field_is_documented():
    rows = describe(RunConfig)
    assert len(rows) > 10
    undocumented = [name for name, _, text in rows if not text.strip()]
    assert undocumented == []


def test_kmeans_out_that_is_not_a_npy_file_is_refused_before_training(tmp_path):
    import pyarrow.parquet as pq

    from lst_data.core.tables import MANIFEST_SCHEMA

    pq.write_table(MANIFEST_SCHEMA.empty_table(), tmp_path / "manifest.parquet")
    proc = subprocess.run([str(LST_DATA), "kmeans", str(tmp_path), "--out", str(tmp_path / "codebook")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"lst-data: error: --out: {tmp_path / 'codebook'} must name a .npy "
                                                "file (the codebook; its .npy.json sidecar goes beside it)"]
