"""Gaussian-head generator: config, activations against closed forms, sampling against a bilinear loop, start on the
template, triangle binding under a similarity, outputs, depth against a brute-force ray cast, a G + D training step,
constant and generated backgrounds against compositing the rasterizer's output by hand."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from dnnlib import UserError
from training.cameras import lookat_labels
from training.networks.discriminator import Discriminator
from training.networks.gaussian_head import (
    SH_C0,
    SH_C1,
    GaussianHeadConfig,
    GaussianHeadGenerator,
    activate_color,
    activate_log_scale,
    activate_opacity,
    activate_rotation,
    quaternion_multiply,
    rotation_to_quaternion,
)
from training.rendering.gaussian_rasterizer import rasterize
from training.rendering.gaussians import quaternion_to_rotation
from training.rendering.template import load_obj, procedural_head, sample_points

TINY = dict(z_dim=16, w_dim=16, uv_resolution=32, channel_base=256, channel_max=32, sample_resolution=40,
            render_resolution=32)
BG = dict(background_generator=True, background_resolution=16, background_channel_base=64)  # 16² → 32² renders


def _generator(**overrides) -> GaussianHeadGenerator:
    torch.manual_seed(1)
    return GaussianHeadGenerator(GaussianHeadConfig(**{**TINY, **overrides})).eval()


def _cameras(batch: int = 2) -> torch.Tensor:
    """A frontal camera and cameras turned left/up (EG3D orbit around (0, 0, 0.2), radius 2.7)."""
    h = torch.tensor([math.pi / 2, math.pi / 2 + 0.5, math.pi / 2 - 0.3])[:batch]
    v = torch.tensor([math.pi / 2, math.pi / 2 - 0.3, math.pi / 2 + 0.2])[:batch]
    return lookat_labels(h, v)


def _perturbed(generator: GaussianHeadGenerator) -> GaussianHeadGenerator:
    """A copy whose zero-initialised position layer has random weights, so that offsets are non-zero."""
    g = copy.deepcopy(generator)
    with torch.no_grad():
        g.position_conv.weight.normal_(0, 0.3)
        g.position_conv.bias.normal_(0, 0.1)
    return g


@pytest.fixture(scope="module")
def world_g() -> GaussianHeadGenerator:
    return _generator()


@pytest.fixture(scope="module")
def mesh():
    return procedural_head()


def _ws(g: GaussianHeadGenerator, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return g.mapping(torch.randn(batch, g.z_dim, generator=gen), _cameras(batch))


def test_config_defaults_json_round_trip_and_errors():
    cfg = GaussianHeadConfig()
    assert sum(cfg.attribute_channels().values()) == 22  # GGHead's FFHQ UV map: 3 + 3 + 3 + 12 + 1
    assert (cfg.z_dim, cfg.w_dim, cfg.c_dim, cfg.mapping_layers, cfg.uv_resolution) == (512, 512, 25, 2, 256)
    assert (cfg.sample_resolution, cfg.render_resolution, cfg.background) == (256, 512, (1.0, 1.0, 1.0))
    other = GaussianHeadConfig(color="rgb", rotation="quaternion", bind_to_triangles=True, conv_clamp=256)
    assert sum(other.attribute_channels().values()) == 14
    for config in (cfg, other):
        assert GaussianHeadConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match="unknown field"):
        GaussianHeadConfig.from_dict({"z_dimm": 3})
    with pytest.raises(UserError, match="GaussianHeadConfig.color"):
        GaussianHeadConfig(color="sh3")
    with pytest.raises(UserError, match="GaussianHeadConfig.uv_resolution"):
        GaussianHeadConfig(uv_resolution=48)
    with pytest.raises(UserError, match="GaussianHeadConfig.bind_to_triangles"):
        GaussianHeadConfig(bind_to_triangles=1)
    with pytest.raises(UserError, match="template_transform"):
        GaussianHeadConfig(template_transform="flame_to_eg3d")
    with pytest.raises(UserError, match="GaussianHeadConfig.background"):
        GaussianHeadConfig(background=(2.0, 0.0, 0.0))


def test_activations_match_closed_forms():
    r = torch.linspace(-8, 8, 33, dtype=torch.float64)
    expected = [-3 - math.log1p(math.exp(2 - x)) for x in r.tolist()]
    torch.testing.assert_close(activate_log_scale(r), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)
    expected = [1.002 / (1 + math.exp(-x)) - 0.001 for x in r.tolist()]
    torch.testing.assert_close(activate_opacity(r), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    # The overshoot makes 0 and 1 reachable: 1.002 sigmoid(r) - 0.001 = 1 at r = ln(1001).
    assert abs(activate_opacity(torch.tensor(math.log(1001), dtype=torch.float64)).item() - 1) < 1e-14
    rgb = activate_color(r[:, None].expand(-1, 3), "rgb")
    expected = [min(max(0.5 + 0.501 * math.tanh(x), 0.0), 1.0) for x in r.tolist()]
    torch.testing.assert_close(rgb[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    sh = activate_color(r[:12], "sh1")
    assert sh.shape == (4, 3)
    torch.testing.assert_close(sh.flatten(), 0.501 * torch.tanh(r[:12]) / SH_C0, rtol=1e-14, atol=0)


def test_rotation_activations_and_quaternion_convention():
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(20, 3, generator=gen, dtype=torch.float64) * 0.5
    a = 2 * math.pi * torch.tanh(raw)
    theta = a.norm(dim=-1, keepdim=True)[..., None]
    k = torch.zeros(20, 3, 3, dtype=torch.float64)  # cross-product matrices of the unit axes
    n = a / a.norm(dim=-1, keepdim=True)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -n[:, 2], n[:, 1], -n[:, 0]
    k = k - k.transpose(1, 2)
    rodrigues = torch.eye(3, dtype=torch.float64) + theta.sin() * k + (1 - theta.cos()) * k @ k
    q = activate_rotation(raw, "axis_angle")
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(20, dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_rotation(q), rodrigues, rtol=0, atol=1e-12)
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(activate_rotation(torch.zeros(3), "axis_angle"), identity)
    assert torch.equal(activate_rotation(torch.zeros(4), "quaternion"), identity)
    zero = torch.zeros(2, 3, requires_grad=True)
    activate_rotation(zero, "axis_angle").sum().backward()
    assert torch.isfinite(zero.grad).all()
    # Hamilton product: R(a ⊗ b) = R(a) R(b); matrix → quaternion inverts quaternion → matrix (w >= 0), also for
    # half turns (trace -1) where the w-row of the conversion vanishes.
    qa, qb = F.normalize(torch.randn(2, 50, 4, generator=gen, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(quaternion_to_rotation(quaternion_multiply(qa, qb)),
                               quaternion_to_rotation(qa) @ quaternion_to_rotation(qb), rtol=0, atol=1e-12)
    half_turns = F.pad(F.normalize(torch.randn(5, 3, generator=gen, dtype=torch.float64), dim=-1), (1, 0))
    back = rotation_to_quaternion(quaternion_to_rotation(qa))
    torch.testing.assert_close(back, qa * torch.where(qa[:, :1] < 0, -1.0, 1.0), rtol=0, atol=1e-12)
    back = rotation_to_quaternion(quaternion_to_rotation(half_turns))  # q and -q both have w = 0 here
    torch.testing.assert_close((back * half_turns).sum(-1).abs(), torch.ones(5, dtype=torch.float64), rtol=0,
                               atol=1e-12)


def test_gaussians_start_exactly_on_the_template(world_g, mesh):
    samples = sample_points(mesh, TINY["sample_resolution"])
    for g in (world_g, _generator(bind_to_triangles=True)):
        heads = g.generate(_ws(g), noise_mode="const")
        assert torch.equal(heads.raw.position, torch.zeros_like(heads.raw.position))
        assert torch.equal(heads.means, samples.positions(mesh.vertices).expand_as(heads.means))
    # The same points from the barycentric weights by hand (float64).
    corners = mesh.vertices.double()[mesh.faces[samples.face_index]]  # [N, 3, 3]
    by_hand = (samples.barycentric.double()[..., None] * corners).sum(1)
    torch.testing.assert_close(heads.means[0].double(), by_hand, rtol=0, atol=1e-6)


def test_raw_attributes_are_bilinear_samples_of_the_uv_map(world_g):
    heads = world_g.generate(_ws(world_g), noise_mode="const")
    uv_map, values = heads.uv_map, torch.cat([heads.raw.position, heads.raw.scale, heads.raw.rotation,
                                              heads.raw.color, heads.raw.opacity[..., None]], dim=-1)
    size = uv_map.shape[-1]
    for n in torch.randperm(len(heads.uv))[:20].tolist():
        # Texel (i, j) has its centre at ((j + 0.5) / W, (i + 0.5) / H); border texels extend outward.
        x = min(max(heads.uv[n, 0].item() * size - 0.5, 0.0), size - 1.0)
        y = min(max(heads.uv[n, 1].item() * size - 0.5, 0.0), size - 1.0)
        j0, i0 = int(x), int(y)
        j1, i1, fx, fy = min(j0 + 1, size - 1), min(i0 + 1, size - 1), x - j0, y - i0
        expected = ((1 - fy) * ((1 - fx) * uv_map[:, :, i0, j0] + fx * uv_map[:, :, i0, j1])
                    + fy * ((1 - fx) * uv_map[:, :, i1, j0] + fx * uv_map[:, :, i1, j1]))
        torch.testing.assert_close(values[:, n], expected, rtol=1e-5, atol=1e-6)


def test_generator_applies_the_activations(world_g, mesh):
    g = _perturbed(world_g)
    cameras = _cameras(2)
    out = g.synthesis(_ws(g), cameras, noise_mode="const")
    raw, gaussians = out["raw"], out["gaussians"]
    template = sample_points(mesh, TINY["sample_resolution"]).positions(mesh.vertices)
    assert raw.position.abs().max() > 0.1
    torch.testing.assert_close(gaussians.means - template, 0.25 * torch.tanh(raw.position), rtol=0, atol=1e-6)
    torch.testing.assert_close(gaussians.scales, torch.exp(-3 - F.softplus(2 - raw.scale)), rtol=1e-6, atol=0)
    torch.testing.assert_close(gaussians.opacities, (1.002 * torch.sigmoid(raw.opacity) - 0.001).clamp(0, 1),
                               rtol=0, atol=1e-7)
    torch.testing.assert_close(gaussians.quats, activate_rotation(raw.rotation, "axis_angle"), rtol=0, atol=0)
    # SH degree 1 seen from each head's own camera centre (translation entries 3, 7, 11 of the label).
    f = (0.501 * torch.tanh(raw.color) / SH_C0).unflatten(-1, (4, 3))
    d = F.normalize(gaussians.means - cameras[:, None, [3, 7, 11]], dim=-1)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    rgb = 0.5 + SH_C0 * f[..., 0, :] + SH_C1 * (-y * f[..., 1, :] + z * f[..., 2, :] - x * f[..., 3, :])
    torch.testing.assert_close(gaussians.colors, rgb.clamp(0, 1), rtol=0, atol=1e-6)
    assert (gaussians.colors[0] - g.render(out["heads"], cameras.flip(0))["gaussians"].colors[0]).abs().max() > 1e-3


def _random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def test_bound_gaussians_follow_a_rotated_and_scaled_template(mesh):
    g = _perturbed(_generator(bind_to_triangles=True, rotation="quaternion", color="rgb"))
    ws = _ws(g, 1)
    rotation = _random_rotation(torch.Generator().manual_seed(4))
    s, t = 1.7, torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    moved = (s * mesh.vertices.double() @ rotation.T + t).float()
    base = g.generate(ws, noise_mode="const")
    new = g.generate(ws, noise_mode="const", template_vertices=moved)
    torch.testing.assert_close(new.means.double(), s * base.means.double() @ rotation.T + t, rtol=0, atol=2e-5)
    torch.testing.assert_close(new.scales, s * base.scales, rtol=2e-5, atol=0)
    expected = rotation @ quaternion_to_rotation(base.quats.double())  # r' = Q ∘ r
    torch.testing.assert_close(quaternion_to_rotation(new.quats.double()), expected, rtol=0, atol=2e-5)
    # World mode only carries the positions along.
    w = _perturbed(_generator(rotation="quaternion", color="rgb"))
    base, new = (w.generate(ws, noise_mode="const", template_vertices=v) for v in (mesh.vertices, moved))
    offsets = base.means - sample_points(mesh, TINY["sample_resolution"]).positions(mesh.vertices)
    torch.testing.assert_close(new.means - offsets, s * (base.means - offsets) @ rotation.T.float() + t.float(),
                               rtol=0, atol=2e-5)
    assert torch.equal(new.scales, base.scales) and torch.equal(new.quats, base.quats)


def test_output_keys_shapes_and_ranges(world_g, mesh):
    cameras = _cameras(2)
    out = world_g(torch.randn(2, 16), cameras, render_uv=True, noise_mode="const")
    assert set(out) == {"image", "image_raw", "image_mask", "image_depth", "image_uv", "gaussians", "raw", "heads"}
    n = len(sample_points(mesh, TINY["sample_resolution"]))
    assert out["image"].shape == (2, 3, 32, 32) and out["image_raw"] is out["image"]
    assert out["image_mask"].shape == out["image_depth"].shape == (2, 1, 32, 32)
    assert out["image_uv"].shape == (2, 2, 32, 32) and out["gaussians"].means.shape == (2, n, 3)
    assert out["image"].abs().max() <= 1 + 1e-6  # a convex blend of colours in [0, 1], up to float rounding
    assert out["image_mask"].min() >= 0 and out["image_mask"].max() <= 1 and out["image_mask"].max() > 0.9
    empty = out["image_mask"] == 0
    assert empty.any() and (out["image_depth"][empty] == 0).all() and (out["image_depth"][~empty] > 2).all()
    assert (out["image"][empty.expand(-1, 3, -1, -1)] == 1).all()  # white background
    assert (out["image_uv"] <= out["image_mask"] + 1e-6).all()  # UV in [0, 1], premultiplied by alpha
    z = torch.randn(2, 16)  # conditioning and rendering cameras are separate
    split = world_g(z, cameras, c_render=cameras.flip(0), render_resolution=16, noise_mode="const")
    expected = world_g.synthesis(world_g.mapping(z, cameras), cameras.flip(0), render_resolution=16, noise_mode="const")
    assert torch.equal(split["image"], expected["image"])
    grown = world_g.synthesis(_ws(world_g), cameras, render_resolution=16, sample_resolution=24)
    assert grown["image"].shape == (2, 3, 16, 16)
    assert grown["gaussians"].num_gaussians == len(sample_points(mesh, 24))
    with pytest.raises(UserError, match="rendering cameras"):
        world_g.synthesis(_ws(world_g), cameras[:1])
    with pytest.raises(UserError, match="template_vertices"):
        world_g.generate(_ws(world_g), template_vertices=mesh.vertices[:10])


def _ray_cast(vertices: torch.Tensor, faces: torch.Tensor, origin: torch.Tensor,
              dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit of rays origin + t·dirs [P, 3] with every triangle (float64, Möller–Trumbore): t [P] (inf for a
    miss) and |cos| [P] of the angle between the ray and the hit triangle's normal."""
    v0, v1, v2 = vertices[faces].unbind(1)  # [F, 3]
    e1, e2 = v1 - v0, v2 - v0
    p = torch.linalg.cross(dirs[:, None], e2[None])  # [P, F, 3]
    det = (p * e1).sum(-1)
    s = origin - v0  # [F, 3]
    u = (p * s).sum(-1) / det
    q = torch.linalg.cross(s, e1)  # [F, 3]
    v = (dirs @ q.T) / det
    t = (q * e2).sum(-1)[None] / det
    hit = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0) & (det.abs() > 1e-12)
    t, face = torch.where(hit, t, torch.full_like(t, math.inf)).min(dim=1)
    normals = F.normalize(torch.linalg.cross(e1, e2), dim=-1)[face]
    return t, (normals * F.normalize(dirs, dim=-1)).sum(-1).abs()


