"""The JSON Schemas in schemas/ and the Arrow schemas in code name the same fields."""

import json

import pytest

from lst_data.records import SampleRecord
from lst_data.rejects import REJECT_SCHEMA
from lst_data.schemas import SCHEMA_DIR, load_schema
from lst_data.tables import ALIGNMENT_SCHEMA, MANIFEST_SCHEMA, UNITS_SCHEMA


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
