"""Background generator, compositing and super-resolution against closed forms, per-sample convolution loops, the
volume renderer's own white background, and EG3D/PanoHead state-dict facts (shared/reference/eg3d-stylegan2-infra.md
§1.9, panohead.md §3-4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from dnnlib import UserError
from training.cameras import lookat_labels
from training.networks.background import BackgroundGenerator, composite_features, composite_rgb
from training.networks.superresolution import SuperResolution
from training.rendering.volume import RenderOptions, render_volume

F64 = dict(rtol=1e-12, atol=1e-12)


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial values for every parameter (noise strengths, biases and zero-initialised weights included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 0.1)


def test_composite_closed_forms():
    fg_colour = torch.rand(2, 4, 3, 5, dtype=torch.float64) * 2 - 1
    bg = torch.rand(2, 4, 3, 5, dtype=torch.float64) * 2 - 1
    alpha = torch.rand(2, 1, 3, 5, dtype=torch.float64)
    alpha[0, 0, 0, :] = 1.0
    alpha[1, 0, 2, :] = 0.0
    premultiplied = alpha * fg_colour
    feat = composite_features(premultiplied, alpha, bg)
    rgb = composite_rgb(fg_colour, alpha, bg)
    for b in range(2):
        for y in range(3):
            for x in range(5):
                a = alpha[b, 0, y, x].item()
                expected = a * fg_colour[b, :, y, x] + (1 - a) * bg[b, :, y, x]
                torch.testing.assert_close(feat[b, :, y, x], expected, **F64)
                torch.testing.assert_close(rgb[b, :, y, x], expected, **F64)
    torch.testing.assert_close(feat[0, :, 0], premultiplied[0, :, 0], rtol=0, atol=0)  # weight 1 → foreground
    torch.testing.assert_close(feat[1, :, 2], bg[1, :, 2], rtol=0, atol=0)  # weight 0 (fg 0) → background
    torch.testing.assert_close(rgb[1, :, 2], bg[1, :, 2], rtol=0, atol=0)
    torch.testing.assert_close(rgb[0, :, 0], fg_colour[0, :, 0], rtol=0, atol=0)
    with pytest.raises(UserError, match="composite_features"):
        composite_features(premultiplied, alpha[:, :, :2], bg)
    with pytest.raises(UserError, match="composite_rgb"):
        composite_rgb(fg_colour, alpha, bg[:, :3])


def test_composite_features_matches_the_renderers_white_background():
    """The volume renderer's white background is the premultiplied "over" with bg = 1, so the conventions agree."""
    def field(points, dirs):
        inside = (points.norm(dim=-1, keepdim=True) < 0.3).to(points.dtype)
        return 3 * inside - 1, torch.cat([points, inside], dim=-1)

    label = lookat_labels(math.pi / 2, math.pi / 2, pivot=(0, 0, 0), dtype=torch.float64)
    opts = RenderOptions(depth_resolution=16, depth_resolution_importance=0, deterministic=True)
    black = render_volume(field, label, 6, opts)
    white = render_volume(field, label, 6, RenderOptions(depth_resolution=16, depth_resolution_importance=0,
                                                         deterministic=True, white_background=True))
    assert 0.05 < black.weight.min() and black.weight.max() < 0.999  # partial coverage somewhere
    torch.testing.assert_close(composite_features(black.features, black.weight, torch.ones_like(black.features)),
                               white.features, **F64)


def test_background_layout_matches_panohead():
    with torch.device("meta"):
        bg = BackgroundGenerator()
    assert bg.num_ws == 12 and bg.img_resolution == 128 and bg.img_channels == 32
    # PanoHead §3: channel base 16384 → 4..32: 512, 64: 256, 128: 128 channels; 32 output channels.
    shapes = {k: tuple(v.shape) for k, v in bg.state_dict().items()}
    assert shapes["b4.const"] == (512, 4, 4)
    assert shapes["b64.conv0.weight"] == (256, 512, 3, 3)
    assert shapes["b128.conv1.weight"] == (128, 128, 3, 3)
    assert shapes["b128.torgb.weight"] == (32, 128, 1, 1)
    assert "b256.const" not in shapes and len([k for k in shapes if k.endswith("torgb.weight")]) == 6