def test_depth_is_the_rasterized_camera_depth(world_g):
    # Two opaque Gaussians (σ = 0.05) on the axis of a frontal camera, 2.4 and 2.6 away. At pixel (16, 16), whose
    # centre is 0.5 px off the axis in x and y, Gaussian i has alpha exp(-q_i / 2) with q_i = 0.5 px² / σ_i² and
    # σ_i² = (0.05 f / z_i)² + 0.3 px²; front-to-back compositing gives weights a1 and a2 (1 - a1), and the depth is
    # their weighted mean of 2.4 and 2.6.
    label = lookat_labels(math.pi / 2, math.pi / 2, pivot=(0.0, 0.0, 0.0))
    means = torch.tensor([[[0.0, 0.0, 0.3], [0.0, 0.0, 0.1]]])  # camera at z = 2.7 looks toward -z
    heads = world_g.generate(_ws(world_g, 1))
    heads = dataclasses.replace(heads, means=means, scales=torch.full((1, 2, 3), 0.05),
                                quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]] * 2]), colors=torch.zeros(1, 2, 4, 3),
                                opacities=torch.ones(1, 2), uv=torch.zeros(2, 2))
    depth = world_g.render(heads, label, render_resolution=32)["image_depth"][0, 0, 16, 16].item()
    focal = 4.2647 * 32  # pixel (16, 16) has its centre 0.5 px off the axis in x and y
    weights = []
    for z in (2.4, 2.6):
        sigma2 = (0.05 * focal / z) ** 2 + 0.3  # projected variance + low-pass
        weights.append(min(0.99, math.exp(-0.5 * (0.25 + 0.25) / sigma2)))
    w1, w2 = weights[0], weights[1] * (1 - weights[0])
    assert math.isclose(depth, (w1 * 2.4 + w2 * 2.6) / (w1 + w2), rel_tol=1e-5)


