"""Volumetric head generator speed: forward and forward+backward time per image, one JSON line per measurement.

Configurations: 'tiny' (a CPU-trainable variant: 32² tri-grid with D = 3 and 16 channels, neural rendering 16² with
12 + 12 samples, background 32², SR to 64²) and 'panohead' (the released configuration, VolumetricHeadConfig()
defaults: 256² tri-grid with D = 3, neural rendering 64² with 48 + 48 samples, background 128², SR to 512²; on CPU a
forward+backward takes tens of seconds). Every generator has background, super-resolution and camera self-adaptation
on. A training step is ``G(z, c)`` in training mode, the sum of the output means, and ``backward``; inference is
``G(z, c)`` in eval mode under ``no_grad``. Times are medians over ``--repeats`` after one warm-up call, divided by the
batch size. On CUDA the generator runs as configured (float32, SR blocks in float16) and the peak memory is reported.

    python benchmarks/bench_volumetric.py [--config tiny|panohead|all] [--device cpu|cuda|all] [--batch 1 4]
                                          [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_name, emit, emit_peak_memory, time_ms  # noqa: E402
from training.cameras import lookat_labels  # noqa: E402
from training.networks.volumetric_head import VolumetricHeadConfig, VolumetricHeadGenerator  # noqa: E402
from training.rendering.volume import RenderOptions  # noqa: E402

CONFIGS = {
    "tiny": VolumetricHeadConfig(
        z_dim=64, w_dim=64, channel_base=2048, channel_max=64, trigrid_resolution=32, trigrid_depth=3,
        trigrid_channels=16, decoder_hidden=32, feature_channels=16, neural_rendering_resolution=16,
        render=RenderOptions(depth_resolution=12, depth_resolution_importance=12), background_resolution=32,
        background_channel_base=1024, image_resolution=64, sr_up_blocks=1, sr_channels=(64, 32)),
    "panohead": VolumetricHeadConfig(),
}


def _cameras(batch: int, device: str) -> torch.Tensor:
    """[batch, 25] labels at radius 2.7 around the origin, yaws spread over the full circle, pitch within ±15°."""
    gen = torch.Generator().manual_seed(0)
    yaw = torch.rand(batch, generator=gen) * 2 * math.pi
    pitch = (torch.rand(batch, generator=gen) * 2 - 1) * math.pi / 12
    return lookat_labels(math.pi / 2 + yaw, math.pi / 2 - pitch, pivot=(0.0, 0.0, 0.0)).to(device)






def measure(name: str, device: str, batch: int, repeats: int, device_name: str) -> None:
    """Prints inference and training-step times per image (and peak memory) for one configuration and batch."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    G = VolumetricHeadGenerator(cfg).to(device)
    z, c = torch.randn(batch, cfg.z_dim, device=device), _cameras(batch, device)
    config = {"preset": name, "batch": batch, "neural_rendering_resolution": cfg.neural_rendering_resolution,
              "image_resolution": cfg.image_resolution,
              "samples_per_ray": cfg.render.depth_resolution + cfg.render.depth_resolution_importance}

    def inference() -> None:
        with torch.no_grad():
            G.eval()(z, c)

    def train_step() -> None:
        out = G.train()(z, c)
        sum(v.mean() for v in out.values()).backward()
        G.zero_grad(set_to_none=True)

    emit("G_forward_per_image", config, device_name, time_ms(inference, device, repeats) / batch, "ms")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    emit("G_forward_backward_per_image", config, device_name, time_ms(train_step, device, repeats) / batch, "ms")
    emit_peak_memory(config, device, device_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = list(CONFIGS) if args.config == "all" else [args.config]
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(("cpu", cpu_name()))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(("cuda", torch.cuda.get_device_name()))
    for device, device_name in devices:
        for name in names:
            for batch in args.batch:
                measure(name, device, batch, args.repeats, device_name)


if __name__ == "__main__":
    main()
