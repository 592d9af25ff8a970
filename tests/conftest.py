"""Shared fixtures. Ray is started once per test session (it takes seconds on 2 cores)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MFA_FIXTURES = SHARED / "fixtures" / "mfa"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime on loopback for the whole session (2 CPUs, no dashboard)."""
    from lst_data.core.config import RayConfig
    from lst_data.core.ray_env import ensure_ray

    ensure_ray(RayConfig())
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """The espeak-ng demo corpus (MFA layout + ground_truth.json), synthesized once per session."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make setup`")
    from lst_data.demo import synthesize_demo_corpus

    out = tmp_path_factory.mktemp("demo") / "corpus"
    synthesize_demo_corpus(out, n_utterances=12)
    return out


@pytest.fixture(scope="session")
def demo_build(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus built once per session through the real pipeline (`demo_run.build_config`):
    the run folder, with shards/ and the tokenizer beside them."""
    from demo_run import build_config

    from pipelines.build_corpus import build_corpus

    run = tmp_path_factory.mktemp("demo_build") / "run"
    build_corpus(demo_corpus, run, build_config())
    return run


@pytest.fixture(scope="session")
def make_synthetic_shards(tmp_path_factory):
    """A function writing a shard folder of `n_samples` synthetic records (tables of `synthetic_tables(seed)`)."""
    from support.synthetic_shards import synthetic_tables

    from lst_data.config import RunConfig
    from lst_data.core.config import updated
    from lst_data.shards.join import join_records
    from lst_data.shards.writer import write_shards

    def make(n_samples: int, samples_per_shard: int, seed: int) -> Path:
        out = tmp_path_factory.mktemp("shards")
        config = updated(RunConfig(), {"shard": {"samples_per_shard": samples_per_shard}})
        write_shards(join_records(synthetic_tables(n_samples, seed=seed), config), out, config, show_progress=False)
        return out

    return make


TINY_RUN_CONFIG = ("preset: tiny\nmodel: {d_global: 32, d_local: 32}\ndata: {seq_positions: 32, heldout_fraction: 0.3}\n"
                   "train: {batch_size: 2, budget_positions: 64, threads: 1, loader_workers: 0}\n")


@pytest.fixture(scope="module")
def tiny_cli_run(tmp_path_factory):
    """Toy shards (30 utterances, 3 speakers) and a tiny LST trained on them for 4 steps through
    `lst-model train` (RUN = root / "run"): (root, shards). One per test module, which may write
    beside it."""
    from click.testing import CliRunner
    from support.toy_corpus import write_synthetic_shards

    from lst_model.cli import cli

    root = tmp_path_factory.mktemp("tiny_run")
    shards = write_synthetic_shards(root / "shards", 30, speakers=3)
    (root / "run.yaml").write_text(TINY_RUN_CONFIG, encoding="utf-8")
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--config", str(root / "run.yaml"), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root, shards
