"""Helpers for modules and tensors: shape checks, weight copying, a module summary table, deterministic seeding."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dnnlib import UserError


def assert_shape(tensor: Tensor, ref_shape: Sequence[int | None]) -> None:
    """Raise AssertionError unless ``tensor.shape`` matches ``ref_shape``; None entries match any size."""
    shape = tuple(tensor.shape)
    if len(shape) != len(ref_shape):
        raise AssertionError(f"wrong number of dimensions: got {len(shape)} {list(shape)}, expected {len(ref_shape)}")
    for axis, (size, ref) in enumerate(zip(shape, ref_shape, strict=True)):
        if ref is not None and size != ref:
            raise AssertionError(f"wrong size for dimension {axis}: got {size}, expected {ref} (shape {list(shape)})")


def named_params_and_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    """All parameters then all buffers of ``module``, with their state_dict-style dotted names."""
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module: nn.Module, dst_module: nn.Module, require_all: bool = False) -> None:
    """Copy every parameter/buffer of ``dst_module`` that ``src_module`` has under the same name (in place).

    Tensors only in ``src_module`` are ignored; tensors only in ``dst_module`` keep their values unless
    ``require_all``, which makes them an error. Shapes must agree. ``requires_grad`` of the destination is kept.
    """
    src = dict(named_params_and_buffers(src_module))
    missing = []
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in src:
            missing.append(name)
            continue
        if src[name].shape != tensor.shape:
            raise UserError(
                f"cannot copy '{name}': source has shape {list(src[name].shape)}, "
                f"destination expects {list(tensor.shape)}"
            )
        tensor.copy_(src[name])
    if require_all and missing:
        raise UserError(f"source module lacks {len(missing)} tensor(s) the destination needs: {missing}")


def _tensors_in(obj: Any) -> list[Tensor]:
    """The tensors inside a (nested) tuple/list/dict output, in order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors_in(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors_in(item)]
    return []


def _owner(tensor_name: str, max_nesting: int) -> str:
    """The listed module a tensor is counted under: its module path cut to ``max_nesting`` levels."""
    parts = tensor_name.split(".")[:-1]
    return ".".join(parts[:max_nesting])


def print_module_summary(module: nn.Module, inputs: Sequence[Any], max_nesting: int = 3) -> Any:
    """Run ``module(*inputs)`` once and print a table of its submodules; return the outputs.

    Rows are the submodules at most ``max_nesting`` levels deep, in definition order, with the parameters and buffers
    they own (including those of deeper, unlisted submodules; shared tensors count once), and the shape and dtype of
    each tensor they returned during the call ('-' when not called).
    """
    outputs_of: dict[nn.Module, Any] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _args, out: outputs_of.__setitem__(mod, out)) for m in module.modules()
    ]
    try:
        outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()

    params: dict[str, int] = {}
    buffers: dict[str, int] = {}
    for name, p in module.named_parameters():
        params[_owner(name, max_nesting)] = params.get(_owner(name, max_nesting), 0) + p.numel()
    for name, b in module.named_buffers():
        buffers[_owner(name, max_nesting)] = buffers.get(_owner(name, max_nesting), 0) + b.numel()

    rows = [["Module", "Parameters", "Buffers", "Output shape", "Datatype"]]
    for name, mod in module.named_modules():
        if name and name.count(".") >= max_nesting:
            continue
        tensors = _tensors_in(outputs_of[mod]) if mod in outputs_of else []
        shapes = ", ".join(str(list(t.shape)) for t in tensors) or "-"
        dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors})) or "-"
        label = name or f"<{type(module).__name__}>"
        rows.append([label, str(params.get(name, 0)), str(buffers.get(name, 0)), shapes, dtypes])
    rows.append(["Total", str(sum(params.values())), str(sum(buffers.values())), "", ""])

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = ["-" * w for w in widths]
    print()
    for row in [rows[0], rule, *rows[1:-1], rule, rows[-1]]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print()
    return outputs


def set_random_seed(*seeds: int) -> None:
    """Reseed python's ``random``, numpy and torch (all devices) from a tuple of ints, e.g. (seed, rank, cur_nimg).

    The tuple is hashed, so nearby tuples give unrelated streams and (1, 23) differs from (12, 3).
    """
    if not seeds:
        raise ValueError("set_random_seed needs at least one seed")
    digest = hashlib.sha256(repr(tuple(int(s) for s in seeds)).encode()).digest()
    seed = int.from_bytes(digest[:8], "little")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
