"""2-D convolution fused with FIR upsampling / downsampling (StyleGAN2 semantics), in pure PyTorch.

Meaning of one call, per sample (``fw, fh`` the filter size, ``kw, kh`` the kernel size):

1. insert ``up - 1`` zeros after every input pixel (``up > 1``);
2. pad by ``padding`` plus the amount that centres the filter(s): ``(fw + up - 1) // 2`` / ``(fw - up) // 2`` on the
   left / right for ``up > 1``, and ``(fw - down + 1) // 2`` / ``(fw - down) // 2`` for ``down > 1`` (likewise in y);
3. FIR-filter with f times up**2 (``up > 1``);
4. convolve with w: correlation like ``F.conv2d`` when ``flip_weight``, true convolution otherwise (the StyleGAN2
   layers pass ``flip_weight=(up == 1)``, which makes stored weights behave the same with and without upsampling);
5. FIR-filter with f and keep every down-th pixel (``down > 1``).

The implementation takes cheaper equivalent routes (transposed convolution for upsampling, strided convolution for
downsampling, 1x1 kernels commuted with resampling); all of them are plain torch ops, so derivatives of any order work.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from torch_utils.ops import upfirdn2d
from torch_utils.ops.upfirdn2d import Padding


def _conv(
    x: Tensor, w: Tensor, stride: int = 1, padding: tuple[int, int] = (0, 0), groups: int = 1, flip_weight: bool = True
) -> Tensor:
    """F.conv2d (correlation) or, with flip_weight=False, a true convolution; padding (py, px)."""
    if not flip_weight:
        w = w.flip([2, 3])
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _conv_transpose_up(
    x: Tensor, w: Tensor, up: int, groups: int, flip_weight: bool, pad: tuple[int, int, int, int]
) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Steps 1, 2 and 4 of the module docstring as one strided transposed convolution (the full convolution).

    ``pad`` is the total (x0, x1, y0, y1) padding of step 2. Returns the result and the padding still to apply before
    the FIR filter, which commutes with the convolution.
    """
    out_channels, in_per_group, kh, kw = w.shape
    # conv_transpose2d wants [in, out / groups, kh, kw] and correlates with the flipped kernel.
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    if flip_weight:
        w = w.flip([2, 3])
    # The full transposed convolution already covers padding (kw - 1, kw - up) of the zero-inserted input.
    rest = (pad[0] - (kw - 1), pad[1] - (kw - up), pad[2] - (kh - 1), pad[3] - (kh - up))
    crop_x = max(min(-rest[0], -rest[1]), 0)
    crop_y = max(min(-rest[2], -rest[3]), 0)
    x = F.conv_transpose2d(x, w, stride=up, padding=(crop_y, crop_x), groups=groups)
    return x, (rest[0] + crop_x, rest[1] + crop_x, rest[2] + crop_y, rest[3] + crop_y)


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    f: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> Tensor:
    """Convolve x with w, optionally upsampling before or downsampling after (see the module docstring).

    Args:
        x: [N, C_in, H, W] input.
        w: [C_out, C_in / groups, kh, kw] weight (already scaled by any equalised-lr gain).
        f: FIR filter from ``upfirdn2d.setup_filter`` ([n] separable or [fh, fw]); None = identity.
        up: integer upsampling factor (>= 1).
        down: integer downsampling factor (>= 1).
        padding: extra padding of the (upsampled) input, int, (x, y) or (x0, x1, y0, y1); negative crops.
        groups: grouped convolution (the fused modulated convolution uses one group per sample).
        flip_weight: True = correlation (as F.conv2d), False = true convolution.
        flip_filter: True = correlate with f instead of convolving.

    Returns:
        [N, C_out, H', W']; with padding = kw // 2 and an odd kernel, H' = H * up / down.
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample: x and w must be 4-D, got {tuple(x.shape)} and {tuple(w.shape)}")
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise ValueError(f"conv2d_resample: up and down must be ints >= 1, got {up!r}, {down!r}")
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups != 0:
        raise ValueError(f"conv2d_resample: x {tuple(x.shape)} and w {tuple(w.shape)} do not fit groups={groups}")
    kh, kw = w.shape[2:]
    fw, fh = upfirdn2d.filter_size(f)
    x0, x1, y0, y1 = upfirdn2d.parse_padding(padding)
    if up > 1:
        x0, x1, y0, y1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    pad = (x0, x1, y0, y1)
    pointwise = kw == 1 and kh == 1

    if up > 1:
        if pointwise and down == 1:
            x = _conv(x, w, groups=groups, flip_weight=flip_weight)
            return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=up**2)
        x, rest = _conv_transpose_up(x, w, up, groups, flip_weight, pad)
        x = upfirdn2d.upfirdn2d(x, f, padding=rest, flip_filter=flip_filter, gain=up**2)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if down > 1:
        if pointwise:
            x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
            return _conv(x, w, groups=groups, flip_weight=flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if x0 == x1 and y0 == y1 and x0 >= 0 and y0 >= 0:
        return _conv(x, w, padding=(y0, x0), groups=groups, flip_weight=flip_weight)
    x = upfirdn2d.upfirdn2d(x, None, padding=pad)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
