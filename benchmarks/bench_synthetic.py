"""Synthetic heads throughput on CPU: whole dataset writing (render + PNG + zip) and bare rendering, in heads/s.

One JSON line per measurement: {"what", "config", "device", "value", "unit"}. The issue's target is 1000 heads at 64²
in under a minute on 2 CPU cores, i.e. at least 16.7 heads/s for ``synthetic_dataset_write`` at resolution 64 with
the default supersampling (2x2 rays per pixel). ``write_synthetic_dataset`` always runs with one torch thread;
``--threads`` sets the torch threads of the bare ``render_heads`` measurements.

    python benchmarks/bench_synthetic.py [--count 1000] [--resolutions 64 256] [--threads 1 2] [--cameras ffhq]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402
from training.synthetic import render_heads, sample_cameras, write_synthetic_dataset  # noqa: E402
from training.synthetic_heads import sample_heads  # noqa: E402


def _device(threads: int) -> str:
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads)"


def measure_write(count: int, resolution: int, cameras: str, supersample: int) -> None:
    """Heads per second of ``write_synthetic_dataset`` (sampling, rendering, PNG encoding, zip writing)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_synthetic_dataset(Path(tmp) / "heads.zip", count, resolution, cameras, seed=0, supersample=supersample,
                                progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
    config = {"count": count, "resolution": resolution, "cameras": cameras, "supersample": supersample}
    emit("synthetic_dataset_write", config, _device(1), count / seconds, "heads/s")
    emit("synthetic_dataset_write_time", config, _device(1), seconds, "s")


def measure_render(count: int, resolution: int, cameras: str, threads: int, batch: int = 64) -> None:
    """Heads per second of ``render_heads`` alone (one ray per pixel), in batches of ``batch`` heads."""
    start = time.perf_counter()
    for first in range(0, count, batch):
        n = min(batch, count - first)
        render_heads(sample_heads(n, 0, first), sample_cameras(cameras, n, 0, first), resolution)
    seconds = time.perf_counter() - start
    config = {"count": count, "resolution": resolution, "cameras": cameras, "rays_per_pixel": 1}
    emit("render_heads", config, _device(threads), count / seconds, "heads/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="heads per measurement")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="torch threads")
    parser.add_argument("--cameras", choices=("ffhq", "360"), default="ffhq")
    parser.add_argument("--supersample", type=int, default=2)
    args = parser.parse_args()
    for resolution in args.resolutions:
        measure_write(args.count, resolution, args.cameras, args.supersample)
        for threads in args.threads:
            torch.set_num_threads(threads)
            measure_render(args.count, resolution, args.cameras, threads)


if __name__ == "__main__":
    main()
