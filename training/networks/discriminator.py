"""StyleGAN2 discriminator: residual/skip/plain blocks, minibatch standard deviation, projection-conditioned epilogue,
progressive growing (``Discriminator.grow``), and ``HeadDiscriminator``, which reads a generator's output dict
(image only, dual: + raw image, tri: + raw image + mask).

Conventions: input images are float NCHW in [-1, 1] with ``img_channels`` channels (3 for RGB; the dual/tri variants
stack image, upsampled raw image and mask mapped to [-1, 1] into one tensor); masks arrive as N1HW in [0, 1]; labels
c are [N, c_dim] float (the 25-float camera label for 3D heads). Output logits are [N, 1].
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
from torch_utils.ops.filtered_resize import RESIZE_MODES, filtered_resize
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


def _check_resolution(resolution: int) -> None:
    """Raise a UserError unless the discriminator input resolution is a power of two >= 8."""
    if resolution < 8 or resolution & (resolution - 1):
        raise UserError(f"Discriminator img_resolution must be a power of two >= 8, got {resolution}")


def _block_resolutions(img_resolution: int) -> list[int]:
    """Resolutions of the blocks in front of the 4x4 epilogue, highest first: [R, R/2, ..., 8]."""
    return [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]


class Discriminator(torch.nn.Module):
    """Image discriminator D(img, c) -> logits [N, 1]: blocks bR ... b8, a label mapping network, the b4 epilogue.

    Conditioning (c_dim > 0) is by projection: ``mapping`` embeds c into cmap [N, cmap_dim] (cmap_dim defaults to
    the 4x4 channel count). ``HeadDiscriminator`` (below) assembles its multi-channel input from a generator's output
    dict. ``block_kwargs`` go to every DiscriminatorBlock (e.g. freeze_layers), ``mapping_kwargs`` to the
    MappingNetwork (8 layers, lr multiplier 0.01 by default), ``epilogue_kwargs`` to the epilogue (e.g.
    mbstd_group_size). Defaults num_fp16_res=4 and conv_clamp=256 are the EG3D / PanoHead discriminator settings.

    Progressive growing (GGHead §4; the fade-in of ProGAN): ``grow(R')`` adds blocks b{R'} ... b{2R} in front, built as
    in a discriminator constructed at R'. The old first block b{R} keeps its ``fromrgb`` during the fade, and the
    0-d buffer ``blend`` (0 after ``grow``; the training schedule sets it with ``set_blend``) mixes its input::

        input of b{R} = blend * (features of the new blocks) + (1 - blend) * b{R}.fromrgb(resize(img, R))

    where resize is ``filtered_resize(mode='antialiased')`` (for 2x, the [1, 3, 3, 1] / 8 filter, renormalised at the
    borders). Blend 0 gives the old discriminator on the resized image, blend 1 a discriminator built at R'. While
    fading, the state dict is that of a discriminator built at R' plus ``blend`` and ``b{R}.fromrgb.*``;
    ``end_fade()`` (at blend 1) removes those, and the constructor argument ``fade_resolution=R`` rebuilds a fading
    discriminator, e.g. to resume from a snapshot taken mid-fade. New blocks get the ordinary initialisation: the
    interpolation is continuous at blend 0 whatever their weights. GGHead instead builds its new blocks with the 'skip'
    architecture and a zeroed conv1 and adds blend * (new features) to the old fromrgb output, so its old input layer
    stays in use for good and its grown discriminator differs from one built at the new resolution; ours ends equal.
    Growing supports the 'resnet' and 'orig' architectures without Freeze-D.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 4,
                 conv_clamp: float | None = 256, cmap_dim: int | None = None, block_kwargs: dict | None = None,
                 mapping_kwargs: dict | None = None, epilogue_kwargs: dict | None = None,
                 fade_resolution: int | None = None):
        super().__init__()
        _check_resolution(img_resolution)
        check_architecture(architecture)
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.architecture, self.channel_base, self.channel_max = architecture, channel_base, channel_max
        self.num_fp16_res, self.conv_clamp, self.block_kwargs = num_fp16_res, conv_clamp, dict(block_kwargs or {})
        self.block_resolutions = _block_resolutions(img_resolution)
        self.fade_resolution: int | None = None
        channels_4x4 = channels_per_resolution([4], channel_base, channel_max)[4]
        self.cmap_dim = 0 if c_dim == 0 else (channels_4x4 if cmap_dim is None else cmap_dim)
        if fade_resolution is not None:
            self._check_growable("Discriminator fade_resolution", fade_resolution, img_resolution)

        layer_idx = 0
        for res in self.block_resolutions:
            block = self._new_block(res, layer_idx, reads_image=res in (img_resolution, fade_resolution))
            self.add_module(f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=self.cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels_4x4, self.cmap_dim, resolution=4, img_channels=img_channels,
                                        architecture=architecture, conv_clamp=conv_clamp, **(epilogue_kwargs or {}))
        if fade_resolution is not None:
            self._begin_fade(fade_resolution)

    def _fp16_resolution(self) -> int:
        """Lowest resolution whose block may run in float16 (the ``num_fp16_res`` highest ones)."""
        return max(2 ** (int(math.log2(self.img_resolution)) + 1 - self.num_fp16_res), 8)

    def _new_block(self, res: int, first_layer_idx: int, reads_image: bool) -> DiscriminatorBlock:
        """Block b{res} of a discriminator at ``self.img_resolution``; ``reads_image`` makes it an input block."""
        channels = channels_per_resolution([res, res // 2], self.channel_base, self.channel_max)
        return DiscriminatorBlock(0 if reads_image else channels[res], channels[res], channels[res // 2], res,
                                  self.img_channels, first_layer_idx=first_layer_idx, architecture=self.architecture,
                                  use_fp16=(res >= self._fp16_resolution()), conv_clamp=self.conv_clamp,
                                  **self.block_kwargs)

    def _check_growable(self, what: str, low: int, high: int) -> None:
        """Growing from ``low`` to ``high`` needs powers of two 8 <= low < high, 'resnet' or 'orig', no Freeze-D."""
        if low < 8 or high <= low or low & (low - 1) or high & (high - 1):
            raise UserError(f"{what}: growing needs powers of two 8 <= from < to, got from {low} to {high}")
        if self.architecture not in ("resnet", "orig"):
            raise UserError(f"{what}: progressive growing supports architecture 'resnet' or 'orig', "
                            f"not '{self.architecture}'")
        if self.block_kwargs.get("freeze_layers", 0) > 0:
            raise UserError(f"{what}: progressive growing cannot be combined with Freeze-D (freeze_layers > 0)")

    def _begin_fade(self, old_resolution: int) -> None:
        """Turn input block b{old_resolution} into an inner block that keeps its fromrgb for the faded path."""
        block = getattr(self, f"b{old_resolution}")
        block.in_channels = block.tmp_channels
        self.fade_resolution = old_resolution
        weight = block.conv0.weight
        self.register_buffer("blend", torch.zeros([], dtype=weight.dtype, device=weight.device))

    def _renumber_blocks(self) -> None:
        """Restore the constructor's child order (blocks highest first, mapping, b4) and the blocks' layer indices."""
        layer_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block.first_layer_idx, layer_idx = layer_idx, layer_idx + block.num_layers
        for name in [f"b{res}" for res in self.block_resolutions] + ["mapping"] * (self.c_dim > 0) + ["b4"]:
            self._modules[name] = self._modules.pop(name)

    def grow(self, new_resolution: int) -> None:
        """Add blocks b{new_resolution} ... b{2 * img_resolution} in front and start fading them in (blend 0).

        A fade in progress must have reached blend 1; it is ended first (``end_fade``). New blocks are initialised as
        in a fresh discriminator, on the device and in the dtype of the existing parameters. Rebuild optimisers and
        DDP wrappers afterwards; record (img_resolution, fade_resolution) in the snapshot config to rebuild this D.
        """
        self._check_growable("Discriminator.grow new_resolution", self.img_resolution, new_resolution)
        if self.fade_resolution is not None:
            self.end_fade()
        old_resolution, like = self.img_resolution, self.b4.conv.weight
        self.img_resolution = new_resolution
        self.block_resolutions = _block_resolutions(new_resolution)
        for res in self.block_resolutions:
            if res > old_resolution:
                block = self._new_block(res, 0, reads_image=(res == new_resolution))
                self.add_module(f"b{res}", block.to(device=like.device, dtype=like.dtype))
            else:
                getattr(self, f"b{res}").use_fp16 = res >= self._fp16_resolution()
        self._begin_fade(old_resolution)
        self._renumber_blocks()

    def set_blend(self, blend: float) -> None:
        """Set the fade-in factor of the newest blocks: 0 = previous stage only, 1 = new blocks only."""
        if self.fade_resolution is None:
            raise UserError("Discriminator.set_blend: no fade in progress (grow() starts one)")
        if not 0.0 <= blend <= 1.0:
            raise UserError(f"Discriminator.set_blend: blend must lie in [0, 1], got {blend}")
        self.blend.fill_(blend)

    def end_fade(self) -> None:
        """Drop what only the fade uses (``blend`` and b{fade_resolution}.fromrgb); needs blend 1.

        Afterwards names and shapes of the state dict equal those of a discriminator built at ``img_resolution``.
        """
        if self.fade_resolution is None:
            raise UserError("Discriminator.end_fade: no fade in progress")
        if float(self.blend) != 1.0:
            raise UserError(f"Discriminator.end_fade: blend is {float(self.blend)}; the blocks above "
                            f"{self.fade_resolution}x{self.fade_resolution} must be fully faded in (blend 1) first")
        block = getattr(self, f"b{self.fade_resolution}")
        del block.fromrgb
        block.num_layers -= 1
        del self.blend
        self.fade_resolution = None
        self._renumber_blocks()

    def _faded_input(self, block: DiscriminatorBlock, x_new: torch.Tensor, img: torch.Tensor,
                     force_fp32: bool) -> torch.Tensor:
        """Input of the previous stage's first block: blend * x_new + (1 - blend) * its fromrgb of the resized image.

        x_new: [N, C, r, r] features of the new blocks; img: [N, img_channels, R, R] the full-resolution input.
        """
        dtype = block_dtype(block.use_fp16, force_fp32, block.conv0.weight)
        small = filtered_resize(img, block.resolution, mode="antialiased")
        blend = self.blend.to(dtype)
        return blend * x_new.to(dtype) + (1 - blend) * block.fromrgb(small.to(dtype))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None, force_fp32: bool = False) -> torch.Tensor:
        """img: [N, img_channels, R, R] in [-1, 1]; c: [N, c_dim] (ignored when c_dim == 0) -> logits [N, 1]."""
        misc.assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution])
        x, block_img = None, img
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            if res == self.fade_resolution:
                x = self._faded_input(block, x, img, force_fp32)
            x, block_img = block(x, block_img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, block_img, cmap)

    def extra_repr(self) -> str:
        fade = "" if self.fade_resolution is None else f", fade_resolution={self.fade_resolution}"
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}{fade}"


INPUT_KEYS = ("image", "image_raw", "image_mask")


class HeadDiscriminator(Discriminator):
    """D(img_dict, c) -> logits [N, 1] for 3D-aware heads: reads the channel groups named in ``inputs``.

    Groups, stacked in this order into one [N, img_channels, R, R] tensor for the StyleGAN2 discriminator:
      'image'      [N, rgb_channels, R, R] in [-1, 1]: the final image, used as is (always first, required);
      'image_raw'  [N, rgb_channels, r, r] in [-1, 1]: the raw rendering, resized to R (EG3D dual discrimination);
      'image_mask' [N, 1, r, r] in [0, 1]: foreground opacity, resized to R, then mapped to 2m - 1 in [-1, 1]
                   (PanoHead's released tri-discriminator, MaskDualDiscriminatorV2).
    Presets: ('image',) for Gaussian heads on a constant background, ('image', 'image_raw') for EG3D (6 channels),
    all three for PanoHead (7 channels). Resizing uses ``filtered_resize`` with ``filter_mode`` and, for 'classic', the
    top-level ``resample_filter`` buffer ([1, 3, 3, 1]), which also makes the state dict match EG3D's
    DualDiscriminator (92 tensors for c_dim 25 at 512x512). Keys not in ``inputs`` are ignored, so R1 with one gamma
    per group takes gradients with respect to ``img_dict[k] for k in D.inputs``.
    ``c_noise`` > 0 adds randn * std_batch(c) * c_noise to the camera label (EG3D's disc_c_noise) without modifying
    the caller's tensor. Other keyword arguments (architecture, channels, fade_resolution, ...) go to Discriminator.
    """

    def __init__(self, c_dim: int, img_resolution: int, inputs: Sequence[str] = ("image", "image_raw"),
                 rgb_channels: int = 3, filter_mode: str = "antialiased", c_noise: float = 0.0, **kwargs):
        inputs = tuple(inputs)
        if not inputs or inputs[0] != "image" or inputs != tuple(k for k in INPUT_KEYS if k in inputs):
            raise UserError(f"HeadDiscriminator inputs: expected 'image' followed by any of 'image_raw', 'image_mask' "
                            f"in that order, got {list(inputs)}")
        if filter_mode not in RESIZE_MODES:
            raise UserError(f"HeadDiscriminator filter_mode: expected one of {list(RESIZE_MODES)}, got '{filter_mode}'")
        if c_noise < 0:
            raise UserError(f"HeadDiscriminator c_noise must be >= 0, got {c_noise}")
        group_channels = {"image": rgb_channels, "image_raw": rgb_channels, "image_mask": 1}
        super().__init__(c_dim, img_resolution, sum(group_channels[k] for k in inputs), **kwargs)
        self.group_channels = group_channels  # channels of each input group
        self.inputs, self.rgb_channels, self.filter_mode, self.c_noise = inputs, rgb_channels, filter_mode, c_noise
        self.register_buffer("resample_filter", resample_filter_buffer((1, 3, 3, 1)))

    def _checked(self, img: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        """img[key] after checking that it exists and is a square [N, channels, H, H] batch (H = R for 'image')."""
        if key not in img:
            raise UserError(f"HeadDiscriminator reads {list(self.inputs)}, but the image dict has no '{key}' "
                            f"(keys: {sorted(img)})")
        x, channels = img[key], self.group_channels[key]
        size = self.img_resolution if key == "image" else None
        if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != x.shape[3] or size not in (None, x.shape[2]):
            raise UserError(f"HeadDiscriminator input '{key}': expected [N, {channels}, {size or 'H'}, "
                            f"{size or 'H'}], got {list(x.shape)}")
        return x

    def assemble_input(self, img: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stack the configured groups of ``img`` (see the class docstring) into [N, img_channels, R, R]."""
        parts = [self._checked(img, "image")]
        for key in self.inputs[1:]:
            x = filtered_resize(self._checked(img, key), self.img_resolution, self.filter_mode, self.resample_filter)
            parts.append(x * 2 - 1 if key == "image_mask" else x)
        return torch.cat(parts, dim=1)

    def forward(self, img: dict[str, torch.Tensor], c: torch.Tensor | None,
                force_fp32: bool = False) -> torch.Tensor:
        """img: dict of the groups in ``self.inputs`` (shapes, ranges: class docstring); c: [N, c_dim] camera label
        (ignored when c_dim == 0) -> logits [N, 1]."""
        if self.c_noise > 0 and self.c_dim > 0:
            if c.shape[0] < 2:
                raise UserError("HeadDiscriminator c_noise needs at least 2 labels per batch (it scales the noise by "
                                "the batch standard deviation of c)")
            c = c + torch.randn_like(c) * c.std(dim=0) * self.c_noise
        return super().forward(self.assemble_input(img), c, force_fp32=force_fp32)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, inputs={list(self.inputs)}, filter_mode={self.filter_mode}, " \
               f"c_noise={self.c_noise}"
