"""Single-image GAN inversion: latent optimisation in w / w+ (stage 1) and pivotal tuning of G (stage 2, PTI).

Conventions: images float [N, 3, H, W] in [-1, 1]; masks [N, 1, H, W] in [0, 1]; cameras 25-float labels
(``training.cameras``). Both families are driven through ``synthesize``: Gaussian heads take ``G.synthesis(ws, c)``,
volumetric heads additionally a camera offset when they have camera self-adaptation. A w found by optimisation has no
z, so ``G.camera_offset(z, c)`` cannot be asked for it: the offset is the mean offset over the same z samples that give
``w_avg`` (the offset of "the average head" seen by the target camera), held fixed during the optimisation; camera
refinement (``optimize_camera``) adds its own small translation on top of it.

Perceptual loss: LPIPS-style distance between feature vectors of a network ``features(images) -> [N, D]`` that takes
images with values in [0, 255] — NVIDIA's VGG16 TorchScript (StyleGAN2-ADA's projector network, called with
``return_lpips=True``) or any stand-in with the same call. Squared feature distance, summed over D.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dnnlib import UserError
from metrics.detectors import DETECTORS, load_torchscript
from training import cameras
from training.networks.volumetric_head import apply_camera_offset

VGG_OPTION = "--vgg-path"
_LPIPS_SIZE = 256  # the VGG16 LPIPS features are computed on at most 256² images (as StyleGAN2-ADA's projector)


class PerceptualDistance(torch.nn.Module):
    """LPIPS-style distance: ``network(images in [0, 255], resize_images=False, return_lpips=True)`` → [N, D]
    normalised features; distance = Σ_D (f(a) − f(b))². Images larger than 256² are area-downsampled first."""

    def __init__(self, network: Callable[..., Tensor]) -> None:
        super().__init__()
        self.network = network

    def features(self, images: Tensor) -> Tensor:
        """images: [N, 3, H, W] in [-1, 1] → [N, D] features."""
        if images.shape[-1] > _LPIPS_SIZE:
            images = F.interpolate(images, size=(_LPIPS_SIZE, _LPIPS_SIZE), mode="area")
        return self.network((images + 1) * 127.5, resize_images=False, return_lpips=True)

    def forward(self, a: Tensor, b_features: Tensor) -> Tensor:
        """[N] distances between images ``a`` [N, 3, H, W] in [-1, 1] and precomputed features [N, D]."""
        return (self.features(a) - b_features).square().sum(dim=1)


def load_vgg16(vgg_path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> PerceptualDistance:
    """NVIDIA's VGG16 TorchScript (downloaded once into the dnnlib cache, or the local file ``vgg_path``)."""
    url = DETECTORS["vgg16"].url
    source = url if vgg_path is None else str(vgg_path)
    if vgg_path is not None and not os.path.isfile(source):
        raise UserError(f"{VGG_OPTION}: '{source}' is not a file (download vgg16.pt from {url})")
    module = load_torchscript(source, f"{VGG_OPTION} (the file vgg16.pt from {url})", device)
    return PerceptualDistance(module.eval())


class _NoFeatures(torch.nn.Module):
    """A feature network without features: every perceptual distance is 0, so only the pixel loss remains."""

    def forward(self, images: Tensor, resize_images: bool = False, return_lpips: bool = True) -> Tensor:
        return images.new_zeros(images.shape[0], 0)


def pixels_only() -> PerceptualDistance:
    """The perceptual term switched off (``invert.py --no-lpips``): inversion by the pixel MSE alone, no VGG16."""
    return PerceptualDistance(_NoFeatures())