def test_depth_follows_the_template_surface_at_init(mesh):
    g = _generator(sample_resolution=96)
    with torch.no_grad():  # opaque Gaussians: the opacity channel's last ToRGB bias (other blocks add little)
        g.backbone.synthesis.b32.torgb.bias[-1] = 8.0
    label = _cameras(1)
    out = g.synthesis(_ws(g, 1), label, noise_mode="const")
    res = TINY["render_resolution"]
    cam2world, k = label[0, :16].view(4, 4).double(), label[0, 16:].view(3, 3).double()
    i, j = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    dirs_cam = torch.stack([((j + 0.5) / res - k[0, 2]) / k[0, 0], ((i + 0.5) / res - k[1, 2]) / k[1, 1],
                            torch.ones(res, res, dtype=torch.float64)], dim=-1).view(-1, 3)
    t, cos = _ray_cast(mesh.vertices.double(), mesh.faces, cam2world[:3, 3], dirs_cam @ cam2world[:3, :3].T)
    # Camera-space z of the hit is t (the camera-frame direction has z = 1).
    mask, depth = out["image_mask"][0, 0].flatten(), out["image_depth"][0, 0].flatten().double()
    facing = (mask > 0.99) & torch.isfinite(t) & (cos > 0.9)
    assert facing.sum() > 50
    # A splat reaches ≈ 3.3 σ_px ≈ 1.8-3 px ≈ 0.03-0.05 world units around a pixel at 32² (σ_px² = (σ f / z)² + 0.3);
    # the front-most Gaussians in that footprint win, so on a surface tilted up to 26° (cos 0.9) the depth may lie up
    # to ≈ 0.5 · 0.04 = 0.02 in front of the surface point on the pixel's ray.
    error = (depth[facing] - t[facing]).abs()
    assert error.max() < 0.02 and error.median() < 0.006


