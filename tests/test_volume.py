"""Volume rendering: rays against a per-pixel loop, marching against closed forms and a brute-force product,
importance sampling against the pdf it should follow."""

from __future__ import annotations

import math

import pytest
import torch

from dnnlib import UserError
from training.rendering.volume import (
    IMPORTANCE_FLOOR,
    RenderOptions,
    camera_rays,
    composite,
    crop_density,
    importance_depths,
    render_volume,
    smooth_weights,
    stratified_depths,
)

FOCAL = 4.2647


def _label(origin, target, focal=FOCAL, skew=0.0, dtype=torch.float64) -> torch.Tensor:
    """A look-at camera label built by hand: z toward the target, x = z × world-up (right), y = z × x (down)."""
    o, t = torch.tensor(origin, dtype=dtype), torch.tensor(target, dtype=dtype)
    z = (t - o) / torch.linalg.norm(t - o)
    x = torch.linalg.cross(z, torch.tensor([0.0, 1.0, 0.0], dtype=dtype))
    x = x / torch.linalg.norm(x)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, o
    k = torch.tensor([[focal, skew, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return torch.cat([c2w.reshape(16), k.reshape(9)])[None]


def _orbit_origin(yaw: float, pitch: float, radius: float, pivot) -> tuple[float, float, float]:
    return (pivot[0] + radius * math.cos(pitch) * math.sin(yaw), pivot[1] + radius * math.sin(pitch),
            pivot[2] + radius * math.cos(pitch) * math.cos(yaw))


FRONTAL = _label((0.0, 0.0, 2.7), (0.0, 0.0, 0.0))


def _shell_field(centre: torch.Tensor, a: float, b: float, sigma: float, shift: float = 1.0):
    """Density exactly ``sigma`` at distances [a, b] from ``centre`` [3], none elsewhere; features = distance."""
    raw_inside = shift + math.log(math.expm1(sigma))  # softplus(raw − shift) = sigma

    def decode(points, dirs):
        dist = torch.linalg.norm(points - centre, dim=-1, keepdim=True)
        raw = torch.where((dist >= a) & (dist <= b), raw_inside, -1e3).to(points.dtype)
        return raw, dist

    return decode


def test_rays_match_a_per_pixel_loop():
    label = torch.cat([_label(_orbit_origin(0.6, -0.3, 2.7, (0, 0, 0.2)), (0.0, 0.0, 0.2), focal=3.1, skew=0.2),
                       FRONTAL])
    res = 4
    origins, dirs = camera_rays(label, res)
    assert origins.shape == dirs.shape == (2, res * res, 3)
    for b in range(2):
        c2w, k = label[b, :16].reshape(4, 4), label[b, 16:].reshape(3, 3)
        for i in range(res):
            for j in range(res):
                pix = torch.tensor([(j + 0.5) / res, (i + 0.5) / res, 1.0], dtype=torch.float64)
                d = c2w[:3, :3] @ torch.linalg.solve(k, pix)
                torch.testing.assert_close(dirs[b, i * res + j], d / torch.linalg.norm(d), rtol=0, atol=1e-12)
                torch.testing.assert_close(origins[b, i * res + j], c2w[:3, 3], rtol=0, atol=0)


@pytest.mark.parametrize("yaw,pitch,pivot", [(0.0, 0.0, (0.0, 0.0, 0.0)), (0.9, 0.25, (0.0, 0.0, 0.2))])
def test_principal_ray_passes_through_pivot(yaw, pitch, pivot):
    label = _label(_orbit_origin(yaw, pitch, 2.7, pivot), pivot)
    origins, dirs = camera_rays(label, 5)
    o, d = origins[0, 12], dirs[0, 12]  # centre pixel of a 5×5 image
    to_pivot = torch.tensor(pivot, dtype=torch.float64) - o
    miss = torch.linalg.norm(to_pivot - (to_pivot @ d) * d)
    assert miss < 1e-12 and abs((to_pivot @ d).item() - 2.7) < 1e-12


def test_frontal_image_orientation():
    """Row 0 is the top of the image (world +y), column 0 its left (world −x for a camera looking down −z)."""
    _, dirs = camera_rays(FRONTAL, 5)
    img = dirs[0].reshape(5, 5, 3)
    assert img[0, 2, 1] > 0 > img[4, 2, 1] and img[2, 0, 0] < 0 < img[2, 4, 0]


def test_composite_matches_brute_force_loop():
    s, c = 7, 3
    depths = torch.sort(torch.rand(4, s, dtype=torch.float64) + 2.0, dim=-1).values
    sigma_raw = torch.randn(4, s, 1, dtype=torch.float64) * 2
    feats = torch.randn(4, s, c, dtype=torch.float64)
    out = composite(depths, sigma_raw, feats, density_shift=0.7)
    for r in range(4):
        trans, acc_f, acc_w, acc_t = 1.0, torch.zeros(c, dtype=torch.float64), 0.0, 0.0
        for i in range(s - 1):
            delta = (depths[r, i + 1] - depths[r, i]).item()
            sigma = math.log1p(math.exp((sigma_raw[r, i, 0] + sigma_raw[r, i + 1, 0]).item() / 2 - 0.7))
            alpha = 1 - math.exp(-sigma * delta)
            w = trans * alpha
            torch.testing.assert_close(out.weights[r, i].item(), w, rtol=0, atol=1e-14)
            acc_f += w * (feats[r, i] + feats[r, i + 1]) / 2
            acc_t += w * (depths[r, i] + depths[r, i + 1]).item() / 2
            acc_w += w
            trans *= 1 - alpha
        torch.testing.assert_close(out.features[r], acc_f, rtol=0, atol=1e-13)
        torch.testing.assert_close(out.weight[r, 0].item(), acc_w, rtol=0, atol=1e-13)
        torch.testing.assert_close(out.depth[r, 0].item(), acc_t / acc_w, rtol=0, atol=1e-12)


def test_composite_gradcheck_and_empty_ray_depth():
    depths = torch.sort(torch.rand(2, 5, dtype=torch.float64) + 2.0, dim=-1).values
    sigma_raw = torch.randn(2, 5, 1, dtype=torch.float64, requires_grad=True)
    feats = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)

    def fn(s, f):
        out = composite(depths, s, f)
        return out.features, out.depth, out.weight

    assert torch.autograd.gradcheck(fn, (sigma_raw, feats), eps=1e-6, atol=1e-8)
    empty = composite(depths, torch.full((2, 5, 1), -1e3, dtype=torch.float64), feats)
    assert torch.all(empty.weight == 0) and torch.equal(empty.depth, depths[:, -1:])


def test_homogeneous_slab_closed_form():
    """Density σ at distances [a, b] from the camera: opacity 1 − e^{−σL}, depth a + 1/σ − L e^{−σL}/(1 − e^{−σL}).

    Quadrature error: the midpoint marcher drops the two intervals that straddle the slab faces (their averaged raw
    density is ≈ −500) and is exact on the others, so the effective length is in (L − 2h, L] for sample spacing h:
    |Δopacity| ≤ 2hσ e^{−σ(L−2h)} and |Δdepth| ≤ 2h.
    """
    a, b, sigma, shift = 2.5123, 2.9371, 4.0, 1.0
    count = 4200
    h = (3.3 - 2.25) / count
    opts = RenderOptions(depth_resolution=count, depth_resolution_importance=0, triplane_crop=None,
                         deterministic=True, density_shift=shift)
    decode = _shell_field(FRONTAL[0, [3, 7, 11]], a, b, sigma, shift)
    out = render_volume(decode, torch.cat([FRONTAL, FRONTAL]), 2, opts)
    length = b - a
    opacity = 1 - math.exp(-sigma * length)
    depth = a + 1 / sigma - length * math.exp(-sigma * length) / opacity
    assert out.weight.shape == out.depth.shape == (2, 1, 2, 2) and out.features.shape == (2, 1, 2, 2)
    assert torch.all((out.weight - opacity).abs() <= 2 * h * sigma * math.exp(-sigma * (length - 2 * h)))
    assert torch.all((out.depth - depth).abs() <= 2 * h)


def test_triplane_crop_limits_density_to_the_crop_box():
    points = torch.tensor([[0.39, 0.9, -0.39], [0.41, 0.0, 0.0], [0.0, -0.7, -0.41], [0.0, 0.0, 0.0]])
    cropped = crop_density(points, torch.zeros(4, 1), box_warp=1.0, crop=0.1)
    assert cropped[:, 0].tolist() == [0.0, -1e3, -1e3, 0.0]  # y is never cropped
    # Constant density everywhere: the principal ray of a frontal camera at 2.7 sees it on z ∈ [−0.4, 0.4].
    sigma, count = 3.0, 4200
    opts = RenderOptions(depth_resolution=count, depth_resolution_importance=0, deterministic=True)
    out = render_volume(lambda p, d: (torch.full_like(p[..., :1], 1 + math.log(math.expm1(sigma))), p[..., :1]),
                        FRONTAL, 1, opts)
    h, length = 1.05 / count, 0.8
    opacity = 1 - math.exp(-sigma * length)
    depth = 2.3 + 1 / sigma - length * math.exp(-sigma * length) / opacity
    assert abs(out.weight.item() - opacity) <= 2 * h * sigma
    assert abs(out.depth.item() - depth) <= 2 * h


def test_stratified_depths_bins():
    mid = stratified_depths((2, 3), 5, 2.0, 3.0, deterministic=True, dtype=torch.float64)
    torch.testing.assert_close(mid, (2.0 + (torch.arange(5, dtype=torch.float64) + 0.5) / 5).expand(2, 3, 5))
    gen = torch.Generator().manual_seed(3)
    jit = stratified_depths((200,), 5, 2.0, 3.0, deterministic=False, generator=gen, dtype=torch.float64)
    bins = torch.arange(5, dtype=torch.float64) / 5 + 2.0
    assert torch.all(jit >= bins) and torch.all(jit <= bins + 0.2) and jit.std(0).min() > 0.04


def test_smooth_weights_loop():
    w = torch.rand(3, 9, dtype=torch.float64)
    out = smooth_weights(w)
    for r in range(3):
        for i in range(9):
            lo, hi = w[r, max(i - 1, 0)], w[r, min(i + 1, 8)]
            ref = 0.5 * (max(lo, w[r, i]) + max(w[r, i], hi)) + IMPORTANCE_FLOOR
            torch.testing.assert_close(out[r, i], ref, rtol=0, atol=1e-15)


def test_importance_depths_follow_the_pdf():
    """Deterministic quantiles (k + ½)/N put N·p_i ± 1 samples into interval i, p = normalised smoothed weights."""
    depths = torch.sort(torch.rand(4, 12, dtype=torch.float64), dim=-1).values + 2
    weights = torch.rand(4, 11, dtype=torch.float64) ** 4
    n = 500
    fine = importance_depths(depths, weights, n, deterministic=True)
    assert fine.shape == (4, n) and torch.all(fine[:, 1:] >= fine[:, :-1])
    p = smooth_weights(weights)
    p = p / p.sum(-1, keepdim=True)
    for r in range(4):
        for i in range(11):
            inside = ((fine[r] >= depths[r, i]) & (fine[r] < depths[r, i + 1])).sum().item()
            assert abs(inside - n * p[r, i].item()) <= 1


def test_importance_samples_concentrate_on_a_surface():
    """An opaque surface puts coarse weight ≈ 1 into one interval k. Smoothed, intervals k−1, k, k+1 hold mass
    ≈ ½ + 1 + ½ against 45 · 0.01 (IMPORTANCE_FLOOR) elsewhere, i.e. ≈ 82 % of the pdf: more than 75 % of the fine
    samples must land in [t_{k−1}, t_{k+2}] (uniform sampling would put ~6 % there)."""
    opts = RenderOptions(triplane_crop=None)
    gen = torch.Generator().manual_seed(0)
    coarse = stratified_depths((64,), opts.depth_resolution, opts.ray_start, opts.ray_end, True)
    surface = 2.6 + torch.rand(64, 1, generator=gen) * 0.3
    sigma_raw = torch.where(coarse > surface, 200.0, -1e3)[..., None]
    weights = composite(coarse, sigma_raw, torch.zeros_like(sigma_raw)).weights
    k = weights.argmax(-1, keepdim=True)
    assert torch.all(weights.gather(-1, k) > 0.9)
    fine = importance_depths(coarse, weights, 48, deterministic=False, generator=gen)
    near = (fine >= coarse.gather(-1, k - 1)) & (fine <= coarse.gather(-1, k + 2))
    assert near.float().mean() > 0.75


def _sphere_decode(points, dirs):
    """A ball of radius 0.3 with density rising toward its centre; features = (distance to camera-side plane, 1)."""
    raw = 8.0 * (0.3 - torch.linalg.norm(points, dim=-1, keepdim=True)) / 0.3
    return raw, torch.cat([points[..., 2:], torch.ones_like(points[..., :1])], dim=-1)


def test_render_options_compose():
    label = torch.cat([FRONTAL, _label(_orbit_origin(0.5, 0.2, 2.7, (0, 0, 0)), (0.0, 0.0, 0.0))]).float()
    det = RenderOptions(deterministic=True, depth_resolution=12, depth_resolution_importance=12)
    ref = render_volume(_sphere_decode, label, 6, det)
    assert 0.5 < ref.weight.max() <= 1 and ref.weight.min() >= 0
    # the second feature channel is 1 everywhere, so it renders the mask
    torch.testing.assert_close(ref.features[:, 1:], ref.weight, rtol=0, atol=1e-6)
    chunked = render_volume(_sphere_decode, label, 6, RenderOptions(**{**det.__dict__, "ray_chunk": 5}))
    for x, y in [(ref.features, chunked.features), (ref.depth, chunked.depth), (ref.weight, chunked.weight)]:
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    white = render_volume(_sphere_decode, label, 6, RenderOptions(**{**det.__dict__, "white_background": True}))
    torch.testing.assert_close(white.features, ref.features + 1 - ref.weight, rtol=0, atol=1e-6)


def test_two_pass_render_equals_dense_recomputation():
    """Record every point the renderer decodes, rebuild each ray's merged, sorted depths from them, evaluate the field
    there directly and march: the render must match (catches any mis-pairing of σ, features and depths)."""
    label = _label(_orbit_origin(0.4, 0.1, 2.7, (0, 0, 0)), (0.0, 0.0, 0.0))
    calls = []

    def decode(points, dirs):
        calls.append(points)
        return _sphere_decode(points, dirs)

    opts = RenderOptions(depth_resolution=10, depth_resolution_importance=7, triplane_crop=0.12, density_noise=0.0)
    out = render_volume(decode, label, 3, opts, torch.Generator().manual_seed(5))
    origins, dirs = camera_rays(label, 3)
    pts = torch.cat([c.reshape(1, 9, -1, 3) for c in calls], dim=2)  # [1, rays, 17, 3]
    depths = torch.sort(torch.linalg.norm(pts - origins[:, :, None], dim=-1), dim=-1).values
    pts = origins[:, :, None] + depths[..., None] * dirs[:, :, None]
    raw, feats = _sphere_decode(pts, None)
    raw = torch.where((pts[..., :1].abs() > 0.38) | (pts[..., 2:].abs() > 0.38), -1e3, raw)
    ref = composite(depths, raw, feats)
    torch.testing.assert_close(out.features.reshape(2, 9).T, ref.features[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(out.weight.reshape(9, 1), ref.weight[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(out.depth.reshape(9, 1), ref.depth[0], rtol=0, atol=1e-10)


def test_merged_samples_keep_their_values_and_seeds_reproduce():
    """Features = distance from the camera: after merging and sorting coarse and fine samples, F / W must equal the
    expected depth, which only holds if every sample kept its own value."""
    centre = FRONTAL[0, [3, 7, 11]].float()
    decode = _shell_field(centre, 2.6, 2.75, 5.0)
    opts = RenderOptions(triplane_crop=None, depth_resolution=16, depth_resolution_importance=16, density_noise=0.5)
    runs = [render_volume(decode, FRONTAL.float(), 4, opts, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    torch.testing.assert_close(runs[0].features / runs[0].weight, runs[0].depth, rtol=0, atol=1e-5)
    assert torch.equal(runs[0].weight, runs[1].weight) and not torch.equal(runs[0].weight, runs[2].weight)


def test_render_options_validation():
    with pytest.raises(UserError, match="ray_start"):
        RenderOptions(ray_start=3.0, ray_end=2.0)
    with pytest.raises(UserError, match="depth_resolution"):
        RenderOptions(depth_resolution=1)
    with pytest.raises(UserError, match="triplane_crop"):
        RenderOptions(triplane_crop=0.6)
    with pytest.raises(UserError, match="25"):
        camera_rays(torch.zeros(2, 16), 4)
