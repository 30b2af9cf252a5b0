"""Videos of a trained head GAN: camera orbits around fixed heads, 360° turns and latent-interpolation grids (mp4).

  python gen_videos.py --network=runs/00000-gghead-tiny-synthetic-gpus1-batch4 --seeds=0-3 --outdir=videos
  python gen_videos.py --network=RUN --seeds=0 --camera=360 --channels=image,depth,mask --output=turn.mp4
  python gen_videos.py --network=RUN --seeds=0-15 --grid=2x2 --keyframes=4 --camera=front --output=interp.mp4

Seeds are used in groups of ``W·H·keyframes`` (``--grid WxH``), one video per group: keyframe k of grid cell j is
seed ``group[k·W·H + j]``. With one keyframe the heads stay fixed while the camera moves; with several, each cell's
w (mapping output) runs through its keyframes on a closed Catmull-Rom spline over the length of the video, and the
camera path makes one loop over the same length.

One head is one 3D scene: the mapping is conditioned on a fixed camera (``--pose-cond``, default frontal) and only the
rendering camera moves. ``--entangle`` conditions the mapping on each frame's rendering camera instead (what EG3D's
and PanoHead's videos show during training-style sampling; identity may drift with the view). Volumetric heads with
camera self-adaptation get the offset of the moving rendering camera in every frame (``G.camera_offset``; between
keyframes the offsets are blended with the same weights as the ws). Rendering is deterministic (constant noise,
midpoint depth samples), so frames do not flicker.

Camera paths (``--camera``): 'orbit' is EG3D's elliptic sweep in front of the face (h = π/2 + 0.35 sin 2πt,
v = π/2 − 0.05 + 0.25 cos 2πt around EG3D's pivot (0, 0, 0.2)); '360' is PanoHead's full turn at the equator around
the origin; 'front' keeps the frontal camera (for interpolation videos). Radius 2.7, FFHQ focal length.

``--channels`` puts side channels next to each head: 'image' (final), 'raw' (before super-resolution), 'depth' (near
white, far black, over the ray range 2.25–3.3 of a camera at radius 2.7; background black) and 'mask' (opacity).
Videos are H.264 (libx264, yuv420p; frames padded to even sizes) written by imageio-ffmpeg; ``--frames-dir`` also
writes every frame as a lossless PNG. Problems are reported in one line without a traceback (exit status 1).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

import legacy
from dnnlib import UserError
from dnnlib.cli import reports_user_errors
from training import cameras
from training.networks.gaussian_head import GaussianHeadGenerator
from training.presets import TrainingConfig, render_kwargs
from training.rendering.volume import RenderOptions
from training.views import parse_seeds

CAMERA_PATHS = ("orbit", "360", "front")
CHANNELS = ("image", "raw", "depth", "mask")
_DEFAULT_PIVOTS = {"orbit": cameras.EG3D_PIVOT, "360": cameras.PANOHEAD_PIVOT, "front": cameras.PANOHEAD_PIVOT}
_FRAMES_PER_KEYFRAME = 120  # EG3D's w-frames: 4 s per keyframe at 30 fps


# ---------------------------------------------------------------------------------------------------------------------
# Option parsing


def parse_grid(text: str) -> tuple[int, int]:
    """'WxH' → (columns W, rows H), both >= 1."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(f"--grid: expected COLUMNSxROWS with positive integers, e.g. '2x2', got {text!r}")
    return int(match[1]), int(match[2])


def parse_channels(text: str) -> tuple[str, ...]:
    """'image,depth' → ('image', 'depth'); every name one of CHANNELS, no repeats."""
    names = tuple(name.strip() for name in text.split(","))
    if not names or any(n not in CHANNELS for n in names) or len(set(names)) != len(names):
        raise UserError(f"--channels: expected a comma-separated subset of {', '.join(CHANNELS)}, got {text!r}")
    return names


