"""Corpus and shards on object storage: a real S3-compatible server (moto's, started here on
loopback as its own process) spoken to by the real clients (s3fs through universal_pathlib).
Nothing of the client is mocked.

A build reads its corpus from the server and its workers write the shards there; the
shards equal, byte for byte, those of the same corpus built from a local folder;
`lst-model train` streams them by URL; a tar damaged on the server is refused by the reader.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_data_plane import config_for, shard_files, textgrid_corpus

from pipelines.build_corpus import build_corpus

BUCKET = "lst-data-test"


@pytest.fixture(scope="module")
def s3_server():
    """An S3-compatible server on a free loopback port, and the environment every client reads."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    import boto3

    client = boto3.client("s3")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:  # the server is still starting
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)
    yield client
    server.terminate()
    server.wait(timeout=30)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def upload(client, folder: Path, prefix: str) -> str:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def objects(client, prefix: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["Contents"]
    return {o["Key"].rsplit("/", 1)[-1]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listing}


@pytest.fixture(scope="module")
def s3_build(s3_server, demo_corpus, tmp_path_factory):
    """The demo corpus (3 copies) built twice: from a local folder, and from the server into the server."""
    data = tmp_path_factory.mktemp("s3data")
    corpus, grids = textgrid_corpus(demo_corpus, data, 3)
    config = config_for(grids, shard={"samples_per_shard": 8})
    local_run = data / "local-run"
    build_corpus(corpus, local_run, config, show_progress=False)
    url = upload(s3_server, corpus, "corpus")
    run = data / "s3-run"
    report = build_corpus(url, run, config, shards=f"s3://{BUCKET}/shards", show_progress=False)
    return {"client": s3_server, "corpus": url, "run": run, "local_run": local_run, "config": config,
            "report": report}


def test_a_corpus_on_s3_builds_into_s3_with_the_bytes_of_a_local_build(s3_build):
    client, run = s3_build["client"], s3_build["run"]
    remote = objects(client, "shards")
    local = shard_files(s3_build["local_run"] / "shards")
    assert set(local) <= set(remote)
    assert {name: remote[name] for name in local} == local
    dataset = json.loads(remote["dataset.json"])
    assert dataset["counts"]["samples"] == 36 and len(dataset["shards"]) == 5
    assert json.loads((run / "build.json").read_text())["shards"] == f"s3://{BUCKET}/shards"
    assert not (run / "shards").exists(), "nothing of the shards is written into the run folder"
    # The manifest names the object each utterance came from; later steps read the run folder's copy.
    import pyarrow.parquet as pq

    from lst_data.core.rejects import read_rejects

    manifest = pq.read_table(run / "ingest" / "manifest.parquet")
    assert all(p.startswith(f"{s3_build['corpus']}/") for p in manifest["source_path"].to_pylist())
    assert all(Path(p).is_relative_to(run) for p in manifest["audio_path"].to_pylist())
    assert read_rejects(f"s3://{BUCKET}/shards/rejects.parquet") == []


def test_resume_from_s3_keeps_everything_then_reruns_an_edited_object(s3_build):
    client, url, run, config = s3_build["client"], s3_build["corpus"], s3_build["run"], s3_build["config"]
    shards = f"s3://{BUCKET}/shards"
    again = build_corpus(url, run, config, shards=shards, show_progress=False)
    assert all(o.skipped for o in again.outcomes)
    key = next(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="corpus/")["Contents"]
               if o["Key"].endswith(".lab"))
    text = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=text.replace(b" ", b"  ", 1))  # same words, new bytes
    edited = build_corpus(url, run, config, shards=shards, show_progress=False)
    ingest = next(o for o in edited.outcomes if o.name == "ingest")
    assert (ingest.skipped, ingest.parts_run, ingest.parts) == (False, 1, 8)


def test_a_run_folder_on_s3_gives_the_same_shards_and_resumes(s3_build):
    """Every step's partitions, markers, fitted codebook and BPE live on the store; workers read and
    write them there; the shards land in RUN/shards on the store, byte for byte those of a local
    run folder."""
    from lst_data.core.lock import OutputLocked

    client, url, config = s3_build["client"], s3_build["corpus"], s3_build["config"]
    run = f"s3://{BUCKET}/remote-run"
    report = build_corpus(url, run, config, show_progress=False)
    assert not report.rejects
    # Compared with the build of the same corpus objects whose run folder is local (the test
    # above edited one transcript since; that build has the edit too).
    made_here, made_locally = objects(client, "remote-run/shards"), objects(client, "shards")
    shard_names = [n for n in made_locally if n not in ("done.json", "shard.json")]  # these hold wall times
    assert len(shard_names) == 13
    assert {n: made_here[n] for n in shard_names} == {n: made_locally[n] for n in shard_names}
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="remote-run/")["Contents"]}
    assert {"remote-run/units/codebook.npy", "remote-run/tokenize/tokenizer.model",
            "remote-run/align/alignments.parquet/part-00007.parquet", "remote-run/build.json"} <= keys
    assert "remote-run/.lock" not in keys, "the lock is released"
    again = build_corpus(url, run, config, show_progress=False)
    assert all(o.skipped for o in again.outcomes)
    client.put_object(Bucket=BUCKET, Key="remote-run/.lock", Body=b'{"pid": 1, "host": "elsewhere", "started": "x"}')
    with pytest.raises(OutputLocked, match="pid 1 on elsewhere.*delete s3://"):
        build_corpus(url, run, config, show_progress=False)
    client.delete_object(Bucket=BUCKET, Key="remote-run/.lock")


