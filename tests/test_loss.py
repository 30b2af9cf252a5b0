"""HeadGANLoss against independent computations: softplus closed forms on the logits of a stub discriminator, R1 of
a quadratic discriminator in closed form and of a real tri-discriminator by explicit autograd, a dense 2-D blur
operator, recorded generator / discriminator calls (pose-conditioning swaps, symmetric blur, background swap, style
mixing), closed forms of the camera-offset and density regularisers, direct calls of the Gaussian regularisers, and one
step per phase on tiny generators and discriminators of both families."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from dnnlib import UserError
from torch_utils import training_stats
from torch_utils.ops.filtered_resize import filtered_resize
from training.augment import AugmentPipe
from training.cameras import lookat_labels
from training.gaussian_regularizers import opacity_beta, raw_norm, uv_total_variation
from training.loss import (
    HeadGANLoss,
    LossConfig,
    blur_images,
    blur_sigma,
    gpc_swap_prob,
    swap_with_previous,
)
from training.networks.discriminator import HeadDiscriminator
from training.networks.gaussian_head import GaussianHeadConfig, GaussianHeadGenerator
from training.networks.volumetric_head import VolumetricHeadConfig, VolumetricHeadGenerator
from training.rendering.volume import RenderOptions

N = 2
RES = 32  # image / discriminator resolution of the tiny volumetric generator
GRES = 16  # render / discriminator resolution of the tiny Gaussian generator
NR = 8  # neural rendering resolution of the tiny volumetric generator
VOLUMETRIC = VolumetricHeadConfig(
    z_dim=8,
    w_dim=8,
    channel_base=128,
    channel_max=16,
    trigrid_resolution=16,
    trigrid_depth=2,
    trigrid_channels=4,
    decoder_hidden=8,
    feature_channels=4,
    neural_rendering_resolution=NR,
    render=RenderOptions(depth_resolution=6, depth_resolution_importance=6, deterministic=True),
    background_resolution=16,
    background_channel_base=64,
    image_resolution=RES,
    sr_up_blocks=1,
    sr_channels=(8, 4),
)
GAUSSIAN = GaussianHeadConfig(
    z_dim=16, w_dim=16, uv_resolution=32, channel_base=256, channel_max=32, sample_resolution=12, render_resolution=GRES
)
ALL_GROUPS = ("image", "image_raw", "image_mask")


def _volumetric(**overrides) -> VolumetricHeadGenerator:
    return VolumetricHeadGenerator(dataclasses.replace(VOLUMETRIC, **overrides))


def _gaussian() -> GaussianHeadGenerator:
    g = GaussianHeadGenerator(GAUSSIAN)
    with torch.no_grad():  # non-zero raw positions, so that the position regulariser is not trivially 0
        g.position_conv.weight.normal_(0, 0.3)
    return g


def _discriminator(inputs=ALL_GROUPS, resolution=RES) -> HeadDiscriminator:
    return HeadDiscriminator(
        25,
        resolution,
        inputs=inputs,
        channel_base=128,
        channel_max=16,
        num_fp16_res=0,
        conv_clamp=None,
        mapping_kwargs=dict(num_layers=2),
        epilogue_kwargs=dict(mbstd_group_size=2),
    )


def _cameras(yaws, dtype=torch.float32) -> torch.Tensor:
    yaws = torch.as_tensor(yaws, dtype=dtype)
    return lookat_labels(math.pi / 2 + yaws, torch.full_like(yaws, math.pi / 2), dtype=dtype)


def _reals(dtype=torch.float32, resolution=RES) -> dict[str, torch.Tensor]:
    return {
        "image": torch.rand(N, 3, resolution, resolution, dtype=dtype) * 2 - 1,
        "image_mask": torch.rand(N, 1, resolution, resolution, dtype=dtype),
    }


def _step(loss, phase, gain=1.0, cur_nimg=10**9, real_c=None, gen_c=None, reals=None, z=None, **render_kwargs):
    """One accumulate_gradients call; returns the collector with what it reported."""
    collector = training_stats.Collector("Loss/.*")
    reals = _reals() if reals is None else reals
    real_c = _cameras([0.3, -0.5]) if real_c is None else real_c
    gen_c = _cameras([-0.2, 0.6]) if gen_c is None else gen_c
    z = torch.randn(N, loss._G.z_dim) if z is None else z
    loss.accumulate_gradients(phase, reals, real_c, z, gen_c, gain, cur_nimg, render_kwargs)
    collector.update()
    return collector


def _recorded(module, name):
    """Replace module.<name> by a wrapper that records (args, kwargs, result) of every call."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    setattr(module, name, wrapper)
    return calls


