"""Training configuration (one frozen dataclass tree, serialised to JSON in every snapshot) and the named presets.

``TrainingConfig`` = family + generator config + discriminator + loss + optimiser + schedule + data + seed. Presets
(``PRESETS``) reproduce the reference recipes as *one* schedule each (the references run them as separate resumed
stages; here later stages start at a given kimg of the same run, so fades such as blur and GPC do not restart):

- ``gghead-ffhq512``: GGHead FFHQ. Stage 1 renders 256² with 256² UV samples; at 6400 kimg render and D grow to 512²
  (new D blocks faded in over 1000 kimg), the UV samples to 512², and the UV-TV (100) and opacity-beta (1) terms switch
  on; at 25000 kimg (beyond the default ``kimg``, reached with ``--kimg 27000`` on 1024² data) render and D grow to
  1024². Batch 32, γ 1, G lr 0.0025, D lr 0.002, EMA 10 kimg, blur 10 → 0 over 200 kimg, GPC 1 → 0.5 over 1000 kimg.
- ``panohead``: PanoHead's released configuration: tri-grid 256² × D 3 × 32, decoder without activation, ToRGB raw
  image, background generator (swap prob 0.2), self-adapting camera (reg 10), tri-discriminator (γ 1 on image/raw,
  γ 1 on the mask), GPC 0.7, density-noise fade 200 kimg, xflip, back views ×4; stage 2 (neural rendering 64 → 128)
  from 25000 kimg, faded over 1000 kimg, to 27000 kimg.
- ``eg3d-ffhq512``: EG3D FFHQ-512: tri-plane (D 1, 'eg3d' axes), sigmoid decoder, raw RGB = first 3 features, no
  background, no camera adaptation, dual D, γ 1, GPC 0.5, density regularisation 0.25 (every 4, p_dist 0.004), NR
  64 → 128 from 25000 kimg over 1000 kimg (EG3D's second stage), 27000 kimg in all.
- ``*-tiny``: CPU variants of the same recipes (64² images, 32² tri-grid/UV map, 16–32² neural rendering or a few
  thousand Gaussians), sized for a training step well under a second on a CPU.

Schedule helpers used by the training loop: :func:`neural_rendering_resolution`, :func:`growth_stage`,
:func:`render_kwargs`, :func:`loss_config_at`, :func:`discriminator_resolution`. Builders: :func:`build_networks`,
:func:`build_loss`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field

import torch

from dnnlib import UserError
from training.config_io import check_field_types, config_from_dict, config_to_dict, replace_field
from training.loss import HeadGANLoss, LossConfig
from training.networks.discriminator import INPUT_KEYS, HeadDiscriminator
from training.networks.gaussian_head import GaussianHeadConfig, GaussianHeadGenerator
from training.networks.volumetric_head import VolumetricHeadConfig, VolumetricHeadGenerator
from training.rendering.volume import RenderOptions

FAMILIES = {"gaussian": GaussianHeadConfig, "volumetric": VolumetricHeadConfig}
AUGMENT_MODES = ("noaug", "ada", "fixed")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """HeadDiscriminator settings (``training.networks.discriminator``); the resolution comes from the generator (or
    the first growth stage), the camera label is the 25-float label (``pose_conditioning=False``: c_dim 0).

    inputs: channel groups, 'image' first, then any of 'image_raw', 'image_mask' (dual: + raw, tri: + raw + mask).
    mbstd_group: minibatch-std group size (the per-device batch must be a multiple of min(group, batch)).
    mapping_layers: depth of the label-embedding mapping network (StyleGAN2: 8, lr multiplier 0.01).
    c_noise: camera-label noise scale (EG3D's disc_c_noise). filter_mode: resizing of raw image and mask to R.
    """

    inputs: tuple[str, ...] = ("image", "image_raw")
    architecture: str = "resnet"
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256.0
    mbstd_group: int = 4
    mapping_layers: int = 8
    pose_conditioning: bool = True
    c_noise: float = 0.0
    filter_mode: str = "antialiased"

    def __post_init__(self) -> None:
        check_field_types(self)
        if not self.inputs or self.inputs[0] != "image" or any(k not in INPUT_KEYS for k in self.inputs):
            raise UserError(f"DiscriminatorConfig.inputs: expected 'image' followed by any of 'image_raw', "
                            f"'image_mask', got {list(self.inputs)}")
        if min(self.channel_base, self.channel_max, self.mbstd_group, self.mapping_layers) < 1:
            raise UserError("DiscriminatorConfig: channel_base, channel_max, mbstd_group, mapping_layers must be >= 1")


@dataclass(frozen=True)
class OptimConfig:
    """Adam settings of G and D before the lazy-regularisation compensation (the loop applies it)."""

    g_lr: float = 0.0025
    d_lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.g_lr <= 0 or self.d_lr <= 0 or self.eps <= 0 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"OptimConfig: need g_lr, d_lr, eps > 0 and betas in [0, 1), got {self}")


@dataclass(frozen=True)
class GrowthStage:
    """One stage of a Gaussian head's progressive growing, active from ``start_kimg`` until the next stage.

    render_resolution: output and discriminator resolution (D grows when it increases; the new blocks are faded in
    linearly over ``fade_kimg`` from ``start_kimg``). sample_resolution: UV sample density (number of Gaussians).
    loss_overrides: LossConfig fields set from this stage on (e.g. {'uv_tv_reg': 100.0}); they persist into later
    stages unless overridden again.
    """

    start_kimg: float
    render_resolution: int
    sample_resolution: int
    fade_kimg: float = 1000.0
    loss_overrides: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.start_kimg < 0 or self.fade_kimg < 0 or min(self.render_resolution, self.sample_resolution) < 1:
            raise UserError(f"GrowthStage: need start_kimg, fade_kimg >= 0 and positive resolutions, got {self}")
        unknown = sorted(set(self.loss_overrides) - {f.name for f in dataclasses.fields(LossConfig)})
        if unknown:
            raise UserError(f"GrowthStage.loss_overrides: unknown LossConfig field(s) {unknown}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Batch, length, EMA, schedules driven by images seen, augmentation and logging cadence.

    batch: total batch over all processes; batch_gpu: per-process chunk (gradients accumulate over chunks).
    kimg: training length in thousands of real images shown. ema_kimg: G_ema half-life (None: batch·10/32);
    ema_rampup: the half-life is at most cur_nimg·ema_rampup (None: no ramp-up).
    neural_rendering_resolution_*: volumetric heads render at ``initial`` until ``start_kimg``, then
    rint(initial·(1−α) + final·α) with α rising linearly to 1 over ``fade_kimg`` (``final`` None: constant).
    density_noise_fade_kimg: volumetric raw-σ noise std falls linearly from 1 to 0 over this many kimg (0: off).
    growth: Gaussian-head stages (the first starts at 0 kimg); empty: the generator config's resolutions throughout.
    augment: 'noaug', 'ada' (p adapted toward ``ada_target``, adjusting by at most 1 over ``ada_kimg`` every
    ``ada_interval`` iterations) or 'fixed' (p = ``augment_p``); augment_spec: AugmentPipe preset string.
    tick_kimg: kimg per progress line; snap: ticks per network snapshot; image_snapshot_ticks: ticks per fakes grid;
    metrics: metric names evaluated at every snapshot.
    """

    batch: int = 32
    batch_gpu: int = 4
    kimg: float = 25000.0
    ema_kimg: float | None = None
    ema_rampup: float | None = 0.05
    neural_rendering_resolution_initial: int = 64
    neural_rendering_resolution_final: int | None = None
    neural_rendering_resolution_start_kimg: float = 0.0
    neural_rendering_resolution_fade_kimg: float = 1000.0
    density_noise_fade_kimg: float = 0.0
    growth: tuple[GrowthStage, ...] = ()
    augment: str = "noaug"
    augment_p: float = 0.0
    augment_spec: str = "bgc"
    ada_target: float = 0.6
    ada_kimg: float = 500.0
    ada_interval: int = 4
    tick_kimg: float = 4.0
    snap: int = 50
    image_snapshot_ticks: int = 50
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.batch < 1 or self.batch_gpu < 1 or self.batch % self.batch_gpu:
            raise UserError(f"ScheduleConfig: batch ({self.batch}) must be a positive multiple of batch_gpu "
                            f"({self.batch_gpu})")
        if self.kimg <= 0 or self.tick_kimg <= 0 or min(self.snap, self.image_snapshot_ticks, self.ada_interval) < 1:
            raise UserError("ScheduleConfig: kimg and tick_kimg must be > 0; snap, image_snapshot_ticks and "
                            "ada_interval >= 1")
        if self.augment not in AUGMENT_MODES:
            raise UserError(f"ScheduleConfig.augment: expected one of {list(AUGMENT_MODES)}, got {self.augment!r}")
        if not 0 <= self.augment_p <= 1 or not 0 < self.ada_target < 1:
            raise UserError(f"ScheduleConfig: augment_p must lie in [0, 1] and ada_target in (0, 1), got "
                            f"{self.augment_p}, {self.ada_target}")
        starts = [s.start_kimg for s in self.growth]
        if self.growth and (starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts))):
            raise UserError(f"ScheduleConfig.growth: stages must start at 0 kimg and in increasing order, got {starts}")
        if any(b.render_resolution < a.render_resolution for a, b in itertools.pairwise(self.growth)):
            raise UserError("ScheduleConfig.growth: render_resolution must not decrease from stage to stage")


