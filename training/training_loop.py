"""The training loop: one driver that reads top to bottom, with each phase and each piece of bookkeeping named.

Per step (``batch`` real images over all processes): fetch this rank's share of the reals, run the phases
(Gmain/Greg/Gboth, Dmain/Dreg/Dboth; ``training.schedules``), update G_ema, count the images, advance the schedules
(discriminator growth and blend, stage loss overrides, ADA p). At the end of a tick (``tick_kimg``): one progress line
(log.txt), one stats.jsonl record, TensorBoard scalars when installed, a fakes grid every ``image_snapshot_ticks``, a
snapshot pair every ``snap`` ticks (and at the end).

Conventions: reals are uint8 on disk, float NCHW in [-1, 1] here (masks N1HW in [0, 1]); for Gaussian heads with
masks and a constant background colour, reals are composited over that colour (GGHead trains on matted images).

Gradients: each phase accumulates over this rank's ``batch / (world · batch_gpu)`` chunks with the gain
``interval / rounds``, then the gradients are averaged over the processes, so the update is that of the mean loss
over the whole batch whatever ``batch_gpu`` and the number of processes. The averaging is one all-reduce of a flat
buffer per phase, not a DDP wrapper: the loss calls ``G.mapping`` / ``G.synthesis`` / ``G.sample`` and takes R1
gradients with ``autograd.grad``, which DDP's forward-hook reducer cannot see; reducing once after the last chunk is
what ``no_sync`` on all but the last chunk would do. Non-finite gradients skip the phase's optimiser step (counted in
``Loss/nonfinite_grads/<phase>``); ``MAX_NONFINITE_STREAK`` consecutive skips of one phase stop the run.

Mixed precision is the networks' own setting (``num_fp16_res``, ``sr_fp16``: float16 blocks on CUDA only, with conv
clamping); the loop adds no autocast, so CPU runs are float32 throughout.

Exact resume: randomness is reseeded per chunk (``schedules`` docstring) and the data order is a function of the image
position, so a run stopped after N steps and resumed for M more ends with bit-identical weights to an N + M run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.distributed as dist

from dnnlib import UserError
from metrics.registry import MetricOptions, calc_metric, check_metric_names, load_detectors, report_metric
from torch_utils import distributed, misc, training_stats
from training import schedules
from training.augment import AdaptiveP, AugmentPipe
from training.dataset import ImageFolderDataset
from training.loss import HeadGANLoss
from training.presets import TrainingConfig, build_loss, build_networks, loss_config_at, render_kwargs
from training.snapshot import (
    capture_rng_state,
    find_latest_snapshot,
    load_network_snapshot,
    load_training_state,
    restore_rng_state,
    save_network_snapshot,
    save_training_state,
    snapshot_paths,
)

MAX_NONFINITE_STREAK = 8  # consecutive non-finite steps of one phase that stop the run
GRID_SIZE = (8, 4)  # columns, rows of reals.png / fakes*.png
_TICK_LOSSES = {"G": "Loss/G/loss", "D": "Loss/D/loss", "R1": "Loss/D/reg"}


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in the training state."""

    cur_nimg: int = 0  # real images shown so far (all processes)
    cur_tick: int = 0
    batch_idx: int = 0  # steps taken
    nonfinite_streak: dict[str, int] = dataclasses.field(default_factory=dict)  # phase -> consecutive skips
    nonfinite_total: int = 0


@dataclasses.dataclass
class Run:
    """The live objects of a run (networks, optimisers, loss, augmentation) and its progress."""

    config: TrainingConfig
    device: torch.device
    G: torch.nn.Module
    G_ema: torch.nn.Module
    D: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]  # 'G', 'D'
    augment_pipe: AugmentPipe | None
    ada: AdaptiveP | None
    labels: torch.Tensor  # [L, 25] dataset labels, the cameras of generated images
    progress: Progress
    loss: HeadGANLoss | None = None  # for the current stage (set by configure_stage)
    phases: list[schedules.Phase] = dataclasses.field(default_factory=list)
    ada_signs: training_stats.Collector | None = None  # real-logit signs of the current step (ADA)


