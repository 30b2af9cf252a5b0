"""HeadDiscriminator (image-only / dual / tri inputs, training/networks/discriminator.py) against independent
computations: a plain Discriminator with the same weights fed with the input stacked in the test, the closed form
2m - 1 of the mask channel, central finite differences of the per-group R1 gradients, a re-drawn camera-label noise,
and the EG3D FFHQ-512 DualDiscriminator layout (shared/reference/eg3d-stylegan2-infra.md §3.3)."""

from __future__ import annotations

import pytest
import torch

from dnnlib import UserError
from torch_utils.ops import upfirdn2d
from torch_utils.ops.filtered_resize import filtered_resize
from training.networks.discriminator import Discriminator, HeadDiscriminator

SMALL = dict(channel_base=64, channel_max=8, mapping_kwargs=dict(num_layers=2),
             epilogue_kwargs=dict(mbstd_group_size=2))
ALL_INPUTS = ("image", "image_raw", "image_mask")


def _head_d(inputs=ALL_INPUTS, **kwargs) -> HeadDiscriminator:
    return HeadDiscriminator(c_dim=5, img_resolution=16, inputs=inputs, **SMALL, **kwargs)


def _plain_twin(D: HeadDiscriminator) -> Discriminator:
    """A plain Discriminator with D's weights (all but the top-level resample_filter, which it does not have)."""
    plain = Discriminator(c_dim=5, img_resolution=16, img_channels=D.img_channels, **SMALL)
    state = D.state_dict()
    assert list(state)[0] == "resample_filter"
    del state["resample_filter"]
    plain.load_state_dict(state, strict=True)
    return plain.to(next(D.parameters()).dtype)


