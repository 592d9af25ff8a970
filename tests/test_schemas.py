"""The JSON Schemas in schemas/ are the one source: Arrow schemas come from them, and every
table and record the toolkit writes validates against its schema."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lst_data.config import RunConfig
from lst_data.core import tables
from lst_data.core.config import updated
from lst_data.format.records import SampleRecord
from lst_data.format.schema import SCHEMA_DIR, load_schema, schema_names, validation_errors

_interval = [pa.field("start", pa.float64()), pa.field("end", pa.float64())]

# Written out by hand (not derived): the Arrow schemas of the stage tables as they are on disk.
# A change here changes Parquet files and shard bytes.
EXPECTED_ARROW = {
    "manifest": pa.schema([
        pa.field("id", pa.string(), nullable=False), pa.field("key", pa.string(), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False), pa.field("source_path", pa.string(), nullable=False),
        pa.field("offset", pa.float64()), pa.field("audio_identity", pa.string()),
        pa.field("source_sample_rate", pa.int32(), nullable=False), pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("num_samples", pa.int64(), nullable=False), pa.field("duration", pa.float64(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False),
        pa.field("normalized_text", pa.string(), nullable=False), pa.field("flags", pa.list_(pa.string()), nullable=False),
    ]),
    "alignment": pa.schema([
        pa.field("id", pa.string(), nullable=False), pa.field("backend", pa.string(), nullable=False),
        pa.field("model_hash", pa.string(), nullable=False),
        pa.field("words", pa.list_(pa.struct([pa.field("word", pa.string()), *_interval])), nullable=False),
        pa.field("phones", pa.list_(pa.struct([pa.field("phone", pa.string()), *_interval, pa.field("word_index", pa.int32())]))),
        pa.field("chars", pa.list_(pa.struct([pa.field("char", pa.string()), *_interval, pa.field("word_index", pa.int32())]))),
        pa.field("silences", pa.list_(pa.struct([*_interval, pa.field("rule", pa.string())])), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("oov", pa.list_(pa.struct([pa.field("word", pa.string()), pa.field("source", pa.string())]))),
    ]),
    "oov": pa.schema([pa.field("word", pa.string()), pa.field("source", pa.string()), pa.field("count", pa.int64())]),
    "units": pa.schema([
        pa.field("id", pa.string(), nullable=False), pa.field("units", pa.list_(pa.int16()), nullable=False),
        pa.field("frame_rate", pa.float64(), nullable=False), pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("encoder", pa.string(), nullable=False), pa.field("layer", pa.int32()),
        pa.field("codebook_hash", pa.string(), nullable=False), pa.field("k", pa.int32(), nullable=False),
    ]),
    "tokens": pa.schema([
        pa.field("id", pa.string(), nullable=False), pa.field("tokenizer_hash", pa.string(), nullable=False),
        pa.field("pieces", pa.list_(pa.struct([pa.field("id", pa.int32()), pa.field("piece", pa.string()),
                                               pa.field("word_index", pa.int32())])), nullable=False),
    ]),
    "reject": pa.schema([pa.field(n, pa.string(), nullable=False) for n in ("id", "stage", "code", "detail")]),
    "index": pa.schema([
        pa.field("id", pa.string(), nullable=False), pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False), pa.field("duration", pa.float64(), nullable=False),
        pa.field("n_units", pa.int32(), nullable=False), pa.field("n_words", pa.int32(), nullable=False),
        pa.field("n_bpe", pa.int32(), nullable=False), pa.field("speaker", pa.string(), nullable=False),
    ]),
}  # fmt: skip
ARROW_CONSTANTS = {"manifest": "MANIFEST_SCHEMA", "alignment": "ALIGNMENT_SCHEMA", "oov": "OOV_SCHEMA",
                   "units": "UNITS_SCHEMA", "tokens": "TOKENS_SCHEMA", "reject": "REJECT_SCHEMA", "index": "INDEX_SCHEMA"}
RECORD_SCHEMAS = ("sample", "sidecar", "dataset", "choice_item")  # JSON files, not tables


@pytest.mark.parametrize("name", sorted(EXPECTED_ARROW))
def test_derived_arrow_schema_is_the_on_disk_one(name):
    derived = tables.arrow_schema(name)
    assert derived.equals(EXPECTED_ARROW[name]), f"{name}:\n{derived}\n!=\n{EXPECTED_ARROW[name]}"
    assert getattr(tables, ARROW_CONSTANTS[name]).equals(EXPECTED_ARROW[name])


def test_every_schema_is_a_table_or_a_record():
    assert set(schema_names()) == set(EXPECTED_ARROW) | set(RECORD_SCHEMAS)


def test_integer_width_comes_from_the_annotation(tmp_path, monkeypatch):
    """Without `x-arrow` an integer is int64; the annotation is what makes units int16."""
    schema = load_schema("units")
    plain = json.loads(json.dumps(schema))
    del plain["properties"]["units"]["items"]["x-arrow"]
    (tmp_path / "units.v1.json").write_text(json.dumps(plain))
    monkeypatch.setattr("lst_data.format.schema.SCHEMA_DIR", tmp_path)
    load_schema.cache_clear()
    try:
        assert tables.arrow_schema("units").field("units").type == pa.list_(pa.int64())
    finally:
        load_schema.cache_clear()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, list[dict]]:
    """Every table and record the shard step writes from a pipeline-layout run, plus the stage tables."""
    from support.synthetic_shards import synthetic_tables

    from lst_data.align.stage import oov_report
    from lst_data.core.rejects import Reject, write_rejects
    from lst_data.format.layout import shard_paths, sidecar_path
    from lst_data.format.reader import iter_raw_samples
    from lst_data.shards.build import StageOutputs, build_shards

    run = tmp_path_factory.mktemp("run")
    made = synthetic_tables(8, seed=40)
    alignments = made.alignments.to_pylist()
    alignments[0]["oov"] = [{"word": alignments[0]["words"][0]["word"], "source": "cmudict"}]
    alignments[1]["oov"] = [{"word": alignments[1]["words"][0]["word"], "source": "letters"}]
    files = {"manifest": made.manifest, "alignments": pa.Table.from_pylist(alignments, schema=tables.ALIGNMENT_SCHEMA),
             "units": made.units, "tokens": made.tokens}
    for name, table in files.items():
        pq.write_table(table, run / f"{name}.parquet")
    pq.write_table(oov_report(files["alignments"]), run / "oov.parquet")
    write_rejects([Reject("gone", "units", "units_failed", "too short")], run / "units_rejects.parquet")
    out = run / "shards"
    build_shards(StageOutputs.from_run_dir(run), out, updated(RunConfig(), {"shard": {"samples_per_shard": 3}}),
                 show_progress=False)
    tars = shard_paths(out)
    found = {
        "manifest": run / "manifest.parquet", "alignment": run / "alignments.parquet", "oov": run / "oov.parquet",
        "units": run / "units.parquet", "tokens": run / "tokens.parquet", "reject": out / "rejects.parquet",
        "index": out / "index.parquet",
    }
    records = {}
    for name, path in found.items():
        table = pq.read_table(path)
        assert table.schema.remove_metadata().equals(EXPECTED_ARROW[name]), name
        records[name] = table.to_pylist()
    records["sample"] = [json.loads(m["json"]) for t in tars for _, m in iter_raw_samples(t, with_audio=False)]
    records["sidecar"] = [json.loads(sidecar_path(t).read_text()) for t in tars]
    records["dataset"] = [json.loads((out / "dataset.json").read_text())]
    from support.toy_corpus import synthetic_records

    from lst_model.corpus_tasks import corpus_items
    from lst_model.items import write_items

    items, _ = corpus_items(synthetic_records(20, seed=5, speakers=2), 0.5)
    records["choice_item"] = [json.loads(line) for line in write_items(items, run / "items.jsonl").read_text().splitlines()]
    return records


@pytest.mark.parametrize("name", sorted(set(EXPECTED_ARROW) | set(RECORD_SCHEMAS)))
def test_every_written_table_and_record_validates(written, name):
    rows = written[name]
    assert rows, f"nothing of {name} was written"
    problems = [(i, e) for i, row in enumerate(rows) for e in validation_errors(row, name)]
    assert problems == []


def test_schemas_are_found_inside_the_package():
    """The wheel carries lst_data/schemas; the checkout's link points at the same files."""
    import lst_data

    package_dir = Path(lst_data.__file__).parent / "schemas"
    assert SCHEMA_DIR.resolve() == package_dir.resolve()
    assert sorted(p.name for p in package_dir.glob("*.json")) == sorted(p.name for p in SCHEMA_DIR.glob("*.json"))


