"""Procedural head geometry for the synthetic dataset: per-head parameters and the solids that make up a head.

A head is a union of ``NUM_PRIMITIVES`` convex solids, each an ellipsoid intersected with one half-space (a clipping
plane), so that a ray meets each solid in one closed-form interval (see ``training/synthetic.py``). Every head has the
same list of solids (``PRIMITIVE_NAMES``); optional parts (long hair, fringe, bun) are switched off per head with
``Primitives.enabled``.

World frame (EG3D): y up, the face looks toward +z, +x is the subject's left. The head is centred near the origin and is
about 0.55 units tall from chin to the top of the hair, which fills an FFHQ-like frame at camera radius 2.7 with focal
4.2647. All geometry is float64; colours are linear RGB albedos in [0, 1].

Head ``i`` of a dataset depends only on ``(seed, i)``: its random numbers come from its own generator seeded with both.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

PRIMITIVE_NAMES = (
    "cranium", "face", "neck", "torso", "hair_cap", "hair_back", "fringe", "bun", "ear_left", "ear_right",
    "eye_left", "eye_right", "brow_left", "brow_right", "nose", "lip_upper", "lip_lower",
)  # fmt: skip
NUM_PRIMITIVES = len(PRIMITIVE_NAMES)
_UNCLIPPED = 1e4  # plane offset of solids without a clipping plane: the half-space contains the whole scene

# Palettes (linear RGB albedo) and their sampling weights.
_SKIN_TONES = ((0.97, 0.83, 0.72), (0.86, 0.65, 0.50), (0.66, 0.45, 0.31), (0.42, 0.27, 0.18), (0.27, 0.17, 0.12))
_HAIR_COLOURS = (
    ((0.05, 0.04, 0.04), 0.25), ((0.20, 0.12, 0.07), 0.22), ((0.40, 0.25, 0.13), 0.16), ((0.82, 0.66, 0.38), 0.12),
    ((0.52, 0.20, 0.08), 0.08), ((0.60, 0.60, 0.60), 0.07), ((0.88, 0.87, 0.83), 0.04), ((0.18, 0.30, 0.70), 0.03),
    ((0.85, 0.38, 0.58), 0.03),
)  # fmt: skip
_IRIS_COLOURS = ((0.30, 0.17, 0.08), (0.15, 0.09, 0.05), (0.25, 0.45, 0.70), (0.30, 0.50, 0.30), (0.45, 0.40, 0.20))
_SCALE = 1.06  # overall size: chin to the top of the hair 0.44 - 0.55, mean 0.49 (FFHQ-like framing at radius 2.7)
_NUM_UNIFORMS = 43  # random numbers drawn per head (columns of ``HeadParams.u``), each used by one property


@dataclasses.dataclass(frozen=True)
class HeadParams:
    """Random numbers of a batch of heads; ``head_primitives`` turns them into geometry and colours.

    ``u`` is [N, 43] float64 uniforms in [0, 1), one row per head; ``index`` is [N] int64, the heads' dataset indices.
    """

    u: Tensor
    index: Tensor

    def __len__(self) -> int:
        return self.u.shape[0]


@dataclasses.dataclass(frozen=True)
class Primitives:
    """The solids of N heads, K = NUM_PRIMITIVES each, world frame, float64 (colours in [0, 1]).

    Solid k of head n is {x : |diag(1/radii) rotation^T (x - center)| <= 1 and plane_normal . x <= plane_offset}.
    The surface colour is ``albedo``, except on eyes where the direction of the local point from the centre makes an
    angle with the local +z axis whose cosine exceeds ``spot_cos`` (iris, ``spot_color``) or ``pupil_cos`` (pupil,
    black); hair carries strands, a brightness modulation of relative amplitude ``stripes``.
    """

    center: Tensor  # [N, K, 3]
    rotation: Tensor  # [N, K, 3, 3], columns = the solid's local axes in world coordinates
    radii: Tensor  # [N, K, 3]
    plane_normal: Tensor  # [N, K, 3] unit
    plane_offset: Tensor  # [N, K]
    albedo: Tensor  # [N, K, 3]
    spot_color: Tensor  # [N, K, 3]
    spot_cos: Tensor  # [N, K]; > 1 means no iris
    pupil_cos: Tensor  # [N, K]; > 1 means no pupil
    stripes: Tensor  # [N, K]
    enabled: Tensor  # [N, K] bool

    def __len__(self) -> int:
        return self.center.shape[0]


def sample_heads(count: int, seed: int, start: int = 0) -> HeadParams:
    """Random parameters of heads ``start .. start + count - 1`` of the dataset with seed ``seed``.

    Each head draws from its own generator seeded with ``(seed, index)``, so head i is the same in any batch.
    """
    rows = [np.random.default_rng([seed, i]).random(_NUM_UNIFORMS) for i in range(start, start + count)]
    u = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, _NUM_UNIFORMS, dtype=torch.float64)
    return HeadParams(u=u, index=torch.arange(start, start + count, dtype=torch.int64))


def _lerp(lo: float, hi: float, u: Tensor) -> Tensor:
    return lo + (hi - lo) * u


def _vec(x: Tensor | float, y: Tensor | float, z: Tensor | float, n: int) -> Tensor:
    """[n, 3] from three scalars or [n] tensors."""
    return torch.stack([torch.as_tensor(c, dtype=torch.float64).expand(n) for c in (x, y, z)], dim=-1)


def _full(n: int, value: float) -> Tensor:
    return torch.full((n,), value, dtype=torch.float64)


def _rotation(axis: int, angle: Tensor) -> Tensor:
    """[N, 3, 3] rotations by ``angle`` [N] radians about world axis 0 (x), 1 (y) or 2 (z)."""
    c, s = torch.cos(angle), torch.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = torch.eye(3, dtype=torch.float64).repeat(angle.shape[0], 1, 1)
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r


def _palette(u: Tensor, colours: tuple, weights: tuple | None = None) -> Tensor:
    """[N, 3] colours picked from ``colours`` by uniforms ``u`` [N] with the given (or equal) weights."""
    w = torch.tensor(weights if weights is not None else [1.0] * len(colours), dtype=torch.float64)
    edges = torch.cumsum(w / w.sum(), 0)[:-1]
    return torch.tensor(colours, dtype=torch.float64)[torch.bucketize(u.contiguous(), edges, right=True)]


def _skin(u0: Tensor, u1: Tensor) -> Tensor:
    """[N, 3] skin albedo: a continuous walk along the tone ramp ``_SKIN_TONES`` plus a small warmth jitter."""
    ramp = torch.tensor(_SKIN_TONES, dtype=torch.float64)
    pos = u0 * (len(_SKIN_TONES) - 1)
    lo = pos.floor().long().clamp(max=len(_SKIN_TONES) - 2)
    frac = (pos - lo)[:, None]
    warmth = torch.stack([1 + 0.04 * (u1 - 0.5), torch.ones_like(u1), 1 - 0.08 * (u1 - 0.5)], -1)
    return ((1 - frac) * ramp[lo] + frac * ramp[lo + 1]) * warmth


def _clothing(u_h: Tensor, u_s: Tensor, u_v: Tensor) -> Tensor:
    """[N, 3] clothing albedo from hue, saturation and value uniforms (HSV to RGB)."""
    s, v = _lerp(0.2, 0.8, u_s), _lerp(0.25, 0.9, u_v)
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + 6 * u_h[:, None]) % 6
    return v[:, None] * (1 - s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1))


def _front_z(centers: list[Tensor], radii: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """[N] z of the frontmost point at (x, y) of a union of axis-aligned ellipsoids (the face surface)."""
    z = []
    for c, r in zip(centers, radii, strict=True):
        q = 1 - ((x - c[:, 0]) / r[:, 0]) ** 2 - ((y - c[:, 1]) / r[:, 1]) ** 2
        z.append(torch.where(q > 0, c[:, 2] + r[:, 2] * q.clamp_min(0).sqrt(), torch.full_like(q, -1.0)))
    return torch.stack(z).amax(0)


class _Builder:
    """Collects solids by name, filling the defaults (no rotation, no clipping plane, no iris, no strands)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: dict[str, dict[str, Tensor]] = {}

    def add(self, name: str, center: Tensor, radii: Tensor, albedo: Tensor, **extra: Tensor) -> None:
        n = self.n
        part = {
            "center": center, "radii": radii, "albedo": albedo,
            "rotation": torch.eye(3, dtype=torch.float64).expand(n, 3, 3),
            "plane_normal": _vec(0.0, 1.0, 0.0, n), "plane_offset": _full(n, _UNCLIPPED),
            "spot_color": torch.zeros(n, 3, dtype=torch.float64), "spot_cos": _full(n, 2.0),
            "pupil_cos": _full(n, 2.0), "stripes": _full(n, 0.0),
            "enabled": torch.ones(n, dtype=torch.bool),
        }  # fmt: skip
        part.update(extra)
        self.parts[name] = part

    def clip(self, name: str, normal: Tensor, offset: Tensor) -> None:
        """Keeps the side normal . x <= offset of solid ``name``; ``normal`` [N, 3] need not be unit."""
        norm = normal.norm(dim=-1)
        self.parts[name]["plane_normal"] = normal / norm[:, None]
        self.parts[name]["plane_offset"] = offset / norm

    def build(self, scale: float) -> Primitives:
        """Stacks the solids in ``PRIMITIVE_NAMES`` order, scaling the geometry about the origin by ``scale``."""
        fields = {f.name: torch.stack([self.parts[p][f.name] for p in PRIMITIVE_NAMES], 1)
                  for f in dataclasses.fields(Primitives)}  # fmt: skip
        for name in ("center", "radii", "plane_offset"):
            fields[name] = fields[name] * scale
        return Primitives(**fields)


