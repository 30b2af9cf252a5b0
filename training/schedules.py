"""Training mechanics as small pure functions and explicit state: phases, optimisers, EMA, data order, growth.

Everything here is a function of the config and of ``cur_nimg`` (real images shown so far), or of explicit state
that the training state saves, so that a resumed run continues bit-exactly:

- phases (reference eg3d-stylegan2-infra.md §5): G and D each get one Adam optimiser. With lazy regularisation
  (R1 every ``r1_interval`` steps; volumetric density regularisation every ``density_reg_interval``) a network has a
  main phase every step and a reg phase every ``interval`` steps, and its Adam runs with lr·r and betas**r,
  r = interval / (interval + 1), so that the optimiser statistics match those of regularising every step (the reg loss
  is multiplied by the gain ``interval``). Without a regulariser a single '<G|D>both' phase runs every step.
- data order: image position n (the n-th real image of the run) is item ``perm_e[n mod L]`` of the dataset, with
  ``perm_e`` a permutation drawn from (seed, epoch e = n div L); no sampler state exists, so resuming at any
  ``cur_nimg`` continues the same sequence. Position n belongs to the global chunk ``(n - cur_nimg) div batch_gpu``
  of the step; chunk k is computed by rank ``k div rounds`` in accumulation round ``k mod rounds``.
- randomness: before every chunk of every phase the global RNGs are reseeded from (seed, cur_nimg, phase, chunk).
  Latents, generated cameras, and all randomness inside the loss (noise inputs, pose-conditioning swaps,
  augmentation) therefore depend only on those numbers, not on the number of processes or on a resume.
- EMA: G_ema ← G + β·(G_ema − G), β = 0.5 ** (batch / ema_nimg), ema_nimg = ema_kimg·1000, limited to
  cur_nimg·ema_rampup during the ramp-up; buffers (w_avg) are copied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from training.presets import TrainingConfig, discriminator_resolution, growth_blend

PHASE_IDS = {"Gmain": 0, "Greg": 1, "Gboth": 2, "Dmain": 3, "Dreg": 4, "Dboth": 5}  # part of the per-chunk seed


@dataclass(frozen=True)
class Phase:
    """One training phase: ``name`` for the loss, the network it updates ('G' or 'D'), and how often it runs."""

    name: str  # 'Gmain' | 'Greg' | 'Gboth' | 'Dmain' | 'Dreg' | 'Dboth'
    network: str  # 'G' | 'D'
    interval: int  # runs at steps with batch_idx % interval == 0; also the loss gain


def plan_phases(intervals: dict[str, int | None]) -> list[Phase]:
    """Phases in the order they run within a step (G before D, main before reg) for the lazy-regularisation
    ``intervals`` {'G': int | None, 'D': int | None} (None: no reg phase; ``HeadGANLoss.g_reg_interval`` etc.)."""
    phases = []
    for net in ("G", "D"):
        if intervals[net] is None:
            phases.append(Phase(f"{net}both", net, 1))
        else:
            phases += [Phase(f"{net}main", net, 1), Phase(f"{net}reg", net, intervals[net])]
    return phases


def lazy_adam_hparams(lr: float, betas: tuple[float, float], interval: int | None) -> tuple[float, tuple[float, float]]:
    """(lr, betas) compensated for a reg phase every ``interval`` steps: lr·r, betas**r with r = I / (I + 1)."""
    if interval is None:
        return lr, tuple(betas)
    ratio = interval / (interval + 1)
    return lr * ratio, tuple(b**ratio for b in betas)


def make_optimizer(module: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                   interval: int | None) -> torch.optim.Adam:
    """Adam over ``module``'s parameters with the lazy-regularisation compensation of ``interval``."""
    lr, betas = lazy_adam_hparams(lr, betas, interval)
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, eps=eps)


def set_adam_hparams(optimizer: torch.optim.Optimizer, lr: float, betas: tuple[float, float], eps: float,
                     interval: int | None) -> None:
    """Set the (compensated) hyper-parameters in place, keeping the moment estimates."""
    lr, betas = lazy_adam_hparams(lr, betas, interval)
    for group in optimizer.param_groups:
        group.update(lr=lr, betas=betas, eps=eps)


def rebuild_optimizer(optimizer: torch.optim.Optimizer, module: nn.Module) -> torch.optim.Optimizer:
    """A new optimiser of the same class and hyper-parameters over ``module``'s current parameters.

    Parameters the old optimiser knew keep their state (moments, step); new ones start fresh; removed ones are dropped.
    Needed after ``Discriminator.grow`` / ``end_fade`` change the parameter set.
    """
    hparams = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    new = type(optimizer)(module.parameters(), **hparams)
    for p in module.parameters():
        if p in optimizer.state:
            new.state[p] = optimizer.state[p]
    return new


def ema_beta(config: TrainingConfig, cur_nimg: int) -> float:
    """EMA factor of G_ema for the step that brought the run to ``cur_nimg`` (module docstring)."""
    sched = config.schedule
    ema_kimg = sched.batch * 10 / 32 if sched.ema_kimg is None else sched.ema_kimg
    ema_nimg = ema_kimg * 1000
    if sched.ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * sched.ema_rampup)
    return 0.5 ** (sched.batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema parameters ← lerp(G, G_ema, beta); buffers copied from G."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


def _seed_of(*numbers: int) -> int:
    """A 63-bit seed hashed from a tuple of ints (nearby tuples give unrelated seeds)."""
    digest = hashlib.sha256(repr(tuple(int(n) for n in numbers)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ImageOrder(torch.utils.data.Sampler):
    """Dataset indices of this rank's share of every step, from image position ``start_nimg`` on, forever.

    Per step of ``batch`` images at positions [n, n + batch), rank r yields positions
    [n + r·batch/world, n + (r + 1)·batch/world) in order (module docstring: position → item).
    """

    def __init__(self, length: int, seed: int, start_nimg: int, batch: int, rank: int = 0, world: int = 1):
        self.length, self.seed, self.start_nimg, self.batch = length, seed, start_nimg, batch
        self.share, self.rank = batch // world, rank
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def index(self, position: int) -> int:
        """Dataset item shown at image ``position`` of the run."""
        epoch = position // self.length
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_seed_of(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=gen)
        return int(self._perm[position % self.length])

    def __iter__(self):
        step_start = self.start_nimg
        while True:
            first = step_start + self.rank * self.share
            for position in range(first, first + self.share):
                yield self.index(position)
            step_start += self.batch


def apply_growth(D: nn.Module, config: TrainingConfig, cur_nimg: int) -> bool:
    """Bring a growing discriminator to its state at ``cur_nimg``: grow, set the blend, end a finished fade.

    Returns whether the parameter set changed (the D optimiser must then be rebuilt). The structure matches
    ``presets.build_discriminator(config, cur_nimg)``, which rebuilds it on resume.
    """
    if not config.schedule.growth:
        return False
    changed = False
    resolution = discriminator_resolution(config, cur_nimg)
    if D.img_resolution < resolution:
        D.grow(resolution)
        changed = True
    if D.fade_resolution is not None:
        blend = growth_blend(config, cur_nimg)
        D.set_blend(blend)
        if blend >= 1:
            D.end_fade()
            changed = True
    return changed
