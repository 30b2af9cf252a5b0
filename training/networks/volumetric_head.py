"""Volumetric head generator (PanoHead tri-grid; EG3D tri-plane as the special case D = 1 with 'eg3d' axes).

Pipeline: mapping(z, conditioning camera) → ws → StyleGAN2 synthesis → tri-grid [B, 3, C, D, H, W] → decoder MLP →
importance volume rendering with the rendering camera at the neural resolution → premultiplied features composited in
feature space over the background generator → raw RGB (ToRGB from the last w, or the first 3 features) →
super-resolution from the last w. Images are NCHW, nominally in [-1, 1]; masks are in [0, 1]; camera labels are the
25-float labels of ``training.cameras``; world points are y-up with the face toward +z.

Camera self-adaptation (PanoHead §6). A small mapping network of (z, rendering camera) predicts a world translation Δ
[B, 3] of the camera centre (label entries 3, 7, 11). Design: ``synthesis`` takes the offset as an explicit argument
``camera_offset`` and, when the model has self-adaptation, *requires* it, so no caller can silently render without
it (PanoHead's generation scripts, back-view FID and one projector did). The ways to obtain it:

- ``G(z, c, c_render=...)`` computes it itself (training, FID, sample grids);
- ``G.camera_offset(z, c_render, truncation_psi, truncation_cutoff)`` for callers that keep ws and move the camera
  (videos: recompute per frame, since Δ depends on the rendering camera; use the same ψ as the mapping);
- a tensor of their own, e.g. ``torch.zeros(B, 3)`` to switch it off, or an optimised variable in inversion (there is
  no z to feed the network; PanoHead's "mean z" gives an arbitrary offset).

``camera_offset`` returns None for a model without self-adaptation; synthesis accepts an explicit offset for any
model and reports the offset it applied under the output key ``camera_offset``. The offset network follows PanoHead
(embed c → 3, normalised and concatenated to normalised z, FC → 3 lrelu, FC → 3 linear, lr multiplier 1, a tracked
``w_avg`` that truncation moves Δ toward), except that its last layer starts at zero so that Δ = 0 at
initialisation (PanoHead starts with |Δ| of order one world unit).

Other choices that differ from the official code on purpose: ``neural_rendering_resolution`` and the render options
are call arguments (the config holds the defaults), never state that a call mutates; ``image_mask`` is the
accumulated weight itself, in [0, 1] (PanoHead widens it to [-0.001, 1.001]); ``extract_density`` applies the same
render crop as the renders, so meshes need no padding; the sigmoid feature activation maps each sample's features to
[-1, 1] before compositing over the background (EG3D's ``2F − 1`` without a background is kept exactly).

State-dict names: ``backbone.synthesis.*``, ``backbone.mapping.*``, ``superresolution.*``, ``decoder.net.*`` as in
EG3D's TriPlaneGenerator; ``torgb.*``, ``bcg_synthesis.*``, ``t_mapping.*`` as in PanoHead's.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from dnnlib import UserError
from torch_utils import misc
from training.cameras import LABEL_DIM
from training.config_io import check_field_types, config_from_dict, config_to_dict
from training.networks.background import BackgroundGenerator, composite_features
from training.networks.stylegan2 import FullyConnectedLayer, Generator, ToRGBLayer, normalize_2nd_moment
from training.networks.superresolution import SuperResolution
from training.rendering.trigrid import DECODER_ACTIVATIONS, TriGridDecoder, sample_trigrid, trigrid_from_synthesis
from training.rendering.volume import RenderOptions, crop_density, render_volume

RAW_RGB_MODES = ("torgb", "features")
CAMERA_OFFSET_ENTRIES = (3, 7, 11)  # camera-centre entries (x, y, z) of the row-major cam2world in a label
_NOISE_MODES = ("random", "const", "none")


@dataclasses.dataclass(frozen=True)
class VolumetricHeadConfig:
    """Architecture of a volumetric head generator; defaults are PanoHead's released configuration (reference §7.2).

    Attributes:
        z_dim, w_dim: latent widths. The conditioning label is the 25-float camera label.
        mapping_layers: depth of the mapping network (``--map-depth 2``).
        pose_conditioning: condition the mapping on the camera (False: the mapping has no label input).
        channel_base, channel_max: StyleGAN2 channel formula of the tri-grid backbone.
        trigrid_resolution, trigrid_depth, trigrid_channels: tri-grid H = W, depth cells D, features C per plane.
        trigrid_axes: 'panohead' (xy/xz/yz) or 'eg3d' (xy/xz/zx, D = 1 only, to render EG3D weights).
        decoder_hidden, decoder_activation, decoder_lr_multiplier: the decoder MLP (activation 'none' in the release).
        feature_channels: decoder output features, i.e. the rendered feature image's channels.
        raw_rgb: 'torgb' (1×1 modulated conv from the last w, PanoHead release) or 'features' (first 3 features, EG3D).
        neural_rendering_resolution: default rendering resolution (a call may pass another).
        render: default render options (samples, ray range, box_warp, crop, density noise, ...).
        background: paint the background with a :class:`BackgroundGenerator`.
        background_resolution, background_channel_base: its resolution (PanoHead: the SR working resolution 128) and
            channel base (half the backbone's).
        image_resolution: output side of the super-resolution.
        sr_up_blocks, sr_channels: super-resolution layout (EG3D 8XDC: 2 upsampling blocks, channels (256, 128)).
        sr_antialias: antialiased resizing of the rendering into the SR and of the background to the neural resolution.
        sr_fp16: float16 SR blocks on CUDA (with EG3D's ±256 clamp, applied on every device).
        sr_noise_mode: per-pixel noise of the SR layers, whatever the synthesis noise mode ('none', EG3D).
        camera_adaptation: predict a camera-centre offset from (z, rendering camera).
        camera_mapping_layers: depth of the offset network.
    """

    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    pose_conditioning: bool = True
    channel_base: int = 32768
    channel_max: int = 512
    trigrid_resolution: int = 256
    trigrid_depth: int = 3
    trigrid_channels: int = 32
    trigrid_axes: str = "panohead"
    decoder_hidden: int = 64
    decoder_activation: str = "none"
    decoder_lr_multiplier: float = 1.0
    feature_channels: int = 32
    raw_rgb: str = "torgb"
    neural_rendering_resolution: int = 64
    render: RenderOptions = RenderOptions()
    background: bool = True
    background_resolution: int = 128
    background_channel_base: int = 16384
    image_resolution: int = 512
    sr_up_blocks: int = 2
    sr_channels: tuple[int, int] = (256, 128)
    sr_antialias: bool = True
    sr_fp16: bool = True
    sr_noise_mode: str = "none"
    camera_adaptation: bool = True
    camera_mapping_layers: int = 2

    def __post_init__(self) -> None:
        check_field_types(self)
        check_field_types(self.render)
        choices = {"trigrid_axes": ("panohead", "eg3d"), "decoder_activation": DECODER_ACTIVATIONS,
                   "raw_rgb": RAW_RGB_MODES, "sr_noise_mode": _NOISE_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"VolumetricHeadConfig.{name}: '{getattr(self, name)}' is not one of {list(allowed)}")
        if self.trigrid_axes == "eg3d" and self.trigrid_depth != 1:
            raise UserError(f"VolumetricHeadConfig: trigrid_axes 'eg3d' needs trigrid_depth 1, got "
                            f"{self.trigrid_depth}")
        if self.raw_rgb == "features" and self.feature_channels < 3:
            raise UserError(f"VolumetricHeadConfig: raw_rgb 'features' needs feature_channels >= 3, got "
                            f"{self.feature_channels}")
        if self.background and self.render.white_background:
            raise UserError("VolumetricHeadConfig: render.white_background and background=True exclude each other")
        if min(self.neural_rendering_resolution, self.mapping_layers, self.camera_mapping_layers) < 1:
            raise UserError("VolumetricHeadConfig: neural_rendering_resolution, mapping_layers and "
                            "camera_mapping_layers must be >= 1")

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (nested ``render`` dict, tuples as lists); see ``training.config_io``."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VolumetricHeadConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types raise UserError naming the field."""
        return config_from_dict(cls, data)


def apply_camera_offset(labels: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Translate cameras: labels [B, 25] with ``offset`` [B, 3] (world units) added to the camera centre (entries 3,
    7, 11 of the row-major cam2world). Orientation and intrinsics are unchanged. Differentiable in both."""
    if offset.shape != (labels.shape[0], 3):
        raise UserError(f"camera_offset must have shape [B, 3] = {[labels.shape[0], 3]}, got {list(offset.shape)}")
    select = torch.zeros(3, LABEL_DIM, device=labels.device, dtype=labels.dtype)
    select[0, CAMERA_OFFSET_ENTRIES[0]] = select[1, CAMERA_OFFSET_ENTRIES[1]] = select[2, CAMERA_OFFSET_ENTRIES[2]] = 1
    return labels + offset.to(labels.dtype) @ select


class CameraOffsetMapping(torch.nn.Module):
    """(z, rendering camera) → camera-centre offset Δ [B, 3] (PanoHead's ``t_mapping``, see the module docstring).

    Parameters (PanoHead names): ``w_avg`` [3], ``embed`` (c_dim → 3), ``fc0`` (z_dim + 3 → 3, lrelu), …,
    ``fc{L-1}`` (3 → 3, linear, zero-initialised weight); all with learning-rate multiplier 1.
    """

    def __init__(self, z_dim: int, c_dim: int = LABEL_DIM, num_layers: int = 2, w_avg_beta: float = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.num_layers, self.w_avg_beta = z_dim, c_dim, num_layers, w_avg_beta
        self.embed = FullyConnectedLayer(c_dim, 3)
        widths = [z_dim + 3] + [3] * num_layers
        for i in range(num_layers):
            last = i == num_layers - 1
            layer = FullyConnectedLayer(widths[i], widths[i + 1], activation="linear" if last else "lrelu")
            if last:
                torch.nn.init.zeros_(layer.weight)
            self.add_module(f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([3]))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """z: [B, z_dim], c: [B, c_dim] rendering cameras → Δ [B, 3] world units.

        ``w_avg`` tracks the batch mean of Δ when ``update_emas``; truncation moves Δ toward it like the first w of
        the mapping network (applied unless ``truncation_cutoff`` is 0).
        """
        misc.assert_shape(z, [None, self.z_dim])
        misc.assert_shape(c, [z.shape[0], self.c_dim])
        x = torch.cat([normalize_2nd_moment(z.to(self.embed.weight.dtype)),
                       normalize_2nd_moment(self.embed(c.to(self.embed.weight.dtype)))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1 and truncation_cutoff != 0:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class VolumetricHeadGenerator(torch.nn.Module):
    """Tri-grid generator with background, raw RGB, super-resolution and camera self-adaptation (module docstring).

    Attributes for callers: ``z_dim``, ``c_dim`` (25), ``w_dim``, ``num_ws``, ``img_resolution``, ``img_channels``,
    ``config``.
    """

    def __init__(self, config: VolumetricHeadConfig = VolumetricHeadConfig()):
        super().__init__()
        cfg = self.config = config
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, LABEL_DIM, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.image_resolution, 3
        grid_channels = 3 * cfg.trigrid_channels * cfg.trigrid_depth
        self.backbone = Generator(cfg.z_dim, LABEL_DIM if cfg.pose_conditioning else 0, cfg.w_dim,
                                  cfg.trigrid_resolution, grid_channels,
                                  mapping_kwargs=dict(num_layers=cfg.mapping_layers),
                                  channel_base=cfg.channel_base, channel_max=cfg.channel_max, architecture="skip")
        self.num_ws = self.backbone.num_ws
        self.superresolution = SuperResolution(cfg.feature_channels, cfg.image_resolution, cfg.w_dim,
                                               up_blocks=cfg.sr_up_blocks, channels=cfg.sr_channels,
                                               use_fp16=cfg.sr_fp16, antialias=cfg.sr_antialias)
        self.decoder = TriGridDecoder(cfg.trigrid_channels, cfg.decoder_hidden, cfg.feature_channels,
                                      cfg.decoder_activation, cfg.decoder_lr_multiplier)
        if cfg.raw_rgb == "torgb":
            self.torgb = ToRGBLayer(cfg.feature_channels, 3, cfg.w_dim)
        if cfg.background:
            self.bcg_synthesis = BackgroundGenerator(cfg.w_dim, cfg.background_resolution, cfg.feature_channels,
                                                     channel_base=cfg.background_channel_base,
                                                     channel_max=cfg.channel_max)
        if cfg.camera_adaptation:
            self.t_mapping = CameraOffsetMapping(cfg.z_dim, LABEL_DIM, cfg.camera_mapping_layers)

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """Latents z [B, z_dim] and conditioning cameras c [B, 25] → ws [B, num_ws, w_dim].

        c is ignored when the config has no pose conditioning (the mapping then has no label input)."""
        c = c if self.config.pose_conditioning else None
        return self.backbone.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                     update_emas=update_emas)

    def camera_offset(self, z: torch.Tensor, c_render: torch.Tensor, truncation_psi: float = 1.0,
                      truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor | None:
        """Self-adaptation offset Δ [B, 3] for latents z [B, z_dim] seen by cameras ``c_render`` [B, 25]; None when
        the model has no self-adaptation. Pass the same truncation as to :meth:`mapping`."""
        if not self.config.camera_adaptation:
            return None
        return self.t_mapping(z, c_render, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                              update_emas=update_emas)

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, camera_offset: torch.Tensor | None = None,
                  neural_rendering_resolution: int | None = None, render_options: RenderOptions | None = None,
                  ws_background: torch.Tensor | None = None, noise_mode: str = "random") -> dict[str, torch.Tensor]:
        """Render ws [B, num_ws, w_dim] from rendering cameras ``c`` [B, 25].

        Args:
            camera_offset: [B, 3] world translation of the camera centres; required when the model has
                self-adaptation (see the module docstring; zeros switch it off).
            neural_rendering_resolution: rendering side r; None = the config's.
            render_options: None = ``config.render``; e.g. ``dataclasses.replace(G.config.render, density_noise=s)``.
                ``box_warp`` must stay the config's (the tri-grid's extent is part of the trained model).
            ws_background: [B, n, w_dim] ws for the background instead of ``ws`` (background-swap regulariser).
            noise_mode: noise of the backbone and background synthesis ('random', 'const', 'none').
        Returns:
            ``image`` [B, 3, R, R] (super-resolved), ``image_raw`` [B, 3, r, r], ``image_mask`` [B, 1, r, r] in [0, 1]
            (foreground opacity), ``image_depth`` [B, 1, r, r] (expected depth along the rays, world units), and
            ``camera_offset`` [B, 3] when an offset was applied.
        """
        cfg = self.config
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        misc.assert_shape(c, [ws.shape[0], LABEL_DIM])
        options = cfg.render if render_options is None else render_options
        self._check_synthesis_args(camera_offset, options, ws_background)
        resolution = cfg.neural_rendering_resolution if neural_rendering_resolution is None else \
            neural_rendering_resolution
        c_render = c if camera_offset is None else apply_camera_offset(c, camera_offset)
        planes = self._planes(ws, noise_mode)
        volume = render_volume(self._field(planes), c_render, resolution, options)
        features, weight = volume.features, volume.weight
        if cfg.background:
            if cfg.decoder_activation == "sigmoid":
                features = 2 * features - weight  # each sample's features f → 2f − 1, still premultiplied
            bg = self.bcg_synthesis(ws if ws_background is None else ws_background, out_resolution=resolution,
                                    antialias=cfg.sr_antialias, noise_mode=noise_mode)
            features = composite_features(features, weight, bg)
        elif cfg.decoder_activation == "sigmoid":
            features = 2 * features - 1  # EG3D: [0, 1] features composited over 0, mapped to [-1, 1]
        if cfg.raw_rgb == "torgb":
            rgb = self.torgb(features, ws[:, -1], fused_modconv=False)
        else:
            rgb = features[:, :3]
        image = self.superresolution(rgb, features, ws, noise_mode=cfg.sr_noise_mode)
        out = {"image": image, "image_raw": rgb, "image_mask": weight, "image_depth": volume.depth}
        if camera_offset is not None:
            out["camera_offset"] = camera_offset
        return out

    def _check_synthesis_args(self, camera_offset: torch.Tensor | None, options: RenderOptions,
                              ws_background: torch.Tensor | None) -> None:
        cfg = self.config
        if cfg.camera_adaptation and camera_offset is None:
            raise UserError("VolumetricHeadGenerator.synthesis: this model predicts camera offsets "
                            "(config.camera_adaptation); pass camera_offset=G.camera_offset(z, c) or an explicit "
                            "[B, 3] tensor (zeros to render without it), or call G(z, c)")
        if options.box_warp != cfg.render.box_warp:
            raise UserError(f"VolumetricHeadGenerator.synthesis: render_options.box_warp {options.box_warp} differs "
                            f"from the model's {cfg.render.box_warp}")
        if cfg.background and options.white_background:
            raise UserError("VolumetricHeadGenerator.synthesis: render_options.white_background with a background "
                            "generator")
        if ws_background is not None and not cfg.background:
            raise UserError("VolumetricHeadGenerator.synthesis: ws_background given but the model has no background")

    def forward(self, z: torch.Tensor, c: torch.Tensor, c_render: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None, update_emas: bool = False,
                **synthesis_kwargs) -> dict[str, torch.Tensor]:
        """z: [B, z_dim]; c: [B, 25] conditioning cameras; c_render: [B, 25] rendering cameras (None = c).

        ws come from (z, c); the self-adaptation offset (if any) from (z, c_render), with the same truncation.
        synthesis_kwargs: see :meth:`synthesis` (not ``camera_offset``).
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        c_render = c if c_render is None else c_render
        offset = self.camera_offset(z, c_render, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                    update_emas=update_emas)
        return self.synthesis(ws, c_render, camera_offset=offset, **synthesis_kwargs)

    def _planes(self, ws: torch.Tensor, noise_mode: str) -> torch.Tensor:
        """ws → tri-grid [B, 3, trigrid_channels, trigrid_depth, H, W]."""
        grid = self.backbone.synthesis(ws, noise_mode=noise_mode)
        return trigrid_from_synthesis(grid, self.config.trigrid_depth, self.config.trigrid_channels)

    def _field(self, planes: torch.Tensor):
        """Decode function for :func:`render_volume`: points [B, M, 3] → (raw σ [B, M, 1], features [B, M, F])."""
        box_warp, axes = self.config.render.box_warp, self.config.trigrid_axes

        def decode(points: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.decoder(sample_trigrid(planes, points, box_warp=box_warp, axes=axes))

        return decode

    def sample(self, coordinates: torch.Tensor, ws: torch.Tensor,
               noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        """Raw density and features at world points ``coordinates`` [B, M, 3] of the heads ws [B, num_ws, w_dim].

        Returns (raw σ [B, M, 1] before ``softplus(· − density_shift)``, no crop and no density noise; features
        [B, M, feature_channels] after the decoder activation). Used by density regularisation and shape tools.
        """
        misc.assert_shape(coordinates, [ws.shape[0], None, 3])
        return self._field(self._planes(ws, noise_mode))(coordinates, coordinates)

    def extract_density(self, ws: torch.Tensor, resolution: int, chunk: int = 1 << 18,
                        noise_mode: str = "random") -> torch.Tensor:
        """Density σ = softplus(σ_raw − density_shift) ≥ 0 on a voxel grid over the tri-grid box, as renders see it.

        Voxel ``[b, i, j, k]`` is the point ``(x_i, y_j, z_k)``, ``x_i = box_warp·((i + ½)/R − ½)`` (cell centres;
        x right, y up, z toward the face). The render crop of ``config.render`` (zero density where |x| or |z|
        exceeds box_warp/2 − triplane_crop) is applied. ``chunk``: points per head per decoder call (memory); call
        under ``torch.no_grad()`` unless gradients are wanted. Returns [B, R, R, R].
        """
        if resolution < 1 or chunk < 1:
            raise UserError(f"extract_density: resolution and chunk must be >= 1, got {resolution}, {chunk}")
        opts = self.config.render
        planes = self._planes(ws, noise_mode)
        field = self._field(planes)
        cells = torch.arange(resolution, device=planes.device, dtype=planes.dtype)
        axis = ((cells + 0.5) / resolution - 0.5) * opts.box_warp
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
        parts = []
        for start in range(0, grid.shape[1], chunk):
            points = grid[:, start:start + chunk].expand(ws.shape[0], -1, -1)
            sigma_raw, _ = field(points, points)
            if opts.triplane_crop is not None:
                sigma_raw = crop_density(points, sigma_raw, opts.box_warp, opts.triplane_crop)
            parts.append(F.softplus(sigma_raw[..., 0] - opts.density_shift))
        return torch.cat(parts, dim=1).reshape(ws.shape[0], resolution, resolution, resolution)