def training_loop(config: TrainingConfig, run_dir: str, resume: str | None = None,
                  progress_callback: Callable[[int, int], None] | None = None, device_type: str | None = None) -> None:
    """Train until ``config.schedule.kimg`` thousand real images have been shown; write logs and snapshots to
    ``run_dir``. ``resume``: a run directory (its newest complete snapshot) or a network-snapshot-*.safetensors file
    (its training-state-*.pt must sit next to it). ``progress_callback(cur_nimg, total_nimg)`` runs after every tick.
    ``device_type``: 'cuda' or 'cpu' (None: CUDA when available). Launch with torchrun for several processes
    (``torch_utils.distributed``)."""
    distributed.init(device_type)
    check_metric_names(config.schedule.metrics, "schedule.metrics")
    load_detectors(config.schedule.metrics, distributed.device())  # fail now, not at the first snapshot, if offline
    with RunLog(run_dir) as log:
        dataset = open_dataset(config)
        run = build_run(config, dataset, resume)
        total_nimg = round(config.schedule.kimg * 1000)
        log.start(run, dataset, resume, total_nimg)
        grid = GridSetup(run, dataset)
        grid.save_reals(run_dir)
        if resume is None:
            grid.save_fakes(run, Path(run_dir) / "fakes_init.png")
        loader = iter(data_loader(run, dataset))
        timer = TickTimer(run.progress.cur_nimg)
        while run.progress.cur_nimg < total_nimg:
            reals = real_chunks(run, next(loader))
            training_step(run, reals)
            run.progress.cur_nimg += config.schedule.batch
            run.progress.batch_idx += 1
            advance_schedules(run)
            done = run.progress.cur_nimg >= total_nimg
            if done or run.progress.cur_nimg >= timer.start_nimg + config.schedule.tick_kimg * 1000:
                end_tick(run, log, timer, grid, done)
                if progress_callback is not None:
                    progress_callback(run.progress.cur_nimg, total_nimg)


# ---------------------------------------------------------------------------------------------------------------------
# Setup and resume


def open_dataset(config: TrainingConfig) -> ImageFolderDataset:
    """The training images of ``config.data`` (labels required: they are the cameras)."""
    data = config.data
    if data.path is None:
        raise UserError("data.path: no dataset given (train.py --data)")
    dataset = ImageFolderDataset(data.path, use_labels=True, xflip=data.xflip, max_size=data.max_size,
                                 mask_path=data.mask_path, resolution=data.resolution, yaw_range=data.yaw_range,
                                 back_repeat=data.back_repeat, random_seed=config.seed)
    if "image_mask" in config.discriminator.inputs and not dataset.has_masks:
        raise UserError(f"data.mask_path: the discriminator reads masks, but '{data.path}' has no alpha channel and "
                        f"no mask dataset was given (train.py --mask-data)")
    return dataset


def resume_paths(resume: str) -> tuple[Path, Path]:
    """(network snapshot, training state) named by ``resume``: a run directory or a network snapshot file."""
    path = Path(resume)
    if path.is_dir():
        network, state, _ = find_latest_snapshot(path)
        return network, state
    match = re.fullmatch(r"network-snapshot-(\d+)\.safetensors", path.name)
    if match is None:
        raise UserError(f"resume: expected a run directory or a network-snapshot-<kimg>.safetensors file, got "
                        f"'{resume}'")
    return path, path.with_name(f"training-state-{match.group(1)}.pt")


def build_run(config: TrainingConfig, dataset: ImageFolderDataset, resume: str | None) -> Run:
    """Networks, optimisers and augmentation, fresh (identical on every rank) or restored from ``resume``."""
    device = distributed.device()
    saved = None
    if resume is not None:
        network_path, state_path = resume_paths(resume)
        saved = (network_path, load_network_snapshot(network_path), load_training_state(state_path))
    progress = Progress(**saved[2]["progress"]) if saved else Progress()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    G, D = build_networks(config, device, progress.cur_nimg)
    G_ema = copy.deepcopy(G).eval()
    for module in (G, G_ema, D):
        module.requires_grad_(False)
    opt = config.optim
    optimizers = {"G": torch.optim.Adam(G.parameters(), lr=opt.g_lr, betas=opt.betas, eps=opt.eps),
                  "D": torch.optim.Adam(D.parameters(), lr=opt.d_lr, betas=opt.betas, eps=opt.eps)}
    sched = config.schedule
    augment_pipe = None if sched.augment == "noaug" else AugmentPipe(sched.augment_spec, sched.augment_p).to(device)
    ada = None if sched.augment != "ada" else AdaptiveP(sched.ada_target, sched.ada_kimg, sched.ada_interval,
                                                        p=sched.augment_p)  # ADA starts from augment_p
    labels = torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))])).to(device)
    run = Run(config, device, G, G_ema, D, optimizers, augment_pipe, ada, labels, progress)
    if ada is not None:
        run.ada_signs = training_stats.Collector(regex="Loss/signs/real")
    if saved:
        restore(run, *saved)
    else:
        for module in (G, G_ema, D):
            distributed.broadcast_parameters(module)
    configure_stage(run)
    return run


