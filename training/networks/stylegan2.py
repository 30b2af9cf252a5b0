"""StyleGAN2 core: equalised-lr layers, the mapping network, modulated convolution and the synthesis network.

Conventions (this file):
- Feature maps and images are float NCHW; generated images are nominally in [-1, 1] (nothing clamps them).
- Latents: z [N, z_dim] ~ N(0, I); conditioning labels c [N, c_dim]; ws [N, num_ws, w_dim], one w per layer input.
- Equalised learning rate: every weight is stored raw (randn, divided by the lr multiplier for dense layers) and the
  He gain is applied at run time, so parameter names, shapes and stored values match stylegan2-ada-pytorch and EG3D and
  their weights load by name with ``load_state_dict(strict=True)``. Registration order is chosen so that the
  state_dict lists tensors in the same order as theirs.
- Mixed precision: blocks at the ``num_fp16_res`` highest resolutions run in float16 only on CUDA. On any other device
  they run in the parameters' dtype (float32): CPU float16 convolutions are slow and historically incomplete
  (stylegan2-ada-pytorch#105), and bfloat16 autocast (8-bit mantissa) would move outputs far beyond float32 rounding,
  so CPU results would stop matching the float32 reference computation that tests and official weights rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dnnlib import UserError
from torch_utils import misc
from torch_utils.ops import upfirdn2d
from torch_utils.ops.bias_act import bias_act, default_gain
from torch_utils.ops.conv2d_resample import conv2d_resample

_ARCHITECTURES = ("orig", "skip", "resnet")
_NOISE_MODES = ("random", "const", "none")


def check_architecture(architecture: str) -> None:
    """Raise a UserError unless ``architecture`` is 'orig', 'skip' or 'resnet'."""
    if architecture not in _ARCHITECTURES:
        raise UserError(f"architecture '{architecture}' is not one of {_ARCHITECTURES}")


def channels_per_resolution(resolutions: list[int], channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature channels at each resolution: min(channel_base // res, channel_max) (shared by G and D)."""
    return {res: min(channel_base // res, channel_max) for res in resolutions}


def block_dtype(use_fp16: bool, force_fp32: bool, weight: torch.Tensor) -> torch.dtype:
    """Compute dtype of a block whose parameters look like ``weight``: float16 only when asked for, not forced off and
    on CUDA; otherwise the parameters' own dtype (float32, or float64 for numerical checks)."""
    return torch.float16 if use_fp16 and not force_fp32 and weight.device.type == "cuda" else weight.dtype


def resample_filter_buffer(taps: Sequence[int]) -> torch.Tensor:
    """Normalised FIR filter (``upfirdn2d.setup_filter``) from 1-D taps, on the default device (so construction under
    ``with torch.device('meta')`` or ``'cuda'`` places it with the weights)."""
    return upfirdn2d.setup_filter(list(taps), torch.get_default_device())


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that the mean of its squares along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------------------------------------


class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalised learning rate: y = act(x @ (W * lr / sqrt(in))^T + b * lr)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        default_gain(activation)  # rejects unknown activations at construction
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        # Stored weights are N(0, 1/lr^2) so that the effective weight's step size scales with lr_multiplier.
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, in_features] -> [N, out_features]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Equalised-lr convolution with optional 2x FIR up/down-sampling, activation and output clamp.

    ``trainable=False`` (Freeze-D) registers weight and bias as buffers under the same names.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter: Sequence[int] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, trainable: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.padding, self.conv_clamp = up, down, kernel_size // 2, conv_clamp
        self.act_gain = default_gain(activation)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.register_buffer("resample_filter", resample_filter_buffer(resample_filter))
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = None if bias_value is None else torch.nn.Parameter(bias_value)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_value)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x: [N, in_channels, H, W] -> [N, out_channels, H*up/down, W*up/down]; ``gain`` scales output and clamp."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1))
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


# ----------------------------------------------------------------------------------------------------------------------


