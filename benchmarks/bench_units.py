"""Benchmark of the units stage (CPU; this machine has no GPU).

    .venv/bin/python benchmarks/bench_units.py [--quick]

Prints `name: figure unit (reference: figure unit, ratio X)` lines, the reference
measured in the same run:
- assignment throughput of `NearestCentroid` (torch, float32, one fused addmm + argmin)
  against plain numpy (broadcast squared distances), against the numpy path of fairseq's
  `ApplyKmeans` (dump_km_label.py) with the centroids as sklearn stores them (float64), and
  against the same matmul formula in numpy float32;
- encoder + assignment real-time factor for mfcc and for a HuBERT-base-sized random model
  with mHuBERT-25Hz's conv stack (written as a Hugging Face folder, loaded by our loader);
- k-means training time and peak memory (1M frames, 39-dim), against sklearn's
  MiniBatchKMeans with the same k, batch size and number of updates when installed; and
  peak memory of sampling + training on a corpus 4x larger with the same sample size;
- unit quality on the espeak-ng demo corpus: normalized edit distance between the units of
  the same word (same voice, other speaking rate, so other audio) vs different words.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("LST_DATA_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SR = 16000


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_assignment(quick: bool) -> None:
    """Three numpy references, weakest first: the plain broadcast distance (what the target is
    measured against), fairseq's ApplyKmeans numpy path, and the same matmul formula in float32
    (both sides are then one BLAS sgemm, so parity is the honest expectation)."""
    from lst_data.units.nearest import NearestCentroid

    rng = np.random.default_rng(0)
    for n, dim, k in [(50_000, 156, 500)] if quick else [(200_000, 156, 500), (100_000, 768, 500)]:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        centres64 = rng.standard_normal((k, dim))  # sklearn's cluster_centers_ dtype
        c32 = centres64.astype(np.float32)
        c_np, cnorm = centres64.T, (centres64.T**2).sum(0, keepdims=True)
        cnorm32 = cnorm.astype(np.float32)
        n_plain = n // 20  # the plain reference is slow: time it on a slice, compare frames per second

        def plain_numpy(x=x[:n_plain], c32=c32):
            return np.concatenate(
                [
                    ((x[i : i + 128, None, :] - c32[None]) ** 2).sum(-1).argmin(1)
                    for i in range(0, x.shape[0], 128)
                ]
            )

        def fairseq_numpy(x=x, c_np=c_np, cnorm=cnorm):
            dist = (x**2).sum(1, keepdims=True) - 2 * np.matmul(x, c_np) + cnorm
            return np.argmin(dist, axis=1)

        def numpy_f32(x=x, c32=c32, cnorm32=cnorm32):
            return np.argmin(cnorm32 - 2 * np.matmul(x, c32.T), axis=1)

        nearest = NearestCentroid(c32)
        xt = torch.from_numpy(x)
        ours = nearest(xt).numpy()
        agree = float((ours == fairseq_numpy()).mean())
        agree_plain = float((ours[:n_plain] == plain_numpy()).mean())
        rate_ours = n / _best_of(lambda nearest=nearest, xt=xt: nearest(xt), 3)
        rate_plain = n_plain / _best_of(plain_numpy, 1)
        rate_fairseq = n / _best_of(fairseq_numpy, 2)
        rate_f32 = n / _best_of(numpy_f32, 2)
        name = f"units_assign_throughput_d{dim}_k{k}"
        print(
            f"{name}: {rate_ours / 1e6:.3f} Mframes/s (reference: plain numpy broadcast distances "
            f"{rate_plain / 1e6:.3f} Mframes/s, ratio {rate_ours / rate_plain:.1f}x; same ids on {agree_plain:.3%})"
        )
        print(
            f"{name}_vs_fairseq_applykmeans: {rate_ours / 1e6:.3f} Mframes/s (reference: fairseq ApplyKmeans "
            f"numpy, float64 centroids {rate_fairseq / 1e6:.3f} Mframes/s, ratio {rate_ours / rate_fairseq:.1f}x; "
            f"same ids on {agree:.3%})"
        )
        print(
            f"{name}_vs_numpy_float32_matmul: {rate_ours / 1e6:.3f} Mframes/s (reference: numpy float32 matmul "
            f"formula {rate_f32 / 1e6:.3f} Mframes/s, ratio {rate_ours / rate_f32:.1f}x)"
        )


def _write_hubert_base_25hz(folder: Path) -> Path:
    """HuBERT-base-sized random model (95M parameters) with mHuBERT-25Hz's conv stack, as an HF folder."""
    from safetensors.torch import save_file
    from torchaudio.models import wav2vec2_model

    conv = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 3
    model = wav2vec2_model(
        "group_norm", conv, False, 768, 0.0, 128, 16, 12, 12, 0.0, 3072, 0.0, 0.0, False, 0.0, None
    )
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "hubert",
        "feat_extract_norm": "group",
        "conv_dim": [c for c, _, _ in conv],
        "conv_kernel": [k for _, k, _ in conv],
        "conv_stride": [s for _, _, s in conv],
        "conv_bias": False,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "do_stable_layer_norm": False,
        "feat_proj_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "hidden_dropout": 0.0,
        "layerdrop": 0.0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    state = {
        k.replace("encoder.feature_projection.", "feature_projection.").replace(
            "encoder.transformer.", "encoder."
        ): v.contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(folder / "model.safetensors"))
    return folder


