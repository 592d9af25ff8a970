"""The training reader: exact epochs split by rank and worker, resampling, member checks, sidecar verification."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from lst_data.format.loader import make_loader, shard_pipeline
from lst_data.format.reader import (
    BadShardError,
    ShardSet,
    SkipAndCount,
    iter_records,
    iter_shard,
)
from lst_data.format.records import SampleRecord

N_SAMPLES = 37


@pytest.fixture(scope="module")
def shard_dir(make_synthetic_shards) -> Path:
    return make_synthetic_shards(N_SAMPLES, samples_per_shard=5, seed=11)


def all_ids(shard_dir: Path) -> list[str]:
    return [r.id for r in iter_records(shard_dir)]


def test_iter_records_and_sidecar_lengths(shard_dir):
    ids = all_ids(shard_dir)
    assert len(ids) == len(set(ids)) == N_SAMPLES
    shard_set = ShardSet.from_dir(shard_dir)
    assert shard_set.total_samples == N_SAMPLES and len(shard_set.urls) == 8
    assert shard_set.samples == (5,) * 7 + (2,)


def test_epoch_mode_yields_every_sample_once_in_list_batches(shard_dir):
    pipeline = shard_pipeline(shard_dir, batch_size=4, shuffle=False)
    batches = list(pipeline)
    assert all(isinstance(b, list) and all(isinstance(r, SampleRecord) for r in b) for b in batches)
    assert [r.id for b in batches for r in b] == all_ids(shard_dir)
    assert len(pipeline) == 10  # ceil(37 / 4), from the sidecars


def test_ranks_get_disjoint_shards_covering_the_epoch(shard_dir, monkeypatch):
    parts = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        pipeline = shard_pipeline(shard_dir, batch_size=3, shuffle=True, seed=7)
        pipeline.set_epoch(3)
        parts.append([r.id for b in pipeline for r in b])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(all_ids(shard_dir))


def test_shuffle_depends_on_seed_and_epoch_only(shard_dir):
    def order(seed: int, epoch: int) -> list[str]:
        pipeline = shard_pipeline(shard_dir, batch_size=8, shuffle=True, seed=seed, shuffle_buffer=16)
        pipeline.set_epoch(epoch)
        return [r.id for b in pipeline for r in b]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 1)) == sorted(all_ids(shard_dir))


def test_dataloader_workers_split_shards_and_batch_inside(shard_dir):
    loader = make_loader(shard_dir, batch_size=4, shuffle=False, num_workers=2)
    batches = list(loader)
    ids = [r.id for b in batches for r in b]
    assert sorted(ids) == sorted(all_ids(shard_dir))
    assert all(len(b) <= 4 for b in batches)


def test_resampled_mode_draws_a_fixed_number_of_batches(shard_dir):
    pipeline = shard_pipeline(
        shard_dir, batch_size=4, shuffle=True, mode="resampled", epoch_samples=40, seed=3
    )
    batches = list(pipeline)
    assert len(batches) == 10 and all(len(b) == 4 for b in batches)
    assert {r.id for b in batches for r in b} <= set(all_ids(shard_dir))


def _tar_with(tmp_path: Path, shard_dir: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A copy of the first shard with one hostile member appended."""
    source = sorted(shard_dir.glob("*.tar"))[0]
    target = tmp_path / "evil-000000.tar"
    with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        dst.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return target


