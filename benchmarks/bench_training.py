"""Training throughput: seconds per kimg (thousand real images shown) of the training loop, one JSON line each.

Each measurement builds the run exactly as ``training.training_loop`` does (networks, optimisers, loss, data loader)
on a synthetic-heads dataset at the preset's resolution, runs ``--warmup`` steps, then times ``--steps`` full steps:
fetching this step's reals, all due phases (lazy R1 every 16 steps, density regularisation every 4 when on, so use a
multiple of 16 steps for the average), the G_ema update and the schedule bookkeeping. Ticks, grids and snapshots are
not included. On CUDA the peak allocated memory is reported too; on a CPU the process's peak resident set.

Presets: the '*-tiny' ones on the CPU (default batch of the preset), the full ones ('gghead-ffhq512', 'panohead',
'eg3d-ffhq512') on CUDA (they take minutes per step on a CPU). The targets of the issue are per H100 at batch 32:
gghead-ffhq512 <= 10 s/kimg, eg3d-ffhq512 and panohead <= 12 s/kimg.

    python benchmarks/bench_training.py [--presets tiny|full|NAME ...] [--device cpu|cuda] [--steps 16]
                                        [--warmup 2] [--batch N] [--heads 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_name, emit  # noqa: E402
from torch_utils import distributed  # noqa: E402
from training import training_loop  # noqa: E402
from training.presets import PRESETS, TrainingConfig  # noqa: E402
from training.synthetic import write_synthetic_dataset  # noqa: E402

GROUPS = {"tiny": ["gghead-tiny", "panohead-tiny", "eg3d-tiny"], "full": ["gghead-ffhq512", "panohead", "eg3d-ffhq512"]}


def _dataset(root: Path, resolution: int, heads: int) -> tuple[str, str]:
    """A synthetic-heads zip (+ masks zip) at ``resolution``, written once per resolution into ``root``."""
    path = root / f"heads{resolution}.zip"
    if not path.is_file():
        write_synthetic_dataset(path, heads, resolution, supersample=1, progress=False)
    return str(path), str(root / f"heads{resolution}_masks.zip")


def _config(name: str, data: tuple[str, str], batch: int | None) -> TrainingConfig:
    """The preset on the synthetic data; batch_gpu = batch (one chunk per step) when ``batch`` is given."""
    config = PRESETS[name]
    schedule = config.schedule if batch is None else dataclasses.replace(config.schedule, batch=batch,
                                                                        batch_gpu=batch)
    return dataclasses.replace(config, schedule=schedule,
                               data=dataclasses.replace(config.data, path=data[0], mask_path=data[1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: TrainingConfig, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per kimg, peak memory in GiB) of ``steps`` training steps after ``warmup`` steps."""
    dataset = training_loop.open_dataset(config)
    run = training_loop.build_run(config, dataset, resume=None)
    loader = iter(training_loop.data_loader(run, dataset))

    def step() -> None:
        training_loop.training_step(run, training_loop.real_chunks(run, next(loader)))
        run.progress.cur_nimg += config.schedule.batch
        run.progress.batch_idx += 1
        training_loop.advance_schedules(run)

    for _ in range(warmup):
        step()
    run.progress.batch_idx = 0  # the timed steps start a lazy-regularisation cycle
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    _sync(run.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(run.device)
    seconds = time.perf_counter() - start
    return seconds / (steps * config.schedule.batch) * 1000, training_loop.peak_memory_gb(run.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=None, help="'tiny', 'full' or preset names")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None, help="total batch (default: the preset's)")
    parser.add_argument("--heads", type=int, default=64, help="synthetic heads in each dataset")
    args = parser.parse_args()
    requested = args.presets or (["tiny"] if args.device == "cpu" else ["full"])
    names = [n for item in requested for n in GROUPS.get(item, [item])]
    distributed.init(args.device)
    device = distributed.device()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name not in PRESETS:
                raise SystemExit(f"--presets: unknown preset {name!r}; expected 'tiny', 'full' or {sorted(PRESETS)}")
            config = _config(name, _dataset(Path(tmp), PRESETS[name].data.resolution, args.heads), args.batch)
            sec_per_kimg, peak = measure(config, args.steps, args.warmup)
            run = {"preset": name, "batch": config.schedule.batch, "batch_gpu": config.schedule.batch_gpu,
                   "steps": args.steps, "torch": torch.__version__}
            emit("train_sec_per_kimg", run, device_name, sec_per_kimg, "s/kimg")
            emit("train_peak_memory", run, device_name, peak, "GB")


if __name__ == "__main__":
    main()