def test_tiny_generator_and_discriminator_forward_backward():
    g = _generator(sample_resolution=64, render_resolution=64).train()
    d = Discriminator(c_dim=25, img_resolution=64, img_channels=3, channel_base=256, channel_max=32,
                      epilogue_kwargs=dict(mbstd_group_size=2))
    cameras = _cameras(2)
    start = time.perf_counter()
    out = g(torch.randn(2, 16), cameras)
    loss = F.softplus(-d(out["image"], cameras)).mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    print(f"tiny G ({out['gaussians'].num_gaussians} Gaussians, 64²) + D forward and backward: {elapsed:.2f} s")
    grads = [g.backbone.mapping.fc0.weight.grad, g.backbone.synthesis.b4.const.grad, g.position_conv.weight.grad,
             g.backbone.synthesis.b32.torgb.weight.grad]
    assert all(grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0 for grad in grads)


def test_obj_template_with_a_named_transform(shared_fixtures):
    path = shared_fixtures / "gghead_templates" / "flame_uv_no_back_close_mouth_no_subdivision.obj"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    g = _generator(template=str(path), template_transform="flame_to_eg3d", sample_resolution=32)
    mesh = load_obj(path, transform="flame_to_eg3d")
    heads = g.generate(_ws(g, 1), noise_mode="const")
    assert torch.equal(heads.means[0], sample_points(mesh, 32).positions(mesh.vertices))
    with pytest.raises(UserError, match="GaussianHeadConfig.template"):
        _generator(template=str(path.with_suffix(".ply")))