def test_lst_model_trains_streaming_the_shards_by_url(s3_build, tmp_path):
    from lst_model.cli import cli

    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\nmodel: {d_global: 32, d_local: 32}\n"
                      "data: {input: stream, seq_positions: 32, heldout_fraction: 0.2}\n"
                      "train: {batch_size: 2, budget_positions: 256, log_every: 2, threads: 1}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["train", "--shards", f"s3://{BUCKET}/shards", "--config", str(config),
                                      "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["final_loss"] > 0
    assert "36 utterances streamed" in result.output


def test_a_tar_damaged_on_the_server_is_refused(s3_build, tmp_path):
    from lst_data.format.reader import BadShardError, iter_records

    client = s3_build["client"]
    client.copy_object(Bucket=BUCKET, CopySource={"Bucket": BUCKET, "Key": "shards/dataset.json"},
                       Key="damaged/dataset.json")
    for name in ("train-000000.json", "train-000001.json", "train-000001.tar"):
        client.copy_object(Bucket=BUCKET, CopySource={"Bucket": BUCKET, "Key": f"shards/{name}"}, Key=f"damaged/{name}")
    tar = bytearray(client.get_object(Bucket=BUCKET, Key="shards/train-000000.tar")["Body"].read())
    tar[2000] ^= 0xFF  # inside the first member's data: same size, other bytes
    client.put_object(Bucket=BUCKET, Key="damaged/train-000000.tar", Body=bytes(tar))
    dataset = json.loads(client.get_object(Bucket=BUCKET, Key="damaged/dataset.json")["Body"].read())
    dataset_shards = ["train-000000.tar", "train-000001.tar"]
    client.put_object(Bucket=BUCKET, Key="damaged/dataset.json",
                      Body=json.dumps({**dataset, "shards": dataset_shards}).encode())
    with pytest.raises(BadShardError, match="train-000000.tar: sha256 differs"):
        list(iter_records(f"s3://{BUCKET}/damaged", with_audio=False))


@pytest.mark.parametrize(("args", "message"), [
    (["s3://lst-data-test/no-such-corpus", "--out", "{tmp}/run"], "s3://lst-data-test/no-such-corpus does not exist"),
    (["{corpus}", "--out", "{corpus}/spk_f3_r0000/spk_f3_003_r0000.wav"], "is a file; the run directory must be a folder"),
    (["{corpus}", "--out", "{tmp}/run", "--shards", "nosuchscheme://x/y"], "cannot open nosuchscheme://x/y"),
])
def test_storage_mistakes_are_one_line(s3_build, tmp_path, args, message):
    argv = [a.format(tmp=tmp_path, corpus=s3_build["corpus"]) for a in args]
    result = subprocess.run([sys.executable, "-c", "import sys; from pipelines.build_corpus import build_command;"
                             "from lst_data.core.cli_options import run_cli; run_cli(build_command, 'build', sys.argv[1:])",
                             *argv], capture_output=True, text=True, env=os.environ, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_ray_workers_read_and_write_the_store(s3_build, tmp_path):
    """`python -m pipelines.build_corpus` on a fresh local Ray runtime (2 workers): every partition
    task and shard writer opens the store itself (its credentials from the environment)."""
    client = s3_build["client"]
    config = tmp_path / "run.yaml"
    config.write_text((s3_build["local_run"] / "config.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.build_corpus", s3_build["corpus"], "--out", f"s3://{BUCKET}/ray-run",
         "--config", str(config), "--set", "ray.runner=ray", "--set", "ray.num_workers=2",
         "--set", "ray.cpus_per_worker=0.5"],
        capture_output=True, text=True, env=os.environ, cwd=Path(__file__).parent.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[shard] ran 8 of 8 partitions" in result.stderr
    made_by_ray, made_locally = objects(client, "ray-run/shards"), objects(client, "shards")
    shard_names = [n for n in made_locally if n not in ("done.json", "shard.json", "dataset.json")]
    assert {n: made_by_ray[n] for n in shard_names} == {n: made_locally[n] for n in shard_names}

    def without_runner(dataset: bytes) -> dict:  # dataset.json records the whole config, `ray` included
        summary = json.loads(dataset)
        del summary["config"]["ray"]
        return summary

    assert without_runner(made_by_ray["dataset.json"]) == without_runner(made_locally["dataset.json"])