@dataclasses.dataclass(frozen=True)
class InversionOptions:
    """Hyper-parameters of both stages (defaults: StyleGAN2-ADA's projector for stage 1, PTI for stage 2)."""

    space: str = "w"  # 'w': one w shared by all layers; 'wplus': one w per layer
    steps: int = 500  # stage-1 optimisation steps
    lr: float = 0.1  # stage-1 peak learning rate (Adam)
    lr_rampup: float = 0.05  # fraction of the steps with a linear warm-up
    lr_rampdown: float = 0.25  # fraction of the steps with a cosine decay to 0
    noise_factor: float = 0.05  # initial std of the noise on w, in units of the w spread
    noise_ramp: float = 0.75  # fraction of the steps over which the noise decays (quadratically) to 0
    lambda_mse: float = 0.1  # weight of the pixel MSE next to the LPIPS distance
    lambda_wdist: float = 0.01  # weight of ‖w − w_avg‖² / (w_dim·σ_w²)
    w_avg_samples: int = 10000  # z samples for w_avg and the w spread σ_w
    optimize_camera: bool = False  # refine yaw, pitch (rad) and translation (world units)
    camera_prior: float = 10.0  # weight of the squared camera corrections
    camera_lr: float = 0.01  # Adam learning rate of the camera corrections
    pti_steps: int = 0  # stage-2 steps (0: no pivotal tuning)
    pti_lr: float = 3e-4  # stage-2 constant learning rate
    locality_weight: float = 0.0  # weight of the locality regulariser (0: off)
    locality_alpha: float = 30.0  # distance of the locality latents from the pivot (PTI's α)
    locality_samples: int = 4  # fixed latents of the locality regulariser
    record_every: int = 10  # keep a reconstruction every this many steps (for the progress video)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.space not in ("w", "wplus"):
            raise UserError(f"--space: expected 'w' or 'wplus', got {self.space!r}")
        if self.steps < 1 or self.pti_steps < 0 or self.w_avg_samples < 2 or self.record_every < 1:
            raise UserError("--steps must be >= 1, --pti-steps >= 0 (and w_avg_samples >= 2, record_every >= 1)")


@dataclasses.dataclass
class Projection:
    """Result of stage 1: ws [1, num_ws, w_dim]; c [1, 25] (refined) camera; offset [1, 3] or None (self-adaptation);
    frames: reconstructions [1, 3, H, W] every ``record_every`` steps (and after each stage)."""

    ws: Tensor
    c: Tensor
    offset: Tensor | None
    frames: list[Tensor]


def synthesize(G: torch.nn.Module, ws: Tensor, c: Tensor, offset: Tensor | None, synthesis_kwargs: dict) -> Tensor:
    """Image [B, 3, H, W] of ws [B, num_ws, w_dim] from cameras c [B, 25] (offset [B, 3]: self-adaptation or None)."""
    extra = {} if offset is None else {"camera_offset": offset}
    return G.synthesis(ws, c, noise_mode="const", **extra, **synthesis_kwargs)["image"]


