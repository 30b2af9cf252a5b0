"""Presets and config I/O: exact JSON round trips, the reference recipes' numbers, typed errors naming the field,
schedule helpers against closed forms, and every preset building networks that fit together."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dnnlib import UserError
from training.config_io import config_from_dict, config_to_dict, convert_value, replace_field
from training.loss import LossConfig
from training.presets import (
    PRESETS,
    DataConfig,
    DiscriminatorConfig,
    GrowthStage,
    ScheduleConfig,
    TrainingConfig,
    build_discriminator,
    build_networks,
    discriminator_resolution,
    get_preset,
    growth_blend,
    growth_stage,
    loss_config_at,
    make_generator,
    neural_rendering_resolution,
    render_kwargs,
)
from training.synthetic import sample_cameras

FULL = ("gghead-ffhq512", "panohead", "eg3d-ffhq512")
TINY = ("gghead-tiny", "panohead-tiny", "eg3d-tiny")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json_exactly(name):
    config = PRESETS[name]
    text = json.dumps(config.to_dict())
    back = TrainingConfig.from_dict(json.loads(text))
    assert back == config
    assert json.dumps(back.to_dict()) == text  # a fixed point, key order included
    assert isinstance(back.generator, type(config.generator)) and isinstance(back.schedule.growth, tuple)


def test_gghead_recipe():
    """gghead.md §3.4-3.5 and §4."""
    c = PRESETS["gghead-ffhq512"]
    g = c.generator
    assert (c.family, g.uv_resolution, g.color, g.rotation, g.background) == ("gaussian", 256, "sh1", "axis_angle",
                                                                             (1.0, 1.0, 1.0))
    assert (c.optim.g_lr, c.optim.d_lr, c.optim.betas, c.optim.eps) == (0.0025, 0.002, (0.0, 0.99), 1e-8)
    assert (c.schedule.batch, c.schedule.batch_gpu, c.discriminator.mbstd_group) == (32, 4, 4)
    assert (c.loss.r1_gamma, c.loss.position_reg, c.loss.scale_reg, c.loss.opacity_beta_reg, c.loss.uv_tv_reg) == \
        (1.0, 0.1, 0.05, 0.0, 0.0)
    loss = c.loss
    assert (loss.blur_init_sigma, loss.blur_fade_kimg, loss.gpc_prob, loss.gpc_fade_kimg) == (10, 200, 0.5, 1000)
    d = c.discriminator
    assert (d.inputs, d.architecture, d.channel_base, d.num_fp16_res, d.conv_clamp, d.c_noise) == \
        (("image",), "resnet", 32768, 4, 256.0, 0.0)
    stages = [(s.start_kimg, s.render_resolution, s.sample_resolution, s.fade_kimg) for s in c.schedule.growth]
    assert stages == [(0, 256, 256, 0), (6400, 512, 512, 1000), (25000, 1024, 512, 1000)]
    assert c.schedule.growth[1].loss_overrides == {"uv_tv_reg": 100.0, "opacity_beta_reg": 1.0}
    assert (c.schedule.kimg, c.schedule.tick_kimg, c.schedule.snap, c.data.resolution) == (25000, 4, 50, 512)
    assert c.schedule.ema_kimg is None and c.schedule.ema_rampup == 0.05 and c.schedule.augment == "noaug"


def test_panohead_recipe():
    """panohead.md §7.2 (released configuration) plus the 64 -> 128 neural-rendering stage."""
    c = PRESETS["panohead"]
    g = c.generator
    assert (g.trigrid_resolution, g.trigrid_depth, g.trigrid_channels, g.trigrid_axes) == (256, 3, 32, "panohead")
    assert (g.decoder_activation, g.raw_rgb, g.background, g.camera_adaptation) == ("none", "torgb", True, True)
    assert (g.mapping_layers, g.z_dim, g.w_dim, g.channel_base, g.channel_max) == (2, 512, 512, 32768, 512)
    assert (g.render.depth_resolution, g.render.depth_resolution_importance, g.render.ray_start, g.render.ray_end) == \
        (48, 48, 2.25, 3.3)
    assert c.discriminator.inputs == ("image", "image_raw", "image_mask") and c.discriminator.mbstd_group == 4
    loss = c.loss
    assert (loss.r1_gamma, loss.r1_gamma_mask, loss.gpc_prob, loss.gpc_fade_kimg) == (1.0, 1.0, 0.7, 1000.0)
    assert (loss.camera_offset_reg, loss.background_swap_prob, loss.density_reg) == (10.0, 0.2, 0.0)
    assert (c.data.xflip, c.data.back_repeat, c.data.yaw_range) == (True, 4, (0.0, 180.0))
    s = c.schedule
    assert (s.density_noise_fade_kimg, s.batch, s.batch_gpu, c.optim.g_lr, c.optim.d_lr) == (200, 32, 4, 0.0025, 0.002)
    assert (s.neural_rendering_resolution_initial, s.neural_rendering_resolution_final) == (64, 128)


def test_eg3d_recipe():
    """eg3d-stylegan2-infra.md Appendix A (and §4.5 for the 128 stage)."""
    c = PRESETS["eg3d-ffhq512"]
    g = c.generator
    assert (g.trigrid_depth, g.trigrid_axes, g.decoder_activation, g.raw_rgb) == (1, "eg3d", "sigmoid", "features")
    assert (g.background, g.camera_adaptation, g.render.triplane_crop, g.image_resolution) == (False, False, None, 512)
    assert (g.sr_up_blocks, g.sr_channels) == (2, (256, 128))  # SuperresolutionHybrid8XDC
    assert c.discriminator.inputs == ("image", "image_raw") and c.discriminator.num_fp16_res == 4
    loss = c.loss
    assert (loss.r1_gamma, loss.gpc_prob, loss.density_reg, loss.density_reg_interval, loss.density_reg_p_dist) == \
        (1.0, 0.5, 0.25, 4, 0.004)
    assert (loss.camera_offset_reg, loss.background_swap_prob, loss.style_mixing_prob) == (0.0, 0.0, 0.0)
    s = c.schedule
    assert (s.neural_rendering_resolution_initial, s.neural_rendering_resolution_final) == (64, 128)
    assert (s.neural_rendering_resolution_start_kimg, s.neural_rendering_resolution_fade_kimg, s.kimg) == \
        (25000, 1000, 27000)


def test_tiny_presets_are_small_versions_of_their_recipes():
    for tiny, full in zip(TINY, FULL, strict=True):
        t, f = PRESETS[tiny], PRESETS[full]
        assert t.family == f.family and t.discriminator.inputs == f.discriminator.inputs
        assert t.data.resolution == 64 and t.discriminator.num_fp16_res == 0 and t.schedule.batch == 4
        assert (t.loss.r1_gamma, t.loss.gpc_prob, t.loss.density_reg) == (f.loss.r1_gamma, f.loss.gpc_prob,
                                                                          f.loss.density_reg)
    assert PRESETS["panohead-tiny"].generator.trigrid_resolution == 32
    assert PRESETS["gghead-tiny"].generator.uv_resolution == 32
    assert PRESETS["gghead-tiny"].schedule.growth[-1].render_resolution == 64


def test_neural_rendering_resolution_schedule():
    c = PRESETS["eg3d-ffhq512"]  # 64 until 25000 kimg, then linear to 128 over 1000 kimg
    for nimg, expected in ((0, 64), (25_000_000, 64), (25_250_000, 80), (25_500_000, 96), (26_000_000, 128),
                           (30_000_000, 128)):
        assert neural_rendering_resolution(c, nimg) == expected
    assert render_kwargs(c, 25_500_000) == {"neural_rendering_resolution": 96}
    p = PRESETS["panohead"]  # density noise std 1 - nimg / 200k
    kwargs = render_kwargs(p, 50_000)
    assert kwargs["neural_rendering_resolution"] == 64 and kwargs["render_options"].density_noise == 0.75
    assert kwargs["render_options"] == dataclasses.replace(p.generator.render, density_noise=0.75)
    assert render_kwargs(p, 400_000)["render_options"].density_noise == 0.0


def test_growth_schedule_stage_blend_loss_and_discriminator():
    c = PRESETS["gghead-ffhq512"]
    assert growth_stage(c, 6_399_999)[0] == 0 and growth_stage(c, 6_400_000)[0] == 1
    assert [growth_blend(c, n) for n in (0, 6_400_000, 6_650_000, 7_400_000, 9_000_000)] == [1, 0, 0.25, 1, 1]
    assert render_kwargs(c, 7_000_000) == {"render_resolution": 512, "sample_resolution": 512}
    assert [discriminator_resolution(c, n) for n in (0, 6_400_000, 25_000_000)] == [256, 512, 1024]
    assert loss_config_at(c, 6_399_999) == c.loss
    assert loss_config_at(c, 30_000_000) == dataclasses.replace(c.loss, uv_tv_reg=100.0, opacity_beta_reg=1.0)
    tiny = PRESETS["gghead-tiny"]  # 32 -> 64 at 10 kimg, faded over 2 kimg
    with torch.device("meta"):
        before, fading, after = (build_discriminator(tiny, n) for n in (9_999, 11_000, 12_000))
    assert (before.img_resolution, before.fade_resolution) == (32, None)
    assert (fading.img_resolution, fading.fade_resolution) == (64, 32) and "blend" in fading.state_dict()
    assert (after.img_resolution, after.fade_resolution) == (64, None) and "blend" not in after.state_dict()


@pytest.mark.parametrize("name", FULL)
def test_full_presets_build_on_the_meta_device(name):
    config = PRESETS[name]
    G, D = build_networks(config, "meta")
    assert all(p.is_meta for p in [*G.parameters(), *D.parameters()])
    channels = {"image": 3, "image_raw": 3, "image_mask": 1}
    assert D.img_channels == sum(channels[k] for k in config.discriminator.inputs)
    assert D.img_resolution == discriminator_resolution(config) and D.c_dim == 25 and G.c_dim == 25
    assert G.img_resolution == 512 and G.z_dim == 512


@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_build_and_D_reads_G(name):
    """G's output at every schedule point feeds D of the same point (shapes, groups, resolutions agree)."""
    config = PRESETS[name]
    G = make_generator(config).eval()
    c = sample_cameras("ffhq", 4, 0)
    end = int(config.schedule.kimg * 1000)
    for nimg in (0, end):
        D = build_discriminator(config, nimg)
        with torch.no_grad():
            out = G(torch.randn(4, G.z_dim), c, **render_kwargs(config, nimg))
            logits = D(out, c)
        assert out["image"].shape == (4, 3, D.img_resolution, D.img_resolution) and logits.shape == (4, 1)
        assert torch.isfinite(logits).all()
    assert sum(p.numel() for p in G.parameters()) < 200_000 and sum(p.numel() for p in D.parameters()) < 200_000


