"""Synthetic heads: multi-view consistency against an independent pinhole projection, a brute-force ray march of the
solids' implicit functions, masks, determinism and the dataset writer."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from dnnlib import UserError
from training import cameras, synthetic
from training.synthetic import (
    BACKGROUND,
    archive_name,
    pixel_rays,
    render_heads,
    sample_cameras,
    shade,
    trace_rays,
    write_synthetic_dataset,
)
from training.synthetic_heads import PRIMITIVE_NAMES, Primitives, head_primitives, sample_heads

SEED = 11


def _implicit(prims, n: int, x: np.ndarray) -> np.ndarray:
    """[..., K] value of each solid of head n at world points x [..., 3]: < 0 inside, 0 on its surface (float64).

    max(|diag(1/r) R^T (x - c)| - 1, n . x - offset): the ellipsoid ball intersected with the kept half-space.
    """
    c, R, r = prims.center[n].numpy(), prims.rotation[n].numpy(), prims.radii[n].numpy()
    local = np.einsum("kji,...kj->...ki", R, x[..., None, :] - c) / r  # R^T (x - c) / r
    ellipsoid = np.linalg.norm(local, axis=-1) - 1.0
    plane = x @ prims.plane_normal[n].numpy().T - prims.plane_offset[n].numpy()
    value = np.maximum(ellipsoid, plane)
    return np.where(prims.enabled[n].numpy(), value, np.inf)


def _surface_point(prims, n: int, name: str, local_dir: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A point on solid ``name``'s ellipsoid (c + R diag(r) u for unit local u) and its outward unit normal."""
    k = PRIMITIVE_NAMES.index(name)
    c, R, r = prims.center[n, k].numpy(), prims.rotation[n, k].numpy(), prims.radii[n, k].numpy()
    u = np.asarray(local_dir, dtype=np.float64) / np.linalg.norm(local_dir)
    normal = R @ (u / r)
    return c + R @ (r * u), normal / np.linalg.norm(normal)


def _project(label: np.ndarray, point: np.ndarray, resolution: int) -> tuple[float, float, float]:
    """Independent pinhole projection: (column, row) in pixel units (pixel centres at integers) and camera distance."""
    cam2world, K = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    p_cam = np.linalg.inv(cam2world) @ np.append(point, 1.0)
    x, y, z = p_cam[:3]
    u = K[0, 0] * x / z + K[0, 1] * y / z + K[0, 2]
    v = K[1, 1] * y / z + K[1, 2]
    return u * resolution - 0.5, v * resolution - 0.5, float(np.linalg.norm(point - cam2world[:3, 3]))


FEATURES = [  # (solid, local direction of the point): nose tip, eye front, hair back and top, ear side
    ("nose", (0.0, 0.0, 1.0)),
    ("eye_left", (0.0, 0.0, 1.0)),
    ("hair_cap", (0.0, 0.0, -1.0)),
    ("hair_cap", (0.2, 1.0, -0.3)),
    ("ear_right", (-1.0, 0.1, 0.0)),
]


