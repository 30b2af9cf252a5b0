"""Volume rendering of a density/feature field: camera rays, stratified and importance samples, ray marching.

Conventions. Labels are the 25-float camera labels of ``training.cameras`` (cam2world in OpenCV axes, intrinsics
normalised by image size). Rays start at the camera centre and have unit world directions, so a depth ``t`` is the
distance along the ray. Rays are ordered row-major (ray ``i·R + j`` is image row i, column j) so that ``[..., R·R]``
reshapes to an R×R image. Rendered features are premultiplied: ``F = Σ w_i f_i`` with ``Σ w_i`` the mask.

Quadrature (EG3D/PanoHead "midpoint" marcher). For sorted samples ``t_0 < … < t_{S-1}`` on a ray, interval i spans
``[t_i, t_{i+1}]`` with length ``δ_i``; its raw density, features and depth are the means of the two end samples;
``σ_i = softplus(σ̄_raw,i − density_shift)``, ``α_i = 1 − exp(−σ_i δ_i)``, transmittance ``T_i = exp(−Σ_{j<i} σ_j δ_j)``
and weight ``w_i = T_i α_i``. The transmittance is accumulated in log space, which is ``Π_{j<i} (1 − α_j)`` exactly.

Importance sampling. The coarse weights are smoothed as in EG3D: ``s_i = ½(max(w_{i−1}, w_i) + max(w_i, w_{i+1}))``
(a 2-tap max-pool followed by a 2-tap mean, i.e. a blurred 3-neighbourhood max that widens peaks by one interval on
each side), plus :data:`IMPORTANCE_FLOOR` so that empty rays still sample everywhere. The fine depths are drawn from
the piecewise-constant density with mass ``s_i`` on interval i by inverse CDF with stratified ``u``; they are merged
with the coarse samples and the union is marched again.

Differences from the official code (on purpose): jitter is optional (``deterministic`` uses bin midpoints and
``u = (k + ½)/N``, for evaluation and tests); stratified samples stay inside ``[ray_start, ray_end]``; the fine pdf
uses every coarse interval; options live in a frozen dataclass, never in the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dnnlib import UserError
from training.cameras import decode_label

IMPORTANCE_FLOOR = 0.01  # added to every smoothed coarse weight before building the importance pdf (EG3D value)
CROPPED_DENSITY = -1e3  # raw σ written outside the render crop; softplus(−1e3 − shift) is 0 in float32
DecodeFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How to render a volume. Defaults are the EG3D/PanoHead FFHQ settings (PanoHead's render crop included).

    Attributes:
        ray_start, ray_end: depth range along each unit ray, in world units.
        depth_resolution: coarse (stratified) samples per ray.
        depth_resolution_importance: fine samples per ray drawn from the coarse weights; 0 renders the coarse pass only.
        box_warp: side of the cube covered by the tri-grid (world units); used by the crop.
        white_background: add ``1 − Σw`` to every feature channel (compositing over ones).
        density_shift: σ = softplus(σ_raw − density_shift).
        density_noise: std of Gaussian noise added to raw σ at every sample (PanoHead's early-training fade); 0 = off.
        triplane_crop: if set, raw σ is forced to zero density where ``|x|`` or ``|z|`` exceeds
            ``box_warp/2 − triplane_crop`` (PanoHead renders with 0.1; y is not cropped). None = no crop (EG3D).
        deterministic: midpoint stratified depths and fixed importance quantiles instead of random jitter.
        ray_chunk: render at most this many rays of each image per decoder call (memory); None = all at once.
            Deterministic renders do not depend on it; jittered ones draw their random numbers chunk by chunk.
    """

    ray_start: float = 2.25
    ray_end: float = 3.3
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    box_warp: float = 1.0
    white_background: bool = False
    density_shift: float = 1.0
    density_noise: float = 0.0
    triplane_crop: float | None = 0.1
    deterministic: bool = False
    ray_chunk: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.ray_start < self.ray_end:
            raise UserError(f"RenderOptions: need 0 <= ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.depth_resolution < 2 or self.depth_resolution_importance < 0:
            raise UserError("RenderOptions: depth_resolution must be >= 2 and depth_resolution_importance >= 0, got "
                            f"{self.depth_resolution}, {self.depth_resolution_importance}")
        if self.box_warp <= 0 or self.density_noise < 0:
            raise UserError(f"RenderOptions: box_warp must be > 0 and density_noise >= 0, got {self.box_warp}, "
                            f"{self.density_noise}")
        if self.triplane_crop is not None and not 0 <= self.triplane_crop < self.box_warp / 2:
            raise UserError(f"RenderOptions: triplane_crop must be None or in [0, box_warp/2), "
                            f"got {self.triplane_crop}")
        if self.ray_chunk is not None and self.ray_chunk < 1:
            raise UserError(f"RenderOptions: ray_chunk must be None or >= 1, got {self.ray_chunk}")


@dataclasses.dataclass(frozen=True)
class VolumeOutput:
    """Rendered images: ``features`` [B, C, H, W] (premultiplied), ``depth`` [B, 1, H, W] (expected depth of the
    visible density, world units along the ray; ray_end on empty rays), ``weight`` [B, 1, H, W] (accumulated opacity,
    the mask, in [0, 1])."""

    features: torch.Tensor
    depth: torch.Tensor
    weight: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Composite:
    """Per-ray marching result: ``features`` [..., C], ``depth`` [..., 1], ``weight`` [..., 1] (Σ w),
    ``weights`` [..., S−1] (per interval)."""

    features: torch.Tensor
    depth: torch.Tensor
    weight: torch.Tensor
    weights: torch.Tensor


def camera_rays(labels: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres of an R×R image for each camera.

    Args:
        labels: [B, 25] camera labels (cam2world OpenCV, normalised intrinsics).
        resolution: R, pixels per side.
    Returns:
        origins [B, R·R, 3] (camera centres, world) and directions [B, R·R, 3] (unit, world), rows first.
    """
    if labels.ndim != 2 or labels.shape[1] != 25:
        raise UserError(f"camera labels must have shape [B, 25], got {list(labels.shape)}")
    cam2world, k = decode_label(labels)  # [B, 4, 4], [B, 3, 3]
    centres = (torch.arange(resolution, device=labels.device, dtype=labels.dtype) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # v: row (y down), u: column (x right), in [0, 1]
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    fx, skew, cx = k[:, 0, 0, None], k[:, 0, 1, None], k[:, 0, 2, None]
    fy, cy = k[:, 1, 1, None], k[:, 1, 2, None]
    y_cam = (v - cy) / fy  # invert the upper-triangular K row by row
    x_cam = (u - cx - skew * y_cam) / fx
    d_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], dim=-1)  # [B, R·R, 3], camera z forward
    directions = F.normalize(d_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
    origins = cam2world[:, None, :3, 3].expand_as(directions)
    return origins, directions


def stratified_depths(shape: tuple[int, ...], count: int, ray_start: float, ray_end: float, deterministic: bool,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` sorted depths per ray: one per equal bin of ``[ray_start, ray_end]``, at the bin midpoint when
    ``deterministic`` else uniform within the bin. Returns ``shape + (count,)``."""
    width = (ray_end - ray_start) / count
    lower = ray_start + width * torch.arange(count, device=device, dtype=dtype)
    if deterministic:
        offset = torch.full((*shape, count), 0.5, device=device, dtype=dtype)
    else:
        offset = torch.rand((*shape, count), generator=generator, device=device, dtype=dtype)
    return lower + width * offset


def smooth_weights(weights: torch.Tensor) -> torch.Tensor:
    """EG3D's smoothing of coarse interval weights [..., K]: ``½(max(w_{i−1}, w_i) + max(w_i, w_{i+1}))`` (edges use
    the one neighbour that exists) plus :data:`IMPORTANCE_FLOOR`. Returns [..., K]."""
    pad_lo = torch.cat([weights[..., :1], weights], dim=-1)
    pad_hi = torch.cat([weights, weights[..., -1:]], dim=-1)
    left = torch.maximum(pad_lo[..., :-1], weights)  # max(w_{i−1}, w_i)
    right = torch.maximum(weights, pad_hi[..., 1:])  # max(w_i, w_{i+1})
    return 0.5 * (left + right) + IMPORTANCE_FLOOR


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, count: int, deterministic: bool,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverse-CDF samples from the smoothed coarse weights.

    Args:
        depths: [..., S] sorted coarse depths; interval i is ``[depths_i, depths_{i+1}]``.
        weights: [..., S−1] coarse interval weights (≥ 0); smoothed with :func:`smooth_weights`.
        count: N fine samples per ray, at quantiles ``u_k = (k + ξ_k)/N``, ξ = ½ if deterministic else U(0, 1).
    Returns:
        [..., N] sorted depths (no gradient).
    """
    with torch.no_grad():
        mass = smooth_weights(weights)
        cdf = torch.cumsum(mass, dim=-1)
        cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1) / cdf[..., -1:]  # [..., S], 0 … 1
        shape = (*depths.shape[:-1], count)
        if deterministic:
            xi = torch.full(shape, 0.5, device=depths.device, dtype=depths.dtype)
        else:
            xi = torch.rand(shape, generator=generator, device=depths.device, dtype=depths.dtype)
        u = (torch.arange(count, device=depths.device, dtype=depths.dtype) + xi) / count
        idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(1, depths.shape[-1] - 1)
        c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
        t0, t1 = depths.gather(-1, idx - 1), depths.gather(-1, idx)
        frac = ((u - c0) / (c1 - c0)).clamp(0, 1)  # c1 > c0: every interval has mass >= IMPORTANCE_FLOOR
        return t0 + frac * (t1 - t0)


def composite(depths: torch.Tensor, sigma_raw: torch.Tensor, features: torch.Tensor,
              density_shift: float = 1.0) -> Composite:
    """Midpoint ray marching (see module docstring).

    Args:
        depths: [..., S] sorted sample depths.
        sigma_raw: [..., S, 1] raw densities.
        features: [..., S, C] features.
    Returns:
        :class:`Composite`; the depth is ``Σ w t̄ / Σ w`` clamped to ``[t_0, t_{S−1}]`` (``t_{S−1}`` where Σ w ≈ 0).
    """
    delta = depths[..., 1:] - depths[..., :-1]  # [..., S−1]
    t_mid = 0.5 * (depths[..., 1:] + depths[..., :-1])
    sigma = F.softplus(0.5 * (sigma_raw[..., 1:, 0] + sigma_raw[..., :-1, 0]) - density_shift)
    f_mid = 0.5 * (features[..., 1:, :] + features[..., :-1, :])
    optical = sigma * delta
    tau = torch.cumsum(optical, dim=-1)
    tau_before = torch.cat([torch.zeros_like(tau[..., :1]), tau[..., :-1]], dim=-1)  # Σ_{j<i} σ_j δ_j
    weights = torch.exp(-tau_before) * -torch.expm1(-optical)  # T_i α_i, accurate for small σδ too
    weight = weights.sum(-1, keepdim=True)
    feat = (weights[..., None] * f_mid).sum(-2)
    eps = 1e-10
    depth = (weights * t_mid).sum(-1, keepdim=True) / weight.clamp_min(eps)
    depth = torch.where(weight > eps, depth, depths[..., -1:])
    depth = torch.minimum(torch.maximum(depth, depths[..., :1]), depths[..., -1:])
    return Composite(features=feat, depth=depth, weight=weight, weights=weights)


def crop_density(points: torch.Tensor, sigma_raw: torch.Tensor, box_warp: float, crop: float) -> torch.Tensor:
    """PanoHead's render crop: raw σ [..., 1] becomes :data:`CROPPED_DENSITY` where ``|x|`` or ``|z|`` of the world
    point [..., 3] exceeds ``box_warp/2 − crop``."""
    limit = box_warp / 2 - crop
    outside = (points[..., 0].abs() > limit) | (points[..., 2].abs() > limit)
    return torch.where(outside[..., None], torch.full_like(sigma_raw, CROPPED_DENSITY), sigma_raw)


def _decode(decode_fn: DecodeFn, origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor,
            options: RenderOptions, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the field at ``origins + depths·directions`` ([B, R, 3], [B, R, 3], [B, R, S]) →
    raw σ [B, R, S, 1] (noise and crop applied) and features [B, R, S, C]."""
    b, r, s = depths.shape
    points = origins[:, :, None, :] + depths[..., None] * directions[:, :, None, :]  # [B, R, S, 3]
    dirs = directions[:, :, None, :].expand(b, r, s, 3)
    sigma_raw, feat = decode_fn(points.reshape(b, r * s, 3), dirs.reshape(b, r * s, 3))
    if sigma_raw.shape != (b, r * s, 1) or feat.ndim != 3 or feat.shape[:2] != (b, r * s):
        raise UserError(f"decode_fn must return σ [B, M, 1] and features [B, M, C] for M = {r * s} points, got "
                        f"{list(sigma_raw.shape)} and {list(feat.shape)}")
    sigma_raw = sigma_raw.reshape(b, r, s, 1)
    if options.density_noise > 0:
        noise = torch.randn(sigma_raw.shape, generator=generator, device=sigma_raw.device, dtype=sigma_raw.dtype)
        sigma_raw = sigma_raw + options.density_noise * noise
    if options.triplane_crop is not None:
        sigma_raw = crop_density(points, sigma_raw, options.box_warp, options.triplane_crop)
    return sigma_raw, feat.reshape(b, r, s, -1)


def _render_rays(decode_fn: DecodeFn, origins: torch.Tensor, directions: torch.Tensor, options: RenderOptions,
                 generator: torch.Generator | None) -> Composite:
    """Coarse pass, importance pass and the final composite over the merged samples for rays [B, R, 3]."""
    depths = stratified_depths(origins.shape[:2], options.depth_resolution, options.ray_start, options.ray_end,
                               options.deterministic, generator, origins.device, origins.dtype)
    sigma_raw, feat = _decode(decode_fn, origins, directions, depths, options, generator)
    if options.depth_resolution_importance > 0:
        with torch.no_grad():
            coarse = composite(depths, sigma_raw, feat, options.density_shift).weights
        fine = importance_depths(depths, coarse, options.depth_resolution_importance, options.deterministic,
                                 generator)
        sigma_fine, feat_fine = _decode(decode_fn, origins, directions, fine, options, generator)
        depths, order = torch.sort(torch.cat([depths, fine], dim=-1), dim=-1)
        sigma_raw = torch.cat([sigma_raw, sigma_fine], dim=-2).gather(-2, order[..., None])
        feat = torch.cat([feat, feat_fine], dim=-2)
        feat = feat.gather(-2, order[..., None].expand(*order.shape, feat.shape[-1]))
    return composite(depths, sigma_raw, feat, options.density_shift)


def render_volume(decode_fn: DecodeFn, labels: torch.Tensor, resolution: int, options: RenderOptions,
                  generator: torch.Generator | None = None) -> VolumeOutput:
    """Render a field seen by cameras ``labels`` [B, 25] at R×R = ``resolution``² pixels.

    ``decode_fn(points [B, M, 3] world, directions [B, M, 3] unit) -> (raw σ [B, M, 1], features [B, M, C])``.
    ``generator`` drives the jitter and the density noise (None = the global RNG).
    """
    origins, directions = camera_rays(labels, resolution)
    rays = origins.shape[1]
    chunk = options.ray_chunk or rays
    parts = [_render_rays(decode_fn, origins[:, i:i + chunk], directions[:, i:i + chunk], options, generator)
             for i in range(0, rays, chunk)]
    feat = torch.cat([p.features for p in parts], dim=1)
    depth = torch.cat([p.depth for p in parts], dim=1)
    weight = torch.cat([p.weight for p in parts], dim=1)
    if options.white_background:
        feat = feat + (1 - weight)

    def to_image(x: torch.Tensor) -> torch.Tensor:  # [B, R·R, C] → [B, C, R, R]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], resolution, resolution)

    return VolumeOutput(features=to_image(feat), depth=to_image(depth), weight=to_image(weight))
