"""The shard contract's checks, all in one place.

- `joined_row_problem` and friends: what only the join of the stage tables can see (units
  vs duration, aligned words vs text, word times); `join_records` rejects such rows.
- `sample_errors`: a record about to be written (schemas/sample.v1.json, span checks,
  JSON-ability); the writer runs it in worker processes, so this module imports no
  webdataset or torch.
- `check_shard` / `check_dir`: a written shard directory, behind `lst-data validate`: the
  directory has dataset.json and index.parquet, dataset.json lists exactly the tars present
  and counts the sidecars' samples, index.parquet has each shard's sidecar count of rows; per
  shard, the sidecar exists and is well-formed and its sha256, byte size and sample count
  match the tar, and every member is a regular, non-sparse file under the size caps with a
  safe sample name (`lst_data.format.safe_tar`); per sample, the JSON validates,
  units are 1-D int16 below k, word / BPE / silence spans are monotonic and inside
  [0, n_frames), words and silences tile the frames, each word's pieces tile the word, and
  len(units) agrees with the duration within the tolerance the shards were written with.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq

from lst_data.core.digests import file_sha256
from lst_data.core.storage import is_remote
from lst_data.format.frames import frames_for_duration
from lst_data.format.layout import (
    DATASET_FILE,
    INDEX_FILE,
    Sidecar,
    UnsafeMemberError,
    read_dataset,
    shard_paths,
    sidecar_path,
)
from lst_data.format.patching import patches
from lst_data.format.records import SampleRecord, parse_json
from lst_data.format.safe_tar import (
    DEFAULT_LIMITS,
    READ_ERRORS,
    BadShardError,
    ReadLimits,
    read_sidecar,
    scan_tar,
    sidecar_mismatches,
)
from lst_data.format.schema import validation_errors

STAGE = "shard"
DEFAULT_FRAME_TOLERANCE = 2


class InvalidRecord(ValueError):
    """The joined rows contradict each other (reject code invalid_record)."""


def frame_count_problem(n_frames: int, duration: float, frame_rate: float, tolerance: int) -> str | None:
    """Why `n_frames` units cannot be `duration` seconds at `frame_rate` (None: within `tolerance`)."""
    expected = frames_for_duration(duration, frame_rate)
    if abs(n_frames - expected) <= tolerance:
        return None
    return f"{n_frames} units for {duration:.3f} s at {frame_rate:g} Hz (expected {expected} +- {tolerance})"


def word_times_problem(words: Sequence[Mapping[str, Any]], latest_end: float) -> str | None:
    """Why aligned word times are impossible: outside [0, latest_end] or out of order (None: fine)."""
    previous_start = 0.0
    for i, w in enumerate(words):
        start, end = float(w["start"]), float(w["end"])
        if not (0.0 <= start <= end <= latest_end):
            return f"word {i} ({w['word']!r}) spans {start:.3f}-{end:.3f} s, outside 0-{latest_end:.3f} s"
        if start < previous_start:
            return f"word {i} ({w['word']!r}) starts at {start:.3f} s, before the previous word"
        previous_start = start
    return None


def joined_row_problem(
    duration: float, units: Mapping[str, Any], n_units: int, aligned: Sequence[Mapping[str, Any]],
    text_words: Sequence[str], frame_tolerance: int,
) -> str | None:
    """The first contradiction between an utterance's manifest, units and alignment rows (None: none)."""
    frame_rate = float(units["frame_rate"])
    if n_units == 0 or n_units != units["n_frames"]:
        return f"{n_units} units but n_frames = {units['n_frames']}"
    problem = frame_count_problem(n_units, duration, frame_rate, frame_tolerance)
    if problem:
        return problem
    if [w["word"] for w in aligned] != list(text_words):
        return f"aligned words {' '.join(w['word'] for w in aligned)!r} != text {' '.join(text_words)!r}"
    return word_times_problem(aligned, duration + frame_tolerance / frame_rate)


class _FrameSpan(Protocol):
    """What the frame checks read of a word, BPE piece or silence."""

    @property
    def start_frame(self) -> int: ...
    @property
    def end_frame(self) -> int: ...


