"""torch_utils.ops against independent references.

References are written from the definitions with numpy/scipy in float64: explicit zero insertion into a larger array,
explicit padding/cropping by index arithmetic, ``scipy.signal.convolve2d``/``correlate2d`` in 'valid' mode, and strided
slicing. Tolerances: float32 ops vs float64 references 1e-5 (absolute, values are O(1)); float64 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from dnnlib import UserError
from torch_utils.ops import upfirdn2d as ufd
from torch_utils.ops.bias_act import activation_funcs, bias_act, default_gain
from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.filtered_resize import filtered_resize

ATOL32 = 1e-5

# ---------------------------------------------------------------------------------------------------------------------
# Brute-force references (numpy, float64)


def _ref_zero_insert(x: np.ndarray, upx: int, upy: int) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.zeros((n, c, h * upy, w * upx))
    out[:, :, ::upy, ::upx] = x
    return out


def _ref_pad(x: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """Index arithmetic: output pixel (i, j) reads input (i - y0, j - x0) when inside, else 0."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + y0 + y1, w + x0 + x1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            si, sj = i - y0, j - x0
            if 0 <= si < h and 0 <= sj < w:
                out[:, :, i, j] = x[:, :, si, sj]
    return out


def _ref_filter(x: np.ndarray, k: np.ndarray, correlate: bool) -> np.ndarray:
    op = scipy.signal.correlate2d if correlate else scipy.signal.convolve2d
    n, c = x.shape[:2]
    return np.stack([np.stack([op(x[i, j], k, mode="valid") for j in range(c)]) for i in range(n)])


def _ref_upfirdn(x, f2d, up, down, pad, flip_filter=False, gain=1.0):
    """x [N, C, H, W]; f2d the 2-D filter (already outer() for separable ones); up/down (x, y); pad (x0, x1, y0, y1)."""
    u = _ref_zero_insert(x, *up)
    u = _ref_pad(u, *pad)
    u = _ref_filter(u, f2d * gain, correlate=flip_filter)
    return u[:, :, :: down[1], :: down[0]]


def _as_2d(f: np.ndarray) -> np.ndarray:
    return np.outer(f, f) if f.ndim == 1 else f


# ---------------------------------------------------------------------------------------------------------------------
# setup_filter


def test_setup_filter_shapes_and_normalisation():
    f4 = ufd.setup_filter([1, 3, 3, 1])
    assert f4.shape == (4, 4) and f4.dtype == torch.float32
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    np.testing.assert_allclose(f4.numpy(), expected, atol=1e-7)
    f8 = ufd.setup_filter(list(range(1, 9)))
    assert f8.shape == (8,)
    np.testing.assert_allclose(f8.numpy(), np.arange(1, 9) / 36.0, atol=1e-7)
    # gain g on a 2-D filter multiplies it by g; on a 1-D separable one by sqrt(g).
    np.testing.assert_allclose(ufd.setup_filter([1, 3, 3, 1], gain=4).numpy(), 4 * expected, atol=1e-6)
    f8_gain4 = ufd.setup_filter(list(range(1, 9)), gain=4)
    np.testing.assert_allclose(f8_gain4.numpy(), 2 * np.arange(1, 9) / 36.0, atol=1e-6)
    flipped = ufd.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True)
    np.testing.assert_array_equal(flipped.numpy(), [[4, 3], [2, 1]])
    assert ufd.setup_filter(None).tolist() == [[1.0]]
    assert ufd.setup_filter([1, 2, 1], separable=True).shape == (3,)


# ---------------------------------------------------------------------------------------------------------------------
# upfirdn2d

UPFIRDN_CASES = [
    # (H, W, taps, up, down, padding)
    (5, 6, [1, 3, 3, 1], 1, 1, 0),
    (5, 6, [1, 3, 3, 1], 2, 1, (2, 1)),
    (5, 6, [1, 3, 3, 1], 1, 2, (1, 2, 0, 3)),
    (4, 5, [1, 3, 3, 1], 4, 2, (-1, 2, 3, -2)),
    (8, 7, [1, 2, 1], (2, 1), (1, 2), (1, 0, 0, 1)),
    (6, 6, [1, 2, 3, 4, 4, 3, 2, 1], 2, 4, (3, 4)),  # 8 taps: separable path
    (6, 5, [[1, 2, 0], [0, 1, -1]], 2, 2, (-1, 1, 2, 0)),  # non-symmetric 2-D filter
    (7, 7, None, 2, 4, (1, -2, 0, 1)),
]


