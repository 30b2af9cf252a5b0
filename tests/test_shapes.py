"""training/shapes.py: 3DGS .ply layout, MRC header per the MRC2014 spec, marching-cubes meshes in world units."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from dnnlib import UserError
from training import shapes


def parse_binary_ply(path) -> tuple[list[tuple[str, int, list[tuple[str, str]]]], bytes]:
    """Independent minimal PLY reader: ([(element, count, [(property, type or 'list')])], body bytes)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").split("\n")
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    elements = []
    for line in lines[2:]:
        words = line.split()
        if words[:1] == ["element"]:
            elements.append((words[1], int(words[2]), []))
        elif words[:1] == ["property"]:
            elements[-1][2].append((words[-1], "list" if words[1] == "list" else words[1]))
    return elements, raw[end:]


def random_cloud(n: int, generator: torch.Generator) -> shapes.SplatCloud:
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=generator), dim=-1)
    return shapes.SplatCloud(means=torch.randn(n, 3, generator=generator),
                             scales=torch.rand(n, 3, generator=generator) * 0.1 + 0.01, quats=quats,
                             sh=torch.randn(n, 4, 3, generator=generator),
                             opacities=torch.rand(n, generator=generator) * 0.98 + 0.01)


def test_gaussian_ply_follows_the_3dgs_layout(tmp_path):
    cloud = random_cloud(7, torch.Generator().manual_seed(0))
    path = tmp_path / "g.ply"
    shapes.write_gaussian_ply(path, cloud)
    elements, body = parse_binary_ply(path)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert [(e[0], e[1]) for e in elements] == [("vertex", 7)]
    assert elements[0][2] == [(name, "float") for name in names]
    assert len(body) == 7 * len(names) * 4
    rows = np.array(struct.unpack(f"<{7 * len(names)}f", body), dtype=np.float64).reshape(7, len(names))
    col = {name: rows[:, i] for i, name in enumerate(names)}
    # float32 storage: relative tolerance 1e-6 (logit/log are evaluated in float32 too: 1e-5).
    for i, axis in enumerate("xyz"):
        np.testing.assert_allclose(col[axis], cloud.means[:, i].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(col["n" + axis], 0)
    sh = cloud.sh.double().numpy()
    for c in range(3):
        np.testing.assert_allclose(col[f"f_dc_{c}"], sh[:, 0, c], rtol=1e-6)
        for k in range(3):  # 3DGS: all of channel c's higher coefficients, then the next channel's
            np.testing.assert_allclose(col[f"f_rest_{3 * c + k}"], sh[:, 1 + k, c], rtol=1e-6)
    p = cloud.opacities.double().numpy()
    np.testing.assert_allclose(col["opacity"], np.log(p / (1 - p)), rtol=1e-5, atol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(col[f"scale_{i}"], np.log(cloud.scales[:, i].double().numpy()), rtol=1e-5)
    for i in range(4):
        np.testing.assert_allclose(col[f"rot_{i}"], cloud.quats[:, i].numpy(), rtol=1e-6)
    back = shapes.read_gaussian_ply(path)
    for field in ("means", "scales", "quats", "sh", "opacities"):
        torch.testing.assert_close(getattr(back, field), getattr(cloud, field), rtol=1e-5, atol=1e-6)


def test_reader_takes_the_degree_one_part_of_a_degree_three_file(tmp_path):
    n, rest = 3, np.arange(3 * 45, dtype=np.float32).reshape(3, 45)  # 15 coefficients per channel, channel-major
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    values = np.zeros((n, len(names)), np.float32)
    values[:, 6:51] = rest
    values[:, names.index("rot_0")] = 1
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 3\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    path = tmp_path / "deg3.ply"
    path.write_bytes(header.encode() + values.tobytes())
    sh = shapes.read_gaussian_ply(path).sh
    for c in range(3):
        for k in range(3):
            np.testing.assert_array_equal(sh[:, 1 + k, c].numpy(), rest[:, 15 * c + k])
    assert torch.equal(shapes.read_gaussian_ply(path).opacities, torch.full((3,), 0.5))


def test_rgb_to_sh_reproduces_the_colour_from_every_direction():
    rgb = torch.rand(5, 3)
    sh = shapes.rgb_to_sh(rgb)
    torch.testing.assert_close(0.5 + sh[:, 0] / (2 * math.sqrt(math.pi)), rgb, rtol=0, atol=1e-6)
    assert torch.count_nonzero(sh[:, 1:]) == 0


def test_mrc_header_and_data_order_follow_mrc2014(tmp_path):
    volume = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)  # [X, Y, Z]
    path = tmp_path / "v.mrc"
    shapes.write_mrc(path, volume, box_size=2.0)
    raw = path.read_bytes()
    assert len(raw) == 1024 + volume.size * 4
    words = struct.unpack("<56i", raw[:224])
    floats = struct.unpack("<56f", raw[:224])
    assert words[0:3] == (4, 5, 6) and words[3] == 2  # NX NY NZ, MODE 2 = float32
    assert words[4:7] == (0, 0, 0) and words[7:10] == (4, 5, 6)  # NXSTART.., MX MY MZ
    voxel = 2.0 / 4
    np.testing.assert_allclose(floats[10:13], (voxel * 4, voxel * 5, voxel * 6), rtol=1e-7)  # CELLA
    assert floats[13:16] == (90.0, 90.0, 90.0)  # CELLB
    assert words[16:19] == (1, 2, 3)  # MAPC MAPR MAPS: columns x, rows y, sections z
    np.testing.assert_allclose(floats[19:22], (volume.min(), volume.max(), volume.mean()), rtol=1e-6)
    assert words[22] == 1 and words[23] == 0  # ISPG (volume), NSYMBT
    assert words[27] == 20140  # NVERSION (word 28)
    np.testing.assert_allclose(floats[49:52], (-1 + voxel / 2,) * 3, rtol=1e-7)  # ORIGIN: centre of voxel 0
    assert raw[208:212] == b"MAP " and raw[212:214] == b"\x44\x44"  # MAP, MACHST little-endian
    assert struct.unpack("<i", raw[220:224])[0] == 1  # NLABL
    data = np.frombuffer(raw[1024:], dtype="<f4").reshape(6, 5, 4)  # sections, rows, columns
    for x, y, z in [(0, 0, 0), (3, 1, 2), (1, 4, 5)]:
        assert data[z, y, x] == volume[x, y, z]


def sphere_density(resolution: int, box: float, radius: float) -> np.ndarray:
    axis = ((np.arange(resolution) + 0.5) / resolution - 0.5) * box
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    return radius - np.sqrt((x - 0.1) ** 2 + y**2 + z**2)  # > 0 inside a sphere centred at (0.1, 0, 0)


def test_marching_cubes_mesh_is_in_world_units_and_points_outward():
    pytest.importorskip("skimage")
    box, radius = 1.0, 0.3
    vertices, faces = shapes.marching_cubes_mesh(sphere_density(24, box, radius), 0.0, box)
    distance = np.linalg.norm(vertices - [0.1, 0, 0], axis=1)
    # Linear interpolation of an exact distance field along grid edges: the error is a small fraction of a voxel.
    np.testing.assert_allclose(distance, radius, atol=0.1 * box / 24)
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    normals = np.cross(b - a, c - a)
    outward = np.einsum("ij,ij->i", normals, (a + b + c) / 3 - [0.1, 0, 0])
    assert (outward > 0).all()
    with pytest.raises(UserError, match="no surface"):
        shapes.marching_cubes_mesh(sphere_density(8, box, radius), 5.0, box)


def test_mesh_writers(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64) * 0.25
    faces = np.array([[0, 2, 1], [0, 1, 3]])
    colors = np.array([[0, 0.5, 1], [1, 1, 1], [0.2, 0.4, 0.6], [0, 0, 0]])
    shapes.write_mesh_ply(tmp_path / "m.ply", vertices, faces, colors)
    elements, body = parse_binary_ply(tmp_path / "m.ply")
    assert elements == [("vertex", 4, [("x", "float"), ("y", "float"), ("z", "float"), ("red", "uchar"),
                                       ("green", "uchar"), ("blue", "uchar")]),
                        ("face", 2, [("vertex_indices", "list")])]
    for i in range(4):
        record = struct.unpack_from("<3f3B", body, i * 15)
        np.testing.assert_allclose(record[:3], vertices[i], rtol=1e-7)
        assert record[3:] == tuple(int(round(v * 255)) for v in colors[i])
    for j in range(2):
        record = struct.unpack_from("<B3i", body, 60 + j * 13)
        assert record == (3, *faces[j])
    shapes.write_mesh_obj(tmp_path / "m.obj", vertices, faces, colors)
    lines = (tmp_path / "m.obj").read_text().split("\n")
    v_rows = [list(map(float, line.split()[1:])) for line in lines if line.startswith("v ")]
    f_rows = [list(map(int, line.split()[1:])) for line in lines if line.startswith("f ")]
    np.testing.assert_allclose(v_rows, np.concatenate([vertices, colors], axis=1), atol=1e-6)
    assert f_rows == (faces + 1).tolist()