@dataclass(frozen=True)
class DataConfig:
    """The training images: ``path`` (zip/folder in EG3D's layout, or 'synthetic', resolved by train.py), masks
    (``mask_path``; None: alpha channel or none), expected ``resolution``, ``xflip`` with mirrored labels, PanoHead's
    ``yaw_range`` filter and ``back_repeat``, ``max_size`` subset, DataLoader ``workers``."""

    path: str | None = None
    mask_path: str | None = None
    resolution: int = 512
    xflip: bool = False
    yaw_range: tuple[float, float] | None = None
    back_repeat: int = 1
    max_size: int | None = None
    workers: int = 3

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.resolution < 4 or self.back_repeat < 1 or self.workers < 0:
            raise UserError(f"DataConfig: need resolution >= 4, back_repeat >= 1, workers >= 0, got {self}")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything a training run needs; ``to_dict`` / ``from_dict`` round-trip exactly through JSON."""

    family: str
    generator: GaussianHeadConfig | VolumetricHeadConfig
    discriminator: DiscriminatorConfig
    loss: LossConfig
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    data: DataConfig = DataConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"TrainingConfig.family: expected one of {list(FAMILIES)}, got {self.family!r}")
        if not isinstance(self.generator, FAMILIES[self.family]):
            raise UserError(f"TrainingConfig.generator: family '{self.family}' needs a "
                            f"{FAMILIES[self.family].__name__}, got {type(self.generator).__name__}")
        check_field_types(self)
        sched = self.schedule
        if self.family == "volumetric" and sched.growth:
            raise UserError("TrainingConfig.schedule.growth: progressive growing is for the 'gaussian' family")
        if self.family == "gaussian" and sched.neural_rendering_resolution_final is not None:
            raise UserError("TrainingConfig.schedule.neural_rendering_resolution_final: for the 'volumetric' family")
        if sched.batch_gpu % min(self.discriminator.mbstd_group, sched.batch_gpu):
            raise UserError(f"TrainingConfig: schedule.batch_gpu ({sched.batch_gpu}) must be a multiple of "
                            f"discriminator.mbstd_group ({self.discriminator.mbstd_group}) or smaller than it")
        reached = [s.render_resolution for s in sched.growth if s.start_kimg < sched.kimg]
        final = reached[-1] if reached else discriminator_resolution(self)
        if final > self.data.resolution:
            raise UserError(f"TrainingConfig: the schedule renders {final}x{final} within kimg={sched.kimg}, but "
                            f"data.resolution is {self.data.resolution}")

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (tuples as lists)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; unknown fields and wrong types raise UserError naming the field."""
        if not isinstance(data, dict):
            raise UserError(f"TrainingConfig: expected a JSON object, got {type(data).__name__}")
        family = data.get("family")
        if family not in FAMILIES:
            raise UserError(f"TrainingConfig.family: expected one of {list(FAMILIES)}, got {family!r}")
        generator = config_from_dict(FAMILIES[family], data.get("generator", {}), "TrainingConfig.generator")
        return config_from_dict(cls, {**data, "generator": generator})

    def to_json(self) -> str:
        """Indented JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, path: str, value: object) -> TrainingConfig:
        """Copy with the field at dotted ``path`` (e.g. 'loss.r1_gamma') set to a JSON-like ``value``."""
        return replace_field(self, path, value)


# ---------------------------------------------------------------------------------------------------------------------
# Schedule helpers (pure functions of the config and the number of real images shown so far)


def discriminator_resolution(config: TrainingConfig, cur_nimg: int = 0) -> int:
    """Input resolution of D at ``cur_nimg``: the growth stage's render resolution, else the generator's output."""
    if config.schedule.growth:
        return growth_stage(config, cur_nimg)[1].render_resolution
    gen = config.generator
    return gen.render_resolution if isinstance(gen, GaussianHeadConfig) else gen.image_resolution


def growth_stage(config: TrainingConfig, cur_nimg: int) -> tuple[int, GrowthStage]:
    """(index, stage) of the Gaussian growth stage active at ``cur_nimg`` (the schedule must have stages)."""
    assert config.schedule.growth, "growth_stage needs schedule.growth"
    index = max(i for i, s in enumerate(config.schedule.growth) if s.start_kimg * 1000 <= cur_nimg)
    return index, config.schedule.growth[index]


def growth_blend(config: TrainingConfig, cur_nimg: int) -> float:
    """Fade-in factor in [0, 1] of the discriminator blocks added by the active growth stage (1 when none)."""
    index, stage = growth_stage(config, cur_nimg)
    if index == 0 or stage.fade_kimg == 0:
        return 1.0
    return min((cur_nimg - stage.start_kimg * 1000) / (stage.fade_kimg * 1000), 1.0)


def neural_rendering_resolution(config: TrainingConfig, cur_nimg: int) -> int:
    """Volumetric rendering resolution at ``cur_nimg`` (see ScheduleConfig)."""
    s = config.schedule
    if s.neural_rendering_resolution_final is None:
        return s.neural_rendering_resolution_initial
    elapsed = cur_nimg - s.neural_rendering_resolution_start_kimg * 1000
    fade = s.neural_rendering_resolution_fade_kimg * 1000
    alpha = 0.0 if elapsed < 0 else 1.0 if fade == 0 else min(elapsed / fade, 1.0)
    initial, final = s.neural_rendering_resolution_initial, s.neural_rendering_resolution_final
    return int(round(initial * (1 - alpha) + final * alpha))


def render_kwargs(config: TrainingConfig, cur_nimg: int) -> dict:
    """Keyword arguments of ``G.synthesis`` / ``G(...)`` for the schedule at ``cur_nimg``.

    Volumetric: ``neural_rendering_resolution`` and, during the density-noise fade, ``render_options`` with
    ``density_noise`` = max(1 − cur_nimg / (fade·1000), 0). Gaussian: ``render_resolution`` and ``sample_resolution``.
    """
    if config.family == "gaussian":
        if not config.schedule.growth:
            return {"render_resolution": config.generator.render_resolution,
                    "sample_resolution": config.generator.sample_resolution}
        stage = growth_stage(config, cur_nimg)[1]
        return {"render_resolution": stage.render_resolution, "sample_resolution": stage.sample_resolution}
    out = {"neural_rendering_resolution": neural_rendering_resolution(config, cur_nimg)}
    fade = config.schedule.density_noise_fade_kimg
    if fade > 0:
        noise = max(1.0 - cur_nimg / (fade * 1000), 0.0)
        out["render_options"] = dataclasses.replace(config.generator.render, density_noise=noise)
    return out


def loss_config_at(config: TrainingConfig, cur_nimg: int) -> LossConfig:
    """``config.loss`` with the loss overrides of every growth stage started by ``cur_nimg`` applied in order."""
    loss = config.loss
    for stage in config.schedule.growth:
        if stage.start_kimg * 1000 <= cur_nimg:
            loss = dataclasses.replace(loss, **stage.loss_overrides)
    return loss


# ---------------------------------------------------------------------------------------------------------------------
# Builders


def _on(device: torch.device | str | None) -> contextlib.AbstractContextManager:
    """Default-device context for building modules; None keeps the caller's (e.g. an enclosing ``torch.device``)."""
    return contextlib.nullcontext() if device is None else torch.device(device)


