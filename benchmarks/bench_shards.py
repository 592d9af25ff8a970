"""Shard writer and reader throughput, and the bytes a shard adds to its payload.

    .venv/bin/python benchmarks/bench_shards.py [--quick]

Every figure has a reference measured in the same run on the same data:
- reader: `make_loader` (webdataset pipeline, torch DataLoader, 2 workers, samples decoded
  and checked, batches made in the workers as `RecordBatch`es) vs reading every member's
  bytes of the same shards with plain `tarfile` in this process (no decoding at all).
  Target >= 1.0x. The loader's time includes starting its two workers, as every epoch
  does. Measured with sidecar verification (the default: size and sha256 per tar first,
  the sample count at its end) and without
  (`verify=False`); likewise the plain `iter_records` (tools, `load_records`) in-process,
  and the webdataset pipeline in one process (shuffled, verified, batches of records):
  what each DataLoader worker runs.
- verification alone: `verify_shard` over every tar (sidecar, one sequential read with
  sha256 and the header checks) vs `hashlib.file_digest` of the same files.
- writer: `write_shards` (schema + span checks, canonical JSON, sidecars, index, dataset
  summary with patch statistics) vs `tarfile.addfile` of the same members, nothing else.
- overhead: shard bytes per sample vs the JSON + units payload per sample.
- stats: the figures of `lst-data stats` read from dataset.json vs tallying the shards
  again (what `stats` did before the writer stored its tally).
- context: plain `wds.WebDataset` through the same 2-worker loader, reading member bytes
  without decoding, vs the same raw read: the floor the DataLoader + IPC put under any
  webdataset reader on this machine.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test-only helpers: tests/support

os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")

import webdataset as wds  # noqa: E402
from support.synthetic_shards import synthetic_tables  # noqa: E402

from lst_data.config import RunConfig  # noqa: E402
from lst_data.core.config import updated  # noqa: E402
from lst_data.core.digests import file_sha256  # noqa: E402
from lst_data.format.layout import shard_paths  # noqa: E402
from lst_data.format.loader import make_loader, shard_pipeline  # noqa: E402
from lst_data.format.reader import iter_records, verify_shard  # noqa: E402
from lst_data.shards.inspect_cli import summary_figures  # noqa: E402
from lst_data.shards.join import join_records  # noqa: E402
from lst_data.shards.members import encode_sample  # noqa: E402
from lst_data.shards.summary import tally_shards  # noqa: E402
from lst_data.shards.writer import write_shards  # noqa: E402


def line(name: str, value: float, unit: str, ref_name: str, ref: float, ref_unit: str | None = None) -> None:
    print(
        f"{name}: {value:.1f} {unit} (reference: {ref_name} {ref:.1f} {ref_unit or unit}, ratio {value / ref:.2f})"
    )


def raw_tar_read(tars: list[Path]) -> int:
    n = 0
    for path in tars:
        with tarfile.open(path) as tar:
            for info in tar:
                tar.extractfile(info).read()
                n += info.name.endswith(".json")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer samples (seconds instead of a minute).")
    args = parser.parse_args()
    n = 600 if args.quick else 4000
    config = updated(RunConfig(), {"shard": {"samples_per_shard": 100 if args.quick else 250}})
    tables = synthetic_tables(n, seed=0, words_per_utterance=(5, 30))
    records = list(join_records(tables, config))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        started = time.perf_counter()
        write_shards(iter(records), out, config, show_progress=False)
        write_rate = n / (time.perf_counter() - started)

        started = time.perf_counter()
        with tarfile.open(Path(tmp) / "plain.tar", "w") as tar:
            for record in records:
                sample = encode_sample(record, None)
                for suffix, data in sorted(sample.members.items()):
                    info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        plain_rate = n / (time.perf_counter() - started)
        line("shard_writer_throughput", write_rate, "samples/s", "plain tarfile.addfile", plain_rate)

        tars = shard_paths(out)
        payload = sum(len(data) for r in records for data in encode_sample(r, None).members.values()) / n
        shard_bytes = sum(p.stat().st_size for p in tars) / n
        line("shard_bytes_per_sample", shard_bytes, "bytes", "JSON + units payload", payload)

        started = time.perf_counter()
        summary_figures(out, patch_size=4)
        stats_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        tally_shards(tars, patch_size=4)
        tally_ms = (time.perf_counter() - started) * 1000
        line("stats_figures_from_dataset_json", stats_ms, "ms", "tally of the shards (the old `stats`)", tally_ms)

        del records, tables  # DataLoader workers are forked: keep their heap small
        gc.collect()
        raw_tar_read(tars)  # warm the page cache for both readers alike
        started = time.perf_counter()
        assert raw_tar_read(tars) == n
        raw_rate = n / (time.perf_counter() - started)
        for name, verify in (("shard_reader_throughput", True), ("shard_reader_throughput_no_verify", False)):
            loader = make_loader(out, batch_size=32, shuffle=False, num_workers=2, verify=verify)
            started = time.perf_counter()
            seen = sum(len(batch) for batch in loader)
            read_rate = seen / (time.perf_counter() - started)
            assert seen == n
            line(name, read_rate, "samples/s", "raw tarfile read (no decoding)", raw_rate)
        for name, verify in (("iter_records_throughput", True), ("iter_records_throughput_no_verify", False)):
            started = time.perf_counter()
            seen = sum(1 for _ in iter_records(out, with_audio=False, verify=verify))
            assert seen == n
            line(name, seen / (time.perf_counter() - started), "samples/s", "raw tarfile read (no decoding)", raw_rate)
        started = time.perf_counter()
        seen = sum(len(batch) for batch in shard_pipeline(out, batch_size=32, shuffle=True, with_audio=False))
        assert seen == n
        line("shard_pipeline_one_process", seen / (time.perf_counter() - started), "samples/s",
             "raw tarfile read (no decoding)", raw_rate)
        megabytes = sum(p.stat().st_size for p in tars) / 2**20
        started = time.perf_counter()
        for tar_path in tars:
            verify_shard(tar_path)
        verify_rate = megabytes / (time.perf_counter() - started)
        started = time.perf_counter()
        for tar_path in tars:
            file_sha256(tar_path)
        line("verify_shard_throughput", verify_rate, "MB/s", "sha256 of the files", megabytes / (time.perf_counter() - started))

        plain = wds.WebLoader(
            wds.WebDataset(
                [str(t) for t in tars], shardshuffle=False, nodesplitter=wds.split_by_node
            ).batched(32, collation_fn=list),
            batch_size=None,
            num_workers=2,
        )
        started = time.perf_counter()
        seen = sum(len(batch) for batch in plain)
        plain_rate = seen / (time.perf_counter() - started)
        line(
            "plain_webdataset_loader_no_decoding",
            plain_rate,
            "samples/s",
            "raw tarfile read (no decoding)",
            raw_rate,
        )


if __name__ == "__main__":
    main()
