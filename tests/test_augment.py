"""ADA tests against independent oracles: torch.flip / torch.roll / torch.rot90 for pixel blits, a brute-force bicubic
loop for general maps, closed forms of the colour transforms on constant images, binomial statistics of the firing
rate, the closed-form AdaptiveP step, and gradgradcheck in float64 (R1 on augmented reals)."""

from __future__ import annotations

import math

import pytest
import torch

from dnnlib import UserError
from training.augment import (
    AdaptiveP,
    AugmentPipe,
    apply_geometry,
    parse_preset,
    rotate2d,
    scale2d,
    translate2d,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These ops are tiny: one intra-op thread avoids thread start-up costs that dominate on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_images(n: int, c: int, h: int, w: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=_gen(seed), dtype=dtype) * 2 - 1


def test_parse_preset():
    assert parse_preset("bgc") == (
        "xflip",
        "rotate90",
        "xint",
        "scale",
        "rotate",
        "aniso",
        "xfrac",
        "brightness",
        "contrast",
        "lumaflip",
        "hue",
        "saturation",
    )
    assert parse_preset("c") == ("brightness", "contrast", "lumaflip", "hue", "saturation")
    assert parse_preset("gb") == parse_preset("bg")
    assert parse_preset("brightness, xint") == ("xint", "brightness")
    for bad in ["", "bgx", "bb", "xflip,shear"]:
        with pytest.raises(UserError, match="augment preset"):
            parse_preset(bad)


def test_p_zero_is_exact_identity():
    x = _rand_images(6, 7, 10, 10, dtype=torch.float32)
    out = AugmentPipe("bgc", p=0.0)(x, color_channels=6, generator=_gen(1))
    assert torch.equal(out, x)


def test_xflip_matches_torch_flip():
    x = _rand_images(48, 2, 6, 9)
    out = AugmentPipe("xflip", p=1.0)(x, color_channels=0, generator=_gen(2))
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-10
    flipped = (out - x.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-10
    assert bool((same | flipped).all())
    # When xflip fires it draws flip/no-flip uniformly (ADA), so at p = 1 both outcomes occur.
    assert 0 < int(flipped.sum()) < 48


def test_integer_translation_matches_roll():
    h, w = 16, 24  # max shifts round(0.125 * size): 2 rows, 3 columns
    x = _rand_images(24, 2, h, w)
    out = AugmentPipe("xint", p=1.0)(x, color_channels=0, generator=_gen(3))
    seen = set()
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-3, 4)
            if (out[i, :, 2:-2, 3:-3] - x[i].roll((dy, dx), dims=(1, 2))[:, 2:-2, 3:-3]).abs().max() < 1e-10
        ]
        assert len(matches) == 1, f"sample {i}: shifts matching the valid region: {matches}"
        seen.add(matches[0])
    assert len(seen) > 5


def test_rotate90_matches_torch_rot90():
    x = _rand_images(32, 3, 8, 8)
    out = AugmentPipe("rotate90", p=1.0)(x, generator=_gen(4))
    ks = []
    for i in range(x.shape[0]):
        k = [k for k in range(4) if (out[i] - torch.rot90(x[i], k, dims=(1, 2))).abs().max() < 1e-10]
        assert len(k) == 1
        ks.append(k[0])
    assert set(ks) == {0, 1, 2, 3}


