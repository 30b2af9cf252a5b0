"""torch_utils.misc and torch_utils.training_stats.

Statistics are checked against numpy over the same values (float64, tolerance 1e-12 relative); the cross-process
reduction runs two gloo processes and compares with numpy over the values of both.
"""

from __future__ import annotations

import json
import math
import random
import re
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dnnlib import UserError
from torch_utils import misc, training_stats

# ---------------------------------------------------------------------------------------------------------------------
# misc


def test_assert_shape():
    t = torch.zeros(2, 3, 4)
    misc.assert_shape(t, [2, None, 4])
    misc.assert_shape(t, [None, None, None])
    with pytest.raises(AssertionError, match="dimension 1: got 3, expected 5"):
        misc.assert_shape(t, [2, 5, 4])
    with pytest.raises(AssertionError, match="number of dimensions"):
        misc.assert_shape(t, [2, 3])


class _Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Sequential(nn.Linear(width, 2)))
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        return self.body(x) * self.scale, x.sum()


def test_copy_params_and_buffers():
    src, dst = _Net(), _Net()
    with torch.no_grad():
        src.scale.fill_(3.0)
        dst.body[0].weight.requires_grad_(False)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    for (name, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst), strict=True):
        assert torch.equal(a, b), name
    assert not dst.body[0].weight.requires_grad and dst.body[2][0].weight.requires_grad

    partial = nn.Module()
    partial.register_buffer("scale", torch.full((2,), 7.0))
    fresh = _Net()
    before = fresh.body[0].weight.clone()
    misc.copy_params_and_buffers(partial, fresh)
    assert torch.equal(fresh.scale, torch.full((2,), 7.0)) and torch.equal(fresh.body[0].weight, before)
    with pytest.raises(UserError, match="body.0.weight"):
        misc.copy_params_and_buffers(partial, fresh, require_all=True)
    with pytest.raises(UserError, match=r"cannot copy 'body.0.weight'.*\[5, 3\].*\[4, 3\]"):
        misc.copy_params_and_buffers(_Net(width=5), _Net(width=4))