def restore(run: Run, network_path: Path, network: tuple, state: dict) -> None:
    """Load weights, optimiser states, augmentation state and RNG states saved by ``save_snapshot``."""
    state_dicts, _, metadata = network
    if metadata.get("cur_nimg") != run.progress.cur_nimg:
        raise UserError(f"resume: '{network_path}' was saved at {metadata.get('cur_nimg')} images but its training "
                        f"state at {run.progress.cur_nimg}; the pair is inconsistent (a run stopped between the two "
                        f"writes of one snapshot); resume from an earlier snapshot")
    for name in ("G", "G_ema", "D"):
        try:
            getattr(run, name).load_state_dict(state_dicts[name])
        except (KeyError, RuntimeError) as error:
            raise UserError(f"resume: '{network_path}' [{name}] does not fit the configured network: {error}") from None
    for name, saved in state["optimizers"].items():
        names = [n for n, _ in getattr(run, name).named_parameters()]
        if saved["names"] != names:
            raise UserError(f"resume: the {name} optimiser state next to '{network_path}' lists other parameters")
        run.optimizers[name].load_state_dict(saved["state"])
    if run.augment_pipe is not None:
        run.augment_pipe.p.fill_(state["augment_p"])
    if run.ada is not None:
        run.ada.load_state_dict(state["ada"])
    restore_rng_state(state["rng"])


def configure_stage(run: Run) -> None:
    """Loss, phases and Adam hyper-parameters for the schedule stage at ``cur_nimg`` (loss overrides may change)."""
    config = run.config
    run.loss = build_loss(config, run.G, run.D, run.augment_pipe, run.progress.cur_nimg)
    intervals = {"G": run.loss.g_reg_interval, "D": run.loss.d_reg_interval}
    run.phases = schedules.plan_phases(intervals)
    opt = config.optim
    schedules.set_adam_hparams(run.optimizers["G"], opt.g_lr, opt.betas, opt.eps, intervals["G"])
    schedules.set_adam_hparams(run.optimizers["D"], opt.d_lr, opt.betas, opt.eps, intervals["D"])


def data_loader(run: Run, dataset: ImageFolderDataset) -> torch.utils.data.DataLoader:
    """This rank's share of every step's reals, in the order of ``schedules.ImageOrder``, from ``cur_nimg`` on."""
    world, sched, workers = distributed.get_world_size(), run.config.schedule, run.config.data.workers
    if sched.batch % (world * sched.batch_gpu):
        raise UserError(f"schedule.batch ({sched.batch}) must be a multiple of the number of processes ({world}) "
                        f"times schedule.batch_gpu ({sched.batch_gpu})")
    order = schedules.ImageOrder(len(dataset), run.config.seed, run.progress.cur_nimg, sched.batch,
                                 distributed.get_rank(), world)
    return torch.utils.data.DataLoader(dataset, batch_size=sched.batch // world, sampler=order, num_workers=workers,
                                       pin_memory=run.device.type == "cuda", prefetch_factor=2 if workers else None,
                                       persistent_workers=workers > 0)


# ---------------------------------------------------------------------------------------------------------------------
# One training step


def real_chunks(run: Run, batch: list) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Split this rank's reals (uint8 images, labels, optional uint8 masks) into batch_gpu chunks for the loss."""
    images = batch[0].to(run.device, non_blocking=True).to(torch.float32) / 127.5 - 1
    reals = {"image": images}
    if len(batch) > 2:
        mask = batch[2].to(run.device, non_blocking=True).to(torch.float32) / 255
        reals["image_mask"] = mask
        if run.config.family == "gaussian" and not run.config.generator.background_generator:
            background = torch.tensor(run.config.generator.background, device=run.device).view(1, 3, 1, 1)
            reals["image"] = images * mask + background * (1 - mask)
    labels = batch[1].to(run.device, non_blocking=True)
    size = run.config.schedule.batch_gpu
    return [({k: v[i:i + size] for k, v in reals.items()}, labels[i:i + size]) for i in range(0, len(labels), size)]


