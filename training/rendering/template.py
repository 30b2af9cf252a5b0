"""Head template meshes for Gaussian heads: the built-in procedural head, OBJ loading, UV rasterisation and sampling.

Conventions. Vertices live in EG3D world space (y up, the face looks toward +z, cameras at radius 2.7). Faces are
counter-clockwise seen from outside. UV coordinates follow OBJ: u to the right, v up, so a UV triangle of an
outward-facing triangle has positive signed area in the (u, v) plane. A UV map is stored as an image ``[C, H, W]``
whose texel (i, j) has its centre at ``u = (j + 0.5) / W``, ``v = (i + 0.5) / H``: row i grows with v, exactly as
``grid_sample`` reads ``grid = 2 * uv - 1`` with ``align_corners=False`` (and as GGHead's template rasteriser). Such a
map is therefore the OBJ texture image flipped upside down (OBJ textures store v = 1 in their first row).

Gaussians sit at the texel centres of an S×S sample grid that a template triangle covers (GGHead's reference note
§9.4: texel centres, not ``linspace(-1, 1, S)``); they carry (triangle, barycentric) so that any vertex set of the same
topology moves them along (:class:`UVSamples`). :func:`triangle_frames` gives GaussianAvatars' per-triangle frames.
The procedural head and its UV atlas are described in docs/template.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dnnlib import UserError

# GGHead's registration of its FLAME-derived template to EG3D's world (scaled BFM canonical space), a row-major 4×4
# similarity applied to column vectors: uniform scale ≈ 2.6827, a small rotation and a small translation.
# Numbers from the reference note on GGHead (§1.4) and its template loader.
FLAME_TO_EG3D_WORLD = (
    (2.682716929557429, 0.010446918125791843, 0.04746649927210553, 0.0030014961233934233),
    (-0.009421598630294275, 2.682515580606053, -0.05790466856909523, 0.04740944787628047),
    (-0.047680604263683285, 0.05772857372357329, 2.682112266656848, -0.0024605516344398115),
    (0.0, 0.0, 0.0, 1.0),
)
# World transforms that a configuration may name instead of spelling out 16 numbers.
NAMED_TRANSFORMS = {"flame_to_eg3d": FLAME_TO_EG3D_WORLD}

# Candidate (triangle, texel) pairs tested at once by the UV rasteriser (~250 bytes each): bounds its memory.
_RASTER_CHUNK = 1 << 19
_IndexFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (grid row, grid column) → mesh index


@dataclass
class TemplateMesh:
    """A triangle mesh with a UV atlas.

    vertices: [V, 3] float, EG3D world. faces: [F, 3] long vertex indices, counter-clockwise seen from outside.
    uvs: [T, 2] float (u, v), nominally in [0, 1] (parts outside the unit square are never sampled).
    face_uvs: [F, 3] long indices into ``uvs``, one per triangle corner (vertices on UV seams have several UVs).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    face_uvs: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {
            "vertices": (self.vertices, 3),
            "faces": (self.faces, 3),
            "uvs": (self.uvs, 2),
            "face_uvs": (self.face_uvs, 3),
        }
        for name, (tensor, width) in shapes.items():
            if tensor.ndim != 2 or tensor.shape[1] != width:
                raise UserError(f"TemplateMesh.{name}: expected shape [N, {width}], got {list(tensor.shape)}")
        if self.faces.shape != self.face_uvs.shape:
            raise UserError(
                f"TemplateMesh: faces {list(self.faces.shape)} and face_uvs "
                f"{list(self.face_uvs.shape)} must have the same shape"
            )
        indices = (("faces", self.faces, len(self.vertices)), ("face_uvs", self.face_uvs, len(self.uvs)))
        for name, index, count in indices:
            if index.dtype != torch.long or (index.numel() and (index.min() < 0 or index.max() >= count)):
                raise UserError(f"TemplateMesh.{name}: expected int64 indices in [0, {count}), got dtype {index.dtype}")

    def save_obj(self, path: str | Path) -> None:
        """Write the mesh as an OBJ file (``v``, ``vt`` and ``f v/vt`` lines, 1-based indices)."""
        lines = [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in self.vertices.tolist()]
        lines += [f"vt {u:.7g} {v:.7g}" for u, v in self.uvs.tolist()]
        lines += [
            "f " + " ".join(f"{a + 1}/{t + 1}" for a, t in zip(f, ft, strict=True))
            for f, ft in zip(self.faces.tolist(), self.face_uvs.tolist(), strict=True)
        ]
        Path(path).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# OBJ loading


