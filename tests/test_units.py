"""Units stage: spectral encoders, k-means, codebook files, assignment, CLI.

Audio is made here with numpy (tones, chirps, noise) or comes from the espeak-ng demo
corpus; HuBERT checkpoints are covered in test_units_hubert.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from lst_data.config import RunConfig, load_config
from lst_data.core.config import RayConfig, updated
from lst_data.core.errors import ConfigError
from lst_data.core.runner import StageReport, read_manifest, run_stage
from lst_data.core.tables import MANIFEST_SCHEMA, UNITS_SCHEMA
from lst_data.format.frames import frames_for_duration
from lst_data.format.schema import validate
from lst_data.units.codebook import (
    CodebookError,
    load_codebook,
    read_sklearn_centers,
    save_codebook,
)
from lst_data.units.config import UnitsConfig
from lst_data.units.encoders import SpectralEncoder, build_encoder
from lst_data.units.kmeans import minibatch_kmeans, select_frames
from lst_data.units.nearest import NearestCentroid
from lst_data.units.runlength import expand, run_lengths
from lst_data.units.stage import CODEBOOK_FILE, UnitsStage, quantize_manifest, train_codebook

SR = 16000
LOCAL = RayConfig(runner="local", batch_size=4)


def _signal(seconds: float, seed: int) -> np.ndarray:
    """A chirp plus a tone burst plus noise: frames differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 900 * t / max(seconds, 1e-3)) * t)
    burst = 0.2 * np.sin(2 * np.pi * 1500 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    return (chirp + burst + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _manifest(tmp_path: Path, signals: dict[str, np.ndarray | None]) -> pa.Table:
    """MANIFEST_SCHEMA rows for wavs written here (None: the file is never written)."""
    rows = []
    for utt_id, samples in signals.items():
        path = tmp_path / f"{utt_id}.wav"
        if samples is not None:
            sf.write(path, samples, SR, subtype="FLOAT")
        n = 0 if samples is None else len(samples)
        rows.append(
            {
                "id": utt_id,
                "key": utt_id,
                "audio_path": str(path),
                "source_path": str(path),
                "source_sample_rate": SR,
                "sample_rate": SR,
                "num_samples": max(n, 1),
                "duration": max(n, 1) / SR,
                "speaker": "s",
                "text": "x",
                "normalized_text": "x",
                "flags": [],
            }
        )
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


@pytest.mark.parametrize("kind", ["mfcc", "logmel"])
def test_spectral_frame_count_is_floor_of_duration_times_rate(kind):
    for frame_rate in (25.0, 50.0):
        encoder = SpectralEncoder(UnitsConfig(encoder=kind, frame_rate=frame_rate, device="cpu"), kind)
        lengths = [0, 1, 639, 640, 641, 1279, 1280, 4000, 16000, 16001, 23999]
        feats = encoder.encode([torch.from_numpy(_signal(n / SR, n)) for n in lengths])
        for n, f in zip(lengths, feats, strict=True):
            expected = (n * int(frame_rate)) // SR
            assert f.shape == (expected, encoder.dim), (kind, frame_rate, n)
            assert encoder.num_frames(n) == expected == frames_for_duration(n / SR, frame_rate)


def test_spectral_dims_follow_config():
    assert build_encoder(UnitsConfig(encoder="mfcc", device="cpu")).dim == 13 * 3 * 4
    assert build_encoder(UnitsConfig(encoder="logmel", deltas=False, device="cpu")).dim == 40 * 4
    # 100 Hz analysis frames cannot be stacked into 30 Hz unit frames: refused on load
    with pytest.raises(ValueError, match="whole number"):
        UnitsConfig(encoder="mfcc", frame_rate=30.0)
    with pytest.raises(ConfigError, match="units.feature_rate / units.frame_rate"):
        load_config(overrides={"units": {"frame_rate": 30.0}})


def test_spectral_batch_equals_one_by_one():
    encoder = build_encoder(UnitsConfig(device="cpu"))
    waves = [torch.from_numpy(_signal(s, i)) for i, s in enumerate([0.5, 2.3, 1.1, 0.07])]
    batched = encoder.encode(waves)
    for wave, feats in zip(waves, batched, strict=True):
        alone = encoder.encode([wave])[0]
        torch.testing.assert_close(feats, alone, rtol=1e-5, atol=1e-5)


def test_spectral_features_are_normalized_per_utterance():
    encoder = build_encoder(UnitsConfig(device="cpu", frame_rate=100.0))  # no stacking: one 39-dim frame
    feats = encoder.encode([torch.from_numpy(_signal(1.5, 0))])[0]
    assert feats.shape[1] == 39
    torch.testing.assert_close(feats.mean(0), torch.zeros(39), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(0, unbiased=False), torch.ones(39), atol=1e-3, rtol=0)


def test_nearest_centroid_matches_brute_force():
    rng = np.random.default_rng(0)
    x, c = (
        rng.standard_normal((5000, 39)).astype(np.float32),
        rng.standard_normal((100, 39)).astype(np.float32),
    )
    brute = np.argmin(((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1), axis=1)
    fast = NearestCentroid(c)(torch.from_numpy(x), chunk=777).numpy()
    assert (fast == brute).mean() > 0.999  # float32 vs float64 may flip exact near-ties only


def test_minibatch_kmeans_recovers_separated_clusters():
    gen = torch.Generator().manual_seed(1)
    true_centres = torch.randn(8, 16, generator=gen) * 10
    labels = torch.randint(8, (20000,), generator=gen)
    points = true_centres[labels] + 0.3 * torch.randn(20000, 16, generator=gen)
    result = minibatch_kmeans(points, 8, steps=100, batch_size=1024, init_size=2000, seed=0)
    assigned = NearestCentroid(result.centroids)(points)
    # each true cluster lands in exactly one centroid and no centroid is shared
    pairs = {(int(t), int(a)) for t, a in zip(labels, assigned, strict=True)}
    assert len(pairs) == 8 and len({a for _, a in pairs}) == 8
    assert result.inertia < 16 * 0.3**2 * 1.1  # within 10% of the noise variance
    again = minibatch_kmeans(points, 8, steps=100, batch_size=1024, init_size=2000, seed=0)
    assert torch.equal(result.centroids, again.centroids)


def test_frame_selection_is_seeded_per_utterance_and_hits_the_rate():
    a = select_frames("utt-1", 10000, 0.1, seed=3)
    assert torch.equal(a, select_frames("utt-1", 10000, 0.1, seed=3))
    assert not torch.equal(a, select_frames("utt-2", 10000, 0.1, seed=3))
    assert 850 < len(a) < 1150
    assert torch.equal(select_frames("u", 7, 1.0, 0), torch.arange(7))


def test_codebook_npy_roundtrip_hash_and_sidecar(tmp_path):
    centroids = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    saved = save_codebook(centroids, tmp_path / "cb.npy", {"encoder": "mfcc"})
    assert saved.sha256 == hashlib.sha256((tmp_path / "cb.npy").read_bytes()).hexdigest()
    loaded = load_codebook(tmp_path / "cb.npy")
    np.testing.assert_array_equal(loaded.centroids, centroids)
    assert loaded.meta["sha256"] == saved.sha256 and loaded.meta["encoder"] == "mfcc"
    np.save(tmp_path / "cb.npy", centroids + 1)  # a changed codebook with a stale sidecar
    with pytest.raises(CodebookError, match="sidecar"):
        load_codebook(tmp_path / "cb.npy")


def test_codebook_from_spiritlm_style_torch_file(tmp_path):
    centers = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    torch.save({"cluster_centers": torch.from_numpy(centers), "n_clusters": 7}, tmp_path / "km.pt")
    np.testing.assert_array_equal(load_codebook(tmp_path / "km.pt").centroids, centers)


def test_codebook_from_real_sklearn_joblib_files(tmp_path):
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    joblib = pytest.importorskip("joblib")
    x = np.random.default_rng(0).standard_normal((600, 6))
    # fairseq's learn_kmeans.py settings; a RandomState object rides along in the state
    km = sklearn_cluster.MiniBatchKMeans(
        n_clusters=9, batch_size=100, n_init=3, max_no_improvement=10, random_state=np.random.RandomState(0)
    ).fit(x)
    joblib.dump(km, tmp_path / "km.bin")
    joblib.dump(km, tmp_path / "km_z.bin", compress=3)
    with open(tmp_path / "km.pkl", "wb") as handle:
        pickle.dump(sklearn_cluster.KMeans(n_clusters=4, n_init=1, random_state=0).fit(x), handle)
    for name, expected in (("km.bin", km.cluster_centers_), ("km_z.bin", km.cluster_centers_)):
        codebook = load_codebook(tmp_path / name)
        np.testing.assert_allclose(codebook.centroids, expected, rtol=1e-6)
        assert codebook.k == 9 and codebook.centroids.dtype == np.float32
    assert read_sklearn_centers(tmp_path / "km.pkl").shape == (4, 6)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_codebook_pickle_never_runs_planted_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as handle:
        pickle.dump({"cluster_centers_": _Exploit(marker)}, handle)
    with pytest.raises(CodebookError):
        load_codebook(tmp_path / "evil.bin")
    with open(tmp_path / "evil_array.bin", "wb") as handle:
        pickle.dump(np.array([_Exploit(marker)], dtype=object), handle)
    with pytest.raises(CodebookError):
        load_codebook(tmp_path / "evil_array.bin")
    assert not marker.exists()


def test_run_lengths_roundtrip():
    units = np.array([3, 3, 3, 7, 7, 1, 3, 3], dtype=np.int16)
    runs = run_lengths(units)
    assert runs.units.tolist() == [3, 7, 1, 3] and runs.durations.tolist() == [3, 2, 1, 2]
    np.testing.assert_array_equal(expand(runs), units)
    assert expand(run_lengths(np.zeros(0, dtype=np.int16))).size == 0


def assign_units(
    manifest: pa.Table, codebook_path: Path, out_dir: Path, config: UnitsConfig, ray_config: RayConfig
) -> StageReport:
    """The units stage with a given codebook (what `lst-data units --codebook` runs)."""
    stage = UnitsStage(config, 0, codebook=load_codebook(codebook_path))
    return run_stage(stage, manifest, out_dir, RunConfig(units=config, ray=ray_config), show_progress=False)


def _train_and_assign(tmp_path: Path, manifest: pa.Table, config: UnitsConfig, ray_config=LOCAL, seed=0):
    train = train_codebook(manifest, tmp_path / "cb.npy", config, seed, LOCAL, show_progress=False)
    report = assign_units(manifest, tmp_path / "cb.npy", tmp_path / "out", config, ray_config)
    return train, report


def test_assign_writes_units_table_and_rejects_bad_audio(tmp_path):
    signals = {f"u{i}": _signal(s, i) for i, s in enumerate([1.0, 2.5, 0.7, 1.9, 3.1])}
    signals["short"] = _signal(0.02, 9)  # 320 samples: less than one 40 ms frame
    signals["gone"] = None
    manifest = _manifest(tmp_path, signals)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not audio")
    broken = _manifest(tmp_path, {}).to_pylist() + [
        dict(manifest.to_pylist()[0], id="broken", audio_path=str(tmp_path / "broken.wav"))
    ]
    manifest = pa.concat_tables([manifest, pa.Table.from_pylist(broken, schema=MANIFEST_SCHEMA)])
    config = UnitsConfig(k=16, sample_frames=10_000, device="cpu")
    train, report = _train_and_assign(tmp_path, manifest, config)

    assert train.codebook.k == 16 and train.sample_frames == sum(
        int(len(s) * 25 // SR) for s in [signals[f"u{i}"] for i in range(5)]
    )
    table = report.read_output()
    assert table.schema.equals(UNITS_SCHEMA, check_metadata=False)
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert sorted(by_id) == [f"u{i}" for i in range(5)]
    for utt_id, row in by_id.items():
        validate(row, "units")
        assert row["n_frames"] == len(row["units"]) == frames_for_duration(len(signals[utt_id]) / SR, 25.0)
        assert row["encoder"] == "mfcc" and row["layer"] is None and row["k"] == 16
        assert row["codebook_hash"] == hashlib.sha256((tmp_path / "cb.npy").read_bytes()).hexdigest()
        assert max(row["units"]) < 16 and len(set(row["units"])) > 1
    assert table.schema.field("units").type == pa.list_(pa.int16())
    codes = {r.id: r.code for r in report.rejects}
    assert codes == {"short": "units_failed", "gone": "audio_missing", "broken": "audio_unreadable"}
    assert pq.read_table(tmp_path / "out" / "rejects.parquet").num_rows == 3
    provenance = json.loads((tmp_path / "out" / "units.json").read_text())
    assert provenance["codebook"]["sha256"] == train.codebook.sha256 and provenance["counts"]["output"] == 5
    assert provenance["figures"]["utterances"] == 5 and provenance["counts"]["rejects"] == 3


def test_units_are_deterministic_and_batch_independent(tmp_path):
    manifest = _manifest(tmp_path, {f"u{i}": _signal(0.5 + 0.37 * i, i) for i in range(6)})
    config = UnitsConfig(k=12, sample_frames=300, device="cpu")
    first = train_codebook(manifest, tmp_path / "a.npy", config, 5, LOCAL, show_progress=False)
    second = train_codebook(
        manifest, tmp_path / "b.npy", config, 5, RayConfig(runner="local", batch_size=1), show_progress=False
    )
    assert first.codebook.sha256 == second.codebook.sha256  # same sample + seed -> same bytes
    assert first.sample_frames < 400  # sampled, not the whole corpus
    assign_units(
        manifest,
        tmp_path / "a.npy",
        tmp_path / "x",
        config,
        RayConfig(runner="local", batch_size=6),
    )
    assign_units(
        manifest,
        tmp_path / "a.npy",
        tmp_path / "y",
        updated(config, {"batch_seconds": 0.1}),
        RayConfig(runner="local", batch_size=1),
    )
    x, y = (pq.read_table(tmp_path / d / "units.parquet") for d in ("x", "y"))
    assert x.equals(y)


def test_stage_without_codebook_trains_one_into_its_folder(tmp_path):
    manifest = _manifest(tmp_path, {f"u{i}": _signal(0.5 + 0.37 * i, i) for i in range(6)})
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    units_config = UnitsConfig(k=12, sample_frames=300, device="cpu")
    report = quantize_manifest(tmp_path, tmp_path / "run", RunConfig(seed=5, units=units_config, ray=LOCAL),
                               show_progress=False)
    trained = tmp_path / "run" / CODEBOOK_FILE
    # the same codebook as training alone, and the same units as assigning with it
    alone = train_codebook(manifest, tmp_path / "alone.npy", units_config, 5, LOCAL, show_progress=False)
    assert hashlib.sha256(trained.read_bytes()).hexdigest() == alone.codebook.sha256
    assigned = assign_units(manifest, tmp_path / "alone.npy", tmp_path / "assigned", units_config, LOCAL)
    assert report.read_output().equals(assigned.read_output())
    assert report.rows_out == 6 and report.rejects == [] and report.figures["utterances"] == 6
    provenance = json.loads((tmp_path / "run" / "units.json").read_text())
    assert provenance["codebook"]["path"] == str(trained.resolve())


def test_stage_refuses_codebook_of_another_dimension(tmp_path):
    codebook = save_codebook(np.zeros((4, 10), np.float32), tmp_path / "cb.npy", {})
    stage = UnitsStage(UnitsConfig(device="cpu"), codebook=codebook)
    manifest = _manifest(tmp_path, {"u0": _signal(0.5, 0)}).select(["id", "audio_path", "num_samples"])
    with pytest.raises(ConfigError, match="dim 10"):
        stage.prepare(manifest, tmp_path / "out", LOCAL)


@pytest.mark.ray
def test_assign_on_ray_matches_local(tmp_path, ray_local):
    manifest = _manifest(tmp_path, {f"u{i}": _signal(0.6 + 0.5 * i, i) for i in range(5)})
    config = UnitsConfig(k=8, device="cpu")
    train_codebook(manifest, tmp_path / "cb.npy", config, 0, LOCAL, show_progress=False)
    ray_report = assign_units(
        manifest,
        tmp_path / "cb.npy",
        tmp_path / "ray",
        config,
        RayConfig(runner="ray", batch_size=2, cpus_per_worker=0.5),
    )
    assign_units(manifest, tmp_path / "cb.npy", tmp_path / "local", config, LOCAL)
    by_ray = ray_report.read_output().sort_by("id")
    assert by_ray.equals(pq.read_table(tmp_path / "local" / "units.parquet").sort_by("id"))


def test_cli_train_and_assign_on_demo_corpus(tmp_path, demo_corpus):
    from click.testing import CliRunner

    from lst_data.cli import cli
    from lst_data.ingest.stage import ingest_corpus

    ingest_corpus(demo_corpus, tmp_path / "run", RunConfig(ray=LOCAL))
    runner = CliRunner()
    trained = runner.invoke(
        cli,
        [
            "kmeans",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "cb.npy"),
            "--k",
            "24",
            "--runner",
            "local",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "frames sampled" in trained.output
    assigned = runner.invoke(
        cli,
        [
            "units",
            str(tmp_path / "run"),
            "--codebook",
            str(tmp_path / "cb.npy"),
            "--out",
            str(tmp_path / "units"),
            "--runner",
            "local",
        ],
    )
    assert assigned.exit_code == 0, assigned.output
    manifest = read_manifest(tmp_path / "run")
    units = pq.read_table(tmp_path / "units" / "units.parquet")
    assert set(units["codebook_hash"].to_pylist()) == {load_codebook(tmp_path / "cb.npy").sha256}
    assert sorted(units["id"].to_pylist()) == sorted(manifest["id"].to_pylist())
    durations = dict(zip(manifest["id"].to_pylist(), manifest["duration"].to_pylist(), strict=True))
    for row in units.to_pylist():
        assert row["n_frames"] == frames_for_duration(durations[row["id"]], 25.0)


def test_same_word_gets_more_similar_units_than_different_words(tmp_path, demo_corpus):
    """On the espeak-ng demo corpus (exact word times), the units of one word spoken by one voice
    at two speaking rates (different audio) are closer than the units of two different words."""
    import itertools

    from lst_data.demo import load_ground_truth
    from lst_data.format.frames import word_frame_spans
    from lst_data.ingest.stage import ingest_corpus
    from lst_data.units.metrics import normalized_edit_distance

    manifest = ingest_corpus(demo_corpus, tmp_path / "run", RunConfig(ray=LOCAL)).read_output()
    config = UnitsConfig(k=50, device="cpu")
    train_codebook(manifest, tmp_path / "cb.npy", config, 0, LOCAL, show_progress=False)
    report = assign_units(manifest, tmp_path / "cb.npy", tmp_path / "out", config, LOCAL)
    truth = {u["id"]: u for u in load_ground_truth(demo_corpus)["utterances"]}
    words = []  # (word, voice, rate, units)
    for row in report.read_output().to_pylist():
        utt = truth[row["id"]]
        spans = word_frame_spans([(w["start"], w["end"]) for w in utt["words"]], 25.0, row["n_frames"])
        words += [
            (w["word"], utt["voice"], utt["rate"], row["units"][s.start : s.end + 1])
            for w, s in zip(utt["words"], spans, strict=True)
            if s.length >= 3
        ]
    same, different = [], []
    for a, b in itertools.combinations(words, 2):
        if a[1] == b[1] and a[2] != b[2]:
            (same if a[0] == b[0] else different).append(normalized_edit_distance(a[3], b[3]))
    assert len(same) >= 5 and len(different) >= 100
    assert np.mean(same) < 0.75 * np.mean(different), (np.mean(same), np.mean(different))