@torch.no_grad()
def latent_statistics(G: torch.nn.Module, c: Tensor, num_samples: int,
                      seed: int) -> tuple[Tensor, float, Tensor | None]:
    """(w_avg [1, w_dim], σ_w = sqrt(mean ‖w − w_avg‖²), mean self-adaptation offset [1, 3] or None) over
    ``num_samples`` z ~ N(0, I) mapped with the conditioning camera c [1, 25]."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_samples, G.z_dim, generator=gen).to(c.device)
    w = G.mapping(z, c.expand(num_samples, -1))[:, 0]  # [N, w_dim]
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = float((w - w_avg).square().sum(dim=1).mean().sqrt())
    offset = G.camera_offset(z, c.expand(num_samples, -1)) if hasattr(G, "camera_offset") else None
    return w_avg, w_std, None if offset is None else offset.mean(dim=0, keepdim=True)


def learning_rate_factor(t: float, rampup: float, rampdown: float) -> float:
    """Multiplier of the peak lr at progress t ∈ [0, 1]: linear warm-up over ``rampup``, cosine decay over the last
    ``rampdown`` of the run."""
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return (0.5 - 0.5 * math.cos(down * math.pi)) * up


def refine_camera(c: Tensor, correction: Tensor, pivot: tuple[float, float, float]) -> Tensor:
    """Label c [1, 25] with the camera turned about the pivot by the yaw correction[0] (radians, around world y, as
    the geometric yaw of ``training.views``) and the pitch correction[1] (radians, > 0 = up, around the camera's x
    axis), then moved by correction[2:5] (world units). Differentiable."""
    c2w, K = cameras.decode_label(c)  # [1, 4, 4], [1, 3, 3]
    yaw, pitch = correction[0], -correction[1]  # a positive turn about the camera's x axis moves it down
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    r_yaw = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy]).reshape(3, 3)
    axis = c2w[0, :3, 0]  # camera x axis, world frame
    ax = torch.stack([zero, -axis[2], axis[1], axis[2], zero, -axis[0], -axis[1], axis[0], zero]).reshape(3, 3)
    r_pitch = one * torch.eye(3, dtype=c.dtype, device=c.device) + sp * ax + (1 - cp) * (ax @ ax)  # Rodrigues
    rotation = r_yaw @ r_pitch
    centre = torch.tensor(pivot, dtype=c.dtype, device=c.device)
    position = rotation @ (c2w[0, :3, 3] - centre) + centre
    top = torch.cat([rotation @ c2w[0, :3, :3], position[:, None]], dim=1)
    pose = torch.cat([top, c2w[0, 3:]], dim=0)[None]
    return apply_camera_offset(cameras.encode_label(pose, K), correction[None, 2:5])


def image_losses(synth: Tensor, target: Tensor, target_features: Tensor, lpips: PerceptualDistance,
                 mask: Tensor | None, lambda_mse: float) -> Tensor:
    """λ_mse·MSE + LPIPS of synth vs target ([1, 3, H, W] in [-1, 1]); with a mask [1, 1, H, W] both images are
    compared inside the mask only (outside set to 0 before the features)."""
    if mask is not None:
        synth = synth * mask
    mse = (synth - target).square().mean()
    return lambda_mse * mse + lpips(synth, target_features).sum()


def _masked(target: Tensor, mask: Tensor | None) -> Tensor:
    return target if mask is None else target * mask


def project(G: torch.nn.Module, target: Tensor, c: Tensor, lpips: PerceptualDistance, options: InversionOptions,
            pivot: tuple[float, float, float] = cameras.EG3D_PIVOT, mask: Tensor | None = None,
            synthesis_kwargs: dict | None = None) -> Projection:
    """Stage 1: the w (or w+) whose rendering from camera c [1, 25] matches ``target`` [1, 3, H, W] in [-1, 1].

    Starts from w_avg with the same conditioning camera; Adam with the ramped lr of ``learning_rate_factor``,
    decaying Gaussian noise on w, w-distance regulariser; with ``optimize_camera`` also small yaw / pitch /
    translation corrections of c with a quadratic prior. G is left unchanged.
    """
    kwargs = synthesis_kwargs or {}
    w_avg, w_std, offset = latent_statistics(G, c, options.w_avg_samples, options.seed)
    num = G.num_ws if options.space == "wplus" else 1
    w = w_avg[:, None].repeat(1, num, 1).requires_grad_(True)  # [1, num, w_dim]
    correction = torch.zeros(5, device=c.device, requires_grad=True)
    optimizer = torch.optim.Adam([w], betas=(0.9, 0.999), lr=options.lr)
    cam_optimizer = torch.optim.Adam([correction], lr=options.camera_lr) if options.optimize_camera else None
    target = _masked(target, mask)
    with torch.no_grad():
        target_features = lpips.features(target)
    gen = torch.Generator(device=c.device).manual_seed(options.seed)
    frames = []
    for step in range(options.steps):
        t = step / options.steps
        for group in optimizer.param_groups:
            group["lr"] = options.lr * learning_rate_factor(t, options.lr_rampup, options.lr_rampdown)
        noise_scale = w_std * options.noise_factor * max(0.0, 1.0 - t / options.noise_ramp) ** 2
        noise = torch.randn(w.shape, generator=gen, device=c.device) * noise_scale
        ws = (w + noise).expand(-1, G.num_ws, -1)
        cam = refine_camera(c, correction, pivot) if options.optimize_camera else c
        synth = synthesize(G, ws, cam, offset, kwargs)
        loss = image_losses(synth, target, target_features, lpips, mask, options.lambda_mse)
        loss = loss + options.lambda_wdist * (w - w_avg[:, None]).square().sum() / (num * G.w_dim * w_std**2)
        if cam_optimizer is not None:
            loss = loss + options.camera_prior * correction.square().sum()
            cam_optimizer.zero_grad(set_to_none=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cam_optimizer is not None:
            cam_optimizer.step()
        if step % options.record_every == 0:
            frames.append(synth.detach())
    with torch.no_grad():
        cam = refine_camera(c, correction, pivot) if options.optimize_camera else c
        ws = w.detach().expand(-1, G.num_ws, -1).clone()
        frames.append(synthesize(G, ws, cam, offset, kwargs))
    return Projection(ws=ws, c=cam.detach(), offset=offset, frames=frames)


@torch.no_grad()
def _locality_set(G: torch.nn.Module, projection: Projection, options: InversionOptions,
                  kwargs: dict) -> tuple[Tensor, Tensor]:
    """PTI's locality latents w_r = w_p + α·(w_z − w_p)/‖w_z − w_p‖ [S, num_ws, w_dim] and the un-tuned G's
    images of them [S, 3, H, W] (rendered once: no copy of G is kept)."""
    gen = torch.Generator().manual_seed(options.seed + 1)
    c = projection.c.expand(options.locality_samples, -1)
    z = torch.randn(options.locality_samples, G.z_dim, generator=gen).to(c.device)
    w_z = G.mapping(z, c)
    direction = w_z - projection.ws
    w_r = projection.ws + options.locality_alpha * direction / direction.norm(dim=2, keepdim=True)
    offset = None if projection.offset is None else projection.offset.expand(len(z), -1)
    return w_r, synthesize(G, w_r, c, offset, kwargs)


def pivotal_tuning(G: torch.nn.Module, projection: Projection, target: Tensor, lpips: PerceptualDistance,
                   options: InversionOptions, mask: Tensor | None = None,
                   synthesis_kwargs: dict | None = None) -> list[Tensor]:
    """Stage 2 (PTI): fine-tune G's weights in place at the constant lr ``pti_lr`` so that the pivot
    ``projection.ws`` renders ``target`` [1, 3, H, W]; optional locality regulariser (MSE + LPIPS of the locality
    latents against the un-tuned G's images). Returns reconstructions every ``record_every`` steps. G's parameters
    are left with ``requires_grad`` False, in eval mode."""
    kwargs = synthesis_kwargs or {}
    if options.pti_steps == 0:
        return []
    if options.locality_weight > 0:
        w_r, images_r = _locality_set(G, projection, options, kwargs)
        with torch.no_grad():
            features_r = lpips.features(images_r)
    target = _masked(target, mask)
    with torch.no_grad():
        target_features = lpips.features(target)
    params = [p for p in G.parameters() if p.dtype.is_floating_point]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=options.pti_lr)
    frames = []
    try:
        for step in range(options.pti_steps):
            synth = synthesize(G, projection.ws, projection.c, projection.offset, kwargs)
            loss = image_losses(synth, target, target_features, lpips, mask, options.lambda_mse)
            if options.locality_weight > 0:
                offset = None if projection.offset is None else projection.offset.expand(len(w_r), -1)
                synth_r = synthesize(G, w_r, projection.c.expand(len(w_r), -1), offset, kwargs)
                loss_r = options.lambda_mse * (synth_r - images_r).square().mean() + lpips(synth_r, features_r).mean()
                loss = loss + options.locality_weight * loss_r
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % options.record_every == 0:
                frames.append(synth.detach())
    finally:
        for p in params:
            p.requires_grad_(False)
    with torch.no_grad():
        frames.append(synthesize(G, projection.ws, projection.c, projection.offset, kwargs))
    return frames


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [-1, 1] (peak-to-peak 2), both clamped to [-1, 1] first as
    when they are saved (an untrained generator's values can stray outside)."""
    mse = float((a.double().clamp(-1, 1) - b.double().clamp(-1, 1)).square().mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