def _img_dict(n: int = 2, raw_res: int = 8, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {"image": torch.rand(n, 3, 16, 16, dtype=dtype) * 2 - 1,
            "image_raw": torch.rand(n, 3, raw_res, raw_res, dtype=dtype) * 2 - 1,
            "image_mask": torch.rand(n, 1, raw_res, raw_res, dtype=dtype)}


@pytest.mark.parametrize("filter_mode", ["antialiased", "classic", "none"])
def test_dual_d_equals_six_channel_d_on_stacked_input(filter_mode):
    D = _head_d(("image", "image_raw"), filter_mode=filter_mode)
    assert D.img_channels == 6
    img, c = _img_dict(), torch.randn(2, 5)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    stacked = torch.cat([img["image"], filtered_resize(img["image_raw"], 16, filter_mode, f)], dim=1)
    # Identical operations on identical numbers: equal up to float32 rounding of a reordered reduction at most.
    torch.testing.assert_close(D(img, c), _plain_twin(D)(stacked, c), rtol=1e-6, atol=1e-6)


def test_tri_d_equals_seven_channel_d_with_mask_mapped_to_plus_minus_one():
    D = _head_d()
    assert D.img_channels == 7
    img, c = _img_dict(raw_res=4), torch.randn(2, 5)
    stacked = torch.cat([img["image"], filtered_resize(img["image_raw"], 16),
                         2 * filtered_resize(img["image_mask"], 16) - 1], dim=1)
    torch.testing.assert_close(D(img, c), _plain_twin(D)(stacked, c), rtol=1e-6, atol=1e-6)


def test_mask_channel_is_two_m_minus_one_for_constant_masks():
    # A constant mask m stays m under any normalised resize, so the D input channel is exactly 2m - 1.
    D = _head_d()
    captured = {}
    D.b16.fromrgb.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    img = _img_dict(n=4)
    levels = torch.tensor([0.0, 0.25, 0.7, 1.0])
    img["image_mask"] = levels.view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    D(img, torch.randn(4, 5))
    x = captured["x"]
    assert x.shape == (4, 7, 16, 16)
    torch.testing.assert_close(x[:, :3], img["image"], rtol=0, atol=0)
    expected = (2 * levels - 1).view(4, 1, 1, 1).expand(4, 1, 16, 16)
    torch.testing.assert_close(x[:, 6:], expected, rtol=0, atol=1e-6)
    assert x[:, 6].min() == -1 and x[:, 6].max() == 1


def test_image_only_d_equals_three_channel_d_and_ignores_other_keys():
    D = _head_d(("image",))
    img, c = _img_dict(), torch.randn(2, 5)
    torch.testing.assert_close(D(img, c), _plain_twin(D)(img["image"], c), rtol=0, atol=0)
    torch.testing.assert_close(D({"image": img["image"]}, c), D(img, c), rtol=0, atol=0)


@pytest.mark.parametrize("inputs,channels,params", [(("image", "image_raw"), 6, 31_359_744),
                                                    (ALL_INPUTS, 7, 31_359_744 + 64)])
def test_ffhq512_state_dict_matches_eg3d_dual_discriminator(inputs, channels, params):
    kwargs = dict(c_dim=25, img_resolution=512, channel_base=32768, channel_max=512,
                  epilogue_kwargs=dict(mbstd_group_size=4))
    with torch.device("meta"):
        D = HeadDiscriminator(inputs=inputs, **kwargs)
        plain = Discriminator(img_channels=channels, **kwargs)
    state = [(k, list(v.shape)) for k, v in D.state_dict().items()]
    # EG3D: the top-level resample_filter [4, 4] first, then the 91 tensors of the plain discriminator, whose layout
    # tests/test_discriminator.py checks against the reference listing.
    assert state == [("resample_filter", [4, 4])] + [(k, list(v.shape)) for k, v in plain.state_dict().items()]
    assert len(state) == 92
    assert dict(state)["b512.fromrgb.weight"] == [64, channels, 1, 1]
    # The 7th input channel adds one 1x1 fromrgb weight per b512 channel (64) to EG3D's 31,359,744.
    assert sum(p.numel() for p in D.parameters()) == params


def _mapping_input(D: HeadDiscriminator, img, c) -> torch.Tensor:
    captured = {}
    handle = D.mapping.register_forward_pre_hook(lambda m, args: captured.__setitem__("c", args[1].clone()))
    D(img, c)
    handle.remove()
    return captured["c"]


def test_c_noise_is_batch_std_scaled_and_leaves_the_callers_label_alone():
    D = _head_d(c_noise=0.5)
    img, c = _img_dict(n=4), torch.randn(4, 5) * torch.tensor([1.0, 2.0, 0.1, 5.0, 0.0])
    c_before = c.clone()
    torch.manual_seed(123)
    seen = _mapping_input(D, img, c)
    torch.testing.assert_close(c, c_before, rtol=0, atol=0)
    torch.manual_seed(123)  # the label noise is the only random draw in D's forward
    expected = c_before + torch.randn(4, 5) * c_before.std(dim=0, unbiased=True) * 0.5
    torch.testing.assert_close(seen, expected, rtol=1e-6, atol=1e-6)
    assert (seen[:, 4] == c_before[:, 4]).all() and not torch.equal(seen[:, :4], c_before[:, :4])


def test_c_noise_off_at_zero_and_needs_two_labels():
    img, c = _img_dict(), torch.randn(2, 5)
    torch.testing.assert_close(_mapping_input(_head_d(c_noise=0.0), img, c), c, rtol=0, atol=0)
    D = HeadDiscriminator(c_dim=5, img_resolution=16, c_noise=0.1, channel_base=64, channel_max=8,
                          mapping_kwargs=dict(num_layers=2), epilogue_kwargs=dict(mbstd_group_size=1))
    with pytest.raises(UserError, match="c_noise needs at least 2 labels"):
        D(_img_dict(n=1), torch.randn(1, 5))


def test_per_group_r1_gradients_match_finite_differences():
    # R1 with one gamma per group needs d(sum logits)/d(img[k]) for each k in D.inputs. Checked along a random
    # direction per group against central differences in float64 (eps 1e-6: truncation ~1e-12, rounding ~1e-10).
    D = _head_d().double()
    img, c = _img_dict(dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    leaves = {k: img[k].clone().requires_grad_(True) for k in D.inputs}
    grads = torch.autograd.grad(D(leaves, c).sum(), [leaves[k] for k in D.inputs])
    eps = 1e-6
    with torch.no_grad():
        for key, grad in zip(D.inputs, grads, strict=True):
            v = torch.randn_like(img[key])
            plus, minus = dict(img), dict(img)
            plus[key], minus[key] = img[key] + eps * v, img[key] - eps * v
            numeric = (D(plus, c).sum() - D(minus, c).sum()) / (2 * eps)
            analytic = (grad * v).sum()
            assert grad.abs().sum() > 0, key
            assert abs(analytic - numeric) <= 1e-6 * abs(numeric), (key, analytic.item(), numeric.item())


def test_image_only_d_gives_zero_gradient_to_raw_and_mask():
    D = _head_d(("image",))
    img = {k: v.requires_grad_(True) for k, v in _img_dict().items()}
    g_image, g_raw, g_mask = torch.autograd.grad(D(img, torch.randn(2, 5)).sum(), [img[k] for k in ALL_INPUTS],
                                                 allow_unused=True, materialize_grads=True)
    assert g_image.abs().sum() > 0
    assert torch.count_nonzero(g_raw) == 0 and torch.count_nonzero(g_mask) == 0


def test_configuration_and_input_errors():
    with pytest.raises(UserError, match="inputs"):
        _head_d(("image_raw", "image"))
    with pytest.raises(UserError, match="inputs"):
        _head_d(("image", "depth"))
    with pytest.raises(UserError, match="filter_mode"):
        _head_d(filter_mode="lanczos")
    with pytest.raises(UserError, match="c_noise"):
        _head_d(c_noise=-1.0)
    D, img, c = _head_d(), _img_dict(), torch.randn(2, 5)
    del img["image_mask"]
    with pytest.raises(UserError, match="no 'image_mask'"):
        D(img, c)
    img = _img_dict()
    img["image_mask"] = img["image_mask"].expand(2, 3, 8, 8)
    with pytest.raises(UserError, match=r"'image_mask': expected \[N, 1, H, H\]"):
        D(img, c)
    img = _img_dict()
    img["image"] = img["image"][:, :, :8, :8]
    with pytest.raises(UserError, match=r"'image': expected \[N, 3, 16, 16\]"):
        D(img, c)