def record_problems(record: SampleRecord, frame_tolerance: int = DEFAULT_FRAME_TOLERANCE) -> list[str]:
    """Contract violations of one decoded record (the JSON schema is checked separately)."""
    n = record.n_frames
    problems = []
    frames = frame_count_problem(n, record.duration, record.frame_rate, frame_tolerance)
    if frames:
        problems.append(frames)
    k = record.unit_info.get("k")
    if n and isinstance(k, int) and (record.units.min() < 0 or record.units.max() >= k):
        problems.append(f"unit ids outside [0, {k})")
    tiers: tuple[tuple[str, Sequence[_FrameSpan]], ...] = (
        ("word", record.words), ("bpe", record.bpe), ("silence", record.silences))
    for tier, spans in tiers:
        previous_end = -1
        for i, span in enumerate(spans):
            empty = span.end_frame == span.start_frame - 1
            if (
                span.start_frame < 0
                or span.start_frame >= n
                or span.end_frame >= n
                or (span.end_frame < span.start_frame and not empty)
            ):
                problems.append(f"{tier} {i} frames {span.start_frame}..{span.end_frame} outside [0, {n})")
            elif not empty and span.start_frame <= previous_end:
                problems.append(f"{tier} {i} starts at frame {span.start_frame}, not after {previous_end}")
            if not empty:
                previous_end = max(previous_end, span.end_frame)
    for i, piece in enumerate(record.bpe):
        if not 0 <= piece.word_index < len(record.words):
            problems.append(f"bpe {i} word_index {piece.word_index} outside the {len(record.words)} words")
    if record.text.split() != [w.word for w in record.words]:
        problems.append("text is not the words joined by spaces")
    if not problems:
        for strategy in ("word_sil_sep", "bpe"):
            try:
                patches(record, strategy)
            except ValueError as err:
                problems.append(f"{strategy} spans do not tile the frames: {err}")
    return problems


def sample_errors(record: SampleRecord, frame_tolerance: int = DEFAULT_FRAME_TOLERANCE) -> list[str]:
    """Why `record` may not be written: schemas/sample.v1.json, then the span checks, then JSON-ability."""
    data = record.to_json()
    try:
        json.dumps(data, allow_nan=False)
    except ValueError as err:  # NaN or infinity has no JSON form
        return [str(err)]
    return validation_errors(data, "sample") or record_problems(record, frame_tolerance)


# ---------------------------------------------------------------- a written shard directory


@dataclass(frozen=True)
class Problem:
    where: str  # shard name, or shard:sample id
    what: str


def _frame_tolerance(dataset: dict[str, Any] | None) -> int:
    """The shard.frame_tolerance the shards were written with (dataset.json), else the default."""
    try:
        return int(dataset["config"]["shard"].get("frame_tolerance", DEFAULT_FRAME_TOLERANCE))  # type: ignore[index]
    except (ValueError, KeyError, TypeError, AttributeError):
        return DEFAULT_FRAME_TOLERANCE


def sidecar_problems(tar_path: Path, sidecar: Sidecar) -> list[str]:
    """Where the tar on disk is not the one its sidecar describes (size, then sha256); no header scan.

    An object's bytes are checked by its store on upload and are not downloaded to be hashed
    here: only its size is compared (readers still verify the sha256 of what they read).
    """
    size = tar_path.stat().st_size
    hashed = size == sidecar.bytes and not is_remote(tar_path)
    return sidecar_mismatches(sidecar, size, file_sha256(tar_path) if hashed else None)