# ---------------------------------------------------------------------------------------------------------------------
# Backgrounds


@pytest.fixture(scope="module")
def bg_g() -> GaussianHeadGenerator:
    return _generator(**BG)


def _render_over_zero(out: dict, cameras: torch.Tensor, resolution: int):
    """The rasterizer's own output for G's rendered Gaussians, over a zero background (premultiplied colours)."""
    return rasterize(out["gaussians"], cameras, resolution, background=None, backend="torch")


def test_background_config_fields_round_trip_and_errors():
    cfg = GaussianHeadConfig(**TINY, **BG)
    assert GaussianHeadConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    default = GaussianHeadConfig()  # GGHead: constant white, PanoHead's sizes for the optional generator
    assert not default.background_generator
    assert (default.background_resolution, default.background_channel_base) == (128, 16384)
    with pytest.raises(UserError, match="GaussianHeadConfig.background_resolution"):
        GaussianHeadConfig(background_resolution=48)
    with pytest.raises(UserError, match="GaussianHeadConfig.background_channel_base"):
        GaussianHeadConfig(background_channel_base=0)
    with pytest.raises(UserError, match="GaussianHeadConfig.background_generator"):
        GaussianHeadConfig.from_dict({"background_generator": "yes"})


def test_generated_background_is_composited_over_the_premultiplied_render(bg_g):
    ws, cameras = _ws(bg_g), _cameras(2)
    out = bg_g.synthesis(ws, cameras, noise_mode="const")
    raster = _render_over_zero(out, cameras, 32)
    bg = bg_g.bcg_synthesis(ws, out_resolution=32, noise_mode="const")  # [-1, 1] image range, resized by the module
    # "Over" in [0, 1] colour space, then mapped to [-1, 1].
    expected = 2 * (raster.features + (1 - raster.alpha) * (bg + 1) / 2) - 1
    torch.testing.assert_close(out["image"], expected, rtol=0, atol=2e-6)
    assert torch.equal(out["image_mask"], raster.alpha) and out["image_raw"] is out["image"]
    assert (raster.alpha == 0).any() and (raster.alpha > 0.9).any()  # both parts of the blend are exercised
    assert bg.std() > 1e-3  # a non-trivial background image


