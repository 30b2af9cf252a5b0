"""3D Gaussians: the batched container, covariances from scale and rotation, and EWA projection to the image plane.

Conventions: world space is EG3D's (y up, the face looks toward +z); cameras are world-to-camera 4x4 matrices in OpenCV
axes (x right, y down, z forward) and pixel intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` whose pixel i covers
[i, i + 1), so pixel centres sit at (x + 0.5, y + 0.5). Quaternions are (w, x, y, z).

The numerical constants below are those of 3D Gaussian Splatting (Kerbl et al. 2023) and gsplat's defaults, so that the
pure-PyTorch backend and the CUDA backends render the same image:

- ``EPS2D = 0.3``: a low-pass filter of 0.3 px^2 added to the diagonal of every projected covariance (gsplat's
  ``eps2d``), i.e. each splat is convolved with a pixel-sized Gaussian. Opacities are *not* compensated for the added
  area (gsplat's default ``rasterize_mode='classic'``; 'antialiased' would multiply by sqrt(det Σ' / det(Σ' + 0.3 I))).
- ``NEAR_PLANE = 0.01``: Gaussians whose centre has camera depth z <= 0.01 are dropped.
- ``MAX_ALPHA = 0.99`` and ``ALPHA_THRESHOLD = 1/255``: a Gaussian's alpha at a pixel is ``min(0.99, o exp(-q/2))`` and
  is skipped below 1/255. ``TRANSMITTANCE_THRESHOLD = 1e-4``: a pixel stops compositing before the Gaussian that would
  bring its transmittance to 1e-4 or below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dnnlib import UserError

EPS2D = 0.3
NEAR_PLANE = 0.01
MAX_ALPHA = 0.99
ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_THRESHOLD = 1e-4
# The Jacobian of the perspective projection is evaluated at the centre clamped to 1.3x the half field of view (the
# image plus a 0.3 margin of the half-FOV, as 3DGS and gsplat do), which keeps far off-screen splats from blowing up.
_JACOBIAN_FOV_MARGIN = 0.3


@dataclass(frozen=True)
class Gaussians:
    """A batch of B scenes of N activated 3D Gaussians each.

    Attributes:
        means: [B, N, 3] centres in world space.
        scales: [B, N, 3] standard deviations along the local axes (activated: linear, > 0).
        quats: [B, N, 4] rotations as (w, x, y, z) quaternions, unit norm (normalised again where used).
        colors: [B, N, C] colours or features, any channel count C >= 1.
        opacities: [B, N] in [0, 1].
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    colors: Tensor
    opacities: Tensor

    def __post_init__(self) -> None:
        if self.means.ndim != 3 or self.means.shape[-1] != 3:
            raise UserError(f"Gaussians.means: expected [B, N, 3], got {tuple(self.means.shape)}")
        b, n = self.means.shape[:2]
        expected = {"scales": (b, n, 3), "quats": (b, n, 4), "opacities": (b, n)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise UserError(f"Gaussians.{name}: expected {list(shape)}, got {tuple(getattr(self, name).shape)}")
        if self.colors.ndim != 3 or self.colors.shape[:2] != (b, n) or self.colors.shape[2] < 1:
            raise UserError(f"Gaussians.colors: expected [{b}, {n}, C] with C >= 1, got {tuple(self.colors.shape)}")

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def num_channels(self) -> int:
        return self.colors.shape[2]


@dataclass(frozen=True)
class ProjectedGaussians:
    """Gaussians of B scenes seen by V cameras each, flattened to I = B * V images (image i = b * V + v).

    Attributes:
        means2d: [I, N, 2] projected centres in pixels.
        conics: [I, N, 3] upper triangle (a, b, c) of the inverse projected covariance [[a, b], [b, c]], in 1/px^2.
        depths: [I, N] camera-space z of the centres.
        opacities: [I, N] opacities, 0 for Gaussians culled by the near plane or too faint to reach 1/255.
        extents: [I, N, 2] half-widths (px) of the axis-aligned box outside which the alpha is below 1/255.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    extents: Tensor


def quaternion_to_rotation(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from (w, x, y, z) quaternions [..., 4] (normalised here; need not be unit)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def covariance_3d(scales: Tensor, quats: Tensor) -> Tensor:
    """World covariances Σ = R S Sᵀ Rᵀ [..., 3, 3] from scales [..., 3] (> 0) and (w, x, y, z) quaternions [..., 4]."""
    rs = quaternion_to_rotation(quats) * scales[..., None, :]  # R S: column j of R scaled by s_j
    return rs @ rs.transpose(-1, -2)


def project_gaussians(
    gaussians: Gaussians, world2cam: Tensor, intrinsics: Tensor, width: int, height: int
) -> ProjectedGaussians:
    """EWA splatting (Zwicker et al. 2002): projects every Gaussian into every camera.

    Args:
        gaussians: B scenes of N Gaussians.
        world2cam: [B, V, 4, 4] world-to-camera matrices (OpenCV axes).
        intrinsics: [B, V, 3, 3] pixel intrinsics (zero skew) of a ``width`` x ``height`` image.
    Returns:
        The projected Gaussians of the I = B * V images; Σ' = J W Σ Wᵀ Jᵀ + 0.3 I, with W the rotation part of
        ``world2cam`` and J the Jacobian of the pinhole projection at the (clamped) camera-space centre.
    """
    b, v = world2cam.shape[:2]
    rot, trans = world2cam[..., :3, :3], world2cam[..., :3, 3]
    means_cam = torch.einsum("bvij,bnj->bvni", rot, gaussians.means) + trans[:, :, None, :]  # [B, V, N, 3]
    cov_world = covariance_3d(gaussians.scales, gaussians.quats)  # [B, N, 3, 3]
    cov_cam = torch.einsum("bvij,bnjk,bvlk->bvnil", rot, cov_world, rot)  # [B, V, N, 3, 3]

    x, y, z = means_cam.unbind(-1)
    visible = z > NEAR_PLANE
    z = torch.where(visible, z, torch.ones_like(z))  # keeps culled Gaussians finite (and their gradients zero)
    fx, fy, cx, cy = (intrinsics[..., i, j][..., None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    margin_x = _JACOBIAN_FOV_MARGIN * 0.5 * width / fx
    margin_y = _JACOBIAN_FOV_MARGIN * 0.5 * height / fy
    xz = (x / z).clamp(min=-cx / fx - margin_x, max=(width - cx) / fx + margin_x)
    yz = (y / z).clamp(min=-cy / fy - margin_y, max=(height - cy) / fy + margin_y)
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx / z, zeros, -fx * xz / z, zeros, fy / z, -fy * yz / z], dim=-1).unflatten(-1, (2, 3))
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)  # [B, V, N, 2, 2]
    cov_xx, cov_xy, cov_yy = cov2d[..., 0, 0] + EPS2D, cov2d[..., 0, 1], cov2d[..., 1, 1] + EPS2D
    det = cov_xx * cov_yy - cov_xy * cov_xy
    conics = torch.stack([cov_yy / det, -cov_xy / det, cov_xx / det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    opacities = gaussians.opacities[:, None, :].expand(b, v, -1)
    opacities = torch.where(visible & (opacities >= ALPHA_THRESHOLD), opacities, torch.zeros_like(opacities))
    # o exp(-q/2) >= 1/255 needs q <= 2 ln(255 o), and q >= dx^2 / Σ'_xx (likewise for y) bounds the box.
    reach = (2.0 * torch.log((opacities.detach() / ALPHA_THRESHOLD).clamp(min=1.0))).sqrt()
    extents = torch.stack([reach * cov_xx.detach().sqrt(), reach * cov_yy.detach().sqrt()], dim=-1)
    return ProjectedGaussians(
        means2d=means2d.flatten(0, 1),
        conics=conics.flatten(0, 1),
        depths=means_cam[..., 2].flatten(0, 1),
        opacities=opacities.flatten(0, 1),
        extents=extents.flatten(0, 1),
    )

