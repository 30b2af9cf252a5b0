"""Super-resolution of the neural rendering (EG3D's "hybrid" 2-D upsampler), conditioned on the last w only.

Structure. The raw RGB [B, 3, r, r] and the feature image [B, C, r, r] are first bilinearly resized (antialiased when
shrinking) to the *working resolution* ``out_resolution / 2**up_blocks`` whenever r differs from it, then two
StyleGAN2 synthesis blocks with skip ToRGBs add detail on top of the (FIR-upsampled) RGB:

- ``up_blocks=1`` (EG3D ``SuperresolutionHybrid2X`` at 128², ``Hybrid4X`` at 256²): ``block0`` keeps the working
  resolution (two 3×3 modulated convolutions without upsampling, its ToRGB added to the input RGB), ``block1``
  upsamples 2×. EG3D channels (128, 64).
- ``up_blocks=2`` (EG3D ``SuperresolutionHybrid8XDC`` at 512², used by EG3D FFHQ and PanoHead): both blocks upsample
  2×. EG3D channels (256, 128).

So the overall factor out/r (2×, 4×, 8×) is a fixed bilinear step plus a learned 2× or 4×; e.g. PanoHead renders 64²,
resizes to 128², and learns 128² → 512². The input resolution is whatever the caller renders (the neural-rendering
resolution is scheduled, e.g. 64 → 128 through non-powers of two), so it is not a constructor argument.

Latents: every layer reads the LAST w of the foreground ws (``ws[:, -1]``, EG3D repeats it three times per block).
Noise: ``noise_mode`` defaults to 'none' (EG3D's ``superresolution_noise_mode``). Precision: ``use_fp16`` runs both
blocks in float16 on CUDA with activations clamped to ±256 (EG3D ``sr_num_fp16_res > 0``); the clamp applies on every
device, as in EG3D.

State-dict names match EG3D's module for the same layout, so its weights load by name with ``strict=True``:
``block0.*`` / ``block1.*`` (``resample_filter``, ``conv0.*``, ``conv1.*``, ``torgb.*`` with EG3D's shapes, e.g. 8XDC
``block0.conv0.weight`` [256, 32, 3, 3], ``block0.conv0.noise_const`` [256, 256]) and, for ``up_blocks=1``, the
top-level ``resample_filter`` of Hybrid2X/4X. EG3D's ``SuperresolutionHybrid8X`` (``up_blocks=2`` with channels
(128, 64)) differs only by that top-level buffer, which no released model uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dnnlib import UserError
from torch_utils import misc
from training.networks.stylegan2 import SynthesisBlock, SynthesisLayer, ToRGBLayer, resample_filter_buffer

_FP16_CLAMP = 256.0  # activation clamp used together with float16 (EG3D)
_TAPS = (1, 3, 3, 1)


class SynthesisBlockNoUp(torch.nn.Module):
    """Synthesis block at a fixed resolution: conv0 (3×3, no upsampling) → conv1 → ToRGB added to the input image.

    x: [B, in_channels, res, res], img: [B, 3, res, res]; ws: [B, 3, w_dim] (conv0, conv1, torgb).
    The block-level ``resample_filter`` buffer is not read (nothing is resampled); it is registered because EG3D's
    SynthesisBlockNoUp has it, so that EG3D checkpoints load by name.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int = 3,
                 conv_clamp: float | None = None, use_fp16: bool = False,
                 fused_modconv_default: bool | str = "inference_only"):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.resolution = in_channels, out_channels, w_dim, resolution
        self.use_fp16, self.fused_modconv_default = use_fp16, fused_modconv_default
        self.register_buffer("resample_filter", resample_filter_buffer(_TAPS))
        self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)

    def forward(self, x: torch.Tensor, img: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none",
                fused_modconv: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (features [B, out_channels, res, res], img + ToRGB(features) [B, 3, res, res] in float32)."""
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        misc.assert_shape(ws, [None, 3, self.w_dim])
        if fused_modconv is None:
            fused = self.fused_modconv_default
            fused_modconv = (not self.training) if fused == "inference_only" else fused
        on_cuda = x.device.type == "cuda"
        x = x.to(torch.float16 if self.use_fp16 and on_cuda else self.conv1.weight.dtype)
        w0, w1, w2 = ws.unbind(dim=1)
        x = self.conv0(x, w0, noise_mode=noise_mode, fused_modconv=fused_modconv)
        x = self.conv1(x, w1, noise_mode=noise_mode, fused_modconv=fused_modconv)
        y = self.torgb(x, w2, fused_modconv=fused_modconv).to(img.dtype)
        return x, img + y


class SuperResolution(torch.nn.Module):
    """Feature image + raw RGB at any resolution → RGB [B, 3, out_resolution, out_resolution] (see module docstring).

    Args:
        in_channels: feature channels of the rendered image (32 in EG3D/PanoHead).
        out_resolution: output side (a power of two, e.g. 128, 256, 512).
        w_dim: latent width.
        up_blocks: 1 (no-upsampling block then a 2× block) or 2 (two 2× blocks).
        channels: feature channels of (block0, block1).
        use_fp16: float16 blocks on CUDA with the ±256 activation clamp.
        antialias: antialiased bilinear resizing of the inputs when they are larger than the working resolution.
    """

    def __init__(self, in_channels: int = 32, out_resolution: int = 512, w_dim: int = 512, up_blocks: int = 2,
                 channels: tuple[int, int] = (256, 128), use_fp16: bool = False, antialias: bool = True):
        super().__init__()
        if up_blocks not in (1, 2):
            raise UserError(f"SuperResolution: up_blocks must be 1 or 2, got {up_blocks}")
        work = out_resolution >> up_blocks
        if out_resolution & (out_resolution - 1) or work < 4:
            raise UserError(f"SuperResolution: out_resolution must be a power of two >= {4 << up_blocks} for "
                            f"up_blocks={up_blocks}, got {out_resolution}")
        if len(channels) != 2 or min(channels) < 1:
            raise UserError(f"SuperResolution: channels must be two positive ints, got {channels}")
        self.in_channels, self.out_resolution, self.w_dim = in_channels, out_resolution, w_dim
        self.up_blocks, self.working_resolution, self.antialias = up_blocks, work, antialias
        clamp = _FP16_CLAMP if use_fp16 else None
        c0, c1 = channels
        if up_blocks == 1:
            self.block0 = SynthesisBlockNoUp(in_channels, c0, w_dim, work, conv_clamp=clamp, use_fp16=use_fp16)
        else:
            self.block0 = SynthesisBlock(in_channels, c0, w_dim, work * 2, img_channels=3, is_last=False,
                                         architecture="skip", conv_clamp=clamp, use_fp16=use_fp16)
        self.block1 = SynthesisBlock(c0, c1, w_dim, out_resolution, img_channels=3, is_last=True,
                                     architecture="skip", conv_clamp=clamp, use_fp16=use_fp16)
        if up_blocks == 1:
            # Not read by forward (nor by EG3D's); registered so that EG3D Hybrid2X/4X state dicts load by name.
            self.register_buffer("resample_filter", resample_filter_buffer(_TAPS))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none",
                fused_modconv: bool | None = None) -> torch.Tensor:
        """Upsample a neural rendering.

        Args:
            rgb: [B, 3, r, r] raw image (nominally [-1, 1]).
            x: [B, in_channels, r, r] feature image the raw image came from.
            ws: [B, n, w_dim] foreground ws; only ``ws[:, -1]`` is used.
            noise_mode: 'none' (default), 'const' or 'random' per-pixel noise in the synthesis layers.
        Returns:
            [B, 3, out_resolution, out_resolution] in the parameters' dtype.
        """
        misc.assert_shape(x, [None, self.in_channels, None, None])
        misc.assert_shape(rgb, [x.shape[0], 3, x.shape[2], x.shape[3]])
        misc.assert_shape(ws, [x.shape[0], None, self.w_dim])
        ws = ws[:, -1:].expand(-1, 3, -1)
        size = self.working_resolution
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=self.antialias)
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=self.antialias)
        rgb = rgb.to(self.block1.conv1.weight.dtype)
        x, rgb = self.block0(x, rgb, ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        x, rgb = self.block1(x, rgb, ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return rgb
