"""Nearest-centroid assignment: the quantizer that turns feature frames into unit ids."""

from __future__ import annotations

import numpy as np
import torch


class NearestCentroid:
    """argmin_j ||x - c_j||^2 as argmin_j (||c_j||^2 - 2 x . c_j): one matrix product.

    ||x||^2 is the same for every j and is left out. Works on whatever device the
    centroids were moved to; features are moved there if they are elsewhere.
    """

    def __init__(self, centroids: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32, device=device)
        self.half_norms = 0.5 * (self.centroids * self.centroids).sum(dim=1)

    @torch.inference_mode()
    def __call__(self, features: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """int64 [n] nearest-centroid ids of float [n, dim] features.

        Rows go through in chunks so the [chunk, k] score block stays small (8 MB for k = 500
        on CPU); GPUs get larger chunks to amortise kernel launches.
        """
        features = features.to(self.centroids.device, torch.float32)
        chunk = chunk or (65536 if self.centroids.device.type == "cuda" else 4096)
        out = torch.empty(features.shape[0], dtype=torch.long, device=self.centroids.device)
        for start in range(0, features.shape[0], chunk):
            block = features[start : start + chunk]
            scores = torch.addmm(self.half_norms, block, self.centroids.T, beta=1.0, alpha=-1.0)
            out[start : start + chunk] = scores.argmin(dim=1)
        return out
