"""`lst-data shard|stats|show|validate|diff|plot` through click's CliRunner, on real shards."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.synthetic_shards import synthetic_tables

from lst_data.cli import cli
from lst_data.config import RunConfig
from lst_data.core.config import updated
from lst_data.core.rejects import Reject, write_rejects
from lst_data.format.reader import iter_raw_samples
from lst_data.shards.members import EncodedSample
from lst_data.shards.tar_io import write_tar

N = 14


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as the pipeline leaves it: four stage tables and two stages' rejects."""
    run = tmp_path_factory.mktemp("run")
    tables = synthetic_tables(N, seed=21)
    for name, table in dataclasses.asdict(tables).items():
        pq.write_table(table, run / f"{name}.parquet")
    dropped = tables.manifest["id"][0].as_py()
    units = tables.units.filter(pa.array([i != dropped for i in tables.units["id"].to_pylist()]))
    pq.write_table(units, run / "units.parquet")
    (run / "align").mkdir()
    write_rejects([Reject("gone-1", "ingest", "audio_unreadable", "bad header")], run / "rejects.parquet")
    write_rejects([Reject("gone-2", "align", "align_failed", "no path")], run / "align" / "rejects.parquet")
    return run


@pytest.fixture(scope="module")
def shard_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "shards"
    result = CliRunner().invoke(cli, ["shard", str(run_dir), "--out", str(out), "--samples-per-shard", "4"])
    assert result.exit_code == 3, result.output  # finished, with rejects
    return out


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_shard_command_writes_the_contract_files(shard_dir):
    names = sorted(p.name for p in shard_dir.iterdir())
    assert names == ["dataset.json", "done.json", "index.parquet", "rejects.parquet", "shard.json",
                     *[f"train-00000{i}.{ext}" for i in range(4) for ext in ("json", "tar")]]  # fmt: skip
    rejects = pq.read_table(shard_dir / "rejects.parquet").to_pylist()
    assert {(r["stage"], r["code"]) for r in rejects} == {
        ("ingest", "audio_unreadable"), ("align", "align_failed"), ("shard", "missing_stage_output")}  # fmt: skip
    assert json.loads((shard_dir / "dataset.json").read_text())["counts"]["samples"] == N - 1


def test_stats_prints_totals_patches_and_rejects(shard_dir):
    result = invoke("stats", str(shard_dir))
    assert result.exit_code == 0, result.output
    index = pq.read_table(shard_dir / "index.parquet")
    units = sum(index["n_units"].to_pylist())
    lines = [line.strip("│┃ ") for line in result.output.splitlines()]
    assert any("utterances" in line and f" {N - 1} " in f" {line} " for line in lines)
    assert any("units" in line and str(units) in line for line in lines)
    for strategy in ("static", "word_sil_sep", "word_sil_merged", "bpe"):
        assert any(line.startswith(strategy) for line in lines), strategy
    static = next(line for line in lines if line.startswith("static")).split("│")
    assert 3.0 < float(static[2]) <= 4.0  # mean of p = 4 patches, the last per utterance shorter
    assert "missing_stage_output" in result.output and "align_failed" in result.output


def test_show_prints_a_time_aligned_table(shard_dir):
    first = pq.read_table(shard_dir / "index.parquet").to_pylist()[0]
    key, members = next(iter_raw_samples(shard_dir / first["shard"]))
    data = json.loads(members["json"])
    result = invoke("show", str(shard_dir), data["id"])
    assert result.exit_code == 0, result.output
    word = data["words"][0]
    assert data["text"] in result.output
    row = next(
        line
        for line in result.output.splitlines()
        if f"{word['start_frame']}-{word['end_frame']}" in line and word["word"] in line
    )
    piece = next(p for p in data["bpe"] if p["word_index"] == 0)
    assert f"{piece['piece']}[{piece['start_frame']}-" in row
    assert invoke("show", str(shard_dir), "no-such-id").exit_code != 0


def test_validate_passes_good_shards(shard_dir):
    result = invoke("validate", str(shard_dir))
    assert result.exit_code == 0, result.output
    assert f"{N - 1} samples" in result.output


