"""The corpus build end to end: real Ray, real aligner, real shards, resume and node failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from lst_data.config import load_config
from pipelines.build_corpus import STEP_ORDER, build_corpus

REPO = Path(__file__).resolve().parent.parent
# Small but real: a 20-cluster codebook and a 120-piece BPE keep the build fast on 2 cores.
OVERRIDES = {"units": {"k": 20, "sample_frames": 20000}, "tokenizer": {"vocab_size": 120}}


def shard_bytes(shard_dir: Path) -> dict[str, bytes]:
    """What must be identical between two builds: tars, sidecars, the index."""
    files = sorted(shard_dir.glob("*.tar")) + sorted(shard_dir.glob("*-*.json")) + [shard_dir / "index.parquet"]
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="session")
def clean_build(demo_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "run"
    build_corpus(demo_corpus, out, load_config(overrides={**OVERRIDES, "ray": {"runner": "local"}}))
    return out


def test_local_build_makes_readable_shards(clean_build: Path, demo_corpus: Path):
    truth = json.loads((demo_corpus / "ground_truth.json").read_text())
    samples = list(wds.WebDataset(sorted(map(str, (clean_build / "shards").glob("*.tar"))), shardshuffle=False))
    assert len(samples) == len(truth["utterances"])
    by_id = {json.loads(s["json"])["id"]: json.loads(s["json"]) for s in samples}
    onset_errors = []
    for utt in truth["utterances"]:
        record = by_id[utt["id"]]
        assert [w["word"] for w in record["words"]] == utt["normalized_text"].split()
        onset_errors += [abs(w["start_frame"] - int(t["start"] * 25)) for w, t in zip(record["words"], utt["words"], strict=True)]
    # Word onset frames from the aligner: nearly all within 2 frames (80 ms) of the truth.
    assert sum(e <= 2 for e in onset_errors) / len(onset_errors) >= 0.9, sorted(onset_errors)[-10:]
    build = json.loads((clean_build / "build.json").read_text())
    assert [s["name"] for s in build["steps"]] == list(STEP_ORDER)
    dataset = json.loads((clean_build / "shards" / "dataset.json").read_text())
    assert dataset["counts"]["samples"] == len(truth["utterances"])


@pytest.mark.ray
def test_ray_build_equals_local_build_and_resume_keeps_everything(ray_local, clean_build, demo_corpus, tmp_path):
    out = tmp_path / "run"
    config = load_config(overrides={**OVERRIDES, "ray": {"runner": "ray", "num_workers": 2, "cpus_per_worker": 0.5}})
    build_corpus(demo_corpus, out, config)
    assert shard_bytes(out / "shards") == shard_bytes(clean_build / "shards")
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    report = build_corpus(demo_corpus, out, config)
    assert all(o.skipped for o in report.outcomes)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_changed_section_redoes_only_what_depends_on_it(clean_build, demo_corpus, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(clean_build, out)
    changed = load_config(overrides={**OVERRIDES, "units": {"k": 16, "sample_frames": 20000}, "ray": {"runner": "local"}})
    report = build_corpus(demo_corpus, out, changed)
    assert {o.name: o.skipped for o in report.outcomes} == {
        "ingest": True, "align": True, "units": False, "tokenize": True, "shard": False,
    }
    first = next(iter(wds.WebDataset(str(next((out / "shards").glob("*.tar"))), shardshuffle=False)))
    assert json.loads(first["json"])["units"]["k"] == 16


def test_killed_build_resumes_to_the_same_bytes(clean_build, demo_corpus, tmp_path):
    out = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(json.dumps({**OVERRIDES, "ray": {"runner": "local"}}))  # JSON is YAML
    command = [sys.executable, "-m", "lst_data.cli", "build", str(demo_corpus), "--out", str(out), "--config", str(config_file)]
    env = {**os.environ, "LST_DATA_NO_PROGRESS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "align" / "done.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "align" / "done.json").exists() and not (out / "shards" / "done.json").exists()
    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[ingest] kept" in resumed.stderr and "[align] kept" in resumed.stderr
    assert shard_bytes(out / "shards") == shard_bytes(clean_build / "shards")


def test_existing_run_needs_resume(clean_build, demo_corpus):
    from click.testing import CliRunner

    from lst_data.cli import cli

    result = CliRunner().invoke(cli, ["build", str(demo_corpus), "--out", str(clean_build), "--runner", "local"])
    # a user error: one line, exit 2
    assert result.exit_code == 2 and "--resume" in result.output


@pytest.mark.slow
def test_node_removed_mid_job_gives_the_same_bytes(clean_build, demo_corpus, tmp_path):
    out = tmp_path / "run"
    overrides = {**OVERRIDES, "ray": {"runner": "ray", "num_workers": 2, "batch_size": 2}}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "node_failure_job.py"), str(demo_corpus), str(out),
         "align/alignments.parquet", json.dumps(overrides)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("NODE_FAILURE_RESULT ")]
    summary = json.loads(line.removeprefix("NODE_FAILURE_RESULT "))
    assert summary.get("error") is None, summary
    assert summary["killed_node"] is not None, "no node hosting an actor was found to kill"
    assert summary["node_ips"] == ["127.0.0.1"], "test cluster nodes must stay on loopback"
    assert shard_bytes(out / "shards") == shard_bytes(clean_build / "shards")


@pytest.mark.slow
def test_ray_job_submit_to_loopback_head(clean_build, demo_corpus, tmp_path):
    from pipelines.local_cluster import start_head, stop_head, submit_command

    head = start_head(tmp_path / "head", num_cpus=2)
    try:
        out = tmp_path / "run"
        config_file = tmp_path / "run.yaml"
        config_file.write_text(json.dumps({**OVERRIDES, "ray": {"num_workers": 1}}))
        entry = ["python", "-m", "pipelines.build_corpus", str(demo_corpus), "--out", str(out), "--config", str(config_file)]
        submitted = subprocess.run(submit_command(head, entry, REPO), env=head.client_env(), capture_output=True, text=True, timeout=900)
        assert submitted.returncode == 0, (submitted.stdout[-2000:], submitted.stderr[-2000:])
        assert "succeeded" in submitted.stdout + submitted.stderr
    finally:
        stop_head(head)
    assert shard_bytes(out / "shards") == shard_bytes(clean_build / "shards")


def test_kept_step_reports_the_rejects_it_made(demo_corpus, tmp_path):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    (corpus / "spk_us" / "broken.wav").write_bytes(b"RIFF not really audio")
    (corpus / "spk_us" / "broken.lab").write_text("broken file", encoding="utf-8")
    config = load_config(overrides={**OVERRIDES, "ray": {"runner": "local"}})
    (ran,) = build_corpus(corpus, tmp_path / "run", config, steps=("ingest",)).outcomes
    (kept,) = build_corpus(corpus, tmp_path / "run", config, steps=("ingest",)).outcomes
    assert not ran.skipped and kept.skipped
    assert [(r.id, r.code) for r in ran.rejects] == [("broken", "audio_unreadable")]
    assert kept.rejects == ran.rejects
