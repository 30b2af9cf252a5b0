"""Adaptive discriminator augmentation (ADA): a differentiable, per-sample random augmentation of D's inputs.

Every transform fires independently per sample with probability ``p`` (the ``p`` buffer); when it fires its
parameter is drawn from a fixed distribution, otherwise it is the identity (a firing xflip, rotate90 or lumaflip
draws uniformly from its group, identity included, so at p = 1 half of the samples are flipped). Per sample, all
geometric transforms compose into one 3x3 matrix (pixel units, origin at the image centre, x right, y down) that is
applied once with ``grid_sample`` (bicubic, reflection padding); all colour transforms compose into one 4x4 matrix
acting on homogeneous RGB values. Samples whose composed matrix is exactly the identity are passed through unchanged, so
``p = 0`` is the identity exactly and non-augmented samples are never resampled.

Aliasing: a sample whose geometric map shrinks the image (input pixels per output pixel ``s > 1`` in its most
compressed direction) is first low-passed with an isotropic Gaussian of sigma ``0.5 * sqrt(s^2 - 1)`` input pixels
(capped at ``MAX_BLUR_SIGMA``): variances add, so together with the about half-pixel blur of the interpolation kernel
the filter width becomes about half the output pixel spacing, ``0.5 * s``. Magnification, flips, 90-degree rotations
and translations get no blur. Bicubic rather than bilinear sampling keeps fractional shifts sharper (bilinear at a
half-pixel offset removes the Nyquist frequency); it does not reproduce linear ramps exactly and may overshoot.

Channels: images are float NCHW (RGB in [-1, 1] first). Geometric transforms move all C channels identically, so
stacked groups (image, upsampled raw image, mask) stay pixel-aligned. Colour transforms act on the first
``color_channels`` channels, read as consecutive RGB triples that all receive the same per-sample colour matrix;
the remaining channels (masks) get geometry only. For the tri-discriminator stack [image, raw, mask] pass
``color_channels=6`` (image and raw image get one colour change, as EG3D does; the mask none).

Strengths and order follow the ADA paper (Karras et al. 2020): xflip, rotate90, integer translation (<= 1/8 of the
size), isotropic scale (log2 std 0.2), rotation (before and after the anisotropic scale, each firing with
probability 1 - sqrt(1 - p) so that some rotation happens with probability p; uniform angle), anisotropic scale
(log2 std 0.2), fractional translation (std 1/8 of the size); brightness (std 0.2), contrast (log2 std 0.5), flip of
the grey component, hue rotation about the grey axis (uniform angle), saturation (log2 std 1). Camera labels are not
changed by augmentation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dnnlib import UserError

GEOMETRIC_TRANSFORMS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_TRANSFORMS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
TRANSFORM_GROUPS = {
    "b": ("xflip", "rotate90", "xint"),  # pixel blitting
    "g": ("scale", "rotate", "aniso", "xfrac"),  # general geometry
    "c": COLOR_TRANSFORMS,
}
XINT_MAX = 0.125  # integer translation: uniform in [-XINT_MAX, XINT_MAX] * size, rounded to whole pixels
SCALE_LOG2_STD = 0.2
ANISO_LOG2_STD = 0.2
XFRAC_STD = 0.125  # fractional translation std, as a fraction of the image size
BRIGHTNESS_STD = 0.2
CONTRAST_LOG2_STD = 0.5
SATURATION_LOG2_STD = 1.0
MAX_BLUR_SIGMA = 2.0  # anti-aliasing blur cap, input pixels (reached at a minification by about 4x)


def parse_preset(preset: str) -> tuple[str, ...]:
    """Transform names of an augmentation preset, in pipeline order.

    ``preset`` is either group letters ('b' blit, 'g' geometry, 'c' colour; e.g. 'bgc', 'bg', 'c') or a comma-separated
    list of transform names (e.g. 'xflip' or 'xint,brightness').
    """
    if preset and all(ch in TRANSFORM_GROUPS for ch in preset) and len(set(preset)) == len(preset):
        chosen = {name for ch in preset for name in TRANSFORM_GROUPS[ch]}
    else:
        chosen = {name.strip() for name in preset.split(",")}
        unknown = sorted(chosen - set(GEOMETRIC_TRANSFORMS + COLOR_TRANSFORMS))
        if unknown or not preset:
            raise UserError(
                f"augment preset '{preset}': expected group letters from 'bgc' (e.g. 'bgc', 'bg', 'c') or a "
                f"comma-separated list of {list(GEOMETRIC_TRANSFORMS + COLOR_TRANSFORMS)}; unknown: {unknown}"
            )
    return tuple(name for name in GEOMETRIC_TRANSFORMS + COLOR_TRANSFORMS if name in chosen)


# --- Elementary matrices. Arguments are [N] tensors; results are [N, 3, 3] (2-D homogeneous) or [N, 4, 4] (RGB). ---


def _matrices(rows: list[list[Tensor | float]], like: Tensor) -> Tensor:
    """Stack a nested list of [N] tensors / numbers into [N, R, C] on like's device and dtype."""
    n = like.shape[0]
    cols = [torch.as_tensor(v, dtype=like.dtype, device=like.device).expand(n) for row in rows for v in row]
    return torch.stack(cols, dim=-1).reshape(n, len(rows), len(rows[0]))


def translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    """[N, 3, 3] translation by (tx, ty) pixels."""
    return _matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    """[N, 3, 3] scaling of x by sx and y by sy about the image centre."""
    return _matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta: Tensor) -> Tensor:
    """[N, 3, 3] rotation by theta radians about the image centre (x towards y)."""
    c, s = theta.cos(), theta.sin()
    return _matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def rotate90(k: Tensor) -> Tensor:
    """[N, 3, 3] exact rotation by k quarter turns (k integer-valued); entries are exactly 0 or +-1."""
    table = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]], dtype=k.dtype, device=k.device)
    idx = k.long() % 4
    c, s = table[0, idx], table[1, idx]
    return _matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]], k)


def translate3d(t: Tensor) -> Tensor:
    """[N, 4, 4] adding t to all three colour channels."""
    return _matrices([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], t)


def scale3d(s: Tensor) -> Tensor:
    """[N, 4, 4] multiplying all three colour channels by s (contrast about 0, mid-grey in [-1, 1] images)."""
    return _matrices([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], s)


def _grey_projector(like: Tensor) -> Tensor:
    """[4, 4] projector onto the grey axis (1, 1, 1)/sqrt(3), zero in the homogeneous row and column."""
    proj = torch.zeros(4, 4, dtype=like.dtype, device=like.device)
    proj[:3, :3] = 1.0 / 3.0
    return proj


def grey_flip(i: Tensor) -> Tensor:
    """[N, 4, 4] reflection of the grey component (Householder about the grey axis) where i = 1; identity at i = 0."""
    eye = torch.eye(4, dtype=i.dtype, device=i.device)
    return eye - 2 * i[:, None, None] * _grey_projector(i)


def hue_rotation(theta: Tensor) -> Tensor:
    """[N, 4, 4] rotation of the colour by theta radians about the grey axis (Rodrigues' formula)."""
    eye = torch.eye(4, dtype=theta.dtype, device=theta.device)
    a = 1.0 / math.sqrt(3.0)
    cross = torch.tensor([[0, -a, a, 0], [a, 0, -a, 0], [-a, a, 0, 0], [0, 0, 0, 0]], dtype=theta.dtype,
                         device=theta.device)  # [v]_x, the cross product with the grey axis v
    chroma = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=theta.dtype, device=theta.device))
    chroma = chroma - _grey_projector(theta)  # I - v v^T on RGB
    c, s = theta.cos()[:, None, None], theta.sin()[:, None, None]
    return eye + s * cross - (1 - c) * chroma


def saturation(s: Tensor) -> Tensor:
    """[N, 4, 4] scaling of the colour's distance from the grey axis by s (the grey component is kept)."""
    eye = torch.eye(4, dtype=s.dtype, device=s.device)
    chroma = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=s.dtype, device=s.device)) - _grey_projector(s)
    return eye + (s - 1)[:, None, None] * chroma


# --- Resampling. ---


