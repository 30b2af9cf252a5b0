"""Template meshes: OBJ parsing, the procedural head, UV rasterisation and sampling, triangle frames.

Oracles: brute-force loops over all triangles, a separating-axis overlap test over all UV triangle pairs, closed-form
point-to-triangle distances, hand-written OBJ contents, Heron's formula, and the valid-texel count that GGHead's
reference note measured for its default template.
"""

from __future__ import annotations

import math

import pytest
import torch

from dnnlib import UserError
from training.rendering.template import (
    FLAME_TO_EG3D_WORLD,
    TemplateMesh,
    load_obj,
    procedural_head,
    rasterize_uv,
    sample_points,
    triangle_frames,
    uv_position_map,
)

GGHEAD_TEMPLATES = ("flame_uv_no_back_close_mouth_no_subdivision.obj", "flame_template_v2.obj")


@pytest.fixture(scope="module")
def coarse_head() -> TemplateMesh:
    return procedural_head(segments=16, rings=8)  # 240 triangles


def _random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def _barycentric_2d(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Barycentric weights [F, 3] of 2-D point p [2] in every triangle tri [F, 3, 2], by Cramer's rule (float64)."""
    e1, e2, rhs = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], p - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    w1 = (rhs[:, 0] * e2[:, 1] - e2[:, 0] * rhs[:, 1]) / det
    w2 = (e1[:, 0] * rhs[:, 1] - rhs[:, 0] * e1[:, 1]) / det
    return torch.stack([1 - w1 - w2, w1, w2], dim=1)


def test_rasterize_matches_brute_force_over_all_triangles(coarse_head):
    # Flip the corner order of every other triangle (faces and UVs together): mixed UV orientation, same surface.
    flip = torch.arange(len(coarse_head.faces)) % 2 == 1
    perm = torch.where(flip[:, None], torch.tensor([0, 2, 1]), torch.tensor([0, 1, 2]))
    mesh = TemplateMesh(
        coarse_head.vertices, coarse_head.faces.gather(1, perm), coarse_head.uvs, coarse_head.face_uvs.gather(1, perm)
    )
    res = 64
    face_index, barycentric = rasterize_uv(mesh, res)
    tri = mesh.uvs.double()[mesh.face_uvs]
    texels = torch.randperm(res * res, generator=torch.Generator().manual_seed(1))[:400]
    checked_inside = 0
    for t in texels.tolist():
        i, j = divmod(t, res)
        w = _barycentric_2d(torch.tensor([(j + 0.5) / res, (i + 0.5) / res], dtype=torch.float64), tri)
        touching = torch.nonzero((w >= -1e-12).all(1)).squeeze(1)
        strict = torch.nonzero((w > 1e-9).all(1)).squeeze(1)
        if len(strict):  # strictly inside one triangle
            assert len(strict) == 1 and face_index[i, j].item() == strict.item()
            torch.testing.assert_close(barycentric[i, j].double(), w[strict.item()], atol=1e-6, rtol=0)
            checked_inside += 1
        elif len(touching):  # on an edge or vertex: one of the touching triangles (or none on the atlas border)
            assert face_index[i, j].item() in touching.tolist() + [-1]
        else:
            assert face_index[i, j].item() == -1 and (barycentric[i, j] == 0).all()
    assert checked_inside > 200


def _lattice_plane(n: int) -> TemplateMesh:
    """The unit square split into n×n quads, diagonals alternating; UV = (x, y), flat in z = 0."""
    g = torch.arange(n + 1, dtype=torch.float64) / n
    y, x = torch.meshgrid(g, g, indexing="ij")
    uv = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            faces += [[a, b, e], [a, e, d]] if (r + c) % 2 else [[a, b, d], [b, e, d]]
    faces = torch.tensor(faces)
    vertices = torch.cat([uv, torch.zeros(len(uv), 1, dtype=torch.float64)], dim=1).float()
    return TemplateMesh(vertices, faces, uv.float(), faces.clone())