def make_generator(config: TrainingConfig, device: torch.device | str | None = None) -> torch.nn.Module:
    """A freshly initialised generator of ``config.family`` on ``device`` ('meta': shapes only, cheap).

    A Gaussian head is built on the CPU and then moved: its constructor builds the template mesh from real values.
    """
    if config.family == "gaussian":
        target = torch.get_default_device() if device is None else torch.device(device)
        with torch.device("cpu"):
            return GaussianHeadGenerator(config.generator).to(target)
    with _on(device):
        return VolumetricHeadGenerator(config.generator)


def make_discriminator(config: TrainingConfig, resolution: int, fade_resolution: int | None = None,
                       device: torch.device | str | None = None) -> HeadDiscriminator:
    """A freshly initialised D at ``resolution`` (fading in the blocks above ``fade_resolution`` when given)."""
    d = config.discriminator
    with _on(device):
        return HeadDiscriminator(
            25 if d.pose_conditioning else 0, resolution, inputs=d.inputs, filter_mode=d.filter_mode,
            c_noise=d.c_noise, architecture=d.architecture, channel_base=d.channel_base, channel_max=d.channel_max,
            num_fp16_res=d.num_fp16_res, conv_clamp=d.conv_clamp, mapping_kwargs=dict(num_layers=d.mapping_layers),
            epilogue_kwargs=dict(mbstd_group_size=d.mbstd_group), fade_resolution=fade_resolution)