@pytest.mark.parametrize("flip_filter", [False, True])
@pytest.mark.parametrize("h,w,taps,up,down,padding", UPFIRDN_CASES)
def test_upfirdn2d_matches_brute_force(h, w, taps, up, down, padding, flip_filter):
    x = torch.randn(2, 3, h, w)
    f = ufd.setup_filter(taps) if taps is not None else None
    gain = 1.7
    y = ufd.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    f2d = _as_2d(f.double().numpy()) if f is not None else np.ones((1, 1))
    ref = _ref_upfirdn(
        x.double().numpy(),
        f2d,
        ufd._pair(up, "up"),
        ufd._pair(down, "down"),
        ufd.parse_padding(padding),
        flip_filter,
        gain,
    )
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, atol=ATOL32, rtol=0)


def test_upfirdn2d_flip_semantics_on_impulse():
    """Closed form: the impulse response of a true convolution is the filter; of a correlation, the flipped filter."""
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1
    f = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    conv = ufd.upfirdn2d(x, f, padding=1)[0, 0, 1:4, 1:4]
    corr = ufd.upfirdn2d(x, f, padding=1, flip_filter=True)[0, 0, 1:4, 1:4]
    torch.testing.assert_close(conv, f, rtol=0, atol=0)
    torch.testing.assert_close(corr, f.flip([0, 1]), rtol=0, atol=0)


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], list(range(1, 9))])
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_resample_helpers(taps, factor):
    x = torch.randn(1, 2, 8, 8)
    f = ufd.setup_filter(taps)
    f2d = _as_2d(f.double().numpy())
    fh, fw = f2d.shape
    xn = x.double().numpy()
    same = ufd.filter2d(x, f, padding=(1, 0, 0, 2))
    ref = _ref_upfirdn(xn, f2d, (1, 1), (1, 1), (1 + fw // 2, (fw - 1) // 2, fh // 2, 2 + (fh - 1) // 2))
    assert same.shape == (1, 2, 10, 9)
    np.testing.assert_allclose(same.numpy(), ref, atol=ATOL32, rtol=0)
    up = ufd.upsample2d(x, f, up=factor)
    assert up.shape == (1, 2, 8 * factor, 8 * factor)
    pad = ((fw + factor - 1) // 2, (fw - factor) // 2) * 2
    ref = _ref_upfirdn(xn, f2d, (factor, factor), (1, 1), pad, gain=factor**2)
    np.testing.assert_allclose(up.numpy(), ref, atol=ATOL32, rtol=0)
    down = ufd.downsample2d(x, f, down=factor)
    assert down.shape == (1, 2, 8 // factor, 8 // factor)
    pad = ((fw - factor + 1) // 2, (fw - factor) // 2) * 2
    ref = _ref_upfirdn(xn, f2d, (1, 1), (factor, factor), pad)
    np.testing.assert_allclose(down.numpy(), ref, atol=ATOL32, rtol=0)


def test_upsample_then_downsample_preserves_constant_interior():
    """A normalised filter with gain up**2 keeps a constant image constant away from the zero-padded border."""
    x = torch.full((1, 1, 8, 8), 0.5)
    y = ufd.upsample2d(x, ufd.setup_filter([1, 3, 3, 1]))
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full((1, 1, 12, 12), 0.5), rtol=0, atol=1e-6)


def test_upfirdn2d_gradients():
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    for f, up, down, padding in [
        (ufd.setup_filter([1, 3, 3, 1]).double(), 2, 1, (2, 1)),
        (ufd.setup_filter([1, 2, 3, 4, 4, 3, 2, 1]).double(), 1, 2, (3, 2, 4, 3)),
        (torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64), (1, 2), (2, 1), (-1, 1, 1, 0)),
    ]:

        def fn(inp, f=f, up=up, down=down, padding=padding):
            return ufd.upfirdn2d(inp, f, up=up, down=down, padding=padding, gain=1.3)

        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-10)
        assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# conv2d_resample


def _ref_conv2d_resample(x, w, f2d, up, down, padding, groups, flip_weight, flip_filter):
    """The five steps of the conv2d_resample definition, each done literally."""
    fh, fw = f2d.shape
    x0, x1, y0, y1 = padding
    if up > 1:
        x0, x1, y0, y1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    u = _ref_pad(_ref_zero_insert(x, up, up), x0, x1, y0, y1)
    if up > 1:
        u = _ref_filter(u, f2d * up**2, correlate=flip_filter)
    out_c, in_per_group = w.shape[:2]
    out_per_group = out_c // groups
    op = scipy.signal.correlate2d if flip_weight else scipy.signal.convolve2d
    ho, wo = u.shape[2] - w.shape[2] + 1, u.shape[3] - w.shape[3] + 1
    y = np.zeros((x.shape[0], out_c, ho, wo))
    for n in range(x.shape[0]):
        for o in range(out_c):
            g = o // out_per_group
            for i in range(in_per_group):
                y[n, o] += op(u[n, g * in_per_group + i], w[o, i], mode="valid")
    if down > 1:
        y = _ref_filter(y, f2d, correlate=flip_filter)[:, :, ::down, ::down]
    return y


CONV_CASES = [
    # (kernel, up, down, padding, groups, taps)
    (3, 1, 1, 1, 1, [1, 3, 3, 1]),
    (3, 1, 1, (0, 1, 2, 0), 1, [1, 3, 3, 1]),
    (3, 2, 1, 1, 1, [1, 3, 3, 1]),
    (3, 1, 2, 1, 1, [1, 3, 3, 1]),
    (1, 2, 1, 0, 1, [1, 3, 3, 1]),
    (1, 1, 2, 0, 1, [1, 3, 3, 1]),
    (3, 2, 1, 1, 2, [1, 3, 3, 1]),
    (3, 1, 2, 1, 2, [1, 3, 3, 1]),
    (3, 2, 2, (1, 0), 2, [1, 2, 1]),
    (1, 2, 2, 0, 2, [1, 3, 3, 1]),
    (2, 4, 1, (0, 1, -1, 2), 1, [1, 3, 3, 1]),
    (3, 2, 1, (-2, -3, 4, 0), 1, [1, 3, 3, 1]),
    (3, 1, 4, 2, 1, list(range(1, 9))),
]


@pytest.mark.parametrize("flip_weight", [True, False])
@pytest.mark.parametrize("flip_filter", [False, True])
@pytest.mark.parametrize("k,up,down,padding,groups,taps", CONV_CASES)
def test_conv2d_resample_matches_brute_force(k, up, down, padding, groups, taps, flip_weight, flip_filter):
    x = torch.randn(2, 2 * groups, 6, 5)
    w = torch.randn(3 * groups, 2, k, k)
    f = ufd.setup_filter(taps)
    y = conv2d_resample(
        x, w, f, up=up, down=down, padding=padding, groups=groups, flip_weight=flip_weight, flip_filter=flip_filter
    )
    ref = _ref_conv2d_resample(
        x.double().numpy(),
        w.double().numpy(),
        _as_2d(f.double().numpy()),
        up,
        down,
        ufd.parse_padding(padding),
        groups,
        flip_weight,
        flip_filter,
    )
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, atol=ATOL32 * 4, rtol=0)  # sums of ~50 O(1) products


def test_conv2d_resample_plain_is_conv2d():
    """With no resampling and flip_weight=True the op is exactly F.conv2d (the stored-weight convention)."""
    x, w = torch.randn(2, 4, 7, 7), torch.randn(6, 2, 3, 3)
    torch.testing.assert_close(conv2d_resample(x, w, padding=1, groups=2), F.conv2d(x, w, padding=1, groups=2))


@pytest.mark.parametrize("up,down,groups", [(2, 1, 1), (1, 2, 2), (2, 2, 2)])
def test_conv2d_resample_gradients(up, down, groups):
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    f = ufd.setup_filter([1, 3, 3, 1]).double()

    def fn(inp, weight):
        return conv2d_resample(inp, weight, f, up=up, down=down, padding=1, groups=groups, flip_weight=(up == 1))

    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-10)
    assert torch.autograd.gradgradcheck(fn, (x, w), eps=1e-6, atol=1e-10)


