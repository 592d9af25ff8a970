"""Seeded mini-batch k-means in torch (k-means++ start), and the corpus frame sample it learns from.

Frame sampling is decided per utterance from (seed, utterance id, frame count) alone, so
the sample does not depend on how utterances are split across workers, and the driver
knows how many frames each utterance contributes before any audio is decoded (utterances
with none are never encoded). Each frame is kept with probability p = sample_frames /
corpus frames; the sample size is sample_frames on average (binomial, +- sqrt).

Training follows sklearn's MiniBatchKMeans update (per-centroid learning rate 1 / count,
fairseq's `learn_kmeans.py` uses it with reassignment off): centroids start from k-means++
on a seeded subset, then each step moves the centroids a batch chose towards that
batch's mean. Everything runs on the sample's device (GPU when present).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from lst_data.units.nearest import NearestCentroid


def utterance_generator(seed: int, utterance_id: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\x00{utterance_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def select_frames(utterance_id: str, n_frames: int, probability: float, seed: int) -> torch.Tensor:
    """Indices (int64, ascending) of this utterance's frames in the k-means sample."""
    if n_frames <= 0 or probability <= 0:
        return torch.zeros(0, dtype=torch.long)
    if probability >= 1:
        return torch.arange(n_frames)
    keep = torch.rand(n_frames, generator=utterance_generator(seed, utterance_id)) < probability
    return torch.nonzero(keep).flatten()


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # float32 [k, dim]
    inertia: float  # mean squared distance of the sample's frames to their centroid
    used_clusters: int  # centroids that own at least one sample frame
    seconds: float


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ (D^2 sampling): each next centroid is a point drawn with probability ∝ its
    squared distance to the nearest centroid chosen so far.

    Distances use ||x||^2 - 2 x.p + ||p||^2 (one matrix-vector product per centroid, clamped
    at 0 against rounding): k sequential steps, so the cost per step is what matters.
    """
    n = points.shape[0]
    squares = (points * points).sum(dim=1)

    def distances_to(index: int) -> torch.Tensor:
        return torch.addmv(squares + squares[index], points, points[index], alpha=-2.0).clamp_(min=0.0)

    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = distances_to(chosen[0])
    for _ in range(1, k):
        cumulative = torch.cumsum(closest, dim=0, dtype=torch.float64)
        total = float(cumulative[-1])
        if total <= 0:  # fewer distinct points than k: repeat points rather than fail
            index = int(torch.randint(n, (1,), generator=generator))
        else:
            target = torch.rand(1, generator=generator, dtype=torch.float64).to(points.device) * total
            index = min(int(torch.searchsorted(cumulative, target)), n - 1)
        chosen.append(index)
        torch.minimum(closest, distances_to(index), out=closest)
    return points[torch.tensor(chosen, device=points.device)].clone()


def minibatch_kmeans(
    sample: torch.Tensor, k: int, *, steps: int, batch_size: int, init_size: int, seed: int
) -> KMeansResult:
    """Train k centroids on `sample` [n, dim] (on its device); deterministic for a seed and device."""
    started = time.perf_counter()
    n = sample.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k = {k} frames; the sample has {n}")
    generator = torch.Generator().manual_seed(seed)
    init_rows = torch.randperm(n, generator=generator)[: max(k, min(init_size, n))].to(sample.device)
    centroids = kmeans_plus_plus(sample[init_rows].float(), k, generator)
    counts = torch.zeros(k, dtype=torch.float64, device=sample.device)
    for _ in range(steps):
        rows = torch.randint(n, (min(batch_size, n),), generator=generator).to(sample.device)
        batch = sample[rows].float()
        assigned = NearestCentroid(centroids, sample.device)(batch)
        batch_counts = torch.bincount(assigned, minlength=k).double()
        sums = _cluster_sums(assigned, batch, k)
        counts += batch_counts
        hit = batch_counts > 0
        # c <- c + (batch mean - c) * batch_count / total_count  (sklearn's per-centre rate)
        rate = (batch_counts[hit] / counts[hit]).float()[:, None]
        means = sums[hit] / batch_counts[hit].float()[:, None]
        centroids[hit] += rate * (means - centroids[hit])
    inertia, used = sample_inertia(sample, centroids)
    return KMeansResult(centroids, inertia, used, time.perf_counter() - started)


def _cluster_sums(assigned: torch.Tensor, batch: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster sums of the batch, in a fixed order on every device (CUDA's index_add_ uses
    atomics, whose float sums vary run to run; a one-hot product does not)."""
    if batch.device.type == "cpu":
        return torch.zeros(k, batch.shape[1], dtype=batch.dtype).index_add_(0, assigned, batch)
    one_hot = torch.nn.functional.one_hot(assigned, k).to(batch.dtype)
    return one_hot.T @ batch


@torch.inference_mode()
def sample_inertia(sample: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> tuple[float, int]:
    """Mean squared distance to the nearest centroid, and how many centroids are used."""
    nearest = NearestCentroid(centroids, centroids.device)
    total, used = 0.0, torch.zeros(centroids.shape[0], dtype=torch.bool, device=centroids.device)
    for start in range(0, sample.shape[0], chunk):
        block = sample[start : start + chunk].float().to(centroids.device)
        ids = nearest(block)
        total += float(((block - centroids[ids]) ** 2).sum())
        used[ids] = True
    return total / max(1, sample.shape[0]), int(used.sum())
