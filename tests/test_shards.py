"""Join + shard writer: real tables in, real tars out, read back with plain tarfile and webdataset."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds
from support.synthetic_shards import TOKENIZER_HASH, synthetic_tables

from lst_data.config import RunConfig
from lst_data.core.config import updated
from lst_data.core.rejects import Reject, read_rejects
from lst_data.core.tables import ALIGNMENT_SCHEMA, MANIFEST_SCHEMA, TOKENS_SCHEMA, UNITS_SCHEMA
from lst_data.format.keys import sanitize_key
from lst_data.format.schema import load_schema, validation_errors
from lst_data.shards.build import shard_tables
from lst_data.shards.join import JoinTables, join_records
from lst_data.shards.writer import write_shards


def config_with(**shard) -> RunConfig:
    return updated(RunConfig(), {"shard": shard})


def write(tables: JoinTables, out: Path, config: RunConfig, prior: list[Reject] = (), **kwargs):
    return shard_tables(tables, out, config, carried_rejects=prior, show_progress=False, **kwargs)


def hello_world_tables(**override) -> JoinTables:
    """One utterance with hand-computed frames: 1.0 s, 25 units, 'hello' 0.1-0.4 s, 'world' 0.5-0.9 s."""
    row_id = override.get("id", "utt.1")
    manifest = {
        "id": row_id, "key": sanitize_key(row_id), "audio_path": "/x.wav", "source_path": "/x.wav",
        "source_sample_rate": 16000, "sample_rate": 16000, "num_samples": 16000, "duration": 1.0,
        "speaker": "s1", "text": "Hello, world!", "normalized_text": override.get("text", "hello world"), "flags": [],
    }  # fmt: skip
    alignment = {
        "id": row_id, "backend": "pocketsphinx", "model_hash": "m" * 64,
        "words": [{"word": "hello", "start": 0.1, "end": 0.4}, {"word": "world", "start": 0.5, "end": 0.9}],
        "phones": None, "chars": None, "score": None, "oov": [],
        "silences": [{"start": 0.0, "end": 0.1, "rule": "edge"}, {"start": 0.4, "end": 0.5, "rule": "gap"},
                     {"start": 0.9, "end": 1.0, "rule": "edge"}],
    }  # fmt: skip
    n_units = override.get("n_units", 25)
    units = {
        "id": row_id, "units": list(range(n_units)), "frame_rate": 25.0, "n_frames": n_units,
        "encoder": "mfcc", "layer": None, "codebook_hash": "c" * 64, "k": 100,
    }  # fmt: skip
    pieces = override.get(
        "pieces",
        [{"id": 5, "piece": "\u2581hel", "word_index": 0}, {"id": 6, "piece": "lo", "word_index": 0},
         {"id": 7, "piece": "\u2581world", "word_index": 1}],
    )  # fmt: skip
    tokens = {"id": row_id, "tokenizer_hash": "t" * 64, "pieces": pieces}
    return JoinTables(
        pa.Table.from_pylist([manifest], schema=MANIFEST_SCHEMA),
        pa.Table.from_pylist([alignment], schema=ALIGNMENT_SCHEMA),
        pa.Table.from_pylist([units], schema=UNITS_SCHEMA),
        pa.Table.from_pylist([tokens], schema=TOKENS_SCHEMA),
    )


def test_join_applies_the_frame_rule_by_hand():
    (record,) = list(join_records(hello_world_tables(), RunConfig()))
    # floor(0.1*25)=2, ceil(0.4*25)-1=9; floor(0.5*25)=12, ceil(0.9*25)-1=22
    assert [(w.word, w.start_frame, w.end_frame) for w in record.words] == [
        ("hello", 2, 9),
        ("world", 12, 22),
    ]
    # the frames no word claims, with the rule of the aligner silence they overlap
    assert [(s.start_frame, s.end_frame, s.rule) for s in record.silences] == [
        (0, 1, "edge"),
        (10, 11, "gap"),
        (23, 24, "edge"),
    ]
    assert [(s.start, s.end) for s in record.silences] == [(0.0, 0.08), (0.4, 0.48), (0.92, 1.0)]
    # 'hello' has 8 frames shared 3:2 by characters: cut at 2 + round(8 * 3/5) = 7
    assert [(p.piece, p.start_frame, p.end_frame) for p in record.bpe] == [
        ("\u2581hel", 2, 6),
        ("lo", 7, 9),
        ("\u2581world", 12, 22),
    ]
    assert record.units.dtype == np.int16 and record.n_frames == 25
    assert record.aligner == {"backend": "pocketsphinx", "model_hash": "m" * 64}
    assert record.unit_info["k"] == 100 and record.text == "hello world"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"n_units": 20}, "expected 25"),  # 5 frames short of 1.0 s at 25 Hz
        ({"text": "hello there"}, "aligned words"),
        (
            {
                "pieces": [
                    {"id": 5, "piece": "\u2581hello", "word_index": 0},
                    {"id": 7, "piece": "x", "word_index": 4},
                ]
            },
            "BPE",
        ),
    ],
)
def test_join_rejects_contradicting_rows(override, fragment):
    (reject,) = list(join_records(hello_world_tables(**override), RunConfig()))
    assert isinstance(reject, Reject)
    assert (reject.stage, reject.code) == ("shard", "invalid_record")
    assert fragment in reject.detail


def test_units_within_tolerance_are_accepted():
    (record,) = list(join_records(hello_world_tables(n_units=24), RunConfig()))
    assert not isinstance(record, Reject) and record.n_frames == 24


def test_missing_stage_output_but_not_for_earlier_rejects(tmp_path):
    tables = synthetic_tables(6, seed=1)
    ids = tables.manifest["id"].to_pylist()
    tables = dataclasses.replace(
        tables,
        units=tables.units.filter(pa.array([i not in ids[:2] for i in tables.units["id"].to_pylist()])),
    )
    prior = [Reject(ids[0], "units", "units_failed", "too short")]
    report = write(tables, tmp_path, RunConfig(), prior)
    rejects = {(r.id, r.stage, r.code) for r in read_rejects(tmp_path / "rejects.parquet")}
    assert rejects == {(ids[0], "units", "units_failed"), (ids[1], "shard", "missing_stage_output")}
    assert report.samples == 4
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["counts"]["rejects_by_code"] == [
        {"stage": "shard", "code": "missing_stage_output", "count": 1},
        {"stage": "units", "code": "units_failed", "count": 1},
    ]


def test_shards_read_back_with_plain_tarfile(tmp_path):
    tables = synthetic_tables(23, seed=2)
    report = write(tables, tmp_path, config_with(samples_per_shard=10), tokenizer_vocab_size=321)
    assert (report.shards_written, report.samples) == (3, 23)
    tars = sorted(tmp_path.glob("train-*.tar"))
    assert [t.name for t in tars] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    manifest = {r["id"]: r for r in tables.manifest.to_pylist()}
    units = {r["id"]: r["units"] for r in tables.units.to_pylist()}
    seen = []
    for tar_path in tars:
        sidecar = json.loads(tar_path.with_suffix(".json").read_text())
        assert validation_errors(sidecar, "sidecar") == []
        assert sidecar["sha256"] == hashlib.sha256(tar_path.read_bytes()).hexdigest()
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
            names = [m.name for m in members]
            assert len(names) == 2 * sidecar["samples"]
            for json_name, npy_name in zip(names[::2], names[1::2], strict=True):
                data = json.loads(tar.extractfile(json_name).read())
                assert (
                    json_name == f"{sanitize_key(data['id'])}.json"
                    and npy_name == json_name[:-5] + ".units.npy"
                )
                array = np.load(io.BytesIO(tar.extractfile(npy_name).read()), allow_pickle=False)
                assert array.dtype == np.int16 and array.tolist() == units[data["id"]]
                assert data["text"] == manifest[data["id"]]["normalized_text"] and data["n_frames"] == len(
                    array
                )
                assert validation_errors(data, "sample") == []
                seen.append(data["id"])
    assert sorted(seen) == sorted(manifest)
    index = pq.read_table(tmp_path / "index.parquet").to_pylist()
    assert [r["id"] for r in index] == seen
    assert all(validation_errors(r, "index") == [] for r in index)
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert validation_errors(dataset, "dataset") == []
    assert dataset["counts"]["samples"] == 23 and dataset["tokenizer"]["vocab_size"] == 321
    assert dataset["units"] == {"k": 100, "frame_rate": 25.0}
    assert dataset["hashes"]["tokenizer"] == [TOKENIZER_HASH]
    assert abs(dataset["counts"]["hours"] - sum(manifest[i]["duration"] for i in seen) / 3600) < 1e-5
    assert set(dataset["average_patch_sizes"]) == {"static", "word_sil_sep", "word_sil_merged", "bpe"}


def test_plain_webdataset_reads_the_shards(tmp_path):
    write(synthetic_tables(12, seed=3), tmp_path, config_with(samples_per_shard=5))
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 12
    for sample in samples:
        data = json.loads(sample["json"])
        assert sample["__key__"] == sanitize_key(data["id"])
        assert np.load(io.BytesIO(sample["units.npy"]), allow_pickle=False).shape == (data["n_frames"],)


def test_same_input_gives_identical_bytes_whatever_the_row_order(tmp_path):
    tables = synthetic_tables(30, seed=4)
    reversed_tables = JoinTables(
        *(t.take(list(range(t.num_rows))[::-1]) for t in dataclasses.astuple(tables))
    )
    config = config_with(samples_per_shard=7)
    write(tables, tmp_path / "a", config)
    write(reversed_tables, tmp_path / "b", config)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(files_a) == 2 * 5 + 3
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_resume_skips_done_shards_and_rewrites_missing_ones(tmp_path):
    tables = synthetic_tables(20, seed=5)
    config = config_with(samples_per_shard=6)
    write(tables, tmp_path, config)
    original = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    kept_stat = (tmp_path / "train-000000.tar").stat().st_mtime_ns
    (tmp_path / "train-000002.tar").unlink()  # as if killed while writing shard 2
    report = write(tables, tmp_path, config)
    assert (report.shards_kept, report.shards_written) == (3, 1)
    assert (tmp_path / "train-000000.tar").stat().st_mtime_ns == kept_stat
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == original
    # a different config invalidates every shard
    report = write(tables, tmp_path, updated(config, {"seed": 1}))
    assert (report.shards_kept, report.shards_written) == (0, 4)


def test_resume_rewrites_a_damaged_shard_and_reports_it(tmp_path):
    """A tar of the right size whose bytes differ from its sidecar's sha256 is not kept."""
    tables = synthetic_tables(12, seed=8)
    config = config_with(samples_per_shard=6)
    write(tables, tmp_path, config)
    original = (tmp_path / "train-000001.tar").read_bytes()
    damaged = bytearray(original)
    damaged[600] ^= 0xFF  # in the first member's data: same size, other bytes
    (tmp_path / "train-000001.tar").write_bytes(bytes(damaged))
    report = write(tables, tmp_path, config)
    assert (report.shards_kept, report.shards_written) == (1, 1)
    assert [name for name, _ in report.rewritten] == ["train-000001.tar"]
    assert "sha256" in report.rewritten[0][1]
    assert (tmp_path / "train-000001.tar").read_bytes() == original
    assert report.figures()["shards_rewritten"] == 1


