"""Tri-grid feature volumes: layout, sampling at 3-D points, and the small MLP that decodes density and features.

Layout. The StyleGAN2 synthesis network emits ``3·C·D`` channels at the tri-grid resolution H = W (C = 32 features,
D depth cells per plane; D = 1 is a tri-plane). :func:`trigrid_from_synthesis` views them as ``[B, 3, C, D, H, W]``:
channel ``p·C·D + c·D + d`` of the synthesis output is feature ``c`` of depth cell ``d`` on plane ``p`` (C-major,
D-minor inside a plane, as in PanoHead, so its weights keep their meaning).

Axes. World points (y up, face toward +z) are scaled by ``2 / box_warp`` so that the cube ``[-box_warp/2, box_warp/2]³``
maps to ``[-1, 1]³``. In ``grid_sample`` terms each plane reads a (width, height, depth) triple:

- ``'panohead'`` (default): plane 0 = xy-plane (x, y, depth z), plane 1 = xz-plane (x, z, depth y),
  plane 2 = yz-plane (y, z, depth x). Sampling is trilinear over (W, H, D) with zero padding and
  ``align_corners=False``, so depth cell centres sit at ``(2d + 1)/D − 1`` and features fade to zero within half a
  cell outside the box on every axis. With D = 1 this keeps PanoHead's behaviour: the single depth cell fades linearly
  to half its value at the box faces (factor ``1 − |depth|/2`` in normalised units).
- ``'eg3d'``: EG3D's tri-plane (D = 1 only), read with 2-D bilinear sampling (no depth fade) on the planes
  (x, y), (x, z) and (z, x). The third plane is EG3D's transposed xz-plane instead of a yz-plane (NVlabs/eg3d#67);
  this mode exists so that EG3D weights render as they were trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dnnlib import UserError
from training.networks.stylegan2 import FullyConnectedLayer

# For each plane, the world axes (0 = x, 1 = y, 2 = z) that become grid_sample's (W, H[, D]) coordinates.
_PLANE_AXES = {
    "panohead": ((0, 1, 2), (0, 2, 1), (1, 2, 0)),
    "eg3d": ((0, 1), (0, 2), (2, 0)),
}
DECODER_ACTIVATIONS = ("sigmoid", "none", "lrelu")


def trigrid_from_synthesis(x: torch.Tensor, depth: int, channels: int = 32) -> torch.Tensor:
    """View a synthesis output ``x`` [B, 3·channels·depth, H, W] as tri-grid planes [B, 3, channels, depth, H, W]."""
    b, k, h, w = x.shape
    if k != 3 * channels * depth:
        raise UserError(f"tri-grid: synthesis output has {k} channels, expected 3·{channels}·{depth} = "
                        f"{3 * channels * depth} (check trigrid depth / channels in the generator config)")
    return x.reshape(b, 3, channels, depth, h, w)


def sample_trigrid(planes: torch.Tensor, points: torch.Tensor, box_warp: float = 1.0,
                   axes: str = "panohead") -> torch.Tensor:
    """Sample tri-grid features at world points.

    Args:
        planes: [B, 3, C, D, H, W] tri-grid (see module docstring for plane order and axes).
        points: [B, M, 3] world coordinates; the box ``[-box_warp/2, box_warp/2]³`` spans the grid.
        box_warp: world side length of the cube covered by the grid.
        axes: ``'panohead'`` (xy/xz/yz planes, trilinear) or ``'eg3d'`` (xy/xz/zx planes, bilinear, D = 1).
    Returns:
        [B, 3, M, C] features per plane; zero outside the box (beyond the half-cell fade).
    """
    if axes not in _PLANE_AXES:
        raise UserError(f"tri-grid axes '{axes}' is not one of {sorted(_PLANE_AXES)}")
    b, p, c, d, h, w = planes.shape
    m = points.shape[1]
    assert p == 3 and points.shape == (b, m, 3), (planes.shape, points.shape)
    coords = points * (2.0 / box_warp)
    grid = torch.stack([coords[..., list(ax)] for ax in _PLANE_AXES[axes]], dim=1)  # [B, 3, M, 2 or 3]
    if axes == "eg3d":
        if d != 1:
            raise UserError(f"tri-grid axes 'eg3d' needs depth 1 (a tri-plane), got depth {d}")
        out = F.grid_sample(planes.reshape(b * 3, c, h, w), grid.reshape(b * 3, 1, m, 2).to(planes.dtype),
                            mode="bilinear", padding_mode="zeros", align_corners=False)  # [B·3, C, 1, M]
    else:
        out = F.grid_sample(planes.reshape(b * 3, c, d, h, w), grid.reshape(b * 3, 1, 1, m, 3).to(planes.dtype),
                            mode="bilinear", padding_mode="zeros", align_corners=False)  # [B·3, C, 1, 1, M]
    return out.reshape(b, 3, c, m).transpose(2, 3)


class TriGridDecoder(nn.Module):
    """MLP from tri-grid features to raw density and output features (EG3D/PanoHead "OSG" decoder).

    mean over the 3 planes → FC(C→hidden) → softplus → FC(hidden→1+out_features). Output 0 is the raw density
    (activated later by the renderer), the rest are features after ``activation``:
    ``'sigmoid'`` → sigmoid·1.002 − 0.001 (EG3D), ``'none'`` → linear (PanoHead release), ``'lrelu'`` →
    leaky_relu(0.2)·√2. Parameter names match EG3D: ``net.0.weight`` [hidden, C], ``net.0.bias``,
    ``net.2.weight`` [1+out, hidden], ``net.2.bias``; both are StyleGAN2 equalised-lr dense layers (raw weights
    N(0, 1)/lr_multiplier, gains applied at run time). Ray directions are not used (no view dependence).
    """

    def __init__(self, in_features: int = 32, hidden_features: int = 64, out_features: int = 32,
                 activation: str = "sigmoid", lr_multiplier: float = 1.0) -> None:
        super().__init__()
        if activation not in DECODER_ACTIVATIONS:
            raise UserError(f"decoder activation '{activation}' is not one of {list(DECODER_ACTIVATIONS)}")
        self.activation = activation
        self.net = nn.Sequential(
            FullyConnectedLayer(in_features, hidden_features, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden_features, 1 + out_features, lr_multiplier=lr_multiplier),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` [B, 3, M, C] from :func:`sample_trigrid` → (raw σ [B, M, 1], features [B, M, out])."""
        x = features.mean(dim=1)  # [B, M, C]
        x = self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        sigma_raw, feat = x[..., :1], x[..., 1:]
        if self.activation == "sigmoid":
            feat = torch.sigmoid(feat) * 1.002 - 0.001
        elif self.activation == "lrelu":
            feat = F.leaky_relu(feat, 0.2) * math.sqrt(2.0)
        return sigma_raw, feat