class StubD(torch.nn.Module):
    """Logits scale·c[:, 0] + bias (the images enter with weight 0); records the input groups and labels."""

    def __init__(self, inputs=ALL_GROUPS, resolution=RES):
        super().__init__()
        self.inputs, self.img_resolution = inputs, resolution
        self.scale = torch.nn.Parameter(torch.tensor(3.0))
        self.bias = torch.nn.Parameter(torch.tensor(-2.5))
        self.calls = []

    def forward(self, img, c):
        self.calls.append(({k: v.detach().clone() for k, v in img.items()}, c.detach().clone()))
        return self.scale * c[:, :1] + self.bias + 0 * sum(v.sum() for v in img.values())


class QuadraticD(torch.nn.Module):
    """Logits Σ_g a_g·Σ x_g² (float64): ∇_{x_g} = 2 a_g x_g in closed form."""

    def __init__(self):
        super().__init__()
        self.inputs, self.img_resolution = ALL_GROUPS, RES
        self.a = torch.nn.ParameterDict(
            {
                k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64))
                for k, v in zip(ALL_GROUPS, (0.7, -1.3, 2.1), strict=True)
            }
        )

    def forward(self, img, c):
        return sum(self.a[k] * img[k].square().sum(dim=(1, 2, 3)) for k in self.inputs)[:, None]


def _grads(module) -> list:
    return [p.grad for p in module.parameters()]


# ---------------------------------------------------------------------------------------------------------------------
# Config, schedules and pure helpers


def test_config_errors_name_the_field():
    for field, value in [
        ("r1_gamma", -1.0),
        ("gpc_prob", 1.5),
        ("r1_interval", 0),
        ("density_reg_interval", 2.0),
        ("blur_fade_kimg", float("nan")),
        ("uv_tv_threshold", 0.0),
        ("style_mixing_prob", True),
    ]:
        with pytest.raises(UserError, match=f"LossConfig.{field}"):
            LossConfig(**{field: value})
    regs = LossConfig(
        position_reg=0.3, scale_reg=0.2, opacity_beta_reg=0.7, uv_tv_reg=3.0, uv_tv_threshold=0.05
    ).gaussian_regularizer_config()
    assert (regs.position, regs.scale, regs.opacity_beta, regs.uv_tv, regs.uv_tv_alpha_threshold) == (
        0.3,
        0.2,
        0.7,
        3.0,
        0.05,
    )


def test_blur_and_gpc_schedules_closed_form():
    assert blur_sigma(0, 10.0, 200) == 10.0
    assert blur_sigma(50_000, 10.0, 200) == pytest.approx(7.5, abs=1e-12)
    assert blur_sigma(200_000, 10.0, 200) == 0.0 and blur_sigma(10**7, 10.0, 200) == 0.0
    assert blur_sigma(0, 10.0, 0) == 0.0
    assert gpc_swap_prob(0, 0.7, 1000) == 1.0
    assert gpc_swap_prob(250_000, 0.7, 1000) == pytest.approx(1 - 0.25 * 0.3, abs=1e-12)
    assert gpc_swap_prob(10**6, 0.7, 1000) == pytest.approx(0.7, abs=1e-12)
    assert gpc_swap_prob(10**8, 0.7, 1000) == pytest.approx(0.7, abs=1e-12)
    assert gpc_swap_prob(0, 0.7, 0) == pytest.approx(0.7, abs=1e-12)