def test_unknown_fields_and_wrong_types_name_the_field():
    data = PRESETS["eg3d-tiny"].to_dict()
    cases = [
        (("loss", "r1_gama"), 1.0, r"TrainingConfig\.loss: unknown keys \['r1_gama'\]"),
        (("schedule", "batch"), "4", r"TrainingConfig\.schedule\.batch: expected int, got '4'"),
        (("data", "xflip"), 1, r"TrainingConfig\.data\.xflip: expected bool, got 1"),
        (("generator", "render", "ray_start"), "near", r"TrainingConfig\.generator\.render\.ray_start: expected float"),
        (("generator", "sr_channels"), [16], r"TrainingConfig\.generator\.sr_channels: expected a list of 2"),
        (("seed",), 1.5, r"TrainingConfig\.seed: expected int, got 1\.5"),
        (("extra",), 1, r"TrainingConfig: unknown keys \['extra'\]"),
    ]
    for path, value, message in cases:
        broken = json.loads(json.dumps(data))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(UserError, match=message):
            TrainingConfig.from_dict(broken)
    gaussian = PRESETS["gghead-tiny"].to_dict()
    gaussian["schedule"]["growth"][1]["render_resolution"] = 64.0
    with pytest.raises(UserError, match=r"TrainingConfig\.schedule\.growth\[1\]\.render_resolution: expected int"):
        TrainingConfig.from_dict(gaussian)
    gaussian = PRESETS["gghead-tiny"].to_dict()
    gaussian["schedule"]["growth"][1]["loss_overrides"] = {"uv_tv": 1.0}
    with pytest.raises(UserError, match=r"GrowthStage\.loss_overrides: unknown LossConfig field\(s\) \['uv_tv'\]"):
        TrainingConfig.from_dict(gaussian)
    with pytest.raises(UserError, match=r"TrainingConfig\.family: expected one of"):
        TrainingConfig.from_dict({**data, "family": "mesh"})
    with pytest.raises(UserError, match=r"TrainingConfig\.generator: unknown keys \['camera_adaptation'"):
        TrainingConfig.from_dict({**data, "family": "gaussian"})