def parse_floats(text: str, count: int, option: str) -> tuple[float, ...]:
    """'0,0,0.2' → (0.0, 0.0, 0.2), exactly ``count`` numbers."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise UserError(f"{option}: expected {count} comma-separated numbers, got {text!r}")
    return values


# ---------------------------------------------------------------------------------------------------------------------
# Latents, cameras, interpolation


def seed_latents(seeds: Sequence[int], z_dim: int, device: torch.device | str = "cpu") -> Tensor:
    """[len(seeds), z_dim] float32 latents, z = numpy RandomState(seed).randn(z_dim) (as EG3D's tools)."""
    z = np.stack([np.random.RandomState(seed).randn(z_dim) for seed in seeds])
    return torch.from_numpy(z).to(device=device, dtype=torch.float32)


def conditioning_camera(yaw: float, pitch: float, pivot: Sequence[float],
                        device: torch.device | str = "cpu") -> Tensor:
    """[1, 25] label of a camera at geometric ``yaw``, ``pitch`` (radians; 0, 0 = frontal) looking at ``pivot``."""
    return cameras.lookat_labels(math.pi / 2 + yaw, cameras.pitch_to_v(pitch), pivot=pivot, device=device)


def camera_path(kind: str, num_frames: int, pivot: Sequence[float], device: torch.device | str = "cpu") -> Tensor:
    """[num_frames, 25] rendering cameras of the path ``kind`` (see CAMERA_PATHS and the module docstring)."""
    if kind == "orbit":
        return cameras.orbit_labels(num_frames, pivot=pivot, device=device)
    if kind == "360":
        return cameras.orbit_360_labels(num_frames, pivot=pivot, device=device)
    if kind == "front":
        return conditioning_camera(0.0, 0.0, pivot, device).expand(num_frames, -1)
    raise UserError(f"--camera: expected one of {', '.join(CAMERA_PATHS)}, got {kind!r}")


def keyframe_weights(num_frames: int, num_keyframes: int) -> Tensor:
    """[num_frames, num_keyframes] float64 weights of a closed Catmull-Rom spline through the keyframes.

    Frame f sits at s = f·K/F keyframe units; with i = floor(s), u = s − i, keyframes i−1, i, i+1, i+2 (mod K) get
    the Catmull-Rom basis ((−u³ + 2u² − u)/2, (3u³ − 5u² + 2)/2, (−3u³ + 4u² + u)/2, (u³ − u²)/2). Rows sum to 1 and
    are one-hot at every keyframe; K = 1 gives a constant latent.
    """
    s = torch.arange(num_frames, dtype=torch.float64) * num_keyframes / num_frames
    i = s.floor()
    u = s - i
    basis = torch.stack([(-u**3 + 2 * u**2 - u) / 2, (3 * u**3 - 5 * u**2 + 2) / 2,
                         (-3 * u**3 + 4 * u**2 + u) / 2, (u**3 - u**2) / 2], dim=1)  # [F, 4]
    index = (i.long()[:, None] + torch.arange(-1, 3)) % num_keyframes  # [F, 4]
    weights = torch.zeros(num_frames, num_keyframes, dtype=torch.float64).scatter_add_(1, index, basis)
    return weights / weights.sum(dim=1, keepdim=True)  # exact ones for K = 1 despite rounding


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def inference_render_kwargs(config: TrainingConfig, cur_nimg: int) -> dict:
    """``G.synthesis`` options for a snapshot at ``cur_nimg``: the schedule's resolutions; volumetric heads without
    density noise and with deterministic depth samples (frames of a video must not flicker)."""
    kwargs = render_kwargs(config, cur_nimg)
    if config.family == "volumetric":
        kwargs["render_options"] = dataclasses.replace(config.generator.render, density_noise=0.0, deterministic=True)
    return kwargs


def render_frames(G: torch.nn.Module, z: Tensor, c_cond: Tensor, path: Tensor, *, truncation_psi: float = 1.0,
                  truncation_cutoff: int | None = None, entangle: bool = False,
                  synthesis_kwargs: dict | None = None) -> Iterator[dict]:
    """Yields G's output dict (batch = grid cells) for each frame of a video.

    Args:
        G: a Gaussian or volumetric head generator in eval mode.
        z: [K, cells, z_dim] latents of K keyframes per grid cell.
        c_cond: [1, 25] conditioning camera of the mapping (unused with ``entangle``).
        path: [F, 25] rendering camera of each frame.
        entangle: condition the mapping on each frame's rendering camera instead of ``c_cond``.
        synthesis_kwargs: resolutions / render options for ``G.synthesis`` (see ``inference_render_kwargs``).
    """
    num_keys, cells = z.shape[:2]
    z_flat = z.reshape(num_keys * cells, -1)
    weights = keyframe_weights(len(path), num_keys).to(device=z.device, dtype=torch.float32)  # [F, K]
    kwargs = dict(synthesis_kwargs or {}, noise_mode="const")
    trunc = dict(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    ws_keys = None if entangle else G.mapping(z_flat, c_cond.expand(len(z_flat), -1), **trunc)
    gaussian = isinstance(G, GaussianHeadGenerator)
    heads = None  # Gaussian heads generated once when neither the latent nor the conditioning changes
    for frame in range(len(path)):
        c_render = path[frame:frame + 1].expand(cells, -1)
        c_keys = c_render.repeat(num_keys, 1)  # [K * cells, 25]
        if entangle:
            ws_keys = G.mapping(z_flat, c_keys, **trunc)
        ws = _blend(weights[frame], ws_keys, num_keys)
        if gaussian:
            if heads is None or entangle or num_keys > 1:
                heads = G.generate(ws, sample_resolution=kwargs.get("sample_resolution"), noise_mode="const")
            yield G.render(heads, c_render, render_resolution=kwargs.get("render_resolution"))
            continue
        offsets = G.camera_offset(z_flat, c_keys, **trunc)
        offset = None if offsets is None else _blend(weights[frame], offsets, num_keys)
        yield G.synthesis(ws, c_render, camera_offset=offset, **kwargs)


def _blend(weights: Tensor, values: Tensor, num_keys: int) -> Tensor:
    """Σ_k weights[k]·values[k] for weights [K] and values [K·cells, ...] (keyframe-major) → [cells, ...]."""
    values = values.reshape(num_keys, -1, *values.shape[1:])
    return torch.tensordot(weights.to(values.dtype), values, dims=1)


# ---------------------------------------------------------------------------------------------------------------------
# Frames and files


def _channel_image(out: dict, channel: str, size: int, depth_range: tuple[float, float]) -> Tensor:
    """One channel of G's output as [B, 3, size, size] in [-1, 1] (see the module docstring)."""
    if channel == "image":
        x = out["image"]
    elif channel == "raw":
        x = out["image_raw"]
    elif channel == "mask":
        x = out["image_mask"] * 2 - 1
    else:
        near, far = depth_range
        nearness = ((far - out["image_depth"]) / (far - near)).clamp(0, 1)
        x = nearness * out["image_mask"].clamp(0, 1) * 2 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return x.expand(-1, 3, -1, -1)


def compose_frame(out: dict, channels: Sequence[str], grid: tuple[int, int],
                  depth_range: tuple[float, float]) -> np.ndarray:
    """G's output for the grid cells → one uint8 HWC frame: channels side by side per cell, cells in rows of W
    (cell j at row j // W, column j % W), padded with black to even width and height (yuv420p)."""
    columns, rows = grid
    size = out["image"].shape[-1]
    cells = torch.cat([_channel_image(out, ch, size, depth_range) for ch in channels], dim=3)  # [W·H, 3, S, n·S]
    frame = cells.reshape(rows, columns, 3, size, -1).permute(0, 3, 1, 4, 2).reshape(rows * size, -1, 3)
    frame = (frame * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    frame = F.pad(frame.permute(2, 0, 1), (0, frame.shape[1] % 2, 0, frame.shape[0] % 2)).permute(1, 2, 0)
    return frame.cpu().numpy()


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: float, crf: int = 18,
                frames_dir: str | Path | None = None) -> int:
    """Writes uint8 HWC frames (even sizes) to an H.264 mp4 (libx264, yuv420p, constant rate factor ``crf``) and,
    with ``frames_dir``, each frame as ``frames_dir/frame<index:05d>.png``. Returns the number of frames."""
    try:
        import imageio_ffmpeg  # needed only for writing videos
    except ImportError:
        raise UserError("writing mp4 videos needs the imageio-ffmpeg package: pip install imageio-ffmpeg") from None

    writer, count = None, 0
    try:
        for frame in frames:
            if writer is None:
                writer = imageio_ffmpeg.write_frames(str(path), (frame.shape[1], frame.shape[0]), fps=fps,
                                                     codec="libx264", pix_fmt_out="yuv420p", quality=None,
                                                     macro_block_size=1, output_params=["-crf", str(crf)],
                                                     ffmpeg_log_level="error")
                writer.send(None)
            writer.send(np.ascontiguousarray(frame))
            if frames_dir is not None:
                Image.fromarray(frame).save(Path(frames_dir) / f"frame{count:05d}.png")
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return count


# ---------------------------------------------------------------------------------------------------------------------
# Videos of a snapshot


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """What the videos show (CLI options of the same names; see the module docstring).

    pivot: [3] point the camera path orbits, None = the path's default; pose_cond: (yaw, pitch) radians of the
    conditioning camera; frames: frames per video, None = 120 per keyframe; crf: libx264 constant rate factor.
    """

    grid: tuple[int, int] = (1, 1)
    keyframes: int = 1
    camera: str = "orbit"
    pivot: tuple[float, float, float] | None = None
    pose_cond: tuple[float, float] = (0.0, 0.0)
    entangle: bool = False
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = None
    channels: tuple[str, ...] = ("image",)
    fps: float = 30.0
    frames: int | None = None
    crf: int = 18

    def __post_init__(self) -> None:
        if self.camera not in CAMERA_PATHS:
            raise UserError(f"--camera: expected one of {', '.join(CAMERA_PATHS)}, got {self.camera!r}")
        if len(self.grid) != 2 or min(self.grid) < 1 or self.keyframes < 1:
            raise UserError(f"--grid / --keyframes: need positive sizes, got {self.grid} and {self.keyframes}")
        if self.frames is not None and self.frames < 1 or self.fps <= 0 or not 0 <= self.crf <= 51:
            raise UserError(f"--frames, --fps, --crf: need frames >= 1, fps > 0, 0 <= crf <= 51, got {self.frames}, "
                            f"{self.fps}, {self.crf}")
        parse_channels(",".join(self.channels))

    @property
    def num_frames(self) -> int:
        """Frames per video (``frames``, or 120 per keyframe)."""
        return _FRAMES_PER_KEYFRAME * self.keyframes if self.frames is None else self.frames


def video_groups(seeds: Sequence[int], options: VideoOptions) -> list[list[int]]:
    """Seeds split into the groups of W·H·keyframes seeds that make one video each."""
    columns, rows = options.grid
    per_video = columns * rows * options.keyframes
    if not seeds or len(seeds) % per_video:
        raise UserError(f"--seeds: {len(seeds)} seed(s) given, but a video of --grid {columns}x{rows} with "
                        f"--keyframes {options.keyframes} takes {per_video}; give a multiple of {per_video}")
    return [list(seeds[i:i + per_video]) for i in range(0, len(seeds), per_video)]


def video_name(group: Sequence[int], options: VideoOptions) -> str:
    """File stem: '<camera>-seed0003', or '<camera>-<W>x<H>-seeds0000-0015' for grids and interpolations."""
    if len(group) == 1:
        return f"{options.camera}-seed{group[0]:04d}"
    columns, rows = options.grid
    return f"{options.camera}-{columns}x{rows}-seeds{group[0]:04d}-{group[-1]:04d}"


def _output_paths(groups: list[list[int]], options: VideoOptions, outdir: str | None,
                  output: str | None) -> list[Path]:
    if (outdir is None) == (output is None):
        raise UserError("give exactly one of --outdir (a folder for all videos) and --output (one .mp4 file)")
    if output is not None:
        if not output.lower().endswith(".mp4"):
            raise UserError(f"--output: expected a file name ending in .mp4, got {output!r}")
        if len(groups) != 1:
            raise UserError(f"--output names one video, but the seeds make {len(groups)}; use --outdir")
        return [Path(output)]
    return [Path(outdir) / f"{video_name(group, options)}.mp4" for group in groups]


def generate_videos(network: str, seeds: Sequence[int], options: VideoOptions, outdir: str | None = None,
                    output: str | None = None, frames_dir: str | None = None, device: torch.device | str = "cpu",
                    progress: bool = True) -> list[Path]:
    """Renders one video per seed group from the G_ema of snapshot (or run directory) ``network``; returns the paths.

    frames_dir: also write each video's frames as PNGs to ``frames_dir/<video name>/frame<index>.png``.
    """
    groups = video_groups(seeds, options)
    paths = _output_paths(groups, options, outdir, output)
    net = legacy.load_network(network, device, which="G_ema")
    G = net.G_ema
    cur_nimg = int(net.metadata.get("cur_nimg", 1000 * net.metadata.get("kimg", 0)))
    kwargs = inference_render_kwargs(net.config, cur_nimg)
    render = kwargs.get("render_options", RenderOptions())
    pivot = _DEFAULT_PIVOTS[options.camera] if options.pivot is None else options.pivot
    path = camera_path(options.camera, options.num_frames, pivot, device)
    c_cond = conditioning_camera(*options.pose_cond, pivot=pivot, device=device)
    cells = options.grid[0] * options.grid[1]
    for group, video_path in zip(groups, paths, strict=True):
        video_path.parent.mkdir(parents=True, exist_ok=True)
        png_dir = None
        if frames_dir is not None:
            png_dir = Path(frames_dir) / video_path.stem
            png_dir.mkdir(parents=True, exist_ok=True)
        z = seed_latents(group, G.z_dim, device).reshape(options.keyframes, cells, G.z_dim)
        with torch.no_grad():
            outs = render_frames(G, z, c_cond, path, truncation_psi=options.truncation_psi,
                                 truncation_cutoff=options.truncation_cutoff, entangle=options.entangle,
                                 synthesis_kwargs=kwargs)
            frames = (compose_frame(out, options.channels, options.grid, (render.ray_start, render.ray_end))
                      for out in outs)
            frames = tqdm(frames, total=options.num_frames, desc=video_path.name, unit="frame", disable=not progress)
            write_video(frames, video_path, options.fps, options.crf, png_dir)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _frame_count(frames: int | None, seconds: float | None, fps: float) -> int | None:
    if frames is not None and seconds is not None:
        raise UserError("--frames and --seconds exclude each other")
    return max(1, round(seconds * fps)) if seconds is not None else frames


@click.command(context_settings=dict(max_content_width=120))
@click.option("--network", required=True,
              help="network-snapshot-*.safetensors, a run directory (its newest), or an EG3D/PanoHead .pkl.")
@click.option("--seeds", default="0", show_default=True, help="Seeds, e.g. '0-7,12'.")
@click.option("--grid", default="1x1", show_default=True, help="Heads per video as COLUMNSxROWS.")
@click.option("--keyframes", default=1, show_default=True, type=click.IntRange(min=1),
              help="Seeds per grid cell, interpolated in w space (1: fixed heads).")
@click.option("--camera", default="orbit", show_default=True, type=click.Choice(CAMERA_PATHS), help="Camera path.")
@click.option("--pivot", help="X,Y,Z point the cameras orbit and look at.  [default: orbit (0,0,0.2), else origin]")
@click.option("--pose-cond", default="0,0", show_default=True, help="YAW,PITCH (degrees) of the conditioning camera.")
@click.option("--entangle", is_flag=True, help="Condition the mapping on each frame's camera instead of --pose-cond.")
@click.option("--trunc", "truncation_psi", default=0.7, show_default=True, type=float, help="Truncation psi.")
@click.option("--trunc-cutoff", "truncation_cutoff", type=click.IntRange(min=0),
              help="Truncate only the first N ws.  [default: all]")
@click.option("--channels", default="image", show_default=True, help=f"Comma-separated subset of {','.join(CHANNELS)}.")
@click.option("--fps", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Frames per second.")
@click.option("--frames", type=click.IntRange(min=1), help="Frames per video.  [default: 120 per keyframe]")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="Video length instead of --frames.")
@click.option("--crf", default=18, show_default=True, type=click.IntRange(0, 51),
              help="libx264 constant rate factor (lower: better).")
@click.option("--outdir", type=click.Path(file_okay=False), help="Folder for the videos (named by camera and seeds).")
@click.option("--output", type=click.Path(dir_okay=False), help="The .mp4 file, when the seeds make one video.")
@click.option("--frames-dir", type=click.Path(file_okay=False), help="Also write every frame as PNG here.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Global random seed (the heads come from --seeds; rendering is deterministic).")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True,
              help="Torch device, e.g. cpu, cuda, cuda:1.")
@reports_user_errors
def main(**o) -> None:
    """Render orbit, 360° and latent-interpolation videos (mp4) of a trained head GAN.

    Seeds are used in groups of COLUMNS·ROWS·KEYFRAMES, one video per group: keyframe k of grid cell j is seed
    number k·COLUMNS·ROWS + j of the group. The heads are mapped with the conditioning camera --pose-cond and only the
    rendering camera moves, unless --entangle.

    \b
    python gen_videos.py --network=RUN --seeds=0-3 --outdir=videos
    python gen_videos.py --network=RUN --seeds=0 --camera=360 --channels=image,depth,mask --output=turn.mp4
    python gen_videos.py --network=RUN --seeds=0-15 --grid=2x2 --keyframes=4 --camera=front --output=interp.mp4
    """
    torch.manual_seed(o["seed"])
    pivot = None if o["pivot"] is None else parse_floats(o["pivot"], 3, "--pivot")
    yaw, pitch = parse_floats(o["pose_cond"], 2, "--pose-cond")
    options = VideoOptions(
        grid=parse_grid(o["grid"]), keyframes=o["keyframes"], camera=o["camera"], pivot=pivot,
        pose_cond=(math.radians(yaw), math.radians(pitch)), entangle=o["entangle"],
        truncation_psi=o["truncation_psi"], truncation_cutoff=o["truncation_cutoff"],
        channels=parse_channels(o["channels"]), fps=o["fps"],
        frames=_frame_count(o["frames"], o["seconds"], o["fps"]), crf=o["crf"])
    paths = generate_videos(o["network"], parse_seeds(o["seeds"]), options, o["outdir"], o["output"],
                            o["frames_dir"], o["device"])
    for path in paths:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