def _brute_force_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Dense 2-D operator: each output pixel is the weighted mean of the in-image pixels within ⌊3σ⌋ in x and in y,
    with weights 2^(−(dx² + dy²)/σ²) (not factored into rows and columns)."""
    radius = math.floor(3 * sigma)
    height, width = x.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = (ys.flatten()[:, None] - ys.flatten()[None, :]).double()
    dx = (xs.flatten()[:, None] - xs.flatten()[None, :]).double()
    w = torch.exp2(-(dx**2 + dy**2) / sigma**2) * ((dx.abs() <= radius) & (dy.abs() <= radius))
    w = (w / w.sum(dim=1, keepdim=True)).to(x.dtype)  # [H·W, H·W]
    return (x.flatten(2) @ w.T).reshape(x.shape)


def test_blur_images_matches_dense_2d_operator():
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    for sigma in (0.4, 1.3, 5.0):  # 5.0: the kernel is wider than the image
        torch.testing.assert_close(blur_images(x, sigma), _brute_force_blur(x, sigma), rtol=1e-12, atol=1e-12)
    assert blur_images(x, 0.33) is x and blur_images(x, 0.0) is x


def test_swap_with_previous_statistics():
    x = torch.arange(20000, dtype=torch.float64)[:, None].expand(-1, 25)
    assert torch.equal(swap_with_previous(x, 1.0), x.roll(1, dims=0))
    assert torch.equal(swap_with_previous(x, 0.0), x)
    y = swap_with_previous(x, 0.3)
    swapped = y[:, 0] != x[:, 0]
    assert torch.equal(y[swapped], x.roll(1, dims=0)[swapped]) and torch.equal(y[~swapped], x[~swapped])
    sd = math.sqrt(0.3 * 0.7 / len(x))
    assert abs(swapped.double().mean().item() - 0.3) < 5 * sd


# ---------------------------------------------------------------------------------------------------------------------
# Adversarial terms and R1


def test_logistic_losses_equal_softplus_closed_forms():
    G, D = _volumetric().requires_grad_(False), StubD()  # G frozen: only D's gradients are checked here
    loss = HeadGANLoss(G, D, LossConfig())
    real_c, gen_c = _cameras([0.3, -1.4]), _cameras([-0.2, 1.1])
    s, b = D.scale.detach(), D.bias.detach()
    fake, real = s * gen_c[:, 0] + b, s * real_c[:, 0] + b
    assert (fake > 0).any() and (fake < 0).any()  # both branches of softplus are exercised

    stats = _step(loss, "Gmain", real_c=real_c, gen_c=gen_c)
    assert stats.mean("Loss/G/loss") == pytest.approx(F.softplus(-fake).mean().item(), rel=1e-6)
    assert stats.mean("Loss/scores/fake") == pytest.approx(fake.mean().item(), rel=1e-6)
    assert all(g is None for g in _grads(D))  # a G phase leaves D alone

    stats = _step(loss, "Dmain", gain=3.0, real_c=real_c, gen_c=gen_c)
    expected = (F.softplus(fake) + F.softplus(-real)).mean().item()
    assert stats.mean("Loss/D/loss") == pytest.approx(expected, rel=1e-6)
    assert stats.mean("Loss/signs/real") == pytest.approx(real.sign().mean().item(), abs=1e-12)
    # d/ds [mean softplus(s c_f + b) + mean softplus(-(s c_r + b))], times the gain
    grad_s = (torch.sigmoid(fake) * gen_c[:, 0]).mean() - (torch.sigmoid(-real) * real_c[:, 0]).mean()
    grad_b = torch.sigmoid(fake).mean() - torch.sigmoid(-real).mean()
    torch.testing.assert_close(D.scale.grad, 3.0 * grad_s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(D.bias.grad, 3.0 * grad_b, rtol=1e-5, atol=1e-7)


def test_r1_closed_form_per_group_with_gain():
    D = QuadraticD()
    loss = HeadGANLoss(_volumetric(), D, LossConfig(r1_gamma=0.7, r1_gamma_mask=3.0))
    reals = _reals(torch.float64)
    stats = _step(loss, "Dreg", gain=16.0, reals=reals, neural_rendering_resolution=NR)  # blur already faded out
    groups = {
        "image": reals["image"],
        "image_raw": filtered_resize(reals["image"], NR),
        "image_mask": filtered_resize(reals["image_mask"], NR),
    }
    gammas = {"image": 0.7, "image_raw": 0.7, "image_mask": 3.0}
    reg = 0.0
    for key, x in groups.items():
        a, energy = D.a[key].detach(), x.square().sum(dim=(1, 2, 3))  # ‖2 a x‖² = 4 a² Σ x²
        assert stats.mean(f"Loss/r1_penalty/{key}") == pytest.approx((4 * a**2 * energy).mean().item(), rel=1e-12)
        reg = reg + gammas[key] / 2 * 4 * a**2 * energy
        # d/da of gain · γ/2 · mean(4 a² Σx²) = gain · 4 γ a · mean(Σx²)
        torch.testing.assert_close(D.a[key].grad, 16.0 * 4 * gammas[key] * a * energy.mean(), rtol=1e-12, atol=0)
    assert stats.mean("Loss/D/reg") == pytest.approx(reg.mean().item(), rel=1e-12)
    assert stats.num("Loss/D/loss") == 0  # Dreg alone has no logistic term


def test_r1_of_a_real_tri_discriminator_by_explicit_autograd():
    torch.manual_seed(3)
    D = _discriminator().double()
    G = _volumetric()
    loss = HeadGANLoss(G, D, LossConfig(r1_gamma=0.5, r1_gamma_mask=2.0, blur_init_sigma=2.0, blur_fade_kimg=1.0))
    reals, real_c = _reals(torch.float64), _cameras([0.3, -0.5], torch.float64)
    _step(loss, "Dreg", gain=16.0, cur_nimg=250, reals=reals, real_c=real_c, neural_rendering_resolution=NR)
    # Oracle: σ = 1.5 at 250 images; groups blurred by σ·(own resolution)/RES before D.
    groups = {
        "image": reals["image"],
        "image_raw": filtered_resize(reals["image"], NR),
        "image_mask": filtered_resize(reals["image_mask"], NR),
    }
    groups = {k: v.clone().requires_grad_(True) for k, v in groups.items()}
    logits = D({k: _brute_force_blur(v, 1.5 * v.shape[-1] / RES) for k, v in groups.items()}, real_c)
    grads = torch.autograd.grad(logits.sum(), list(groups.values()), create_graph=True)
    gammas = (0.5, 0.5, 2.0)
    reg = sum(g / 2 * grad.square().sum(dim=(1, 2, 3)) for g, grad in zip(gammas, grads, strict=True)).mean()
    expected = torch.autograd.grad(16.0 * reg, list(D.parameters()), allow_unused=True)
    for param, want in zip(D.parameters(), expected, strict=True):
        if want is None:
            assert param.grad is None or not param.grad.any()
        else:
            torch.testing.assert_close(param.grad, want, rtol=1e-9, atol=1e-12)
    assert all(g is None for g in _grads(G))


# ---------------------------------------------------------------------------------------------------------------------
# Blur symmetry, conditioning, swaps, augmentation


def test_blur_is_symmetric_for_real_and_fake_and_every_group():
    G, D = _volumetric().requires_grad_(False), StubD()
    synthesis = _recorded(G, "synthesis")
    loss = HeadGANLoss(G, D, LossConfig(blur_init_sigma=10.0, blur_fade_kimg=1.0))
    reals, real_c, gen_c = _reals(), _cameras([0.3, -0.5]), _cameras([-0.2, 0.6])
    _step(loss, "Dmain", cur_nimg=500, reals=reals, real_c=real_c, gen_c=gen_c)  # σ = 5 image pixels
    (fake_in, fake_c), (real_in, real_c_seen) = D.calls
    out = synthesis[0][2]
    real_groups = {
        "image": reals["image"],
        "image_raw": filtered_resize(reals["image"], NR),
        "image_mask": filtered_resize(reals["image_mask"], NR),
    }
    for key in ALL_GROUPS:
        sigma = 5.0 * out[key].shape[-1] / RES  # 5 for the image, 1.25 for the raw image and mask
        torch.testing.assert_close(fake_in[key], _brute_force_blur(out[key], sigma), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(real_in[key], _brute_force_blur(real_groups[key], sigma), rtol=1e-5, atol=1e-5)
    assert torch.equal(fake_c, gen_c) and torch.equal(real_c_seen, real_c)


def test_pose_conditioning_swaps_only_the_conditioning_camera():
    G, D = _volumetric().requires_grad_(False), StubD()
    mapping, offset, synthesis = (_recorded(G, name) for name in ("mapping", "camera_offset", "synthesis"))
    loss = HeadGANLoss(G, D, LossConfig(gpc_prob=0.0, gpc_fade_kimg=1.0))
    gen_c = _cameras([-0.2, 0.6])
    _step(loss, "Gmain", cur_nimg=0, gen_c=gen_c)  # swap probability 1: every sample gets its neighbour's camera
    _step(loss, "Gmain", cur_nimg=1000, gen_c=gen_c)  # probability gpc_prob = 0: never swapped
    assert torch.equal(mapping[0][0][1], gen_c.roll(1, dims=0)) and torch.equal(mapping[1][0][1], gen_c)
    for calls in (offset, synthesis):  # the self-adaptation offset and the render use the sample's own camera
        assert all(torch.equal(call[0][1], gen_c) for call in calls)
    assert all(torch.equal(c, gen_c) for _, c in D.calls)


def test_background_swap_and_style_mixing():
    G, D = _volumetric().requires_grad_(False), StubD()
    mapping, synthesis = _recorded(G, "mapping"), _recorded(G, "synthesis")
    loss = HeadGANLoss(G, D, LossConfig(background_swap_prob=1.0, style_mixing_prob=1.0))
    _step(loss, "Gmain")
    first, second = mapping[0][2], mapping[1][2]
    ws, kwargs = synthesis[0][0][0], synthesis[0][1]
    assert torch.equal(kwargs["ws_background"], ws.roll(1, dims=0))
    for i in range(N):  # ws[:cutoff] from the first z, ws[cutoff:] from the second, 1 <= cutoff < num_ws
        from_first = [torch.equal(ws[i, j], first[i, j]) for j in range(G.num_ws)]
        cutoff = from_first.index(False)
        assert cutoff >= 1 and all(from_first[:cutoff]) and torch.equal(ws[i, cutoff:], second[i, cutoff:])
    with pytest.raises(UserError, match="background_swap_prob"):
        HeadGANLoss(_gaussian(), StubD(("image",)), LossConfig(background_swap_prob=0.2))


def test_background_swap_reaches_gaussian_heads_with_a_background_generator():
    G = GaussianHeadGenerator(dataclasses.replace(GAUSSIAN, background_generator=True, background_resolution=8))
    G.requires_grad_(False)
    synthesis = _recorded(G, "synthesis")
    loss = HeadGANLoss(G, StubD(("image",)), LossConfig(background_swap_prob=1.0))
    _step(loss, "Gmain")
    ws, kwargs = synthesis[0][0][0], synthesis[0][1]
    assert torch.equal(kwargs["ws_background"], ws.roll(1, dims=0))  # probability 1: every head takes its neighbour's


def test_augment_pipe_sees_aligned_groups_at_image_resolution():
    class FlipPipe(torch.nn.Module):
        def forward(self, images, color_channels=3):
            self.color_channels = color_channels
            return images.flip(-1)

    pipe, D = FlipPipe(), StubD()
    loss = HeadGANLoss(_volumetric(), D, LossConfig(), augment_pipe=pipe)
    reals = _reals()
    _step(loss, "Dreg", reals=reals)
    seen = D.calls[0][0]
    assert pipe.color_channels == 6  # image and raw image are colour-augmented together, the mask is not
    torch.testing.assert_close(seen["image"], reals["image"].flip(-1), rtol=0, atol=0)
    for key, source in (("image_raw", "image"), ("image_mask", "image_mask")):
        expected = filtered_resize(filtered_resize(reals[source], NR), RES).flip(-1)
        torch.testing.assert_close(seen[key], expected, rtol=1e-6, atol=1e-6)


def test_r1_through_the_real_augment_pipe():
    D = _discriminator()
    loss = HeadGANLoss(_volumetric(), D, LossConfig(), augment_pipe=AugmentPipe("bgc", p=1.0))
    stats = _step(loss, "Dreg", gain=16.0)
    grads = [g for g in _grads(D) if g is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(stats.mean(f"Loss/r1_penalty/{key}") > 0 for key in ALL_GROUPS)


# ---------------------------------------------------------------------------------------------------------------------
# Regularisers


def test_camera_offset_regularizer_closed_form():
    torch.manual_seed(5)
    G, D = _volumetric(), StubD()
    with torch.no_grad():
        for p in G.t_mapping.parameters():
            p.normal_(0, 0.5)
    loss = HeadGANLoss(G, D, LossConfig(camera_offset_reg=2.5))
    z, gen_c = torch.randn(N, G.z_dim), _cameras([-0.2, 0.6])
    stats = _step(loss, "Gmain", z=z, gen_c=gen_c)
    delta = G.camera_offset(z, gen_c)  # the offset network is deterministic
    term = 2.5 * delta.mean(dim=0).square().sum()
    assert stats.mean("Loss/G/camera_offset") == pytest.approx(term.item(), rel=1e-6)
    # StubD's logits ignore the image, so the offset network's gradient is the regulariser's alone
    expected = torch.autograd.grad(term, list(G.t_mapping.parameters()))
    for param, want in zip(G.t_mapping.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-5, atol=1e-7)


def test_density_regularizer_is_l1_of_sigma_differences():
    G = _volumetric()
    calls = []
    direction = torch.tensor([0.3, -1.2, 0.8])

    def stub_sample(coordinates, ws):
        """σ = (x · d) · mean(ws of the head): linear in x, and differentiable in G's mapping."""
        calls.append((coordinates.detach().clone(), ws.detach().mean(dim=(1, 2))))
        return (coordinates @ direction)[..., None] * ws.mean(dim=(1, 2))[:, None, None], None

    G.sample = stub_sample
    loss = HeadGANLoss(G, StubD(), LossConfig(density_reg=0.4, density_reg_p_dist=0.01))
    assert loss.g_reg_interval == 4
    z = torch.randn(N, G.z_dim)
    torch.manual_seed(7)
    stats = _step(loss, "Greg", gain=1.0, z=z)
    grads_1 = [p.grad.clone() for p in G.backbone.mapping.parameters()]
    G.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    _step(loss, "Greg", gain=4.0, z=z)  # the same draws: the gradients scale with the gain
    for g1, p in zip(grads_1, G.backbone.mapping.parameters(), strict=True):
        assert torch.isfinite(g1).all()
        torch.testing.assert_close(p.grad, 4.0 * g1, rtol=1e-5, atol=1e-8)
    assert any(g.abs().max() > 0 for g in grads_1)

    coordinates, w_mean = calls[0]
    points, jittered = coordinates.split(1000, dim=1)
    assert points.abs().max() <= 0.5 and points.abs().max() > 0.49  # uniform in the tri-grid box (box_warp 1)
    assert (jittered - points).std().item() == pytest.approx(0.01, rel=0.05)
    expected = 0.4 * (((points - jittered) @ direction) * w_mean[:, None]).abs().mean()
    assert stats.mean("Loss/G/density_reg") == pytest.approx(expected.item(), rel=1e-5)
    G.zero_grad(set_to_none=True)
    off = HeadGANLoss(G, StubD(), LossConfig(density_reg=0.0))
    assert off.g_reg_interval is None
    _step(off, "Greg")
    assert all(g is None for g in _grads(G)) and len(calls) == 2


