"""The writer's fast proof (`validation.proven_tiling`) never passes a record the full contract check refuses.

The proof copies rules of schemas/sample.v1.json and of `SampleRecord.from_json` into
column checks; a record it cannot prove fine goes to `contract.sample_errors`. So the one
thing that must never happen is a record proven fine that `sample_errors` refuses, and the
patch tally the proof's frame tiling gives must be the one `patching.patches` gives for
the record as a reader decodes it from its shard. Both are checked here on thousands of
records altered one to three fields at a time (odd types, out-of-range numbers, spans
swapped, dropped, doubled, emptied or shifted by a frame).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from support.synthetic_shards import synthetic_tables

from lst_data.config import RunConfig
from lst_data.core.config import updated
from lst_data.format.contract import sample_errors
from lst_data.format.patching import PATCH_STRATEGIES, patches
from lst_data.format.records import BpePiece, SampleRecord, Silence, Word
from lst_data.shards.join import join_records
from lst_data.shards.members import sample_json_bytes, units_npy_bytes
from lst_data.shards.summary import ShardTally
from lst_data.shards.validation import _ALIGNER_FIELDS, _UNITS_FIELDS, proven_tiling

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 2
ODD_VALUES = [None, True, False, 0, -1, 1, 2, 3.0, -0.0, 0.0, float("nan"), float("inf"), 1e300, 2**31, 2**31 - 1,
              2**63, "", "x", [], {}, (1,), b"x", 1e7, 1e7 + 1, 10**6 + 1, 1e4 + 0.5, np.int64(3), np.float64(1.5)]
KINDS = {"words": Word, "bpe": BpePiece, "silences": Silence}


@pytest.fixture(scope="module")
def records() -> list[SampleRecord]:
    config = updated(RunConfig(), {"shard": {"samples_per_shard": 100}})
    made = list(join_records(synthetic_tables(150, seed=1, words_per_utterance=(0, 12)), config))
    return made + list(join_records(synthetic_tables(50, seed=2, words_per_utterance=(1, 3)), config))


def _odd(value, rng: random.Random):
    if rng.random() < 0.5:
        return rng.choice(ODD_VALUES)
    if type(value) is int:
        return value + rng.choice([-2, -1, 1, 100])
    if type(value) is float:
        return rng.choice([value * 2, -value, value * 1e9, float(round(value)) if math.isfinite(value) else value])
    if type(value) is str:
        return rng.choice(["", value + " x", value.upper(), " "])
    return rng.choice(ODD_VALUES)


def _altered_spans(spans, kind, rng: random.Random):
    spans = list(spans)
    if not spans:
        return tuple(spans)
    i = rng.randrange(len(spans))
    operation = rng.randrange(6)
    if operation == 0:
        fields = list(spans[i])
        field = rng.randrange(len(fields))
        fields[field] = _odd(fields[field], rng)
        spans[i] = tuple.__new__(kind, fields)
    elif operation == 1 and len(spans) > 1:
        j = rng.randrange(len(spans))
        spans[i], spans[j] = spans[j], spans[i]
    elif operation == 2:
        del spans[i]
    elif operation == 3:
        spans.insert(i, spans[i])
    elif operation == 4:
        spans[i] = spans[i]._replace(end_frame=spans[i].start_frame - 1)
    else:
        shift = rng.choice([-1, 1])
        spans[i] = spans[i]._replace(**{rng.choice(["start_frame", "end_frame"]): spans[i].end_frame + shift})
    return tuple(spans)


def _altered(record: SampleRecord, rng: random.Random) -> SampleRecord:
    changes = {}
    for _ in range(rng.choice([1, 1, 2, 3])):
        name = rng.choice(["id", "text", "duration", "sample_rate", "frame_rate", "units", "aligner", "unit_info",
                           "text_original", "words", "bpe", "silences", "words", "bpe", "silences"])
        value = changes.get(name, getattr(record, name))
        if name in KINDS:
            changes[name] = _altered_spans(value, KINDS[name], rng)
        elif name == "units":
            units = np.array(value)
            changes[name] = rng.choice([units[:-1], np.concatenate([units, units[:3]]), units.astype(np.int64) + 100,
                                        units.astype(np.float64), units.reshape(1, -1)])
        elif name in ("aligner", "unit_info"):
            altered = dict(value)
            key = rng.choice([*altered, "extra"])
            altered[key] = _odd(altered.get(key), rng)
            changes[name] = altered
        else:
            changes[name] = _odd(value, rng)
    return dataclasses.replace(record, **changes)


def _patch_counts(record: SampleRecord) -> dict[str, Counter]:
    return {strategy: Counter(("silence" if p.kind == "silence" else "speech", p.length)
                              for p in patches(record, strategy, patch_size=4))
            for strategy in PATCH_STRATEGIES}  # fmt: skip


def test_a_record_proven_fine_passes_the_full_check_and_tallies_as_read_back(records):
    rng = random.Random(3)
    proven = refused = 0
    for _ in range(3000):
        record = _altered(rng.choice(records), rng) if rng.random() < 0.9 else rng.choice(records)
        tiling = proven_tiling(record, TOLERANCE)
        if tiling is None:
            try:
                refused += bool(sample_errors(record, TOLERANCE))
            except (TypeError, ValueError):
                refused += 1
            continue
        proven += 1
        assert sample_errors(record, TOLERANCE) == [], record
        read_back = SampleRecord.from_json(orjson.loads(sample_json_bytes(record)),
                                           np.load(io.BytesIO(units_npy_bytes(record.units))))
        from_proof, from_reading = ShardTally(), ShardTally()
        from_proof.add(record, tiling)
        from_reading.add(read_back)
        assert repr(from_proof.to_json()) == repr(from_reading.to_json())
        assert {s: from_proof.patch_lengths[s] for s in PATCH_STRATEGIES} == _patch_counts(read_back)
    assert proven > 300 and refused > 1000, (proven, refused)  # both sides were exercised


def test_the_proof_knows_the_schemas_provenance_objects():
    schema = json.loads((ROOT / "schemas" / "sample.v1.json").read_text())
    json_types = {"string": str, "integer": int, "null": type(None)}
    for name, fields in (("aligner", _ALIGNER_FIELDS), ("units", _UNITS_FIELDS)):
        declared = schema["properties"][name]
        assert declared["additionalProperties"] is False and set(declared["required"]) == set(fields)
        for field, spec in declared["properties"].items():
            kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            assert set(fields[field]) == {json_types[k] for k in kinds}, (name, field)


def test_every_record_of_the_synthetic_corpus_with_words_is_proven(records):
    """The fast path is the common path: a fine record is proven fine (not merely passed to the slow check)."""
    fine = [r for r in records if r.words and math.isfinite(r.duration)]
    assert fine and all(proven_tiling(r, TOLERANCE) is not None for r in fine)


def test_member_headers_are_the_bytes_tarfile_writes():
    """The writer makes headers from one blank tarfile header; they must equal tarfile's own, name by name."""
    import tarfile

    from lst_data.shards.tar_io import MEMBER_MODE, SHARD_MTIME, member_header

    names = ["a.json", "k" * 95 + ".flac", "k" * 96 + ".json", "k" * 100, "k" * 101 + ".json", "déjà.json", "x.units.npy"]
    for name in names:
        for size in (0, 1, 511, 512, 10**6, 8**11 - 1, 8**11, 9 * 2**30):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = size, SHARD_MTIME, MEMBER_MODE, "", ""
            assert member_header(name, size) == info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"), (
                name, size)


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 123_457])
def test_units_members_are_the_bytes_np_save_writes(n):
    array = np.random.default_rng(n).integers(-(2**15), 2**15, n).astype(np.int16)
    saved = io.BytesIO()
    np.save(saved, array, allow_pickle=False)
    assert units_npy_bytes(array) == saved.getvalue()