def test_validate_catches_a_corrupted_tar(shard_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    tar = copy / "train-000001.tar"
    raw = bytearray(tar.read_bytes())
    raw[700] ^= 0xFF  # inside the first member's data
    tar.write_bytes(bytes(raw))
    result = invoke("validate", str(copy))
    assert result.exit_code == 1
    assert "train-000001.tar: sha256 differs" in result.output


def test_validate_catches_a_bad_span(shard_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    tar = copy / "train-000000.tar"
    samples = []
    for key, members in iter_raw_samples(tar):
        data = json.loads(members["json"])
        if not samples:
            data["words"][0]["end_frame"] = data["n_frames"] + 3
        members["json"] = json.dumps(data).encode()
        samples.append(EncodedSample(data["id"], key, data["duration"], members))
    write_tar(tar, samples)
    result = invoke("validate", str(copy))
    assert result.exit_code == 1
    assert f"{samples[0].key}: word 0 frames" in result.output and "outside [0," in result.output


def test_diff_names_differing_samples(shard_dir, run_dir, tmp_path):
    same = invoke("diff", str(shard_dir), str(shard_dir))
    assert same.exit_code == 0 and f"identical: {N - 1} samples" in same.output
    other_run = tmp_path / "run"
    shutil.copytree(run_dir, other_run)
    units = pq.read_table(other_run / "units.parquet").to_pylist()
    units[0]["units"] = [(u + 1) % 100 for u in units[0]["units"]]
    pq.write_table(
        pa.Table.from_pylist(units, schema=pq.read_schema(other_run / "units.parquet")),
        other_run / "units.parquet",
    )
    other = tmp_path / "shards"
    assert invoke("shard", str(other_run), "--out", str(other), "--samples-per-shard", "4").exit_code == 3
    result = invoke("diff", str(shard_dir), str(other))
    assert result.exit_code == 1
    assert f"sample {units[0]['id']}: differs in unit ids" in result.output
    assert "bytes differ" in result.output


def test_plot_writes_a_png(shard_dir, tmp_path):
    sample_id = pq.read_table(shard_dir / "index.parquet")["id"][0].as_py()
    out = tmp_path / "sample.png"
    result = invoke("plot", str(shard_dir), sample_id, "-o", str(out))
    assert result.exit_code == 0, result.output
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width >= 800 and 500 <= height <= 1000  # figure 8+ in wide, ~6 in tall at 100 dpi
    assert out.stat().st_size > 20_000


def test_plot_with_audio_draws_a_spectrogram(tmp_path):
    from lst_data.shards.join import join_records
    from lst_data.shards.members import FlacFromPaths
    from lst_data.shards.plot import plot_record
    from lst_data.shards.writer import write_shards

    tables = synthetic_tables(1, seed=22, audio_dir=tmp_path / "audio")
    config = updated(RunConfig(), {"shard": {"include_audio": True}})
    paths = dict(
        zip(tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist(), strict=True)
    )
    write_shards(
        join_records(tables, config),
        tmp_path / "s",
        config,
        audio_source=FlacFromPaths(paths),
        show_progress=False,
    )
    from lst_data.format.reader import iter_records

    (record,) = list(iter_records(tmp_path / "s"))
    assert record.audio is not None
    out = plot_record(record, tmp_path / "a.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with tarfile.open(tmp_path / "s" / "train-000000.tar") as tar:
        assert any(n.endswith(".flac") for n in tar.getnames())


def test_stats_prints_dataset_json_figures_without_reading_tars(shard_dir, tmp_path, capsys):
    """The figures come from dataset.json's tally: a changed count shows, with the tars gone (--no-verify)."""
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    dataset = json.loads((copy / "dataset.json").read_text())
    dataset["counts"]["units"] = 123457
    (copy / "dataset.json").write_text(json.dumps(dataset))
    for tar in copy.glob("*.tar"):
        tar.write_bytes(b"not a tar")
    result = invoke("stats", str(copy), "--no-verify")
    assert result.exit_code == 0, result.output
    assert "123457" in result.output
    code, _, err = _lst_data(capsys, "stats", str(copy))  # the default checks each tar against its sidecar first
    assert code == 2 and "train-000000.tar: 9 bytes, sidecar says" in err


def test_stats_refuses_a_dataset_json_that_lists_other_shards(shard_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    (copy / "train-000003.tar").unlink()
    code, _, err = _lst_data(capsys, "stats", str(copy), "--no-verify")
    assert code == 2 and "dataset.json lists 4 shards, 3 are in" in err and "missing: train-000003.tar" in err


def test_show_follows_only_shards_of_the_directory(shard_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    index = pq.read_table(copy / "index.parquet").to_pylist()
    index[0]["shard"] = "../../elsewhere-000000.tar"
    pq.write_table(pa.Table.from_pylist(index, schema=pq.read_schema(copy / "index.parquet")), copy / "index.parquet")
    code, _, err = _lst_data(capsys, "show", str(copy), index[0]["id"])
    assert code == 2 and "not a shard of this directory" in err


def test_stats_tallies_the_shards_for_another_patch_size(shard_dir):
    default, other = invoke("stats", str(shard_dir)), invoke("stats", str(shard_dir), "--patch-size", "2")
    assert default.exit_code == other.exit_code == 0, other.output

    def static_row(output: str) -> list[str]:
        lines = [line.strip("│┃ ") for line in output.splitlines()]
        return next(line for line in lines if line.startswith("static")).split("│")

    assert 3.0 < float(static_row(default.output)[2]) <= 4.0
    assert 1.0 < float(static_row(other.output)[2]) <= 2.0 and static_row(other.output)[-1].strip() == "2"
    units = [line for line in default.output.splitlines() if " units " in f" {line} "]
    assert units and units == [line for line in other.output.splitlines() if " units " in f" {line} "]


def _lst_data(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point (`lst_data.cli.main`'s error handling): (exit code, stdout, stderr)."""
    from lst_data.core.cli_options import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(cli, "lst-data", list(args))
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


@pytest.mark.parametrize(
    "case",
    ["show-unknown-id", "stats-broken-tar", "show-broken-tar", "shard-no-tables", "stats-bad-patch-size"],
)
def test_user_mistakes_are_one_line_and_exit_2(case, shard_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    (broken / "dataset.json").unlink()
    (broken / "index.parquet").unlink()
    (broken / "train-000000.tar").write_bytes(b"\0" * 100 + b"garbage")
    args = {
        "show-unknown-id": ("show", str(shard_dir), "no-such-id"),
        "stats-broken-tar": ("stats", str(broken)),
        "show-broken-tar": ("show", str(broken), "whatever"),
        "shard-no-tables": ("shard", str(tmp_path), "--out", str(tmp_path / "out")),
        "stats-bad-patch-size": ("stats", str(shard_dir), "--patch-size", "0"),
    }[case]
    code, out, err = _lst_data(capsys, *args)
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lst-data: error: "), err


def test_validate_lists_problems_of_a_broken_directory(shard_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    (broken / "train-000000.tar").write_bytes(b"garbage")
    (broken / "train-000001.json").write_text("{not json")
    (broken / "dataset.json").write_text("[]")
    code, out, err = _lst_data(capsys, "validate", str(broken))
    assert code == 1, out + err
    assert "train-000000.tar: " in out and "train-000001.json: unreadable sidecar" in out and "dataset.json: " in out
