"""Discriminator (training/networks/discriminator.py) against independent computations: a brute-force minibatch-std
loop, the projection formula on captured activations, finite differences of the R1 penalty, and the state_dict layout
documented for EG3D's FFHQ-512 discriminator (shared/reference/eg3d-stylegan2-infra.md §3.2, §3.3)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from dnnlib import UserError
from training.networks.discriminator import Discriminator, MinibatchStdLayer


def _small_d(architecture: str = "resnet", c_dim: int = 3, res: int = 16, **kwargs) -> Discriminator:
    return Discriminator(c_dim=c_dim, img_resolution=res, img_channels=2, architecture=architecture, channel_base=64,
                         channel_max=8, mapping_kwargs=dict(num_layers=2), **kwargs)


@pytest.mark.parametrize("n,group_size,num_channels", [(8, 4, 1), (6, 2, 2), (3, 4, 1), (4, None, 3)])
def test_minibatch_std_matches_group_loop(n, group_size, num_channels):
    x = torch.randn(n, 6, 3, 2, dtype=torch.float64)
    out = MinibatchStdLayer(group_size, num_channels)(x)
    group = n if group_size is None else min(group_size, n)
    num_groups = n // group
    expected = torch.empty(n, num_channels, 3, 2, dtype=torch.float64)
    for j in range(num_groups):
        members = [j + g * num_groups for g in range(group)]  # sample i is in group i mod (N / G)
        for f in range(num_channels):
            chans = slice(f * 6 // num_channels, (f + 1) * 6 // num_channels)
            values = x[members, chans]  # [G, C/F, H, W]
            mean = sum(values[g] for g in range(group)) / group
            var = sum((values[g] - mean) ** 2 for g in range(group)) / group
            expected[members, f] = (var + 1e-8).sqrt().mean()
    torch.testing.assert_close(out[:, :6], x, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 6:], expected, rtol=1e-12, atol=1e-12)


def test_minibatch_std_rejects_indivisible_batch():
    with pytest.raises(UserError, match="mbstd group size"):
        MinibatchStdLayer(4)(torch.randn(6, 2, 4, 4))


def test_projection_logit_is_scaled_inner_product_with_label_embedding():
    D = _small_d(epilogue_kwargs=dict(mbstd_group_size=2))
    captured = {}
    D.b4.out.register_forward_hook(lambda m, inp, out: captured.__setitem__("out", out))
    D.mapping.register_forward_hook(lambda m, inp, out: captured.__setitem__("cmap", out))
    logits = D(torch.randn(4, 2, 16, 16), torch.randn(4, 3))
    assert D.cmap_dim == 8 and captured["out"].shape == (4, 8) and captured["cmap"].shape == (4, 8)
    expected = (captured["out"] * captured["cmap"]).sum(dim=1, keepdim=True) / math.sqrt(8)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)


def test_unconditional_discriminator_outputs_the_out_layer():
    D = _small_d(c_dim=0, epilogue_kwargs=dict(mbstd_group_size=2))
    assert not hasattr(D, "mapping") and D.b4.out.out_features == 1
    captured = {}
    D.b4.out.register_forward_hook(lambda m, inp, out: captured.__setitem__("out", out))
    logits = D(torch.randn(2, 2, 16, 16), None)
    torch.testing.assert_close(logits, captured["out"], rtol=0, atol=0)


@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
def test_architectures(architecture):
    D = _small_d(architecture, res=32, epilogue_kwargs=dict(mbstd_group_size=2))
    assert D(torch.randn(2, 2, 32, 32), torch.randn(2, 3)).shape == (2, 1)
    assert hasattr(D.b16, "fromrgb") == (architecture == "skip") and hasattr(D.b32, "fromrgb")
    assert hasattr(D.b4, "fromrgb") == (architecture == "skip")
    assert hasattr(D.b16, "skip") == (architecture == "resnet")


def test_freeze_layers_turns_the_first_layers_into_buffers():
    # Layers are numbered fromrgb, conv0, conv1, skip per block: b16 -> 0..3, b8 -> conv0 4, conv1 5, skip 6.
    frozen = _small_d(block_kwargs=dict(freeze_layers=5))
    trainable = {name for name, _ in frozen.named_parameters()}
    assert not any(name.startswith(("b16.", "b8.conv0.")) for name in trainable)
    assert {"b8.conv1.weight", "b8.conv1.bias", "b8.skip.weight", "b4.conv.weight"} <= trainable
    reference = _small_d()
    # Same names (frozen layers list their buffers after resample_filter, as in stylegan2-ada-pytorch).
    assert sorted(frozen.state_dict()) == sorted(reference.state_dict())
    frozen.load_state_dict(reference.state_dict(), strict=True)


def _expected_eg3d_d512_state() -> list[tuple[str, list[int]]]:
    """EG3D FFHQ-512 discriminator (c_dim 25, 6 channels) state_dict without DualDiscriminator's own top-level
    ``resample_filter`` buffer, written from reference §3.2-§3.3."""
    channels = {512: 64, 256: 128, 128: 256, 64: 512, 32: 512, 16: 512, 8: 512, 4: 512}

    def conv(p, cout, cin, k, bias=True):
        return [(f"{p}.weight", [cout, cin, k, k])] + ([(f"{p}.bias", [cout])] if bias else []) + \
            [(f"{p}.resample_filter", [4, 4])]

    items = []
    for res in (512, 256, 128, 64, 32, 16, 8):
        tmp, out, p = channels[res], channels[res // 2], f"b{res}"
        items += [(f"{p}.resample_filter", [4, 4])]
        items += conv(f"{p}.fromrgb", tmp, 6, 1) if res == 512 else []
        items += conv(f"{p}.conv0", tmp, tmp, 3) + conv(f"{p}.conv1", out, tmp, 3)
        items += conv(f"{p}.skip", out, tmp, 1, bias=False)
    items += [("mapping.embed.weight", [512, 25]), ("mapping.embed.bias", [512])]
    for i in range(8):
        items += [(f"mapping.fc{i}.weight", [512, 512]), (f"mapping.fc{i}.bias", [512])]
    items += conv("b4.conv", 512, 513, 3)
    items += [("b4.fc.weight", [512, 8192]), ("b4.fc.bias", [512]), ("b4.out.weight", [512, 512]),
              ("b4.out.bias", [512])]
    return items


def test_conditional_512_state_dict_matches_eg3d():
    with torch.device("meta"):
        D = Discriminator(c_dim=25, img_resolution=512, img_channels=6, channel_base=32768, channel_max=512,
                          epilogue_kwargs=dict(mbstd_group_size=4))
    state = [(k, list(v.shape)) for k, v in D.state_dict().items()]
    assert state == _expected_eg3d_d512_state()
    # EG3D's DualDiscriminator has 92 tensors: these 91 plus its top-level resample_filter buffer (no parameters).
    assert len(state) == 91
    assert sum(p.numel() for p in D.parameters()) == 31_359_744


def test_r1_double_backward_matches_finite_differences():
    # penalty(theta) = sum ||dD/dimg||^2. Its derivative along a random parameter direction v, from double backward,
    # must equal the central difference (float64, eps 1e-5: truncation ~1e-10, rounding ~1e-11 relative).
    D = _small_d(res=8, epilogue_kwargs=dict(mbstd_group_size=2)).double()
    img, c = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    params = list(D.parameters())
    direction = [torch.randn_like(p) for p in params]

    def penalty(create_graph: bool) -> torch.Tensor:
        x = img.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x, c).sum(), x, create_graph=create_graph)
        return grad.square().sum()

    penalty(create_graph=True).backward()
    # The out layer's bias does not reach the input gradient, so it gets no gradient (None) here.
    analytic = sum((p.grad * v).sum() for p, v in zip(params, direction, strict=True) if p.grad is not None).item()
    eps = 1e-5
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for p, v in zip(params, direction, strict=True):
                p.add_(sign * eps * v)
            with torch.enable_grad():
                values.append(penalty(create_graph=False).item())
            for p, v in zip(params, direction, strict=True):
                p.sub_(sign * eps * v)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert analytic != 0
    assert abs(analytic - numeric) <= 1e-6 * abs(numeric)


def test_conditional_discriminator_32_forward_backward_is_fast():
    D = Discriminator(c_dim=25, img_resolution=32, img_channels=3, channel_base=256, channel_max=32,
                      mapping_kwargs=dict(num_layers=2), epilogue_kwargs=dict(mbstd_group_size=4))
    img, c = torch.randn(4, 3, 32, 32), torch.randn(4, 25)
    times = []
    for _ in range(3):  # CPU time, best of 3: unaffected by other processes on a shared machine and first-call setup
        start = time.process_time()
        logits = D(img, c)
        logits.square().sum().backward()
        times.append(time.process_time() - start)
    assert logits.shape == (4, 1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
    # Measured 0.03-0.1 CPU-s (all threads) after the first call; the bound leaves headroom for slower CPUs.
    assert min(times) < 2.0, f"D forward+backward at 32x32 took {min(times):.2f} CPU-s"