def build_discriminator(config: TrainingConfig, cur_nimg: int = 0,
                        device: torch.device | str | None = None) -> HeadDiscriminator:
    """D as it is at ``cur_nimg``: grown to the active growth stage, mid-fade while that stage's fade runs."""
    resolution, fade = discriminator_resolution(config, cur_nimg), None
    if config.schedule.growth:
        index, _ = growth_stage(config, cur_nimg)
        previous = config.schedule.growth[index - 1].render_resolution if index > 0 else resolution
        fade = previous if previous < resolution and growth_blend(config, cur_nimg) < 1 else None
    return make_discriminator(config, resolution, fade, device)


def build_networks(config: TrainingConfig, device: torch.device | str | None = None,
                   cur_nimg: int = 0) -> tuple[torch.nn.Module, HeadDiscriminator]:
    """(G, D) freshly initialised on ``device`` ('meta' counts parameters cheaply; None: the current default device),
    D as it is at ``cur_nimg``."""
    return make_generator(config, device), build_discriminator(config, cur_nimg, device)


def build_loss(config: TrainingConfig, G: torch.nn.Module, D: torch.nn.Module,
               augment_pipe: torch.nn.Module | None = None, cur_nimg: int = 0) -> HeadGANLoss:
    """The loss for the schedule stage at ``cur_nimg`` (stage loss overrides applied)."""
    return HeadGANLoss(G, D, loss_config_at(config, cur_nimg), augment_pipe=augment_pipe)