def resolve_transform(transform: torch.Tensor | Sequence[Sequence[float]] | str | None) -> torch.Tensor | None:
    """A 4×4 affine world transform (float64) from a matrix, a name in :data:`NAMED_TRANSFORMS`, or None."""
    if transform is None:
        return None
    if isinstance(transform, str):
        if transform not in NAMED_TRANSFORMS:
            raise UserError(
                f"template transform: unknown name {transform!r}; expected one of "
                f"{sorted(NAMED_TRANSFORMS)} or a 4x4 matrix"
            )
        transform = NAMED_TRANSFORMS[transform]
    matrix = torch.as_tensor(transform, dtype=torch.float64)
    if matrix.shape != (4, 4):
        raise UserError(f"template transform: expected a 4x4 matrix, got shape {list(matrix.shape)}")
    if not torch.allclose(matrix[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise UserError(f"template transform: the last row must be (0, 0, 0, 1) (affine), got {matrix[3].tolist()}")
    return matrix


def _obj_index(token: str, count: int, path: Path, lineno: int, what: str) -> int:
    """0-based index of a 1-based (or negative, relative) OBJ index ``token`` among ``count`` defined elements."""
    try:
        index = int(token)
    except ValueError:
        raise UserError(f"{path}:{lineno}: bad {what} index {token!r}; expected an integer") from None
    resolved = index - 1 if index > 0 else count + index
    if index == 0 or not 0 <= resolved < count:
        raise UserError(f"{path}:{lineno}: {what} index {index} out of range ({count} defined so far)")
    return resolved


def _parse_face(tokens: list[str], counts: tuple[int, int], path: Path, lineno: int) -> list[tuple[int, int]]:
    """(vertex, uv) index pairs of one ``f`` line; UVs are required."""
    if len(tokens) < 3:
        raise UserError(f"{path}:{lineno}: a face needs at least 3 corners, got {len(tokens)}")
    corners = []
    for token in tokens:
        parts = token.split("/")
        if len(parts) < 2 or parts[1] == "":
            raise UserError(
                f"{path}:{lineno}: face corner {token!r} has no texture coordinate; the template needs "
                "UVs on every corner ('f v/vt' or 'f v/vt/vn')"
            )
        corners.append(
            (
                _obj_index(parts[0], counts[0], path, lineno, "vertex"),
                _obj_index(parts[1], counts[1], path, lineno, "texture coordinate"),
            )
        )
    return corners


def _floats(tokens: list[str], n: int, path: Path, lineno: int, what: str) -> list[float]:
    if len(tokens) < n:
        raise UserError(f"{path}:{lineno}: '{what}' needs {n} numbers, got {len(tokens)}")
    try:
        return [float(t) for t in tokens[:n]]
    except ValueError:
        raise UserError(f"{path}:{lineno}: bad number in '{what}' line: {' '.join(tokens)!r}") from None


def load_obj(path: str | Path, transform: torch.Tensor | Sequence[Sequence[float]] | str | None = None) -> TemplateMesh:
    """Load a template from an OBJ file: ``v``, ``vt`` and ``f`` (triangles or polygons, fan-triangulated).

    Every face corner needs a texture coordinate (``f v/vt`` or ``f v/vt/vn``). Indices may be negative (relative
    to the elements defined so far). Other statements (``vn``, ``o``, ``g``, ``s``, ``usemtl``, ...) are ignored.
    ``transform``: optional 4×4 affine matrix (or a name in :data:`NAMED_TRANSFORMS`, e.g. ``'flame_to_eg3d'`` for
    GGHead's FLAME templates) applied to the vertex positions as column vectors, ``x_world = M @ [x, 1]``.
    """
    path = Path(path)
    matrix = resolve_transform(transform)
    if not path.is_file():
        raise UserError(f"template OBJ {path}: file not found")
    vertices, uvs, faces, face_uvs = [], [], [], []
    with path.open(encoding="utf-8", errors="replace") as file:
        for lineno, line in enumerate(file, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if tokens[0] == "v":
                vertices.append(_floats(tokens[1:], 3, path, lineno, "v"))
            elif tokens[0] == "vt":
                uvs.append(_floats(tokens[1:], 2, path, lineno, "vt"))
            elif tokens[0] == "f":
                corners = _parse_face(tokens[1:], (len(vertices), len(uvs)), path, lineno)
                for k in range(1, len(corners) - 1):
                    fan = (corners[0], corners[k], corners[k + 1])
                    faces.append([c[0] for c in fan])
                    face_uvs.append([c[1] for c in fan])
    if not faces:
        raise UserError(f"template OBJ {path}: no faces ('f' lines) found")
    positions = torch.tensor(vertices, dtype=torch.float64)
    if matrix is not None:
        positions = positions @ matrix[:3, :3].T + matrix[:3, 3]
    return TemplateMesh(
        positions.float(),
        torch.tensor(faces, dtype=torch.long),
        torch.tensor(uvs, dtype=torch.float32),
        torch.tensor(face_uvs, dtype=torch.long),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Procedural head (see docs/template.md). The surface is a stack of horizontal rings around the vertical axis, from a
# pole at the crown down to the open base of the neck. Ring k is a closed curve made of two half-ellipses (x half-axis
# A, front z half-axis Bf for cos φ ≥ 0, back half-axis Bb) around (0, Y, Zc), pushed outward by a relative bump β(Y, φ)
# for the face features. φ is the azimuth, 0 toward +z and +π/2 toward +x. A meridian parameter s runs down the head:
# s ∈ [0, π/2] is the upper half of an ellipsoid (the cranium), s ∈ [π/2, π/2 + _JAW_SPAN] the lower face, whose rings
# narrow toward the jaw ring at chin height while the front stays full; below it the neck is a tube.

_CRANIUM = dict(y=0.14, z=-0.10, ax=0.215, ay=0.24, front=0.25, back=0.26)  # ellipsoid centre and semi-axes
_JAW = dict(y=-0.18, ax=0.15, front=0.23, back=0.10)  # the ring at chin height where the neck starts
_JAW_SPAN = 1.2  # meridian parameter length of the lower face (≈ its arc length / the cranium radius)
_CAP_END = 0.27 * math.pi  # meridian parameter of the hairline ring (end of the crown cap chart)
_NECK_TOP = (0.125, 0.12, 0.125, -0.08)  # A, Bf, Bb, Zc where the neck has fully left the jaw ring
_NECK_BOTTOM = (0.16, 0.14, 0.15, -0.09)
_NECK_Y_BOTTOM = -0.46
_NECK_BLEND = 0.25  # fraction of the neck over which rings blend from the jaw ring to the tube (under the chin)
_RING_SHARES = (0.2, 0.5, 0.3)  # cap, face band, neck: ~ their meridian arc lengths
# Relative radial bumps: (height y, azimuth φ, σ_y above, σ_y below, σ_φ, amplitude).
_FEATURES = (
    (0.165, 0.0, 0.02, 0.03, 0.55, 0.03),  # brow ridge
    (0.095, 0.36, 0.03, 0.025, 0.15, -0.07),  # left eye socket
    (0.095, -0.36, 0.03, 0.025, 0.15, -0.07),  # right eye socket
    (0.0, 0.62, 0.06, 0.06, 0.3, 0.03),  # left cheek
    (0.0, -0.62, 0.06, 0.06, 0.3, 0.03),  # right cheek
    (0.08, 0.0, 0.04, 0.04, 0.07, 0.06),  # nose bridge
    (0.025, 0.0, 0.035, 0.015, 0.1, 0.19),  # nose tip: sharp drop below
    (-0.075, 0.0, 0.02, 0.02, 0.2, 0.04),  # lips
    (-0.15, 0.0, 0.03, 0.025, 0.3, 0.07),  # chin
)
# UV atlas: chart rectangles (u0, v0, u1, v1) in the unit square, 0.016 gutters (4 texels at 256²). The face band
# chart spans φ ∈ [-3π/8, 3π/8]; the back band the rest of the band; the neck chart is cut at the back (φ = ±π) and
# turned by 90° so that its long side (the circumference) runs along v.
_ATLAS = dict(
    face=(0.016, 0.328, 0.672, 0.984),
    cap=(0.688, 0.688, 0.984, 0.984),
    neck=(0.688, 0.328, 0.984, 0.672),
    back=(0.016, 0.016, 0.984, 0.312),
)


def _head_rings(s: torch.Tensor) -> torch.Tensor:
    """Ring parameters [K, 5] = (Y, A, Bf, Bb, Zc) at meridian parameters ``s`` [K] in [0, π/2 + _JAW_SPAN]."""
    c, jaw = _CRANIUM, _JAW
    upper = s <= math.pi / 2
    sin = torch.sin(s.clamp(max=math.pi / 2))
    tau = ((s - math.pi / 2) / _JAW_SPAN).clamp(min=0) * (math.pi / 2)
    bend = 1 - torch.cos(tau)  # 0 with zero slope at the equator: the surface stays smooth there

    def axis(upper_value: float, jaw_value: float) -> torch.Tensor:
        return torch.where(upper, upper_value * sin, upper_value + (jaw_value - upper_value) * bend)

    y = torch.where(upper, c["y"] + c["ay"] * torch.cos(s), c["y"] - (c["y"] - jaw["y"]) * torch.sin(tau))
    return torch.stack(
        [
            y,
            axis(c["ax"], jaw["ax"]),
            axis(c["front"], jaw["front"]),
            axis(c["back"], jaw["back"]),
            torch.full_like(s, c["z"]),
        ],
        dim=1,
    )


def _neck_rings(t: torch.Tensor) -> torch.Tensor:
    """Ring parameters [K, 5] of the neck at fractions ``t`` [K] from the jaw ring (0) to the neck base (1)."""
    jaw = _head_rings(torch.tensor([math.pi / 2 + _JAW_SPAN], dtype=torch.float64))[0]
    top, bottom = (torch.tensor(p, dtype=torch.float64) for p in (_NECK_TOP, _NECK_BOTTOM))
    tube = top + (bottom - top) * t[:, None]
    w = (t / _NECK_BLEND).clamp(max=1)[:, None]
    w = w * w * (3 - 2 * w)  # smoothstep: the jaw ring turns into the tube under the chin
    dims = jaw[1:] + (tube - jaw[1:]) * w
    y = jaw[0] + (_NECK_Y_BOTTOM - jaw[0]) * t
    return torch.cat([y[:, None], dims], dim=1)


def _feature_bumps(y: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Relative radial displacement β [K, M] for ring heights ``y`` [K, 1] and azimuths ``phi`` [1, M]."""
    beta = torch.zeros(torch.broadcast_shapes(y.shape, phi.shape), dtype=torch.float64)
    for y0, phi0, sigma_above, sigma_below, sigma_phi, amplitude in _FEATURES:
        sigma_y = torch.where(y >= y0, torch.full_like(y, sigma_above), torch.full_like(y, sigma_below))
        dphi = torch.remainder(phi - phi0 + math.pi, 2 * math.pi) - math.pi
        beta = beta + amplitude * torch.exp(-0.5 * ((y - y0) / sigma_y) ** 2 - 0.5 * (dphi / sigma_phi) ** 2)
    return beta


def _ring_counts(rings: int) -> tuple[int, int, int]:
    cap = max(2, round(rings * _RING_SHARES[0]))
    neck = max(2, round(rings * _RING_SHARES[2]))
    return cap, rings - cap - neck, neck


def _head_vertices(segments: int, rings: int) -> torch.Tensor:
    """Vertices [1 + rings·segments, 3]: the crown pole, then ring after ring (top to bottom), φ from -π."""
    n_cap, n_face, n_neck = _ring_counts(rings)
    s_cap = torch.arange(1, n_cap + 1, dtype=torch.float64) * (_CAP_END / n_cap)
    s_jaw = math.pi / 2 + _JAW_SPAN
    s_face = _CAP_END + torch.arange(1, n_face + 1, dtype=torch.float64) * ((s_jaw - _CAP_END) / n_face)
    t_neck = torch.arange(1, n_neck + 1, dtype=torch.float64) / n_neck
    params = torch.cat([_head_rings(torch.cat([s_cap, s_face])), _neck_rings(t_neck)])
    y, a, front, back, zc = params.unbind(1)
    phi = -math.pi + 2 * math.pi * torch.arange(segments, dtype=torch.float64) / segments
    grow = 1 + _feature_bumps(y[:, None], phi[None, :])
    b = torch.where(torch.cos(phi)[None, :] >= 0, front[:, None], back[:, None])
    ring_points = torch.stack(
        [a[:, None] * grow * torch.sin(phi), y[:, None].expand_as(grow), zc[:, None] + b * grow * torch.cos(phi)],
        dim=-1,
    )
    crown = _head_rings(torch.zeros(1, dtype=torch.float64))[0]
    pole = torch.tensor([[0.0, crown[0].item(), crown[4].item()]], dtype=torch.float64)
    return torch.cat([pole, ring_points.reshape(-1, 3)])


def _rect_chart(
    rect: tuple[float, float, float, float], a: torch.Tensor, b: torch.Tensor, turned: bool
) -> torch.Tensor:
    """UVs [..., 2] of chart coordinates ``a`` (along φ) and ``b`` (down the head) in [0, 1] placed in ``rect``."""
    u0, v0, u1, v1 = rect
    if turned:  # rotated by +90°: keeps the orientation
        return torch.stack([u0 + b * (u1 - u0), v0 + a * (v1 - v0)], dim=-1)
    return torch.stack([u0 + a * (u1 - u0), v1 - b * (v1 - v0)], dim=-1)


def _cap_chart(rect: tuple[float, float, float, float], rho: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Concentric-square UVs: radius ``rho`` in [0, 1] → square ring of half-size rho, φ linear along its perimeter."""
    u0, v0, u1, v1 = rect
    s = torch.remainder(phi + math.pi / 4, 2 * math.pi) / (math.pi / 2)  # 0..4, φ = 0 (front) at the middle of side 0
    side = s.floor().clamp(max=3)
    f = s - side
    corners = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    p = corners[side.long()] + (corners[side.long() + 1] - corners[side.long()]) * f[..., None]
    p = p * rho[..., None]
    return torch.stack([(u0 + u1) / 2 + p[..., 0] * (u1 - u0) / 2, (v0 + v1) / 2 + p[..., 1] * (v1 - v0) / 2], dim=-1)


def _grid_faces(
    rows: torch.Tensor, cols: torch.Tensor, vid: _IndexFn, tid: _IndexFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two triangles per grid quad between consecutive ``rows`` and ``cols``; ``vid``/``tid`` map (row, col) to
    vertex / UV indices. Returns (faces [Q·2, 3], face_uvs [Q·2, 3]), counter-clockwise seen from outside."""
    r, c = torch.meshgrid(rows[:-1], cols[:-1], indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    corners = ((r, c), (r + 1, c), (r, c + 1), (r + 1, c), (r + 1, c + 1), (r, c + 1))
    faces = torch.stack([vid(*rc) for rc in corners], dim=1).reshape(-1, 3)
    face_uvs = torch.stack([tid(*rc) for rc in corners], dim=1).reshape(-1, 3)
    return faces, face_uvs


def procedural_head(segments: int = 80, rings: int = 44) -> TemplateMesh:
    """The built-in full-head template (crown, face, back of the head, neck) with a non-overlapping 4-chart UV atlas.

    ``segments``: vertices per ring (a positive multiple of 16); ``rings``: rings below the crown pole (≥ 8).
    Triangles: ``segments · (2·rings - 1)`` (6960 by default). About 0.55 units from crown to chin, face toward +z.
    """
    if segments <= 0 or segments % 16:
        raise UserError(f"procedural_head: segments must be a positive multiple of 16, got {segments}")
    if rings < 8:
        raise UserError(f"procedural_head: rings must be at least 8, got {rings}")
    n_cap, n_face, _ = _ring_counts(rings)
    m, half_face = segments, 3 * segments // 16
    vertices = _head_vertices(m, rings)
    cols = torch.arange(m + 1)
    phi = -math.pi + 2 * math.pi * cols.double() / m

    def vid(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:  # ring row ≥ 1, column taken modulo the ring
        return 1 + (row - 1) * m + col % m

    uvs, faces, face_uvs = [], [], []

    def add_chart(rows: torch.Tensor, chart_cols: torch.Tensor, chart_uvs: torch.Tensor) -> None:
        offset = sum(len(x) for x in uvs)
        uvs.append(chart_uvs.reshape(-1, 2))
        n_cols = len(chart_cols)

        def tid(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
            return offset + (row - rows[0]) * n_cols + (col - chart_cols[0])

        f, ft = _grid_faces(rows, chart_cols, vid, tid)
        faces.append(f)
        face_uvs.append(ft)

    # Crown cap: rings 1..n_cap in a concentric square; the pole joins ring 1 by a fan of triangles.
    rows = torch.arange(1, n_cap + 1)
    add_chart(rows, cols, _cap_chart(_ATLAS["cap"], rows.double()[:, None] / n_cap, phi[None, :].expand(n_cap, -1)))
    pole_uv = sum(len(x) for x in uvs)
    uvs.append(_cap_chart(_ATLAS["cap"], torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)))
    first_ring = vid(torch.ones_like(cols), cols)
    faces.append(torch.stack([first_ring[:-1], first_ring[1:], torch.zeros_like(cols[:-1])], dim=1))
    face_uvs.append(torch.stack([cols[:-1], cols[1:], torch.full_like(cols[:-1], pole_uv)], dim=1))
    # Face and back bands: rings n_cap..n_cap+n_face; neck: from the jaw ring to the last ring.
    rows = torch.arange(n_cap, n_cap + n_face + 1)
    b = (rows.double()[:, None] - n_cap) / n_face
    face_cols = torch.arange(m // 2 - half_face, m // 2 + half_face + 1)
    back_cols = torch.arange(m // 2 + half_face, m // 2 - half_face + m + 1)
    for name, chart_cols in (("face", face_cols), ("back", back_cols)):
        a = (chart_cols.double()[None, :] - chart_cols[0]) / (len(chart_cols) - 1)
        add_chart(rows, chart_cols, _rect_chart(_ATLAS[name], a.expand(len(rows), -1), b.expand(-1, len(a[0])), False))
    rows = torch.arange(n_cap + n_face, rings + 1)
    b = (rows.double()[:, None] - rows[0]) / (len(rows) - 1)
    a = cols.double()[None, :] / m
    add_chart(rows, cols, _rect_chart(_ATLAS["neck"], a.expand(len(rows), -1), b.expand(-1, m + 1), True))
    return TemplateMesh(vertices.float(), torch.cat(faces), torch.cat(uvs).float(), torch.cat(face_uvs))


# ---------------------------------------------------------------------------------------------------------------------
# UV rasterisation


def _resolution_pair(resolution: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if h <= 0 or w <= 0:
        raise UserError(f"{name}: expected a positive resolution, got {resolution}")
    return h, w


def _triangle_edges(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edge data of counter-clockwise UV triangles ``corners`` [F, 3, 2] (float64). Edge k runs from corner k+1 to
    corner k+2, so its edge function is 2·area·(barycentric weight of corner k).

    Each edge function is evaluated from the edge's lexicographically smaller endpoint, so two triangles sharing an
    edge get exactly opposite values. A point exactly on an edge belongs to the side it would fall on after an
    infinitesimal shift along +u (then +v), so it lands in exactly one triangle of a gap-free tiling (a top-left fill
    rule). Returns (origin [F, 3, 2], direction [F, 3, 2], sign [F, 3] ±1, tie [F, 3] bool): the edge function at p is
    ``sign · cross(direction, p - origin)`` and a point with value 0 is inside that edge iff ``tie``.
    """
    a, b = corners.roll(-1, dims=1), corners.roll(-2, dims=1)
    a_first = (a[..., 0] < b[..., 0]) | ((a[..., 0] == b[..., 0]) & (a[..., 1] <= b[..., 1]))
    origin = torch.where(a_first[..., None], a, b)
    direction = torch.where(a_first[..., None], b, a) - origin
    sign = a_first.double() * 2 - 1
    edge = b - a
    tie = (edge[..., 1] < 0) | ((edge[..., 1] == 0) & (edge[..., 0] > 0))
    return origin, direction, sign, tie


def _texel_boxes(corners: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per triangle the first texel (j, i) [F, 2] and the box extent [F, 2] of texel centres its UV bounds contain."""
    scale = torch.tensor([w, h], dtype=torch.float64, device=corners.device)
    slack = 1e-6  # texel centres on the bounding box must not be lost to rounding; the edge test decides
    lo = (corners.amin(1) * scale - 0.5 - slack).ceil().long().clamp(min=0)
    hi = torch.minimum((corners.amax(1) * scale - 0.5 + slack).floor().long(), (scale - 1).long())
    return lo, (hi - lo + 1).clamp(min=0)


def rasterize_uv(mesh: TemplateMesh, uv_resolution: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which triangle covers each texel centre of an H×W UV map, and where.

    Texel (i, j) has its centre at ``(u, v) = ((j + 0.5) / W, (i + 0.5) / H)`` (row i grows with v, see the module
    docstring). Centres on shared edges or vertices go to exactly one triangle (fill rule in :func:`_triangle_edges`).
    If the UV layout overlaps itself, the lowest triangle index wins. Returns ``face_index`` [H, W] long (-1 where no
    triangle covers the centre) and ``barycentric`` [H, W, 3] float32 (weights of the triangle's corners, 0 where
    invalid), so that the surface point is ``sum_k barycentric[..., k] * vertices[faces[face_index, k]]``.
    """
    h, w = _resolution_pair(uv_resolution, "rasterize_uv: uv_resolution")
    corners = mesh.uvs.double()[mesh.face_uvs]  # [F, 3, 2]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    dev = corners.device
    ccw, cw = torch.tensor([0, 1, 2], device=dev), torch.tensor([0, 2, 1], device=dev)
    order = torch.where((area2 < 0)[:, None], cw, ccw)  # make them counter-clockwise
    faces = torch.nonzero(area2 != 0).squeeze(1)  # degenerate UV triangles cover nothing
    order = order[faces]
    corners = corners[faces].gather(1, order[..., None].expand(-1, -1, 2))
    origin, direction, sign, tie = _triangle_edges(corners)
    lo, extent = _texel_boxes(corners, h, w)
    counts = extent[:, 0] * extent[:, 1]
    ends = counts.cumsum(0)
    winner = torch.full((h * w,), len(mesh.faces), dtype=torch.long, device=dev)
    barycentric = torch.zeros(h * w, 3, dtype=torch.float64, device=dev)
    start = 0
    while start < len(faces):  # chunks of whole triangles, about _RASTER_CHUNK candidate texels each
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + _RASTER_CHUNK, right=True)))
        tri = torch.repeat_interleave(torch.arange(start, stop, device=dev), counts[start:stop])
        local = torch.arange(len(tri), device=dev) - (ends[tri] - counts[tri] - base)
        j = lo[tri, 0] + local % extent[tri, 0]
        i = lo[tri, 1] + local // extent[tri, 0]
        rel = torch.stack([(j.double() + 0.5) / w, (i.double() + 0.5) / h], dim=1)[:, None, :] - origin[tri]
        d = direction[tri]
        value = sign[tri] * (d[..., 0] * rel[..., 1] - d[..., 1] * rel[..., 0])  # [N, 3]
        hit = ((value > 0) | ((value == 0) & tie[tri])).all(1)
        texel, tri, value = i[hit] * w + j[hit], tri[hit], value[hit]
        winner.scatter_reduce_(0, texel, faces[tri], reduce="amin")
        won = winner[texel] == faces[tri]
        weights = torch.zeros_like(value).scatter_(1, order[tri], value)  # back to the mesh's corner order
        barycentric[texel[won]] = (weights / weights.sum(1, keepdim=True))[won]
        start = stop
    face_index = torch.where(winner < len(mesh.faces), winner, -1)
    return face_index.view(h, w), barycentric.float().view(h, w, 3)


def uv_position_map(mesh: TemplateMesh, uv_resolution: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface point of each texel centre: positions [3, H, W] (world, 0 where invalid), mask [1, H, W] in {0, 1}."""
    face_index, barycentric = rasterize_uv(mesh, uv_resolution)
    valid = face_index >= 0
    corners = mesh.vertices[mesh.faces[face_index.clamp(min=0)]]  # [H, W, 3, 3]
    positions = (barycentric[..., None] * corners).sum(-2) * valid[..., None]
    return positions.permute(2, 0, 1), valid[None].float()


# ---------------------------------------------------------------------------------------------------------------------
# Sample points and per-triangle frames


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [..., V, 3] of ``vertices`` [..., V, 3] with ``faces`` [F, 3] (CCW)."""
    corners = vertices[..., faces, :]  # [..., F, 3, 3]
    face_normals = torch.linalg.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :])
    summed = torch.zeros_like(vertices).index_add_(-2, faces.reshape(-1), face_normals.repeat_interleave(3, dim=-2))
    return F.normalize(summed, dim=-1)


@dataclass
class UVSamples:
    """Fixed surface sample points of a template, one per covered texel centre of an S×S grid (row-major).

    uv: [N, 2] in [0, 1] (u, v) for bilinear sampling of a UV map (see :meth:`sample_map`).
    face_index: [N] long triangle of each point; barycentric: [N, 3] weights of that triangle's corners.
    faces: [F, 3] long, the template's topology (any vertex set with this topology carries the points).
    """

    uv: torch.Tensor
    face_index: torch.Tensor
    barycentric: torch.Tensor
    faces: torch.Tensor

    def __len__(self) -> int:
        return len(self.uv)

    def to(self, device: torch.device | str) -> UVSamples:
        """The same samples on ``device``."""
        return UVSamples(
            self.uv.to(device), self.face_index.to(device), self.barycentric.to(device), self.faces.to(device)
        )

    def _weights(self, dtype: torch.dtype) -> torch.Tensor:
        # Renormalised in the vertices' dtype: an exact affine combination, so points follow x → s·Q·x + t exactly.
        weights = self.barycentric.to(dtype)
        return weights / weights.sum(-1, keepdim=True)

    def positions(self, vertices: torch.Tensor) -> torch.Tensor:
        """Surface points [..., N, 3] of the samples on ``vertices`` [..., V, 3] (same topology, any frame)."""
        corners = vertices[..., self.faces[self.face_index], :]  # [..., N, 3, 3]
        return (self._weights(vertices.dtype)[..., None] * corners).sum(-2)

    def normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Unit normals [..., N, 3]: area-weighted vertex normals interpolated with the barycentric weights."""
        corners = vertex_normals(vertices, self.faces)[..., self.faces[self.face_index], :]
        return F.normalize((self._weights(vertices.dtype)[..., None] * corners).sum(-2), dim=-1)

    def sample_map(self, uv_map: torch.Tensor) -> torch.Tensor:
        """Bilinear samples [B, N, C] of a UV map [B, C, H, W] at the points (border padding, texel-centre grid)."""
        grid = (self.uv.to(uv_map.dtype) * 2 - 1).view(1, -1, 1, 2).expand(len(uv_map), -1, -1, -1)
        sampled = F.grid_sample(uv_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return sampled[..., 0].transpose(1, 2)


def sample_points(mesh: TemplateMesh, sample_resolution: int) -> UVSamples:
    """Sample points at the covered texel centres of a ``sample_resolution``² grid over the UV square (GGHead's
    Gaussian placement, §9.4 of its reference note: exactly at texel centres, every point on the surface)."""
    face_index, barycentric = rasterize_uv(mesh, sample_resolution)
    i, j = torch.nonzero(face_index >= 0, as_tuple=True)
    uv = torch.stack([(j + 0.5) / sample_resolution, (i + 0.5) / sample_resolution], dim=1).float()
    return UVSamples(uv, face_index[i, j], barycentric[i, j], mesh.faces)


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GaussianAvatars' local frame of every triangle, for binding points to it: ``x_world = k · R @ x_local + T``.

    ``vertices`` [..., V, 3], ``faces`` [F, 3] (CCW seen from outside). R [..., F, 3, 3] is a rotation (det +1)
    with columns (unit first edge v1 - v0, unit outward normal, their cross product); k [..., F] is the mean of
    the first edge's length and the triangle's height over it; T [..., F, 3] is the centroid. Rotating and scaling
    the mesh (x → s·Q·x + t) gives R → Q·R, k → s·k, T → s·Q·T + t.
    """
    v0, v1, v2 = vertices[..., faces, :].unbind(-2)
    edge = F.normalize(v1 - v0, dim=-1)
    normal = F.normalize(torch.linalg.cross(v1 - v0, v2 - v0), dim=-1)
    third = torch.linalg.cross(edge, normal)
    rotation = torch.stack([edge, normal, third], dim=-1)
    height = (third * (v2 - v0)).sum(-1).abs()
    scale = ((v1 - v0).norm(dim=-1) + height) / 2
    return rotation, scale, (v0 + v1 + v2) / 3