def _keys(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def test_general_map_matches_bruteforce_bicubic():
    h, w = 11, 12
    x = _rand_images(1, 1, h, w, seed=5)
    inv = rotate2d(torch.tensor([0.4], dtype=F64)) @ scale2d(
        torch.tensor([0.9], dtype=F64), torch.tensor([0.8], dtype=F64)
    )
    inv = translate2d(torch.tensor([0.3], dtype=F64), torch.tensor([-0.6], dtype=F64)) @ inv
    out = apply_geometry(x, inv, antialias=False)  # largest singular value 0.9: magnifying, no blur either way
    checked = 0
    for i in range(h):
        for j in range(w):
            q = torch.tensor([j - (w - 1) / 2, i - (h - 1) / 2, 1.0], dtype=F64)
            u, v, _ = (inv[0] @ q).tolist()
            u, v = u + (w - 1) / 2, v + (h - 1) / 2  # array coordinates of the sampling point
            cols, rows = range(math.floor(u) - 1, math.floor(u) + 3), range(math.floor(v) - 1, math.floor(v) + 3)
            if min(cols) < 0 or max(cols) >= w or min(rows) < 0 or max(rows) >= h:
                continue
            ref = sum(_keys(u - cc) * _keys(v - rr) * float(x[0, 0, rr, cc]) for rr in rows for cc in cols)
            assert abs(float(out[0, 0, i, j]) - ref) < 1e-10
            checked += 1
    assert checked >= 30


def test_integer_shift_with_antialias_is_exact():
    x = _rand_images(2, 3, 8, 8)
    t = torch.tensor([1.0, -2.0], dtype=F64)
    out = apply_geometry(x, translate2d(-t, torch.zeros_like(t)), antialias=True)
    for i, s in enumerate([1, -2]):
        assert (out[i, :, :, 2:-2] - x[i].roll(s, dims=2)[:, :, 2:-2]).abs().max() < 1e-10


def test_minification_is_antialiased():
    # A +-1 checkerboard holds only the Nyquist frequency; shrinking it 3x must give ~0, not a new +-1 pattern.
    board = (((torch.arange(48)[:, None] + torch.arange(48)[None]) % 2) * 2 - 1).to(F64)[None, None]
    three = torch.tensor([3.0], dtype=F64)
    inside = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert apply_geometry(board, scale2d(three, three), antialias=False)[inside].abs().max() > 0.9
    assert apply_geometry(board, scale2d(three, three), antialias=True)[inside].abs().max() < 1e-3


def test_channel_groups_stay_aligned():
    x = _rand_images(16, 4, 12, 12)
    x[:, 3] = 0.5 * x[:, 0] + 0.25  # a "mask" channel that is an affine function of the red channel
    out = AugmentPipe("bg", p=1.0)(x, color_channels=3, generator=_gen(6))
    assert (out[:, 3] - (0.5 * out[:, 0] + 0.25)).abs().max() < 1e-10
    assert bool(((out - x).abs().amax(dim=(1, 2, 3)) > 0.1).all())


def test_color_is_one_affine_map_per_sample_after_geometry():
    x = _rand_images(8, 3, 10, 10)
    stacked = torch.cat([x, x, x[:, :1]], dim=1)  # image, its copy (uncoloured), a mask
    out = AugmentPipe("bgc", p=1.0)(stacked, color_channels=3, generator=_gen(7))
    assert (out[:, 6] - out[:, 3]).abs().max() < 1e-10  # mask got exactly the geometry of the image
    for i in range(x.shape[0]):
        src = torch.cat([out[i, 3:6].reshape(3, -1), torch.ones(1, 100, dtype=F64)]).T  # [HW, 4]
        fit = torch.linalg.lstsq(src, out[i, :3].reshape(3, -1).T).solution
        assert (src @ fit - out[i, :3].reshape(3, -1).T).abs().max() < 1e-9
        assert (fit[:3] - torch.eye(3, dtype=F64)).abs().max() > 1e-3


def test_color_channels_six_share_the_colour_matrix():
    x = _rand_images(8, 3, 4, 4)
    mask = torch.rand(8, 1, 4, 4, dtype=F64, generator=_gen(8))
    out = AugmentPipe("c", p=1.0)(torch.cat([x, x, mask], dim=1), color_channels=6, generator=_gen(9))
    assert torch.equal(out[:, 0:3], out[:, 3:6])
    assert torch.equal(out[:, 6:], mask)
    assert (out[:, :3] - x).abs().min() > 0


def _constant_colours(n: int, seed: int) -> torch.Tensor:
    """[N, 3, 2, 2] images of one random colour each."""
    return (torch.rand(n, 3, 1, 1, dtype=F64, generator=_gen(seed)) * 2 - 1).expand(n, 3, 2, 2).contiguous()


def _is_spatially_constant(out: torch.Tensor) -> bool:
    return bool((out - out[:, :, :1, :1]).abs().max() < 1e-12)


def _check_std(values: torch.Tensor, expected: float) -> None:
    """Sample std of N(0, expected) draws: relative standard error 1/sqrt(2N); allow 4 of them."""
    n = values.numel()
    assert abs(values.std().item() / expected - 1) < 4 / math.sqrt(2 * n)
    assert abs(values.mean().item()) < 4 * expected / math.sqrt(n)


N_COLOUR = 2000


def test_brightness_closed_form():
    x = _constant_colours(N_COLOUR, 10)
    out = AugmentPipe("brightness", p=1.0)(x, generator=_gen(11))
    assert _is_spatially_constant(out)
    d = (out - x)[:, :, 0, 0]
    assert (d - d[:, :1]).abs().max() < 1e-12  # the same offset on every channel
    _check_std(d[:, 0], 0.2)


def test_contrast_closed_form():
    x = _constant_colours(N_COLOUR, 12)
    out = AugmentPipe("contrast", p=1.0)(x, generator=_gen(13))
    assert _is_spatially_constant(out)
    ratio = (out / x)[:, :, 0, 0]
    assert (ratio - ratio[:, :1]).abs().max() < 1e-9  # one factor for all channels (scaling about 0)
    _check_std(ratio[:, 0].log2(), 0.5)


def _grey_and_chroma(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = img[:, :, 0, 0]
    grey = rgb.mean(dim=1, keepdim=True)
    return grey, rgb - grey


def test_saturation_closed_form():
    x = _constant_colours(N_COLOUR, 14)
    out = AugmentPipe("saturation", p=1.0)(x, generator=_gen(15))
    assert _is_spatially_constant(out)
    (g0, c0), (g1, c1) = _grey_and_chroma(x), _grey_and_chroma(out)
    assert (g1 - g0).abs().max() < 1e-12
    s = (c1 * c0).sum(1) / c0.square().sum(1)
    assert (c1 - s[:, None] * c0).abs().max() < 1e-9
    _check_std(s.log2(), 1.0)


def test_hue_closed_form():
    x = _constant_colours(N_COLOUR, 16)
    out = AugmentPipe("hue", p=1.0)(x, generator=_gen(17))
    assert _is_spatially_constant(out)
    (g0, c0), (g1, c1) = _grey_and_chroma(x), _grey_and_chroma(out)
    assert (g1 - g0).abs().max() < 1e-12
    assert (c1.norm(dim=1) - c0.norm(dim=1)).abs().max() < 1e-12  # a rotation about the grey axis
    cos = (c0 * c1).sum(1) / c0.square().sum(1)
    sin = torch.linalg.cross(c0, c1).sum(1) / math.sqrt(3) / c0.square().sum(1)
    angle = torch.atan2(sin, cos)  # uniform on (-pi, pi): mean 0, std pi / sqrt(3)
    assert abs(angle.mean().item()) < 4 * (math.pi / math.sqrt(3)) / math.sqrt(N_COLOUR)
    # relative standard error of the std of N uniform draws: sqrt((9/5 - 1) / (4N)) = 0.01; allow 5 of them
    assert abs(angle.std().item() / (math.pi / math.sqrt(3)) - 1) < 0.05


def test_lumaflip_closed_form():
    x = _constant_colours(N_COLOUR, 18)
    out = AugmentPipe("lumaflip", p=1.0)(x, generator=_gen(19))
    (g0, c0), (g1, c1) = _grey_and_chroma(x), _grey_and_chroma(out)
    assert (c1 - c0).abs().max() < 1e-12
    flipped = (g1 + g0).abs()[:, 0] < 1e-12
    assert bool((flipped | ((g1 - g0).abs()[:, 0] < 1e-12)).all())
    assert abs(flipped.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / N_COLOUR)


@pytest.mark.parametrize(
    ("preset", "p", "rate"),
    [
        ("brightness", 0.3, 0.3),
        ("rotate", 0.3, 0.3),  # two chances with 1 - sqrt(1 - p) each: some rotation with probability p
        ("xflip", 0.6, 0.3),  # fires with p, then flips with probability 1/2
    ],
)
def test_fraction_transformed_matches_p(preset, p, rate):
    n = 3000
    x = _rand_images(n, 3, 6, 6, seed=20, dtype=torch.float32)
    out = AugmentPipe(preset, p=p)(x, generator=_gen(21))
    changed = ((out - x).abs().amax(dim=(1, 2, 3)) > 1e-6).double().mean().item()
    assert abs(changed - rate) < 4 * math.sqrt(rate * (1 - rate) / n)


def test_generator_determinism_and_p_buffer():
    x = _rand_images(4, 3, 8, 8, dtype=torch.float32)
    pipe = AugmentPipe("bgc", p=0.7)
    assert torch.equal(pipe(x, generator=_gen(5)), pipe(x, generator=_gen(5)))
    assert not torch.equal(pipe(x, generator=_gen(5)), pipe(x, generator=_gen(6)))
    other = AugmentPipe("bgc")
    other.load_state_dict(pipe.state_dict())
    assert other.p.item() == pytest.approx(0.7) and "p" in dict(other.named_buffers())
    assert torch.equal(other(x, generator=_gen(5)), pipe(x, generator=_gen(5)))


@pytest.mark.parametrize(("shape", "color_channels", "fast"), [((1, 4, 4, 4), 3, False), ((2, 7, 6, 6), 6, True)])
def test_gradgradcheck_through_pipeline(shape, color_channels, fast):
    x = _rand_images(*shape, seed=22).requires_grad_(True)
    pipe = AugmentPipe("bgc", p=1.0)

    def f(img: torch.Tensor) -> torch.Tensor:
        return pipe(img, color_channels=color_channels, generator=_gen(23))

    assert bool(((f(x) - x).abs().amax(dim=(1, 2, 3)) > 0.1).all())  # every sample is actually transformed
    assert torch.autograd.gradcheck(f, (x,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=fast)


def test_input_errors():
    pipe = AugmentPipe()
    with pytest.raises(UserError, match="color_channels"):
        pipe(torch.zeros(1, 4, 4, 4), color_channels=4)
    with pytest.raises(UserError, match="images"):
        pipe(torch.zeros(4, 4, 4))
    with pytest.raises(UserError, match="p must be"):
        AugmentPipe(p=1.5)


def test_adaptive_p_closed_form_steps():
    ada = AdaptiveP(target=0.6, adjust_kimg=500, batch_interval=4)
    for _ in range(3):
        assert ada.update(0.9, 32) == 0.0  # no adjustment before the interval completes
    assert ada.update(0.9, 32) == pytest.approx(128 / 500_000, abs=1e-15)
    for _ in range(4):
        ada.update(0.2, 32)
    assert ada.p == 0.0  # back down by the same step
    for _ in range(4):
        ada.update(-1.0, 32)
    assert ada.p == 0.0  # clamped at 0


def test_adaptive_p_tensor_input_and_exact_target():
    ada = AdaptiveP(target=0.5, adjust_kimg=2, batch_interval=1, p=0.25)
    assert ada.update(torch.tensor(0.5), 64) == 0.25  # exactly at the target: sign 0, no step
    assert ada.update(torch.tensor(0.75), 64) == pytest.approx(0.25 + 64 / 2000, abs=1e-15)


def test_adaptive_p_weights_by_images_and_clamps_at_one():
    ada = AdaptiveP(target=0.6, adjust_kimg=1, batch_interval=2, p=0.5)
    ada.update(1.0, 90)
    p = ada.update(0.0, 10)  # image-weighted mean 0.9 > 0.6 (unweighted mean 0.5 would go down)
    assert p == pytest.approx(0.5 + 100 / 1000, abs=1e-15)
    for _ in range(20):
        ada.update(1.0, 100)
    assert ada.p == 1.0


def test_adaptive_p_state_round_trip(tmp_path):
    a = AdaptiveP(batch_interval=4, adjust_kimg=10)
    for s in [0.9, 0.8, 0.7, 0.95, 0.1, 0.7]:  # stops two calls into the second interval
        a.update(s, 16)
    torch.save(a.state_dict(), tmp_path / "ada.pt")
    b = AdaptiveP(batch_interval=4, adjust_kimg=10)
    b.load_state_dict(torch.load(tmp_path / "ada.pt", weights_only=True))
    for s in [0.65, 0.9]:
        assert a.update(s, 16) == b.update(s, 16)
    # second interval mean = (0.1 + 0.7 + 0.65 + 0.9) / 4 = 0.5875 < 0.6: one step up, one down -> 0
    assert b.p == 0.0
    with pytest.raises(UserError, match="AdaptiveP state"):
        b.load_state_dict({"p": 0.1})
