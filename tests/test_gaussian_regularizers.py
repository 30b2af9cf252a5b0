"""Gaussian regularisers: closed forms, brute-force loops and hand-built scenes (a planar UV patch, a hole)."""

from __future__ import annotations

import math

import pytest
import torch

from dnnlib import UserError
from training.cameras import FFHQ_FOCAL, lookat_labels
from training.gaussian_regularizers import (
    STAGE2_REGULARIZERS,
    GaussianRegularizerConfig,
    gaussian_regularizers,
    opacity_beta,
    raw_norm,
    render_uv,
    uv_total_variation,
)
from training.networks.gaussian_head import RawAttributes
from training.rendering.gaussians import Gaussians

RES = 16
PIXEL = 2.7 / (FFHQ_FOCAL * RES)  # world size of one pixel on the plane z = 0 seen from (0, 0, 2.7)


def test_raw_norm_matches_a_loop_and_has_zero_gradient_at_zero():
    raw = torch.randn(3, 7, 4, dtype=torch.float64)
    expected = torch.tensor([sum(math.sqrt(sum(x * x for x in g)) for g in head.tolist()) / 7 for head in raw],
                            dtype=torch.float64)
    torch.testing.assert_close(raw_norm(raw), expected, rtol=1e-12, atol=0)
    zero = torch.zeros(2, 5, 3, requires_grad=True)
    raw_norm(zero).sum().backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))  # not NaN: raw positions start at exactly 0


