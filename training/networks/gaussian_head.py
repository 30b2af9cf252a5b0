"""Gaussian-head generator (GGHead-style): a StyleGAN2 UV map sampled at template points, rendered as 3D Gaussians.

Pipeline: z, c → mapping → ws → StyleGAN2 synthesis → UV map [B, C, H, W] (H = W = ``uv_resolution``) → bilinear
samples at the fixed UV points of a template mesh (one Gaussian per covered texel centre of a ``sample_resolution``²
grid) → activations → batched rasterization at the output resolution (no super-resolution, so ``image_raw`` is
``image``).

Background: a constant colour blended by the rasterizer (GGHead, masked data), or with ``background_generator`` the
shared StyleGAN2 :class:`~training.networks.background.BackgroundGenerator` (PanoHead's, submodule ``bcg_synthesis``,
3 RGB channels in the image range) driven by the first ws, or by ``ws_background`` (background-swap regulariser). Its
image is resized to the render resolution (bilinear, antialiased when shrinking) and composited in the image range
over the premultiplied render: with F = Σ c_i α_i T_i (colours in [0, 1], rendered over 0) and alpha A,
image = (2F − A) + (1 − A)·bg, i.e. every colour mapped to 2c − 1 and then ``composite_features``. ``image_mask`` is
A either way.

UV-map channels, in this order: position offset 3 (through a zero-initialised 1×1 convolution, so every Gaussian starts
exactly on the template), scale 3, rotation (axis-angle 3 or quaternion 4), colour (RGB 3 or SH degree 1: 4 × 3,
coefficient-major), opacity 1. GGHead's FFHQ configuration has 22 channels (axis-angle, SH degree 1).

Activations of a raw sampled value r (GGHead's defaults; the config fields in brackets):
- position = template point + 0.25·tanh(r)  [position_range]
- log-scale = −3 − softplus(2 − r) = m − softplus(m − o − r) with m = −3 [scale_max], o = −5 [scale_offset]; the
  scale is exp(log-scale): ≈ 0.0059 at r = 0, below e^−3 ≈ 0.05 always.
- opacity = 1.002·sigmoid(r) − 0.001 (reaches 0 and 1 at finite r) [opacity_overshoot], then clamped to [0, 1]: the
  rasterizer and the opacity regulariser see the clamped value.
- colour: 'rgb' = clamp(0.5 + 0.501·tanh(r), 0, 1) [color_overshoot]. 'sh1': every coefficient is
  f = (0.501 / C0)·tanh(r) and the colour seen along the unit direction d = (x, y, z) from the camera centre to the
  Gaussian is clamp(0.5 + C0 f0 − C1 y f1 + C1 z f2 − C1 x f3, 0, 1) (the 3D Gaussian Splatting basis, C0 = 1/(2√π),
  C1 = √3/(2√π)). It is evaluated per head toward that head's rendering camera; with f1..f3 = 0 it equals 'rgb'.
- rotation: quaternions are (w, x, y, z), Hamilton product, rotating column vectors (``quaternion_to_rotation``).
  'axis_angle': a = 2π·tanh(r) per component [rotation_range], q = (cos(|a|/2), sin(|a|/2)·a/|a|), so r = 0 is the
  identity (GGHead permutes the components of an already real-first quaternion, so its r = 0 is a 180° turn about x).
  'quaternion': q = normalize(r + (1, 0, 0, 0)), again the identity at r = 0.

World mode (default, GGHead): offsets, rotations and scales are world-space. With ``bind_to_triangles`` each Gaussian
belongs to the template triangle under its sample point, with frame (R, k, T) from ``triangle_frames``
(GaussianAvatars: μ' = k·R·μ + T, r' = R∘r, s' = k·s). Local attributes are measured in units of the template
triangle's own k₀, so the undeformed template gives the same magnitudes as world mode: μ' = p + (k/k₀)·R·offset with
p the barycentric surface point on the (possibly deformed) triangle (this equals k·R·μ + T exactly whenever the
triangle moved by a similarity), q' = quat(R) ⊗ q, s' = (k/k₀)·s. Pass ``template_vertices`` to ``synthesis`` to
render with a deformed template of the same topology.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dnnlib import UserError
from training.cameras import decode_label
from training.config_io import check_field_types, config_from_dict, config_to_dict
from training.networks.background import BackgroundGenerator, composite_features
from training.networks.stylegan2 import Generator
from training.rendering.gaussian_rasterizer import BACKENDS, rasterize
from training.rendering.gaussians import Gaussians
from training.rendering.template import (
    NAMED_TRANSFORMS,
    TemplateMesh,
    UVSamples,
    load_obj,
    procedural_head,
    sample_points,
    triangle_frames,
)

COLOR_MODES = ("rgb", "sh1")
ROTATION_MODES = ("axis_angle", "quaternion")
SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi)), the degree-0 real spherical harmonic
SH_C1 = 0.4886025119029199  # sqrt(3) / (2 sqrt(pi)), the degree-1 factor


@dataclass(frozen=True)
class GaussianHeadConfig:
    """Gaussian-head generator configuration; defaults are GGHead's FFHQ-512 model (stage 1 sample density).

    ``template`` is 'procedural' (the built-in head, already in EG3D world) or the path of an OBJ file with UVs;
    ``template_transform`` names a transform in ``training.rendering.template.NAMED_TRANSFORMS`` (e.g.
    'flame_to_eg3d' for GGHead's FLAME templates) applied to the OBJ's vertices. ``background`` is an RGB colour in
    the image range [-1, 1] (white = (1, 1, 1), as GGHead's masked data), used unless ``background_generator``: then a
    BackgroundGenerator paints it (``background_resolution``, a power of two >= 4, and ``background_channel_base``, as
    in ``VolumetricHeadConfig``; PanoHead: 128 and 16384). ``sample_resolution`` grows from 256 to 512
    in GGHead's second stage (pass ``sample_resolution`` to ``synthesis``); ``render_resolution`` is the default
    output size. The activation constants are described in the module docstring.
    """

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25
    mapping_layers: int = 2
    uv_resolution: int = 256
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None
    sample_resolution: int = 256
    template: str = "procedural"
    template_transform: str | None = None
    color: str = "sh1"
    rotation: str = "axis_angle"
    bind_to_triangles: bool = False
    render_resolution: int = 512
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background_generator: bool = False
    background_resolution: int = 128
    background_channel_base: int = 16384
    rasterizer_backend: str = "auto"
    position_range: float = 0.25
    scale_offset: float = -5.0
    scale_max: float = -3.0
    opacity_overshoot: float = 0.001
    color_overshoot: float = 0.001
    rotation_range: float = 2 * math.pi

    def __post_init__(self) -> None:
        check_field_types(self)
        positive = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "sample_resolution",
                    "render_resolution", "background_channel_base", "position_range", "rotation_range")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"GaussianHeadConfig.{name}: expected a positive value, got {getattr(self, name)}")
        for name in ("c_dim", "num_fp16_res", "opacity_overshoot", "color_overshoot"):
            if getattr(self, name) < 0:
                raise UserError(f"GaussianHeadConfig.{name}: expected a value >= 0, got {getattr(self, name)}")
        for name in ("uv_resolution", "background_resolution"):
            value = getattr(self, name)
            if value < 4 or value & (value - 1):
                raise UserError(f"GaussianHeadConfig.{name}: expected a power of two >= 4, got {value}")
        choices = {"color": COLOR_MODES, "rotation": ROTATION_MODES, "rasterizer_backend": BACKENDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"GaussianHeadConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.template_transform is not None and self.template_transform not in NAMED_TRANSFORMS:
            raise UserError(f"GaussianHeadConfig.template_transform: expected None or one of "
                            f"{sorted(NAMED_TRANSFORMS)}, got {self.template_transform!r}")
        if self.template == "procedural" and self.template_transform is not None:
            raise UserError("GaussianHeadConfig.template_transform: the procedural template is built in EG3D world; "
                            "a transform applies to OBJ templates only")
        if not all(-1.0 <= x <= 1.0 for x in self.background):
            raise UserError(f"GaussianHeadConfig.background: expected 3 numbers in [-1, 1], got {self.background}")

    def to_dict(self) -> dict:
        """A JSON-compatible dict of the fields (tuples as lists); see ``training.config_io``."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> GaussianHeadConfig:
        """The config from ``to_dict`` output (e.g. read back from JSON); unknown keys and wrong types are errors."""
        return config_from_dict(cls, data)

    def attribute_channels(self) -> dict[str, int]:
        """UV-map channels per attribute, in UV-map order."""
        return {
            "position": 3,
            "scale": 3,
            "rotation": 3 if self.rotation == "axis_angle" else 4,
            "color": 3 if self.color == "rgb" else 12,
            "opacity": 1,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Activations and quaternion helpers (pure functions)


def activate_position_offset(raw: Tensor, position_range: float = 0.25) -> Tensor:
    """Offsets [..., 3] from the template point: position_range · tanh(raw) (world units, or local in bound mode)."""
    return position_range * torch.tanh(raw)


def activate_log_scale(raw: Tensor, scale_offset: float = -5.0, scale_max: float = -3.0) -> Tensor:
    """Log standard deviations: scale_max − softplus(scale_max − scale_offset − raw), i.e. −3 − softplus(2 − r)."""
    return scale_max - F.softplus(scale_max - scale_offset - raw)


def activate_opacity(raw: Tensor, overshoot: float = 0.001) -> Tensor:
    """(1 + 2·overshoot)·sigmoid(raw) − overshoot, i.e. 1.002·sigmoid(r) − 0.001 (not clamped here)."""
    return (1 + 2 * overshoot) * torch.sigmoid(raw) - overshoot


def activate_color(raw: Tensor, mode: str, overshoot: float = 0.001) -> Tensor:
    """'rgb': raw [..., 3] → RGB in [0, 1]; 'sh1': raw [..., 12] → SH coefficients [..., 4, 3] (see module doc)."""
    bounded = (0.5 + overshoot) * torch.tanh(raw)
    if mode == "rgb":
        return (0.5 + bounded).clamp(0.0, 1.0)
    return (bounded / SH_C0).unflatten(-1, (4, 3))


def sh1_to_rgb(coefficients: Tensor, directions: Tensor) -> Tensor:
    """Colours [..., 3] in [0, 1] of SH degree-1 ``coefficients`` [..., 4, 3] seen along ``directions`` [..., 3]
    (from the camera toward the Gaussian, any length; 3D Gaussian Splatting's basis and +0.5 offset)."""
    x, y, z = F.normalize(directions, dim=-1).unsqueeze(-1).unbind(-2)
    f0, f1, f2, f3 = coefficients.unbind(-2)
    return (0.5 + SH_C0 * f0 + SH_C1 * (-y * f1 + z * f2 - x * f3)).clamp(0.0, 1.0)


def axis_angle_to_quaternion(axis_angle: Tensor) -> Tensor:
    """(w, x, y, z) unit quaternions [..., 4] of rotations by |a| radians about a / |a| (a: [..., 3])."""
    angle = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)
    # sin(θ/2)/θ = sinc(θ/(2π))/2 stays smooth at θ = 0 (torch.sinc(x) = sin(πx)/(πx)).
    return torch.cat([torch.cos(angle / 2), axis_angle * 0.5 * torch.sinc(angle / (2 * math.pi))], dim=-1)


def activate_rotation(raw: Tensor, mode: str, rotation_range: float = 2 * math.pi) -> Tensor:
    """Unit (w, x, y, z) quaternions [..., 4] from raw rotations ([..., 3] axis-angle or [..., 4] quaternion)."""
    if mode == "axis_angle":
        return axis_angle_to_quaternion(rotation_range * torch.tanh(raw))
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=raw.dtype, device=raw.device)
    return F.normalize(raw + identity, dim=-1)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions [..., 4] (broadcast): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def rotation_to_quaternion(rotation: Tensor) -> Tensor:
    """Unit (w, x, y, z) quaternions [..., 4] with w >= 0 of rotation matrices [..., 3, 3].

    Each of the four rows below equals 4·q_i·q for one component i; the row with the largest 4·q_i² is used, so the
    division never involves a small number.
    """
    m = rotation
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    rows = torch.stack([
        torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]],
                    dim=-1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - trace, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], dim=-1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - trace,
                     m[..., 1, 2] + m[..., 2, 1]], dim=-1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 + 2 * m[..., 2, 2] - trace], dim=-1),
    ], dim=-2)  # [..., 4, 4]
    best = rows.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)
    q = F.normalize(rows.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2), dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


