"""Gaussian rasterizer speed: forward and forward+backward time per call, one JSON line per measurement.

CPU: the torch backend at 64² with 4k and 16k Gaussians, batch 1 and 4 (one camera per head), plus the process's peak
resident memory after each training measurement (configurations run in increasing size, so each line bounds the
configurations before it). CUDA (when available): the gsplat backend, if it imports, at 256/512/1024 with 16k to 262k
Gaussians per head, batch 1 and 8, with peak GPU memory; and the torch backend at 256² with 16k Gaussians for a
ratio. Scenes are head-like: Gaussians on a 0.25-radius sphere with GGHead's initial scale (exp(-5.13)) and opacity
(~0.5), seen by frontal-ish cameras at radius 2.7 with the FFHQ focal length.

    python benchmarks/bench_rasterizer.py [--device cpu|cuda|all] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_name, emit, emit_peak_memory, time_ms  # noqa: E402
from dnnlib import UserError  # noqa: E402
from training.rendering.gaussian_rasterizer import rasterize  # noqa: E402
from training.rendering.gaussians import Gaussians  # noqa: E402

FFHQ_FOCAL = 4.2647


def head_scene(batch: int, count: int, device: str, seed: int = 0) -> Gaussians:
    """``batch`` heads of ``count`` Gaussians spread uniformly over a sphere of radius 0.25 (shell 0.02 thick)."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(batch, count, 3, generator=gen), dim=-1)
    radius = 0.25 + 0.02 * torch.rand(batch, count, 1, generator=gen)
    scene = Gaussians(
        means=directions * radius,
        scales=torch.exp(-5.13 + 0.3 * torch.randn(batch, count, 3, generator=gen)),
        quats=torch.nn.functional.normalize(torch.randn(batch, count, 4, generator=gen), dim=-1),
        colors=torch.rand(batch, count, 3, generator=gen),
        opacities=0.3 + 0.4 * torch.rand(batch, count, generator=gen),
    )
    return Gaussians(*(t.to(device) for t in vars(scene).values()))


def cameras(batch: int, device: str, seed: int = 0) -> torch.Tensor:
    """[batch, 25] labels: cameras at radius 2.7 within +-30 deg yaw and +-15 deg pitch, looking at the origin."""
    gen = torch.Generator().manual_seed(seed)
    labels = []
    for _ in range(batch):
        yaw, pitch = (torch.rand(2, generator=gen) * 2 - 1) * torch.tensor([math.pi / 6, math.pi / 12])
        origin = 2.7 * torch.stack([yaw.sin() * pitch.cos(), pitch.sin(), yaw.cos() * pitch.cos()])
        forward = -origin / origin.norm()
        right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0])), dim=0)
        cam2world = torch.eye(4)
        cam2world[:3, :3] = torch.stack([right, torch.linalg.cross(forward, right), forward], dim=1)
        cam2world[:3, 3] = origin
        k = torch.tensor([[FFHQ_FOCAL, 0.0, 0.5], [0.0, FFHQ_FOCAL, 0.5], [0.0, 0.0, 1.0]])
        labels.append(torch.cat([cam2world.flatten(), k.flatten()]))
    return torch.stack(labels).to(device)






def measure(backend: str, device: str, resolution: int, count: int, batch: int, repeats: int, device_name: str) -> None:
    """Prints forward (no autograd) and forward+backward times for one configuration."""
    scene, cams = head_scene(batch, count, device), cameras(batch, device)
    leaves = [t.requires_grad_(True) for t in vars(scene).values()]
    config = {"backend": backend, "resolution": resolution, "gaussians": count, "batch": batch}

    def forward() -> None:
        with torch.no_grad():
            rasterize(scene, cams, resolution, backend=backend)

    def train_step() -> None:
        out = rasterize(Gaussians(*leaves), cams, resolution, backend=backend)
        (out.features.sum() + out.alpha.sum() + out.depth.sum()).backward()

    emit("rasterize_forward", config, device_name, time_ms(forward, device, repeats), "ms")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    emit("rasterize_forward_backward", config, device_name, time_ms(train_step, device, repeats), "ms")
    emit_peak_memory(config, device, device_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device in ("cpu", "all"):
        name = cpu_name()
        for count in (4096, 16384):
            for batch in (1, 4):
                measure("torch", "cpu", 64, count, batch, args.repeats, name)
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        measure("torch", "cuda", 256, 16384, 1, args.repeats, name)
        try:
            for resolution in (256, 512, 1024):
                for count in (16384, 65536, 262144):
                    for batch in (1, 8):
                        measure("gsplat", "cuda", resolution, count, batch, args.repeats, name)
        except UserError as error:
            print(f"# gsplat skipped: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