def test_empty_scene_shows_exactly_the_background(bg_g):
    ws, cameras = _ws(bg_g), _cameras(2)
    heads = bg_g.generate(ws, noise_mode="const")
    empty = dataclasses.replace(heads, opacities=torch.zeros_like(heads.opacities))
    for resolution in (32, 8):  # background upsampled 16 → 32, and shrunk 16 → 8 (antialiased)
        out = bg_g.render(empty, cameras, render_resolution=resolution, render_uv=True)
        expected = bg_g.bcg_synthesis(ws, out_resolution=resolution, noise_mode="const")
        torch.testing.assert_close(out["image"], expected, rtol=0, atol=0)
        assert torch.equal(out["image_mask"], torch.zeros(2, 1, resolution, resolution))
        assert torch.equal(out["image_uv"], torch.zeros(2, 2, resolution, resolution))  # UV background stays 0


def test_ws_background_changes_only_the_background(bg_g):
    ws, cameras = _ws(bg_g), _cameras(2)
    own = bg_g.synthesis(ws, cameras, noise_mode="const")
    swapped_ws = ws.flip(0)[:, :1]  # another head's first w; the module repeats it over its ws
    swapped = bg_g.synthesis(ws, cameras, ws_background=swapped_ws, noise_mode="const")
    for key in ("image_mask", "image_depth"):
        assert torch.equal(swapped[key], own[key])
    assert torch.equal(swapped["gaussians"].colors, own["gaussians"].colors)
    bg_own = bg_g.bcg_synthesis(ws, out_resolution=32, noise_mode="const")
    bg_swapped = bg_g.bcg_synthesis(swapped_ws.expand(-1, bg_g.bcg_synthesis.num_ws, -1), out_resolution=32,
                                    noise_mode="const")
    alpha = own["image_mask"]
    torch.testing.assert_close(swapped["image"] - own["image"], (1 - alpha) * (bg_swapped - bg_own), rtol=0,
                               atol=4e-6)
    background = (alpha == 0).expand(-1, 3, -1, -1)
    assert torch.equal(swapped["image"][background], bg_swapped[background])
    assert (swapped["image"][background] - own["image"][background]).abs().max() > 1e-2
    with pytest.raises(UserError, match="ws_background"):
        bg_g.synthesis(ws, cameras, ws_background=ws[:1])
    with pytest.raises(UserError, match="ws_background given but the model has a constant background"):
        _generator().synthesis(ws, cameras, ws_background=ws)