def test_shard_tally_agrees_with_the_patching_module(tmp_path):
    """dataset.json's patch means come from ShardTally; patching.average_patch_sizes is the reference."""
    from lst_data.format.patching import average_patch_sizes
    from lst_data.format.reader import iter_records
    from lst_data.shards.summary import ShardTally

    write(synthetic_tables(15, seed=9), tmp_path, config_with(samples_per_shard=4))
    tally = ShardTally()
    for record in iter_records(tmp_path):
        tally.add(record)
    reference = average_patch_sizes(iter_records(tmp_path))
    assert tally.average_patch_sizes() == reference
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["average_patch_sizes"] == reference
    static = {(r["kind"], r["length"]): r["count"] for r in dataset["patch_lengths"]["counts"]["static"]}
    assert sum(static.values()) == reference["static"]["n_patches"] and max(length for _, length in static) == 4


def test_resume_rewrites_a_shard_whose_inputs_changed(tmp_path):
    tables = synthetic_tables(12, seed=6)
    config = config_with(samples_per_shard=6)
    write(tables, tmp_path, config)
    changed_units = tables.units.to_pylist()
    for row in changed_units:
        row["units"] = [(u + 1) % 100 for u in row["units"]]
    changed = dataclasses.replace(tables, units=pa.Table.from_pylist(changed_units, schema=UNITS_SCHEMA))
    report = write(changed, tmp_path, config)
    assert (report.shards_kept, report.shards_written) == (0, 2)


