"""Write samples into WebDataset tars, with sidecars, an index and a dataset summary.

Same inputs and config give the same bytes: members are written sorted by name with a
fixed mtime, mode and owner, in PAX format; sample JSON is canonical (sorted keys, no
spaces); units are `np.save` of a little-endian int16 array. A tar is written under a
temporary name and renamed when complete, and its sidecar is written after it, so a tar
with a sidecar is always whole.

Resume: a shard whose tar and sidecar exist, whose sidecar has this run's config hash and
whose samples (ids and JSON + units bytes, re-serialized from the incoming records)
match the sidecar's `content_sha256` is skipped without being rewritten (no audio is read
for it). The content check is stricter than the config hash alone: it also catches
upstream tables that changed under an unchanged config.

Only one shard's worth of serialized samples is in memory at a time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import re
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

import lst_data
from lst_data.audio import AudioError, read_audio
from lst_data.config import RunConfig, canonical_hash, to_dict
from lst_data.patching import average_patch_sizes
from lst_data.core.progress import progress_bar
from lst_data.records import SampleRecord
from lst_data.core.rejects import Reject, count_by_code, write_rejects
from lst_data.shards.contract import sample_errors
from lst_data.shards.join import STAGE, Provenance
from lst_data.shards.layout import (
    DATASET_FILE,
    INDEX_FILE,
    REJECTS_FILE,
    Sidecar,
    shard_index,
    shard_name,
    shard_paths,
    sidecar_path,
    write_json_atomic,
)
from lst_data.shards.reader import iter_shard
from lst_data.core.tables import sanitize_key

log = logging.getLogger(__name__)

# Fixed tar header fields: the time and owner of the writing machine must not leak into the bytes.
SHARD_MTIME = 0
MEMBER_MODE = 0o444
_TAR_BLOCK = 512
_TAR_RECORD = 10240  # tarfile pads every archive to a multiple of this
# Sections of the run config that shards depend on (the Ray runner does not change a byte).
_CONTENT_SECTIONS = ("ingest", "align", "units", "tokenizer", "shard")
_CHECK_WINDOW = 512

INDEX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("duration", pa.float64(), nullable=False),
        pa.field("n_units", pa.int32(), nullable=False),
        pa.field("n_words", pa.int32(), nullable=False),
        pa.field("n_bpe", pa.int32(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
    ]
)

AudioSource = Callable[[SampleRecord], bytes]


def shard_config_hash(config: RunConfig) -> str:
    """Hash of everything shard bytes depend on: the seed and every section but `ray`."""
    return canonical_hash(
        {"seed": config.seed, **{name: to_dict(getattr(config, name)) for name in _CONTENT_SECTIONS}}
    )


def sample_json_bytes(record: SampleRecord) -> bytes:
    return json.dumps(
        record.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def units_npy_bytes(units: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(units, dtype="<i2"), allow_pickle=False)
    return buffer.getvalue()


def flac_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit FLAC of mono float samples (libFLAC output holds no time stamp)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


@dataclass(frozen=True)
class FlacFromPaths:
    """Audio source for `write_shards`: reads each record's audio file and encodes FLAC."""

    paths: dict[str, str]

    def __call__(self, record: SampleRecord) -> bytes:
        samples, rate = read_audio(self.paths[record.id], record.sample_rate)
        return flac_bytes(samples, rate)


@dataclass(frozen=True)
class EncodedSample:
    """A sample's tar members (sorted by name) and the bytes resume compares."""

    record_id: str
    key: str
    duration: float
    members: tuple[tuple[str, bytes], ...]

    @property
    def tar_bytes(self) -> int:
        """Bytes the members take in a tar: a header block each (two more with a PAX long name) + padded data."""
        return sum(
            _TAR_BLOCK * (1 if len(name) <= 100 else 3) + math.ceil(len(data) / _TAR_BLOCK) * _TAR_BLOCK
            for name, data in self.members
        )


def tar_file_size(member_bytes: int) -> int:
    """Size of a tar holding `member_bytes` of headers + data: end-of-archive blocks, padded to a record."""
    return math.ceil((member_bytes + 2 * _TAR_BLOCK) / _TAR_RECORD) * _TAR_RECORD


def encode_sample(record: SampleRecord, audio: bytes | None) -> EncodedSample:
    key = sanitize_key(record.id)
    members = [
        (f"{key}.json", sample_json_bytes(record)),
        (f"{key}.units.npy", units_npy_bytes(record.units)),
    ]
    if audio is not None:
        members.append((f"{key}.flac", audio))
    return EncodedSample(record.id, key, record.duration, tuple(sorted(members)))