def test_background_reads_only_the_first_ws():
    bg = BackgroundGenerator(w_dim=8, resolution=16, channels=5, channel_base=64, channel_max=16).double()
    _randomise(bg)
    assert bg.num_ws == 6
    ws = torch.randn(2, 9, 8, dtype=torch.float64)
    ref = bg(ws, noise_mode="const")
    assert ref.shape == (2, 5, 16, 16)
    later = ws.clone()
    later[:, 6:] = torch.randn(2, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(bg(later, noise_mode="const"), ref, rtol=0, atol=0)
    earlier = ws.clone()
    earlier[:, 5] += 1
    assert (bg(earlier, noise_mode="const") - ref).abs().max() > 1e-3
    # Fewer ws than needed: the last one is repeated.
    short = ws[:, :2]
    padded = torch.cat([short, short[:, 1:].repeat(1, 4, 1)], dim=1)
    torch.testing.assert_close(bg(short, noise_mode="const"), bg(padded, noise_mode="const"), rtol=0, atol=0)
    # Resized to another (e.g. the neural-rendering) resolution.
    assert bg(ws, out_resolution=7, noise_mode="const").shape == (2, 5, 7, 7)


def _modconv(x, weight, styles, demodulate):
    """Per-sample 'same' convolution with the sample's modulated (and demodulated) weight."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        outs.append(F.conv2d(x[n:n + 1], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


def _affine(sd, prefix, w):
    """Equalised-lr style affine (lr 1): w @ (A / sqrt(w_dim))^T + b."""
    a = sd[prefix + ".affine.weight"]
    return w @ (a / math.sqrt(a.shape[1])).T + sd[prefix + ".affine.bias"]


def test_no_upsampling_block_matches_a_convolution_loop():
    sr = SuperResolution(in_channels=4, out_resolution=16, w_dim=6, up_blocks=1, channels=(5, 3)).double()
    _randomise(sr)
    sd = sr.state_dict()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 6, dtype=torch.float64)
    feats, out = sr.block0(x, img, w[:, None].expand(-1, 3, -1), noise_mode="none")
    h = x
    for name in ("block0.conv0", "block0.conv1"):
        h = _modconv(h, sd[name + ".weight"], _affine(sd, name, w), demodulate=True)
        h = F.leaky_relu(h + sd[name + ".bias"].reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)
    styles = _affine(sd, "block0.torgb", w) / math.sqrt(5)
    rgb = _modconv(h, sd["block0.torgb.weight"], styles, demodulate=False)
    rgb = rgb + sd["block0.torgb.bias"].reshape(1, -1, 1, 1)
    torch.testing.assert_close(feats, h, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, img + rgb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_res,out_res,up_blocks", [(16, 32, 1), (16, 64, 1), (16, 64, 2), (16, 128, 2), (24, 64, 2)])
def test_superresolution_shapes_and_last_w_only(in_res, out_res, up_blocks):
    """2×, 4× and 8× (and a non-power-of-two input) give out_res²; only ws[:, -1] matters."""
    sr = SuperResolution(in_channels=4, out_resolution=out_res, w_dim=6, up_blocks=up_blocks, channels=(6, 4))
    _randomise(sr)
    assert sr.working_resolution == out_res >> up_blocks
    rgb, x = torch.randn(2, 3, in_res, in_res), torch.randn(2, 4, in_res, in_res)
    ws = torch.randn(2, 5, 6)
    out = sr(rgb, x, ws)
    assert out.shape == (2, 3, out_res, out_res) and torch.isfinite(out).all()
    others = ws.clone()
    others[:, :-1] = torch.randn(2, 4, 6)
    torch.testing.assert_close(sr(rgb, x, others), out, rtol=0, atol=0)
    last = ws.clone()
    last[:, -1] += 1
    assert (sr(rgb, x, last) - out).abs().max() > 1e-3


def _sr_block_keys(block: str, cin: int, cout: int, res: int, w_dim: int) -> dict[str, tuple]:
    """EG3D key order and shapes of an SR block (§1.9: params, buffers, children; conv0 then conv1 then torgb)."""
    keys = {f"{block}.resample_filter": (4, 4)}
    for conv, c_in in (("conv0", cin), ("conv1", cout)):
        keys.update({f"{block}.{conv}.weight": (cout, c_in, 3, 3), f"{block}.{conv}.noise_strength": (),
                     f"{block}.{conv}.bias": (cout,), f"{block}.{conv}.resample_filter": (4, 4),
                     f"{block}.{conv}.noise_const": (res, res), f"{block}.{conv}.affine.weight": (c_in, w_dim),
                     f"{block}.{conv}.affine.bias": (c_in,)})
    keys.update({f"{block}.torgb.weight": (3, cout, 1, 1), f"{block}.torgb.bias": (3,),
                 f"{block}.torgb.affine.weight": (cout, w_dim), f"{block}.torgb.affine.bias": (cout,)})
    return keys


@pytest.mark.parametrize("name,out_res,up_blocks,channels,res0", [
    ("Hybrid2X", 128, 1, (128, 64), 64), ("Hybrid4X", 256, 1, (128, 64), 128), ("Hybrid8XDC", 512, 2, (256, 128), 256)])
def test_superresolution_state_dict_matches_eg3d(name, out_res, up_blocks, channels, res0):
    with torch.device("meta"):
        sr = SuperResolution(32, out_res, 512, up_blocks=up_blocks, channels=channels, use_fp16=True)
    # EG3D Hybrid2X/4X own a top-level filter; a module's own buffers precede its children in a state dict.
    expected = {"resample_filter": (4, 4)} if up_blocks == 1 else {}
    expected.update(_sr_block_keys("block0", 32, channels[0], res0, 512))
    expected.update(_sr_block_keys("block1", channels[0], channels[1], out_res, 512))
    assert [(k, tuple(v.shape)) for k, v in sr.state_dict().items()] == list(expected.items())
    assert sr.block0.conv0.conv_clamp == 256 and sr.block1.torgb.conv_clamp == 256  # EG3D: clamp with fp16


def test_superresolution_errors():
    with pytest.raises(UserError, match="up_blocks"):
        SuperResolution(out_resolution=64, up_blocks=3)
    with pytest.raises(UserError, match="power of two"):
        SuperResolution(out_resolution=96, up_blocks=1)
    with pytest.raises(UserError, match="power of two"):
        SuperResolution(out_resolution=8, up_blocks=2)