def test_constructor_checks():
    base = PRESETS["eg3d-tiny"]
    with pytest.raises(UserError, match="needs a GaussianHeadConfig"):
        dataclasses.replace(base, family="gaussian")
    with pytest.raises(UserError, match=r"batch \(6\) must be a positive multiple of batch_gpu \(4\)"):
        dataclasses.replace(base.schedule, batch=6)
    with pytest.raises(UserError, match="mbstd_group"):
        dataclasses.replace(base, schedule=dataclasses.replace(base.schedule, batch=6, batch_gpu=6))
    with pytest.raises(UserError, match="data.resolution is 32"):
        dataclasses.replace(base, data=dataclasses.replace(base.data, resolution=32))
    with pytest.raises(UserError, match="'gaussian' family"):
        dataclasses.replace(base, schedule=dataclasses.replace(base.schedule, growth=(GrowthStage(0, 64, 32),)))
    with pytest.raises(UserError, match="start at 0 kimg and in increasing order"):
        ScheduleConfig(growth=(GrowthStage(0, 32, 32), GrowthStage(0, 64, 32)))
    with pytest.raises(UserError, match=r"ScheduleConfig\.augment"):
        ScheduleConfig(augment="always")
    with pytest.raises(UserError, match=r"DiscriminatorConfig\.inputs"):
        DiscriminatorConfig(inputs=("image_raw",))
    with pytest.raises(UserError, match=r"DataConfig\.yaw_range: expected tuple\[float, float\] \| None"):
        DataConfig(yaw_range=(0.0,))
    with pytest.raises(UserError, match=r"--cfg: unknown preset 'ffhq'"):
        get_preset("ffhq")