class MappingNetwork(torch.nn.Module):
    """z (and label c) -> w. With ``z_dim=0`` and ``num_ws=None`` it is the discriminator's label embedder.

    State: ``w_avg`` [w_dim] (the truncation centre) exists when ``num_ws`` and ``w_avg_beta`` are given; it moves
    towards the batch mean of w only in calls with ``update_emas=True`` (EG3D semantics).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998):
        super().__init__()
        if z_dim + c_dim == 0:
            raise UserError("MappingNetwork needs z_dim > 0 or c_dim > 0 (both are 0)")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        widths = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            layer = FullyConnectedLayer(widths[i], widths[i + 1], activation=activation, lr_multiplier=lr_multiplier)
            self.add_module(f"fc{i}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """z: [N, z_dim] (None when z_dim=0), c: [N, c_dim] (ignored when c_dim=0).

        Returns ws [N, num_ws, w_dim], or w [N, w_dim] when num_ws is None. Truncation moves ws[:, :cutoff] (all ws
        when cutoff is None) towards ``w_avg``: w_avg + psi * (w - w_avg).
        """
        parts = []
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            parts.append(normalize_2nd_moment(z.to(self.fc0.weight.dtype)))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            parts.append(normalize_2nd_moment(self.embed(c.to(self.embed.weight.dtype))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas and hasattr(self, "w_avg"):
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise UserError("truncation_psi != 1 needs a mapping network that tracks w_avg (w_avg_beta is None)")
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            head = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
            x = torch.cat([head, x[:, cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ----------------------------------------------------------------------------------------------------------------------


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, down: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2 weight modulation/demodulation around ``conv2d_resample``.

    x: [N, I, H, W]; weight: [O, I, k, k] (already gain-free: demodulation fixes the scale); styles: [N, I];
    noise: broadcastable to the output [N, O, H', W'], added after the convolution. The per-sample weight is
    weight * styles[n] over I, divided (when demodulating) by its L2 norm over (I, k, k) per output channel.
    ``fused_modconv`` runs one grouped convolution with per-sample weights; otherwise the styles scale x and the
    demodulation scales the output of one shared convolution, which is the same linear map.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(x, [batch, in_channels, None, None])
    misc.assert_shape(styles, [batch, in_channels])
    if x.dtype == torch.float16 and demodulate:
        # Keep float16 sums in range; any per-output-channel and per-sample scale cancels under demodulation.
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)

    per_sample = None
    dcoefs = None
    if demodulate or fused_modconv:
        per_sample = weight.unsqueeze(0) * styles.reshape(batch, 1, in_channels, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        dcoefs = (per_sample.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_channels, 1, 1)
        return x if noise is None else x + noise.to(x.dtype)

    if dcoefs is not None:
        per_sample = per_sample * dcoefs.reshape(batch, out_channels, 1, 1, 1)
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    w = per_sample.reshape(batch * out_channels, in_channels, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, f=resample_filter, up=up, down=down, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, out_channels, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + per-pixel noise + bias + activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[int] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.padding, self.conv_clamp = kernel_size // 2, conv_clamp
        self.act_gain = default_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer("resample_filter", resample_filter_buffer(resample_filter))
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        """x: [N, in_channels, res/up, res/up], w: [N, w_dim] -> [N, out_channels, res, res].

        noise_mode: 'random' (fresh N(0,1) per call), 'const' (the stored ``noise_const``) or 'none'.
        """
        if noise_mode not in _NOISE_MODES:
            raise UserError(f"noise_mode '{noise_mode}' is not one of {_NOISE_MODES}")
        in_res = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_res, in_res])
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 convolution from features to ``out_channels`` image channels."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.conv_clamp = in_channels, out_channels, w_dim, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation the equalised-lr gain has to be applied explicitly (here, to the styles).
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """x: [N, in_channels, H, W], w: [N, w_dim] -> [N, out_channels, H, W]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


