"""The JSON Schemas in schemas/ and the Arrow schemas in code name the same fields."""

import json

import pytest

from lst_data.records import SampleRecord
from lst_data.core.rejects import REJECT_SCHEMA
from lst_data.core.schemas import SCHEMA_DIR, load_schema
from lst_data.core.tables import ALIGNMENT_SCHEMA, MANIFEST_SCHEMA, UNITS_SCHEMA


@pytest.mark.parametrize(
    "name, arrow_schema",
    [("manifest", MANIFEST_SCHEMA), ("reject", REJECT_SCHEMA), ("alignment", ALIGNMENT_SCHEMA), ("units", UNITS_SCHEMA)],
)
def test_json_schema_matches_arrow_schema(name, arrow_schema):
    path = SCHEMA_DIR / f"{name}.v1.json"
    if not path.exists():
        pytest.fail(f"schemas/{path.name} is missing")
    schema = load_schema(name)
    assert set(schema["properties"]) == set(arrow_schema.names)
    required = {f.name for f in arrow_schema if not f.nullable}
    assert required <= set(schema["required"])


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

    from lst_data.core.schemas import _compiled, _validator, validation_errors

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

