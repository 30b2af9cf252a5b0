"""Gaussian-head generator speed: z → rendered image, and G training steps, one JSON line per measurement.

Each line is ``{"what", "config", "device", "value", "unit"}``. Measurements:
- ``synthesis``: mapping + UV map + sampling + activations + rasterization of ``batch`` heads, no autograd (ms per
  call, and heads per second);
- ``train_step``: forward and backward of G on the image, the UV rendering and the four regularisers (ms per call);
- ``train_step_per_sample_ratio``: the time of ``batch`` separate single-head steps divided by one batched step (the
  issue asks for ≥ 2 at batch 32, 512²), measured in the same run;
- with ``--suite`` on CUDA: single heads at 512² and 1024², a batch of 32 at 256², and how synthesis time grows with the
  number of Gaussians (16k → 262k at 512²) and the resolution (256 → 1024 with ~60k Gaussians).

CPU (torch rasterizer) defaults are small: a reduced backbone (64² UV map, channel base 4096, max 128), 64² images,
~4k Gaussians, batch 1 and 4. CUDA defaults are GGHead's backbone (256² UV map, channel base 32768, max 512), the
'auto' rasterizer (gsplat when installed). ``--num-gaussians`` picks the sample resolution whose count on the
procedural template is closest; the actual count is reported.

    python benchmarks/bench_gaussian_head.py --device cpu [--resolution 64] [--batch 1 4] [--num-gaussians 4096]
    python benchmarks/bench_gaussian_head.py --device cuda --suite
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_name, emit, time_ms  # noqa: E402
from training.cameras import lookat_labels  # noqa: E402
from training.gaussian_regularizers import STAGE2_REGULARIZERS, gaussian_regularizers  # noqa: E402
from training.networks.gaussian_head import GaussianHeadConfig, GaussianHeadGenerator  # noqa: E402

_COVERAGE = 0.908  # share of sample-grid texel centres the procedural template covers (docs/template.md)






def _cameras(batch: int, device: str) -> torch.Tensor:
    """[batch, 25] labels within ±30° yaw and ±15° pitch around EG3D's frontal camera."""
    gen = torch.Generator().manual_seed(0)
    h = math.pi / 2 + (torch.rand(batch, generator=gen) * 2 - 1) * math.pi / 6
    v = math.pi / 2 + (torch.rand(batch, generator=gen) * 2 - 1) * math.pi / 12
    return lookat_labels(h, v).to(device)


def sample_resolution_for(count: int) -> int:
    """The sample-grid resolution whose Gaussian count on the procedural template is about ``count``."""
    return max(1, round(math.sqrt(count / _COVERAGE)))


def measure(g: GaussianHeadGenerator, device: str, resolution: int, batch: int, sample_resolution: int,
            repeats: int, device_name: str, train: bool) -> None:
    """Prints synthesis (and, with ``train``, training-step) times for one configuration."""
    gaussians = len(g.sample_set(sample_resolution)[0])
    config = {"resolution": resolution, "batch": batch, "gaussians": gaussians, "uv_resolution": g.config.uv_resolution,
              "channel_base": g.config.channel_base, "backend": g.config.rasterizer_backend}
    z = torch.randn(batch, g.z_dim, device=device)
    c = _cameras(batch, device)

    def synthesis() -> None:
        with torch.no_grad():
            g(z, c, render_resolution=resolution, sample_resolution=sample_resolution, noise_mode="const")

    def step(zs: torch.Tensor, cs: torch.Tensor) -> None:
        out = g(zs, cs, render_resolution=resolution, sample_resolution=sample_resolution, render_uv=True)
        terms = gaussian_regularizers(out, STAGE2_REGULARIZERS)
        (out["image"].square().mean() + sum(t.mean() for t in terms.values())).backward()

    g.eval()  # fused modulated convolutions, as in inference
    ms = time_ms(synthesis, device, repeats)
    emit("synthesis", config, device_name, ms, "ms")
    emit("synthesis_heads_per_second", config, device_name, batch * 1e3 / ms, "heads/s")
    if not train:
        return
    g.train()
    batched = time_ms(lambda: step(z, c), device, repeats)
    emit("train_step", config, device_name, batched, "ms")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step(z, c)
        emit("train_step_peak_gpu_memory", config, device_name, torch.cuda.max_memory_allocated() / 2**20, "MiB")
    if batch > 1:
        looped = time_ms(lambda: [step(z[i : i + 1], c[i : i + 1]) for i in range(batch)], device, repeats)
        emit("train_step_per_sample_ratio", config, device_name, looped / batched, "x")


def _suite(g: GaussianHeadGenerator, repeats: int, name: str) -> None:
    """The CUDA measurements of issue 3: targets, then scaling with Gaussians and with resolution."""
    for resolution in (512, 1024):
        measure(g, "cuda", resolution, 1, 256, repeats, name, train=False)
    measure(g, "cuda", 256, 32, 256, repeats, name, train=True)
    measure(g, "cuda", 512, 32, 256, repeats, name, train=True)
    for count in (16384, 65536, 131072, 262144):
        for batch in (1, 8):
            measure(g, "cuda", 512, batch, sample_resolution_for(count), repeats, name, train=False)
    for resolution in (256, 512, 1024):
        measure(g, "cuda", resolution, 8, 256, repeats, name, train=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--resolution", type=int, nargs="+", default=None, help="render resolutions")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="heads per call")
    parser.add_argument("--num-gaussians", type=int, nargs="+", default=None, help="approximate Gaussians per head")
    parser.add_argument("--uv-resolution", type=int, default=None, help="UV map resolution (backbone output)")
    parser.add_argument("--channel-base", type=int, default=None)
    parser.add_argument("--channel-max", type=int, default=None)
    parser.add_argument("--num-fp16-res", type=int, default=0, help="float16 backbone blocks (CUDA only)")
    parser.add_argument("--backend", default="auto", help="rasterizer backend: auto, torch, gsplat, inria")
    parser.add_argument("--no-train", action="store_true", help="measure synthesis only")
    parser.add_argument("--suite", action="store_true", help="the CUDA measurements of issue 3 (ignores the lists)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        print("# --device cuda: CUDA is not available", file=sys.stderr)
        sys.exit(1)
    config = GaussianHeadConfig(
        uv_resolution=args.uv_resolution or (64 if cpu else 256),
        channel_base=args.channel_base or (4096 if cpu else 32768),
        channel_max=args.channel_max or (128 if cpu else 512),
        num_fp16_res=args.num_fp16_res,
        conv_clamp=256 if args.num_fp16_res else None,
        rasterizer_backend=args.backend,
    )
    torch.manual_seed(0)
    g = GaussianHeadGenerator(config).to(args.device)
    name = (cpu_name() if cpu
            else torch.cuda.get_device_name())
    if args.suite and not cpu:
        _suite(g, args.repeats, name)
        return
    for resolution in args.resolution or ([64] if cpu else [512, 1024]):
        for batch in args.batch or ([1, 4] if cpu else [1, 32]):
            for count in args.num_gaussians or ([4096] if cpu else [59536]):
                measure(g, args.device, resolution, batch, sample_resolution_for(count), args.repeats, name,
                        train=not args.no_train)


if __name__ == "__main__":
    main()
