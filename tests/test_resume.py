"""Resume gives the bytes a clean build of the *current* inputs gives, whatever changed.

Each test changes one input of a finished build (an utterance added, a transcript edited,
one deleted, a codebook or tokenizer file replaced under the same path, a flipped byte in a
kept tar), resumes, and compares the shards with a clean build of the changed inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lst_data.config import load_config
from pipelines.build_corpus import build_corpus

OVERRIDES = {"units": {"k": 12, "sample_frames": 5000}, "tokenizer": {"vocab_size": 100}, "ray": {"runner": "local"}}
LST_DATA = Path(sys.executable).parent / "lst-data"


def shard_bytes(run: Path) -> dict[str, bytes]:
    shards = run / "shards"
    files = sorted(shards.glob("*.tar")) + sorted(shards.glob("*-*.json")) + [shards / "index.parquet", shards / "rejects.parquet"]
    return {p.name: p.read_bytes() for p in files}


def outcomes(report) -> dict[str, bool]:
    return {o.name: o.skipped for o in report.outcomes}


@pytest.fixture()
def corpus(demo_corpus, tmp_path) -> Path:
    """A private copy of 8 demo utterances (tests edit it)."""
    out = tmp_path / "corpus"
    keep = sorted(p.stem for p in demo_corpus.rglob("*.lab"))[:8]
    for stem in keep:
        for src in demo_corpus.rglob(f"{stem}.*"):
            dst = out / src.relative_to(demo_corpus)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return out


def build(corpus: Path, run: Path, **overrides):
    return build_corpus(corpus, run, load_config(overrides={**OVERRIDES, **overrides}))


def test_resume_after_corpus_edits_equals_a_clean_build(corpus, demo_corpus, tmp_path):
    run = tmp_path / "run"
    build(corpus, run)
    labs = sorted(corpus.rglob("*.lab"))
    extra = sorted(p for p in demo_corpus.rglob("*.lab") if not (corpus / p.relative_to(demo_corpus)).exists())[0]
    labs[0].write_text("the quick brown fox\n", encoding="utf-8")  # edited transcript
    for path in corpus.rglob(f"{labs[1].stem}.*"):  # deleted utterance
        path.unlink()
    for src in demo_corpus.rglob(f"{extra.stem}.*"):  # added utterance
        (corpus / src.relative_to(demo_corpus)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, corpus / src.relative_to(demo_corpus))

    resumed = build(corpus, run)
    assert not any(outcomes(resumed).values()), "every step depends on the corpus and must run again"
    clean = tmp_path / "clean"
    build(corpus, clean)
    assert shard_bytes(run) == shard_bytes(clean)
    ids = set(pq.read_table(run / "shards" / "index.parquet")["id"].to_pylist())
    assert labs[1].stem not in ids and extra.stem in ids
    assert not list((run / "ingest").glob(f"audio/{labs[1].stem}*")), "no converted audio of a deleted utterance"


def test_replaced_codebook_and_tokenizer_files_are_noticed(corpus, tmp_path):
    first = tmp_path / "first"
    build(corpus, first)
    codebook, tokenizer = tmp_path / "codebook.npy", tmp_path / "tokenizer.model"
    shutil.copy(first / "units" / "codebook.npy", codebook)
    shutil.copy(first / "units" / "codebook.npy.json", tmp_path / "codebook.npy.json")
    shutil.copy(first / "tokenize" / "tokenizer.model", tokenizer)
    given = {"units": {**OVERRIDES["units"], "codebook": str(codebook)}, "tokenizer": {"model": str(tokenizer)}}
    run = tmp_path / "run"
    build(corpus, run, **given)

    # Same paths, other content: a codebook trained with another seed, a BPE of another size.
    other = tmp_path / "other"
    build(corpus, other, seed=7, tokenizer={"vocab_size": 80})
    shutil.copy(other / "units" / "codebook.npy", codebook)
    shutil.copy(other / "units" / "codebook.npy.json", tmp_path / "codebook.npy.json")
    shutil.copy(other / "tokenize" / "tokenizer.model", tokenizer)
    assert not np.array_equal(np.load(codebook), np.load(first / "units" / "codebook.npy"))

    resumed = build(corpus, run, **given)
    assert outcomes(resumed) == {"ingest": True, "align": True, "units": False, "tokenize": False, "shard": False}
    clean = tmp_path / "clean"
    build(corpus, clean, **given)
    assert shard_bytes(run) == shard_bytes(clean)


def test_flipped_byte_in_a_kept_tar_is_rewritten(corpus, tmp_path):
    run = tmp_path / "run"
    build(corpus, run)
    before = shard_bytes(run)
    tar = sorted((run / "shards").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    (run / "shards" / "done.json").unlink()  # as if the shard step had been interrupted after that shard
    build(corpus, run)
    assert shard_bytes(run) == before


def test_second_build_into_the_same_out_fails_at_once_naming_the_holder(corpus, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "LST_DATA_NO_PROGRESS": "1"}
    args = [str(LST_DATA), "build", str(corpus), "--out", str(run), "--runner", "local",
            "--set", "units.k=12", "--set", "units.sample_frames=5000", "--set", "tokenizer.vocab_size=100"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run / ".lock").exists() or not (run / ".lock").read_text().strip():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    started = time.monotonic()
    second = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert second.returncode == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    validate = subprocess.run([str(LST_DATA), "validate", str(run / "shards")], env=env, capture_output=True, text=True)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_lock_of_a_dead_build_is_taken_over(corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "2026-01-01T00:00:00"}))
    report = build(corpus, run)
    assert report.outcomes[-1].name == "shard" and (run / ".lock").read_text() == ""


@pytest.mark.ray
def test_sigterm_to_a_ray_build_leaves_no_ray_process(corpus, tmp_path):
    ray_tmp = Path("/tmp") / f"lstray{os.getpid()}"  # Ray's socket paths must stay short
    shutil.rmtree(ray_tmp, ignore_errors=True)
    env = {**os.environ, "LST_DATA_NO_PROGRESS": "1", "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([str(LST_DATA), "build", str(corpus), "--out", str(tmp_path / "run"),
                             "--set", "ray.cpus_per_worker=0.5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _ray_processes(ray_tmp):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode in (signal.SIGTERM, 128 + signal.SIGTERM)  # Ray's own handler exits with 15
        deadline = time.monotonic() + 30
        while _ray_processes(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ray_processes(ray_tmp) == []
    finally:
        proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _ray_processes(ray_tmp: Path) -> list[str]:
    """Command lines of live processes that belong to the Ray whose session lives under ray_tmp."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if str(ray_tmp) in cmdline and state != "Z":
            found.append(cmdline[:120])
    return found