def test_opacity_beta_closed_form_and_minima():
    alpha = torch.rand(2, 50, dtype=torch.float64)
    expected = [sum(math.log(0.1 + a) + math.log(1.1 - a) - math.log(0.1) - math.log(1.1) for a in row) / 50
                for row in alpha.tolist()]
    torch.testing.assert_close(opacity_beta(alpha), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    ends = opacity_beta(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    assert ends.abs().max() < 1e-15  # exact minima at fully transparent / fully opaque
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)[:, None]
    values = opacity_beta(grid)
    assert values.min() >= -1e-15 and values.argmax() == 500  # non-negative, peak at 0.5
    torch.testing.assert_close(values.max(), torch.tensor(math.log(0.36 / 0.11), dtype=torch.float64))
    torch.testing.assert_close(values, values.flip(0), rtol=0, atol=1e-14)  # symmetric about 0.5


def test_uv_total_variation_matches_a_pixel_loop():
    gen = torch.Generator().manual_seed(1)
    alpha = torch.rand(2, 1, 6, 7, generator=gen, dtype=torch.float64)
    uv = torch.rand(2, 2, 6, 7, generator=gen, dtype=torch.float64) * alpha
    threshold = 0.3
    expected = []
    for b in range(2):
        total = 0.0
        for dy, dx in ((1, 0), (0, 1)):
            diffs = [abs(uv[b, ch, i + dy, j + dx] / alpha[b, 0, i + dy, j + dx] - uv[b, ch, i, j] / alpha[b, 0, i, j])
                     for i in range(6 - dy) for j in range(7 - dx)
                     if alpha[b, 0, i, j] > threshold and alpha[b, 0, i + dy, j + dx] > threshold
                     for ch in range(2)]
            pairs = len(diffs) // 2
            total += float(sum(diffs)) / max(pairs, 1)
        expected.append(total)
    torch.testing.assert_close(uv_total_variation(uv, alpha, threshold), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_uv_total_variation_background_only_is_zero_with_finite_gradient():
    uv = torch.rand(1, 2, 5, 5, requires_grad=True)
    alpha = torch.full((1, 1, 5, 5), 1e-6, requires_grad=True)
    value = uv_total_variation(uv, alpha, 0.1)
    value.sum().backward()
    assert value.item() == 0.0
    assert torch.isfinite(uv.grad).all() and torch.isfinite(alpha.grad).all()


def _plane(half: float, z: float, hole: float = 0.0) -> torch.Tensor:
    """Means [N, 3] of a square grid on the plane z (spacing PIXEL / 2), minus the square |x|, |y| < hole."""
    n = round(half / (PIXEL / 2))
    xs = torch.arange(-n, n + 1, dtype=torch.float64) * (PIXEL / 2)
    y, x = torch.meshgrid(xs, xs, indexing="ij")
    keep = ~((x.abs() < hole) & (y.abs() < hole))
    return torch.stack([x[keep], y[keep], torch.full_like(x[keep], z)], dim=-1)


def _uv_tv_of(means: torch.Tensor, uv: torch.Tensor) -> float:
    """UV TV of flat isotropic Gaussians (σ = spacing, opacity 0.9) seen head-on from (0, 0, 2.7) at RES²."""
    n = len(means)
    scene = Gaussians(
        means=means[None].float(),
        scales=torch.tensor([PIXEL / 2, PIXEL / 2, 1e-6]).expand(1, n, 3),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, n, 4),
        colors=torch.zeros(1, n, 1),
        opacities=torch.full((1, n), 0.9),
    )
    camera = lookat_labels(math.pi / 2, math.pi / 2, pivot=(0.0, 0.0, 0.0))
    out = render_uv(scene, uv.float(), camera, RES, backend="torch")
    return uv_total_variation(out.features, out.alpha, 0.1).item()


def test_uv_tv_of_a_smooth_plane_seen_head_on():
    # The plane fills the view. UV is linear (slope 1 per world unit) and the Gaussian grid repeats every pixel
    # (spacing = half a pixel), so neighbouring pixels differ by exactly one pixel of UV: |Δu| = PIXEL across columns,
    # |Δv| = PIXEL across rows, hence TV = 2 · PIXEL. A constant UV gives exactly 0.
    means = _plane(0.4, 0.0)
    assert math.isclose(_uv_tv_of(means, 0.5 + means[:, :2]), 2 * PIXEL, rel_tol=1e-4)
    assert _uv_tv_of(means, torch.full((len(means), 2), 0.3)) < 1e-6


def test_uv_tv_rises_where_a_back_surface_shows_through_a_hole():
    # A front plane with constant UV (0.5, 0.5) and a square hole |x|, |y| < 0.17; behind it (z = -0.3) a smaller
    # plane with UV (1, 0). A Gaussian (σ = PIXEL / 2, opacity 0.9, plus the 0.3 px² low-pass) reaches at most
    # REACH = 0.1 world units (≈ 2.5 px) at the 1/255 cut-off, so pixel centres with |x|, |y| < 0.17 - REACH see only
    # the back plane (UV exactly (1, 0)), the outermost columns (|x| = 0.297) only the front plane (the back plane
    # projects to |x| <= 0.9 · 0.21 = 0.189, + REACH < 0.297), and every pixel is foreground.
    front, back = _plane(0.4, 0.0, hole=0.17), _plane(0.21, -0.3)
    uv_front, uv_back = torch.full((len(front), 2), 0.5), torch.tensor([1.0, 0.0]).expand(len(back), 2)
    assert _uv_tv_of(front, uv_front) < 1e-6  # constant UV; the hole itself is background
    with_back = _uv_tv_of(torch.cat([front, back]), torch.cat([uv_front, uv_back]))
    # Each row (column) through the pure-back square goes front → back → front: by the triangle inequality its
    # |Δu| + |Δv| sum is at least 2 · (|1 - 0.5| + |0 - 0.5|) = 2. Pairs per direction: at most RES · (RES - 1).
    centres = (torch.arange(RES) + 0.5 - RES / 2) * PIXEL
    lines = int((centres.abs() < 0.17 - 0.1).sum())
    assert lines == 4
    assert with_back >= 2 * (lines * 2.0) / (RES * (RES - 1))


def test_weighted_terms_and_missing_uv_rendering():
    raw = RawAttributes(position=torch.randn(2, 5, 3), scale=torch.randn(2, 5, 3), rotation=torch.zeros(2, 5, 3),
                        color=torch.zeros(2, 5, 12), opacity=torch.zeros(2, 5))
    opacities = torch.rand(2, 5)
    gaussians = Gaussians(torch.zeros(2, 5, 3), torch.ones(2, 5, 3), torch.ones(2, 5, 4), torch.zeros(2, 5, 3),
                          opacities)
    alpha = torch.rand(2, 1, 4, 4)
    output = dict(raw=raw, gaussians=gaussians, image_uv=torch.rand(2, 2, 4, 4) * alpha, image_mask=alpha)
    terms = gaussian_regularizers(output, STAGE2_REGULARIZERS)
    torch.testing.assert_close(terms["position"], 0.1 * raw_norm(raw.position))
    torch.testing.assert_close(terms["scale"], 0.05 * raw_norm(raw.scale))
    torch.testing.assert_close(terms["opacity_beta"], 1.0 * opacity_beta(opacities))
    torch.testing.assert_close(terms["uv_tv"], 100.0 * uv_total_variation(output["image_uv"], alpha, 0.1))
    assert set(gaussian_regularizers(output, GaussianRegularizerConfig())) == {"position", "scale"}
    del output["image_uv"]
    with pytest.raises(UserError, match="render_uv=True"):
        gaussian_regularizers(output, STAGE2_REGULARIZERS)
    with pytest.raises(UserError, match="uv_tv_alpha_threshold"):
        GaussianRegularizerConfig(uv_tv_alpha_threshold=1.5)
