"""Fréchet distance between two Gaussians (FID when the statistics are Inception features).

d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁Σ₂)^½). The last trace is computed without a general matrix square root:
with S = Σ₂^½ (symmetric, from an eigen-decomposition), Σ₁Σ₂ is similar to S·Σ₁·S, which is symmetric positive
semi-definite, so Tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(S·Σ₁·S). This stays real and stable for singular or nearly singular
covariances (fewer samples than feature dimensions), where an iterative ``sqrtm`` of the non-symmetric product can
return complex parts or lose accuracy. Round-off can make tiny eigenvalues negative; they are clipped to 0.
"""

from __future__ import annotations

import numpy as np
import torch


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix [D, D] (negative round-off clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2): means [D], symmetric PSD covariances [D, D]."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root2 = _psd_sqrt((sigma2 + sigma2.T) / 2)
    middle = root2 @ sigma1 @ root2
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def mean_cov(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and population covariance [D, D] (divided by N, as the reference FID) of features [N, D], float64."""
    x = features.detach().to("cpu", torch.float64).numpy()
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / len(x)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between real features [N, D] and generated features [M, D]."""
    return frechet_distance(*mean_cov(fake), *mean_cov(real))
