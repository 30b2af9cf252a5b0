"""Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / D + 1)³, averaged
over random subsets of real and generated features (Bińkowski et al. 2018, as in StyleGAN2-ADA's kid50k)."""

from __future__ import annotations

import numpy as np
import torch


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x_i, y_j) = (x_i·y_j / D + 1)³ for x [N, D], y [M, D] → [N, M]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² estimate of samples x [N, D] and y [M, D] (N, M ≥ 2): within-set means skip i = j."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    n, m = len(x), len(y)
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, num_subsets: int = 100, max_subset_size: int = 1000,
                      seed: int = 0) -> float:
    """Mean unbiased MMD² over ``num_subsets`` pairs of equal-size subsets (size min(N, M, max_subset_size), drawn
    without replacement) of real features [N, D] and generated features [M, D]."""
    size = min(len(real), len(fake), max_subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated samples, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[torch.from_numpy(rng.choice(len(fake), size, replace=False))]
        y = real[torch.from_numpy(rng.choice(len(real), size, replace=False))]
        total += unbiased_mmd2(x, y)
    return total / num_subsets