def test_fewer_samples_remove_stale_shards(tmp_path):
    config = config_with(samples_per_shard=4)
    write(synthetic_tables(12, seed=7), tmp_path, config)
    write(synthetic_tables(5, seed=7), tmp_path, config)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert pq.read_metadata(tmp_path / "index.parquet").num_rows == 5


def test_byte_limit_closes_shards(tmp_path):
    limit = 40_000
    report = write(
        synthetic_tables(40, seed=8), tmp_path, config_with(samples_per_shard=1000, max_shard_bytes=limit)
    )
    sizes = [p.stat().st_size for p in tmp_path.glob("*.tar")]
    assert report.samples == 40 and len(sizes) > 1
    assert max(sizes) <= limit


def test_audio_members_are_flac_of_the_source(tmp_path):
    from lst_data.shards.members import FlacFromPaths

    tables = synthetic_tables(4, seed=9, audio_dir=tmp_path / "audio")
    paths = dict(
        zip(tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist(), strict=True)
    )
    config = config_with(include_audio=True)
    for out in ("a", "b"):
        write(tables, tmp_path / out, config, audio_source=FlacFromPaths(paths))
    tar_a = (tmp_path / "a" / "train-000000.tar").read_bytes()
    assert tar_a == (tmp_path / "b" / "train-000000.tar").read_bytes()
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        names = tar.getnames()
        assert len(names) == 12 and names[0].endswith(".flac")
        flac = tar.extractfile(names[0]).read()
        data = json.loads(tar.extractfile(names[1]).read())
    audio, rate = sf.read(io.BytesIO(flac))
    assert rate == 16000 and len(audio) == round(data["duration"] * 16000)


def test_unreadable_audio_is_a_reject(tmp_path):
    from lst_data.shards.members import FlacFromPaths

    tables = synthetic_tables(3, seed=10, audio_dir=tmp_path / "audio")
    paths = dict(
        zip(tables.manifest["id"].to_pylist(), tables.manifest["audio_path"].to_pylist(), strict=True)
    )
    broken = sorted(paths)[0]
    Path(paths[broken]).write_bytes(b"not audio")
    report = write(
        tables, tmp_path / "out", config_with(include_audio=True), audio_source=FlacFromPaths(paths)
    )
    assert report.samples == 2
    assert [(r.id, r.code) for r in report.rejects] == [(broken, "audio_unreadable")]


def test_sample_schema_names_the_record_fields():
    from support.synthetic_shards import synthetic_tables as make

    (record,) = [r for r in join_records(make(1), RunConfig()) if not isinstance(r, Reject)]
    schema = load_schema("sample")
    assert set(schema["properties"]) == set(record.to_json())
    for field, spans in (("words", record.words), ("bpe", record.bpe), ("silences", record.silences)):
        assert set(schema["properties"][field]["items"]["properties"]) == set(spans[0]._fields)


def test_checking_in_worker_processes_gives_the_same_bytes(tmp_path):
    tables = synthetic_tables(12, seed=12)
    bad = tables.units.to_pylist()
    bad[3]["units"] = bad[3]["units"][:-1]  # n_frames no longer len(units): rejected by the join
    tables = dataclasses.replace(tables, units=pa.Table.from_pylist(bad, schema=UNITS_SCHEMA))
    config = config_with(samples_per_shard=5)
    one = write(tables, tmp_path / "one", config)
    two = write(tables, tmp_path / "two", config, workers=2)
    assert one.samples == two.samples == 11 and [r.code for r in two.rejects] == ["invalid_record"]
    for path in (tmp_path / "one").iterdir():
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes(), path.name


