"""Process-group helpers: one code path for a plain single process and for ``torchrun`` (one process per device).

``init()`` reads the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without
it, or with WORLD_SIZE=1, there is no process group: rank 0 of a world of 1, and every collective here is a no-op.
With several processes the backend is NCCL when the processes run on CUDA devices and gloo on CPU. Rank 0 owns all
I/O (``print0``, snapshots); parameters are compared across ranks with ``check_ddp_consistency`` at each checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dnnlib import UserError
from torch_utils.misc import named_params_and_buffers

_device_type: str | None = None  # 'cuda' or 'cpu' once init() has run; None = not decided yet


def _env_int(name: str, default: int) -> int:
    """An integer environment variable, with a UserError naming it when it is not one."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None


def init(device_type: str | None = None) -> None:
    """Join the process group that ``torchrun`` describes in the environment, or stay a single process.

    ``device_type``: 'cuda' or 'cpu' for the processes' devices; None picks 'cuda' when available. CUDA processes use
    NCCL and device ``cuda:LOCAL_RANK``; CPU processes use gloo. Calling it again is a no-op.
    """
    global _device_type
    if device_type not in (None, "cuda", "cpu"):
        raise UserError(f"device type {device_type!r} is not supported; expected 'cuda', 'cpu' or None (automatic)")
    if dist.is_available() and dist.is_initialized():
        return
    _device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"environment: RANK={rank} and WORLD_SIZE={world_size} need 0 <= RANK < WORLD_SIZE")
    if _device_type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device type 'cuda' was requested but torch.cuda.is_available() is False")
        if not 0 <= local_rank < torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(local_rank)
    if world_size == 1:
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set; launch with torchrun")
    if not dist.is_available():
        raise UserError(f"WORLD_SIZE={world_size} but this PyTorch build has no torch.distributed support")
    backend = "nccl" if _device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if _initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that logs and writes files."""
    return get_rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only; the other ranks stay silent."""
    if is_main():
        print(*args, **kwargs)


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA processes, else the CPU (decided by ``init``)."""
    device_type = _device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process reaches this point (no-op without a process group)."""
    if not _initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where tensors must live for the backend's collectives."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _from_rank0(tensor: Tensor) -> Tensor:
    """Rank 0's copy of ``tensor`` (same shape and dtype) on the communication device; bools travel as uint8."""
    buf = tensor.detach().to(_comm_device(), copy=True).contiguous()
    if buf.dtype == torch.bool:
        wire = buf.to(torch.uint8)
        dist.broadcast(wire, src=0)
        return wire.to(torch.bool)
    dist.broadcast(buf, src=0)
    return buf


def _check_same_layout(named: list[tuple[str, Tensor]]) -> None:
    """Raise on every rank unless all ranks hold tensors with the same names, shapes and dtypes in the same order."""
    layout = repr([(name, tuple(t.shape), str(t.dtype)) for name, t in named]).encode()
    digest = int.from_bytes(hashlib.sha256(layout).digest()[:7], "little")  # 56 bits: exact in int64
    mine = torch.tensor([digest], dtype=torch.int64, device=_comm_device())
    ranks_differing = (mine != _from_rank0(mine)).to(torch.int64)
    dist.all_reduce(ranks_differing)
    if int(ranks_differing.item()) > 0:
        raise RuntimeError(
            f"check_ddp_consistency: {int(ranks_differing.item())} rank(s) hold modules whose parameter/buffer "
            f"names, shapes or dtypes differ from rank 0"
        )


@torch.no_grad()
def check_ddp_consistency(module: nn.Module) -> None:
    """Raise RuntimeError on every rank if any parameter or buffer of ``module`` differs from rank 0's copy.

    Values must be bit-identical; NaNs at the same positions count as equal. The message names the differing tensors.
    A no-op without a process group. Every rank must call it (it is a collective).
    """
    if not _initialized():
        return
    named = named_params_and_buffers(module)
    _check_same_layout(named)
    differs = torch.zeros(len(named), dtype=torch.int64, device=_comm_device())
    for index, (_, tensor) in enumerate(named):
        mine = tensor.detach().to(_comm_device())
        reference = _from_rank0(tensor)
        unequal = mine != reference
        if mine.is_floating_point() or mine.is_complex():
            unequal &= ~(mine.isnan() & reference.isnan())
        differs[index] = unequal.any()
    dist.all_reduce(differs)
    bad = [
        f"{name} (on {int(count)} rank(s))" for (name, _), count in zip(named, differs.tolist(), strict=True) if count
    ]
    if bad:
        raise RuntimeError(f"check_ddp_consistency: parameters/buffers differ from rank 0: {', '.join(bad)}")


@torch.no_grad()
def broadcast_parameters(module: nn.Module) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank 0's values, in place (no-op without a group)."""
    if not _initialized():
        return
    named = named_params_and_buffers(module)
    _check_same_layout(named)
    for _, tensor in named:
        tensor.copy_(_from_rank0(tensor))