# ----------------------------------------------------------------------------------------------------------------------


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (const | 2x up conv0) -> conv1 -> optional ToRGB.

    ``in_channels == 0`` marks the 4x4 block, which starts from the learned ``const`` and has no conv0.
    Architectures: 'orig' (ToRGB only in the last block), 'skip' (every block adds its ToRGB output to the upsampled
    image of the previous block), 'resnet' (features get a 1x1 upsampling shortcut; ToRGB only in the last block).
    ``fused_modconv_default``: True, False, or 'inference_only' (fused only when not training).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[int] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, use_fp16: bool = False,
                 fused_modconv_default: bool | str = "inference_only", **layer_kwargs):
        super().__init__()
        check_architecture(architecture)
        if fused_modconv_default not in (True, False, "inference_only"):
            raise UserError(f"fused_modconv_default must be True, False or 'inference_only', not "
                            f"{fused_modconv_default!r}")
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels, self.is_last = resolution, img_channels, is_last
        self.architecture, self.use_fp16, self.fused_modconv_default = architecture, use_fp16, fused_modconv_default
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        self.register_buffer("resample_filter", resample_filter_buffer(resample_filter))
        layer_kwargs = dict(resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv = 1
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, **layer_kwargs)
            self.num_conv = 2
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, **layer_kwargs)
        self.num_torgb = 1 if (is_last or architecture == "skip") else 0
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, force_fp32: bool = False,
                fused_modconv: bool | None = None, noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        """Run the block.

        x: [N, in_channels, res/2, res/2] (None for the 4x4 block); img: [N, img_channels, res/2, res/2] or None;
        ws: [N, num_conv + num_torgb, w_dim]. Returns (features [N, out_channels, res, res], img at res in the
        parameters' dtype, also when the features ran in float16).
        """
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = block_dtype(self.use_fp16, force_fp32, self.conv1.weight)
        if fused_modconv is None:
            fused = self.fused_modconv_default
            fused_modconv = (not self.training) if fused == "inference_only" else fused

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype)
            gain = math.sqrt(0.5) if self.architecture == "resnet" else 1.0
            shortcut = self.skip(x, gain=gain) if self.architecture == "resnet" else None
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, gain=gain)
            if shortcut is not None:
                x = shortcut + x

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(self.conv1.weight.dtype)
            img = y if img is None else img + y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] through blocks b4, b8, ..., bR.

    Each block reads ws[:, i : i + num_conv + num_torgb] and advances i by num_conv, so a block's ToRGB shares its w
    with the next block's conv0; num_ws = 2 * log2(R) - 2. ``img_channels`` may be anything (3 for RGB, 96 or 288 for
    tri-planes/tri-grids, 22+ for Gaussian UV maps). Defaults num_fp16_res=0 and conv_clamp=None are EG3D's
    generator training settings (stylegan2-ada-pytorch trained with 4 and 256).
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, conv_clamp: float | None = None, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise UserError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        log2_res = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2_res + 1)]
        channels = channels_per_resolution(self.block_resolutions, channel_base, channel_max)
        fp16_resolution = max(2 ** (log2_res + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   is_last=(res == img_resolution), use_fp16=(res >= fp16_resolution),
                                   conv_clamp=conv_clamp, **block_kwargs)
            self.num_ws += block.num_conv
            if block.is_last:
                self.num_ws += block.num_torgb
            self.add_module(f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        """ws: [N, num_ws, w_dim] -> image [N, img_channels, R, R] in the parameters' dtype.

        block_kwargs: noise_mode ('random'|'const'|'none'), force_fp32, fused_modconv (None = the block default).
        """
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(self.b4.conv1.weight.dtype)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, " \
               f"img_channels={self.img_channels}"


class Generator(torch.nn.Module):
    """StyleGAN2 generator: G(z, c) = synthesis(mapping(z, c)). ``synthesis`` is built before ``mapping`` so the
    state_dict order matches stylegan2-ada-pytorch. Extra keyword arguments go to SynthesisNetwork."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False, **synthesis_kwargs) -> torch.Tensor:
        """z: [N, z_dim], c: [N, c_dim] -> image [N, img_channels, R, R] (nominally [-1, 1])."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)