def test_conv2d_resample_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        conv2d_resample(torch.randn(1, 3, 4, 4), torch.randn(2, 2, 3, 3), groups=2)


# ---------------------------------------------------------------------------------------------------------------------
# bias_act


def _np_act(act: str, x: np.ndarray, alpha: float) -> np.ndarray:
    """Direct formulas, written independently of torch's activations."""
    sig = 1 / (1 + np.exp(-x))
    selu_l, selu_a = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    return {
        "linear": x,
        "relu": np.maximum(x, 0),
        "lrelu": np.where(x >= 0, x, alpha * x),
        "tanh": np.tanh(x),
        "sigmoid": sig,
        "elu": np.where(x > 0, x, alpha * (np.exp(x) - 1)),
        "selu": selu_l * np.where(x > 0, x, selu_a * (np.exp(x) - 1)),
        "softplus": np.log1p(np.exp(x)),
        "swish": x * sig,
    }[act]


EXPECTED_DEFAULTS = {
    "linear": (None, 1.0),
    "relu": (None, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
    "tanh": (None, 1.0),
    "sigmoid": (None, 1.0),
    "elu": (1.0, 1.0),
    "selu": (None, 1.0),
    "softplus": (None, 1.0),
    "swish": (None, math.sqrt(2)),
}


def test_activation_table():
    assert set(activation_funcs) == set(EXPECTED_DEFAULTS)
    for act, (alpha, gain) in EXPECTED_DEFAULTS.items():
        assert activation_funcs[act].def_alpha == alpha
        assert default_gain(act) == gain


@pytest.mark.parametrize("act", sorted(EXPECTED_DEFAULTS))
def test_bias_act_matches_formula(act):
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 2
    b = torch.randn(4, dtype=torch.float64)
    xn, bn = x.numpy(), b.numpy()
    def_alpha, def_gain = EXPECTED_DEFAULTS[act]
    # defaults, bias along dim 1
    ref = _np_act(act, xn + bn[None, :, None], def_alpha if def_alpha is not None else 0.0) * def_gain
    np.testing.assert_allclose(bias_act(x, b, act=act).numpy(), ref, atol=1e-12, rtol=0)
    # explicit alpha, gain and clamp, bias along the last dim (negative index)
    b5 = torch.randn(5, dtype=torch.float64)
    pre = xn + b5.numpy()[None, None, :]
    ref = np.clip(_np_act(act, pre, 0.3) * 2.5, -0.7, 0.7)
    out = bias_act(x, b5, dim=-1, act=act, alpha=0.3, gain=2.5, clamp=0.7)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12, rtol=0)
    # no bias
    np.testing.assert_allclose(bias_act(x, act=act, gain=1).numpy(), _np_act(act, xn, def_alpha or 0.0), atol=1e-12)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "elu", "softplus", "swish"])