@pytest.mark.parametrize("res", [4, 8, 16])
def test_each_texel_centre_is_covered_exactly_once(res):
    # With an 8×8 lattice, texel centres of a 4² or 8² raster fall exactly on lattice vertices and diagonals.
    mesh = _lattice_plane(8)
    coverage = torch.zeros(res, res, dtype=torch.long)
    for f in range(len(mesh.faces)):
        single = TemplateMesh(mesh.vertices, mesh.faces[f : f + 1], mesh.uvs, mesh.face_uvs[f : f + 1])
        coverage += (rasterize_uv(single, res)[0] >= 0).long()
    assert (coverage == 1).all()
    face_index, barycentric = rasterize_uv(mesh, res)
    assert (face_index >= 0).all()
    i, j = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    centres = torch.stack([(j + 0.5) / res, (i + 0.5) / res], dim=-1).double()
    corners = mesh.uvs.double()[mesh.face_uvs[face_index]]  # [res, res, 3, 2]
    torch.testing.assert_close((barycentric.double()[..., None] * corners).sum(-2), centres, atol=1e-6, rtol=0)


def _signed_uv_areas(mesh: TemplateMesh) -> torch.Tensor:
    c = mesh.uvs.double()[mesh.face_uvs]
    e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
    return (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2


def test_procedural_uv_atlas_does_not_overlap(coarse_head):
    assert (_signed_uv_areas(coarse_head) > 1e-7).all()
    assert (_signed_uv_areas(procedural_head()) > 0).all()
    tri = coarse_head.uvs.double()[coarse_head.face_uvs]  # [F, 3, 2]
    a, b = torch.triu_indices(len(tri), len(tri), offset=1)
    pairs = torch.stack([tri[a], tri[b]], dim=1)  # [P, 2, 3, 2]
    edges = pairs.roll(-1, dims=2) - pairs
    axes = torch.stack([-edges[..., 1], edges[..., 0]], dim=-1).reshape(-1, 6, 2)  # 6 edge normals per pair
    proj = torch.einsum("pkd,ptcd->ptkc", axes, pairs)  # [P, 2 triangles, 6 axes, 3 corners]
    overlap = torch.minimum(proj[:, 0].amax(-1), proj[:, 1].amax(-1)) - torch.maximum(
        proj[:, 0].amin(-1), proj[:, 1].amin(-1)
    )
    separated = (overlap <= 1e-12 * axes.norm(dim=-1)).any(-1)
    assert separated.all(), f"{(~separated).sum()} UV triangle pairs overlap"


def _point_triangle_distance(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Distances [N, F] from points [N, 3] to triangles [F, 3, 3] (closest point inside the face or on an edge)."""
    a, b, c = (tri[None, :, k] for k in range(3))
    n = torch.linalg.cross(b - a, c - a)
    n = n / n.norm(dim=-1, keepdim=True)
    q = p[:, None] - ((p[:, None] - a) * n).sum(-1, keepdim=True) * n  # projection onto the plane
    inside = torch.ones(q.shape[:2], dtype=torch.bool)
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= (torch.linalg.cross(v - u, q - u) * n).sum(-1) >= 0
    plane = ((p[:, None] - a) * n).sum(-1).abs()
    edge = torch.full(q.shape[:2], math.inf, dtype=p.dtype)
    for u, v in ((a, b), (b, c), (c, a)):
        t = (((p[:, None] - u) * (v - u)).sum(-1) / ((v - u) ** 2).sum(-1)).clamp(0, 1)
        edge = torch.minimum(edge, (p[:, None] - (u + t[..., None] * (v - u))).norm(dim=-1))
    return torch.where(inside, plane, edge)


def test_sample_points_lie_on_the_surface(coarse_head):
    samples = sample_points(coarse_head, 32)
    vertices = coarse_head.vertices.double()
    points = samples.positions(vertices)
    tri = vertices[coarse_head.faces[samples.face_index]]  # [N, 3, 3]
    # Independent barycentric coordinates of each point in its own triangle (least squares in 3-D).
    basis = torch.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]], dim=-1)
    coef = torch.linalg.lstsq(basis, (points - tri[:, 0])[..., None]).solution[..., 0]
    residual = (basis @ coef[..., None])[..., 0] - (points - tri[:, 0])
    assert residual.norm(dim=-1).max() < 1e-12  # in the triangle's plane
    assert (coef >= -1e-9).all() and (coef.sum(-1) <= 1 + 1e-9).all()  # inside the triangle
    assert _point_triangle_distance(points, vertices[coarse_head.faces]).amin(1).max() < 1e-12
    # The barycentric weights also reproduce the sample's UV from its triangle's UV corners.
    uv_corners = coarse_head.uvs.double()[coarse_head.face_uvs[samples.face_index]]
    torch.testing.assert_close(
        (samples.barycentric.double()[..., None] * uv_corners).sum(-2), samples.uv.double(), atol=1e-6, rtol=0
    )
    assert ((samples.uv > 0) & (samples.uv < 1)).all()


def test_samples_follow_a_transformed_template(coarse_head):
    samples = sample_points(coarse_head, 24)
    gen = torch.Generator().manual_seed(3)
    q, s, t = _random_rotation(gen), 1.7, torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    v = coarse_head.vertices.double()
    moved = torch.stack([v, s * v @ q.T + t])  # a batch of two vertex sets with the same topology
    torch.testing.assert_close(samples.positions(moved)[1], s * samples.positions(v) @ q.T + t, atol=1e-12, rtol=0)
    torch.testing.assert_close(samples.normals(moved)[1], samples.normals(v) @ q.T, atol=1e-12, rtol=0)


def test_normals_of_a_flat_patch_and_the_head(coarse_head):
    plane = _lattice_plane(4)
    normals = sample_points(plane, 8).normals(plane.vertices.double())
    torch.testing.assert_close(normals, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand_as(normals))
    samples = sample_points(coarse_head, 32)
    v = coarse_head.vertices.double()
    tri = v[coarse_head.faces[samples.face_index]]
    face_normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((samples.normals(v) * face_normal).sum(-1) > 0).all()
    torch.testing.assert_close(samples.normals(v).norm(dim=-1), torch.ones(len(samples), dtype=torch.float64))


def test_sample_map_reads_the_texel_under_each_sample(coarse_head):
    res = 32
    samples = sample_points(coarse_head, res)
    uv_map = torch.randn(2, 5, res, res, generator=torch.Generator().manual_seed(4))
    i, j = (samples.uv[:, 1] * res).floor().long(), (samples.uv[:, 0] * res).floor().long()
    torch.testing.assert_close(samples.sample_map(uv_map), uv_map[:, :, i, j].transpose(1, 2), atol=1e-6, rtol=0)
    # Half resolution: a map that is linear in (u, v) is reproduced exactly by bilinear interpolation inside.
    half = res // 2
    g = (torch.arange(half) + 0.5) / half
    linear = torch.stack([g[None, :].expand(half, half), g[:, None].expand(half, half)])[None]
    inner = ((samples.uv > 0.5 / half) & (samples.uv < 1 - 0.5 / half)).all(1)
    torch.testing.assert_close(samples.sample_map(linear)[0, inner], samples.uv[inner], atol=1e-6, rtol=0)


def test_position_map_matches_samples(coarse_head):
    res = 32
    positions, mask = uv_position_map(coarse_head, res)
    samples = sample_points(coarse_head, res)
    i, j = (samples.uv[:, 1] * res).floor().long(), (samples.uv[:, 0] * res).floor().long()
    assert mask.sum().item() == len(samples) and (mask[0, i, j] == 1).all()
    torch.testing.assert_close(positions[:, i, j].T, samples.positions(coarse_head.vertices), atol=1e-6, rtol=0)
    assert (positions * (1 - mask) == 0).all()


def test_triangle_frames_are_rotations_and_follow_the_mesh():
    gen = torch.Generator().manual_seed(5)
    vertices = torch.randn(30, 3, dtype=torch.float64, generator=gen)
    faces = torch.randperm(30, generator=gen)[:30].view(10, 3)
    r, k, t = triangle_frames(vertices, faces)
    eye = torch.eye(3, dtype=torch.float64).expand(10, 3, 3)
    torch.testing.assert_close(r.transpose(1, 2) @ r, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.det(r), torch.ones(10, dtype=torch.float64), atol=1e-12, rtol=0)
    v0, v1, v2 = vertices[faces].unbind(1)
    torch.testing.assert_close(r[..., 0], (v1 - v0) / (v1 - v0).norm(dim=-1, keepdim=True), atol=1e-12, rtol=0)
    normal = torch.linalg.cross(v1 - v0, v2 - v0)
    torch.testing.assert_close(r[..., 1], normal / normal.norm(dim=-1, keepdim=True), atol=1e-12, rtol=0)
    # k = (edge + height) / 2 with the height from Heron's formula; T = centroid.
    la, lb, lc = (v1 - v0).norm(dim=-1), (v2 - v1).norm(dim=-1), (v0 - v2).norm(dim=-1)
    p = (la + lb + lc) / 2
    area = torch.sqrt(p * (p - la) * (p - lb) * (p - lc))
    torch.testing.assert_close(k, (la + 2 * area / la) / 2, atol=1e-10, rtol=0)
    torch.testing.assert_close(t, (v0 + v1 + v2) / 3, atol=1e-12, rtol=0)
    # Rotating, scaling and moving the mesh: R' = Q R, k' = s k, and bound points move with it.
    q, s, shift = _random_rotation(gen), 2.5, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    r2, k2, t2 = triangle_frames(s * vertices @ q.T + shift, faces)
    torch.testing.assert_close(r2, q @ r, atol=1e-12, rtol=0)
    torch.testing.assert_close(k2, s * k, atol=1e-12, rtol=0)
    local = torch.randn(10, 3, dtype=torch.float64, generator=gen)
    bound = k[:, None] * (r @ local[..., None])[..., 0] + t
    bound2 = k2[:, None] * (r2 @ local[..., None])[..., 0] + t2
    torch.testing.assert_close(bound2, s * bound @ q.T + shift, atol=1e-12, rtol=0)


OBJ_TEXT = """# hand-written test mesh
v 0 0 0
v 1 0 0 0.5 0.5 0.5
v 1 1 0
v 0 1 0
v 2 0.5 1

vt 0 0
vt 0.5 0 0
vt 0.5 0.5
vt 0 0.5
vt 1 0.25
vn 0 0 1
o quad
f 1/1/1 2/2/1 3/3/1 4/4/1
f -4/-4 5/5 -3/-3
f 1/1 2/2 5/5 3/3 4/4
"""


def test_load_obj_fan_triangulates_and_resolves_indices(tmp_path):
    path = tmp_path / "small.obj"
    path.write_text(OBJ_TEXT)
    mesh = load_obj(path)
    expected_v = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0.5, 1]]
    assert mesh.vertices.tolist() == expected_v
    assert mesh.uvs.tolist() == [[0, 0], [0.5, 0], [0.5, 0.5], [0, 0.5], [1, 0.25]]
    tris = [[0, 1, 2], [0, 2, 3], [1, 4, 2], [0, 1, 4], [0, 4, 2], [0, 2, 3]]
    assert mesh.faces.tolist() == tris and mesh.face_uvs.tolist() == tris
    assert mesh.faces.dtype == torch.long and mesh.vertices.dtype == torch.float32
    # A transform acts on column vectors: x' = M [x, 1].
    m = [[2, 0, 0, 1], [0, 0, -1, 2], [0, 1, 0, 3], [0, 0, 0, 1]]
    moved = load_obj(path, transform=m)
    assert moved.vertices.tolist() == [[2 * x + 1, 2 - z, y + 3] for x, y, z in expected_v]
    named = load_obj(path, transform="flame_to_eg3d")
    matrix = torch.tensor(FLAME_TO_EG3D_WORLD, dtype=torch.float64)
    expected = torch.tensor(expected_v, dtype=torch.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    torch.testing.assert_close(named.vertices, expected.float())


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1\n", 5, "no texture coordinate"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1 2 3\n", 5, "no texture coordinate"),
        ("v 0 0 0\nv 1 x 0\n", 2, "bad number"),
        ("v 0 0\n", 1, "needs 3 numbers"),
        ("v 0 0 0\nv 1 0 0\nvt 0 0\nf 1/1 2/1 3/1\n", 4, "out of range"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 0/1 2/1 3/1\n", 5, "out of range"),
        ("v 0 0 0\nv 1 0 0\nvt 0 0\nf 1/1 2/1\n", 4, "at least 3 corners"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/a 2/1 3/1\n", 5, "bad texture coordinate index"),
    ],
)
def test_load_obj_reports_file_and_line(tmp_path, body, line, words):
    path = tmp_path / "bad.obj"
    path.write_text(body)
    with pytest.raises(UserError, match=rf"bad\.obj:{line}: .*{words}"):
        load_obj(path)


def test_load_obj_rejects_missing_files_empty_meshes_and_bad_transforms(tmp_path):
    with pytest.raises(UserError, match="missing.obj: file not found"):
        load_obj(tmp_path / "missing.obj")
    empty = tmp_path / "empty.obj"
    empty.write_text("v 0 0 0\n")
    with pytest.raises(UserError, match="empty.obj: no faces"):
        load_obj(empty)
    good = tmp_path / "good.obj"
    good.write_text(OBJ_TEXT)
    with pytest.raises(UserError, match="unknown name 'flame'"):
        load_obj(good, transform="flame")
    with pytest.raises(UserError, match="4x4"):
        load_obj(good, transform=torch.eye(3))
    with pytest.raises(UserError, match="affine"):
        load_obj(good, transform=torch.ones(4, 4))


def test_save_obj_round_trip(tmp_path):
    mesh = procedural_head(segments=16, rings=8)
    mesh.save_obj(tmp_path / "head.obj")
    loaded = load_obj(tmp_path / "head.obj")
    torch.testing.assert_close(loaded.vertices, mesh.vertices, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.uvs, mesh.uvs, atol=1e-6, rtol=0)
    assert torch.equal(loaded.faces, mesh.faces) and torch.equal(loaded.face_uvs, mesh.face_uvs)


def test_procedural_head_shape_and_framing():
    mesh = procedural_head()
    v = mesh.vertices.double()
    assert 2000 <= len(mesh.faces) <= 10000
    assert ((mesh.uvs >= 0) & (mesh.uvs <= 1)).all()
    nose = v[v[:, 2].argmax()]  # the frontmost point is the nose tip, on the midline, facing +z
    assert abs(nose[0]) < 1e-6 and -0.05 < nose[1] < 0.1 and 0.15 < nose[2] < 0.25
    face = v[(v[:, 0].abs() < 0.02) & (v[:, 2] > 0.1)]  # the front midline from the forehead to the chin
    crown_to_chin = v[:, 1].max() - face[:, 1].min()
    assert 0.5 < crown_to_chin < 0.62
    # EG3D FFHQ camera: radius 2.7 on +z, looking at (0, 0, 0.2), normalised focal 4.2647 → image coordinates.
    cam_z = 0.2 + 2.7
    for point, lo, hi in ((nose, 0.4, 0.55), (face[face[:, 1].argmin()], 0.7, 0.9)):
        x = 0.5 + 4.2647 * point[0] / (cam_z - point[2])
        y = 0.5 - 4.2647 * point[1] / (cam_z - point[2])
        assert 0.45 < x < 0.55 and lo < y < hi
    with pytest.raises(UserError, match="segments"):
        procedural_head(segments=20)
    with pytest.raises(UserError, match="rings"):
        procedural_head(rings=4)


@pytest.mark.parametrize("name", GGHEAD_TEMPLATES)
def test_gghead_templates_load_and_give_plausible_counts(shared_fixtures, name):
    path = shared_fixtures / "gghead_templates" / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    mesh = load_obj(path, transform="flame_to_eg3d")
    assert mesh.vertices.shape == (3553, 3) and mesh.faces.shape == (7004, 3)
    # World bounding box stated in the GGHead reference note (§1.4).
    lo, hi = mesh.vertices.amin(0), mesh.vertices.amax(0)
    torch.testing.assert_close(lo, torch.tensor([-0.29, -0.46, -0.37]), atol=0.01, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([0.28, 0.40, 0.20]), atol=0.01, rtol=0)
    n256, n512 = len(sample_points(mesh, 256)), len(sample_points(mesh, 512))
    assert 0.85 * 256**2 < n256 < 0.97 * 256**2 and 0.85 * 512**2 < n512 < 0.97 * 512**2
    if name == GGHEAD_TEMPLATES[0]:
        assert abs(n256 - 59813) <= 60  # valid texels of GGHead's 256² rasterisation (reference note §1.4)
