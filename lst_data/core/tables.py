"""Arrow schemas of the intermediate Parquet tables, keyed by `id`.

Stages never reach into each other's code: they meet only through these tables.
The on-disk JSON Schemas in `schemas/` are the contract for users; a test keeps the
field names here and there in agreement.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_sample_rate", pa.int32(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("num_samples", pa.int64(), nullable=False),
        pa.field("duration", pa.float64(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("normalized_text", pa.string(), nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),
    ]
)

_interval = [pa.field("start", pa.float64()), pa.field("end", pa.float64())]

ALIGNMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("model_hash", pa.string(), nullable=False),
        pa.field("words", pa.list_(pa.struct([pa.field("word", pa.string()), *_interval])), nullable=False),
        pa.field(
            "phones",
            pa.list_(pa.struct([pa.field("phone", pa.string()), *_interval, pa.field("word_index", pa.int32())])),
        ),
        pa.field(
            "chars",
            pa.list_(pa.struct([pa.field("char", pa.string()), *_interval, pa.field("word_index", pa.int32())])),
        ),
        pa.field("silences", pa.list_(pa.struct([*_interval, pa.field("rule", pa.string())])), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("oov", pa.list_(pa.struct([pa.field("word", pa.string()), pa.field("source", pa.string())]))),
    ]
)

UNITS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("units", pa.list_(pa.int16()), nullable=False),
        pa.field("frame_rate", pa.float64(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("encoder", pa.string(), nullable=False),
        pa.field("layer", pa.int32()),
        pa.field("codebook_hash", pa.string(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
    ]
)

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_key(utterance_id: str) -> str:
    """A WebDataset-safe key (only [A-Za-z0-9_-]) for an utterance id.

    webdataset splits a member name at its first dot, so ids such as `a.b` or `spk/utt`
    cannot be keys as they are. Ids that needed changing get a short hash of the original
    so that two ids never collapse onto one key; the original id stays in the sample JSON.
    """
    key = _KEY_UNSAFE.sub("_", utterance_id)
    if key != utterance_id or not key:
        key = f"{key}_{hashlib.sha1(utterance_id.encode('utf-8')).hexdigest()[:8]}"
    return key
