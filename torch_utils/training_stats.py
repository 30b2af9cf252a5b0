"""Training statistics: report scalars/tensors anywhere, collect their moments, reduce them across processes.

``report(name, value)`` can be called from any code (losses, augmentation, the training loop). Every live ``Collector``
whose regex matches the name adds the value's moments (count, sum, sum of squares, non-finite count) to what it has
pending; ``Collector.update()`` turns what was reported since its previous update into results, summed over all
processes when torch.distributed is initialised. Non-finite values are kept in the sums (a NaN loss makes the mean NaN)
and also counted, so divergence shows in the logs instead of being averaged away.
"""

from __future__ import annotations

import math
import re
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dnnlib import EasyDict

_NUM_MOMENTS = 4  # count, sum, sum of squares, number of non-finite values
_collectors: weakref.WeakSet[Collector] = weakref.WeakSet()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _moments(value: Any) -> Tensor:
    """[4] float64 moments of all elements of ``value``, on the value's device (no host synchronisation)."""
    x = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    x = x.flatten().to(torch.float64)
    count = torch.full((), x.numel(), dtype=torch.float64, device=x.device)
    nonfinite = (~torch.isfinite(x)).sum().to(torch.float64)
    return torch.stack([count, x.sum(), x.square().sum(), nonfinite])


def report(name: str, value: Any) -> Any:
    """Record ``value`` (a number, sequence or tensor of any shape; each element counts once) under ``name``.

    Returns ``value`` unchanged, so calls can be chained into expressions.
    """
    moments = None
    for collector in list(_collectors):
        if collector.matches(name):
            if moments is None:
                moments = _moments(value)
            collector._add(name, moments)
    return value


def report0(name: str, value: Any) -> Any:
    """``report`` on the process of rank 0 only (values every process computes identically); returns ``value``."""
    if _rank() == 0:
        report(name, value)
    return value


class Collector:
    """Collects the statistics whose names fully match ``regex``, from the moment it is created.

    ``update()`` must be called by every process at the same point when torch.distributed is initialised (it is a
    collective); the names may differ between processes.
    """

    def __init__(self, regex: str = ".*") -> None:
        self._regex = re.compile(regex)
        self._match_cache: dict[str, bool] = {}
        self._pending: dict[str, dict[torch.device, Tensor]] = {}
        self._results: dict[str, list[float]] = {}
        _collectors.add(self)

    def matches(self, name: str) -> bool:
        """Whether ``name`` is collected by this collector."""
        if name not in self._match_cache:
            self._match_cache[name] = self._regex.fullmatch(name) is not None
        return self._match_cache[name]

    def _add(self, name: str, moments: Tensor) -> None:
        per_device = self._pending.setdefault(name, {})
        previous = per_device.get(moments.device)
        per_device[moments.device] = moments if previous is None else previous + moments

    def update(self) -> None:
        """Make what was reported since the last update (on all processes) the current results."""
        names = set(self._pending)
        device = torch.device("cpu")
        if _distributed():
            gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, sorted(names))
            names = {n for rank_names in gathered for n in rank_names}
            if dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
        ordered = sorted(names)
        table = torch.zeros(len(ordered), _NUM_MOMENTS, dtype=torch.float64, device=device)
        for row, name in enumerate(ordered):
            for moments in self._pending.get(name, {}).values():
                table[row] += moments.to(device)
        if _distributed() and ordered:
            dist.all_reduce(table)
        self._results = dict(zip(ordered, table.cpu().tolist(), strict=True))
        self._pending = {}

    def names(self) -> list[str]:
        """Sorted names reported (by any process) before the last update."""
        return list(self._results)

    def num(self, name: str) -> int:
        """Number of values reported under ``name`` (0 if none)."""
        return int(self._results[name][0]) if name in self._results else 0

    def num_nonfinite(self, name: str) -> int:
        """How many of those values were NaN or infinite."""
        return int(self._results[name][3]) if name in self._results else 0

    def mean(self, name: str) -> float:
        """Mean of the values (NaN if none, or if any was non-finite)."""
        count = self.num(name)
        return self._results[name][1] / count if count else math.nan

    def std(self, name: str) -> float:
        """Population standard deviation of the values (NaN if none, or if any was non-finite)."""
        count = self.num(name)
        if not count:
            return math.nan
        mean = self._results[name][1] / count
        variance = self._results[name][2] / count - mean**2
        return math.sqrt(max(variance, 0.0)) if math.isfinite(variance) else math.nan

    def as_dict(self) -> dict[str, EasyDict]:
        """``{name: EasyDict(num, mean, std, nonfinite)}`` for every name, e.g. for a stats.jsonl line."""
        return {
            name: EasyDict(
                num=self.num(name), mean=self.mean(name), std=self.std(name), nonfinite=self.num_nonfinite(name)
            )
            for name in self._results
        }