def test_config_io_conversions_and_replace():
    """JSON -> Python conversions for each supported annotation, and dotted replacement."""
    assert convert_value(2, float, "x") == 2.0 and isinstance(convert_value(2, float, "x"), float)
    assert convert_value([1, 2.5], tuple[float, ...], "x") == (1.0, 2.5)
    assert convert_value(None, int | None, "x") is None and convert_value(3, int | None, "x") == 3
    assert convert_value({"a": 1}, dict[str, float], "x") == {"a": 1.0}
    for value, hint in ((True, int), (1, bool), ("a", float), ([1, 2, 3], tuple[int, int]), ({1: 2}, dict[str, int])):
        with pytest.raises(UserError, match="^x"):
            convert_value(value, hint, "x")
    stage = config_from_dict(GrowthStage, {"start_kimg": 0, "render_resolution": 8, "sample_resolution": 4})
    assert stage == GrowthStage(0.0, 8, 4) and config_to_dict(stage)["loss_overrides"] == {}
    with pytest.raises(UserError, match=r"GrowthStage: .*sample_resolution"):
        config_from_dict(GrowthStage, {"start_kimg": 0, "render_resolution": 8})
    base = PRESETS["panohead-tiny"]
    changed = replace_field(base, "generator.render.depth_resolution", 6)
    assert changed.generator.render.depth_resolution == 6
    assert dataclasses.replace(changed.generator, render=base.generator.render) == base.generator
    assert base.replace("loss.r1_gamma", 4).loss == dataclasses.replace(base.loss, r1_gamma=4.0)
    assert base.replace("data.yaw_range", [10, 90]).data.yaw_range == (10.0, 90.0)
    with pytest.raises(UserError, match=r"LossConfig: no field 'gama'"):
        base.replace("loss.gama", 1)
    with pytest.raises(UserError, match=r"TrainingConfig.seed is not a config section"):
        base.replace("seed.x", 1)
    assert isinstance(base.loss, LossConfig)
