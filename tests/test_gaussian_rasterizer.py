"""Gaussian rasterizer: closed forms, a brute-force per-pixel oracle, batching, chunking, gradients, dispatch."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from dnnlib import UserError
from training.rendering import gaussian_rasterizer as gr
from training.rendering.gaussian_rasterizer import rasterize, rasterize_torch
from training.rendering.gaussians import Gaussians

FOCAL = 4.2647  # normalised focal length (FFHQ)


def _label(origin, target=(0.0, 0.0, 0.0), fx=FOCAL, fy=FOCAL, cx=0.5, cy=0.5, dtype=torch.float32) -> torch.Tensor:
    """A [25] label written here independently of training.cameras: OpenCV look-at with world y up."""
    o, t = np.asarray(origin, float), np.asarray(target, float)
    forward = (t - o) / np.linalg.norm(t - o)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    cam2world = np.eye(4)
    cam2world[:3, :3] = np.stack([right, down, forward], axis=1)
    cam2world[:3, 3] = o
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return torch.tensor(np.concatenate([cam2world.ravel(), k.ravel()]), dtype=dtype)


def _gaussians(means, scales, quats, colors, opacities, dtype=torch.float32) -> Gaussians:
    """Gaussians of one scene (adds the batch dimension)."""
    return Gaussians(*(torch.as_tensor(np.asarray(x, float), dtype=dtype)[None]
                       for x in (means, scales, quats, colors, opacities)))


def _random_scene(b: int, n: int, c: int = 3, dtype=torch.float32, spread: float = 0.25) -> Gaussians:
    """B random scenes of N anisotropic Gaussians around the origin."""
    return Gaussians(
        means=torch.randn(b, n, 3, dtype=dtype) * spread,
        scales=torch.exp(torch.randn(b, n, 3, dtype=dtype) * 0.5 - 3.5),
        quats=torch.nn.functional.normalize(torch.randn(b, n, 4, dtype=dtype), dim=-1),
        colors=torch.rand(b, n, c, dtype=dtype),
        opacities=torch.rand(b, n, dtype=dtype) * 0.9 + 0.05,
    )


@pytest.mark.parametrize("mean", [(0.0, 0.0, 0.0), (0.03, -0.02, 0.1)])
def test_isotropic_gaussian_matches_closed_form(mean):
    """One isotropic Gaussian: alpha = o exp(-dᵀ Σ'⁻¹ d / 2) with Σ' = s² J Jᵀ + 0.3 I, which is ((f s / z)² + 0.3) I
    on the optical axis, and the peak at the pinhole projection of the mean."""
    res, dist, s, o = 33, 2.7, 0.01, 0.8
    color, bg = np.array([0.2, -0.5, 0.9]), np.array([0.1, 0.3, -1.0])
    quat = np.array([0.3, -0.5, 0.2, 0.7]) / np.linalg.norm([0.3, -0.5, 0.2, 0.7])  # irrelevant for a sphere
    g = _gaussians([mean], [[s, s, s]], [quat], [color], [o])
    out = rasterize(g, _label((0.0, 0.0, dist))[None], res, background=torch.tensor(bg, dtype=torch.float32))

    f = FOCAL * res
    x, y, z = mean[0], -mean[1], dist - mean[2]  # camera coordinates of the frontal camera (x right, y down)
    u, v = f * x / z + res / 2, f * y / z + res / 2
    jac = np.array([[f / z, 0.0, -f * x / z**2], [0.0, f / z, -f * y / z**2]])
    cov = s**2 * jac @ jac.T + 0.3 * np.eye(2)
    py, px = np.mgrid[0:res, 0:res] + 0.5
    d = np.stack([px - u, py - v], axis=-1)
    alpha = o * np.exp(-0.5 * np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(cov), d))
    alpha = np.where(alpha >= 1 / 255, alpha, 0.0)
    expected = color[:, None, None] * alpha + bg[:, None, None] * (1 - alpha)

    assert out.features.shape == (1, 3, res, res) and out.alpha.shape == out.depth.shape == (1, 1, res, res)
    np.testing.assert_allclose(out.alpha[0, 0].numpy(), alpha, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.features[0].numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.depth[0, 0].numpy(), np.where(alpha > 0, z, 0.0), atol=1e-5, rtol=0)
    if mean == (0.0, 0.0, 0.0):  # the pixel centre (16.5, 16.5) is the projection of the mean
        assert abs(out.alpha[0, 0, 16, 16].item() - o) < 1e-6


def test_two_gaussians_composite_front_to_back_in_any_input_order():
    """Centre pixel: c = c1 a1 + c2 a2 (1 - a1) + bg (1 - a1)(1 - a2) with the nearer Gaussian 1 (z = 2.4, red) in
    front of Gaussian 2 (z = 2.9, blue), whatever their order in the input."""
    means, scales = [(0.0, 0.0, 0.3), (0.0, 0.0, -0.2)], [[0.01] * 3, [0.02] * 3]
    colors, opacities, quats = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [0.6, 0.7], [[1.0, 0.0, 0.0, 0.0]] * 2
    bg = torch.tensor([0.0, 1.0, 0.0])
    cams = _label((0.0, 0.0, 2.7))[None]
    renders = []
    for perm in ([0, 1], [1, 0]):
        attrs = [[x[i] for i in perm] for x in (means, scales, quats, colors, opacities)]
        renders.append(rasterize(_gaussians(*attrs), cams, 17, background=bg))
    a1, a2, z1, z2 = 0.6, 0.7, 2.4, 2.9
    alpha = a1 + a2 * (1 - a1)
    expected = np.array(colors[0]) * a1 + np.array(colors[1]) * a2 * (1 - a1) + bg.numpy() * (1 - alpha)
    for out in renders:
        np.testing.assert_allclose(out.features[0, :, 8, 8].numpy(), expected, atol=1e-6)
        assert abs(out.alpha[0, 0, 8, 8].item() - alpha) < 1e-6
        assert abs(out.depth[0, 0, 8, 8].item() - (z1 * a1 + z2 * a2 * (1 - a1)) / alpha) < 1e-5
    torch.testing.assert_close(renders[0].features, renders[1].features, atol=1e-6, rtol=0)


def _rodrigues(quat: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion via its axis and angle (a route independent of the module's)."""
    quat = quat / np.linalg.norm(quat)
    angle = 2 * math.atan2(np.linalg.norm(quat[1:]), quat[0])
    axis = quat[1:] / max(np.linalg.norm(quat[1:]), 1e-300)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _brute_force(g: Gaussians, label: torch.Tensor, res: int, bg: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-pixel loop in float64: project every Gaussian, sort by depth, composite with the 3DGS rules.
    Returns features [C, res, res], alpha and depth [res, res], and how many pixels stopped early."""
    cam2world = label[:16].double().numpy().reshape(4, 4)
    k = label[16:].double().numpy().reshape(3, 3) * np.array([[res], [res], [1.0]])
    rot, origin = cam2world[:3, :3].T, cam2world[:3, 3]
    splats = []
    for mean, scale, quat, color, o in zip(*(t[0].double().numpy() for t in vars(g).values()), strict=True):
        x, y, z = rot @ (mean - origin)
        if z <= 0.01:
            continue
        r = _rodrigues(quat)
        cov3 = rot @ r @ np.diag(scale**2) @ r.T @ rot.T
        jac = np.array([[k[0, 0] / z, 0, -k[0, 0] * x / z**2], [0, k[1, 1] / z, -k[1, 1] * y / z**2]])
        cov2 = jac @ cov3 @ jac.T + 0.3 * np.eye(2)
        splats.append((z, np.array([k[0, 0] * x / z + k[0, 2], k[1, 1] * y / z + k[1, 2]]), np.linalg.inv(cov2), o,
                       color))
    splats.sort(key=lambda item: item[0])
    features, alpha, depth = np.zeros((len(bg), res, res)), np.zeros((res, res)), np.zeros((res, res))
    stopped = 0
    for row in range(res):
        for col in range(res):
            p, trans, acc_c, acc_z = np.array([col + 0.5, row + 0.5]), 1.0, np.zeros(len(bg)), 0.0
            for z, mu, conic, o, color in splats:
                a = min(0.99, o * math.exp(-0.5 * (p - mu) @ conic @ (p - mu)))
                if a < 1 / 255:
                    continue
                if trans * (1 - a) <= 1e-4:
                    stopped += 1
                    break
                acc_c, acc_z, trans = acc_c + a * trans * color, acc_z + a * trans * z, trans * (1 - a)
            features[:, row, col] = acc_c + bg * trans
            alpha[row, col] = 1 - trans
            depth[row, col] = acc_z / (1 - trans) if trans < 1 else 0.0
    return features, alpha, depth, stopped


def test_anisotropic_scene_matches_brute_force_loop():
    """Rotated anisotropic Gaussians, 4 feature channels, fx != fy, off-centre principal point, a Gaussian behind the
    camera, a too-faint one and an opaque stack that stops compositing early; float64 against a per-pixel loop."""
    torch.manual_seed(1)
    g = _random_scene(1, 9, c=4, dtype=torch.float64, spread=0.08)
    means, opac, scales = g.means.clone(), g.opacities.clone(), g.scales.clone()
    means[0, 0] = torch.tensor([0.0, 0.0, 3.5], dtype=torch.float64)  # behind the camera
    opac[0, 1] = 0.003  # below 1/255 everywhere
    means[0, 6:9] = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 0.05], [0.0, 0.0, 0.0]], dtype=torch.float64)
    opac[0, 6:9] = 0.999  # alpha clamped to 0.99 near the centre: T 0.01, then <= 1e-4: stop
    scales[0, 6:9] = 0.15
    g = Gaussians(means, scales, g.quats, g.colors, opac)
    label = _label((0.8, 0.5, 2.5), target=(0.0, 0.05, 0.0), fx=4.0, fy=4.6, cx=0.45, cy=0.53, dtype=torch.float64)
    bg = np.array([0.5, -0.5, 1.0, 0.0])
    out = rasterize(g, label[None], 12, background=torch.tensor(bg), backend="torch")
    features, alpha, depth, stopped = _brute_force(g, label, 12, bg)
    assert stopped > 0 and (alpha > 0).mean() > 0.3  # the scene exercises the early stop and covers the image
    np.testing.assert_allclose(out.features[0].numpy(), features, atol=1e-10, rtol=0)
    np.testing.assert_allclose(out.alpha[0, 0].numpy(), alpha, atol=1e-10, rtol=0)
    np.testing.assert_allclose(out.depth[0, 0].numpy(), depth, atol=1e-10, rtol=0)


def test_batched_scenes_and_views_match_separate_renders():
    b, v, res = 2, 3, 16
    g = _random_scene(b, 40)
    origins = [(0.0, 0.0, 2.7), (1.2, 0.3, 2.4), (-2.0, -0.4, 1.8), (0.5, 1.0, -2.5), (2.7, 0.0, 0.0), (0, 0.9, 2.5)]
    cams = torch.stack([_label(o) for o in origins]).reshape(b, v, 25)
    bg = torch.tensor([0.2, 0.4, 0.6])
    batched = rasterize(g, cams, res, background=bg)
    assert batched.features.shape == (b, v, 3, res, res) and batched.depth.shape == (b, v, 1, res, res)
    for bi in range(b):
        scene = Gaussians(*(t[bi : bi + 1] for t in vars(g).values()))
        for vi in range(v):
            single = rasterize(scene, cams[bi, vi][None], res, background=bg)
            for name in ("features", "alpha", "depth"):
                torch.testing.assert_close(getattr(batched, name)[bi, vi], getattr(single, name)[0], atol=1e-6, rtol=0)


def _camera_matrices(labels: torch.Tensor, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """world2cam [B, V, 4, 4] and pixel intrinsics [B, V, 3, 3] from labels [B, V, 25]."""
    cam2world = labels[..., :16].unflatten(-1, (4, 4))
    k = labels[..., 16:].unflatten(-1, (3, 3)) * torch.tensor([res, res, 1.0], dtype=labels.dtype)[:, None]
    return torch.linalg.inv(cam2world), k


def test_chunked_rendering_equals_single_chunk(monkeypatch):
    """Small tiles and small Gaussian chunks (the memory bound) give the single-tile, single-chunk image and gradients;
    the scene is dense and opaque enough that pixels stop early inside later chunks."""
    torch.manual_seed(2)
    res = 13
    g = _random_scene(2, 60, dtype=torch.float64, spread=0.1)
    g = Gaussians(g.means, g.scales * 2, g.quats, g.colors, g.opacities * 0.2 + 0.8)
    labels = torch.stack([_label((0.0, 0.2, 2.7)), _label((1.5, 0.0, 2.2))]).double()[None].expand(2, -1, -1)
    world2cam, k = _camera_matrices(labels, res)
    leaves = [t.requires_grad_(True) for t in vars(g).values()]

    pair_counts, carried = [], []
    original = gr._composite_chunk

    def recording(pixels, ids, real, scene, trans, done, *rest):
        pair_counts.append(ids.shape[0] * pixels.shape[0] * ids.shape[1])
        carried.append(bool(done.any()))  # a pixel that stopped in an earlier chunk
        return original(pixels, ids, real, scene, trans, done, *rest)

    monkeypatch.setattr(gr, "_composite_chunk", recording)
    results = []
    for tile, max_pairs in ((res, 10**9), (4, 600)):
        pair_counts.clear()
        out = rasterize_torch(g, world2cam, k, res, torch.tensor([0.3, 0.2, 0.1]).double(), tile, max_pairs)
        loss = (out.features * torch.linspace(-1, 1, 3).double()[:, None, None]).sum() + out.depth.sum()
        results.append((out, torch.autograd.grad(loss, leaves)))
    # 4 images x 16 pixels x 9 Gaussians per chunk, in the forward pass and its recomputation in the backward pass
    assert len(pair_counts) > 2 * 16 and max(pair_counts) <= 600 and any(carried)
    for name in ("features", "alpha", "depth"):
        torch.testing.assert_close(getattr(results[1][0], name), getattr(results[0][0], name), atol=1e-12, rtol=0)
    for chunked, whole in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(chunked, whole, atol=1e-10, rtol=1e-10)


def test_gradcheck_tiny_scene():
    """float64 gradcheck for all Gaussian attributes from an oblique camera, through two Gaussian chunks. The scene
    stays away from the kinks: every alpha is in (1/255, 0.99) and no pixel reaches the transmittance stop."""
    res = 6
    labels = _label((0.9, 0.4, 2.5)).double()[None, None]
    world2cam, k = _camera_matrices(labels, res)
    means = torch.tensor([[[0.0, 0.0, 0.0], [0.05, -0.04, 0.1], [-0.06, 0.03, -0.1]]], dtype=torch.float64)
    scales = torch.tensor([[[0.40, 0.30, 0.35], [0.30, 0.45, 0.40], [0.35, 0.40, 0.30]]], dtype=torch.float64)
    quats = torch.tensor([[[0.9, 0.1, -0.2, 0.3], [0.5, 0.5, 0.1, -0.4], [0.2, -0.3, 0.8, 0.1]]], dtype=torch.float64)
    colors = torch.rand(1, 3, 3, dtype=torch.float64)
    opacities = torch.tensor([[0.5, 0.4, 0.6]], dtype=torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (means, scales, quats, colors, opacities))

    def render(*attrs):
        out = rasterize_torch(Gaussians(*attrs), world2cam, k, res, tile_size=res, max_pairs=2 * res * res)
        return out.features, out.alpha, out.depth

    alpha = render(*inputs)[1]
    assert alpha.min() > 0.3 and alpha.max() < 0.95
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_backend_dispatch_and_input_errors(caplog):
    g = _random_scene(1, 5)
    cams = _label((0.0, 0.0, 2.7))[None]
    gr._logged_choices.clear()
    with caplog.at_level(logging.INFO, logger=gr.__name__):
        rasterize(g, cams, 8)
        rasterize(g, cams, 8)
    messages = [r.getMessage() for r in caplog.records if r.name == gr.__name__]
    assert messages == ["Gaussian rasterizer: using the torch backend (tensors on cpu)"]  # logged once
    for backend in ("gsplat", "inria"):
        with pytest.raises(UserError, match=f"backend='{backend}' is unavailable"):
            rasterize(g, cams, 8, backend=backend)
    with pytest.raises(UserError, match="backend must be one of"):
        rasterize(g, cams, 8, backend="cuda")
    with pytest.raises(UserError, match="cameras must be"):
        rasterize(g, cams[:, :16], 8)
    with pytest.raises(UserError, match="background must be"):
        rasterize(g, cams, 8, background=torch.zeros(4))
    with pytest.raises(UserError, match="Gaussians.quats"):
        Gaussians(g.means, g.scales, g.quats[..., :3], g.colors, g.opacities)


def _gsplat_usable() -> bool:
    return torch.cuda.is_available() and gr._gsplat_problem() is None


@pytest.mark.skipif(not _gsplat_usable(), reason="needs CUDA and gsplat >= 1.5.3")
def test_gsplat_matches_torch_backend():
    """On random scenes with opacities <= 0.95 (gsplat <= 1.5.3 clamps alpha at 0.999, we at 0.99): images within
    2e-3 (float32, different summation order and fast exp in CUDA), depth within 1e-3 relative where alpha > 0.5, and
    gradients of a random linear loss within 2e-2 relative to their largest entry."""
    torch.manual_seed(3)
    g = _random_scene(2, 3000, c=5)
    g = Gaussians(*(t.cuda() for t in vars(g).values()))
    origins = [(0.0, 0.0, 2.7), (1.2, 0.3, 2.4), (-2.0, -0.4, 1.8), (0.5, 1.0, -2.5)]
    cams = torch.stack([_label(o) for o in origins]).reshape(2, 2, 25).cuda()
    bg = torch.rand(5, device="cuda")
    weights = torch.randn(2, 2, 7, 64, 64, device="cuda")
    outs, grads = [], []
    for backend in ("torch", "gsplat"):
        leaves = [t.detach().requires_grad_(True) for t in vars(g).values()]
        out = rasterize(Gaussians(*leaves), cams, 64, background=bg, backend=backend)
        stacked = torch.cat([out.features, out.alpha, out.depth / 3], dim=2)
        outs.append(out)
        grads.append(torch.autograd.grad((stacked * weights).sum(), leaves))
    torch.testing.assert_close(outs[1].features, outs[0].features, atol=2e-3, rtol=0)
    torch.testing.assert_close(outs[1].alpha, outs[0].alpha, atol=2e-3, rtol=0)
    solid = outs[0].alpha > 0.5
    torch.testing.assert_close(outs[1].depth[solid], outs[0].depth[solid], atol=0, rtol=1e-3)
    for fast, ref in zip(grads[1], grads[0], strict=True):
        assert (fast - ref).abs().max() <= 2e-2 * ref.abs().max()
