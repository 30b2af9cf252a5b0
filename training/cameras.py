"""Camera labels, intrinsics, camera samplers and camera paths.

Conventions (see docs/cameras.md):

- A camera *label* is 25 floats: the row-major 4x4 cam2world matrix in OpenCV camera axes (x right, y down, z forward),
  then the row-major 3x3 intrinsics normalised by the image size (``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]``).
- World frame: y up, the face looks toward +z, so the frontal camera sits on the +z axis and looks toward -z.
- Orbit parameters ``(h, v)`` follow EG3D's samplers: ``h`` is the horizontal angle (pi/2 = frontal, growing ``h`` moves
  the camera toward +x), ``v`` the vertical one (pi/2 = equator, smaller ``v`` = camera higher). ``v`` is not an angle
  of elevation: the camera's height is ``radius * (1 - 2 v / pi)``, which makes ``v`` uniform in ``[0, pi]`` cover the
  sphere uniformly. ``v_to_pitch`` and ``pitch_to_v`` convert.
- Geometric angles ``(yaw, pitch, roll)`` describe a camera's orientation: yaw 0 = frontal, yaw > 0 = camera moved
  toward +x (yaw = h - pi/2); pitch > 0 = camera above, looking down (pitch = v_to_pitch(v)); roll > 0 = the camera's
  right axis tilted up toward world +y.

Everything is batched over leading dimensions, works on any device and defaults to float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dnnlib import UserError

FFHQ_FOCAL = 4.2647  # EG3D FFHQ focal length, normalised by image size (2985.29 px / 700 px)
DEFAULT_RADIUS = 2.7  # camera distance used by EG3D and PanoHead
EG3D_PIVOT = (0.0, 0.0, 0.2)  # point EG3D's FFHQ cameras look at
PANOHEAD_PIVOT = (0.0, 0.0, 0.0)  # point PanoHead's cameras look at
LABEL_DIM = 25

# EG3D clamps v away from the poles, where the look-at frame is undefined.
_V_EPS = 1e-5
# FOV conventions: focal = 1 / (scale * tan(fov / 2)). 'eg3d' is EG3D's FOV_to_intrinsics, which divides by 1.414 (a
# diagonal FOV of a square image) and converts degrees with pi written as 3.14159; both constants are kept so that
# its numbers are reproduced exactly (18.837 deg -> 4.2634).
_FOV_SCALE = {"horizontal": 2.0, "eg3d": 1.414}
_DEG_TO_RAD = {"horizontal": math.pi / 180.0, "eg3d": 3.14159 / 180.0}

Vec3 = Sequence[float] | Tensor
Scalar = float | Tensor


def _tensor(x: Scalar | Vec3, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Converts numbers, sequences or tensors to a tensor (float32 unless ``x`` is a floating tensor already)."""
    if isinstance(x, Tensor):
        return x.to(device=device or x.device, dtype=dtype or (x.dtype if x.is_floating_point() else torch.float32))
    return torch.as_tensor(x, device=device, dtype=dtype or torch.float32)


def encode_label(cam2world: Tensor, intrinsics: Tensor) -> Tensor:
    """Packs cameras into labels.

    Args:
        cam2world: [..., 4, 4] OpenCV cam2world matrices.
        intrinsics: [..., 3, 3] intrinsics normalised by image size; batch shape broadcast against ``cam2world``.
    Returns:
        [..., 25] labels.
    """
    if cam2world.shape[-2:] != (4, 4) or intrinsics.shape[-2:] != (3, 3):
        raise UserError(
            f"encode_label: expected cam2world [..., 4, 4] and intrinsics [..., 3, 3], "
            f"got {tuple(cam2world.shape)} and {tuple(intrinsics.shape)}"
        )
    batch = torch.broadcast_shapes(cam2world.shape[:-2], intrinsics.shape[:-2])
    extr = cam2world.expand(*batch, 4, 4).reshape(*batch, 16)
    intr = intrinsics.to(cam2world.dtype).expand(*batch, 3, 3).reshape(*batch, 9)
    return torch.cat([extr, intr], dim=-1)


def decode_label(label: Tensor) -> tuple[Tensor, Tensor]:
    """Splits [..., 25] labels into cam2world [..., 4, 4] (OpenCV) and normalised intrinsics [..., 3, 3]."""
    if label.shape[-1] != LABEL_DIM:
        raise UserError(f"decode_label: a camera label has {LABEL_DIM} numbers, got shape {tuple(label.shape)}")
    batch = label.shape[:-1]
    return label[..., :16].reshape(*batch, 4, 4), label[..., 16:].reshape(*batch, 3, 3)


