"""Join the stage tables by id into shard samples (`SampleRecord`), one at a time.

The manifest drives the join: every manifest id either becomes a record or a reject,
except ids an earlier stage already rejected (they are in that stage's rejects and are
not counted twice). `missing_stage_output`: the id has no row in alignments, units or
tokens; `invalid_record`: the rows contradict each other (the checks are in
`lst_data.format.contract`) or the BPE pieces do not map onto the words.

Records come out in a deterministic order (`shard.order`), independent of the row order
of the input tables, which Ray does not keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lst_data.config import RunConfig
from lst_data.core.partitions import order_digest
from lst_data.core.rejects import Reject
from lst_data.format.contract import STAGE, InvalidRecord, joined_row_problem
from lst_data.format.frames import FrameSpan, frame_to_time, silence_frame_runs, word_frame_spans
from lst_data.format.records import BpePiece, SampleRecord, Silence, Word
from lst_data.tokenize import TokenPiece, bpe_frame_spans

_BATCH_ROWS = 256

@dataclass
class Provenance:
    """Hashes of the tokenizers seen while joining (aligner and codebook hashes ride in each record)."""

    tokenizer_hashes: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class JoinTables:
    """The four stage outputs, as Arrow tables with the stage schemas."""

    manifest: pa.Table
    alignments: pa.Table
    units: pa.Table
    tokens: pa.Table


def sample_order(ids: Sequence[str], order: str, seed: int) -> list[int]:
    """Row indices of `ids` in the shard order: 'id' (sorted) or 'hash' (sha1 of seed:id, ties by id)."""
    if order == "id":
        return sorted(range(len(ids)), key=lambda i: ids[i])
    if order == "hash":
        return sorted(range(len(ids)), key=lambda i: (order_digest(seed, ids[i]), ids[i]))
    raise ValueError(f"unknown shard.order {order!r} (use 'hash' or 'id')")


def join_records(
    tables: JoinTables,
    config: RunConfig,
    *,
    prior_rejects: Iterable[Reject] = (),
    provenance: Provenance | None = None,
) -> Iterator[SampleRecord | Reject]:
    """Yield one SampleRecord or Reject per manifest id that no earlier stage rejected.

    Only one batch of joined rows is in memory at a time; the input tables stay columnar.
    """
    provenance = provenance if provenance is not None else Provenance()
    already_rejected = {r.id for r in prior_rejects}
    ids = tables.manifest.column("id").to_pylist()
    positions = {name: _positions(getattr(tables, name)) for name in ("alignments", "units", "tokens")}
    order = sample_order(ids, config.shard.order, config.seed)
    for start in range(0, len(order), _BATCH_ROWS):
        chunk = order[start : start + _BATCH_ROWS]
        manifest_rows = tables.manifest.take(pa.array(chunk, pa.int64())).to_pylist()
        found = {
            name: _take(getattr(tables, name), positions[name], [ids[i] for i in chunk]) for name in positions
        }
        for row in manifest_rows:
            missing = [name for name in positions if row["id"] not in found[name]]
            if missing:
                # An id an earlier stage rejected is counted there; one that every stage
                # kept ships even when ingest rejected a later copy of it (duplicate_id).
                if row["id"] not in already_rejected:
                    yield Reject(row["id"], STAGE, "missing_stage_output", f"no row in {', '.join(missing)}")
                continue
            token_row = found["tokens"][row["id"]]
            provenance.tokenizer_hashes.add(token_row["tokenizer_hash"])
            try:
                yield join_one(
                    row, found["alignments"][row["id"]], found["units"][row["id"]], token_row, config
                )
            except InvalidRecord as err:
                yield Reject(row["id"], STAGE, "invalid_record", str(err))


def _positions(table: pa.Table) -> dict[str, int]:
    return {utterance_id: i for i, utterance_id in enumerate(table.column("id").to_pylist())}


def _take(table: pa.Table, positions: Mapping[str, int], ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """id -> row (units as an int16 array, not a Python list) for the ids present in `table`."""
    # Typed indices: an empty Python list would be a null array, which `take` refuses.
    rows = table.take(pa.array([positions[i] for i in ids if i in positions], pa.int64()))
    unit_lists = None
    if "units" in rows.column_names:
        unit_lists = _split_lists(rows.column("units").combine_chunks())
        rows = rows.drop_columns(["units"])
    out = {}
    for j, row in enumerate(rows.to_pylist()):
        if unit_lists is not None:
            row["units"] = unit_lists[j]
        out[row["id"]] = row
    return out


def _split_lists(lists: pa.ListArray) -> list[np.ndarray]:
    """The int16 lists of a list column as numpy arrays, without a Python int per unit."""
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
    offsets = lists.offsets.to_numpy()
    offsets = offsets - offsets[0]
    return [flat[offsets[j] : offsets[j + 1]] for j in range(len(lists))]


def join_one(
    manifest: Mapping[str, Any],
    alignment: Mapping[str, Any],
    units: Mapping[str, Any],
    tokens: Mapping[str, Any],
    config: RunConfig,
) -> SampleRecord:
    """The sample of one utterance from its four rows; raises InvalidRecord when they disagree."""
    utterance_id = manifest["id"]
    unit_ids = np.asarray(units["units"], dtype=np.int16)
    n_frames = int(unit_ids.shape[0])
    frame_rate = float(units["frame_rate"])
    duration = float(manifest["duration"])
    aligned = alignment["words"]
    text_words = manifest["normalized_text"].split()
    problem = joined_row_problem(duration, units, n_frames, aligned, text_words, config.shard.frame_tolerance)
    if problem:
        raise InvalidRecord(problem)
    word_spans = word_frame_spans([(w["start"], w["end"]) for w in aligned], frame_rate, n_frames)
    pieces = [TokenPiece(int(p["id"]), p["piece"], int(p["word_index"])) for p in tokens["pieces"]]
    try:
        piece_spans = bpe_frame_spans(
            word_spans,
            pieces,
            words=text_words,
            chars=alignment.get("chars"),
            phones=alignment.get("phones"),
            frame_rate=frame_rate,
            n_frames=n_frames,
        )
    except ValueError as err:
        raise InvalidRecord(f"BPE pieces do not fit the words: {err}") from err
    return SampleRecord(
        id=utterance_id,
        text=manifest["normalized_text"],
        text_original=manifest["text"],
        speaker=manifest["speaker"],
        duration=duration,
        sample_rate=int(manifest["sample_rate"]),
        frame_rate=frame_rate,
        units=unit_ids,
        words=tuple(
            Word(w["word"], float(w["start"]), float(w["end"]), s.start, s.end)
            for w, s in zip(aligned, word_spans, strict=True)
        ),
        bpe=tuple(
            BpePiece(p.id, p.piece, p.word_index, s.start, s.end)
            for p, s in zip(pieces, piece_spans, strict=True)
        ),
        silences=tuple(
            silence_records(word_spans, n_frames, frame_rate, duration, alignment["silences"] or ())
        ),
        aligner={"backend": alignment["backend"], "model_hash": alignment["model_hash"]},
        unit_info={
            "encoder": units["encoder"],
            "layer": units["layer"],
            "codebook_hash": units["codebook_hash"],
            "k": int(units["k"]),
        },
    )


def silence_records(
    word_spans: Sequence[FrameSpan],
    n_frames: int,
    frame_rate: float,
    duration: float,
    aligner_silences: Iterable[Mapping[str, Any]],
) -> list[Silence]:
    """Every run of frames no word claims, with the rule of the aligner silence it overlaps most.

    A run that overlaps no aligner silence (a sub-threshold gap, or frames lost to the
    frame grid) gets rule 'frames'. Times are the run's frame edges, the last one clipped
    to the duration.
    """
    labelled = [(float(s["start"]), float(s["end"]), s["rule"]) for s in aligner_silences]
    silences = []
    for run in silence_frame_runs(word_spans, n_frames):
        start = frame_to_time(run.start, frame_rate)
        end = max(start, min(frame_to_time(run.end + 1, frame_rate), duration))
        overlaps = [(min(end, e) - max(start, s), rule) for s, e, rule in labelled]
        best = max(overlaps, default=(0.0, "frames"), key=lambda o: o[0])
        silences.append(Silence(start, end, run.start, run.end, best[1] if best[0] > 0 else "frames"))
    return silences