def _content_digest(samples: Iterable[EncodedSample]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        for name, data in sample.members:
            if not name.endswith(".flac"):
                digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


class _HashingWriter:
    """A write-only file that hashes and counts what tarfile writes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


def write_tar(path: Path, samples: Iterable[EncodedSample]) -> tuple[int, str]:
    """Write members deterministically to `path` via a temporary name; (bytes, sha256)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw:
        hashing = _HashingWriter(raw)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for sample in samples:
                for name, data in sample.members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = SHARD_MTIME
                    info.mode = MEMBER_MODE
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return hashing.size, hashing.sha256.hexdigest()


@dataclass
class ShardReport:
    out_dir: Path
    shards_written: int = 0
    shards_skipped: int = 0
    samples: int = 0
    hours: float = 0.0
    rejects: list[Reject] = field(default_factory=list)  # carried + this stage's
    new_rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def shards(self) -> int:
        return self.shards_written + self.shards_skipped


def write_shards(
    records: Iterable[SampleRecord | Reject],
    out_dir: str | Path,
    config: RunConfig,
    *,
    audio_source: AudioSource | None = None,
    carried_rejects: Iterable[Reject] = (),
    provenance: Provenance | None = None,
    tokenizer_vocab_size: int | None = None,
    workers: int = 1,
    show_progress: bool = True,
) -> ShardReport:
    """Stream records (and rejects, e.g. from `join_records`) into OUT; return what happened.

    Writes `{split}-NNNNNN.tar` + `.json` sidecars, then `index.parquet`, `rejects.parquet`
    (carried rejects + this stage's) and `dataset.json`. Records that fail
    schemas/sample.v1.json, or whose audio cannot be read, become `invalid_record` /
    `audio_unreadable` rejects. Shard tars left over from an earlier, longer run of the
    same split are removed, so the directory describes exactly this run. `workers` > 1
    checks records in that many processes (the output does not depend on it).
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale_tmp in out.glob(".*.tmp"):
        stale_tmp.unlink()
    settings = config.shard
    if settings.samples_per_shard < 1:
        raise ValueError("shard.samples_per_shard must be >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", settings.split):
        raise ValueError(f"shard.split {settings.split!r} may use only [A-Za-z0-9_-] (it names the tars)")
    config_hash = shard_config_hash(config)
    report = ShardReport(out)
    # spawn, not fork: the caller may hold threads (Ray, progress bars); a worker that dies
    # raises BrokenProcessPool instead of hanging the job
    pool = (
        concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 1
        else None
    )
    stream = _PushBackIterator(_valid_records(records, report.new_rejects, settings.frame_tolerance, pool))
    index = 0
    with contextlib.ExitStack() as stack:
        if pool is not None:
            stack.enter_context(pool)
        bar = stack.enter_context(
            progress_bar(total=None, desc="shard", unit="utt", disable=not show_progress)
        )
        while True:
            tar_path = out / shard_name(settings.split, index)
            done = _done_sidecar(tar_path, config_hash)
            if done is not None:
                head = list(itertools.islice(stream, done.samples))
                encoded = [encode_sample(r, None) for r in head]
                if encoded and _matches(done, encoded):
                    report.shards_skipped += 1
                    report.samples += done.samples
                    bar.update(done.samples)
                    index += 1
                    continue
                log.info("%s: sidecar does not match the incoming samples; rewriting", tar_path.name)
                stream.push_back(head)
            shard = _next_shard(
                stream,
                settings.samples_per_shard,
                settings.max_shard_bytes,
                audio_source,
                settings.include_audio,
                report.new_rejects,
            )
            if not shard:
                break
            _write_shard(tar_path, shard, settings.split, index, config_hash)
            report.shards_written += 1
            report.samples += len(shard)
            bar.update(len(shard))
            bar.set_postfix(rejects=len(report.new_rejects))
            index += 1
    _remove_stale_shards(out, settings.split, index)
    report.rejects = sorted(
        set(carried_rejects) | set(report.new_rejects), key=lambda r: (r.stage, r.id, r.code)
    )
    write_rejects(report.rejects, out / REJECTS_FILE)
    summary = write_index_and_summary(
        out, config, config_hash, report.rejects, provenance or Provenance(), tokenizer_vocab_size
    )
    report.hours = summary["counts"]["hours"]
    report.seconds = time.perf_counter() - started
    return report


def _valid_records(
    records: Iterable[SampleRecord | Reject],
    rejects: list[Reject],
    frame_tolerance: int,
    pool: concurrent.futures.Executor | None,
) -> Iterator[SampleRecord]:
    """Records that pass schemas/sample.v1.json and the span checks of `lst-data validate`.

    Checking is most of the writer's time (jsonschema takes ~10 ms on a 30-word sample), so
    windows of records are checked in `pool` when there is one; a window bounds the memory
    held, and results come back in input order. Rejects (incoming and new) go to `rejects`.
    """
    check = functools.partial(sample_errors, frame_tolerance=frame_tolerance)
    window: list[SampleRecord] = []

    def checked() -> Iterator[SampleRecord]:
        results = pool.map(check, window, chunksize=16) if pool is not None else map(check, window)
        for record, errors in zip(window, results, strict=True):
            if errors:
                rejects.append(Reject(record.id, STAGE, "invalid_record", "; ".join(errors[:3])))
            else:
                yield record
        window.clear()

    for item in records:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        window.append(item)
        if len(window) >= _CHECK_WINDOW:
            yield from checked()
    yield from checked()


def _done_sidecar(tar_path: Path, config_hash: str) -> Sidecar | None:
    side = sidecar_path(tar_path)
    if not (tar_path.exists() and side.exists()):
        return None
    try:
        sidecar = Sidecar.read(side)
    except (ValueError, TypeError) as err:
        log.warning("%s: unreadable sidecar (%s); rewriting the shard", side.name, err)
        return None
    if sidecar.config_hash != config_hash or sidecar.bytes != tar_path.stat().st_size:
        return None
    return sidecar


def _matches(sidecar: Sidecar, encoded: list[EncodedSample]) -> bool:
    return (
        len(encoded) == sidecar.samples
        and encoded[0].record_id == sidecar.first_id
        and encoded[-1].record_id == sidecar.last_id
        and _content_digest(encoded) == sidecar.content_sha256
    )


def _next_shard(
    stream: _PushBackIterator,
    max_samples: int,
    max_bytes: int,
    audio_source: AudioSource | None,
    include_audio: bool,
    rejects: list[Reject],
) -> list[EncodedSample]:
    """Encode samples until the shard is full by count or bytes (at least one sample per shard).

    The record that would overflow `max_bytes` goes back onto the stream for the next shard.
    """
    shard: list[EncodedSample] = []
    size = 0
    for record in stream:
        try:
            audio = _audio_for(record, audio_source, include_audio)
        except AudioError as err:
            rejects.append(Reject(record.id, STAGE, "audio_unreadable", str(err)))
            continue
        sample = encode_sample(record, audio)
        if shard and max_bytes and tar_file_size(size + sample.tar_bytes) > max_bytes:
            stream.push_back([record])
            break
        shard.append(sample)
        size += sample.tar_bytes
        if len(shard) >= max_samples:
            break
    return shard


class _PushBackIterator(Iterator[SampleRecord]):
    """An iterator that takes records back (a shard that turned out full, or not done after all)."""

    def __init__(self, source: Iterator[SampleRecord]) -> None:
        self.source = source
        self.pending: collections.deque[SampleRecord] = collections.deque()

    def push_back(self, records: list[SampleRecord]) -> None:
        self.pending.extendleft(reversed(records))

    def __next__(self) -> SampleRecord:
        return self.pending.popleft() if self.pending else next(self.source)


def _audio_for(record: SampleRecord, audio_source: AudioSource | None, include_audio: bool) -> bytes | None:
    if record.audio is not None or not include_audio:
        return record.audio if include_audio else None
    if audio_source is None:
        raise ValueError("shard.include_audio is set but write_shards got no audio_source")
    return audio_source(record)


def _write_shard(
    tar_path: Path, shard: list[EncodedSample], split: str, index: int, config_hash: str
) -> None:
    size, sha256 = write_tar(tar_path, shard)
    seconds = sum(s.duration for s in shard)
    sidecar = Sidecar(
        schema_version=lst_data.SCHEMA_VERSION,
        toolkit_version=lst_data.__version__,
        split=split,
        shard=tar_path.name,
        index=index,
        samples=len(shard),
        first_id=shard[0].record_id,
        last_id=shard[-1].record_id,
        duration_seconds=round(seconds, 6),
        hours=round(seconds / 3600, 6),
        bytes=size,
        sha256=sha256,
        config_hash=config_hash,
        content_sha256=_content_digest(shard),
    )
    write_json_atomic(sidecar_path(tar_path), sidecar.to_json())


def _remove_stale_shards(out: Path, split: str, first_stale: int) -> None:
    for tar_path in shard_paths(out, split):
        if shard_index(tar_path) >= first_stale:
            log.info("removing %s, left over from an earlier run", tar_path.name)
            tar_path.unlink()
            sidecar_path(tar_path).unlink(missing_ok=True)


def write_index_and_summary(
    out: Path,
    config: RunConfig,
    config_hash: str,
    rejects: list[Reject],
    provenance: Provenance,
    tokenizer_vocab_size: int | None,
) -> dict[str, Any]:
    """Read the written shards back once: `index.parquet` and `dataset.json` come from what is on disk."""
    split = config.shard.split
    tars = shard_paths(out, split)
    totals: Counter[str] = Counter()
    aligners: set[tuple[str, str]] = set()
    codebooks: set[tuple[str, Any, str, int]] = set()
    frame_rates: set[float] = set()
    tmp_index = out / f".{INDEX_FILE}.tmp"
    with pq.ParquetWriter(tmp_index, INDEX_SCHEMA) as writer:
        rows: list[dict[str, Any]] = []

        def tally(records: Iterable[tuple[Path, SampleRecord]]) -> Iterator[SampleRecord]:
            for tar_path, record in records:
                rows.append(
                    {
                        "id": record.id,
                        "key": sanitize_key(record.id),
                        "shard": tar_path.name,
                        "duration": record.duration,
                        "n_units": record.n_frames,
                        "n_words": len(record.words),
                        "n_bpe": len(record.bpe),
                        "speaker": record.speaker,
                    }
                )
                totals.update(
                    samples=1,
                    units=record.n_frames,
                    words=len(record.words),
                    bpe=len(record.bpe),
                    silence_frames=sum(s.n_frames for s in record.silences),
                )
                totals["seconds"] += record.duration
                aligners.add((record.aligner["backend"], record.aligner["model_hash"]))
                u = record.unit_info
                codebooks.add((u["encoder"], u["layer"], u["codebook_hash"], u["k"]))
                frame_rates.add(record.frame_rate)
                if len(rows) >= 4096:
                    writer.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
                    rows.clear()
                yield record

        patch_sizes = average_patch_sizes(tally(_with_shard(tars)))
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
    tmp_index.replace(out / INDEX_FILE)
    ks = sorted({c[3] for c in codebooks})
    summary = {
        "schema_version": lst_data.SCHEMA_VERSION,
        "toolkit_version": lst_data.__version__,
        "split": split,
        "config": to_dict(config),
        "config_hash": config_hash,
        "shards": [t.name for t in tars],
        "hashes": {
            "aligner": [{"backend": b, "model_hash": h} for b, h in sorted(aligners)],
            "codebook": [
                {"encoder": e, "layer": layer, "codebook_hash": h, "k": k}
                for e, layer, h, k in sorted(codebooks, key=str)
            ],
            "tokenizer": sorted(provenance.tokenizer_hashes),
        },
        "tokenizer": {"vocab_size": tokenizer_vocab_size},
        "units": {
            "k": ks[0] if len(ks) == 1 else None,
            "frame_rate": min(frame_rates) if len(frame_rates) == 1 else None,
        },
        "counts": {
            "samples": totals["samples"],
            "shards": len(tars),
            "hours": round(totals["seconds"] / 3600, 6),
            "units": totals["units"],
            "words": totals["words"],
            "bpe": totals["bpe"],
            "silence_share": round(totals["silence_frames"] / totals["units"], 6)
            if totals["units"]
            else None,
            "rejects": len(rejects),
            "rejects_by_code": [
                {"stage": s, "code": c, "count": n} for (s, c), n in sorted(count_by_code(rejects).items())
            ],
        },
        "average_patch_sizes": patch_sizes,
    }
    write_json_atomic(out / DATASET_FILE, summary)
    return summary


def _with_shard(tars: list[Path]) -> Iterator[tuple[Path, SampleRecord]]:
    for tar_path in tars:
        for record in iter_shard(tar_path, with_audio=False):
            yield tar_path, record