@pytest.mark.parametrize(
    "name, kind",
    [("../escape.json", tarfile.REGTYPE), ("/abs/x.json", tarfile.REGTYPE), ("x.pyd", tarfile.REGTYPE),
     ("link.json", tarfile.SYMTYPE)],
)  # fmt: skip
def test_hostile_members_are_refused(tmp_path, shard_dir, name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    payload = json.dumps({"x": 1}).encode()
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    else:
        info.size = len(payload)
    evil = _tar_with(tmp_path, shard_dir, info, payload)
    with pytest.raises(BadShardError, match=r"evil-000000\.tar: .*(unsafe|unexpected tar member|link)"):
        list(iter_shard(evil, verify=False))  # refused by the member checks, not by the sidecar
    evil.with_suffix(".json").write_bytes((shard_dir / "train-000000.json").read_bytes())
    pipeline = shard_pipeline(tmp_path, split="evil", batch_size=2, shuffle=False, verify=False)
    with pytest.raises(BadShardError, match="evil-000000.tar"):
        list(pipeline)


def test_missing_sidecar_means_incomplete(tmp_path, shard_dir):
    source = sorted(shard_dir.glob("*.tar"))[0]
    (tmp_path / "train-000000.tar").write_bytes(source.read_bytes())
    with pytest.raises(BadShardError, match="train-000000.tar: no sidecar train-000000.json"):
        ShardSet.from_dir(tmp_path)
    with pytest.raises(BadShardError, match="no sidecar"):
        list(iter_records(tmp_path))


@pytest.fixture
def two_shards_one_flipped(tmp_path, shard_dir) -> Path:
    """Shards 0 and 1 of the module's set, with one byte of shard 1's first unit member flipped."""
    import shutil

    for name in ("train-000000", "train-000001"):
        for ext in ("tar", "json"):
            shutil.copy(shard_dir / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
    tar = tmp_path / "train-000001.tar"
    with tarfile.open(tar) as t:
        units = next(m for m in t.getmembers() if m.name.endswith(".units.npy"))
    raw = bytearray(tar.read_bytes())
    raw[units.offset_data + 200] ^= 0x01  # a unit id, still a valid int16 array
    tar.write_bytes(bytes(raw))
    return tmp_path


def test_verification_catches_a_flipped_unit_byte_and_names_the_shard(two_shards_one_flipped):
    with pytest.raises(BadShardError, match=r"train-000001\.tar: sha256 differs"):
        list(iter_records(two_shards_one_flipped))
    with pytest.raises(BadShardError, match=r"train-000001\.tar: sha256 differs"):
        list(shard_pipeline(two_shards_one_flipped, batch_size=2, shuffle=False))
    # opting out trusts the tar: all 10 samples come back, one of them with a changed unit
    assert len(list(iter_records(two_shards_one_flipped, verify=False))) == 10


def test_skip_and_count_policy_drops_the_bad_shard_and_counts_it(two_shards_one_flipped):
    policy = SkipAndCount()
    records = list(iter_records(two_shards_one_flipped, handler=policy))
    assert len(records) == 5 and policy.count == 1 and "train-000001.tar: sha256" in policy.problems[0]
    policy = SkipAndCount()
    batches = list(shard_pipeline(two_shards_one_flipped, batch_size=2, shuffle=False, handler=policy))
    assert sum(len(b) for b in batches) == 5 and policy.count == 1


def test_load_records_verifies_by_default(two_shards_one_flipped):
    from lst_model.data import load_records

    with pytest.raises(BadShardError, match="train-000001.tar"):
        load_records(two_shards_one_flipped)


def test_resampled_mode_hashes_each_tar_once_per_worker(shard_dir, monkeypatch):
    import lst_data.format.loader as pipeline_module

    verified = []
    real = pipeline_module.verify_shard
    monkeypatch.setattr(
        pipeline_module, "verify_shard", lambda path, limits: verified.append(path.name) or real(path, limits)
    )
    pipeline = shard_pipeline(shard_dir, batch_size=4, shuffle=True, mode="resampled", epoch_samples=200, seed=3)
    assert sum(len(b) for b in pipeline) == 200  # 40+ shard draws from 8 shards
    assert len(verified) == len(set(verified)) >= 4


@pytest.mark.parametrize("units", [[], [0], [1, -2, 32767], list(range(1000))])
def test_fast_units_path_matches_np_load(units):
    import numpy as np

    from lst_data.format.reader import load_units
    from lst_data.shards.members import units_npy_bytes

    array = np.asarray(units, dtype=np.int16)
    data = units_npy_bytes(array)
    assert np.array_equal(load_units(data), np.load(io.BytesIO(data), allow_pickle=False))
    assert load_units(data).dtype == np.int16 and load_units(data).flags.writeable


def test_units_of_another_dtype_still_load_but_pickles_never():
    import numpy as np

    from lst_data.format.reader import load_units

    buffer = io.BytesIO()
    np.save(buffer, np.arange(4, dtype=">i4"))
    assert load_units(buffer.getvalue()).tolist() == [0, 1, 2, 3]
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_units(buffer.getvalue())


def test_a_samples_silences_are_the_frames_no_word_claims(shard_dir):
    """Silence has one definition: the writer stores, and the reader returns, exactly the runs
    of frames no word claims, the runs patching derives from the word spans."""
    from lst_data.format.frames import FrameSpan, silence_frame_runs
    from lst_data.format.patching import patches

    records = list(iter_records(shard_dir, with_audio=False))
    assert sum(len(r.silences) for r in records) > len(records) / 2  # the synthetic samples have pauses
    for record in records:
        words = [FrameSpan(w.start_frame, w.end_frame) for w in record.words]
        stored = [FrameSpan(s.start_frame, s.end_frame) for s in record.silences]
        assert stored == silence_frame_runs(words, record.n_frames), record.id
        silence_patches = [p for p in patches(record, "word_sil_sep") if p.kind == "silence"]
        assert [(p.start, p.start + p.length - 1) for p in silence_patches] == [tuple(s) for s in stored], record.id
