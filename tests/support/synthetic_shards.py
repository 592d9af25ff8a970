"""Synthetic stage tables (manifest, alignments, units, tokens) for shard tests and benchmarks.

The numbers are those a real run produces: 16 kHz audio durations, word and silence
intervals that tile the utterance, 25 Hz units (floor(duration * 25) of them), BPE pieces
that split each word into one or two pieces. Audio files are written only when asked
(`audio_dir`), as 16 kHz FLAC noise bursts per word, so audio members can be tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lst_data.audio import write_audio
from lst_data.core.tables import ALIGNMENT_SCHEMA, MANIFEST_SCHEMA, TOKENS_SCHEMA, UNITS_SCHEMA
from lst_data.format.frames import frames_for_duration
from lst_data.format.keys import sanitize_key
from lst_data.shards.join import JoinTables

VOCABULARY = ("the", "cat", "sat", "on", "a", "mat", "speech", "units", "are", "tokens", "hello", "world")
SAMPLE_RATE = 16000
FRAME_RATE = 25.0
TOKENIZER_HASH = "7" * 64


def synthetic_tables(
    n: int,
    *,
    seed: int = 0,
    words_per_utterance: tuple[int, int] = (3, 12),
    k: int = 100,
    audio_dir: Path | None = None,
) -> JoinTables:
    rng = np.random.default_rng(seed)
    manifest, alignments, units, tokens = [], [], [], []
    piece_ids: dict[str, int] = {}
    for i in range(n):
        utterance_id = f"spk{i % 3}/utt-{i:05d}.v1" if i % 5 == 0 else f"spk{i % 3}-utt{i:05d}"
        n_words = int(rng.integers(*words_per_utterance, endpoint=True))
        words = [VOCABULARY[j] for j in rng.integers(0, len(VOCABULARY), n_words)]
        cursor = round(float(rng.uniform(0.05, 0.4)), 3)
        word_rows, silences = [], [{"start": 0.0, "end": cursor, "rule": "edge"}]
        for w in words:
            length = round(float(rng.uniform(0.15, 0.5)), 3)
            word_rows.append({"word": w, "start": cursor, "end": round(cursor + length, 3)})
            cursor = round(cursor + length, 3)
            gap = round(float(rng.choice([0.0, 0.0, 0.03, 0.12])), 3)
            if gap >= 0.05:
                silences.append({"start": cursor, "end": round(cursor + gap, 3), "rule": "gap"})
            cursor = round(cursor + gap, 3)
        tail = round(float(rng.uniform(0.05, 0.3)), 3)
        duration = round(cursor + tail, 3)
        silences.append({"start": cursor, "end": duration, "rule": "edge"})
        num_samples = int(round(duration * SAMPLE_RATE))
        audio_path = f"/corpus/{sanitize_key(utterance_id)}.wav"
        if audio_dir is not None:
            audio_path = str(audio_dir / f"{sanitize_key(utterance_id)}.flac")
            noise = (rng.standard_normal(num_samples) * 0.1).astype(np.float32)
            write_audio(audio_path, noise, SAMPLE_RATE)
        manifest.append(
            {
                "id": utterance_id,
                "key": sanitize_key(utterance_id),
                "audio_path": audio_path,
                "source_path": audio_path,
                "source_sample_rate": SAMPLE_RATE,
                "sample_rate": SAMPLE_RATE,
                "num_samples": num_samples,
                "duration": duration,
                "speaker": f"spk{i % 3}",
                "text": " ".join(words).capitalize() + ".",
                "normalized_text": " ".join(words),
                "flags": [],
            }
        )
        alignments.append(
            {
                "id": utterance_id,
                "backend": "textgrid",  # schema-valid: alignments imported, as from TextGrids
                "model_hash": "a" * 64,
                "words": word_rows,
                "phones": None,
                "chars": None,
                "silences": silences,
                "score": None,
                "oov": [],
            }
        )
        n_frames = frames_for_duration(duration, FRAME_RATE)
        units.append(
            {
                "id": utterance_id,
                "units": rng.integers(0, k, n_frames).astype(np.int16).tolist(),
                "frame_rate": FRAME_RATE,
                "n_frames": n_frames,
                "encoder": "mfcc",
                "layer": None,
                "codebook_hash": "c" * 64,
                "k": k,
            }
        )
        pieces = []
        for word_index, w in enumerate(words):
            parts = ["\u2581" + w] if len(w) <= 3 else ["\u2581" + w[:2], w[2:]]
            for part in parts:
                pieces.append(
                    {
                        "id": piece_ids.setdefault(part, len(piece_ids) + 3),
                        "piece": part,
                        "word_index": word_index,
                    }
                )
        tokens.append({"id": utterance_id, "tokenizer_hash": TOKENIZER_HASH, "pieces": pieces})
    return JoinTables(
        manifest=pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA),
        alignments=pa.Table.from_pylist(alignments, schema=ALIGNMENT_SCHEMA),
        units=pa.Table.from_pylist(units, schema=UNITS_SCHEMA),
        tokens=pa.Table.from_pylist(tokens, schema=TOKENS_SCHEMA),
    )