# ---------------------------------------------------------------------------------------------------------------------
# Presets

_GGHEAD_LOSS = dict(r1_gamma=1.0, blur_init_sigma=10.0, blur_fade_kimg=200.0, gpc_prob=0.5, gpc_fade_kimg=1000.0,
                    style_mixing_prob=0.0, density_reg=0.0, background_swap_prob=0.0, camera_offset_reg=0.0,
                    position_reg=0.1, scale_reg=0.05, opacity_beta_reg=0.0, uv_tv_reg=0.0)
_GGHEAD_STAGE2_LOSS = {"uv_tv_reg": 100.0, "opacity_beta_reg": 1.0}
_PANOHEAD_LOSS = dict(r1_gamma=1.0, r1_gamma_mask=1.0, blur_init_sigma=10.0, blur_fade_kimg=200.0, gpc_prob=0.7,
                      gpc_fade_kimg=1000.0, style_mixing_prob=0.0, density_reg=0.0, background_swap_prob=0.2,
                      camera_offset_reg=10.0, position_reg=0.0, scale_reg=0.0)
_EG3D_LOSS = dict(r1_gamma=1.0, blur_init_sigma=10.0, blur_fade_kimg=200.0, gpc_prob=0.5, gpc_fade_kimg=1000.0,
                  style_mixing_prob=0.0, density_reg=0.25, density_reg_interval=4, density_reg_p_dist=0.004,
                  background_swap_prob=0.0, camera_offset_reg=0.0, position_reg=0.0, scale_reg=0.0)
