"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour balls in feature space.

Each sample's ball has the radius of its k-th nearest neighbour within its own set (itself excluded). Precision is the
fraction of generated samples inside at least one real ball; recall the fraction of real samples inside at least one
generated ball. Distances are Euclidean, computed in float32 blocks of ``block`` rows (memory O(block · N): 400 MB
for 200k reals).
"""

from __future__ import annotations

import torch


def knn_radii(features: torch.Tensor, k: int, block: int = 512) -> torch.Tensor:
    """Distance [N] from each row of features [N, D] to its k-th nearest other row (k < N)."""
    if not 0 < k < len(features):
        raise ValueError(f"k={k} needs 0 < k < number of samples ({len(features)})")
    radii = []
    for start in range(0, len(features), block):
        dist = torch.cdist(features[start:start + block], features)  # [b, N], includes the 0 to itself
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 512) -> float:
    """Fraction of queries [Q, D] within distance radii [C] of at least one of centres [C, D]."""
    inside = []
    for start in range(0, len(queries), block):
        dist = torch.cdist(queries[start:start + block], centres)  # [b, C]
        inside.append((dist <= radii[None]).any(dim=1))
    return torch.cat(inside).to(torch.float64).mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features fake [M, D] against real features real [N, D]."""
    real, fake = real.to(torch.float32), fake.to(torch.float32)
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall
