"""Upsample, FIR-filter, downsample (``upfirdn2d``) and its resampling helpers, in pure PyTorch.

One call does, per channel of an NCHW tensor: insert ``up - 1`` zeros after every sample, pad (negative = crop),
convolve with a small FIR filter (a true convolution unless ``flip_filter``), keep every ``down``-th sample. Filters
come from ``setup_filter``: a 2-D [fh, fw] tensor, or a 1-D [n] tensor meaning the separable filter ``outer(f, f)``
applied as two 1-D passes. All steps are differentiable torch ops (any order of derivatives).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IntPair = int | Sequence[int]
Padding = int | Sequence[int]
_CPU = torch.device("cpu")


def _pair(value: IntPair, what: str) -> tuple[int, int]:
    """An int or (x, y) -> (x, y), each >= 1."""
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"upfirdn2d: {what} must be an int >= 1 or a pair (x, y) of them, got {value!r}")
    return pair


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """An int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1): pixels added left, right, top, bottom."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    pad = tuple(int(p) for p in padding)
    if len(pad) == 2:
        return pad[0], pad[0], pad[1], pad[1]
    if len(pad) != 4:
        raise ValueError(f"upfirdn2d: padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding!r}")
    return pad


def filter_size(f: Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter made by ``setup_filter``; (1, 1) for None."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"upfirdn2d: filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    return f.shape[-1], f.shape[0]


def setup_filter(
    f: Sequence[float] | Sequence[Sequence[float]] | Tensor | float | None,
    device: torch.device = _CPU,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> Tensor:
    """Make a float32 FIR filter for ``upfirdn2d``.

    Args:
        f: taps, 1-D [n] or 2-D [fh, fw]; a scalar or None means the identity filter [1].
        device: where the result lives.
        normalize: scale the (2-D equivalent) filter to sum 1.
        flip_filter: flip the taps (all axes).
        gain: overall gain of the 2-D filter; a separable 1-D filter carries sqrt(gain) per pass.
        separable: keep a 1-D filter 1-D; None = only when it has >= 8 taps (short filters are cheaper as 2-D).

    Returns:
        [n] (separable) or [fh, fw] float32 tensor.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: expected 1-D or 2-D taps, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError("setup_filter: separable=True needs 1-D taps")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _zero_insert(x: Tensor, upx: int, upy: int) -> Tensor:
    """[N, C, H, W] -> [N, C, H*upy, W*upx] with the input at multiples of up and zeros elsewhere."""
    n, c, h, w = x.shape
    if upx == 1 and upy == 1:
        return x
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    return x.reshape(n, c, h * upy, w * upx)


def _pad_or_crop(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Zero-pad the positive entries of (x0, x1, y0, y1) and crop the negative ones."""
    x = F.pad(x, [max(p, 0) for p in pad])
    x0, x1, y0, y1 = (max(-p, 0) for p in pad)
    return x[:, :, y0 : x.shape[2] - y1, x0 : x.shape[3] - x1]


def _depthwise(x: Tensor, taps: Tensor, stride: tuple[int, int]) -> Tensor:
    """Correlate every channel of x [N, C, H, W] with the same 2-D taps [kh, kw]; stride (sy, sx)."""
    channels = x.shape[1]
    weight = taps.to(x.dtype)[None, None].expand(channels, 1, *taps.shape)
    return F.conv2d(x, weight, stride=stride, groups=channels)


def upfirdn2d(
    x: Tensor,
    f: Tensor | None,
    up: IntPair = 1,
    down: IntPair = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> Tensor:
    """Upsample by zero insertion, pad, FIR-filter, downsample.

    Args:
        x: [N, C, H, W] input.
        f: filter from ``setup_filter``: [n] separable, [fh, fw] 2-D, or None (identity).
        up: upsampling factor, int or (x, y).
        down: downsampling factor, int or (x, y).
        padding: pixels added after upsampling, int, (x, y) or (x0, x1, y0, y1); negative values crop.
        flip_filter: False = true convolution (taps flipped), True = correlation.
        gain: overall gain of the filter.

    Returns:
        [N, C, H', W'] with W' = ceil((W*upx + x0 + x1 - fw + 1) / downx), likewise H'.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    filter_size(f)  # validates the filter's rank before any work
    x = _zero_insert(x, upx, upy)
    x = _pad_or_crop(x, parse_padding(padding))
    if f is None:
        if gain != 1:
            x = x * gain
        return x[:, :, ::downy, ::downx]
    taps = f * (gain ** (f.ndim / 2))
    if not flip_filter:
        taps = taps.flip(list(range(f.ndim)))
    if f.ndim == 2:
        return _depthwise(x, taps, stride=(downy, downx))
    x = _depthwise(x, taps[None, :], stride=(1, downx))
    return _depthwise(x, taps[:, None], stride=(downy, 1))


def filter2d(x: Tensor, f: Tensor | None, padding: Padding = 0, flip_filter: bool = False, gain: float = 1) -> Tensor:
    """FIR-filter x [N, C, H, W] keeping its size (plus ``padding``); f as in ``upfirdn2d``."""
    x0, x1, y0, y1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = (x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(
    x: Tensor, f: Tensor | None, up: IntPair = 2, padding: Padding = 0, flip_filter: bool = False, gain: float = 1
) -> Tensor:
    """Upsample x [N, C, H, W] to [N, C, H*upy, W*upx] (plus ``padding``) with interpolation filter f.

    The filter gain is multiplied by upx*upy so that the zero-inserted signal keeps its mean.
    """
    upx, upy = _pair(up, "up")
    x0, x1, y0, y1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = (x0 + (fw + upx - 1) // 2, x1 + (fw - upx) // 2, y0 + (fh + upy - 1) // 2, y1 + (fh - upy) // 2)
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(
    x: Tensor, f: Tensor | None, down: IntPair = 2, padding: Padding = 0, flip_filter: bool = False, gain: float = 1
) -> Tensor:
    """Low-pass x [N, C, H, W] with f and keep every down-th pixel: [N, C, H/downy, W/downx] (plus ``padding``)."""
    downx, downy = _pair(down, "down")
    x0, x1, y0, y1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = (x0 + (fw - downx + 1) // 2, x1 + (fw - downx) // 2, y0 + (fh - downy + 1) // 2, y1 + (fh - downy) // 2)
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain)
