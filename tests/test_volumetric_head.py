"""Volumetric head generator against independent computations: per-ray quadrature loops over ``sample``, a hand-written
offset network, translated camera labels, closed-form compositing with an empty volume, and EG3D's FFHQ-512 state
dict (shared/reference/eg3d-stylegan2-infra.md §1.9) and PanoHead's released configuration (panohead.md §7.2)."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from dnnlib import UserError
from training.cameras import lookat_labels
from training.networks.volumetric_head import VolumetricHeadConfig, VolumetricHeadGenerator
from training.rendering.volume import RenderOptions, camera_rays

F64 = dict(rtol=1e-10, atol=1e-10)
TINY = VolumetricHeadConfig(
    z_dim=8, w_dim=8, channel_base=128, channel_max=16, trigrid_resolution=16, trigrid_depth=2, trigrid_channels=4,
    decoder_hidden=8, feature_channels=4, neural_rendering_resolution=8,
    render=RenderOptions(depth_resolution=6, depth_resolution_importance=6, deterministic=True),
    background_resolution=16, background_channel_base=64, image_resolution=32, sr_up_blocks=1, sr_channels=(8, 4))


def _generator(**overrides) -> VolumetricHeadGenerator:
    """A tiny float64 generator with noise added to every parameter (so zero-initialised biases, noise strengths and
    the offset network's last layer matter too); camera offsets of a few hundredths of a world unit, so that the head
    stays inside the ray range."""
    G = VolumetricHeadGenerator(dataclasses.replace(TINY, **overrides)).double()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        G.decoder.net[2].bias[0] += 2.0  # denser: masks of ~0.1-0.5 instead of ~0.01
        if G.config.camera_adaptation:
            G.t_mapping.fc1.weight.mul_(0.1)
            G.t_mapping.fc1.bias.mul_(0.1)
    return G


def _cameras(yaws, pitches=None) -> torch.Tensor:
    yaws = torch.tensor(yaws, dtype=torch.float64)
    pitches = torch.zeros_like(yaws) if pitches is None else torch.tensor(pitches, dtype=torch.float64)
    return lookat_labels(math.pi / 2 + yaws, math.pi / 2 - pitches, pivot=(0, 0, 0), dtype=torch.float64)


def test_default_config_is_panohead_release_and_round_trips():
    cfg = VolumetricHeadConfig()
    assert (cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.trigrid_resolution) == (512, 512, 2, 256)
    assert (cfg.trigrid_depth, cfg.trigrid_channels, cfg.trigrid_axes) == (3, 32, "panohead")
    assert (cfg.decoder_activation, cfg.raw_rgb, cfg.background, cfg.camera_adaptation) == ("none", "torgb", True, True)
    assert (cfg.neural_rendering_resolution, cfg.image_resolution, cfg.sr_channels) == (64, 512, (256, 128))
    r = cfg.render
    assert (r.depth_resolution, r.depth_resolution_importance, r.ray_start, r.ray_end, r.box_warp) == (48, 48, 2.25,
                                                                                                        3.3, 1.0)
    assert r.triplane_crop == 0.1 and r.density_shift == 1.0
    for c in (cfg, TINY):
        assert VolumetricHeadConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(UserError, match="unknown keys"):
        VolumetricHeadConfig.from_dict({"trigrid_dept": 3})
    with pytest.raises(UserError, match="unknown keys"):
        VolumetricHeadConfig.from_dict({"render": {"ray_begin": 2.0}})
    with pytest.raises(UserError, match="trigrid_depth"):
        VolumetricHeadConfig.from_dict({"trigrid_depth": "3"})
    with pytest.raises(UserError, match="render.depth_resolution"):
        VolumetricHeadConfig.from_dict({"render": {"depth_resolution": 48.0}})
    with pytest.raises(UserError, match="background"):
        VolumetricHeadConfig(background=1)
    with pytest.raises(UserError, match="trigrid_depth 1"):
        VolumetricHeadConfig(trigrid_axes="eg3d")
    with pytest.raises(UserError, match="raw_rgb"):
        VolumetricHeadConfig(raw_rgb="first3")
    with pytest.raises(UserError, match="white_background"):
        VolumetricHeadConfig(render=RenderOptions(white_background=True))


def test_output_keys_shapes_and_ranges():
    G = _generator()
    z, c = torch.randn(2, 8, dtype=torch.float64), _cameras([0.0, 2.5])
    out = G(z, c, noise_mode="const")
    assert set(out) == {"image", "image_raw", "image_mask", "image_depth", "camera_offset"}
    assert out["image"].shape == (2, 3, 32, 32) and out["image_raw"].shape == (2, 3, 8, 8)
    assert out["image_mask"].shape == out["image_depth"].shape == (2, 1, 8, 8) and out["camera_offset"].shape == (2, 3)
    assert all(torch.isfinite(v).all() for v in out.values())
    mask, depth = out["image_mask"], out["image_depth"]
    assert mask.min() >= 0 and mask.max() <= 1 and mask.max() > 1e-3
    assert depth.min() >= 2.25 and depth.max() <= 3.3
    # Another neural resolution (not a power of two) is an argument; the SR output size does not change.
    other = G(z, c, noise_mode="const", neural_rendering_resolution=6)
    assert other["image_raw"].shape == (2, 3, 6, 6) and other["image"].shape == (2, 3, 32, 32)
    assert G.config.neural_rendering_resolution == 8


def test_offset_network_matches_formula_and_starts_at_zero():
    fresh = VolumetricHeadGenerator(TINY)
    z, c = torch.randn(3, 8), _cameras([0.1, -0.7, 3.0]).float()
    assert torch.equal(fresh.camera_offset(z, c), torch.zeros(3, 3))  # zero-initialised last layer
    G = _generator()
    z, c = z.double(), c.double()
    sd = {k: v for k, v in G.state_dict().items() if k.startswith("t_mapping.")}

    def fc(x, name, act):
        w = sd[f"t_mapping.{name}.weight"]
        y = x @ (w / math.sqrt(w.shape[1])).T + sd[f"t_mapping.{name}.bias"]
        return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y

    def norm(x):
        return x / (x.square().mean(dim=1, keepdim=True) + 1e-8).sqrt()

    delta = fc(fc(torch.cat([norm(z), norm(fc(c, "embed", False))], dim=1), "fc0", True), "fc1", False)
    torch.testing.assert_close(G.camera_offset(z, c), delta, **F64)
    avg = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    G.t_mapping.w_avg.copy_(avg)
    torch.testing.assert_close(G.camera_offset(z, c, truncation_psi=0.25), avg + 0.25 * (delta - avg), **F64)
    torch.testing.assert_close(G.camera_offset(z, c, truncation_psi=0.25, truncation_cutoff=0), delta, **F64)
    G.camera_offset(z, c, update_emas=True)
    torch.testing.assert_close(G.t_mapping.w_avg, 0.998 * avg + 0.002 * delta.mean(0), **F64)
    assert _generator(camera_adaptation=False).camera_offset(z, c) is None


def test_camera_offset_equals_translating_the_camera():
    G = _generator()
    ws = G.mapping(torch.randn(2, 8, dtype=torch.float64), _cameras([0.0, 0.3]))
    c = _cameras([0.2, -0.4], [0.1, 0.0])
    offset = torch.tensor([[0.05, -0.03, 0.1], [-0.08, 0.02, -0.05]], dtype=torch.float64)
    moved = c.clone()
    for axis, entry in enumerate((3, 7, 11)):  # camera centre = column 3 of the row-major cam2world
        moved[:, entry] += offset[:, axis]
    a = G.synthesis(ws, c, camera_offset=offset, noise_mode="const")
    b = G.synthesis(ws, moved, camera_offset=torch.zeros(2, 3, dtype=torch.float64), noise_mode="const")
    for key in ("image", "image_raw", "image_mask", "image_depth"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    torch.testing.assert_close(a["camera_offset"], offset, rtol=0, atol=0)
    unshifted = G.synthesis(ws, c, camera_offset=torch.zeros(2, 3, dtype=torch.float64), noise_mode="const")
    assert (unshifted["image_mask"] - a["image_mask"]).abs().max() > 1e-4
    with pytest.raises(UserError, match="camera_offset"):
        G.synthesis(ws, c)


def test_conditioning_and_rendering_cameras_are_separate():
    G = _generator()
    z = torch.randn(2, 8, dtype=torch.float64)
    c_cond, c_view = _cameras([0.0, 0.5]), _cameras([1.0, -2.0])
    out = G(z, c_cond, c_render=c_view, noise_mode="const")
    ws = G.mapping(z, c_cond)
    expected = G.synthesis(ws, c_view, camera_offset=G.camera_offset(z, c_view), noise_mode="const")
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0)
    same_view = G(z, c_cond, noise_mode="const")  # rendered from c_cond: another view of the same ws
    assert (same_view["image_mask"] - out["image_mask"]).abs().max() > 1e-4
    assert (G.mapping(z, c_view) - ws).abs().max() > 1e-4  # the conditioning camera does change ws
    unconditioned = _generator(pose_conditioning=False)
    torch.testing.assert_close(unconditioned.mapping(z, c_cond), unconditioned.mapping(z, c_view), rtol=0, atol=0)


def test_render_equals_quadrature_over_sample():
    """image_raw/mask/depth equal a per-ray loop of the midpoint rule over σ and features from ``G.sample``."""
    opts = RenderOptions(depth_resolution=10, depth_resolution_importance=0, deterministic=True)
    G = _generator(background=False, raw_rgb="features", camera_adaptation=False, render=opts,
                   neural_rendering_resolution=4)
    ws = G.mapping(torch.randn(1, 8, dtype=torch.float64), _cameras([0.0]))
    c = _cameras([0.3], [0.2])
    out = G.synthesis(ws, c, noise_mode="const")
    origins, dirs = camera_rays(c, 4)
    t = 2.25 + (torch.arange(10, dtype=torch.float64) + 0.5) * (3.3 - 2.25) / 10
    points = origins[0, :, None] + t[None, :, None] * dirs[0, :, None]  # [16, 10, 3]
    raw, feat = G.sample(points.reshape(1, -1, 3), ws, noise_mode="const")
    raw, feat = raw.reshape(16, 10), feat.reshape(16, 10, -1)
    cropped = (points[..., 0].abs() > 0.4) | (points[..., 2].abs() > 0.4)
    raw = torch.where(cropped, -1e3, raw)  # PanoHead's render crop (raw σ = −1000 there)
    for ray in range(16):
        transmittance, mask, colour, depth = 1.0, 0.0, torch.zeros(3, dtype=torch.float64), 0.0
        for i in range(9):
            sigma = F.softplus((raw[ray, i] + raw[ray, i + 1]) / 2 - 1)
            alpha = 1 - torch.exp(-sigma * (t[i + 1] - t[i]))
            weight = transmittance * alpha
            colour = colour + weight * (feat[ray, i, :3] + feat[ray, i + 1, :3]) / 2
            depth = depth + weight * (t[i] + t[i + 1]) / 2
            mask, transmittance = mask + weight, transmittance * (1 - alpha)
        row, col = divmod(ray, 4)
        torch.testing.assert_close(out["image_mask"][0, 0, row, col], mask, **F64)
        torch.testing.assert_close(out["image_raw"][0, :, row, col], colour, **F64)
        torch.testing.assert_close(out["image_depth"][0, 0, row, col], depth / mask, **F64)
    assert out["image_mask"].max() > 0.01 and cropped.any() and not cropped.all()


def test_extract_density_matches_sample_on_the_grid():
    G = _generator()
    ws = G.mapping(torch.randn(2, 8, dtype=torch.float64), _cameras([0.0, 1.0]))
    res = 6
    density = G.extract_density(ws, res, chunk=50, noise_mode="const")
    assert density.shape == (2, res, res, res) and torch.isfinite(density).all() and density.min() >= 0
    points = torch.tensor([[(i + 0.5) / res - 0.5, (j + 0.5) / res - 0.5, (k + 0.5) / res - 0.5]
                           for i in range(res) for j in range(res) for k in range(res)], dtype=torch.float64)
    raw, _ = G.sample(points[None].expand(2, -1, -1), ws, noise_mode="const")
    inside = (points[:, 0].abs() <= 0.4) & (points[:, 2].abs() <= 0.4)  # the render crop
    expected = torch.where(inside, F.softplus(raw[..., 0] - 1), 0.0).reshape(2, res, res, res)
    torch.testing.assert_close(density, expected, **F64)
    assert density[:, 0].abs().max() == 0 and density[:, 1:-1, :, 1:-1].min() > 0
    torch.testing.assert_close(G.extract_density(ws, res, noise_mode="const"), density, **F64)  # other chunking


@pytest.mark.parametrize("activation", ["none", "sigmoid"])
def test_empty_volume_shows_the_background_of_the_given_ws(activation):
    G = _generator(raw_rgb="features", decoder_activation=activation)
    with torch.no_grad():
        G.decoder.net[2].bias[0] = -1e4  # raw σ ≈ −1e4 everywhere → no density, mask 0
    z, c = torch.randn(2, 8, dtype=torch.float64), _cameras([0.0, 0.4])
    ws, other = G.mapping(z, c), G.mapping(torch.randn(2, 8, dtype=torch.float64), c)
    zero = torch.zeros(2, 3, dtype=torch.float64)
    out = G.synthesis(ws, c, camera_offset=zero, ws_background=other, noise_mode="const")
    assert out["image_mask"].abs().max() == 0
    background = G.bcg_synthesis(other, noise_mode="const")  # 16² → resized to the 8² rendering
    expected = F.interpolate(background, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out["image_raw"], expected[:, :3], **F64)
    eg3d_like = _generator(raw_rgb="features", decoder_activation="sigmoid", background=False)
    with torch.no_grad():
        eg3d_like.decoder.net[2].bias[0] = -1e4
    raw = eg3d_like.synthesis(ws, c, camera_offset=zero, noise_mode="const")["image_raw"]
    torch.testing.assert_close(raw, torch.full_like(raw, -1.0), rtol=0, atol=0)  # EG3D: 2F − 1 with F = 0


def test_tiny_generator_forward_backward_on_cpu():
    G = VolumetricHeadGenerator(TINY)  # float32, background, SR and self-adaptation on
    z, c = torch.randn(2, 8), _cameras([0.0, 2.0]).float()
    start = time.perf_counter()
    out = G(z, c, render_options=dataclasses.replace(TINY.render, deterministic=False, density_noise=0.5))
    loss = sum(v.square().mean() for v in out.values())
    loss.backward()
    elapsed = time.perf_counter() - start
    for name in ("backbone.synthesis.b16.torgb.weight", "backbone.mapping.fc0.weight", "decoder.net.0.weight",
                 "bcg_synthesis.b16.conv1.weight", "torgb.weight", "superresolution.block1.conv1.weight",
                 "t_mapping.fc1.weight"):
        grad = G.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name
    assert elapsed < 20, f"tiny G forward+backward took {elapsed:.1f} s"  # ~0.3 s on one idle core


def _eg3d_ffhq512_keys() -> list[tuple[str, tuple]]:
    """EG3D TriPlaneGenerator (FFHQ-512) state dict from §1.9, minus the training loop's ``dataset_label_std``."""
    def layer(p, cin, cout, res, k=3):
        return [(f"{p}.weight", (cout, cin, k, k)), (f"{p}.noise_strength", ()), (f"{p}.bias", (cout,)),
                (f"{p}.resample_filter", (4, 4)), (f"{p}.noise_const", (res, res)),
                (f"{p}.affine.weight", (cin, 512)), (f"{p}.affine.bias", (cin,))]

    def torgb(p, cin, cout):
        return [(f"{p}.weight", (cout, cin, 1, 1)), (f"{p}.bias", (cout,)), (f"{p}.affine.weight", (cin, 512)),
                (f"{p}.affine.bias", (cin,))]

    def block(p, cin, cout, res, img):
        keys = [(f"{p}.const", (cout, 4, 4))] if cin == 0 else []
        keys += [(f"{p}.resample_filter", (4, 4))] + (layer(f"{p}.conv0", cin, cout, res) if cin else [])
        return keys + layer(f"{p}.conv1", cout, cout, res) + torgb(f"{p}.torgb", cout, img)

    channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    keys = []
    for res, ch in channels.items():
        keys += block(f"backbone.synthesis.b{res}", channels.get(res // 2, 0), ch, res, 96)
    keys += [("backbone.mapping.w_avg", (512,)), ("backbone.mapping.embed.weight", (512, 25)),
             ("backbone.mapping.embed.bias", (512,)), ("backbone.mapping.fc0.weight", (512, 1024)),
             ("backbone.mapping.fc0.bias", (512,)), ("backbone.mapping.fc1.weight", (512, 512)),
             ("backbone.mapping.fc1.bias", (512,))]
    keys += block("superresolution.block0", 32, 256, 256, 3) + block("superresolution.block1", 256, 128, 512, 3)
    return keys + [("decoder.net.0.weight", (64, 32)), ("decoder.net.0.bias", (64,)),
                   ("decoder.net.2.weight", (33, 64)), ("decoder.net.2.bias", (33,))]


def test_eg3d_configuration_state_dict_matches_eg3d():
    cfg = VolumetricHeadConfig(trigrid_depth=1, trigrid_axes="eg3d", decoder_activation="sigmoid", raw_rgb="features",
                               background=False, camera_adaptation=False, render=RenderOptions(triplane_crop=None))
    with torch.device("meta"):
        G = VolumetricHeadGenerator(cfg)
    assert [(k, tuple(v.shape)) for k, v in G.state_dict().items()] == _eg3d_ffhq512_keys()
    assert sum(p.numel() for p in G.parameters()) == 30_662_136  # EG3D's count (§1.9)
    assert G.num_ws == 14
    with torch.device("meta"):
        pano = VolumetricHeadGenerator()
    extra = {k: tuple(v.shape) for k, v in pano.state_dict().items()
             if k.split(".")[0] in ("torgb", "bcg_synthesis", "t_mapping")}
    assert extra["t_mapping.fc0.weight"] == (3, 515) and extra["t_mapping.embed.weight"] == (3, 25)
    assert extra["torgb.weight"] == (3, 32, 1, 1) and pano.bcg_synthesis.num_ws == 12
    assert pano.state_dict()["backbone.synthesis.b256.torgb.weight"].shape == (288, 128, 1, 1)
