"""gen_samples.py end to end on tiny snapshots, and the view / seed parsing of training/views.py."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import gen_samples
import legacy
from dnnlib import UserError
from training.presets import PRESETS, build_networks
from training.rendering.gaussian_rasterizer import rasterize
from training.rendering.gaussians import Gaussians
from training.snapshot import save_network_snapshot
from training.views import parse_seeds, parse_views, view_labels

SH_C0, SH_C1 = 0.5 / math.sqrt(math.pi), math.sqrt(3) / (2 * math.sqrt(math.pi))


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory) -> dict[str, Path]:
    """Freshly initialised tiny Gaussian and volumetric models saved as snapshots (cur_nimg 0: 32² Gaussian renders,
    16² neural rendering), with 12 + 0 depth samples for speed."""
    root = tmp_path_factory.mktemp("gen_samples_snapshots")
    configs = {
        "gaussian": PRESETS["gghead-tiny"].replace("generator.sample_resolution", 32),
        "volumetric": PRESETS["panohead-tiny"].replace("generator.render.depth_resolution_importance", 0),
    }
    paths = {}
    for family, config in configs.items():
        torch.manual_seed(1)
        G, D = build_networks(config, "cpu")
        paths[family] = root / f"{family}-network-snapshot-000000.safetensors"
        save_network_snapshot(paths[family], {"G_ema": G, "D": D}, config.to_dict(), {"kimg": 0, "cur_nimg": 0})
    return paths


def invoke(*args: str):
    return CliRunner().invoke(gen_samples.main, [*args, "--device", "cpu"])


def read_vertex_table(path: Path) -> dict[str, np.ndarray]:
    """Independent minimal reader of a binary little-endian PLY whose only element is float32 vertices."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").split("\n")
    count = int(next(line for line in header if line.startswith("element vertex")).split()[2])
    names = [line.split()[2] for line in header if line.startswith("property float ")]
    values = np.frombuffer(raw[end:], dtype="<f4").reshape(count, len(names))
    return {name: values[:, i].astype(np.float64) for i, name in enumerate(names)}


