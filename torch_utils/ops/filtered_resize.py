"""Resizing of image batches with anti-aliasing, as the dual discriminator needs for the raw (low-resolution) image."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dnnlib import UserError
from torch_utils.ops import upfirdn2d

RESIZE_MODES = ("antialiased", "classic", "none")


def filtered_resize(x: Tensor, size: int, mode: str = "antialiased", f: Tensor | None = None) -> Tensor:
    """Resize x [N, C, H, W] to [N, C, size, size].

    Modes:
        'antialiased': bilinear with ``antialias=True`` (a triangle filter widened by the downscaling factor);
        'classic': FIR 2x upsampling with f, bilinear to 2*size+2, FIR 2x downsampling with f cropping one pixel per
            side (the older EG3D scheme; its zero padding darkens the outermost one or two pixels);
        'none': plain bilinear (aliases when downscaling).
    f: filter from ``upfirdn2d.setup_filter``, used by 'classic' only; None = [1, 3, 3, 1].
    """
    if mode == "antialiased":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if mode == "none":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if mode == "classic":
        if f is None:
            f = upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device)
        x = upfirdn2d.upsample2d(x, f, up=2)
        x = F.interpolate(x, size=(2 * size + 2, 2 * size + 2), mode="bilinear", align_corners=False)
        return upfirdn2d.downsample2d(x, f, down=2, flip_filter=True, padding=-1)
    raise UserError(f"filtered_resize: mode '{mode}' is unknown; expected one of {list(RESIZE_MODES)}")