def training_step(run: Run, reals: list) -> None:
    """All phases due at this step, then the G_ema update."""
    for phase in run.phases:
        if run.progress.batch_idx % phase.interval == 0:
            run_phase(run, phase, reals)
    schedules.update_ema(run.G_ema, run.G, schedules.ema_beta(run.config, run.progress.cur_nimg))


def run_phase(run: Run, phase: schedules.Phase, reals: list) -> None:
    """Accumulate one phase's gradients over this rank's chunks, average them over ranks, step unless non-finite."""
    module, optimizer, progress = getattr(run, phase.network), run.optimizers[phase.network], run.progress
    kwargs = render_kwargs(run.config, progress.cur_nimg)
    rounds, first_chunk = len(reals), distributed.get_rank() * len(reals)
    optimizer.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    for k, (real_img, real_c) in enumerate(reals):
        misc.set_random_seed(run.config.seed, progress.cur_nimg, schedules.PHASE_IDS[phase.name], first_chunk + k)
        gen_z = torch.randn(len(real_c), run.G.z_dim).to(run.device)
        gen_c = run.labels[torch.randint(len(run.labels), (len(real_c),))]
        run.loss.accumulate_gradients(phase.name, real_img, real_c, gen_z, gen_c, gain=phase.interval / rounds,
                                      cur_nimg=progress.cur_nimg, render_kwargs=kwargs)
    module.requires_grad_(False)
    finite = average_gradients(module)
    training_stats.report(f"Loss/nonfinite_grads/{phase.name}", 0.0 if finite else 1.0)
    if finite:
        optimizer.step()
        progress.nonfinite_streak[phase.name] = 0
        return
    progress.nonfinite_total += 1
    streak = progress.nonfinite_streak[phase.name] = progress.nonfinite_streak.get(phase.name, 0) + 1
    if streak >= MAX_NONFINITE_STREAK:
        raise UserError(f"training diverged: {streak} consecutive {phase.name} steps had non-finite gradients "
                        f"(at {progress.cur_nimg} images); lower the learning rates or raise gamma, and resume from "
                        f"an earlier snapshot")


def average_gradients(module: torch.nn.Module) -> bool:
    """Average ``module``'s gradients over all processes (in place) and tell whether all of them are finite.

    Parameters without a gradient on every rank keep none (so Adam skips them as in a single process).
    """
    params = list(module.parameters())
    if distributed.get_world_size() == 1:
        grads = [p.grad for p in params if p.grad is not None]
        return not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
    present = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in params] +
                     [present])
    dist.all_reduce(flat)
    grads = (flat[:-len(params)] / distributed.get_world_size()).split([p.numel() for p in params])
    for p, grad, count in zip(params, grads, flat[-len(params):].tolist(), strict=True):
        p.grad = grad.view_as(p) if count > 0 else None
    return bool(flat.isfinite().all())


def advance_schedules(run: Run) -> None:
    """After a step: discriminator growth and blend, stage loss overrides, the ADA probability."""
    cur_nimg = run.progress.cur_nimg
    grown = schedules.apply_growth(run.D, run.config, cur_nimg)
    if grown:
        run.optimizers["D"] = schedules.rebuild_optimizer(run.optimizers["D"], run.D)
    if grown or loss_config_at(run.config, cur_nimg) != run.loss.config:
        configure_stage(run)
    if run.ada is not None:
        run.ada_signs.update()  # collective: the mean over all ranks
        p = run.ada.update(run.ada_signs.mean("Loss/signs/real"), run.config.schedule.batch)
        run.augment_pipe.p.fill_(p)


# ---------------------------------------------------------------------------------------------------------------------
# Ticks, logs, grids, snapshots


