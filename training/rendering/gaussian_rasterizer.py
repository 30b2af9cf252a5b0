"""Batched rasterization of 3D Gaussians: one entry point, ``rasterize``, over three backends.

- ``torch``: pure PyTorch, differentiable through autograd, any device; the reference the tests check. Memory-bounded:
  the image is cut into square tiles; each tile composites only the Gaussians whose 1/255 footprint touches it (an
  exact cull), in depth order and in chunks of Gaussians, carrying the per-pixel transmittance from chunk to chunk. A
  chunk evaluates at most ``max_pairs`` (pixel, Gaussian) pairs over all images, and under autograd each chunk is
  recomputed in the backward pass (activation checkpointing). So nothing of size pixels x Gaussians is ever held:
  the transient memory is a few tens of bytes per pair (about 50 MB at the default 2^20 pairs in float32) on top of
  O(images x (Gaussians + pixels x chunks)) kept for the backward pass. Measured (CPU, float32, 64², 16k Gaussians,
  batch 4, forward + backward): about 130 MB above the idle process.
- ``gsplat``: ``gsplat.rasterization`` (CUDA, gsplat >= 1.5.3 for batched scenes), mode 'RGB+ED', same near plane and
  low-pass as the torch backend, 'classic' (uncompensated) opacities; any channel count (gsplat pads and chunks them).
- ``inria``: ``diff_gaussian_rasterization`` (CUDA, 3 channels only), one image at a time, plus a second pass for alpha
  and depth. Optional and untested in CI; it culls at z <= 0.2 instead of 0.01 (hard-coded in that package).

All backends composite front to back, ``C = Σ_i c_i α_i T_i`` with ``T_i = Π_{j<i} (1 - α_j)``, accumulated
alpha ``A = 1 - T`` and expected depth ``D = Σ_i z_i α_i T_i / A`` (0 where A = 0); the background is blended as
``bg (1 - A)``. The constants (0.3 px^2 low-pass, near plane 0.01, alpha clamp 0.99, 1/255 skip, 1e-4 transmittance
stop) are documented in ``training/rendering/gaussians.py``. gsplat releases up to 1.5.3 clamp alpha at 0.999 rather
than 0.99 (later ones at 0.99), so they differ from the torch backend where a Gaussian's opacity exceeds 0.99.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dnnlib import UserError
from training.cameras import decode_label, normalized_to_pixel_intrinsics
from training.rendering.gaussians import (
    ALPHA_THRESHOLD,
    EPS2D,
    MAX_ALPHA,
    NEAR_PLANE,
    TRANSMITTANCE_THRESHOLD,
    Gaussians,
    ProjectedGaussians,
    project_gaussians,
)

BACKENDS = ("auto", "torch", "gsplat", "inria")
_MIN_GSPLAT_VERSION = (1, 5, 3)  # first release whose rasterization() takes batched scenes [..., N, 3]
_INRIA_FAR = 100.0  # far plane of the projection matrix the inria package wants (GGHead's value)

_log = logging.getLogger(__name__)
_logged_choices: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class RasterOutput:
    """Rendered images; ``(V,)`` is present when the cameras were given as [B, V, 25].

    Attributes:
        features: [B, (V,) C, H, W] composited colours/features, background blended in.
        alpha: [B, (V,) 1, H, W] accumulated opacity in [0, 1].
        depth: [B, (V,) 1, H, W] expected camera-space z (alpha-weighted, divided by alpha; 0 where alpha = 0).
    """

    features: Tensor
    alpha: Tensor
    depth: Tensor


def rasterize(
    gaussians: Gaussians,
    cameras: Tensor,
    resolution: int,
    background: Tensor | None = None,
    backend: str = "auto",
) -> RasterOutput:
    """Renders B scenes of Gaussians, each from its own camera(s), into square images.

    Args:
        gaussians: B scenes of N activated Gaussians (world space).
        cameras: [B, 25] or [B, V, 25] camera labels (OpenCV cam2world, normalised intrinsics).
        resolution: output height and width in pixels.
        background: [C] background colour/feature, or None for 0.
        backend: 'auto' (gsplat for CUDA tensors when it imports, else torch), 'torch', 'gsplat' or 'inria'.
    Returns:
        features [B, (V,) C, H, W], alpha and expected depth [B, (V,) 1, H, W], in the dtype of the Gaussians.
    """
    single_view = _check_inputs(gaussians, cameras, resolution, background)
    labels = cameras[:, None] if single_view else cameras
    cam2world, k_normalised = decode_label(labels.to(gaussians.means.dtype))
    world2cam = torch.linalg.inv(cam2world)
    intrinsics = normalized_to_pixel_intrinsics(k_normalised, resolution, resolution)
    name = _select_backend(backend, gaussians.means.device)
    if name == "torch":
        out = rasterize_torch(gaussians, world2cam, intrinsics, resolution, background)
    elif name == "gsplat":
        out = _rasterize_gsplat(gaussians, world2cam, intrinsics, resolution, background)
    else:
        out = _rasterize_inria(gaussians, world2cam, intrinsics, resolution, background)
    if single_view:
        out = RasterOutput(features=out.features[:, 0], alpha=out.alpha[:, 0], depth=out.depth[:, 0])
    return out


def _check_inputs(gaussians: Gaussians, cameras: Tensor, resolution: int, background: Tensor | None) -> bool:
    """Validates the arguments of ``rasterize``; returns whether the cameras are [B, 25] (one view per scene)."""
    if cameras.ndim not in (2, 3) or cameras.shape[-1] != 25 or cameras.shape[0] != gaussians.batch_size:
        raise UserError(
            f"rasterize: cameras must be [B, 25] or [B, V, 25] with B = {gaussians.batch_size}, "
            f"got {tuple(cameras.shape)}"
        )
    if not isinstance(resolution, int) or resolution < 1:
        raise UserError(f"rasterize: resolution must be a positive int, got {resolution!r}")
    if background is not None and tuple(background.shape) != (gaussians.num_channels,):
        raise UserError(
            f"rasterize: background must be [C] with C = {gaussians.num_channels} (the colour channels), "
            f"got {tuple(background.shape)}"
        )
    return cameras.ndim == 2


def _select_backend(backend: str, device: torch.device) -> str:
    """Resolves 'auto' and checks that a forced backend can run; logs the choice once per (backend, reason)."""
    if backend not in BACKENDS:
        raise UserError(f"rasterize: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        name, reason = "torch", "requested"
    elif backend == "auto":
        gsplat_problem = _gsplat_problem()
        if device.type == "cuda" and gsplat_problem is None:
            name, reason = "gsplat", "tensors on CUDA and gsplat imports"
        else:
            name = "torch"
            reason = f"tensors on {device.type}" if device.type != "cuda" else f"gsplat unusable ({gsplat_problem})"
    else:
        problem = _gsplat_problem() if backend == "gsplat" else _inria_problem()
        if device.type != "cuda":
            problem = f"it needs CUDA tensors, got tensors on {device.type}"
        if problem is not None:
            raise UserError(f"rasterize: backend={backend!r} is unavailable: {problem}. Use backend='torch' or 'auto'.")
        name, reason = backend, "requested"
    if (name, reason) not in _logged_choices:
        _logged_choices.add((name, reason))
        _log.info("Gaussian rasterizer: using the %s backend (%s)", name, reason)
    return name


@functools.cache
def _gsplat_problem() -> str | None:
    """Why gsplat cannot be used (not installed, too old), or None when it can."""
    try:
        import gsplat
    except ImportError as error:
        return f"gsplat does not import ({error}); pip install 'gsplat>=1.5.3'"
    version = tuple(int(part) for part in re.findall(r"\d+", gsplat.__version__)[:3])
    if version < _MIN_GSPLAT_VERSION:
        return f"gsplat {gsplat.__version__} is older than 1.5.3, the first release that renders batched scenes"
    return None


@functools.cache
def _inria_problem() -> str | None:
    """Why diff_gaussian_rasterization cannot be used, or None when it imports."""
    try:
        import diff_gaussian_rasterization  # noqa: F401
    except ImportError as error:
        return f"diff_gaussian_rasterization does not import ({error})"
    return None


def rasterize_torch(
    gaussians: Gaussians,
    world2cam: Tensor,
    intrinsics: Tensor,
    resolution: int,
    background: Tensor | None = None,
    tile_size: int = 8,
    max_pairs: int = 2**20,
) -> RasterOutput:
    """The pure-PyTorch backend on already decoded cameras; see the module docstring for the memory bound.

    Args:
        gaussians: B scenes of N Gaussians.
        world2cam: [B, V, 4, 4] world-to-camera matrices (OpenCV axes).
        intrinsics: [B, V, 3, 3] pixel intrinsics for a ``resolution`` x ``resolution`` image.
        background: [C] or None.
        tile_size: side of the square pixel tiles.
        max_pairs: most (pixel, Gaussian) pairs evaluated at once (sets the Gaussian chunk size).
    Returns:
        A RasterOutput with features [B, V, C, H, W], alpha and depth [B, V, 1, H, W].
    """
    b, v = world2cam.shape[:2]
    proj = project_gaussians(gaussians, world2cam, intrinsics, resolution, resolution)
    # Depth order per image; culled Gaussians (opacity 0) go last. Sorting needs no gradient.
    sort_key = torch.where(proj.opacities > 0, proj.depths, torch.full_like(proj.depths, torch.inf)).detach()
    order = torch.argsort(sort_key, dim=1, stable=True)
    rows = []
    for y0 in range(0, resolution, tile_size):
        tiles = []
        for x0 in range(0, resolution, tile_size):
            box = (x0, y0, min(tile_size, resolution - x0), min(tile_size, resolution - y0))
            tiles.append(_render_tile(proj, gaussians.colors, v, order, box, max_pairs))
        rows.append(torch.cat(tiles, dim=2))
    image = torch.cat(rows, dim=1)  # [I, H, W, C + 2]: features, Σ w z, Σ w
    c = gaussians.num_channels
    # Σ w = 1 - T; summing the weights keeps small alphas (and the depth divided by them) accurate in float32.
    features, depth_sum, alpha = image[..., :c], image[..., c], image[..., c + 1]
    if background is not None:
        features = features + background.to(features) * (1.0 - alpha[..., None])
    depth = depth_sum / alpha.clamp(min=1e-10)
    return RasterOutput(
        features=features.permute(0, 3, 1, 2).unflatten(0, (b, v)),
        alpha=alpha[:, None].unflatten(0, (b, v)),
        depth=depth[:, None].unflatten(0, (b, v)),
    )


def _render_tile(
    proj: ProjectedGaussians, colors: Tensor, views: int, order: Tensor, box: tuple[int, int, int, int], max_pairs: int
) -> Tensor:
    """Composites one pixel tile ``box = (x0, y0, width, height)`` of all I images.

    Args:
        proj: the projected Gaussians of the I images.
        colors: [B, N, C] colours of the B scenes (image i shows scene i // views).
        order: [I, N] Gaussian indices in front-to-back order.
    Returns:
        [I, height, width, C + 2]: composited features, Σ w z and Σ w per pixel (w = α T, the blending weights).
    """
    x0, y0, w, h = box
    images, c = order.shape[0], colors.shape[-1]
    dtype, device = proj.means2d.dtype, proj.means2d.device
    ys, xs = torch.meshgrid(
        torch.arange(y0, y0 + h, device=device, dtype=dtype) + 0.5,
        torch.arange(x0, x0 + w, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # [P, 2]
    lo = torch.tensor([x0 + 0.5, y0 + 0.5], device=device, dtype=dtype)  # first and last pixel centres
    hi = torch.tensor([x0 + w - 0.5, y0 + h - 0.5], device=device, dtype=dtype)
    means, extents = proj.means2d.detach(), proj.extents
    hits = ((means + extents >= lo) & (means - extents <= hi)).all(dim=-1) & (proj.opacities > 0)  # [I, N]
    hits_sorted = hits.gather(1, order)
    counts = hits_sorted.sum(dim=1)
    num = int(counts.max()) if images > 0 else 0
    # Stable sort moves this tile's Gaussians to the front and keeps their depth order.
    first = torch.argsort((~hits_sorted).to(torch.uint8), dim=1, stable=True)[:, :num]
    ids = order.gather(1, first)
    real = torch.arange(num, device=device)[None] < counts[:, None]  # [I, num]: False for padding

    scene = torch.arange(images, device=device) // views
    features = torch.zeros(images, len(pixels), c, device=device, dtype=dtype)
    depth_sum = torch.zeros(images, len(pixels), device=device, dtype=dtype)
    weight_sum = torch.zeros(images, len(pixels), device=device, dtype=dtype)
    trans = torch.ones(images, len(pixels), device=device, dtype=dtype)
    done = torch.zeros(images, len(pixels), device=device, dtype=torch.bool)
    chunk = max(1, max_pairs // max(1, images * len(pixels)))
    tensors = (proj.means2d, proj.conics, proj.opacities, proj.depths, colors)
    use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    for k0 in range(0, num, chunk):
        args = (pixels, ids[:, k0 : k0 + chunk], real[:, k0 : k0 + chunk], scene, trans, done, *tensors)
        if use_checkpoint:
            f, d, ws, trans, done = checkpoint(_composite_chunk, *args, use_reentrant=False)
        else:
            f, d, ws, trans, done = _composite_chunk(*args)
        features, depth_sum, weight_sum = features + f, depth_sum + d, weight_sum + ws
    return torch.cat([features, depth_sum[..., None], weight_sum[..., None]], dim=-1).unflatten(1, (h, w))


def _composite_chunk(
    pixels: Tensor,
    ids: Tensor,
    real: Tensor,
    scene: Tensor,
    trans: Tensor,
    done: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    depths: Tensor,
    colors: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Front-to-back compositing of K depth-ordered Gaussians over P pixels of I images.

    Args:
        pixels: [P, 2] pixel centres (x, y).
        ids: [I, K] Gaussian indices, front to back; ``real`` [I, K] is False for padding entries.
        scene: [I] scene index of each image (for ``colors``).
        trans, done: [I, P] transmittance before this chunk and whether the pixel already stopped compositing.
        means2d, conics, opacities, depths: [I, N, ...] projected Gaussians; colors: [B, N, C].
    Returns:
        This chunk's Σ w c [I, P, C], Σ w z and Σ w [I, P], the transmittance after it and the updated ``done``.
    """
    mean = means2d.gather(1, ids[..., None].expand(-1, -1, 2))
    conic = conics.gather(1, ids[..., None].expand(-1, -1, 3))
    opacity = torch.where(real, opacities.gather(1, ids), torch.zeros_like(ids, dtype=opacities.dtype))
    depth = depths.gather(1, ids)
    color = colors[scene[:, None], ids]  # [I, K, C]

    dx = pixels[None, :, None, 0] - mean[:, None, :, 0]  # [I, P, K]
    dy = pixels[None, :, None, 1] - mean[:, None, :, 1]
    half_a, b, half_c = (conic[:, None, :, j] * scale for j, scale in enumerate((0.5, 1.0, 0.5)))
    power = dx * (half_a * dx + b * dy) + half_c * dy * dy  # dᵀ Σ'⁻¹ d / 2
    alpha = (opacity[:, None, :] * torch.exp(-power)).clamp(max=MAX_ALPHA)
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))
    log_keep = torch.log1p(-alpha)
    trans_before = trans[..., None] * torch.exp(torch.cumsum(log_keep, dim=-1) - log_keep)  # T_i = T Π_{j<i} (1 - α_j)
    trans_after = trans_before * (1.0 - alpha)
    # A pixel stops before the first Gaussian that would take its transmittance to 1e-4 or below; since the
    # transmittance never increases, "after > 1e-4" selects the Gaussians before that one (later ones with alpha 0
    # may pass within rounding, harmlessly).
    contributes = (trans_after > TRANSMITTANCE_THRESHOLD) & ~done[..., None]
    weight = torch.where(contributes, alpha * trans_before, torch.zeros_like(alpha))
    features = torch.einsum("ipk,ikc->ipc", weight, color)
    depth_sum = torch.einsum("ipk,ik->ip", weight, depth)
    trans_out = trans * torch.exp((log_keep * contributes).sum(dim=-1))
    done_out = done | (trans_after <= TRANSMITTANCE_THRESHOLD).any(dim=-1)
    return features, depth_sum, weight.sum(dim=-1), trans_out, done_out


