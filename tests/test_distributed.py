"""torch_utils.distributed: a single process without a launcher, and two real gloo processes with torchrun's env.

Oracles: rank 0's module rebuilt independently on every rank from the same seed (what a broadcast must produce),
deliberately diverged tensors (what the consistency check must name), and each rank's captured stdout.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dnnlib import UserError
from torch_utils import distributed
from training.snapshot import save_network_snapshot

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class _Net(nn.Module):
    """Float, bfloat16, int64 and bool tensors: every dtype the broadcast and the comparison must carry."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.low = nn.Parameter(torch.randn(4).to(torch.bfloat16))
        self.register_buffer("steps", torch.randint(0, 1000, (3,)))
        self.register_buffer("mask", torch.rand(5) > 0.5)
        if extra:
            self.more = nn.Parameter(torch.zeros(1))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _check_message(module: nn.Module) -> str | None:
    """The consistency check's error message, or None when it passes."""
    try:
        distributed.check_ddp_consistency(module)
    except RuntimeError as e:
        return str(e)
    return None


def _rank0_module() -> nn.Module:
    torch.manual_seed(100)
    return _Net()


def _scenarios(rank: int, out_dir: str) -> dict:
    """Run every collective scenario; return what this rank observed."""
    torch.manual_seed(100 + rank)
    module = _Net()
    seen = {"initially_differs": not _same(module, _rank0_module())}
    seen["before_broadcast"] = _check_message(module)
    distributed.broadcast_parameters(module)
    seen["equals_rank0"] = _same(module, _rank0_module())
    seen["after_broadcast"] = _check_message(module)

    with torch.no_grad():
        module.lin.bias[0] = float("nan")  # same NaN on both ranks: consistent
        seen["same_nan"] = _check_message(module)
        if rank == 1:
            module.lin.weight[1, 2] += 1e-6
            module.steps[0] += 1
    seen["diverged"] = _check_message(module)
    seen["layout"] = _check_message(_Net(extra=rank == 1))
    try:  # snapshots must hold the unwrapped module's names
        save_network_snapshot(Path(out_dir, "wrapped.safetensors"), {"G": DistributedDataParallel(nn.Linear(2, 2))}, {})
    except ValueError as e:
        seen["wrapped"] = str(e)
    distributed.barrier()
    return seen


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One process of a torchrun-like launch (the env torchrun would set), reporting to ``out_dir/rank<r>.json``."""
    torch.set_num_threads(1)
    env = {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()})
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        distributed.init(device_type="cpu")
        distributed.init(device_type="cpu")  # a second call is a no-op
        distributed.print0("hello from rank", distributed.get_rank())
    seen = {
        "rank": distributed.get_rank(),
        "world_size": distributed.get_world_size(),
        "is_main": distributed.is_main(),
        "device": str(distributed.device()),
        "backend": dist.get_backend(),
        "stdout": stdout.getvalue(),
        **_scenarios(rank, out_dir),
    }
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(tmp_path):
    context = mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120  # a collective mismatch would otherwise hang until gloo's 30-minute timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 120 s (a hung collective?)")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))

    assert (r0["rank"], r1["rank"], r0["world_size"], r1["world_size"]) == (0, 1, 2, 2)
    assert r0["is_main"] and not r1["is_main"]
    assert r0["device"] == r1["device"] == "cpu" and r0["backend"] == r1["backend"] == "gloo"
    assert r0["stdout"] == "hello from rank 0\n" and r1["stdout"] == ""

    assert not r0["initially_differs"] and r1["initially_differs"]
    for seen in (r0, r1):  # both ranks raise, so neither waits forever in the next collective
        assert seen["before_broadcast"] is not None
        assert all(name in seen["before_broadcast"] for name in ("lin.weight", "lin.bias", "low", "steps", "mask"))
    assert r1["equals_rank0"] and r0["equals_rank0"]
    assert r0["after_broadcast"] is None and r1["after_broadcast"] is None
    assert r0["same_nan"] is None and r1["same_nan"] is None
    for seen in (r0, r1):
        assert "lin.weight (on 1 rank(s))" in seen["diverged"] and "steps (on 1 rank(s))" in seen["diverged"]
        assert "lin.bias" not in seen["diverged"] and "mask" not in seen["diverged"]
        assert "names, shapes or dtypes differ" in seen["layout"]
        assert "'G' is wrapped (DistributedDataParallel)" in seen["wrapped"]
    assert not (tmp_path / "wrapped.safetensors").exists()


@pytest.fixture
def no_launcher(monkeypatch):
    for name in _TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_launcher(no_launcher, capsys):
    distributed.init(device_type="cpu")
    assert not dist.is_initialized()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.device() == torch.device("cpu")
    distributed.print0("only", "once")
    assert capsys.readouterr().out == "only once\n"

    module = _Net()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    distributed.broadcast_parameters(module)
    distributed.check_ddp_consistency(module)
    distributed.barrier()
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 and WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1234"}, "MASTER_ADDR is not set"),
    ],
)
def test_init_reports_bad_environment(no_launcher, env, message):
    for name, value in env.items():
        no_launcher.setenv(name, value)
    with pytest.raises(UserError, match=message):
        distributed.init(device_type="cpu")
    assert not dist.is_initialized()


def test_init_rejects_unknown_device_type(no_launcher):
    with pytest.raises(UserError, match="'tpu'"):
        distributed.init(device_type="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda"):
            distributed.init(device_type="cuda")