class TickTimer:
    """Wall-clock bookkeeping: run start, and the start time and image count of the current tick."""

    def __init__(self, start_nimg: int) -> None:
        self.run_start = self.tick_start = time.time()
        self.start_nimg = start_nimg


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory since the last call: CUDA allocations on a GPU, the process's peak resident set on a CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def end_tick(run: Run, log: RunLog, timer: TickTimer, grid: GridSetup, done: bool) -> None:
    """Report the tick's statistics, write the fakes grid and the snapshot when due, start the next tick."""
    progress, sched = run.progress, run.config.schedule
    progress.cur_tick += 1
    now = time.time()
    tick_kimg = (progress.cur_nimg - timer.start_nimg) / 1000
    tick_sec = now - timer.tick_start
    values = {"Progress/tick": progress.cur_tick, "Progress/kimg": progress.cur_nimg / 1000,
              "Progress/augment": 0.0 if run.augment_pipe is None else float(run.augment_pipe.p),
              "Progress/nonfinite_total": progress.nonfinite_total, "Timing/total_sec": now - timer.run_start,
              "Timing/sec_per_tick": tick_sec, "Timing/sec_per_kimg": tick_sec / tick_kimg,
              "Resources/peak_mem_gb": peak_memory_gb(run.device)}
    for name, value in values.items():
        training_stats.report0(name, torch.tensor(value, dtype=torch.float64))  # a Python float would become float32
    log.stats.update()  # collective: every rank calls it
    log.tick()
    kimg = progress.cur_nimg // 1000
    if done or progress.cur_tick % sched.image_snapshot_ticks == 0:
        grid.save_fakes(run, log.run_dir / f"fakes{kimg:06d}.png")
    if done or progress.cur_tick % sched.snap == 0:
        save_snapshot(run, log.run_dir)
        evaluate_metrics(run, log)
    timer.start_nimg, timer.tick_start = progress.cur_nimg, time.time()


