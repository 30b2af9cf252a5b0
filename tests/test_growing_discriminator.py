"""Progressive growing of the discriminator (Discriminator.grow, training/networks/discriminator.py) against
independent computations: the old discriminator on an image downsampled by a brute-force antialiased-bilinear matrix,
a discriminator built directly at the new resolution with the same weights, the blend interpolation recomputed from
captured block activations, and the state-dict layout of a directly built discriminator."""

from __future__ import annotations

import copy

import pytest
import torch

from dnnlib import UserError
from training.networks.discriminator import Discriminator, HeadDiscriminator

SMALL = dict(channel_base=128, channel_max=8, mapping_kwargs=dict(num_layers=2),
             epilogue_kwargs=dict(mbstd_group_size=2))
FADE_ONLY = {"blend", "b16.fromrgb.weight", "b16.fromrgb.bias", "b16.fromrgb.resample_filter"}


def _d(res: int, **kwargs) -> Discriminator:
    return Discriminator(c_dim=3, img_resolution=res, img_channels=3, **SMALL, **kwargs).double()


def _resize_matrix(size_out: int, size_in: int) -> torch.Tensor:
    """[size_out, size_in] weights of antialiased bilinear downsampling, by a loop over output and input pixels: a
    triangle of half-width s = size_in / size_out around each output centre, renormalised where it leaves the image."""
    s = size_in / size_out
    a = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        for j in range(size_in):
            a[i, j] = max(0.0, 1.0 - abs((j + 0.5) - (i + 0.5) * s) / s)
    return a / a.sum(dim=1, keepdim=True)


def _downsample(img: torch.Tensor, size: int) -> torch.Tensor:
    a = _resize_matrix(size, img.shape[-1])
    return torch.einsum("ih,nchw,jw->ncij", a, img, a)


def test_resize_oracle_is_the_1331_filter_for_2x():
    a = _resize_matrix(8, 16)
    torch.testing.assert_close(a[3, 5:9], torch.tensor([1, 3, 3, 1], dtype=torch.float64) / 8, rtol=0, atol=1e-15)
    # At the border the tap outside the image (weight 1/8) is dropped and the rest renormalised: [3, 3, 1] / 7.
    torch.testing.assert_close(a[0, :3], torch.tensor([3, 3, 1], dtype=torch.float64) / 7, rtol=0, atol=1e-15)


