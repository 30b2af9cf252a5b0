"""Bias add, pointwise activation, gain and clamp in one call (pure PyTorch).

The StyleGAN2 layers store raw weights and apply their gains at run time; every layer ends in ``bias_act``, whose
default gain per activation keeps the output variance near 1 for unit-variance input (e.g. sqrt(2) for ReLU-like
activations). Everything is composed of differentiable torch ops, so first and second derivatives (R1 penalty) work on
any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dnnlib import UserError


class ActivationSpec(NamedTuple):
    """One entry of ``activation_funcs``: ``func(x, alpha)`` and the defaults used when alpha/gain are not given."""

    func: Callable[[Tensor, float], Tensor]
    def_alpha: float | None  # None = the activation has no alpha parameter
    def_gain: float


activation_funcs: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, _: x, None, 1.0),
    "relu": ActivationSpec(lambda x, _: F.relu(x), None, math.sqrt(2)),
    "lrelu": ActivationSpec(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2)),
    "tanh": ActivationSpec(lambda x, _: torch.tanh(x), None, 1.0),
    "sigmoid": ActivationSpec(lambda x, _: torch.sigmoid(x), None, 1.0),
    "elu": ActivationSpec(lambda x, alpha: F.elu(x, alpha), 1.0, 1.0),
    "selu": ActivationSpec(lambda x, _: F.selu(x), None, 1.0),
    "softplus": ActivationSpec(lambda x, _: F.softplus(x), None, 1.0),
    "swish": ActivationSpec(lambda x, _: torch.sigmoid(x) * x, None, math.sqrt(2)),
}


def _spec(act: str) -> ActivationSpec:
    if act not in activation_funcs:
        raise UserError(f"activation '{act}' is unknown; expected one of {sorted(activation_funcs)}")
    return activation_funcs[act]


def default_gain(act: str) -> float:
    """The gain ``bias_act`` applies for ``act`` when no gain is given (1 for linear, sqrt(2) for relu/lrelu/swish)."""
    return _spec(act).def_gain


def bias_act(
    x: Tensor,
    b: Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> Tensor:
    """Return ``clamp(act(x + b, alpha) * gain, -clamp, clamp)``.

    Args:
        x: input of any shape, e.g. [N, C, H, W] or [N, C].
        b: bias [x.shape[dim]], broadcast along every other axis; None = no bias.
        dim: the axis of ``x`` that ``b`` runs along.
        act: a key of ``activation_funcs``.
        alpha: activation parameter (lrelu slope, elu scale); None = the activation's default.
        gain: output multiplier; None = ``default_gain(act)``.
        clamp: when not None, the output is clamped to [-clamp, clamp] (clamp >= 0).
    """
    spec = _spec(act)
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias shape {tuple(b.shape)} does not match x.shape[{dim}] = {x.shape[dim]}")
        x = x + b.reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    alpha = spec.def_alpha if alpha is None else float(alpha)
    gain = spec.def_gain if gain is None else float(gain)
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        if clamp < 0:
            raise ValueError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
        x = x.clamp(-clamp, clamp)
    return x