def test_print_module_summary(capsys):
    net = _Net()
    x = torch.randn(5, 3)
    out = misc.print_module_summary(net, [x], max_nesting=2)
    torch.testing.assert_close(out[0], net(x)[0], rtol=0, atol=0)
    table = capsys.readouterr().out
    rows = {
        cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in table.splitlines()) if cells[0]
    }
    assert rows["<_Net>"] == ["0", "2", "[5, 2], []", "float32"]  # own buffer; returns (tensor, scalar)
    assert rows["body.0"] == ["16", "0", "[5, 4]", "float32"]  # Linear(3, 4): 3*4 + 4
    assert rows["body.1"] == ["0", "0", "[5, 4]", "float32"]
    # body.2.0 is 3 levels deep: its 4*2 + 2 parameters are counted under body.2, which is the deepest row.
    assert rows["body.2"] == ["10", "0", "[5, 2]", "float32"] and "body.2.0" not in rows
    assert rows["Total"] == [str(sum(p.numel() for p in net.parameters())), "2"]
    misc.print_module_summary(net, [x], max_nesting=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [re.split(r"\s{2,}", line)[:3] for line in lines[2:4]] == [
        ["<_Net>", "26", "2"],
        ["-" * 6, "-" * 10, "-" * 7],
    ]


def test_set_random_seed_is_deterministic_and_mixes_all_seeds():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    misc.set_random_seed(7, 1, 4000)
    a = draw()
    misc.set_random_seed(7, 1, 4000)
    assert draw() == a
    others = [(7, 1, 4001), (7, 0, 4000), (1, 7, 4000), (71, 4000), (7, 14000)]
    for seeds in others:
        misc.set_random_seed(*seeds)
        b = draw()
        assert all(u != v for u, v in zip(a, b, strict=True)), seeds


# ---------------------------------------------------------------------------------------------------------------------
# training_stats, one process


def _check(collector: training_stats.Collector, name: str, values: list[float]) -> None:
    v = np.asarray(values, dtype=np.float64)
    assert collector.num(name) == v.size
    assert math.isclose(collector.mean(name), v.mean(), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(collector.std(name), v.std(), rel_tol=1e-9, abs_tol=1e-12)


def test_collector_moments_and_reset():
    early = training_stats.Collector(regex="Loss/.*")
    training_stats.report("Loss/G", 1.5)  # seen by `early` only
    col = training_stats.Collector()
    loss = torch.tensor([[0.5, -2.0], [3.0, 4.25]], requires_grad=True)
    assert training_stats.report("Loss/G", loss) is loss
    training_stats.report("Loss/G", [1.0, 2.0])
    training_stats.report0("Progress/kimg", 12)
    training_stats.report("Loss/empty", torch.zeros(0))
    col.update()
    early.update()
    assert col.names() == ["Loss/G", "Loss/empty", "Progress/kimg"]
    assert early.names() == ["Loss/G", "Loss/empty"]
    _check(col, "Loss/G", [0.5, -2.0, 3.0, 4.25, 1.0, 2.0])
    _check(early, "Loss/G", [1.5, 0.5, -2.0, 3.0, 4.25, 1.0, 2.0])
    _check(col, "Progress/kimg", [12])
    assert col.num("Loss/empty") == 0 and math.isnan(col.mean("Loss/empty"))
    assert col.num("never") == 0 and math.isnan(col.mean("never")) and math.isnan(col.std("never"))
    d = col.as_dict()["Loss/G"]
    assert (d.num, d.nonfinite) == (6, 0) and d.mean == col.mean("Loss/G")

    training_stats.report("Loss/D", 2.0)
    col.update()
    assert col.names() == ["Loss/D"]
    _check(col, "Loss/D", [2.0])


def test_nonfinite_values_are_counted_not_hidden():
    col = training_stats.Collector()
    training_stats.report("Loss/r1", torch.tensor([1.0, float("nan"), float("inf"), 2.0]))
    col.update()
    assert col.num("Loss/r1") == 4 and col.num_nonfinite("Loss/r1") == 2
    assert math.isnan(col.mean("Loss/r1")) and math.isnan(col.std("Loss/r1"))
    training_stats.report("Loss/r1", 3.0)
    col.update()
    assert col.num_nonfinite("Loss/r1") == 0 and col.mean("Loss/r1") == 3.0 and col.std("Loss/r1") == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# training_stats, two gloo processes

# Per rank: (name, values) reported. Rank 1 reports a name rank 0 never does; report0 only counts on rank 0.
_RANK_VALUES = [
    [("Loss/G", [1.0, 2.0, 3.0]), ("Loss/D", [0.25])],
    [("Loss/G", [10.0, -4.0]), ("Loss/only1", [5.0, 7.0])],
]


def _stats_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        col = training_stats.Collector(regex="Loss/.*|Timing/.*")
        for name, values in _RANK_VALUES[rank]:
            training_stats.report(name, torch.tensor(values))
        training_stats.report0("Timing/tick", float(rank + 100))
        training_stats.report("Other/ignored", 1.0)
        col.update()
        first = col.as_dict()
        if rank == 1:
            training_stats.report("Loss/G", 9.0)
        col.update()  # rank 0 has nothing pending and must still take part
        with open(f"{out_dir}/rank{rank}.json", "w") as fp:
            json.dump({"first": first, "second": col.as_dict()}, fp)
    finally:
        dist.destroy_process_group()


def test_collector_reduces_across_two_gloo_processes(tmp_path):
    mp.spawn(_stats_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    first = results[0]["first"]
    assert sorted(first) == ["Loss/D", "Loss/G", "Loss/only1", "Timing/tick"]
    combined: dict[str, list[float]] = {"Timing/tick": [100.0]}
    for rank_values in _RANK_VALUES:
        for name, values in rank_values:
            combined.setdefault(name, []).extend(values)
    for name, values in combined.items():
        v = np.asarray(values)
        assert first[name]["num"] == v.size and first[name]["nonfinite"] == 0
        assert math.isclose(first[name]["mean"], v.mean(), rel_tol=1e-12)
        assert math.isclose(first[name]["std"], v.std(), rel_tol=1e-9, abs_tol=1e-12)
    assert results[0]["second"] == {"Loss/G": {"num": 1, "mean": 9.0, "std": 0.0, "nonfinite": 0}}