def test_bias_act_gradients(act):
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(inp, bias):
        return bias_act(inp, bias, act=act, clamp=1.5)

    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-10)
    assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-10)


def test_bias_act_errors():
    with pytest.raises(UserError, match="'gelu2'"):
        bias_act(torch.zeros(2, 3), act="gelu2")
    with pytest.raises(ValueError, match="bias shape"):
        bias_act(torch.zeros(2, 3), torch.zeros(2))


# ---------------------------------------------------------------------------------------------------------------------
# filtered_resize


@pytest.mark.parametrize("mode", ["antialiased", "none", "classic"])
@pytest.mark.parametrize("size_in,size_out", [(16, 8), (8, 16), (12, 12)])
def test_filtered_resize_constant(mode, size_in, size_out):
    x = torch.full((2, 3, size_in, size_in), -0.25)
    y = filtered_resize(x, size_out, mode=mode, f=ufd.setup_filter([1, 3, 3, 1]))
    assert y.shape == (2, 3, size_out, size_out)
    # 'classic' zero-pads around its FIR steps, which darkens the outermost pixels (1 ring when downscaling, 2 when
    # upscaling by 2); the rest stays constant.
    inner = y[:, :, 2:-2, 2:-2] if mode == "classic" else y
    torch.testing.assert_close(inner, torch.full_like(inner, -0.25), rtol=0, atol=1e-6)


def test_filtered_resize_unknown_mode():
    with pytest.raises(UserError, match="mode"):
        filtered_resize(torch.zeros(1, 1, 4, 4), 2, mode="bicubic")
