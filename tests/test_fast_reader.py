"""The fast read path: the contract's own tar reader, the one-pass sample decoder, record batches.

Each fast part is held against the slow, trusted one it replaces, on real shards and on
damaged or hostile variants: the standard library's `tarfile` for what a tar holds, and
`parse_json` + `SampleRecord.from_json` (the checks the hostile-shard tests pin down) for
what a sample's JSON may be.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lst_data.format import safe_tar
from lst_data.format.loader import make_loader
from lst_data.format.reader import decode_members, iter_raw_samples, iter_records
from lst_data.format.records import RecordBatch, SampleRecord, Spans, Word, parse_json

N_SAMPLES = 24


@pytest.fixture(scope="module")
def shard_dir(make_synthetic_shards) -> Path:
    return make_synthetic_shards(N_SAMPLES, samples_per_shard=8, seed=5)


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def reader_members(data: bytes, skip=()) -> list[tuple[str, bytes | None]]:
    return [(f"{m.key}.{m.suffix}", m.data) for m in safe_tar.iter_members(io.BytesIO(data), skip=skip)]


def tar_of(members: list[tuple[str, bytes]], tar_format: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Names in a header's name field, and over its 100 bytes (a pax path or a GNU long name).
NAMES = ["a.json", "b" * 99 + ".json", "c" * 150 + ".units.npy", "d-e_f.units.npy", "e" * 140 + ".flac"]


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_reader_sees_what_tarfile_sees(tar_format):
    names = NAMES if tar_format != tarfile.USTAR_FORMAT else [n for n in NAMES if len(n) <= 100]
    payloads = [bytes(random.Random(i).randrange(256) for _ in range(size))
                for i, size in enumerate((0, 1, 511, 512, 70_000))]  # fmt: skip
    data = tar_of(list(zip(names, payloads, strict=False)), tar_format)
    assert reader_members(data) == tarfile_members(data)
    skipped = reader_members(data, skip=("flac", "units.npy"))
    left_unread = [n for n in names if n.endswith((".flac", ".units.npy"))]
    assert left_unread and [d for n, d in skipped if n in left_unread] == [None] * len(left_unread)


def test_every_tar_the_writer_made_reads_as_tarfile_reads_it(shard_dir):
    for tar_path in sorted(shard_dir.glob("*.tar")):
        data = tar_path.read_bytes()
        assert reader_members(data) == tarfile_members(data)


def _damaged(data: bytes, position: int, value: int) -> bytes:
    raw = bytearray(data)
    raw[position] = value
    return bytes(raw)


def test_a_damaged_header_is_an_error_where_tarfile_would_end_the_archive_early():
    data = tar_of([("a.json", b"{}"), ("b.json", b"[]")], tarfile.PAX_FORMAT)
    second_header = 1024
    damaged = _damaged(data, second_header + 5, ord("x"))  # in b.json's name: its checksum no longer holds
    assert [n for n, _ in tarfile_members(damaged)] == ["a.json"]  # tarfile stops quietly
    with pytest.raises(safe_tar.DamagedTarError, match="byte 1024 fails its checksum"):
        reader_members(damaged)


def test_damage_anywhere_is_a_read_error_never_another_exception(shard_dir):
    """Byte flips in headers, pax records and data, and cuts anywhere: only the reader's errors come out."""
    pax = tar_of([("p" * 120 + ".json", b"{}"), ("q.units.npy", b"x" * 600)], tarfile.PAX_FORMAT)
    tars = [(shard_dir / "train-000000.tar").read_bytes()[:8192], pax]
    rng = random.Random(7)
    outcomes = Counter()
    for _ in range(600):
        raw = bytearray(rng.choice(tars))
        for position in rng.sample(range(len(raw)), rng.choice([1, 2, 8])):
            raw[position] = rng.choice([0, 0x80, 0xFF, ord(" "), ord("="), ord("7"), rng.randrange(256)])
        cut = bytes(raw[: rng.randrange(len(raw) + 1)]) if rng.random() < 0.3 else bytes(raw)
        try:
            list(safe_tar.iter_sample_members(io.BytesIO(cut)))
            outcomes["read"] += 1
        except safe_tar.READ_ERRORS as err:
            outcomes[type(err).__name__] += 1
    assert outcomes["DamagedTarError"] and outcomes["UnsafeMemberError"], outcomes


