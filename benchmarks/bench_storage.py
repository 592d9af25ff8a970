"""Object storage against local folders: a build and a shard read, on an S3-compatible server.

Starts moto's S3 server on loopback (the `dev` extra), uploads a replicated demo corpus
(TextGrid alignments, so the data plane is what is measured), and prints, each against a
reference measured in the same run:

- `s3_build`: corpus, run folder and shards on the server against the same build on local
  folders (ratio: the cost of the store's round trips; the bytes are checked equal);
- `s3_read`: samples/s of `iter_records` over the shards on the server (download, sha256
  verification, read) against the same shards on local disk.

Loopback has no network latency or bandwidth limit: on a real store, expect the build's
ratio to grow with the request latency (one request per partition file and per object) and
the read to run at the link's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")

from lst_data.config import load_config  # noqa: E402
from lst_data.demo import load_ground_truth, replicate_corpus, synthesize_demo_corpus  # noqa: E402

BUCKET = "lst-bench"


def start_server() -> subprocess.Popen:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import boto3

    client = boto3.client("s3")
    for _ in range(300):
        try:
            client.create_bucket(Bucket=BUCKET)
            return server
        except Exception:  # still starting
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto server did not start (install the dev extra: pip install 'moto[server]')")


def timed(fn) -> tuple[object, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=10, help="replicas of the 36-utterance demo corpus")
    args = parser.parse_args()
    from pipelines.build_corpus import build_corpus

    server = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
            tmp_path = Path(tmp)
            demo = synthesize_demo_corpus(tmp_path / "demo")
            hours = args.copies * sum(u["duration"] for u in load_ground_truth(demo)["utterances"]) / 3600
            corpus, grids = tmp_path / "corpus", tmp_path / "grids"
            replicate_corpus(demo, corpus, args.copies, textgrids=grids)
            config = load_config(overrides={"align": {"backend": "textgrid", "textgrid": {"directory": str(grids)}},
                                            "ray": {"runner": "local"}})
            import s3fs

            s3fs.S3FileSystem().put(str(corpus), f"{BUCKET}/corpus", recursive=True)
            _, local_s = timed(lambda: build_corpus(corpus, tmp_path / "run", config, show_progress=False))
            _, s3_s = timed(lambda: build_corpus(f"s3://{BUCKET}/corpus", f"s3://{BUCKET}/run", config,
                                                 show_progress=False))
            from lst_data.core.storage import location

            local_shards, s3_shards = tmp_path / "run" / "shards", location(f"s3://{BUCKET}/run/shards")
            same = all((s3_shards / p.name).read_bytes() == p.read_bytes() for p in local_shards.glob("*.tar"))
            print(f"s3_build_{hours:.2f}h: {s3_s:.1f} s (reference: {local_s:.1f} s on local folders, ratio "
                  f"{s3_s / local_s:.2f}; tars identical: {same})")

            from lst_data.format.reader import iter_records

            def read(where: object) -> int:
                return sum(1 for _ in iter_records(where, with_audio=False))

            samples, local_read = timed(lambda: read(local_shards))
            _, s3_read = timed(lambda: read(f"s3://{BUCKET}/run/shards"))
            print(f"s3_read: {samples / s3_read:.0f} samples/s (reference: {samples / local_read:.0f} samples/s from "
                  f"local disk, ratio {local_read / s3_read:.2f}; {samples} samples, verified)")
            print(json.dumps({"hours": round(hours, 3), "copies": args.copies}))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