@pytest.mark.parametrize("record_class, name", [("Sidecar", "sidecar"), ("Reject", "reject")])
def test_python_records_name_the_schema_fields(record_class, name):
    import dataclasses

    from lst_data.core.rejects import Reject
    from lst_data.format.layout import Sidecar

    cls = {"Sidecar": Sidecar, "Reject": Reject}[record_class]
    fields = [f.name for f in dataclasses.fields(cls)]
    assert fields == list(load_schema(name)["properties"]) and set(fields) == set(load_schema(name)["required"])


def test_sample_schema_matches_record():
    import numpy as np

    record = SampleRecord(
        id="u", text="a", speaker="s", duration=0.08, sample_rate=16000, frame_rate=25.0,
        units=np.zeros(2, dtype=np.int16), words=(), bpe=(), silences=(),
        aligner={"backend": "b", "model_hash": "h"}, unit_info={"encoder": "e", "layer": None, "codebook_hash": "c", "k": 2},
    )
    assert set(record.to_json()) == set(load_schema("sample")["properties"])


def test_every_schema_file_is_valid_json_schema():
    import jsonschema

    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)


def test_fast_check_and_jsonschema_agree_on_broken_samples():
    """The compiled check may pass a record only when jsonschema would (the writer relies on it)."""
    import copy

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lst_data.format.schema import _compiled, _validator, validation_errors

    good = {
        "schema_version": 1, "id": "u", "text": "a b", "speaker": "s", "duration": 0.2, "sample_rate": 16000,
        "frame_rate": 25.0, "n_frames": 5,
        "words": [{"word": "a", "start": 0.0, "end": 0.08, "start_frame": 0, "end_frame": 1},
                  {"word": "b", "start": 0.08, "end": 0.2, "start_frame": 2, "end_frame": 4}],
        "bpe": [{"id": 3, "piece": "\u2581a", "word_index": 0, "start_frame": 0, "end_frame": 1}],
        "silences": [], "aligner": {"backend": "x", "model_hash": "h"},
        "units": {"encoder": "mfcc", "layer": None, "codebook_hash": "c", "k": 8},
    }
    assert validation_errors(good, "sample") == []
    paths = [("n_frames",), ("duration",), ("id",), ("words", 0, "start_frame"), ("words", 1, "word"),
             ("bpe", 0, "word_index"), ("units", "k"), ("aligner", "backend"), ("schema_version",)]
    values = st.sampled_from([-1, 0, "", "x", None, 1.5, [], {}, True])

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(paths), values, st.booleans())
    def agree(path, value, add_extra_key):
        record = copy.deepcopy(good)
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        if add_extra_key:
            record["extra"] = 1
        fast_ok = True
        try:
            _compiled("sample", 1)(record)
        except Exception:
            fast_ok = False
        slow_ok = _validator("sample", 1).is_valid(record)
        assert fast_ok == slow_ok, (path, value, add_extra_key)
        assert (validation_errors(record, "sample") == []) == slow_ok