def test_truncated_and_empty_tars_are_errors():
    data = tar_of([("a.json", b"x" * 2000)], tarfile.PAX_FORMAT)
    with pytest.raises(safe_tar.DamagedTarError, match="truncated"):
        reader_members(data[:1000])
    with pytest.raises(safe_tar.DamagedTarError, match="empty file"):
        reader_members(b"")
    assert reader_members(data[:512 + 2048]) == [("a.json", b"x" * 2000)]  # no end-of-archive blocks: as tarfile


def _with_header(info: tarfile.TarInfo, data: bytes = b"", tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def test_members_the_contract_forbids_are_refused_before_their_data():
    directory = tarfile.TarInfo("k.json")
    directory.type = tarfile.DIRTYPE
    hard_link = tarfile.TarInfo("k.json")
    hard_link.type, hard_link.linkname = tarfile.LNKTYPE, "other.json"
    fifo = tarfile.TarInfo("k.json")
    fifo.type = tarfile.FIFOTYPE
    prefixed = tarfile.TarInfo("d" * 60 + "/" + "x" * 60 + ".json")  # ustar: "ddd…" goes to the prefix field
    cases = {"non-regular member 'k.json/'": _with_header(directory), "link 'k.json'": _with_header(hard_link),
             "non-regular member 'k.json' in": _with_header(fifo),
             f"unexpected tar member '{'d' * 60}/{'x' * 60}.json'": _with_header(prefixed, tar_format=tarfile.USTAR_FORMAT),
             "unexpected tar member 'déjà.json'": _with_header(tarfile.TarInfo("déjà.json"))}  # fmt: skip
    globally = tarfile.TarInfo("k.json")
    globally.size = 2
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tar:
        tar.addfile(globally, io.BytesIO(b"{}"))
    cases["global pax header"] = buffer.getvalue()
    long_name = tarfile.TarInfo("x" * 70_000 + ".json")
    cases["extended header of 70"] = _with_header(long_name, tar_format=tarfile.GNU_FORMAT)
    huge = tarfile.TarInfo("k.json")
    huge.size = 8 * 2**30  # base-256 in a GNU header; the data is not there and is never read
    cases["member 'k.json' of 8589934592 bytes is over"] = _with_header(huge, tar_format=tarfile.GNU_FORMAT)[:1024]
    for message, data in cases.items():
        with pytest.raises(safe_tar.UnsafeMemberError, match=message):
            reader_members(data)


def test_samples_are_grouped_and_a_split_or_duplicated_sample_is_refused():
    good = tar_of([("a.json", b"1"), ("a.units.npy", b"2"), ("b.json", b"3")], tarfile.PAX_FORMAT)
    assert list(safe_tar.iter_sample_members(io.BytesIO(good))) == [("a", {"json": b"1", "units.npy": b"2"}), ("b", {"json": b"3"})]
    split = tar_of([("a.json", b"1"), ("b.json", b"3"), ("a.units.npy", b"2")], tarfile.PAX_FORMAT)
    with pytest.raises(ValueError, match="appears twice"):
        list(safe_tar.iter_sample_members(io.BytesIO(split)))
    twice = tar_of([("a.json", b"1"), ("a.json", b"2")], tarfile.PAX_FORMAT)
    with pytest.raises(ValueError, match="duplicate member"):
        list(safe_tar.iter_sample_members(io.BytesIO(twice)))


# ------------------------------------------------------------------- the one-pass decoder against from_json


def _mutations(sample: dict) -> list[dict]:
    """Sample JSONs one change away from a good one: every field swapped for values of every kind."""
    odd_values = [None, True, -1, 0, 2**31, 2**63, 10**30, 0.5, -0.5, 1e8, "1", [], {}, [1], {"a": 1}]
    changed = []
    for name in sample:
        for value in odd_values:
            changed.append({**sample, name: value})
        changed.append({k: v for k, v in sample.items() if k != name})
    for tier in ("words", "bpe", "silences"):
        if not sample[tier]:
            continue
        first = sample[tier][0]
        for field in first:
            for value in odd_values:
                changed.append({**sample, tier: [{**first, field: value}, *sample[tier][1:]]})
            changed.append({**sample, tier: [{k: v for k, v in first.items() if k != field}, *sample[tier][1:]]})
        changed.append({**sample, tier: [{**first, "extra": 1}]})
        changed.append({**sample, tier: [[*first.values()]]})
    for value in odd_values:
        changed.append({**sample, "aligner": {"backend": value}})
        changed.append({**sample, "units": {**sample["units"], "k": value}})
    changed.append({**sample, "text_original": 5})  # from_json has always let any value through here
    return changed


def _outcome(decode) -> tuple[str, object]:
    try:
        record = decode()
    except ValueError as err:
        return "refused", str(err)
    spans = tuple(tuple(getattr(record, tier)) for tier in ("words", "bpe", "silences"))
    scalars = {k: v for k, v in vars(record).items() if k not in ("units", "words", "bpe", "silences")}
    return "record", (scalars, spans, record.units.tolist())


def test_the_fast_decoder_accepts_and_refuses_exactly_what_from_json_does(shard_dir):
    key, members = next(iter_raw_samples(shard_dir / "train-000000.tar"))
    good = json.loads(members["json"])
    cases = _mutations(good)
    assert len(cases) > 300
    units = np.frombuffer(members["units.npy"][128:], dtype="<i2")
    for case in [good, *cases]:
        raw = json.dumps(case).encode()
        fast = _outcome(lambda raw=raw: decode_members(key, {**members, "json": raw}))
        if fast[0] == "refused" and "does not map to the member key" in fast[1]:
            assert str(case.get("id")) != good["id"]
            continue
        slow = _outcome(lambda raw=raw: SampleRecord.from_json(parse_json(raw, max_bytes=2**22), units))
        assert fast == slow, case


def test_integer_seconds_are_read_as_floats_by_both_decoders(shard_dir):
    key, members = next(iter_raw_samples(shard_dir / "train-000000.tar"))
    data = json.loads(members["json"])
    data["duration"] = 3
    data["words"][0]["start"] = 0
    record = decode_members(key, {**members, "json": json.dumps(data).encode()})
    assert type(record.duration) is float and type(record.words[0].start) is float


# ------------------------------------------------------------------------------------ Spans and RecordBatch


def test_decoded_spans_read_as_tuples_of_named_tuples(shard_dir):
    record = next(iter_records(shard_dir))
    assert isinstance(record.words, Spans)
    words = tuple(record.words)
    assert words and all(type(w) is Word for w in words)
    assert record.words == words and words == record.words and record.words[-1] == words[-1]
    assert record.words[1:3] == words[1:3]
    assert record.words.column("start_frame").tolist() == [w.start_frame for w in words]
    copied = pickle.loads(pickle.dumps(record))
    assert copied.words == words and copied.bpe == tuple(record.bpe)


def _same_record(a: SampleRecord, b: SampleRecord) -> bool:
    return _outcome(lambda: a) == _outcome(lambda: b)


def test_a_record_batch_carries_its_records_as_arrays(shard_dir):
    records = list(iter_records(shard_dir))
    batch = pickle.loads(pickle.dumps(RecordBatch.from_records(records[:10])))
    assert len(batch) == 10 and all(_same_record(a, b) for a, b in zip(batch, records[:10], strict=True))
    assert _same_record(batch[-1], records[9]) and [r.id for r in batch[2:4]] == [r.id for r in records[2:4]]
    assert batch.units.dtype == np.int16 and batch.units.size == sum(r.n_frames for r in records[:10])
    third = slice(*batch.span_offsets["bpe"][2:4])
    assert batch.spans["bpe"]["id"][third].tolist() == [p.id for p in records[2].bpe]
    assert len(RecordBatch.from_records([])) == 0
    with pytest.raises(IndexError):
        batch[10]


def test_the_dataloader_yields_record_batches_from_its_workers(shard_dir):
    loader = make_loader(shard_dir, batch_size=5, shuffle=False, num_workers=2)
    batches = list(loader)
    assert all(type(b) is RecordBatch for b in batches)
    by_id = {r.id: r for r in iter_records(shard_dir)}
    received = [r for b in batches for r in b]
    assert sorted(r.id for r in received) == sorted(by_id)
    assert all(_same_record(r, by_id[r.id]) for r in received)
