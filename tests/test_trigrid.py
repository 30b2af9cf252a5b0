"""Tri-grid layout, sampling and decoder, checked against samplers written here with explicit index arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from dnnlib import UserError
from training.rendering.trigrid import TriGridDecoder, sample_trigrid, trigrid_from_synthesis


def _corner_weights(coord: float, size: int) -> list[tuple[int, float]]:
    """align_corners=False linear interpolation along one axis: (cell index, weight) for the two neighbours."""
    pos = ((coord + 1.0) * size - 1.0) / 2.0  # continuous cell index; cell i covers [i − ½, i + ½]
    lo = math.floor(pos)
    return [(lo, 1.0 - (pos - lo)), (lo + 1, pos - lo)]


def _bilinear(plane: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """plane [C, H, W] at normalised (u → W, v → H), zero outside."""
    out = torch.zeros(plane.shape[0], dtype=plane.dtype)
    for iy, wy in _corner_weights(v, plane.shape[1]):
        for ix, wx in _corner_weights(u, plane.shape[2]):
            if 0 <= iy < plane.shape[1] and 0 <= ix < plane.shape[2]:
                out += wy * wx * plane[:, iy, ix]
    return out


def _trilinear(volume: torch.Tensor, u: float, v: float, w: float) -> torch.Tensor:
    """volume [C, D, H, W] at normalised (u → W, v → H, w → D), zero outside."""
    out = torch.zeros(volume.shape[0], dtype=volume.dtype)
    for iz, wz in _corner_weights(w, volume.shape[1]):
        if 0 <= iz < volume.shape[1]:
            out += wz * _bilinear(volume[:, iz], u, v)
    return out


def _points(n: int, extent: float) -> torch.Tensor:
    return (torch.rand(1, n, 3, dtype=torch.float64) * 2 - 1) * extent


def test_synthesis_layout_is_c_major_d_minor():
    b, c, d, h = 2, 4, 3, 5
    x = torch.randn(b, 3 * c * d, h, h)
    planes = trigrid_from_synthesis(x, depth=d, channels=c)
    for p in range(3):
        for ci in range(c):
            for di in range(d):
                assert torch.equal(planes[:, p, ci, di], x[:, p * c * d + ci * d + di])
    with pytest.raises(UserError, match="channels"):
        trigrid_from_synthesis(x, depth=2, channels=c)


@pytest.mark.parametrize("box_warp", [1.0, 1.6])
def test_eg3d_mode_equals_bilinear_triplane(box_warp):
    planes = torch.randn(1, 3, 5, 1, 6, 7, dtype=torch.float64)
    pts = _points(40, 0.6 * box_warp)
    out = sample_trigrid(planes, pts, box_warp=box_warp, axes="eg3d")
    for m, (x, y, z) in enumerate((pts[0] * 2 / box_warp).tolist()):
        for p, (u, v) in enumerate([(x, y), (x, z), (z, x)]):  # EG3D's third plane is the transposed xz-plane
            torch.testing.assert_close(out[0, p, m], _bilinear(planes[0, p, :, 0], u, v), rtol=0, atol=1e-12)


def test_panohead_depth_one_is_bilinear_times_depth_fade():
    """D = 1 reads the 2-D bilinear tri-plane (xy, xz, yz) scaled by the single depth cell's fade 1 − |depth|/2."""
    planes = torch.randn(1, 3, 4, 1, 5, 5, dtype=torch.float64)
    pts = _points(40, 0.7)
    out = sample_trigrid(planes, pts)
    for m, (x, y, z) in enumerate((pts[0] * 2).tolist()):
        for p, (u, v, depth) in enumerate([(x, y, z), (x, z, y), (y, z, x)]):
            expected = _bilinear(planes[0, p, :, 0], u, v) * max(0.0, 1 - abs(depth) / 2)
            torch.testing.assert_close(out[0, p, m], expected, rtol=0, atol=1e-12)


def test_panohead_trilinear_matches_oracle():
    planes = torch.randn(2, 3, 3, 3, 4, 6, dtype=torch.float64)
    pts = torch.cat([_points(25, 0.7), _points(25, 0.7)])
    out = sample_trigrid(planes, pts, box_warp=1.2)
    for b in range(2):
        for m, (x, y, z) in enumerate((pts[b] * 2 / 1.2).tolist()):
            for p, uvw in enumerate([(x, y, z), (x, z, y), (y, z, x)]):
                torch.testing.assert_close(out[b, p, m], _trilinear(planes[b, p], *uvw), rtol=0, atol=1e-12)


def test_cell_centres_read_exact_cells():
    n = 4  # D = H = W = 4: cell centres at normalised (2i + 1)/4 − 1, world half of that (box_warp 1)
    planes = torch.randn(1, 3, 2, n, n, n, dtype=torch.float64)
    centre = [((2 * i + 1) / n - 1) / 2 for i in range(n)]
    idx = torch.cartesian_prod(*[torch.arange(n)] * 3)  # (i, j, k) ↔ (x, y, z)
    pts = torch.tensor(centre, dtype=torch.float64)[idx][None]
    out = sample_trigrid(planes, pts)
    for m, (i, j, k) in enumerate(idx.tolist()):
        torch.testing.assert_close(out[0, 0, m], planes[0, 0, :, k, j, i], rtol=0, atol=1e-12)  # xy, depth z
        torch.testing.assert_close(out[0, 1, m], planes[0, 1, :, j, k, i], rtol=0, atol=1e-12)  # xz, depth y
        torch.testing.assert_close(out[0, 2, m], planes[0, 2, :, i, k, j], rtol=0, atol=1e-12)  # yz, depth x