def check_shard(
    tar_path: Path, frame_tolerance: int = DEFAULT_FRAME_TOLERANCE, limits: ReadLimits = DEFAULT_LIMITS
) -> Iterator[Problem]:
    """Every problem of one tar: its sidecar, its bytes against the sidecar, then each sample."""
    from lst_data.format.reader import decode_members, iter_raw_samples

    name = tar_path.name
    side = sidecar_path(tar_path)
    sidecar = None
    if not side.exists():
        yield Problem(name, f"no sidecar {side.name}")
    else:
        try:
            sidecar = Sidecar.read(side)
        except (OSError, ValueError) as err:
            yield Problem(side.name, f"unreadable sidecar: {err}")
    try:
        scan = scan_tar(tar_path, limits)
    except READ_ERRORS as err:
        kind = "unsafe member" if isinstance(err, UnsafeMemberError) else "unreadable tar"
        yield Problem(name, f"{kind}: {err}")
        return
    if sidecar is not None:
        for problem in sidecar_mismatches(sidecar, scan.bytes, scan.sha256, scan.samples):
            yield Problem(name, problem)
    try:
        for key, members in iter_raw_samples(tar_path, limits=limits):
            where = f"{name}:{key}"
            try:
                data = parse_json(members.get("json", b"{}"), max_bytes=limits.max_json_bytes, what=f"{key}.json")
                if isinstance(data, dict):
                    for error in validation_errors(data, "sample")[:5]:
                        yield Problem(where, f"schema: {error[:300]}")
                record = decode_members(key, members, limits=limits)
            except (ValueError, RecursionError) as err:  # RecursionError: jsonschema on values nested ~1000 deep
                yield Problem(where, f"undecodable sample: {err}")
                continue
            for problem in record_problems(record, frame_tolerance):
                yield Problem(where, problem)
    except READ_ERRORS as err:  # the scan read the same headers, so this is a race with a writer
        yield Problem(name, f"unreadable tar: {err}")


def _dataset_problems(shard_dir: Path, tars: list[Path]) -> tuple[dict[str, Any] | None, list[Problem]]:
    """dataset.json (None when missing or broken) and what is wrong with it or with the tars it lists."""
    try:
        dataset = read_dataset(shard_dir)
    except FileNotFoundError:
        return None, [Problem(DATASET_FILE, "missing: not a finished shard directory (the writer writes it last)")]
    except (OSError, ValueError) as err:
        return None, [Problem(DATASET_FILE, str(err))]
    listed, present = list(dataset["shards"]), [t.name for t in tars]
    problems = [Problem(name, "listed in dataset.json but missing") for name in sorted(set(listed) - set(present))]
    problems += [Problem(name, "not listed in dataset.json") for name in sorted(set(present) - set(listed))]
    return dataset, problems


def _index_problems(shard_dir: Path, sidecar_samples: dict[str, int]) -> list[Problem]:
    """index.parquet against the sidecars: one row per sample of each shard."""
    index = shard_dir / INDEX_FILE
    if not index.exists():
        return [Problem(INDEX_FILE, "missing")]
    try:
        shards = pq.read_table(index, columns=["shard"])["shard"].to_pylist()
    except (OSError, ValueError, KeyError) as err:
        return [Problem(INDEX_FILE, f"unreadable: {err}")]
    rows = Counter(shards)
    return [
        Problem(INDEX_FILE, f"{rows.get(name, 0)} rows for {name}, its sidecar says {samples}")
        for name, samples in sorted(sidecar_samples.items())
        if rows.get(name, 0) != samples
    ] + [Problem(INDEX_FILE, f"{n} rows for {name}, which has no sidecar or is not here")
         for name, n in sorted(rows.items()) if name not in sidecar_samples]  # fmt: skip


def check_dir(shard_dir: str | Path, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Problem]:
    """Every problem in a shard directory; none means it satisfies the contract."""
    shard_dir = Path(shard_dir)
    tars = shard_paths(shard_dir)
    if not tars:
        yield Problem(str(shard_dir), "no shards")
        return
    dataset, problems = _dataset_problems(shard_dir, tars)
    yield from problems
    tolerance = _frame_tolerance(dataset)
    sidecar_samples = {}
    for tar_path in tars:
        yield from check_shard(tar_path, tolerance, limits)
        with contextlib.suppress(BadShardError):  # reported by check_shard
            sidecar_samples[tar_path.name] = read_sidecar(tar_path).samples
    yield from _index_problems(shard_dir, sidecar_samples)
    if dataset is not None and dataset["counts"]["samples"] != sum(sidecar_samples.values()):
        yield Problem(DATASET_FILE, f"counts {dataset['counts']['samples']} samples, the sidecars {sum(sidecar_samples.values())}")
