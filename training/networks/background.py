"""Screen-space background: a StyleGAN2 synthesis network driven by the foreground's first ws, and compositing.

Conventions (this file):
- Feature maps are float NCHW; opacities (``weight``/``alpha``) are N1HW in [0, 1].
- Two compositing conventions, both pure functions:
  :func:`composite_features` takes a *premultiplied* foreground ``F = Σ_i w_i f_i`` (the volume renderer's output, and
  also the Gaussian rasterizer's output when it renders over a zero background) and returns ``F + (1 − W)·bg``;
  :func:`composite_rgb` takes an *un-premultiplied* colour ``c`` and returns ``α·c + (1 − α)·bg``.
  Gaussian heads: ``rasterize(..., background=None)`` returns premultiplied colours ``Σ c_i α_i T_i``, so blend a
  generated RGB background with ``composite_features(raster.features, raster.alpha, bg)``, never with
  :func:`composite_rgb` (which would multiply by alpha twice).
- The background is a 2-D image: it never sees the rendering camera. It receives the camera only through the ws, i.e.
  through the conditioning camera of the mapping network (PanoHead's design).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dnnlib import UserError
from torch_utils import misc
from training.networks.stylegan2 import SynthesisNetwork


def composite_features(fg_features: torch.Tensor, fg_weight: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Premultiplied "over": ``fg_features + (1 − fg_weight)·bg``.

    Args:
        fg_features: [B, C, H, W] foreground already multiplied by its opacity (volume/rasterizer output).
        fg_weight: [B, 1, H, W] accumulated opacity in [0, 1].
        bg: [B, C, H, W] background features (or RGB).
    Returns:
        [B, C, H, W]; equals ``fg_features`` where the weight is 1 and ``bg`` where it is 0 (and fg is 0).
    """
    _check_composite_shapes("composite_features", fg_features, fg_weight, bg)
    return fg_features + (1 - fg_weight) * bg


def composite_rgb(fg_rgb: torch.Tensor, alpha: torch.Tensor, bg_rgb: torch.Tensor) -> torch.Tensor:
    """Un-premultiplied "over": ``alpha·fg_rgb + (1 − alpha)·bg_rgb``.

    Args:
        fg_rgb: [B, C, H, W] foreground colour NOT multiplied by alpha (e.g. a colour map in [-1, 1]).
        alpha: [B, 1, H, W] foreground opacity in [0, 1].
        bg_rgb: [B, C, H, W] background colour.
    Returns:
        [B, C, H, W].
    """
    _check_composite_shapes("composite_rgb", fg_rgb, alpha, bg_rgb)
    return torch.lerp(bg_rgb, fg_rgb, alpha)


def _check_composite_shapes(name: str, fg: torch.Tensor, weight: torch.Tensor, bg: torch.Tensor) -> None:
    if fg.ndim != 4 or fg.shape != bg.shape or weight.shape != (fg.shape[0], 1, *fg.shape[2:]):
        raise UserError(f"{name}: expected foreground [B, C, H, W], opacity [B, 1, H, W] and background [B, C, H, W] "
                        f"of the same B, H, W (and C); got {list(fg.shape)}, {list(weight.shape)}, {list(bg.shape)}")


class BackgroundGenerator(SynthesisNetwork):
    """StyleGAN2 synthesis network that paints the background behind the foreground (PanoHead).

    Defaults are PanoHead's: 128², 32 feature channels, half the foreground's channel base (16384, so 128 channels at
    128², 256 at 64², 512 below), 'skip' architecture, float32. With these it reads ``num_ws = 12`` ws: the **first 12
    ws of the foreground** (of 14 for a 256² tri-grid backbone); ``num_ws = 2·log2(resolution) − 2`` in general. When
    the foreground has fewer ws, its last w is repeated. It has no mapping network of its own, so its latent is the
    foreground's unless the caller passes other ws (PanoHead's background-swap regulariser rolls ws over the batch).
    Parameter names are those of a SynthesisNetwork (``b4.const``, ``b8.conv0.*``, …, PanoHead's ``bcg_synthesis.*``).
    """

    def __init__(self, w_dim: int = 512, resolution: int = 128, channels: int = 32, channel_base: int = 16384,
                 channel_max: int = 512, **block_kwargs):
        super().__init__(w_dim, resolution, channels, channel_base=channel_base, channel_max=channel_max,
                         **block_kwargs)

    def forward(self, ws: torch.Tensor, out_resolution: int | None = None, antialias: bool = True,
                **block_kwargs) -> torch.Tensor:
        """ws: [B, n ≥ 1, w_dim] foreground ws (the first ``num_ws`` are used) → background [B, channels, R, R].

        ``out_resolution``: bilinearly resize the result to this size when it differs from the network's (with
        ``antialias`` when shrinking, as PanoHead does); None keeps the network resolution.
        block_kwargs: noise_mode, force_fp32, fused_modconv (see SynthesisNetwork).
        """
        misc.assert_shape(ws, [None, None, self.w_dim])
        if ws.shape[1] < 1:
            raise UserError("BackgroundGenerator: ws must hold at least one w, got shape " + str(list(ws.shape)))
        ws = ws[:, : self.num_ws]
        if ws.shape[1] < self.num_ws:
            ws = torch.cat([ws, ws[:, -1:].expand(-1, self.num_ws - ws.shape[1], -1)], dim=1)
        img = super().forward(ws, **block_kwargs)
        if out_resolution is not None and out_resolution != self.img_resolution:
            img = F.interpolate(img, size=(out_resolution, out_resolution), mode="bilinear", align_corners=False,
                                antialias=antialias)
        return img