@pytest.mark.parametrize("old_res,new_res", [(16, 32), (8, 32)])
def test_grown_d_at_blend_zero_equals_old_d_on_downsampled_input(old_res, new_res):
    old = _d(old_res)
    grown = copy.deepcopy(old)
    grown.grow(new_res)
    assert float(grown.blend) == 0 and grown.fade_resolution == old_res
    img, c = torch.randn(4, 3, new_res, new_res, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    # float64: the two sides differ only in the summation order of the resize (~1e-15 relative).
    torch.testing.assert_close(grown(img, c), old(_downsample(img, old_res), c), rtol=1e-10, atol=1e-12)


def test_grown_head_discriminator_at_blend_zero_reads_the_downsampled_image():
    kwargs = dict(c_dim=25, img_resolution=16, inputs=("image",), **SMALL)
    old = HeadDiscriminator(**kwargs).double()
    grown = copy.deepcopy(old)
    grown.grow(32)
    img, c = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1, torch.randn(2, 25, dtype=torch.float64)
    expected = old({"image": _downsample(img, 16)}, c)
    torch.testing.assert_close(grown({"image": img}, c), expected, rtol=1e-10, atol=1e-12)


def _direct_twin(grown: Discriminator, res: int) -> Discriminator:
    """A discriminator built at ``res`` holding the grown one's weights (everything but the fade-only tensors)."""
    direct = _d(res)
    state = {k: v for k, v in grown.state_dict().items() if k not in FADE_ONLY}
    direct.load_state_dict(state, strict=True)
    return direct


def test_at_blend_one_the_old_input_layer_is_unused():
    grown = _d(16)
    grown.grow(32)
    grown.set_blend(1.0)
    img, c = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    logits = grown(img, c)
    logits.sum().backward()
    for p in grown.b16.fromrgb.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert torch.count_nonzero(grown.b32.fromrgb.weight.grad) > 0
    torch.testing.assert_close(logits, _direct_twin(grown, 32)(img, c), rtol=1e-12, atol=1e-12)


def test_intermediate_blend_interpolates_the_old_blocks_input():
    grown = _d(16)
    grown.grow(32)
    grown.set_blend(0.3)
    captured = {}
    grown.b32.register_forward_hook(lambda m, args, out: captured.__setitem__("new", out[0]))
    grown.b16.conv0.register_forward_pre_hook(lambda m, args: captured.__setitem__("mixed", args[0]))
    img, c = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    grown(img, c)
    old_path = grown.b16.fromrgb(_downsample(img, 16))
    expected = 0.3 * captured["new"] + 0.7 * old_path
    torch.testing.assert_close(captured["mixed"], expected, rtol=1e-10, atol=1e-12)


def _layout(D: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in D.state_dict().items()]


@pytest.mark.parametrize("stages", [(16, 32), (8, 16, 32)])
def test_grown_state_dict_is_the_direct_one_plus_the_old_fromrgb(stages):
    D = _d(stages[0], num_fp16_res=2)
    for res in stages[1:]:
        if D.fade_resolution is not None:
            D.set_blend(1.0)
        D.grow(res)  # ends the previous fade first
    direct = _d(32, num_fp16_res=2)
    grown_layout = dict(_layout(D))
    assert grown_layout.keys() == dict(_layout(direct)).keys() | FADE_ONLY
    assert grown_layout["b16.fromrgb.weight"] == (direct.b32.fromrgb.weight.shape[0] * 2, 3, 1, 1)
    assert all(grown_layout[k] == shape for k, shape in _layout(direct))
    assert [(b.use_fp16, b.in_channels, b.first_layer_idx) for b in (D.b32, D.b16, D.b8)] == \
        [(True, 0, 0), (True, 8, 4), (False, 8, 8)]  # fp16 for the 2 highest; fromrgb of b16 counted as a layer
    D.set_blend(1.0)
    D.end_fade()
    assert _layout(D) == _layout(direct)  # same names, shapes and order as a discriminator built at 32
    assert [(b.use_fp16, b.in_channels, b.first_layer_idx) for b in (D.b32, D.b16, D.b8)] == \
        [(b.use_fp16, b.in_channels, b.first_layer_idx) for b in (direct.b32, direct.b16, direct.b8)]


def test_resume_mid_fade_restores_structure_and_blend():
    grown = _d(16)
    grown.grow(32)
    grown.set_blend(0.4)
    resumed = _d(32, fade_resolution=16)
    assert dict(_layout(resumed)) == dict(_layout(grown))
    resumed.load_state_dict(grown.state_dict(), strict=True)
    assert float(resumed.blend) == pytest.approx(0.4, abs=0)
    img, c = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(resumed(img, c), grown(img, c), rtol=0, atol=0)


def test_growth_errors():
    D = _d(16)
    with pytest.raises(UserError, match="no fade in progress"):
        D.set_blend(0.5)
    with pytest.raises(UserError, match="no fade in progress"):
        D.end_fade()
    for bad in (24, 16, 8):
        with pytest.raises(UserError, match="powers of two"):
            D.grow(bad)
    D.grow(32)
    with pytest.raises(UserError, match=r"blend must lie in \[0, 1\]"):
        D.set_blend(1.5)
    D.set_blend(0.5)
    with pytest.raises(UserError, match="blend 1"):
        D.grow(64)
    with pytest.raises(UserError, match="architecture"):
        Discriminator(c_dim=0, img_resolution=32, img_channels=3, architecture="skip", fade_resolution=16, **SMALL)
    with pytest.raises(UserError, match="Freeze-D"):
        _d(16, block_kwargs=dict(freeze_layers=2)).grow(32)
    with pytest.raises(UserError, match="fade_resolution"):
        _d(16, fade_resolution=16)