def _rasterize_gsplat(
    gaussians: Gaussians, world2cam: Tensor, intrinsics: Tensor, resolution: int, background: Tensor | None
) -> RasterOutput:
    """gsplat backend: world2cam and intrinsics [B, V, 4, 4] / [B, V, 3, 3] (pixels); float32 inside gsplat."""
    import gsplat

    b, v = world2cam.shape[:2]
    c = gaussians.num_channels
    backgrounds = None if background is None else background.to(gaussians.means.device, torch.float32).expand(b, v, c)
    renders, alphas, _ = gsplat.rasterization(
        means=gaussians.means.float(),
        quats=gaussians.quats.float(),
        scales=gaussians.scales.float(),
        opacities=gaussians.opacities.float(),
        colors=gaussians.colors.float(),
        viewmats=world2cam.float(),
        Ks=intrinsics.float(),
        width=resolution,
        height=resolution,
        near_plane=NEAR_PLANE,
        eps2d=EPS2D,
        packed=False,
        backgrounds=backgrounds,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # [B, V, H, W, C + 1], [B, V, H, W, 1]
    dtype = gaussians.means.dtype
    return RasterOutput(
        features=renders[..., :c].permute(0, 1, 4, 2, 3).to(dtype),
        alpha=alphas.permute(0, 1, 4, 2, 3).to(dtype),
        depth=renders[..., c:].permute(0, 1, 4, 2, 3).to(dtype),
    )


def _rasterize_inria(
    gaussians: Gaussians, world2cam: Tensor, intrinsics: Tensor, resolution: int, background: Tensor | None
) -> RasterOutput:
    """diff_gaussian_rasterization backend: one colour pass and one (Σ w z, alpha) pass per image."""
    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

    if gaussians.num_channels != 3:
        raise UserError(f"rasterize: backend='inria' renders 3 channels, got {gaussians.num_channels}")
    means, scales, colors = gaussians.means.float(), gaussians.scales.float(), gaussians.colors.float()
    quats = torch.nn.functional.normalize(gaussians.quats.float(), dim=-1)  # the package does not normalise them
    opacities = gaussians.opacities.float()[..., None]
    bg = torch.zeros(3, device=means.device) if background is None else background.to(means)
    images = []
    for bi in range(world2cam.shape[0]):
        for vi in range(world2cam.shape[1]):
            view, k = world2cam[bi, vi].float(), intrinsics[bi, vi].float()
            settings = _inria_settings(GaussianRasterizationSettings, view, k, resolution)
            z = means[bi] @ view[2, :3] + view[2, 3]
            aux_colors = torch.stack([z, torch.ones_like(z), torch.zeros_like(z)], dim=-1)  # -> (Σ w z, Σ w, 0)
            passes = []
            for pass_colors, pass_bg in ((colors[bi], bg), (aux_colors, torch.zeros_like(bg))):
                rasterizer = GaussianRasterizer(raster_settings=settings._replace(bg=pass_bg))
                image = rasterizer(
                    means3D=means[bi],
                    means2D=torch.zeros_like(means[bi], requires_grad=True),
                    shs=None,
                    colors_precomp=pass_colors,
                    opacities=opacities[bi],
                    scales=scales[bi],
                    rotations=quats[bi],
                    cov3D_precomp=None,
                )[0]  # [3, H, W]; builds differ in what else they return (radii, depth)
                passes.append(image)
            alpha = passes[1][1:2]
            images.append(torch.cat([passes[0], alpha, passes[1][0:1] / alpha.clamp(min=1e-10)]))
    out = torch.stack(images).unflatten(0, tuple(world2cam.shape[:2])).to(gaussians.means.dtype)
    return RasterOutput(features=out[:, :, :3], alpha=out[:, :, 3:4], depth=out[:, :, 4:5])


def _inria_settings(settings_type: type, view: Tensor, k: Tensor, resolution: int) -> object:
    """Rasterization settings of the inria package for one camera (view [4, 4] world-to-camera, k [3, 3] pixels)."""
    near, far = NEAR_PLANE, _INRIA_FAR
    # Maps camera (x, y, z) to NDC with w = z; NDC -1..1 spans the pixel edges 0..resolution, like our pixel frame.
    proj = torch.zeros(4, 4, device=view.device)
    proj[0, 0], proj[0, 2] = 2 * k[0, 0] / resolution, 2 * k[0, 2] / resolution - 1
    proj[1, 1], proj[1, 2] = 2 * k[1, 1] / resolution, 2 * k[1, 2] / resolution - 1
    proj[2, 2], proj[2, 3], proj[3, 2] = far / (far - near), -far * near / (far - near), 1.0
    kwargs = dict(
        image_height=resolution,
        image_width=resolution,
        tanfovx=float(0.5 * resolution / k[0, 0]),
        tanfovy=float(0.5 * resolution / k[1, 1]),
        bg=torch.zeros(3, device=view.device),
        scale_modifier=1.0,
        viewmatrix=view.T.contiguous(),  # the package takes column-major (transposed) matrices
        projmatrix=(proj @ view).T.contiguous(),
        sh_degree=0,
        campos=torch.linalg.inv(view)[:3, 3],
        prefiltered=False,
        debug=False,
    )
    if "antialiasing" in settings_type._fields:  # newer builds; False keeps the opacities uncompensated
        kwargs["antialiasing"] = False
    return settings_type(**kwargs)
