import pytest

from lst_data.config import ConfigError, RunConfig, describe, load_config


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


def test_unknown_field_and_wrong_type_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="ingest.min_duratoin"):
        load_config(overrides={"ingest": {"min_duratoin": 1}})
    with pytest.raises(ConfigError, match="seed must be int"):
        load_config(overrides={"seed": "zero"})


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) > 10
    undocumented = [name for name, _, text in rows if not text.strip()]
    assert undocumented == []