def intrinsics_from_focal(
    focal: Scalar,
    principal: Sequence[float] = (0.5, 0.5),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Normalised pinhole intrinsics ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]``.

    Args:
        focal: float or [...] focal lengths in units of the image size (FFHQ: 4.2647).
        principal: (cx, cy) principal point in units of the image size.
    Returns:
        [..., 3, 3] (a float gives [3, 3]).
    """
    f = _tensor(focal, device, dtype)
    K = torch.zeros(*f.shape, 3, 3, device=f.device, dtype=f.dtype)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = principal[0]
    K[..., 1, 2] = principal[1]
    K[..., 2, 2] = 1.0
    return K


def normalized_to_pixel_intrinsics(K: Tensor, width: int, height: int) -> Tensor:
    """Scales normalised intrinsics [..., 3, 3] to pixels of a ``width`` x ``height`` image.

    Pixel coordinates have their origin at the top-left corner of the image (pixel i covers [i, i + 1)), so the
    normalised principal point 0.5 becomes ``width / 2``.
    """
    scale = torch.tensor([float(width), float(height), 1.0], device=K.device, dtype=K.dtype)
    return K * scale[:, None]


def pixel_to_normalized_intrinsics(K: Tensor, width: int, height: int) -> Tensor:
    """Inverse of ``normalized_to_pixel_intrinsics``: pixel intrinsics [..., 3, 3] to units of the image size."""
    scale = torch.tensor([1.0 / width, 1.0 / height, 1.0], device=K.device, dtype=K.dtype)
    return K * scale[:, None]


def _check_convention(convention: str) -> None:
    if convention not in _FOV_SCALE:
        raise UserError(f"FOV convention must be one of {sorted(_FOV_SCALE)}, got {convention!r}")


def fov_to_focal(fov_deg: Scalar, convention: str = "horizontal") -> Scalar:
    """Normalised focal length from a field of view in degrees.

    'horizontal': the full angle across the image width, ``f = 1 / (2 tan(fov / 2))``.
    'eg3d': EG3D's ``FOV_to_intrinsics``, ``f = 1 / (1.414 tan(fov / 2))`` (the angle across the image diagonal of a
    square image); EG3D's default 18.837 deg gives 4.2634, close to the FFHQ focal 4.2647.
    """
    _check_convention(convention)
    half = fov_deg * _DEG_TO_RAD[convention] / 2.0
    tan = torch.tan(half) if isinstance(half, Tensor) else math.tan(half)
    return 1.0 / (_FOV_SCALE[convention] * tan)


def focal_to_fov(focal: Scalar, convention: str = "horizontal") -> Scalar:
    """Field of view in degrees from a normalised focal length; inverse of ``fov_to_focal`` for the same convention."""
    _check_convention(convention)
    ratio = 1.0 / (_FOV_SCALE[convention] * focal)
    half = torch.atan(ratio) if isinstance(ratio, Tensor) else math.atan(ratio)
    return 2.0 * half / _DEG_TO_RAD[convention]


def look_at(origin: Vec3, target: Vec3, up: Vec3 = (0.0, 1.0, 0.0)) -> Tensor:
    """OpenCV cam2world matrices of cameras at ``origin`` looking at ``target``, with no roll about ``up``.

    Args:
        origin: [..., 3] camera centres, world frame.
        target: [..., 3] points on the optical axis, world frame (broadcast against ``origin``).
        up: [3] or [..., 3] world up direction; the image's down axis is the projection of -up.
    Returns:
        [..., 4, 4] cam2world with columns (right, down, forward, origin). Where forward is parallel to ``up`` the
        roll is undefined; the right axis is then taken from the world axis least aligned with ``up``.
    """
    o = _tensor(origin)
    t = _tensor(target, o.device, o.dtype)
    u = _tensor(up, o.device, o.dtype)
    o, t, u = torch.broadcast_tensors(o, t, u)
    forward = torch.nn.functional.normalize(t - o, dim=-1)
    right = torch.linalg.cross(forward, u, dim=-1)
    axis = torch.nn.functional.one_hot(u.abs().argmin(dim=-1), 3).to(o.dtype)
    fallback = axis - (axis * forward).sum(-1, keepdim=True) * forward
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6 * u.norm(dim=-1, keepdim=True)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.zeros(*o.shape[:-1], 4, 4, device=o.device, dtype=o.dtype)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = o
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_origin(h: Scalar, v: Scalar, radius: Scalar = DEFAULT_RADIUS, pivot: Vec3 = (0.0, 0.0, 0.0)) -> Tensor:
    """Camera centres on a sphere around ``pivot`` (EG3D's orbit parametrisation).

    Args:
        h: [...] horizontal angle in radians; pi/2 = frontal (+z), growing h moves toward +x.
        v: [...] vertical angle in radians, clamped to [1e-5, pi - 1e-5]; pi/2 = equator, smaller = higher.
        radius: distance to the pivot.
        pivot: [3] orbit centre, world frame.
    Returns:
        [..., 3] camera centres, world frame; (pi/2, pi/2) gives pivot + (0, 0, radius).
    """
    h = _tensor(h)
    v = _tensor(v, h.device, h.dtype).clamp(_V_EPS, math.pi - _V_EPS)
    h, v = torch.broadcast_tensors(h, v)
    cos_polar = 1.0 - 2.0 * v / math.pi  # EG3D draws the polar angle as arccos(1 - 2 v / pi)
    sin_polar = torch.sqrt((1.0 - cos_polar**2).clamp_min(0.0))
    r = _tensor(radius, h.device, h.dtype)
    offset = torch.stack([-sin_polar * torch.cos(h), cos_polar, sin_polar * torch.sin(h)], dim=-1)
    return _tensor(pivot, h.device, h.dtype) + r[..., None] * offset


def v_to_pitch(v: Scalar) -> Scalar:
    """Geometric pitch (elevation, radians, > 0 = above) of a camera at orbit parameter ``v`` looking at the pivot."""
    s = 1.0 - 2.0 * v / math.pi
    return torch.asin(s.clamp(-1.0, 1.0)) if isinstance(s, Tensor) else math.asin(max(-1.0, min(1.0, s)))


def pitch_to_v(pitch: Scalar) -> Scalar:
    """Orbit parameter ``v`` that gives a camera at geometric pitch ``pitch`` (radians); inverse of ``v_to_pitch``."""
    s = torch.sin(pitch) if isinstance(pitch, Tensor) else math.sin(pitch)
    return math.pi / 2.0 * (1.0 - s)


def lookat_labels(
    h: Scalar,
    v: Scalar,
    radius: Scalar = DEFAULT_RADIUS,
    pivot: Vec3 = EG3D_PIVOT,
    lookat: Vec3 | None = None,
    focal: Scalar = FFHQ_FOCAL,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Labels of cameras orbiting ``pivot`` at (h, v) and looking at ``lookat`` (default: the pivot).

    Args:
        h, v: float or [N] orbit angles (see ``orbit_origin``).
        radius: float or [N] distance to the pivot.
        pivot: [3] orbit centre, world frame. EG3D's own ``LookAtPoseSampler`` orbits the world origin and looks at
            its pivot; reproduce it with ``pivot=(0, 0, 0), lookat=EG3D_PIVOT``.
        lookat: [3] point the cameras look at; None = the pivot.
        focal: float or [N] normalised focal length.
    Returns:
        [N, 25] labels (N = 1 for scalar inputs).
    """
    h = _tensor(h, device, dtype).reshape(-1)
    v = _tensor(v, h.device, dtype).reshape(-1)
    r = _tensor(radius, h.device, dtype).reshape(-1)
    origin = orbit_origin(h, v, r, pivot)
    target = _tensor(pivot if lookat is None else lookat, h.device, dtype)
    c2w = look_at(origin, target.expand_as(origin))
    K = intrinsics_from_focal(_tensor(focal, h.device, dtype).reshape(-1), device=h.device, dtype=dtype)
    return encode_label(c2w, K)


def _randn(n: int, generator: torch.Generator | None, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """n standard normals drawn on the generator's device (so any generator works), then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(n, generator=generator, device=gen_device, dtype=dtype).to(device)


def _rand(n: int, generator: torch.Generator | None, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """n uniforms in [0, 1) drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_gaussian(
    n: int,
    h_mean: float = math.pi / 2,
    v_mean: float = math.pi / 2,
    h_std: float = 0.3,
    v_std: float = 0.155,
    radius: float = DEFAULT_RADIUS,
    pivot: Vec3 = EG3D_PIVOT,
    lookat: Vec3 | None = None,
    focal: float = FFHQ_FOCAL,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """[n, 25] labels with h ~ N(h_mean, h_std^2), v ~ N(v_mean, v_std^2) (EG3D's GaussianCameraPoseSampler).

    The default spread (0.3, 0.155 rad) is the face-pose prior that pi-GAN used for CelebA.
    """
    h = h_mean + h_std * _randn(n, generator, device, dtype)
    v = v_mean + v_std * _randn(n, generator, device, dtype)
    return lookat_labels(h, v, radius, pivot, lookat, focal, device, dtype)


def sample_uniform(
    n: int,
    h_mean: float = math.pi / 2,
    v_mean: float = math.pi / 2,
    h_std: float = 0.3,
    v_std: float = 0.155,
    radius: float = DEFAULT_RADIUS,
    pivot: Vec3 = EG3D_PIVOT,
    lookat: Vec3 | None = None,
    focal: float = FFHQ_FOCAL,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """[n, 25] labels with h uniform in h_mean +- h_std and v uniform in v_mean +- v_std (EG3D's uniform sampler)."""
    h = h_mean + h_std * (2.0 * _rand(n, generator, device, dtype) - 1.0)
    v = v_mean + v_std * (2.0 * _rand(n, generator, device, dtype) - 1.0)
    return lookat_labels(h, v, radius, pivot, lookat, focal, device, dtype)


def sample_360(
    n: int,
    v_mean: float = math.pi / 2,
    v_std: float = 0.155,
    radius: float = DEFAULT_RADIUS,
    pivot: Vec3 = PANOHEAD_PIVOT,
    lookat: Vec3 | None = None,
    focal: float = FFHQ_FOCAL,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """[n, 25] labels all around the head (PanoHead-like): h uniform over the full circle, v ~ N(v_mean, v_std^2)."""
    h = 2.0 * math.pi * _rand(n, generator, device, dtype)
    v = v_mean + v_std * _randn(n, generator, device, dtype)
    return lookat_labels(h, v, radius, pivot, lookat, focal, device, dtype)


def mirror_label(label: Tensor) -> Tensor:
    """Labels [..., 25] of the left-right mirrored images.

    The cam2world M becomes S M S with S = diag(-1, 1, 1, 1): the world is reflected in x and so is the camera's x axis,
    which keeps a proper rotation. A mirrored image moves the principal point to 1 - cx and negates the skew; for the
    usual intrinsics (cx = 0.5, no skew) they are unchanged.
    """
    c2w, K = decode_label(label)
    s = torch.tensor([-1.0, 1.0, 1.0, 1.0], device=label.device, dtype=label.dtype)
    c2w = c2w * (s[:, None] * s[None, :])
    K = K.clone()
    K[..., 0, 1] = -K[..., 0, 1]
    K[..., 0, 2] = K[..., 2, 2] - K[..., 0, 2]
    return encode_label(c2w, K)


def label_yaw_pitch_roll(label: Tensor) -> Tensor:
    """Geometric (yaw, pitch, roll) in radians of the camera orientation in [..., 25] labels.

    With R = cam2world rotation and R0 = diag(1, -1, -1) the frontal camera, R R0^T = Ry(yaw) Rx(-pitch) Rz(roll):
    yaw in (-pi, pi] (0 = frontal, > 0 = camera toward +x, +-pi = back view), pitch in [-pi/2, pi/2] (> 0 = camera
    above, looking down), roll (> 0 = camera right axis tilted toward +y). For a camera looking at the orbit pivot,
    yaw = h - pi/2 (wrapped) and pitch = v_to_pitch(v). Depends only on the orientation, not on the position.
    Returns [..., 3].
    """
    c2w, _ = decode_label(label)
    right, down, back = c2w[..., :3, 0], c2w[..., :3, 1], -c2w[..., :3, 2]
    yaw = torch.atan2(back[..., 0], back[..., 2])
    pitch = torch.atan2(back[..., 1], torch.hypot(back[..., 0], back[..., 2]))
    roll = torch.atan2(right[..., 1], -down[..., 1])
    return torch.stack([yaw, pitch, roll], dim=-1)


def orbit_labels(
    num_frames: int,
    yaw_range: float = 0.35,
    pitch_range: float = 0.25,
    v_offset: float = -0.05,
    radius: float = DEFAULT_RADIUS,
    pivot: Vec3 = EG3D_PIVOT,
    lookat: Vec3 | None = None,
    focal: float = FFHQ_FOCAL,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """[num_frames, 25] labels on a closed elliptic path in front of the face (EG3D's video orbit).

    Frame k at t = k / num_frames: h = pi/2 + yaw_range sin(2 pi t), v = pi/2 + v_offset + pitch_range cos(2 pi t);
    the ranges are amplitudes of the orbit parameters (h, v) in radians, EG3D's defaults being 0.35 and 0.25.
    """
    t = torch.arange(num_frames, device=device, dtype=dtype) / num_frames
    h = math.pi / 2 + yaw_range * torch.sin(2 * math.pi * t)
    v = math.pi / 2 + v_offset + pitch_range * torch.cos(2 * math.pi * t)
    return lookat_labels(h, v, radius, pivot, lookat, focal, device, dtype)


def orbit_360_labels(
    num_frames: int,
    v_mean: float = math.pi / 2,
    v_amplitude: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    pivot: Vec3 = PANOHEAD_PIVOT,
    lookat: Vec3 | None = None,
    focal: float = FFHQ_FOCAL,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """[num_frames, 25] labels of one full turn around the head, starting frontal and moving toward +x.

    Frame k at t = k / num_frames: h = pi/2 + 2 pi t, v = v_mean + v_amplitude sin(2 pi t) (PanoHead's turntable).
    """
    t = torch.arange(num_frames, device=device, dtype=dtype) / num_frames
    h = math.pi / 2 + 2 * math.pi * t
    v = v_mean + v_amplitude * torch.sin(2 * math.pi * t)
    return lookat_labels(h, v, radius, pivot, lookat, focal, device, dtype)