def evaluate_metrics(run: Run, log: RunLog) -> None:
    """The schedule's metrics of G_ema at the snapshot just written, appended to metric-<name>.jsonl and logged
    (``metrics.registry``; every rank takes part). The global RNG state is left as it was."""
    network_path, _ = snapshot_paths(log.run_dir, run.progress.cur_nimg // 1000)
    for name in run.config.schedule.metrics:
        options = MetricOptions(G=run.G_ema, config=run.config, cur_nimg=run.progress.cur_nimg, device=run.device,
                                workers=run.config.data.workers, seed=run.config.seed)
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            result = calc_metric(name, options)
        if result is not None:
            report_metric(result, log.run_dir, network_path)
            values = " ".join(f"{key} {value:.4f}" for key, value in result.results.items())
            log.line(f"metric {values} ({result.num_gen} generated, {result.num_real} reals, {result.total_time_str})")


class RunLog:
    """Rank 0's outputs in the run directory: log.txt (echoed to stdout), stats.jsonl, TensorBoard when installed.

    ``stats`` collects every ``training_stats.report`` on every rank; ``update`` it on all ranks at the end of a tick.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir, self.main = Path(run_dir), distributed.is_main()
        self.stats = training_stats.Collector(regex=".*")
        self._files, self._tensorboard = [], None
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._files = [open(self.run_dir / "log.txt", "a"), open(self.run_dir / "stats.jsonl", "a")]
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.run_dir))
            except ImportError:
                self.line("TensorBoard is not installed: no event files (pip install tensorboard)")

    def line(self, text: str) -> None:
        """Print and append one line to log.txt (rank 0)."""
        if self.main:
            print(text, flush=True)
            self._files[0].write(text + "\n")
            self._files[0].flush()

    def start(self, run: Run, dataset: ImageFolderDataset, resume: str | None, total_nimg: int) -> None:
        """Describe the run: data, batch layout, networks, starting point."""
        sched, world = run.config.schedule, distributed.get_world_size()
        count = {name: sum(p.numel() for p in getattr(run, name).parameters()) for name in ("G", "D")}
        self.line(f"{run.config.family} heads; data {run.config.data.path}: {len(dataset)} images "
                  f"{dataset.resolution}x{dataset.resolution}, masks {'yes' if dataset.has_masks else 'no'}")
        self.line(f"batch {sched.batch} = {world} process(es) x {sched.batch // (world * sched.batch_gpu)} chunk(s) "
                  f"x {sched.batch_gpu} on {run.device}; G {count['G']:,} and D {count['D']:,} parameters")
        where = "from scratch" if resume is None else f"resumed from {resume}"
        self.line(f"training {where} at {run.progress.cur_nimg / 1000:.3f} kimg to {total_nimg / 1000:g} kimg")

    def tick(self) -> None:
        """The progress line of the tick just reported, its stats.jsonl record and TensorBoard scalars."""
        if not self.main:
            return
        means = {name: self.stats.mean(name) for name in self.stats.names()}
        losses = " ".join(f"{label} {means[name]:.3f}" for label, name in _TICK_LOSSES.items() if name in means)
        nonfinite = int(means["Progress/nonfinite_total"])
        self.line(f"tick {int(means['Progress/tick']):<5d} kimg {means['Progress/kimg']:<9.3f} "
                  f"time {means['Timing/total_sec']:<8.0f} sec/tick {means['Timing/sec_per_tick']:<7.1f} "
                  f"sec/kimg {means['Timing/sec_per_kimg']:<8.1f} {losses} augment {means['Progress/augment']:.3f} "
                  f"mem {means['Resources/peak_mem_gb']:.2f} GB" + (f" nonfinite {nonfinite}" if nonfinite else ""))
        record = {name: dict(stat) for name, stat in self.stats.as_dict().items()}
        self._files[1].write(json.dumps({**record, "timestamp": time.time()}) + "\n")
        self._files[1].flush()
        if self._tensorboard is not None:
            for name, value in means.items():
                self._tensorboard.add_scalar(name, value, global_step=round(means["Progress/kimg"] * 1000))
            self._tensorboard.flush()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        """Log why a run stopped on a user-facing error, and close the files (rank 0)."""
        if isinstance(exc, UserError):
            self.line(f"stopped: {exc}")
        for f in self._files:
            f.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def save_grid(images: torch.Tensor, path: Path) -> None:
    """Write images [GW·GH, 3, H, W] in [-1, 1] as one PNG of GH rows and GW columns (``GRID_SIZE``)."""
    columns, rows = GRID_SIZE
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()
    _, channels, height, width = x.shape
    x = x.view(rows, columns, channels, height, width).permute(0, 3, 1, 4, 2).reshape(rows * height,
                                                                                   columns * width, channels)
    PIL.Image.fromarray(x.numpy(), "RGB").save(path)


class GridSetup:
    """The fixed content of reals.png and fakes*.png: dataset items, their cameras, and latents drawn from the seed."""

    def __init__(self, run: Run, dataset: ImageFolderDataset) -> None:
        count = GRID_SIZE[0] * GRID_SIZE[1]
        gen = torch.Generator().manual_seed(run.config.seed)
        self.indices = torch.randperm(len(dataset), generator=gen).repeat(-(-count // len(dataset)))[:count]
        self.z = torch.randn(count, run.G.z_dim, generator=gen)
        self.dataset = dataset

    def save_reals(self, run_dir: str) -> None:
        """reals.png from the dataset images (rank 0)."""
        if distributed.is_main():
            images = torch.stack([torch.from_numpy(self.dataset[int(i)][0]) for i in self.indices])
            save_grid(images.float() / 127.5 - 1, Path(run_dir) / "reals.png")

    @torch.no_grad()
    def save_fakes(self, run: Run, path: Path) -> None:
        """G_ema's images of the fixed latents from the grid cameras, at the schedule's current resolution (rank 0;
        constant noise, no density noise)."""
        if not distributed.is_main():
            return
        kwargs = render_kwargs(run.config, run.progress.cur_nimg)
        kwargs.pop("render_options", None)
        cameras, size, images = run.labels[self.indices.to(run.device)], run.config.schedule.batch_gpu, []
        for start in range(0, len(self.z), size):
            z, c = self.z[start:start + size].to(run.device), cameras[start:start + size]
            images.append(run.G_ema(z, c, noise_mode="const", **kwargs)["image"])
        save_grid(torch.cat(images), path)


def training_state(run: Run) -> dict:
    """Everything besides the weights that a resumed run needs (plain containers and tensors)."""
    return {
        "progress": dataclasses.asdict(run.progress),
        "optimizers": {name: {"names": [n for n, _ in getattr(run, name).named_parameters()],
                              "state": optimizer.state_dict()} for name, optimizer in run.optimizers.items()},
        "augment_p": None if run.augment_pipe is None else float(run.augment_pipe.p),
        "ada": None if run.ada is None else run.ada.state_dict(),
        "rng": capture_rng_state(),
    }


@torch.no_grad()
def save_snapshot(run: Run, run_dir: Path) -> None:
    """Check that all ranks agree, then (rank 0) write the network snapshot and the training state, atomically."""
    for module in (run.G, run.G_ema, run.D):
        if distributed.get_world_size() > 1:
            for buffer in module.buffers():  # running averages (w_avg) follow each rank's own latents: take rank 0's
                dist.broadcast(buffer, src=0)
        distributed.check_ddp_consistency(module)
    if distributed.is_main():
        kimg = run.progress.cur_nimg // 1000
        network_path, state_path = snapshot_paths(run_dir, kimg)
        save_network_snapshot(network_path, {"G": run.G, "G_ema": run.G_ema, "D": run.D}, run.config.to_dict(),
                              {"kimg": kimg, "cur_nimg": run.progress.cur_nimg})
        save_training_state(state_path, training_state(run))
    distributed.barrier()
