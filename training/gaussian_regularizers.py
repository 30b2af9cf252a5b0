"""GGHead's regularisers for Gaussian heads, as pure functions; ``gaussian_regularizers`` applies their weights.

All terms are per head ([B] tensors; the loss takes their mean) and differentiable.

- Raw position and raw scale: the mean over Gaussians of the L2 norm (not squared) of the pre-activation values
  (weights 0.1 and 0.05 in both of GGHead's stages). At init the raw position is exactly 0; the norm's gradient there is
  0 (not NaN). The raw-scale term pulls log-scales toward −3 − softplus(2) ≈ −5.13.
- Opacity beta: the mean of log(0.1 + α) + log(1.1 − α) − log(0.1) − log(1.1) over the clamped opacities α ∈ [0, 1]:
  0 at α ∈ {0, 1}, largest (log(0.36 / 0.11) ≈ 1.186) at α = 0.5 (weight 1 in stage 2). GGHead uses the constant
  2.20727 and the unclamped opacities in [−0.001, 1.001], where the term dips slightly below 0 and keeps pushing raw
  opacities outward forever; on clamped opacities its minima are exactly 0 at finite raw values.
- UV total variation (weight 100 in stage 2): each head's Gaussians are rendered with their UV coordinates as a
  2-channel feature (``synthesis(..., render_uv=True)`` composites them in the same pass as the colour; background 0).
  Dividing by the accumulated alpha gives the expected UV per pixel; pixels whose alpha is at most ``alpha_threshold``
  are background. The term is mean_v + mean_h, the means over vertically / horizontally neighbouring foreground pixel
  pairs of |Δu| + |Δv|. Neighbouring pixels should show neighbouring template points, so holes (a back surface
  showing through) and floaters raise it. Unlike GGHead (reference note §9.3) nothing is divided by an alpha near 0
  and no white-background un-compositing is needed. Scale: GGHead averages |Δ| over [−1, 1] UV coordinates and a
  third, constant channel, i.e. (2/3)(|Δu| + |Δv|) in our units, so the same scene gives 1.5× GGHead's value here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from dnnlib import UserError
from training.rendering.gaussian_rasterizer import RasterOutput, rasterize
from training.rendering.gaussians import Gaussians

OPACITY_BETA_OFFSET = -math.log(0.1) - math.log(1.1)  # 2.2072749..., makes the beta term 0 at alpha in {0, 1}


@dataclass(frozen=True)
class GaussianRegularizerConfig:
    """Weights of the Gaussian regularisers (0 switches a term off) and the UV-TV foreground threshold.

    Defaults are GGHead's first stage; ``STAGE2_REGULARIZERS`` adds opacity beta (1) and UV TV (100).
    """

    position: float = 0.1
    scale: float = 0.05
    opacity_beta: float = 0.0
    uv_tv: float = 0.0
    uv_tv_alpha_threshold: float = 0.1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"GaussianRegularizerConfig.{field.name}: expected a number >= 0, got {value!r}")
        if not 0 < self.uv_tv_alpha_threshold < 1:
            raise UserError(f"GaussianRegularizerConfig.uv_tv_alpha_threshold: expected a value in (0, 1), got "
                            f"{self.uv_tv_alpha_threshold}")


STAGE2_REGULARIZERS = GaussianRegularizerConfig(opacity_beta=1.0, uv_tv=100.0)


def raw_norm(raw: Tensor) -> Tensor:
    """Mean over Gaussians of the L2 norm over channels: raw [B, N, C] → [B]."""
    return torch.linalg.vector_norm(raw, dim=-1).mean(dim=-1)


def opacity_beta(opacities: Tensor) -> Tensor:
    """Mean over Gaussians of log(0.1 + α) + log(1.1 − α) + OPACITY_BETA_OFFSET: opacities [B, N] in [0, 1] → [B]."""
    return (torch.log(0.1 + opacities) + torch.log(1.1 - opacities) + OPACITY_BETA_OFFSET).mean(dim=-1)


def render_uv(
    gaussians: Gaussians, uv: Tensor, cameras: Tensor, resolution: int, backend: str = "auto"
) -> RasterOutput:
    """Renders the Gaussians with their UV coordinates as colours (background 0).

    gaussians: B scenes of N Gaussians (their colours are ignored); uv: [N, 2] or [B, N, 2] in [0, 1]; cameras:
    [B, 25] labels. Returns features [B, 2, R, R] (premultiplied by alpha), alpha and depth [B, 1, R, R].
    """
    uv = uv.to(gaussians.means.dtype).expand(gaussians.batch_size, -1, -1)
    scene = Gaussians(gaussians.means, gaussians.scales, gaussians.quats, uv, gaussians.opacities)
    return rasterize(scene, cameras, resolution, background=None, backend=backend)


def uv_total_variation(uv_features: Tensor, alpha: Tensor, alpha_threshold: float = 0.1) -> Tensor:
    """L1 total variation of the rendered UV coordinates over foreground pixels.

    uv_features: [B, 2, H, W] UV composited with alpha weights (background 0); alpha: [B, 1, H, W] in [0, 1].
    Returns [B]: mean over vertical foreground pairs of |Δu| + |Δv| plus the same over horizontal pairs (a pair
    counts when both pixels have alpha > alpha_threshold; a direction without such pairs contributes 0).
    """
    foreground = alpha > alpha_threshold
    # Where alpha <= threshold the quotient is never used; clamping keeps it (and its gradient) finite.
    uv = torch.where(foreground, uv_features / alpha.clamp(min=alpha_threshold), torch.zeros_like(uv_features))
    total = uv.new_zeros(uv.shape[0])
    for dim in (2, 3):
        size = uv.shape[dim] - 1
        diff = (uv.narrow(dim, 1, size) - uv.narrow(dim, 0, size)).abs().sum(dim=1)  # [B, H', W']
        pairs = (foreground.narrow(dim, 1, size) & foreground.narrow(dim, 0, size))[:, 0]
        count = pairs.sum(dim=(1, 2))
        total = total + (diff * pairs).sum(dim=(1, 2)) / count.clamp(min=1)
    return total


def gaussian_regularizers(output: Mapping, config: GaussianRegularizerConfig) -> dict[str, Tensor]:
    """The weighted regularisers [B] of a Gaussian-head generator output (``GaussianHeadGenerator.synthesis``).

    Reads ``output['raw']`` (position, scale), ``output['gaussians'].opacities`` and, when ``config.uv_tv > 0``,
    ``output['image_uv']`` and ``output['image_mask']``. Terms with weight 0 are left out of the dict.
    """
    terms = {}
    if config.position > 0:
        terms["position"] = config.position * raw_norm(output["raw"].position)
    if config.scale > 0:
        terms["scale"] = config.scale * raw_norm(output["raw"].scale)
    if config.opacity_beta > 0:
        terms["opacity_beta"] = config.opacity_beta * opacity_beta(output["gaussians"].opacities)
    if config.uv_tv > 0:
        if "image_uv" not in output:
            raise UserError("gaussian_regularizers: uv_tv > 0 needs the UV rendering; call the generator's synthesis "
                            "with render_uv=True")
        tv = uv_total_variation(output["image_uv"], output["image_mask"], config.uv_tv_alpha_threshold)
        terms["uv_tv"] = config.uv_tv * tv
    return terms