def test_known_points_are_seen_where_the_geometry_says():
    """A head's surface points, projected into two views each, are hit at the projected pixel at their distance.

    Cameras look straight at the point from 2.5 units, 23 deg to one side of its normal and 11 deg to the other; at an
    odd resolution the point projects onto the centre pixel's centre. float32 ray casting: depth within 2e-6 (a few
    ulp at distance 2.5). The shading is view-independent, so both views give the point the same colour (within 5e-5,
    float32 error of the hit point times the hair-strand pattern's slope).
    """
    res, heads = 33, sample_heads(4, SEED)
    prims = head_primitives(heads)
    checked = 0
    for n in range(len(heads)):
        for name, direction in FEATURES:
            point, normal = _surface_point(prims, n, name, direction)
            values = _implicit(prims, n, point)
            own, others = values[PRIMITIVE_NAMES.index(name)], np.delete(values, PRIMITIVE_NAMES.index(name))
            if own > 1e-9 or others.min() < 1e-9:
                continue  # clipped away, switched off, or inside another solid: not on the union's surface
            side = np.cross(normal, [0.0, 1.0, 0.0] if abs(normal[1]) < 0.9 else [1.0, 0.0, 0.0])
            side /= np.linalg.norm(side)
            origins = [point + 2.5 * (math.cos(a) * normal + math.sin(a) * side) for a in (0.4, -0.2)]
            c2w = cameras.look_at(torch.tensor(np.stack(origins)), torch.tensor(np.stack([point, point])))
            labels = cameras.encode_label(c2w, cameras.intrinsics_from_focal(cameras.FFHQ_FOCAL, dtype=torch.float64))
            two = type(heads)(u=heads.u[[n, n]], index=heads.index[[n, n]])
            images, masks, depth = render_heads(two, labels.float(), res)
            colours = []
            for view in range(2):
                col, row, dist = _project(labels[view].float().double().numpy(), point, res)
                assert abs(col - res // 2) < 1e-4 and abs(row - res // 2) < 1e-4
                assert masks[view, 0, res // 2, res // 2] == 1.0
                assert abs(depth[view, 0, res // 2, res // 2].item() - dist) < 2e-6, (name, view)
                colours.append(images[view, :, res // 2, res // 2])
            assert torch.allclose(colours[0], colours[1], atol=5e-5, rtol=0), name
            checked += 1
    assert checked >= 14


def _pixel_rays_reference(label: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Origin [3] and unit directions [res*res, 3] through pixel centres, written out from the label (float64)."""
    cam2world, K = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    j, i = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
    y = ((j.ravel() + 0.5) / res - K[1, 2]) / K[1, 1]
    x = ((i.ravel() + 0.5) / res - K[0, 2] - K[0, 1] * y) / K[0, 0]
    d = np.stack([x, y, np.ones_like(x)], -1) @ cam2world[:3, :3].T
    return cam2world[:3, 3], d / np.linalg.norm(d, axis=-1, keepdims=True)


@pytest.mark.parametrize("distribution", ["ffhq", "360"])
def test_depth_matches_brute_force_ray_march(distribution):
    """Every pixel's depth against a dense march of the union's implicit function along the pixel's ray.

    Samples every 2e-3 units over t in [1.7, 3.7] (the heads lie within 0.7 of the pivot, cameras 2.7 away):
    no sample before the rendered depth is inside the head, the rendered hit lies on the union's surface (implicit
    value within 1e-4), and where a sample is inside, the ray was rendered as a hit no later than that sample.
    """
    res, heads = 12, sample_heads(3, SEED + 1)
    labels = sample_cameras(distribution, 3, SEED + 1)
    _, masks, depth = render_heads(heads, labels, res)
    prims = head_primitives(heads)
    ts = np.arange(1.7, 3.7, 2e-3)
    for n in range(len(heads)):
        origin, dirs = _pixel_rays_reference(labels[n].double().numpy(), res)
        d = depth[n, 0].double().numpy().ravel()
        inside = _implicit(prims, n, origin + ts[None, :, None] * dirs[:, None]).min(-1) < 0  # [rays, samples]
        first = np.where(inside.any(1), ts[inside.argmax(1)], np.inf)
        assert np.all(d <= first + 1e-6), "a ray missed geometry the march found"
        before = inside & (ts[None] < d[:, None] - 1e-5)
        assert not before.any(), "geometry in front of the rendered surface"
        hit = np.isfinite(d)
        on_surface = _implicit(prims, n, origin + d[hit, None] * dirs[hit]).min(-1)
        assert np.abs(on_surface).max() < 1e-4
        assert hit.mean() > 0.2
        assert np.array_equal(masks[n, 0].numpy().ravel() == 1.0, hit)


def _scene(radius: float, cut: float, albedo: tuple, extra: list[tuple]) -> Primitives:
    """One head: a sphere at the origin clipped to z <= cut, then unclipped solids ``extra`` = [(centre, R, radii)]."""
    f64, k = torch.float64, 1 + len(extra)
    return Primitives(
        center=torch.tensor(np.stack([np.zeros(3)] + [e[0] for e in extra])[None], dtype=f64),
        rotation=torch.tensor(np.stack([np.eye(3)] + [e[1] for e in extra])[None], dtype=f64),
        radii=torch.tensor(np.stack([np.full(3, radius)] + [e[2] for e in extra])[None], dtype=f64),
        plane_normal=torch.tensor([[[0.0, 0, 1]] * k], dtype=f64), plane_offset=torch.tensor([[cut] + [1e4] * (k - 1)]),
        albedo=torch.tensor([[albedo] * k], dtype=f64), spot_color=torch.zeros(1, k, 3, dtype=f64),
        spot_cos=torch.full((1, k), 2.0, dtype=f64), pupil_cos=torch.full((1, k), 2.0, dtype=f64),
        stripes=torch.zeros(1, k, dtype=f64), enabled=torch.ones(1, k, dtype=torch.bool),
    )  # fmt: skip


def _view(eye: np.ndarray, res: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """float32 label of a camera at ``eye`` looking at the origin (focal 1.2) and its reference rays (float64)."""
    c2w = cameras.look_at(torch.tensor(eye[None]), torch.zeros(1, 3, dtype=torch.float64))
    label = cameras.encode_label(c2w, cameras.intrinsics_from_focal(1.2, dtype=torch.float64)).float()
    return (label, *_pixel_rays_reference(label[0].double().numpy(), res))


def _ellipsoid_interval(o: np.ndarray, d: np.ndarray, solid: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters [rays] where rays o + t d [rays, 3] enter and leave an ellipsoid (NaN: miss), float64."""
    c, R, r = solid
    ol, dl = (R.T @ (o - c)) / r, (d @ R) / r
    a, b, cc = (dl * dl).sum(-1), dl @ ol, ol @ ol - 1
    with np.errstate(invalid="ignore"):
        root = np.sqrt(b * b - a * cc)  # NaN where the line misses
    return (-b - root) / a, (-b + root) / a


def test_clipped_sphere_closed_form():
    """A sphere (radius 0.3) cut by the plane z = 0.1, seen from (0.3, 0.4, 2): per pixel, the entry distance is the
    larger of the sphere's entry and the plane crossing when that lies inside the sphere (closed form, float64);
    the flat cap is lit with normal +z, the rest with the sphere's radial normal."""
    res, radius, cut, albedo = 17, 0.3, 0.1, (0.8, 0.5, 0.3)
    prims = _scene(radius, cut, albedo, [])
    label, o, d = _view(np.array([0.3, 0.4, 2.0]), res)
    origins, dirs = pixel_rays(label, res)
    depth, index, on_plane = trace_rays(prims, origins, dirs)
    t_in, t_out = _ellipsoid_interval(o, d, (np.zeros(3), np.eye(3), np.full(3, radius)))
    t_plane = (cut - o[2]) / d[:, 2]  # rays go toward -z: they enter z <= cut there
    entry = np.maximum(t_in, t_plane)
    hit = entry <= t_out
    expected = np.where(hit, entry, np.inf)
    assert hit.sum() > 20 and (t_plane > t_in)[hit].sum() > 10
    assert np.allclose(depth[0].double().numpy().ravel(), expected, atol=2e-6, rtol=0)
    assert torch.equal(on_plane[0].flatten(), torch.from_numpy(hit & (t_plane > t_in)))
    assert torch.all(index[0].flatten() == 0)
    rgb = shade(prims, origins, dirs.flatten(1, 2), depth.flatten(1), index.flatten(1), on_plane.flatten(1))[0]
    x = o + np.where(hit, expected, 0)[:, None] * d
    normal = np.where((t_plane > t_in)[:, None], [0.0, 0.0, 1.0], x / radius)
    light = synthetic._AMBIENT + synthetic._SKY * (0.5 + 0.5 * normal[:, 1])
    for direction, strength in synthetic._LIGHTS:
        light = light + strength * np.maximum(normal @ (np.array(direction) / np.linalg.norm(direction)), 0)
    want = np.where(hit[:, None], np.clip(np.array(albedo) * light[:, None], 0, 1), (BACKGROUND + 1) / 2)
    assert np.allclose(rgb.double().numpy(), want, atol=1e-5, rtol=0)


def test_solids_next_to_the_camera():
    """Two rods whose bounding spheres contain the camera (which is outside both): one lies behind the camera and
    must stay invisible; the other starts behind the camera and reaches in front of it, beside the view axis, and
    must be seen where a closed-form ray/ellipsoid solve (float64) says, nearer than the sphere."""
    res, eye = 16, np.array([0.3, 0.4, 2.0])
    back = eye / np.linalg.norm(eye)
    side = np.cross(back, [0.0, 1.0, 0.0]) / np.linalg.norm(np.cross(back, [0.0, 1.0, 0.0]))
    across = (eye + 0.2 * back, np.stack([side, back, np.cross(side, back)], -1), np.array([0.5, 0.1, 0.1]))
    along_axes = np.stack([back, side, np.cross(back, side)], -1)
    along = (eye + 0.3 * back + 0.12 * side, along_axes, np.array([0.9, 0.1, 0.1]))
    prims = _scene(0.3, 1.0, (0.5, 0.5, 0.5), [across, along])
    label, o, d = _view(eye, res)
    depth, index, _ = trace_rays(prims, *pixel_rays(label, res))
    sphere = _ellipsoid_interval(o, d, (np.zeros(3), np.eye(3), np.full(3, 0.3)))[0]
    rod_in, rod_out = _ellipsoid_interval(o, d, along)
    assert np.nanmax(_ellipsoid_interval(o, d, across)[1]) < 0  # the first rod is entirely behind the camera
    assert not np.any((rod_in < 0) & (rod_out > 0))  # the camera is outside the second rod...
    assert (rod_out < 0).sum() > 5 and (rod_in > 0).sum() > 5  # ...whose line meets some rays behind, some in front
    rod = np.where(rod_in > 0, rod_in, np.inf)
    expected = np.fmin(np.where(np.isnan(sphere), np.inf, sphere), rod)
    assert np.allclose(depth[0].double().numpy().ravel(), expected, atol=2e-6, rtol=0)
    assert torch.equal(index[0].flatten() == 2, torch.from_numpy(np.isfinite(rod) & ~(sphere < rod)))


def test_masks_background_and_ranges():
    """Masks are exactly where the depth is finite; off the head the image is the background colour."""
    heads = sample_heads(3, SEED)
    images, masks, depth = render_heads(heads, sample_cameras("360", 3, SEED), 16)
    assert images.shape == (3, 3, 16, 16) and masks.shape == depth.shape == (3, 1, 16, 16)
    assert torch.equal(masks == 1, torch.isfinite(depth)) and torch.all((masks == 0) | (masks == 1))
    assert torch.all(images[(masks == 0).expand_as(images)] == BACKGROUND)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.all(depth[masks == 1] > 1.5) and torch.all(depth[masks == 1] < 3.5)


def test_head_dimensions_and_orientation():
    """World frame: the face (nose) points to +z; chin to the top of the hair is about half a unit; centred near 0."""
    prims = head_primitives(sample_heads(64, SEED))
    k = {name: i for i, name in enumerate(PRIMITIVE_NAMES)}
    assert torch.all(prims.center[:, k["nose"], 2] > prims.center[:, k["cranium"], 2] + 0.1)
    top = prims.center[:, k["hair_cap"], 1] + prims.radii[:, k["hair_cap"], 1]  # axis-aligned solids
    chin = prims.center[:, k["face"], 1] - prims.radii[:, k["face"], 1]
    height = top - chin
    assert height.min() > 0.42 and height.max() < 0.58 and abs(height.mean() - 0.49) < 0.02
    assert torch.all((top + chin).abs() < 0.15)


def test_head_i_depends_only_on_seed_and_index():
    """Parameters, cameras and pixels of head i are bitwise the same whether it is rendered alone or in a batch."""
    a, b = sample_heads(40, 3), sample_heads(2, 3, start=37)
    assert torch.equal(a.u[37:39], b.u) and torch.equal(b.index, torch.tensor([37, 38]))
    labels = sample_cameras("360", 40, 3)
    assert torch.equal(labels[37:39], sample_cameras("360", 2, 3, start=37))
    assert not torch.equal(sample_heads(2, 4).u, a.u[:2])
    batch, alone = render_heads(a, labels, 8), render_heads(b, labels[37:39], 8)
    for x, y in zip(batch, alone, strict=True):
        assert torch.equal(x[37:39], y)


def _zip_contents(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_dataset_is_deterministic_and_prefix_stable(tmp_path):
    """Same seed: byte-identical zips; head i (image, mask, label) does not depend on how many heads are written."""
    paths = [tmp_path / f"{k}.zip" for k in "abc"]
    threads = torch.get_num_threads()
    for path, count in zip(paths, (4, 4, 6), strict=True):
        write_synthetic_dataset(path, count, 8, "360", seed=5, progress=False)
    assert torch.get_num_threads() == threads  # the writer's single-thread setting is restored
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert (tmp_path / "a_masks.zip").read_bytes() == (tmp_path / "b_masks.zip").read_bytes()
    small, big = _zip_contents(paths[0]), _zip_contents(paths[2])
    small_masks, big_masks = _zip_contents(tmp_path / "a_masks.zip"), _zip_contents(tmp_path / "c_masks.zip")
    for i in range(4):
        assert small[archive_name(i)] == big[archive_name(i)]
        assert small_masks[archive_name(i)] == big_masks[archive_name(i)]
    small_labels = json.loads(small["dataset.json"])["labels"]
    assert small_labels == json.loads(big["dataset.json"])["labels"][:4]


def test_written_dataset_matches_renderer(tmp_path):
    """Layout, labels and pixels of the zip against render_heads: at supersample 2 each pixel is the mean of a 2x2
    block of a render at twice the resolution (uint8 rounding: within 0.5 + float error)."""
    summary = write_synthetic_dataset(tmp_path / "h.zip", 3, 8, "ffhq", seed=2, progress=False)
    assert summary["masks_dest"] == str(tmp_path / "h_masks.zip")
    files, masks = _zip_contents(tmp_path / "h.zip"), _zip_contents(tmp_path / "h_masks.zip")
    assert sorted(files) == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png", "dataset.json"]
    labels = json.loads(files["dataset.json"])["labels"]
    expected = sample_cameras("ffhq", 3, 2)
    images, fine_masks, _ = render_heads(sample_heads(3, 2), expected, 16)
    for i, (name, label) in enumerate(labels):
        assert name == archive_name(i) and torch.equal(torch.tensor(label, dtype=torch.float32), expected[i])
        png = PIL.Image.open(io.BytesIO(files[name]))
        mask = PIL.Image.open(io.BytesIO(masks[name]))
        assert png.mode == "RGB" and png.size == (8, 8) and mask.mode == "L"
        block_rgb = (images[i] + 1).mul(127.5).reshape(3, 8, 2, 8, 2).mean((2, 4)).permute(1, 2, 0).numpy()
        assert np.abs(np.asarray(png, dtype=np.float64) - block_rgb).max() <= 0.5 + 1e-3
        block_mask = fine_masks[i, 0].mul(255).reshape(8, 2, 8, 2).mean((1, 3)).numpy()
        assert np.abs(np.asarray(mask, dtype=np.float64) - block_mask).max() <= 0.5 + 1e-3


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="--cameras"):
        write_synthetic_dataset(tmp_path / "x.zip", 2, 8, "frontal", progress=False)
    with pytest.raises(UserError, match="--resolution"):
        write_synthetic_dataset(tmp_path / "x.zip", 2, 12, progress=False)
    with pytest.raises(UserError, match="--dest"):
        write_synthetic_dataset(tmp_path / "x.tar", 2, 8, progress=False)
    with pytest.raises(UserError, match="labels"):
        render_heads(sample_heads(2, 0), torch.zeros(3, 25), 8)
    assert not list(tmp_path.iterdir())