def _skull(b: _Builder, u: Tensor, skin: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cranium, face (jaw), neck and torso. Returns the cranium and face centres and radii, [N, 3] each."""
    n = b.n
    w, h, d = _lerp(0.93, 1.07, u[:, 1]), _lerp(0.94, 1.06, u[:, 2]), _lerp(0.93, 1.07, u[:, 3])
    cran_c, cran_r = _vec(0.0, 0.06 * h, -0.025 * d, n), _vec(0.142 * w, 0.165 * h, 0.178 * d, n)
    jaw = _lerp(0.82, 1.05, u[:, 4])
    face_c = _vec(0.0, -0.035 * h, 0.035 * d, n)
    face_r = _vec(0.118 * w * jaw, _lerp(0.15, 0.175, u[:, 5]) * h, 0.128 * d, n)
    b.add("cranium", cran_c, cran_r, skin)
    b.add("face", face_c, face_r, skin)
    neck_w = _lerp(0.062, 0.08, u[:, 6]) * w
    b.add("neck", _vec(0.0, -0.25, -0.035 * d, n), _vec(neck_w, 0.22, neck_w * 1.08, n), skin * 0.92)
    torso_c = _vec(0.0, _lerp(-0.45, -0.41, u[:, 7]), -0.04, n)
    torso_r = _vec(_lerp(0.3, 0.38, u[:, 8]), 0.17, 0.16, n)
    b.add("torso", torso_c, torso_r, _clothing(u[:, 9], u[:, 10], u[:, 11]))
    return cran_c, cran_r, face_c, face_r


def _hair(b: _Builder, u: Tensor, cran_c: Tensor, cran_r: Tensor, colour: Tensor) -> None:
    """Hair cap with a hairline, optional long hair at the back, fringe and bun."""
    n = b.n
    thick = 0.012 + 0.055 * u[:, 12] ** 2
    cap_c = cran_c + _vec(0.0, 0.012, -0.012, n)
    strands = _lerp(0.10, 0.22, u[:, 13])
    b.add("hair_cap", cap_c, cran_r + thick[:, None] * _vec(1.0, 0.9, 1.0, n), colour, stripes=strands)
    # Hairline: keep y >= y0 + m z, low at the back (nape), higher at the temples, highest on the forehead.
    y0, m = _lerp(-0.03, 0.06, u[:, 14]), _lerp(0.7, 1.4, u[:, 15])
    b.clip("hair_cap", _vec(0.0, -1.0, m, n), -y0)
    length = _lerp(0.16, 0.34, u[:, 16])
    back_c = _vec(0.0, 0.1 - length, -0.06 + 0.02 * u[:, 17], n)
    back_r = _vec(cran_r[:, 0] + thick * 0.9, length + 0.02, 0.12 + 0.03 * u[:, 17], n)
    b.add("hair_back", back_c, back_r, colour, stripes=strands, enabled=u[:, 18] < 0.4)
    b.clip("hair_back", _vec(0.0, 0.0, 1.0, n), _lerp(-0.06, 0.0, u[:, 19]))
    fringe_c = cran_c + _vec(0.0, _lerp(0.06, 0.09, u[:, 20]), cran_r[:, 2] * 0.3, n)
    fringe_r = _vec(cran_r[:, 0] * 0.92, 0.075, cran_r[:, 2] * 0.62 + thick, n)
    b.add("fringe", fringe_c, fringe_r, colour, stripes=strands, enabled=u[:, 21] < 0.35)
    tilt = _lerp(-0.6, 0.6, u[:, 22])
    b.clip("fringe", torch.stack([tilt, -torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], -1),
           -(cran_c[:, 1] + _lerp(0.035, 0.06, u[:, 23])))  # fmt: skip
    bun_r = _lerp(0.06, 0.085, u[:, 24])
    bun_c = cran_c + _vec(0.0, cran_r[:, 1] * 0.75, -cran_r[:, 2] * 0.75, n)
    b.add("bun", bun_c, bun_r[:, None] * _vec(1.0, 0.9, 1.0, n), colour, stripes=strands, enabled=u[:, 25] < 0.15)


def _features(b: _Builder, u: Tensor, skin: Tensor, hair: Tensor, surface: tuple) -> None:
    """Ears, eyes, brows, nose and lips, placed on the face ``surface`` = (centres, radii) of cranium and face."""
    n = b.n
    cran_c, cran_r = surface[0][0], surface[1][0]
    ear = _lerp(0.9, 1.15, u[:, 26])
    for side, name in ((1.0, "ear_left"), (-1.0, "ear_right")):
        c = _vec(side * (cran_r[:, 0] - 0.004), -0.005, cran_c[:, 2] + 0.02, n)
        rot = _rotation(1, side * _lerp(0.15, 0.45, u[:, 27]))
        b.add(name, c, ear[:, None] * _vec(0.02, 0.05, 0.034, n), skin * 0.97, rotation=rot)
    eye_x, eye_y, eye_r = _lerp(0.042, 0.052, u[:, 28]), _lerp(0.015, 0.035, u[:, 29]), _lerp(0.018, 0.023, u[:, 30])
    iris = _palette(u[:, 31], _IRIS_COLOURS)
    brow_y, brow_tilt = eye_y + eye_r + _lerp(0.012, 0.024, u[:, 32]), _lerp(-0.12, 0.25, u[:, 33])
    brow = hair * 0.75 + 0.05 * skin
    for side, suffix in ((1.0, "left"), (-1.0, "right")):
        ex = side * eye_x
        ez = _front_z(*surface, ex, eye_y) - eye_r + 0.008
        white = _vec(0.93, 0.92, 0.88, n)
        b.add(f"eye_{suffix}", _vec(ex, eye_y, ez, n), eye_r[:, None] * _vec(1.0, 1.0, 1.0, n), white,
              spot_color=iris, spot_cos=_full(n, math.cos(0.55)), pupil_cos=_full(n, math.cos(0.25)))  # fmt: skip
        bx = side * (eye_x + 0.004)
        bz = _front_z(*surface, bx, brow_y) - 0.004
        b.add(f"brow_{suffix}", _vec(bx, brow_y, bz, n), _vec(0.03, _lerp(0.006, 0.01, u[:, 34]), 0.012, n), brow,
              rotation=_rotation(2, side * brow_tilt))  # fmt: skip
    nose_len, nose_w = _lerp(0.04, 0.058, u[:, 35]), _lerp(0.016, 0.024, u[:, 36])
    nose_y = eye_y - nose_len * 0.9
    nz = _front_z(*surface, torch.zeros(n, dtype=torch.float64), nose_y) - 0.01
    nose_r = torch.stack([nose_w, nose_len, _lerp(0.028, 0.042, u[:, 37])], -1)
    nose_albedo = skin * torch.tensor([1.0, 0.95, 0.95], dtype=torch.float64)
    b.add("nose", _vec(0.0, nose_y, nz, n), nose_r, nose_albedo, rotation=_rotation(0, _lerp(-0.45, -0.25, u[:, 38])))
    mouth_w, mouth_y = _lerp(0.03, 0.042, u[:, 39]), nose_y - nose_len - 0.03
    lip = skin * torch.tensor([0.8, 0.55, 0.55], dtype=torch.float64) + torch.tensor([0.12, 0.0, 0.02]).double()
    lips = (("lip_upper", 0.007, 1.0, 0.009, 0.85), ("lip_lower", -0.011, 0.88, 0.011, 1.0))
    for name, dy, width, height, tint in lips:
        y = mouth_y + dy
        z = _front_z(*surface, torch.zeros(n, dtype=torch.float64), y) - 0.012
        b.add(name, _vec(0.0, y, z, n), _vec(mouth_w * width, height, 0.018, n), lip * tint)


def head_primitives(params: HeadParams) -> Primitives:
    """The solids and colours of the heads described by ``params`` (see ``Primitives``)."""
    u = params.u
    b = _Builder(len(params))
    skin = _skin(u[:, 0], u[:, 40])
    hair = _palette(u[:, 41], tuple(c for c, _ in _HAIR_COLOURS), tuple(w for _, w in _HAIR_COLOURS))
    hair = hair * _lerp(0.85, 1.15, u[:, 42])[:, None]
    cran_c, cran_r, face_c, face_r = _skull(b, u, skin)
    _hair(b, u, cran_c, cran_r, hair.clamp(0, 1))
    _features(b, u, skin, hair.clamp(0, 1), ([cran_c, face_c], [cran_r, face_r]))
    return b.build(_SCALE)