_EG3D_GENERATOR = dict(trigrid_depth=1, trigrid_axes="eg3d", decoder_activation="sigmoid", raw_rgb="features",
                       background=False, camera_adaptation=False)
_TINY_D = DiscriminatorConfig(channel_base=512, channel_max=32, num_fp16_res=0, mapping_layers=2)
_TINY_SCHEDULE = dict(batch=4, batch_gpu=4, ema_kimg=0.5, tick_kimg=0.1, snap=10, image_snapshot_ticks=10)
_TINY_VOLUMETRIC = dict(z_dim=32, w_dim=32, channel_base=512, channel_max=32, trigrid_resolution=32,
                        trigrid_channels=8, decoder_hidden=16, feature_channels=8, neural_rendering_resolution=16,
                        background_resolution=32, background_channel_base=256, image_resolution=64, sr_up_blocks=1,
                        sr_channels=(16, 8), sr_fp16=False)
_TINY_RENDER = dict(depth_resolution=12, depth_resolution_importance=12)
# GGHead's scale constants suit 256² UV samples (spacing ≈ 0.003, initial σ ≈ e^-5.13 ≈ 0.006). The tiny preset starts
# with 32² samples, about 8× sparser, so the initial log-scale moves up by ln(256/32) (σ ≈ 0.024) while the cap stays at
# e^-3: with GGHead's own constants the first tiny heads render as isolated dots instead of a closed surface.
_TINY_GAUSSIAN = dict(z_dim=32, w_dim=32, uv_resolution=32, channel_base=512, channel_max=32, sample_resolution=48,
                      render_resolution=64, scale_offset=-5.0 + math.log(256 / 32))


