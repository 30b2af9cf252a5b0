"""Camera labels and samplers against closed forms, explicit matrix products and projections (float64 unless noted)."""

from __future__ import annotations

import math

import pytest
import torch

from dnnlib import UserError
from training import cameras as cam

F64 = torch.float64
TOL = 1e-10  # float64 closed forms


def _project(label: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Normalised image coordinates [N, 2] of world points [N, 3] seen by cameras [N, 25] (pinhole, OpenCV)."""
    c2w, K = label[:, :16].reshape(-1, 4, 4), label[:, 16:].reshape(-1, 3, 3)
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    p_cam = torch.einsum("nji,nj->ni", R, points - t)  # R^T (X - t)
    uvw = torch.einsum("nij,nj->ni", K, p_cam)
    return uvw[:, :2] / uvw[:, 2:]


def _rot(axis: str, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    m = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }[axis]
    return torch.tensor(m, dtype=F64)


@pytest.mark.parametrize("pivot", [cam.EG3D_PIVOT, cam.PANOHEAD_PIVOT])
def test_frontal_camera_looks_at_pivot(pivot):
    label = cam.lookat_labels(math.pi / 2, math.pi / 2, radius=2.7, pivot=pivot, dtype=F64)
    c2w, K = cam.decode_label(label[0])
    expected_origin = torch.tensor(pivot, dtype=F64) + torch.tensor([0.0, 0.0, 2.7], dtype=F64)
    torch.testing.assert_close(c2w[:3, 3], expected_origin, atol=TOL, rtol=0)
    # Frontal OpenCV camera: x right = world +x, y down = world -y, z forward = world -z.
    torch.testing.assert_close(c2w[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64)), atol=TOL, rtol=0)
    torch.testing.assert_close(c2w[3], torch.tensor([0.0, 0, 0, 1], dtype=F64), atol=0, rtol=0)
    f = cam.FFHQ_FOCAL
    torch.testing.assert_close(K, torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], dtype=F64), atol=TOL, rtol=0)
    # The pivot projects to the principal point.
    uv = _project(label, torch.tensor([pivot], dtype=F64))
    torch.testing.assert_close(uv, torch.full((1, 2), 0.5, dtype=F64), atol=TOL, rtol=0)


def test_orbit_origin_closed_form():
    h = torch.tensor([0.3, math.pi / 2, 2.0, 4.0], dtype=F64)
    v = torch.tensor([0.5, math.pi / 2, 1.2, 2.9], dtype=F64)
    pivot = (0.1, -0.2, 0.3)
    o = cam.orbit_origin(h, v, radius=2.5, pivot=pivot) - torch.tensor(pivot, dtype=F64)
    height = 2.5 * (1 - 2 * v / math.pi)  # EG3D: polar angle arccos(1 - 2v/pi)
    ground = torch.sqrt(2.5**2 - height**2)
    yaw = h - math.pi / 2
    expected = torch.stack([ground * torch.sin(yaw), height, ground * torch.cos(yaw)], dim=-1)
    torch.testing.assert_close(o, expected, atol=TOL, rtol=0)


def test_look_at_is_proper_rotation_and_projects_target_to_principal_point():
    g = torch.Generator().manual_seed(3)
    origin = torch.randn(64, 3, generator=g, dtype=F64) * 3
    target = torch.randn(64, 3, generator=g, dtype=F64) * 0.3
    c2w = cam.look_at(origin, target)
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3, dtype=F64).expand(64, 3, 3), atol=TOL, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=F64), atol=TOL, rtol=0)
    torch.testing.assert_close(R[:, 1, 0], torch.zeros(64, dtype=F64), atol=TOL, rtol=0)  # right axis level: no roll
    label = cam.encode_label(c2w, cam.intrinsics_from_focal(torch.full((64,), 3.0, dtype=F64)))
    torch.testing.assert_close(_project(label, target), torch.full((64, 2), 0.5, dtype=F64), atol=1e-9, rtol=0)
    # Image y points down: a point above the target lands above the principal point.
    above = _project(label, target + torch.tensor([0.0, 0.1, 0.0], dtype=F64))
    assert torch.all(above[:, 1] < 0.5)


def test_look_at_straight_down_is_still_a_rotation():
    c2w = cam.look_at(torch.tensor([[0.0, 3.0, 0.0]], dtype=F64), torch.zeros(1, 3, dtype=F64))
    R = c2w[0, :3, :3]
    torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=F64), atol=TOL, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1) < TOL
    torch.testing.assert_close(R[:, 2], torch.tensor([0.0, -1.0, 0.0], dtype=F64), atol=TOL, rtol=0)


def test_encode_decode_round_trip_and_errors():
    g = torch.Generator().manual_seed(0)
    c2w, K = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 3, 3, generator=g)
    label = cam.encode_label(c2w, K)
    assert label.shape == (2, 5, 25)
    torch.testing.assert_close(label[1, 2, 7], c2w[1, 2, 1, 3], atol=0, rtol=0)  # row-major: entry 7 = M[1, 3]
    torch.testing.assert_close(label[1, 2, 16 + 5], K[1, 2, 1, 2], atol=0, rtol=0)
    c2w2, K2 = cam.decode_label(label)
    assert torch.equal(c2w2, c2w) and torch.equal(K2, K)
    assert cam.encode_label(c2w, K[0, 0]).shape == (2, 5, 25)  # shared intrinsics broadcast
    with pytest.raises(UserError, match="25"):
        cam.decode_label(torch.zeros(3, 24))
    with pytest.raises(UserError, match="4, 4"):
        cam.encode_label(torch.zeros(3, 3, 3), torch.zeros(3, 3))


def test_mirror_label():
    frontal = cam.lookat_labels(math.pi / 2, math.pi / 2, dtype=F64)
    torch.testing.assert_close(cam.mirror_label(frontal), frontal, atol=TOL, rtol=0)
    labels = cam.sample_gaussian(16, generator=torch.Generator().manual_seed(1), dtype=F64)
    mirrored = cam.mirror_label(labels)
    torch.testing.assert_close(cam.mirror_label(mirrored), labels, atol=0, rtol=0)
    S = torch.diag(torch.tensor([-1.0, 1, 1, 1], dtype=F64))
    c2w, K = cam.decode_label(labels)
    torch.testing.assert_close(cam.decode_label(mirrored)[0], S @ c2w @ S, atol=0, rtol=0)
    torch.testing.assert_close(cam.decode_label(mirrored)[1], K, atol=0, rtol=0)
    ypr, ypr_m = cam.label_yaw_pitch_roll(labels), cam.label_yaw_pitch_roll(mirrored)
    torch.testing.assert_close(ypr_m, ypr * torch.tensor([-1.0, 1, -1], dtype=F64), atol=TOL, rtol=0)


def test_mirrored_camera_sees_mirrored_world_even_off_centre():
    g = torch.Generator().manual_seed(2)
    labels = cam.sample_uniform(8, generator=g, dtype=F64)
    labels[:, 16 + 2] = 0.43  # principal point off centre
    labels[:, 16 + 1] = 0.02  # and some skew
    points = torch.randn(8, 3, generator=g, dtype=F64) * 0.2
    uv = _project(labels, points)
    uv_m = _project(cam.mirror_label(labels), points * torch.tensor([-1.0, 1, 1], dtype=F64))
    torch.testing.assert_close(uv_m[:, 0], 1 - uv[:, 0], atol=1e-9, rtol=0)
    torch.testing.assert_close(uv_m[:, 1], uv[:, 1], atol=1e-9, rtol=0)


def test_yaw_pitch_of_lookat_cameras():
    h = torch.linspace(0.0, 2 * math.pi, 13, dtype=F64)[:-1]
    v = torch.linspace(0.2, math.pi - 0.2, 12, dtype=F64)
    ypr = cam.label_yaw_pitch_roll(cam.lookat_labels(h, v, dtype=F64))
    yaw_err = torch.remainder(ypr[:, 0] - (h - math.pi / 2) + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(yaw_err, torch.zeros_like(h), atol=1e-9, rtol=0)
    torch.testing.assert_close(ypr[:, 1], torch.asin(1 - 2 * v / math.pi), atol=1e-9, rtol=0)
    torch.testing.assert_close(ypr[:, 2], torch.zeros_like(h), atol=1e-9, rtol=0)
    torch.testing.assert_close(cam.v_to_pitch(v), torch.asin(1 - 2 * v / math.pi), atol=TOL, rtol=0)
    torch.testing.assert_close(cam.pitch_to_v(cam.v_to_pitch(v)), v, atol=1e-9, rtol=0)
    assert cam.v_to_pitch(math.pi / 2) == 0.0 and cam.v_to_pitch(0.1) > 0  # smaller v = higher camera


def test_yaw_pitch_roll_of_explicit_euler_rotation():
    R0 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    for yaw, pitch, roll in [(0.4, 0.2, 0.1), (-2.5, -0.7, -0.3), (3.0, 1.2, 0.5)]:
        R = _rot("y", yaw) @ _rot("x", -pitch) @ _rot("z", roll) @ R0
        c2w = torch.eye(4, dtype=F64)
        c2w[:3, :3] = R
        ypr = cam.label_yaw_pitch_roll(cam.encode_label(c2w, torch.eye(3, dtype=F64)))
        torch.testing.assert_close(ypr, torch.tensor([yaw, pitch, roll], dtype=F64), atol=1e-9, rtol=0)


def test_samplers_statistics_and_determinism():
    n = 20000
    labels = cam.sample_gaussian(n, h_std=0.3, v_std=0.155, generator=torch.Generator().manual_seed(0), dtype=F64)
    ypr = cam.label_yaw_pitch_roll(labels)
    v = cam.pitch_to_v(ypr[:, 1])
    # Standard error of a std estimate is std / sqrt(2n) ~ 0.0015 (h) and 0.0008 (v): 5 sigma tolerances.
    assert abs(ypr[:, 0].mean().item()) < 0.011 and abs(ypr[:, 0].std().item() - 0.3) < 0.008
    assert abs(v.mean().item() - math.pi / 2) < 0.006 and abs(v.std().item() - 0.155) < 0.004
    origin = labels[:, [3, 7, 11]] - torch.tensor(cam.EG3D_PIVOT, dtype=F64)
    torch.testing.assert_close(origin.norm(dim=-1), torch.full((n,), 2.7, dtype=F64), atol=1e-9, rtol=0)

    g = torch.Generator().manual_seed(1)
    uni = cam.label_yaw_pitch_roll(cam.sample_uniform(n, h_std=0.5, v_std=0.2, generator=g))
    assert uni[:, 0].abs().max() <= 0.5 + 1e-5 and uni[:, 0].abs().max() > 0.49
    full = cam.label_yaw_pitch_roll(cam.sample_360(n, generator=torch.Generator().manual_seed(2)))
    counts = torch.histc(full[:, 0], bins=8, min=-math.pi, max=math.pi)
    assert torch.all((counts - n / 8).abs() < 5 * math.sqrt(n / 8))  # uniform yaw over the circle

    a = cam.sample_gaussian(4, generator=torch.Generator().manual_seed(7))
    b = cam.sample_gaussian(4, generator=torch.Generator().manual_seed(7))
    c = cam.sample_gaussian(4, generator=torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)


def test_fov_focal():
    assert abs(cam.fov_to_focal(18.837, "eg3d") - 4.2634) < 5e-5  # EG3D's default FOV
    assert abs(cam.focal_to_fov(cam.FFHQ_FOCAL) - 13.37) < 5e-3  # horizontal FOV of the FFHQ focal
    for conv in ("horizontal", "eg3d"):
        fov = torch.tensor([10.0, 18.837, 60.0], dtype=F64)
        torch.testing.assert_close(cam.focal_to_fov(cam.fov_to_focal(fov, conv), conv), fov, atol=1e-10, rtol=0)
    # Horizontal convention: a point at half the FOV off the axis of a frontal camera lands on the image edge.
    fov = 40.0
    label = cam.lookat_labels(math.pi / 2, math.pi / 2, pivot=(0, 0, 0), focal=cam.fov_to_focal(fov), dtype=F64)
    depth = 2.0
    point = torch.tensor([[depth * math.tan(math.radians(fov / 2)), 0.0, 2.7 - depth]], dtype=F64)
    torch.testing.assert_close(_project(label, point), torch.tensor([[1.0, 0.5]], dtype=F64), atol=1e-12, rtol=0)
    with pytest.raises(UserError, match="convention"):
        cam.fov_to_focal(18.0, "vertical")


def test_pixel_intrinsics():
    K = cam.intrinsics_from_focal(torch.tensor([4.2647, 2.0], dtype=F64), principal=(0.5, 0.4))
    assert K.shape == (2, 3, 3)
    Kp = cam.normalized_to_pixel_intrinsics(K, width=640, height=480)
    expected = torch.tensor([[4.2647 * 640, 0, 320], [0, 4.2647 * 480, 192], [0, 0, 1]], dtype=F64)
    torch.testing.assert_close(Kp[0], expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(cam.pixel_to_normalized_intrinsics(Kp, 640, 480), K, atol=TOL, rtol=0)


def test_video_paths():
    n = 16
    t = torch.arange(n, dtype=F64) / n
    orbit = cam.orbit_labels(n, yaw_range=0.35, pitch_range=0.25, v_offset=-0.05, dtype=F64)
    ypr = cam.label_yaw_pitch_roll(orbit)
    torch.testing.assert_close(ypr[:, 0], 0.35 * torch.sin(2 * math.pi * t), atol=1e-9, rtol=0)
    v = math.pi / 2 - 0.05 + 0.25 * torch.cos(2 * math.pi * t)
    torch.testing.assert_close(ypr[:, 1], torch.asin(1 - 2 * v / math.pi), atol=1e-9, rtol=0)
    turn = cam.label_yaw_pitch_roll(cam.orbit_360_labels(n, dtype=F64))
    yaw_err = torch.remainder(turn[:, 0] - 2 * math.pi * t + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(yaw_err, torch.zeros(n, dtype=F64), atol=1e-9, rtol=0)
    assert orbit.shape == (n, 25) and cam.orbit_360_labels(5).dtype == torch.float32