def bench_rtf(quick: bool, tmp: Path) -> None:
    from lst_data.core.config import updated
    from lst_data.units.config import UnitsConfig
    from lst_data.units.encoders import build_encoder
    from lst_data.units.nearest import NearestCentroid

    rng = np.random.default_rng(0)
    for encoder_name in ("mfcc", "hubert"):
        seconds = (20 if encoder_name == "mfcc" else 8) * (1 if quick else 3)
        waves = [
            torch.from_numpy((0.1 * rng.standard_normal(SR * 4)).astype(np.float32))
            for _ in range(seconds // 4)
        ]
        config = UnitsConfig(encoder=encoder_name, device="cpu")
        if encoder_name == "hubert":
            config = updated(
                config, {"checkpoint": str(_write_hubert_base_25hz(tmp / "hubert_base_25hz")), "layer": 11}
            )
        load_started = time.perf_counter()
        encoder = build_encoder(config)
        load_seconds = time.perf_counter() - load_started
        nearest = NearestCentroid(rng.standard_normal((500, encoder.dim)).astype(np.float32))
        encoder.encode(waves[:1])  # warm-up

        def run(encoder=encoder, nearest=nearest, waves=waves):
            for i in range(0, len(waves), 4):
                for feats in encoder.encode(waves[i : i + 4]):
                    nearest(feats)

        elapsed = _best_of(run, 1 if encoder_name == "hubert" else 3)
        rtf = elapsed / seconds
        note = ", HuBERT-base size, random weights, layer 11" if encoder_name == "hubert" else ""
        print(
            f"units_rtf_{encoder_name}_cpu: {rtf:.4f} s/s audio (reference: real time 1.0 s/s, ratio "
            f"{1 / rtf:.0f}x faster than real time; {torch.get_num_threads()} CPU threads, no GPU here{note}; "
            f"model load {load_seconds:.1f} s)"
        )


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_memory() -> float:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux clear_refs); return the RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _kmeans_child(queue, n: int, dim: int, k: int, steps: int, use_sklearn: bool) -> None:
    torch.set_num_threads(1)
    from lst_data.units.kmeans import minibatch_kmeans, sample_inertia

    if use_sklearn:
        from sklearn.cluster import MiniBatchKMeans
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(64, dim, generator=gen) * 3
    sample = centres[torch.randint(64, (n,), generator=gen)] + torch.randn(n, dim, generator=gen)
    warm = sample[:5000].clone()  # page in the math libraries first: their code is not training memory
    if use_sklearn:
        MiniBatchKMeans(n_clusters=50, batch_size=1000, max_iter=1, n_init=1, random_state=0).fit(
            warm.numpy()
        )
    else:
        minibatch_kmeans(warm, 50, steps=2, batch_size=1000, init_size=1000, seed=0)
    before = _reset_peak_memory()  # the sample exists already: measure what training adds to it
    started = time.perf_counter()
    if use_sklearn:
        x = sample.numpy()
        km = MiniBatchKMeans(
            n_clusters=k,
            batch_size=10_000,
            max_iter=max(1, steps * 10_000 // n),
            n_init=1,
            init_size=20_000,
            reassignment_ratio=0.0,
            max_no_improvement=None,
            random_state=0,
            compute_labels=False,
        ).fit(x)
        inertia = float(-km.score(x[:200_000]) / min(n, 200_000))
    else:
        result = minibatch_kmeans(sample, k, steps=steps, batch_size=10_000, init_size=20_000, seed=0)
        inertia = sample_inertia(sample[:200_000], result.centroids)[0]
    seconds = time.perf_counter() - started
    queue.put(
        {
            "seconds": seconds,
            "peak_mb": _status_mb("VmHWM") - before,
            "inertia": inertia,
            "sample_mb": n * dim * 4 / 2**20,
        }
    )


def _in_child(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def bench_kmeans(quick: bool) -> None:
    n = 200_000 if quick else 1_000_000
    ours = _in_child(_kmeans_child, n, 39, 500, 300, False)
    try:
        import sklearn  # noqa: F401

        ref = _in_child(_kmeans_child, n, 39, 500, 300, True)
        ref_text = (
            f"sklearn MiniBatchKMeans {ref['seconds']:.1f} s, ratio {ref['seconds'] / ours['seconds']:.1f}x; "
            f"inertia ours {ours['inertia']:.2f} vs {ref['inertia']:.2f}"
        )
        mem_text = f"sklearn {ref['peak_mb']:.0f} MB, ratio {ref['peak_mb'] / max(ours['peak_mb'], 1):.2f}"
    except ImportError:
        ref_text, mem_text = "sklearn not installed: none", "none"
    print(
        f"units_kmeans_train_{n // 1000}k_frames_d39_k500: {ours['seconds']:.1f} s, 300 updates of 10k frames, "
        f"1 thread ({ref_text})"
    )
    print(
        f"units_kmeans_peak_memory_{n // 1000}k_frames_d39: {ours['peak_mb']:.0f} MB above the sample (sample "
        f"itself {ours['sample_mb']:.0f} MB; {mem_text})"
    )


def _write_noise_corpus(folder: Path, minutes: float) -> Path:
    """Manifest of numpy 'speech' (noise bursts and tones), `minutes` long in 10 s files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from lst_data.core.tables import MANIFEST_SCHEMA

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(int(minutes * 6)):
        t = np.arange(SR * 10) / SR
        wave = (
            0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            + 0.02 * rng.standard_normal(t.size)
        ).astype(np.float32)
        path = folder / f"u{i:05d}.wav"
        sf.write(path, wave, SR, subtype="PCM_16")
        rows.append(
            {
                "id": f"u{i:05d}",
                "key": f"u{i:05d}",
                "audio_path": str(path),
                "source_path": str(path),
                "source_sample_rate": SR,
                "sample_rate": SR,
                "num_samples": wave.size,
                "duration": 10.0,
                "speaker": "s",
                "text": "x",
                "normalized_text": "x",
                "flags": [],
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), folder / "manifest.parquet")
    return folder


def _train_child(queue, corpus: str, sample_frames: int) -> None:
    torch.set_num_threads(2)
    from lst_data.core.config import RayConfig
    from lst_data.core.runner import read_manifest
    from lst_data.units.config import UnitsConfig
    from lst_data.units.stage import train_codebook

    manifest = read_manifest(corpus)
    before = _reset_peak_memory()
    started = time.perf_counter()
    report = train_codebook(
        manifest,
        Path(corpus) / "cb.npy",
        UnitsConfig(k=100, sample_frames=sample_frames, kmeans_steps=50, device="cpu"),
        0,
        RayConfig(runner="local"),
        show_progress=False,
    )
    queue.put(
        {
            "seconds": time.perf_counter() - started,
            "corpus_frames": report.corpus_frames,
            "sample_frames": report.sample_frames,
            "peak_mb": _status_mb("VmHWM") - before,
        }
    )


def bench_memory_vs_corpus(quick: bool, tmp: Path) -> None:
    """Sampling + k-means on a corpus and on one `factor` times larger, same sample size."""
    minutes, factor = (8, 2) if quick else (12, 4)
    small = _in_child(_train_child, str(_write_noise_corpus(tmp / "small", minutes)), 5000)
    large = _in_child(_train_child, str(_write_noise_corpus(tmp / "large", factor * minutes)), 5000)
    print(
        f"units_train_peak_memory_corpus_x{factor}: {large['peak_mb']:.0f} MB for {large['corpus_frames']} corpus "
        f"frames (reference: {small['peak_mb']:.0f} MB for {small['corpus_frames']}, ratio "
        f"{large['peak_mb'] / max(small['peak_mb'], 1):.2f}; sample {large['sample_frames']} vs "
        f"{small['sample_frames']} frames; {large['seconds']:.1f} s vs {small['seconds']:.1f} s)"
    )


def bench_quality(quick: bool, tmp: Path) -> None:
    from lst_data.config import RunConfig
    from lst_data.core.config import RayConfig
    from lst_data.demo import synthesize_demo_corpus
    from lst_data.format.frames import word_frame_spans
    from lst_data.ingest.stage import ingest_corpus
    from lst_data.units.config import UnitsConfig
    from lst_data.units.metrics import normalized_edit_distance
    from lst_data.units.stage import quantize_manifest

    corpus = synthesize_demo_corpus(tmp / "demo", n_utterances=24 if quick else 48)
    local = RayConfig(runner="local")
    ingest_corpus(corpus, tmp / "run", RunConfig(ray=local))
    truth = {u["id"]: u for u in json.loads((corpus / "ground_truth.json").read_text())["utterances"]}
    results = {}
    for k in (50, 100):
        # trains the codebook (seed 0) on the manifest into units{k}/, then assigns units
        config = RunConfig(units=UnitsConfig(k=k, device="cpu"), ray=local)
        report = quantize_manifest(tmp / "run", tmp / f"units{k}", config, show_progress=False)
        occurrences = []  # (word, voice, rate, units)
        for row in report.read_output().to_pylist():
            utt = truth[row["id"]]
            spans = word_frame_spans([(w["start"], w["end"]) for w in utt["words"]], 25.0, row["n_frames"])
            for word, span in zip(utt["words"], spans, strict=True):
                if span.length >= 3:
                    occurrences.append(
                        (word["word"], utt["voice"], utt["rate"], row["units"][span.start : span.end + 1])
                    )
        same, different = [], []
        for a, b in itertools.combinations(occurrences, 2):
            if a[1] != b[1]:
                continue  # compare within one voice
            if a[0] == b[0] and a[2] != b[2]:
                same.append(normalized_edit_distance(a[3], b[3]))
            elif a[0] != b[0] and a[2] != b[2]:
                different.append(normalized_edit_distance(a[3], b[3]))
        results[k] = (float(np.mean(same)), len(same), float(np.mean(different)), len(different))
    for k, (same, n_same, diff, n_diff) in results.items():
        print(
            f"units_quality_same_word_distance_mfcc_k{k}: {same:.3f} normalized edit distance over {n_same} pairs "
            f"(reference: different words {diff:.3f} over {n_diff} pairs, ratio {same / diff:.2f}; same voice, "
            f"other speaking rate, espeak-ng demo corpus)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--only", choices=["assign", "rtf", "kmeans", "memory", "quality"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"# CPU only (torch.cuda.is_available() = {torch.cuda.is_available()}), {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        steps = {
            "assign": lambda: bench_assignment(args.quick),
            "rtf": lambda: bench_rtf(args.quick, tmp),
            "kmeans": lambda: bench_kmeans(args.quick),
            "memory": lambda: bench_memory_vs_corpus(args.quick, tmp),
            "quality": lambda: bench_quality(args.quick, tmp),
        }
        for name, step in steps.items():
            if args.only in (None, name):
                step()


if __name__ == "__main__":
    main()
