"""StyleGAN2 discriminator: residual/skip/plain blocks, minibatch standard deviation, projection-conditioned epilogue.

Conventions: input images are float NCHW in [-1, 1] with ``img_channels`` channels (3 for RGB; the dual/tri variants
for 3D-aware GANs stack image, upsampled raw image and mask into one tensor); labels c are [N, c_dim] float (the
25-float camera label for 3D heads). Output logits are [N, 1].
Parameter and buffer names, shapes and stored values follow stylegan2-ada-pytorch / EG3D (raw weights, run-time
equalised-lr gains) so their discriminator weights load by name. Mixed precision as in ``stylegan2.py``: float16 only
for the highest-resolution blocks and only on CUDA; the epilogue always runs in the parameters' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dnnlib import UserError
from torch_utils import misc
from torch_utils.ops import upfirdn2d
from training.networks.stylegan2 import (
    Conv2dLayer,
    FullyConnectedLayer,
    MappingNetwork,
    block_dtype,
    channels_per_resolution,
    check_architecture,
    resample_filter_buffer,
)


class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the discriminator: [fromrgb] -> conv0 (3x3) -> conv1 (3x3, 2x down) [+ 1x1 down shortcut].

    ``in_channels == 0`` marks the first (highest-resolution) block, which reads the image through ``fromrgb``.
    Architectures: 'orig' (plain), 'skip' (every block also reads a downsampled copy of the image), 'resnet' (a
    1x1 downsampling shortcut, both branches scaled by sqrt(1/2)). Layers are numbered from ``first_layer_idx`` in the
    order fromrgb, conv0, conv1, skip; those numbered below ``freeze_layers`` are frozen (Freeze-D: stored as buffers).
    """

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 first_layer_idx: int, architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter: Sequence[int] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 use_fp16: bool = False, freeze_layers: int = 0):
        super().__init__()
        check_architecture(architecture)
        self.in_channels, self.tmp_channels, self.out_channels = in_channels, tmp_channels, out_channels
        self.resolution, self.img_channels, self.first_layer_idx = resolution, img_channels, first_layer_idx
        self.architecture, self.use_fp16 = architecture, use_fp16
        self.register_buffer("resample_filter", resample_filter_buffer(resample_filter))
        self.num_layers = 0

        def trainable() -> bool:
            """Whether the next layer (in construction order) is trained; advances the layer count."""
            self.num_layers += 1
            return first_layer_idx + self.num_layers - 1 >= freeze_layers

        conv_kwargs = dict(activation=activation, conv_clamp=conv_clamp)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable(), **conv_kwargs)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable(), **conv_kwargs)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, resample_filter=resample_filter,
                                 trainable=trainable(), **conv_kwargs)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    resample_filter=resample_filter, trainable=trainable())

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None,
                force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [N, in_channels, res, res] (None for the first block); img: [N, img_channels, res, res] or None.

        Returns (features [N, out_channels, res/2, res/2], img at res/2 for 'skip', else None).
        """
        dtype = block_dtype(self.use_fp16, force_fp32, self.conv0.weight)
        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype)
        if self.in_channels == 0 or self.architecture == "skip":
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype)
            y = self.fromrgb(img)
            x = y if x is None else x + y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            shortcut = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            x = shortcut + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class MinibatchStdLayer(torch.nn.Module):
    """Appends ``num_channels`` feature maps holding the standard deviation of features across a sample group.

    Sample i belongs to group i mod (N / G) with G = min(group_size, N) (all N when group_size is None); the
    channels are split into ``num_channels`` slices, and each slice's std over its group, averaged over the slice's
    channels and all pixels, becomes one constant extra channel.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W] -> [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        group = n if self.group_size is None else min(self.group_size, n)
        if n % group or c % self.num_channels:
            raise UserError(f"minibatch std: the per-device batch ({n}) must be divisible by mbstd group size "
                            f"({group}) and channels ({c}) by mbstd_num_channels ({self.num_channels})")
        y = x.reshape(group, n // group, self.num_channels, c // self.num_channels, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [n/G, F, C/F, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(n // group, self.num_channels, 1, 1)
        return torch.cat([x, y.repeat(group, 1, h, w)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head: [fromrgb] -> minibatch std -> conv 3x3 -> fc -> out, then projection with the label embedding.

    With ``cmap_dim > 0`` the ``out`` layer has cmap_dim outputs and logit = sum(out * cmap) / sqrt(cmap_dim).
    """

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 activation: str = "lrelu", conv_clamp: float | None = None):
        super().__init__()
        check_architecture(architecture)
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        """x: [N, in_channels, 4, 4]; img: [N, img_channels, 4, 4] ('skip' only); cmap: [N, cmap_dim] or None.

        Returns logits [N, 1] in the parameters' dtype.
        """
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        dtype = self.conv.weight.dtype
        x = x.to(dtype)
        if self.architecture == "skip":
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = x + self.fromrgb(img.to(dtype))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, cmap_dim={self.cmap_dim}"


class Discriminator(torch.nn.Module):
    """Image discriminator D(img, c) -> logits [N, 1]: blocks bR ... b8, a label mapping network, the b4 epilogue.

    Conditioning (c_dim > 0) is by projection: ``mapping`` embeds c into cmap [N, cmap_dim] (cmap_dim defaults to
    the 4x4 channel count). Dual/tri variants subclass this and assemble their multi-channel input in ``forward``.
    ``block_kwargs`` go to every DiscriminatorBlock (e.g. freeze_layers), ``mapping_kwargs`` to the MappingNetwork
    (8 layers, lr multiplier 0.01 by default), ``epilogue_kwargs`` to the epilogue (e.g. mbstd_group_size).
    Defaults num_fp16_res=4 and conv_clamp=256 are the EG3D / PanoHead discriminator settings.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 4,
                 conv_clamp: float | None = 256, cmap_dim: int | None = None, block_kwargs: dict | None = None,
                 mapping_kwargs: dict | None = None, epilogue_kwargs: dict | None = None):
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise UserError(f"Discriminator img_resolution must be a power of two >= 8, got {img_resolution}")
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        log2_res = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(log2_res, 2, -1)]
        channels = channels_per_resolution(self.block_resolutions + [4], channel_base, channel_max)
        fp16_resolution = max(2 ** (log2_res + 1 - num_fp16_res), 8)
        self.cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)

        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       res, img_channels, first_layer_idx=layer_idx, architecture=architecture,
                                       use_fp16=(res >= fp16_resolution), conv_clamp=conv_clamp,
                                       **(block_kwargs or {}))
            self.add_module(f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=self.cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], self.cmap_dim, resolution=4, img_channels=img_channels,
                                        architecture=architecture, conv_clamp=conv_clamp, **(epilogue_kwargs or {}))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None, force_fp32: bool = False) -> torch.Tensor:
        """img: [N, img_channels, R, R] in [-1, 1]; c: [N, c_dim] (ignored when c_dim == 0) -> logits [N, 1]."""
        misc.assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution])
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