def test_constant_background_is_the_rasterizer_blend_and_has_no_generator(bg_g):
    colour = (-1.0, 0.5, 0.2)
    g = _generator(background=colour)
    ws, cameras = _ws(g), _cameras(2)
    out = g.synthesis(ws, cameras, noise_mode="const")
    raster = _render_over_zero(out, cameras, 32)
    expected = 2 * (raster.features + (1 - raster.alpha) * (torch.tensor(colour).view(1, 3, 1, 1) + 1) / 2) - 1
    torch.testing.assert_close(out["image"], expected, rtol=0, atol=2e-6)
    assert out["heads"].background is None and not hasattr(g, "bcg_synthesis")
    # Same seed: the foreground does not depend on the background mode; only bcg_synthesis.* parameters are added.
    assert torch.equal(bg_g.synthesis(ws, cameras, noise_mode="const")["image_mask"], out["image_mask"])
    keys, bg_keys = set(g.state_dict()), set(bg_g.state_dict())
    assert keys < bg_keys and all(k.startswith("bcg_synthesis.") for k in bg_keys - keys)
    with pytest.raises(UserError, match="background_generator"):
        g.render(bg_g.generate(ws, noise_mode="const"), cameras)


def test_tiny_generator_with_background_generator_forward_backward():
    g = _generator(**BG).train()
    cameras = _cameras(2)
    z = torch.randn(2, 16)
    ws = g.mapping(z, cameras)
    out = g.synthesis(ws, cameras, ws_background=ws.roll(1, 0), render_uv=True)
    weights = torch.randn_like(out["image"])
    ((out["image"] * weights).mean() + out["image_uv"].mean()).backward()
    assert out["image"].shape == (2, 3, 32, 32) and torch.isfinite(out["image"]).all()
    grads = [g.bcg_synthesis.b4.const.grad, g.bcg_synthesis.b16.torgb.weight.grad, g.backbone.synthesis.b4.const.grad,
             g.backbone.mapping.fc0.weight.grad]
    assert all(grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0 for grad in grads)