def test_zero_features_outside_the_box():
    planes = torch.randn(1, 3, 4, 3, 8, 8)
    pts = _points(30, 0.45).float()
    axis = torch.arange(30) % 3
    # Half a depth cell (1/3 normalised = 1/6 world) beyond the face of the unit box nothing is left.
    pts[0, torch.arange(30), axis] = torch.where(torch.arange(30) % 2 == 0, 0.68, -0.68)
    assert torch.count_nonzero(sample_trigrid(planes, pts)) == 0
    inside = sample_trigrid(planes, _points(30, 0.45).float())
    assert torch.all(inside.abs().sum(-1) > 0)


def test_eg3d_zx_swap_on_hand_built_example():
    planes = torch.zeros(1, 3, 1, 1, 2, 2)
    for p in range(3):
        planes[0, p, 0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]]) + 10 * p  # [row h, column w]
    point = torch.tensor([[[0.25, -0.25, -0.25]]])  # cell centres: x → index 1, y → index 0, z → index 0
    eg3d = sample_trigrid(planes, point, axes="eg3d")[0, :, 0, 0]
    # xy: (w=x=1, h=y=0) → 2; xz: (w=x=1, h=z=0) → 12; EG3D zx: (w=z=0, h=x=1) → 23.
    torch.testing.assert_close(eg3d, torch.tensor([2.0, 12.0, 23.0]), rtol=0, atol=1e-6)
    # PanoHead: the third plane is yz (w=y=0, h=z=0) → 21; depth x = 0.5 normalised → fade 0.75; others fade 0.75 too.
    pano = sample_trigrid(planes, point)[0, :, 0, 0]
    torch.testing.assert_close(pano, torch.tensor([2.0, 12.0, 21.0]) * 0.75, rtol=0, atol=1e-6)


def test_sampling_errors_and_gradient():
    with pytest.raises(UserError, match="depth 1"):
        sample_trigrid(torch.zeros(1, 3, 2, 3, 4, 4), torch.zeros(1, 5, 3), axes="eg3d")
    with pytest.raises(UserError, match="axes"):
        sample_trigrid(torch.zeros(1, 3, 2, 1, 4, 4), torch.zeros(1, 5, 3), axes="xyz")
    planes = torch.randn(1, 3, 2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    pts = _points(4, 0.4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, q: sample_trigrid(a, q), (planes, pts), eps=1e-6, atol=1e-7)


def test_decoder_state_dict_matches_eg3d_names():
    dec = TriGridDecoder()
    shapes = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert shapes == {"net.0.weight": (64, 32), "net.0.bias": (64,), "net.2.weight": (33, 64), "net.2.bias": (33,)}
    state = {k: torch.randn(s) for k, s in shapes.items()}
    dec.load_state_dict(state, strict=True)


@pytest.mark.parametrize("activation", ["sigmoid", "none", "lrelu"])
@pytest.mark.parametrize("lr_multiplier", [1.0, 0.1])
def test_decoder_forward_matches_explicit_formula(activation, lr_multiplier):
    dec = TriGridDecoder(in_features=6, hidden_features=5, out_features=4, activation=activation,
                         lr_multiplier=lr_multiplier).double()
    with torch.no_grad():
        for p in dec.parameters():
            p.copy_(torch.randn_like(p))
    feats = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    sigma, out = dec(feats)
    sd = dec.state_dict()
    x = feats.mean(1)
    h = x @ (sd["net.0.weight"] * lr_multiplier / math.sqrt(6)).T + sd["net.0.bias"] * lr_multiplier
    h = torch.log1p(torch.exp(h))
    y = h @ (sd["net.2.weight"] * lr_multiplier / math.sqrt(5)).T + sd["net.2.bias"] * lr_multiplier
    f = y[..., 1:]
    expected = {"sigmoid": 1.002 / (1 + torch.exp(-f)) - 0.001, "none": f,
                "lrelu": torch.where(f > 0, f, 0.2 * f) * math.sqrt(2)}[activation]
    assert sigma.shape == (2, 7, 1) and out.shape == (2, 7, 4)
    torch.testing.assert_close(sigma, y[..., :1], rtol=0, atol=1e-12)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_decoder_storage_scaling_and_errors():
    torch.manual_seed(1)
    dec = TriGridDecoder(lr_multiplier=0.01)
    w = dec.state_dict()["net.0.weight"]
    assert 80 < w.std().item() < 120  # raw storage ~ N(0, 1)/lr_multiplier; 2048 entries → std within ±20%
    assert torch.count_nonzero(dec.state_dict()["net.0.bias"]) == 0
    with pytest.raises(UserError, match="activation"):
        TriGridDecoder(activation="relu")