def _minification(inv: Tensor) -> Tensor:
    """[N] largest singular value of the 2x2 linear part of inv [N, 3, 3] (input pixels per output pixel)."""
    a = inv[:, :2, :2]
    fro2 = a.square().sum(dim=(1, 2))
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    return ((fro2 + (fro2.square() - 4 * det.square()).clamp_min(0).sqrt()) / 2).sqrt()


def _blur_per_sample(x: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Separable Gaussian blur of x [N, C, H, W] with per-sample sigma [N] pixels (0 = exact identity); reflect pads."""
    n, c, h, w = x.shape
    radius = min(math.ceil(3 * max_sigma), h - 1, w - 1)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    # sigma is clamped away from 0 so that 0 gives a one-hot kernel: exp(-1 / 2e-6) underflows to exactly 0.
    kernel = torch.exp(-taps.square() / (2 * sigma.clamp_min(1e-3).square()[:, None]))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, K]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, [radius, radius, 0, 0], mode="reflect"), kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, [0, 0, radius, radius], mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def apply_geometry(images: Tensor, inv: Tensor, antialias: bool = True) -> Tensor:
    """Resample images [N, C, H, W] with per-sample inverse maps inv [N, 3, 3] (output pixel -> input pixel,
    pixel units with the origin at the image centre, x right, y down). Bicubic, reflection padding; samples whose
    inv is exactly the identity are returned unchanged. ``antialias`` blurs minified samples first (module docstring).
    """
    n, _, h, w = images.shape
    x = images
    if antialias:
        sigma = (0.5 * (_minification(inv).square() - 1).clamp_min(0).sqrt()).clamp_max(MAX_BLUR_SIGMA)
        x = _blur_per_sample(x, sigma.to(images.dtype), MAX_BLUR_SIGMA)
    # affine_grid works in [-1, 1] units: theta = D^-1 inv D with D = diag(W/2, H/2, 1).
    to_pixels = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=inv.dtype, device=inv.device))
    to_unit = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=inv.dtype, device=inv.device))
    theta = (to_unit @ inv @ to_pixels)[:, :2, :].to(images.dtype)
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    identity = (inv == torch.eye(3, dtype=inv.dtype, device=inv.device)).all(dim=(1, 2))
    return torch.where(identity[:, None, None, None], images, out)


def apply_color(images: Tensor, matrix: Tensor, color_channels: int) -> Tensor:
    """Apply per-sample colour matrices matrix [N, 4, 4] to the RGB triples among the first ``color_channels``
    channels of images [N, C, H, W]; other channels pass through. Samples with an identity matrix are unchanged.
    """
    n, c, h, w = images.shape
    rgb = images[:, :color_channels].reshape(n, color_channels // 3, 3, h, w)
    m = matrix.to(images.dtype)
    out = torch.einsum("nij,ngjhw->ngihw", m[:, :3, :3], rgb) + m[:, :3, 3][:, None, :, None, None]
    identity = (matrix == torch.eye(4, dtype=matrix.dtype, device=matrix.device)).all(dim=(1, 2))
    out = torch.where(identity[:, None, None, None, None], rgb, out).reshape(n, color_channels, h, w)
    return torch.cat([out, images[:, color_channels:]], dim=1)


# --- The pipeline. ---


class _Draws:
    """Random numbers for one batch: drawn in float32 on the generator's device (or ``device``), so a seed gives the
    same transforms in any working dtype, and returned on ``device`` in ``dtype``."""

    def __init__(
        self, n: int, p: Tensor, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.n, self.generator, self.device, self.dtype = n, generator, device, dtype
        self.draw_device = generator.device if generator is not None else device
        self.p = p.to(device=device, dtype=dtype)

    def uniform(self, *shape: int) -> Tensor:
        """[N, *shape] uniform in [0, 1)."""
        u = torch.rand([self.n, *shape], generator=self.generator, device=self.draw_device)
        return u.to(self.device, self.dtype)

    def normal(self) -> Tensor:
        """[N] standard normal."""
        u = torch.randn([self.n], generator=self.generator, device=self.draw_device)
        return u.to(self.device, self.dtype)

    def gate(self, value: Tensor, prob: Tensor | None = None) -> Tensor:
        """value where a per-sample coin with probability ``prob`` (default p) fires, else 0 (the neutral parameter)."""
        fire = self.uniform() < (self.p if prob is None else prob)
        return torch.where(fire.reshape(-1, *[1] * (value.ndim - 1)), value, torch.zeros_like(value))


class AugmentPipe(torch.nn.Module):
    """ADA augmentation of discriminator inputs; ``p`` (a buffer, saved in the state dict) is the per-transform
    probability. See the module docstring for the transforms, channel handling and anti-aliasing.
    """

    def __init__(self, preset: str = "bgc", p: float = 0.0) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise UserError(f"AugmentPipe: p must be in [0, 1], got {p}")
        self.preset = preset
        self.transforms = parse_preset(preset)
        self.register_buffer("p", torch.tensor(float(p)))

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, transforms={list(self.transforms)}"

    def _sample_geometry(self, draws: _Draws, height: int, width: int) -> Tensor:
        """[N, 3, 3] inverse maps (output pixel -> input pixel) composed from the enabled geometric transforms."""
        inv = torch.eye(3, dtype=draws.dtype, device=draws.device).repeat(draws.n, 1, 1)
        size = torch.tensor([width, height], dtype=draws.dtype, device=draws.device)
        enabled = set(self.transforms)
        # The content undergoes T1, T2, ... in this order, so the sampling map is T1^-1 @ T2^-1 @ ...
        if "xflip" in enabled:
            i = draws.gate(torch.floor(draws.uniform() * 2))
            inv = inv @ scale2d(1 - 2 * i, torch.ones_like(i))
        if "rotate90" in enabled:
            k = draws.gate(torch.floor(draws.uniform() * 4))
            inv = inv @ rotate90(-k)
        if "xint" in enabled:
            t = draws.gate(torch.round((draws.uniform(2) * 2 - 1) * XINT_MAX * size))
            inv = inv @ translate2d(-t[:, 0], -t[:, 1])
        if "scale" in enabled:
            s = torch.exp2(draws.gate(draws.normal() * SCALE_LOG2_STD))
            inv = inv @ scale2d(1 / s, 1 / s)
        p_rot = 1 - torch.sqrt((1 - draws.p).clamp_min(0))  # two chances: P(any rotation) = p
        if "rotate" in enabled:
            theta = draws.gate((draws.uniform() * 2 - 1) * math.pi, p_rot)
            inv = inv @ rotate2d(-theta)
        if "aniso" in enabled:
            s = torch.exp2(draws.gate(draws.normal() * ANISO_LOG2_STD))
            inv = inv @ scale2d(1 / s, s)
        if "rotate" in enabled:
            theta = draws.gate((draws.uniform() * 2 - 1) * math.pi, p_rot)
            inv = inv @ rotate2d(-theta)
        if "xfrac" in enabled:
            t = draws.gate(torch.stack([draws.normal(), draws.normal()], dim=1) * XFRAC_STD * size)
            inv = inv @ translate2d(-t[:, 0], -t[:, 1])
        return inv

    def _sample_color(self, draws: _Draws) -> Tensor:
        """[N, 4, 4] colour matrices composed from the enabled colour transforms (applied in ADA order)."""
        m = torch.eye(4, dtype=draws.dtype, device=draws.device).repeat(draws.n, 1, 1)
        enabled = set(self.transforms)
        if "brightness" in enabled:
            m = translate3d(draws.gate(draws.normal() * BRIGHTNESS_STD)) @ m
        if "contrast" in enabled:
            m = scale3d(torch.exp2(draws.gate(draws.normal() * CONTRAST_LOG2_STD))) @ m
        if "lumaflip" in enabled:
            m = grey_flip(draws.gate(torch.floor(draws.uniform() * 2))) @ m
        if "hue" in enabled:
            m = hue_rotation(draws.gate((draws.uniform() * 2 - 1) * math.pi)) @ m
        if "saturation" in enabled:
            m = saturation(torch.exp2(draws.gate(draws.normal() * SATURATION_LOG2_STD))) @ m
        return m

    def forward(self, images: Tensor, color_channels: int = 3, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch.

        Args:
            images: [N, C, H, W] float; RGB in [-1, 1] in the first ``color_channels`` channels, then e.g. a mask.
            color_channels: how many leading channels are RGB triples that get the colour transforms (a multiple
                of 3, at most C; 0 = geometry only). All C channels get the same geometric transform.
            generator: source of randomness (any device; draws are moved to the images' device); None = torch's
                global generator for the images' device.

        Returns:
            [N, C, H, W] in the input dtype; differentiable to any order with respect to ``images``.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise UserError(f"AugmentPipe: images must be a float [N, C, H, W] tensor, got {images.dtype} "
                            f"{tuple(images.shape)}")
        n, c, h, w = images.shape
        if color_channels % 3 != 0 or not 0 <= color_channels <= c:
            raise UserError(f"AugmentPipe: color_channels must be a multiple of 3 in [0, {c}], got {color_channels}")
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        x = images.to(dtype)
        draws = _Draws(n, self.p, generator, images.device, dtype)
        if any(t in GEOMETRIC_TRANSFORMS for t in self.transforms):
            inv = self._sample_geometry(draws, h, w)
            general = any(t in TRANSFORM_GROUPS["g"] for t in self.transforms)
            x = apply_geometry(x, inv, antialias=general)  # blits never minify: no blur needed
        if any(t in COLOR_TRANSFORMS for t in self.transforms) and color_channels > 0:
            x = apply_color(x, self._sample_color(draws), color_channels)
        return x.to(images.dtype)


class AdaptiveP:
    """The ADA heuristic: raise p when D is over-confident on reals (E[sign(D(real))] > target), lower it otherwise.

    Call ``update`` once per training iteration with that iteration's mean sign of the real logits (over all ranks)
    and its number of real images. Every ``batch_interval`` calls, p moves by
    ``sign(mean_sign - target) * images_in_interval / (adjust_kimg * 1000)`` (mean_sign weighted by images), so p can
    go from 0 to 1 in ``adjust_kimg`` thousand images; p is clamped to [0, 1]. ``state_dict`` holds p and the
    partially accumulated interval, so a resumed run continues exactly.
    """

    def __init__(self, target: float = 0.6, adjust_kimg: float = 500, batch_interval: int = 4, p: float = 0.0) -> None:
        if not -1 <= target <= 1:
            raise UserError(f"AdaptiveP: target (ada_target) must be in [-1, 1], got {target}")
        if adjust_kimg <= 0 or batch_interval < 1 or not 0 <= p <= 1:
            raise UserError(f"AdaptiveP: need adjust_kimg > 0, batch_interval >= 1, 0 <= p <= 1; got adjust_kimg="
                            f"{adjust_kimg}, batch_interval={batch_interval}, p={p}")
        self.target, self.adjust_kimg, self.batch_interval = float(target), float(adjust_kimg), int(batch_interval)
        self.p = float(p)
        self._sign_sum: float | Tensor = 0.0  # sum over calls of mean_sign * batch_images
        self._images = 0
        self._calls = 0

    def update(self, real_sign_mean: float | Tensor, batch_images: int) -> float:
        """Record one iteration (mean of sign(D(real)) in [-1, 1], number of real images); returns the current p.

        A tensor ``real_sign_mean`` stays on its device until the interval completes (one host sync per interval).
        """
        if batch_images <= 0:
            raise UserError(f"AdaptiveP.update: batch_images must be positive, got {batch_images}")
        self._sign_sum = self._sign_sum + real_sign_mean * batch_images
        self._images += batch_images
        self._calls += 1
        if self._calls >= self.batch_interval:
            mean_sign = float(self._sign_sum) / self._images
            step = math.copysign(1.0, mean_sign - self.target) if mean_sign != self.target else 0.0
            self.p = min(max(self.p + step * self._images / (self.adjust_kimg * 1000), 0.0), 1.0)
            self._sign_sum, self._images, self._calls = 0.0, 0, 0
        return self.p

    def state_dict(self) -> dict[str, Any]:
        """p and the partial interval as plain numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {"p": self.p, "sign_sum": float(self._sign_sum), "images": self._images, "calls": self._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        expected = {"p", "sign_sum", "images", "calls"}
        if set(state) != expected:
            raise UserError(f"AdaptiveP state: expected keys {sorted(expected)}, got {sorted(state)}")
        self.p, self._sign_sum = float(state["p"]), float(state["sign_sum"])
        self._images, self._calls = int(state["images"]), int(state["calls"])