def test_gaussian_regularizers_wired_with_configured_weights():
    G, D = _gaussian().requires_grad_(False), StubD(("image",), GRES)  # values only; gradients: last test
    synthesis = _recorded(G, "synthesis")
    loss = HeadGANLoss(
        G, D, LossConfig(position_reg=0.3, scale_reg=0.2, opacity_beta_reg=0.7, uv_tv_reg=3.0, uv_tv_threshold=0.05)
    )
    assert loss.g_reg_interval is None
    stats = _step(loss, "Gmain")
    _, kwargs, out = synthesis[0]
    assert kwargs["render_uv"] is True
    expected = {
        "position": 0.3 * raw_norm(out["raw"].position),
        "scale": 0.2 * raw_norm(out["raw"].scale),
        "opacity_beta": 0.7 * opacity_beta(out["gaussians"].opacities),
        "uv_tv": 3.0 * uv_total_variation(out["image_uv"], out["image_mask"], 0.05),
    }
    for name, value in expected.items():
        assert value.abs().max() > 0
        assert stats.mean(f"Loss/G/{name}") == pytest.approx(value.mean().item(), rel=1e-6)
    assert stats.num("Loss/G/camera_offset") == 0


# ---------------------------------------------------------------------------------------------------------------------
# One step per phase on tiny real networks