def test_writer_rejects_records_that_break_the_contract(tmp_path):
    (record,) = list(join_records(hello_world_tables(), RunConfig()))
    words = list(record.words)
    words[1] = words[1]._replace(end_frame=40)  # past n_frames = 25
    broken = dataclasses.replace(record, id="broken", words=tuple(words))
    empty_word = dataclasses.replace(
        record, id="empty", words=(words[0]._replace(word=""), words[1])
    )
    report = write_shards([record, broken, empty_word], tmp_path, RunConfig(), show_progress=False)
    assert report.samples == 1
    details = {r.id: r.detail for r in report.rejects}
    assert set(details) == {"broken", "empty"} and {r.code for r in report.rejects} == {"invalid_record"}
    assert "outside [0, 25)" in details["broken"]
    assert "words/0/word" in details["empty"]


def test_build_shards_from_a_pipeline_run_dir_with_a_real_tokenizer(tmp_path):
    """The layout of `lst-data build` (one folder per stage) and tokens from the real tokenize stage."""
    from lst_data.core.rejects import write_rejects
    from lst_data.format.reader import iter_records
    from lst_data.shards.build import StageOutputs, build_shards
    from lst_data.tokenize.stage import TokenizeStage
    from lst_data.tokenize.tokenizer import train_tokenizer

    tables = synthetic_tables(10, seed=30)
    run = tmp_path / "run"
    for folder, name, table in (("ingest", "manifest", tables.manifest), ("align", "alignments", tables.alignments),
                                ("units", "units", tables.units)):  # fmt: skip
        (run / folder).mkdir(parents=True)
        pq.write_table(table, run / folder / f"{name}.parquet")
    (run / "tokenize").mkdir()
    texts = tables.manifest["normalized_text"].to_pylist()
    tokenizer = train_tokenizer(texts, run / "tokenize" / "tokenizer.model", 60, seed=0)
    result = TokenizeStage(model_path=tokenizer.path, expected_hash=tokenizer.hash).process_batch(
        tables.manifest.select(["id", "normalized_text"]).to_pylist()
    )
    pq.write_table(
        pa.Table.from_pylist(result.rows, schema=TOKENS_SCHEMA), run / "tokenize" / "tokens.parquet"
    )
    write_rejects(
        [Reject("lost", "units", "units_failed", "too short")], run / "units" / "units_rejects.parquet"
    )

    report = build_shards(StageOutputs.from_run_dir(run), run / "shards", RunConfig(), show_progress=False)
    assert report.figures["samples"] == 10 and report.figures["shards_written"] == 1
    assert [(r.id, r.stage) for r in report.rejects] == [("lost", "units")] and report.new_rejects == []
    assert [(r.id, r.stage) for r in read_rejects(run / "shards" / "rejects.parquet")] == [("lost", "units")]
    stage_json = json.loads((run / "shards" / "shard.json").read_text())
    assert stage_json["counts"] == {"input": 10, "output": 10, "rejects": 1}
    assert stage_json["tokenizer"]["hash"] == tokenizer.hash
    dataset = json.loads((run / "shards" / "dataset.json").read_text())
    assert dataset["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    assert dataset["hashes"]["tokenizer"] == [tokenizer.hash]
    pieces = {row["id"]: [p["id"] for p in row["pieces"]] for row in result.rows}
    for record in iter_records(run / "shards"):
        assert [p.id for p in record.bpe] == pieces[record.id]
        for i, word in enumerate(record.words):  # a word's pieces tile the word's frames
            own = [p for p in record.bpe if p.word_index == i]
            assert own[0].start_frame == word.start_frame and own[-1].end_frame == word.end_frame