def test_parse_seeds_and_views():
    assert parse_seeds("0-3,12, 5") == [0, 1, 2, 3, 12, 5]
    for bad in ("3-1", "a", "1,,2", "-2"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    assert parse_views("front") == [(0.0, 0.0)]
    assert parse_views("360/4") == [(0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
    assert len(parse_views("360")) == 8
    yaws = [y for y, _ in parse_views("ffhq")]
    np.testing.assert_allclose(yaws, np.degrees([-0.4, -0.2, 0.0, 0.2, 0.4]), rtol=1e-12)
    assert parse_views("10:5, -20.5:0") == [(10.0, 5.0), (-20.5, 0.0)]
    for bad in ("side", "10", "10:5:3", "360/0", "0:95", "10;5"):
        with pytest.raises(UserError, match="--views"):
            parse_views(bad)


def test_view_labels_place_cameras_at_the_requested_angles():
    views, pivot, radius = [(30.0, 10.0), (-120.0, -45.0), (0.0, 0.0)], np.array([0.0, 0.0, 0.2]), 2.7
    labels = view_labels(views, tuple(pivot), radius=radius, focal=3.0).double()
    for (yaw, pitch), label in zip(views, labels, strict=True):
        c2w = label[:16].reshape(4, 4).numpy()
        y, p = math.radians(yaw), math.radians(pitch)
        expected = pivot + radius * np.array([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])
        np.testing.assert_allclose(c2w[:3, 3], expected, atol=1e-5)  # float32 labels
        forward = (pivot - expected) / radius
        np.testing.assert_allclose(c2w[:3, 2], forward, atol=1e-5)  # looks at the pivot
        assert c2w[1, 1] < 0 or abs(pitch) > 80  # image down ≈ world −y
        np.testing.assert_allclose(label[16:].numpy(), [3, 0, 0.5, 0, 3, 0.5, 0, 0, 1], atol=1e-7)


def test_cli_errors_are_one_line():
    result = invoke("--network", "nowhere.safetensors", "--seeds", "0", "--outdir", "x", "--views", "sideways")
    assert result.exit_code == 1 and "Error: --views:" in result.output and "Traceback" not in result.output
    result = invoke("--network", "nowhere", "--seeds", "0", "--outdir", "x", "--fov", "18", "--focal", "4")
    assert result.exit_code == 1 and "--fov and --focal" in result.output


def test_gaussian_samples_and_ply_rerender(snapshots, tmp_path):
    out = tmp_path / "out"
    result = invoke("--network", str(snapshots["gaussian"]), "--seeds", "3,5", "--views", "0:0,20:10",
                    "--outdir", str(out), "--depth", "--mask", "--shapes", "--trunc", "1")
    assert result.exit_code == 0, result.output
    for seed in (3, 5):
        for view in (0, 1):
            stem = out / f"seed{seed:04d}-view{view:02d}"
            assert np.asarray(PIL.Image.open(f"{stem}.png")).shape == (32, 32, 3)
            assert np.asarray(PIL.Image.open(f"{stem}-mask.png")).shape == (32, 32)
            depth = np.load(f"{stem}-depth.npy")
            png = np.asarray(PIL.Image.open(f"{stem}-depth.png"))
            assert png.dtype == np.uint16 and depth.shape == (32, 32)
            np.testing.assert_array_equal(png, np.clip(np.rint(depth * 1e4), 0, 65535))
            assert 2.0 < depth.max() < 3.3  # camera 2.7 from the pivot, the head within ~0.5 of it
    assert np.asarray(PIL.Image.open(out / "grid.png")).shape == (64, 64, 3)
    # Re-render the exported Gaussians of seed 5 from the frontal view with the 3DGS colour formula written here.
    table = read_vertex_table(out / "seed0005.ply")
    label = torch.tensor(json.loads((out / "cameras.json").read_text())["labels"][0])
    means = np.stack([table[k] for k in "xyz"], axis=1)
    d = means - label[:16].reshape(4, 4)[:3, 3].double().numpy()
    x, y, z = (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    rgb = np.stack([0.5 + SH_C0 * table[f"f_dc_{c}"] + SH_C1 * (-y * table[f"f_rest_{3 * c}"] + z * table[
        f"f_rest_{3 * c + 1}"] - x * table[f"f_rest_{3 * c + 2}"]) for c in range(3)], axis=1).clip(0, 1)
    gaussians = Gaussians(
        means=torch.tensor(means)[None].float(),
        scales=torch.tensor(np.exp(np.stack([table[f"scale_{i}"] for i in range(3)], axis=1)))[None].float(),
        quats=torch.tensor(np.stack([table[f"rot_{i}"] for i in range(4)], axis=1))[None].float(),
        colors=torch.tensor(rgb)[None].float(),
        opacities=torch.tensor(1 / (1 + np.exp(-table["opacity"])))[None].float())
    rendered = rasterize(gaussians, label[None], 32, background=torch.ones(3), backend="torch").features[0]
    image = np.asarray(PIL.Image.open(out / "seed0005-view00.png")).astype(np.float64)
    # The PNG rounds 255·rgb to an integer (±0.5); float32 storage and the opacity clamp add < 0.1 of a level.
    np.testing.assert_allclose(image, rendered.permute(1, 2, 0).double().numpy() * 255, atol=0.6)
    mask = np.asarray(PIL.Image.open(out / "seed0005-view00-mask.png"))
    assert 0.1 < (mask > 128).mean() < 0.9  # a head, not an empty or full frame


def test_volumetric_samples_mrc_and_mesh_inside_the_box(snapshots, tmp_path):
    config = legacy.load_network(snapshots["volumetric"], which="G_ema").config
    out = tmp_path / "out"
    args = ("--network", str(snapshots["volumetric"]), "--seeds", "0", "--views", "360/2", "--outdir", str(out),
            "--shapes", "--shape-res", "16", "--mesh-format", "both", "--resolution", "8")
    assert invoke(*args).exit_code == 0
    raw = (out / "seed0000.mrc").read_bytes()
    assert struct.unpack("<3i", raw[:12]) == (16, 16, 16)
    density = np.frombuffer(raw[1024:], dtype="<f4").reshape(16, 16, 16).transpose(2, 1, 0)  # back to [x, y, z]
    level = float(np.median(density[density > 0])) if (density > 0).any() else 0.0
    assert (out / "seed0000-mesh.ply").exists() == bool(density.min() < 10 < density.max())
    assert invoke(*args, "--shape-level", str(level)).exit_code == 0
    assert (out / "seed0000-mesh.ply").is_file()
    for name in ("seed0000-view00.png", "seed0000-view01.png", "grid.png"):
        assert (out / name).is_file()
    assert np.asarray(PIL.Image.open(out / "seed0000-view00.png")).shape == (64, 64, 3)  # super-resolved
    obj = (out / "seed0000-mesh.obj").read_text().split("\n")
    vertices = np.array([list(map(float, line.split()[1:])) for line in obj if line.startswith("v ")])
    assert len(vertices) > 0 and vertices.shape[1] == 6
    half, crop = config.generator.render.box_warp / 2, config.generator.render.triplane_crop
    voxel = 2 * half / 16
    assert (np.abs(vertices[:, :3]) <= half).all()  # inside the rendering box
    assert (np.abs(vertices[:, [0, 2]]) <= half - crop + voxel).all()  # and inside the render crop (x, z)
    assert ((vertices[:, 3:] >= 0) & (vertices[:, 3:] <= 1)).all()
    header = (out / "seed0000-mesh.ply").read_bytes().split(b"end_header\n")[0].decode("ascii")
    assert f"element vertex {len(vertices)}\n" in header  # the .ply and the .obj hold the same mesh