@pytest.mark.parametrize("family", ["volumetric", "gaussian"])
def test_each_phase_touches_only_its_network(family):
    torch.manual_seed(11)
    if family == "volumetric":
        G, D, render_kwargs = _volumetric(), _discriminator(), dict(neural_rendering_resolution=NR)
    else:
        G, D, render_kwargs = _gaussian(), _discriminator(("image",), GRES), dict(render_resolution=GRES)
    loss = HeadGANLoss(G, D, LossConfig(blur_fade_kimg=1.0))
    for phase, gain in (("Gmain", 1.0), ("Greg", 4.0), ("Dmain", 1.0), ("Dreg", 16.0)):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        _step(loss, phase, gain=gain, cur_nimg=300, reals=_reals(resolution=D.img_resolution), **render_kwargs)
        touched, untouched = (G, D) if phase.startswith("G") else (D, G)
        assert all(g is None for g in _grads(untouched)), phase
        grads = [g for g in _grads(touched) if g is not None]
        if phase == "Greg" and family == "gaussian":
            assert not grads  # no density regularisation for Gaussian heads
            continue
        assert grads and all(torch.isfinite(g).all() for g in grads), phase
        assert sum(g.abs().sum() for g in grads) > 0, phase


def test_user_errors():
    loss = HeadGANLoss(_volumetric(), StubD(), LossConfig())
    with pytest.raises(UserError, match="phase"):
        _step(loss, "Gpl")
    with pytest.raises(UserError, match="image_mask"):
        _step(loss, "Dreg", reals={"image": _reals()["image"]})
    with pytest.raises(UserError, match="GaussianHeadGenerator or VolumetricHeadGenerator"):
        HeadGANLoss(torch.nn.Linear(2, 2), StubD(), LossConfig())
    assert HeadGANLoss(_volumetric(), StubD(), LossConfig(r1_gamma=0.0, r1_gamma_mask=0.0)).d_reg_interval is None
    assert HeadGANLoss(_volumetric(), StubD(("image",)), LossConfig(r1_gamma_mask=0.0)).d_reg_interval == 16