# ---------------------------------------------------------------------------------------------------------------------
# Generator


@dataclass(frozen=True)
class RawAttributes:
    """Pre-activation values sampled from the UV map (position after the zero-initialised convolution).

    position [B, N, 3], scale [B, N, 3], rotation [B, N, 3 | 4], color [B, N, 3 | 12], opacity [B, N].
    """

    position: Tensor
    scale: Tensor
    rotation: Tensor
    color: Tensor
    opacity: Tensor


@dataclass(frozen=True)
class GeneratedHeads:
    """B generated heads before rendering (activated attributes, not yet evaluated for a camera).

    means [B, N, 3] world; scales [B, N, 3] linear (> 0); quats [B, N, 4] unit (w, x, y, z); colors [B, N, 3] RGB
    in [0, 1] ('rgb') or [B, N, 4, 3] SH degree-1 coefficients ('sh1'); opacities [B, N] in [0, 1] (clamped);
    uv [N, 2] the Gaussians' UV coordinates in [0, 1]; raw the pre-activation values; uv_map [B, C, H, W] the
    synthesis output with the position channels after the zero-initialised convolution; background [B, 3, Rb, Rb]
    the generated background in [-1, 1] at the background generator's resolution (None with a constant colour).
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    colors: Tensor
    opacities: Tensor
    uv: Tensor
    raw: RawAttributes
    uv_map: Tensor
    background: Tensor | None = None


def load_template(config: GaussianHeadConfig) -> TemplateMesh:
    """The template mesh named by ``config.template`` (and ``template_transform``), in EG3D world."""
    if config.template == "procedural":
        return procedural_head()
    if Path(config.template).suffix.lower() != ".obj":
        raise UserError(f"GaussianHeadConfig.template: expected 'procedural' or an .obj path, got {config.template!r}")
    return load_obj(config.template, transform=config.template_transform)


class GaussianHeadGenerator(torch.nn.Module):
    """G(z, c) → a dict with ``image`` [B, 3, R, R] in [-1, 1] and the generated Gaussians (see ``synthesis``).

    Parameters: ``backbone`` (a StyleGAN2 ``Generator``: backbone.mapping.*, backbone.synthesis.*),
    ``position_conv`` (the zero-initialised 1×1 convolution) and, with ``background_generator``, ``bcg_synthesis``
    (a BackgroundGenerator, named as in the volumetric head and PanoHead). The template is rebuilt from the config
    (its buffers are not saved in the state dict); sample points are computed once per (sample resolution, device)
    and memoised.
    """

    def __init__(self, config: GaussianHeadConfig):
        super().__init__()
        self.config = config
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution, self.img_channels = config.render_resolution, 3
        self.channels = config.attribute_channels()
        self.backbone = Generator(
            config.z_dim, config.c_dim, config.w_dim, config.uv_resolution, sum(self.channels.values()),
            mapping_kwargs=dict(num_layers=config.mapping_layers), channel_base=config.channel_base,
            channel_max=config.channel_max, num_fp16_res=config.num_fp16_res, conv_clamp=config.conv_clamp,
            architecture="skip",
        )
        self.num_ws = self.backbone.num_ws
        self.position_conv = torch.nn.Conv2d(3, 3, kernel_size=1)
        torch.nn.init.zeros_(self.position_conv.weight)
        torch.nn.init.zeros_(self.position_conv.bias)
        if config.background_generator:
            self.bcg_synthesis = BackgroundGenerator(config.w_dim, config.background_resolution, 3,
                                                     channel_base=config.background_channel_base,
                                                     channel_max=config.channel_max)
        self._mesh = load_template(config)
        self.register_buffer("template_vertices", self._mesh.vertices.clone(), persistent=False)
        self.register_buffer("template_faces", self._mesh.faces.clone(), persistent=False)
        self.register_buffer("background_color", (torch.tensor(config.background) + 1) / 2, persistent=False)  # [0, 1]
        self._samples: dict[tuple[int, torch.device], tuple[UVSamples, Tensor]] = {}

    def mapping(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> Tensor:
        """z [B, z_dim], conditioning labels c [B, c_dim] → ws [B, num_ws, w_dim]."""
        return self.backbone.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                     update_emas=update_emas)

    def sample_set(self, sample_resolution: int | None = None) -> tuple[UVSamples, Tensor]:
        """The UV sample points at ``sample_resolution`` (default: the config's) on the buffers' device, and each
        point's template triangle scale k₀ [N] (``triangle_frames``). Memoised: a pure function of the config."""
        resolution = self.config.sample_resolution if sample_resolution is None else sample_resolution
        if not isinstance(resolution, int) or resolution < 1:
            raise UserError(f"sample_resolution: expected a positive int, got {resolution!r}")
        key = (resolution, self.template_vertices.device)
        if key not in self._samples:
            samples = sample_points(self._mesh, resolution)
            _, scale, _ = triangle_frames(self._mesh.vertices.double(), self._mesh.faces)
            self._samples[key] = (samples.to(key[1]), scale[samples.face_index].to(key[1]))
        return self._samples[key]

    def generate(self, ws: Tensor, sample_resolution: int | None = None, template_vertices: Tensor | None = None,
                 ws_background: Tensor | None = None, **block_kwargs) -> GeneratedHeads:
        """ws [B, num_ws, w_dim] → the activated Gaussians of B heads (and their generated background, if any).

        template_vertices: [V, 3] or [B, V, 3] world vertices with the template's topology (default: the template).
        ws_background: [B, n >= 1, w_dim] ws for the background generator instead of ``ws`` (background swap).
        block_kwargs: noise_mode ('random' | 'const' | 'none'), force_fp32, fused_modconv (see stylegan2.py); they
        apply to the background generator too.
        """
        cfg = self.config
        vertices = self._check_vertices(template_vertices)
        uv_map = self.backbone.synthesis(ws, **block_kwargs)
        uv_map = torch.cat([self.position_conv(uv_map[:, :3]), uv_map[:, 3:]], dim=1)
        samples, frame_scale0 = self.sample_set(sample_resolution)
        values = samples.sample_map(uv_map).split(list(self.channels.values()), dim=-1)
        raw = RawAttributes(*values[:4], opacity=values[4].squeeze(-1))
        points = samples.positions(vertices.to(uv_map.dtype))  # [(B,) N, 3]
        offsets = activate_position_offset(raw.position, cfg.position_range)
        scales = torch.exp(activate_log_scale(raw.scale, cfg.scale_offset, cfg.scale_max))
        quats = activate_rotation(raw.rotation, cfg.rotation, cfg.rotation_range)
        if cfg.bind_to_triangles:
            rotation, scale, _ = triangle_frames(vertices.to(uv_map.dtype), self.template_faces)
            rotation = rotation[..., samples.face_index, :, :]  # [(B,) N, 3, 3]
            ratio = (scale[..., samples.face_index] / frame_scale0.to(scale.dtype))[..., None]  # k / k0
            offsets = ratio * (rotation @ offsets.unsqueeze(-1)).squeeze(-1)
            scales = scales * ratio
            quats = quaternion_multiply(rotation_to_quaternion(rotation), quats)
        opacities = activate_opacity(raw.opacity, cfg.opacity_overshoot).clamp(0.0, 1.0)
        return GeneratedHeads(
            means=points + offsets,
            scales=scales,
            quats=quats,
            colors=activate_color(raw.color, cfg.color, cfg.color_overshoot),
            opacities=opacities,
            uv=samples.uv.to(uv_map.dtype),
            raw=raw,
            uv_map=uv_map,
            background=self._background(ws, ws_background, **block_kwargs),
        )

    def _background(self, ws: Tensor, ws_background: Tensor | None, **block_kwargs) -> Tensor | None:
        """The background generator's image [B, 3, Rb, Rb] for ``ws_background`` (default: ws), None with a constant
        colour."""
        if not self.config.background_generator:
            if ws_background is not None:
                raise UserError("GaussianHeadGenerator: ws_background given but the model has a constant background "
                                "(GaussianHeadConfig.background_generator is False)")
            return None
        if ws_background is None:
            return self.bcg_synthesis(ws, **block_kwargs)
        shape = ws_background.shape
        if ws_background.ndim != 3 or shape[0] != ws.shape[0] or shape[1] < 1 or shape[2] != self.w_dim:
            raise UserError(f"GaussianHeadGenerator: ws_background must be [{ws.shape[0]}, n >= 1, {self.w_dim}], "
                            f"got {list(shape)}")
        return self.bcg_synthesis(ws_background, **block_kwargs)

    def _check_vertices(self, template_vertices: Tensor | None) -> Tensor:
        if template_vertices is None:
            return self.template_vertices
        count = len(self.template_vertices)
        if template_vertices.ndim not in (2, 3) or tuple(template_vertices.shape[-2:]) != (count, 3):
            raise UserError(f"template_vertices: expected [{count}, 3] or [B, {count}, 3] (the template's "
                            f"topology), got {tuple(template_vertices.shape)}")
        return template_vertices

    def render(self, heads: GeneratedHeads, c: Tensor, render_resolution: int | None = None,
               render_uv: bool = False) -> dict:
        """Renders each head from its camera c [B, 25] (labels) at ``render_resolution`` (default: the config's).

        Returns image / image_raw [B, 3, R, R] in [-1, 1] (the same tensor; over the constant colour or over the heads'
        generated background resized to R, see the module docstring), image_mask [B, 1, R, R] (accumulated
        alpha), image_depth [B, 1, R, R] (expected camera-space z where alpha > 0, divided by alpha; 0 elsewhere),
        gaussians (the rendered Gaussians; colours are the RGB seen from c), and with ``render_uv`` image_uv
        [B, 2, R, R]: the Gaussians' UV coordinates composited in the same pass (premultiplied by alpha, background 0),
        for the UV total-variation regulariser.
        """
        resolution = self.config.render_resolution if render_resolution is None else render_resolution
        batch = heads.means.shape[0]
        if c.ndim != 2 or tuple(c.shape) != (batch, 25):
            raise UserError(f"render: expected rendering cameras c [{batch}, 25], got {tuple(c.shape)}")
        colors = heads.colors
        if self.config.color == "sh1":
            cam2world, _ = decode_label(c.to(heads.means.dtype))
            colors = sh1_to_rgb(colors, heads.means - cam2world[:, None, :3, 3])
        if (heads.background is None) == self.config.background_generator:
            raise UserError("render: the heads' background does not match GaussianHeadConfig.background_generator "
                            "(generate them with this generator)")
        gaussians = Gaussians(heads.means, heads.scales, heads.quats, colors, heads.opacities)
        features = colors
        if render_uv:
            features = torch.cat([colors, heads.uv.expand(batch, -1, -1)], dim=-1)
        background = None  # a generated background is composited below, over the render on 0
        if heads.background is None:
            background = self.background_color.to(colors.dtype)
            if render_uv:
                background = torch.cat([background, background.new_zeros(2)])
        out = rasterize(Gaussians(heads.means, heads.scales, heads.quats, features, heads.opacities), c, resolution,
                        background=background, backend=self.config.rasterizer_backend)
        rgb = out.features[:, :3]  # in [0, 1], over the constant colour or premultiplied over 0
        if heads.background is None:
            image = rgb * 2 - 1
        else:
            bg = heads.background
            if bg.shape[-1] != resolution:  # as BackgroundGenerator(out_resolution=...)
                bg = F.interpolate(bg, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                   antialias=True)
            image = composite_features(rgb * 2 - out.alpha, out.alpha, bg.to(rgb.dtype))
        result = dict(image=image, image_raw=image, image_mask=out.alpha, image_depth=out.depth, gaussians=gaussians)
        if render_uv:
            result["image_uv"] = out.features[:, 3:]
        return result

    def synthesis(self, ws: Tensor, c: Tensor, render_resolution: int | None = None,
                  sample_resolution: int | None = None, template_vertices: Tensor | None = None,
                  render_uv: bool = False, ws_background: Tensor | None = None, **block_kwargs) -> dict:
        """ws [B, num_ws, w_dim] and rendering cameras c [B, 25] → ``render``'s dict plus ``raw`` (RawAttributes, for
        the regularisers) and ``heads`` (GeneratedHeads: re-render them from other cameras with ``render``).
        ws_background: [B, n, w_dim] ws for the background generator (background swap; needs one)."""
        heads = self.generate(ws, sample_resolution=sample_resolution, template_vertices=template_vertices,
                              ws_background=ws_background, **block_kwargs)
        result = self.render(heads, c, render_resolution=render_resolution, render_uv=render_uv)
        result.update(raw=heads.raw, heads=heads)
        return result

    def forward(self, z: Tensor, c: Tensor, c_render: Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False, **synthesis_kwargs) -> dict:
        """z [B, z_dim], conditioning cameras c [B, 25], rendering cameras c_render [B, 25] (default: c)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c if c_render is None else c_render, **synthesis_kwargs)