def _presets() -> dict[str, TrainingConfig]:
    gghead = TrainingConfig(
        family="gaussian", generator=GaussianHeadConfig(),
        discriminator=DiscriminatorConfig(inputs=("image",)),
        loss=LossConfig(**_GGHEAD_LOSS),
        schedule=ScheduleConfig(growth=(
            GrowthStage(0.0, 256, 256, fade_kimg=0.0),
            GrowthStage(6400.0, 512, 512, fade_kimg=1000.0, loss_overrides=_GGHEAD_STAGE2_LOSS),
            GrowthStage(25000.0, 1024, 512, fade_kimg=1000.0))),
        data=DataConfig(resolution=512))
    panohead = TrainingConfig(
        family="volumetric", generator=VolumetricHeadConfig(),
        discriminator=DiscriminatorConfig(inputs=("image", "image_raw", "image_mask")),
        loss=LossConfig(**_PANOHEAD_LOSS),
        schedule=ScheduleConfig(kimg=27000.0, neural_rendering_resolution_final=128,
                                neural_rendering_resolution_start_kimg=25000.0, density_noise_fade_kimg=200.0),
        data=DataConfig(resolution=512, xflip=True, yaw_range=(0.0, 180.0), back_repeat=4))
    eg3d = TrainingConfig(
        family="volumetric",
        generator=VolumetricHeadConfig(**_EG3D_GENERATOR, render=RenderOptions(triplane_crop=None)),
        discriminator=DiscriminatorConfig(inputs=("image", "image_raw")),
        loss=LossConfig(**_EG3D_LOSS),
        schedule=ScheduleConfig(kimg=27000.0, neural_rendering_resolution_final=128,
                                neural_rendering_resolution_start_kimg=25000.0),
        data=DataConfig(resolution=512, xflip=True))
    tiny_gghead = TrainingConfig(
        family="gaussian", generator=GaussianHeadConfig(**_TINY_GAUSSIAN),
        discriminator=dataclasses.replace(_TINY_D, inputs=("image",)),
        loss=dataclasses.replace(gghead.loss, blur_fade_kimg=2.0, gpc_fade_kimg=10.0),
        schedule=ScheduleConfig(**_TINY_SCHEDULE, kimg=20.0, growth=(
            GrowthStage(0.0, 32, 32, fade_kimg=0.0),
            GrowthStage(10.0, 64, 48, fade_kimg=2.0, loss_overrides=_GGHEAD_STAGE2_LOSS))),
        data=DataConfig(resolution=64, workers=0))
    tiny_panohead = TrainingConfig(
        family="volumetric",
        generator=VolumetricHeadConfig(**_TINY_VOLUMETRIC, render=RenderOptions(**_TINY_RENDER)),
        discriminator=dataclasses.replace(_TINY_D, inputs=panohead.discriminator.inputs),
        loss=dataclasses.replace(panohead.loss, blur_fade_kimg=2.0, gpc_fade_kimg=10.0),
        schedule=ScheduleConfig(**_TINY_SCHEDULE, kimg=20.0, neural_rendering_resolution_initial=16,
                                neural_rendering_resolution_final=32, neural_rendering_resolution_start_kimg=10.0,
                                neural_rendering_resolution_fade_kimg=5.0, density_noise_fade_kimg=2.0),
        data=dataclasses.replace(panohead.data, resolution=64, workers=0))
    tiny_eg3d = TrainingConfig(
        family="volumetric",
        generator=VolumetricHeadConfig(**_TINY_VOLUMETRIC, **_EG3D_GENERATOR,
                                       render=RenderOptions(**_TINY_RENDER, triplane_crop=None)),
        discriminator=_TINY_D,
        loss=dataclasses.replace(eg3d.loss, blur_fade_kimg=2.0, gpc_fade_kimg=10.0),
        schedule=dataclasses.replace(tiny_panohead.schedule, density_noise_fade_kimg=0.0),
        data=DataConfig(resolution=64, xflip=True, workers=0))
    return {"gghead-ffhq512": gghead, "panohead": panohead, "eg3d-ffhq512": eg3d, "gghead-tiny": tiny_gghead,
            "panohead-tiny": tiny_panohead, "eg3d-tiny": tiny_eg3d}


PRESETS: dict[str, TrainingConfig] = _presets()


def get_preset(name: str) -> TrainingConfig:
    """The preset called ``name``; UserError listing the presets otherwise."""
    if name not in PRESETS:
        raise UserError(f"--cfg: unknown preset '{name}'; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
