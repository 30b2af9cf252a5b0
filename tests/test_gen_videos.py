"""gen_videos.py on tiny snapshots: frame count and size read back from the mp4, frames against direct renders of the
same cameras, fixed latents (spied mapping), camera self-adaptation per frame, keyframe splines, grid layout, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import gen_videos
import legacy
from training.cameras import EG3D_PIVOT, PANOHEAD_PIVOT, lookat_labels
from training.networks.gaussian_head import GaussianHeadGenerator
from training.presets import PRESETS, build_networks
from training.snapshot import save_network_snapshot

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

PSI = 0.7  # gen_videos' default truncation
STAGE0 = dict(render_resolution=32, sample_resolution=32)  # gghead-tiny's first growth stage (snapshots at kimg 0)


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory) -> dict[str, Path]:
    """Tiny untrained snapshots at kimg 0: gghead-tiny (32² renders) and panohead-tiny (64² images, 16² neural
    rendering) whose camera-offset network is randomised so that the offsets are not zero."""
    root = tmp_path_factory.mktemp("gen_videos")
    paths = {}
    torch.manual_seed(0)
    for name in ("gghead-tiny", "panohead-tiny"):
        config = PRESETS[name]
        G = build_networks(config, "cpu")[0]
        if name == "panohead-tiny":
            for p in G.t_mapping.parameters():
                p.data.normal_(0, 1)
        paths[name] = root / f"{name}.safetensors"
        save_network_snapshot(paths[name], {"G_ema": G}, config.to_dict(), {"kimg": 0, "cur_nimg": 0})
    return paths


@pytest.fixture(scope="session")
def generators(snapshots) -> dict[str, torch.nn.Module]:
    """The G_ema of each snapshot, loaded once."""
    return {name: legacy.load_network(path, which="G_ema").G_ema for name, path in snapshots.items()}


def _run(*args: str):
    return CliRunner().invoke(gen_videos.main, list(args))


def _read_mp4(path: Path) -> tuple[tuple[int, int], list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader]
    return (width, height), frames


def _png(folder: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(folder / f"frame{index:05d}.png").convert("RGB")).astype(np.int32)


def _uint8(x: torch.Tensor) -> np.ndarray:
    """[1, C, H, W] in [-1, 1] → HWC int32 (rounded, clamped)."""
    return ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.int32)


def _z(seed: int, z_dim: int) -> torch.Tensor:
    return torch.tensor(np.random.RandomState(seed).randn(1, z_dim), dtype=torch.float32)


def test_orbit_video_frames_match_direct_renders(snapshots, generators, tmp_path):
    out = _run("--network", str(snapshots["gghead-tiny"]), "--seeds", "3", "--frames", "5", "--fps", "10",
               "--channels", "image,depth,mask", "--outdir", str(tmp_path / "v"), "--frames-dir", str(tmp_path / "f"))
    assert out.exit_code == 0, out.output
    size, frames = _read_mp4(tmp_path / "v" / "orbit-seed0003.mp4")
    assert size == (3 * 32, 32) and len(frames) == 5
    G = generators["gghead-tiny"]
    z = _z(3, G.z_dim)
    c_cond = lookat_labels(math.pi / 2, math.pi / 2, pivot=EG3D_PIVOT)  # frontal
    for f in (0, 3):  # EG3D's orbit: h = pi/2 + 0.35 sin(2 pi t), v = pi/2 - 0.05 + 0.25 cos(2 pi t), t = f / 5
        t = 2 * math.pi * f / 5
        c = lookat_labels(math.pi / 2 + 0.35 * math.sin(t), math.pi / 2 - 0.05 + 0.25 * math.cos(t), pivot=EG3D_PIVOT)
        with torch.no_grad():
            ref = G(z, c_cond, c_render=c, truncation_psi=PSI, noise_mode="const", **STAGE0)
        png = _png(tmp_path / "f" / "orbit-seed0003", f)
        nearness = ((3.3 - ref["image_depth"]) / (3.3 - 2.25)).clamp(0, 1) * ref["image_mask"]  # documented range
        expected = np.concatenate([_uint8(ref["image"]), _uint8(nearness.expand(-1, 3, -1, -1) * 2 - 1),
                                   _uint8(ref["image_mask"].expand(-1, 3, -1, -1) * 2 - 1)], axis=1)
        assert np.abs(png - expected).max() <= 1  # +-1: rounding of x * 127.5 + 128 vs (x + 1) * 127.5
        # H.264 in yuv420p (chroma at half resolution) at crf 18: mean error ~3.4 measured on these tiny, busy frames
        assert np.abs(frames[f].astype(np.int32) - png).mean() < 5.0
    assert np.abs(_png(tmp_path / "f" / "orbit-seed0003", 0) - _png(tmp_path / "f" / "orbit-seed0003", 3)).max() > 20


def test_fixed_latent_unless_entangled(generators, monkeypatch):
    G = generators["gghead-tiny"]
    calls = []
    real_mapping = GaussianHeadGenerator.mapping

    def spy(self, z, c, **kwargs):
        calls.append(c.clone())
        return real_mapping(self, z, c, **kwargs)

    monkeypatch.setattr(GaussianHeadGenerator, "mapping", spy)
    z = _z(1, G.z_dim)[None]  # [K=1, cells=1, z_dim]
    c_cond = lookat_labels(math.pi / 2, math.pi / 2, pivot=PANOHEAD_PIVOT)
    path = gen_videos.camera_path("360", 3, PANOHEAD_PIVOT)
    with torch.no_grad():
        fixed = [o["image"] for o in gen_videos.render_frames(G, z, c_cond, path, truncation_psi=PSI,
                                                                     synthesis_kwargs=STAGE0)]
        assert len(calls) == 1 and torch.equal(calls[0], c_cond)
        calls.clear()
        moving = [o["image"] for o in gen_videos.render_frames(G, z, c_cond, path, truncation_psi=PSI, entangle=True,
                                                                synthesis_kwargs=STAGE0)]
    assert len(calls) == 3 and all(torch.equal(c[0], path[f]) for f, c in enumerate(calls))
    assert torch.equal(fixed[0], moving[0])  # frame 0 of the 360 path is the frontal conditioning camera
    assert all((fixed[f] - moving[f]).abs().max() > 1e-3 for f in (1, 2))


def test_volumetric_frames_use_the_moving_camera_offset(generators):
    G = generators["panohead-tiny"]
    kwargs = gen_videos.inference_render_kwargs(PRESETS["panohead-tiny"], 0)
    z = torch.cat([_z(5, G.z_dim), _z(6, G.z_dim)])[None]  # a 2x1 grid
    c_cond = lookat_labels(math.pi / 2, math.pi / 2, pivot=PANOHEAD_PIVOT)
    path = gen_videos.camera_path("360", 2, PANOHEAD_PIVOT)
    with torch.no_grad():
        outs = list(gen_videos.render_frames(G, z, c_cond, path, truncation_psi=PSI, synthesis_kwargs=kwargs))
        for f, out in enumerate(outs):  # G's forward computes the offset of (z, c_render) itself
            ref = G(z[0], c_cond.expand(2, -1), c_render=path[f:f + 1].expand(2, -1), truncation_psi=PSI,
                    noise_mode="const", **kwargs)
            assert torch.allclose(out["camera_offset"], ref["camera_offset"], atol=1e-6)
            assert torch.allclose(out["image"], ref["image"], atol=1e-5)
    offsets = torch.stack([o["camera_offset"] for o in outs])
    assert offsets.abs().min() > 1e-4 and (offsets[1] - offsets[0]).abs().max() > 1e-4


def test_keyframe_weights_are_a_closed_catmull_rom_spline():
    frames, keys = 12, 3
    weights = gen_videos.keyframe_weights(frames, keys)
    values = torch.randn(keys, dtype=torch.float64)
    got = weights @ values
    for f in range(frames):  # Hermite segment with tangents (P[i+1] - P[i-1]) / 2, indices mod K
        s = f * keys / frames
        i, u = int(s), s - int(s)
        p0, p1 = values[i % keys], values[(i + 1) % keys]
        m0 = (values[(i + 1) % keys] - values[(i - 1) % keys]) / 2
        m1 = (values[(i + 2) % keys] - values[i % keys]) / 2
        h = (2 * u**3 - 3 * u**2 + 1) * p0 + (u**3 - 2 * u**2 + u) * m0 + (-2 * u**3 + 3 * u**2) * p1 \
            + (u**3 - u**2) * m1
        assert abs(float(got[f]) - float(h)) < 1e-12
    assert torch.equal(weights[::4], torch.eye(keys, dtype=torch.float64))  # one-hot at the keyframes
    assert torch.equal(gen_videos.keyframe_weights(5, 1), torch.ones(5, 1, dtype=torch.float64))


def test_interpolation_passes_through_the_keyframes(generators):
    G = generators["gghead-tiny"]
    z = torch.stack([_z(7, G.z_dim), _z(8, G.z_dim)])  # [K=2, cells=1, z_dim]
    c_cond = lookat_labels(math.pi / 2, math.pi / 2, pivot=PANOHEAD_PIVOT)
    path = gen_videos.camera_path("front", 4, PANOHEAD_PIVOT)
    with torch.no_grad():
        outs = [o["image"] for o in gen_videos.render_frames(G, z, c_cond, path, truncation_psi=PSI,
                                                                     synthesis_kwargs=STAGE0)]
        for f, key in ((0, 0), (2, 1)):
            ref = G(z[key], c_cond, truncation_psi=PSI, noise_mode="const", **STAGE0)["image"]
            # float32 rounding differs between the batched (K = 2) and single mappings: ~2e-6 measured
            assert torch.allclose(outs[f], ref, atol=1e-4)
    assert (outs[1] - outs[0]).abs().max() > 1e-3 and (outs[1] - outs[2]).abs().max() > 1e-3


def test_grid_layout_and_volumetric_channels(snapshots, generators, tmp_path):
    out = _run("--network", str(snapshots["gghead-tiny"]), "--seeds", "0-3", "--grid", "2x2", "--camera", "front",
               "--seconds", "0.1", "--fps", "10", "--channels", "image,mask", "--output", str(tmp_path / "g.mp4"),
               "--frames-dir", str(tmp_path / "f"))
    assert out.exit_code == 0, out.output
    size, frames = _read_mp4(tmp_path / "g.mp4")
    assert size == (2 * 2 * 32, 2 * 32) and len(frames) == 1
    G = generators["gghead-tiny"]
    c = lookat_labels(math.pi / 2, math.pi / 2, pivot=PANOHEAD_PIVOT)
    png = _png(tmp_path / "f" / "g", 0)
    for seed in range(4):  # cell j at row j // 2, column j % 2; each cell is [image | mask]
        with torch.no_grad():
            ref = _uint8(G(_z(seed, G.z_dim), c, truncation_psi=PSI, noise_mode="const", **STAGE0)["image"])
        row, col = divmod(seed, 2)
        assert np.abs(png[32 * row:32 * (row + 1), 64 * col:64 * col + 32] - ref).max() <= 1
    out = _run("--network", str(snapshots["panohead-tiny"]), "--seeds", "2", "--camera", "360", "--frames", "2",
               "--channels", "image,raw,depth", "--outdir", str(tmp_path / "v"))
    assert out.exit_code == 0, out.output
    size, frames = _read_mp4(tmp_path / "v" / "360-seed0002.mp4")
    assert size == (3 * 64, 64) and len(frames) == 2


def test_frames_are_padded_to_even_sizes():
    out = {"image": torch.full((1, 3, 3, 3), 1.0), "image_mask": torch.ones(1, 1, 3, 3)}
    frame = gen_videos.compose_frame(out, ("image", "mask"), (1, 1), (2.25, 3.3))
    assert frame.shape == (4, 6, 3) and frame.dtype == np.uint8
    assert (frame[:3] == 255).all() and (frame[3] == 0).all()


@pytest.mark.parametrize("args, message", [
    (("--grid", "2by2"), "--grid: expected COLUMNSxROWS"),
    (("--grid", "0x2"), "--grid: expected COLUMNSxROWS"),
    (("--seeds", "0-2", "--grid", "2x1"), "--seeds: 3 seed(s) given"),
    (("--seeds", "0-1", "--output", "a.mp4"), "--output names one video"),
    (("--seeds", "0", "--output", "a.gif"), "--output: expected a file name ending in .mp4"),
    (("--frames", "3", "--seconds", "1"), "--frames and --seconds exclude each other"),
    (("--channels", "image,normals"), "--channels: expected a comma-separated subset"),
    (("--seeds", "3-1"), "--seeds: range '3-1' ends before it starts"),
    (("--pivot", "0,0"), "--pivot: expected 3 comma-separated numbers"),
])
def test_user_errors_are_one_line(snapshots, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # relative --output names stay in tmp_path
    base = ["--network", str(snapshots["gghead-tiny"])]
    if "--output" not in args:
        base += ["--outdir", str(tmp_path)]
    out = _run(*base, *args)
    assert out.exit_code == 1 and f"Error: {message}" in out.output and "Traceback" not in out.output
    assert not list(tmp_path.glob("*.mp4"))

