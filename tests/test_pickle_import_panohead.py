"""PanoHead network pickles: settings → the ``panohead`` config, weights, outputs with camera self-adaptation, and the
settings that are refused.

The pickles are written by the EG3D-format writer of test_pickle_import.py (PanoHead's persistence format is EG3D's)
plus PanoHead's extra children: ``torgb`` (a ToRGBLayer, or None), ``bcg_synthesis`` (a SynthesisNetwork, or None),
``t_mapping`` (a MappingNetwork), PanoHead's ``plane_axes`` (xy, xz, yz), the rendering_kwargs its train.py adds
(decoder_activation, use_torgb_raw, triplane_size, triplane_depth, trans_reg, use_background), ``architecture`` in
init_kwargs, and a MaskDualDiscriminatorV2 (``seg_resolution``, ``seg_channels``). The network is a tiny PanoHead-layout
generator and tri discriminator with random weights; the oracle is that network built from its own config with the
written tensors, and, for c_scale, the written network fed c·c_scale as PanoHead feeds its mapping and t_mapping.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_pickle_import import SMALL_D, EG3DWriter, cameras, randomised, rendering_kwargs_for, write_fixture

import legacy
from dnnlib import EasyDict, UserError
from training.networks.volumetric_head import VolumetricHeadGenerator
from training.presets import PRESETS, make_discriminator

# PanoHead's renderer.plane_axes (generate_planes): a point p lands at (p·row0, p·row1, p·row2) of each plane.
PANOHEAD_PLANE_AXES = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                    [[0, 1, 0], [0, 0, 1], [1, 0, 0]]])
TRI_D = dataclasses.replace(SMALL_D, inputs=("image", "image_raw", "image_mask"))


def tiny_panohead(**changes: object):
    """PRESETS['panohead-tiny']'s generator (tri-grid 32² × D 3 × 8, decoder 'none', ToRGB raw image, background,
    self-adaptation) with z = w = 16 and 6 + 6 samples per ray, plus ``changes``."""
    base = PRESETS["panohead-tiny"].generator
    render = dataclasses.replace(base.render, depth_resolution=6, depth_resolution_importance=6)
    return dataclasses.replace(base, z_dim=16, w_dim=16, render=render, **changes)


def panohead_rendering(cfg, **overrides: object) -> dict:
    """rendering_kwargs as PanoHead's train.py builds them for --cfg=ffhq (released options), for ``cfg``."""
    released = dict(gpc_reg_prob=0.7, density_reg=0.0, decoder_activation=cfg.decoder_activation,
                    use_torgb_raw=cfg.raw_rgb == "torgb", triplane_size=cfg.trigrid_resolution,
                    triplane_depth=cfg.trigrid_depth, trans_reg=10, use_background=cfg.background)
    return rendering_kwargs_for(cfg, "SuperresolutionHybrid2X", **{**released, **overrides})


def panohead_generator(writer: EG3DWriter, G: VolumetricHeadGenerator, rendering: dict, init: dict):
    """G in PanoHead's format: EG3D's TriPlaneGenerator state plus torgb / bcg_synthesis / t_mapping."""
    reduced = writer.generator(G, rendering, {"architecture": "skip", **init})
    modules = reduced.reduce_value[1][0]["state"]["_modules"]
    modules["torgb"] = writer.emit(G.torgb) if G.config.raw_rgb == "torgb" else None
    modules["bcg_synthesis"] = writer.emit(G.bcg_synthesis, "SynthesisNetwork") if G.config.background else None
    modules["t_mapping"] = writer.emit(G.t_mapping, "MappingNetwork")
    return reduced


def write_panohead(path: Path, gen_cfg=None, rendering: dict | None = None, init: dict | None = None,
                   d_class: str = "MaskDualDiscriminatorV2", d_init: dict | None = None,
                   plane_axes: torch.Tensor = PANOHEAD_PLANE_AXES):
    """Write {G, D, G_ema, augment_pipe, training_set_kwargs}; returns (written G_ema, D, G_ema tensors, D tensors)
    with the tensors copied before pickling."""
    gen_cfg = gen_cfg or tiny_panohead()
    writer = EG3DWriter(plane_axes=plane_axes)
    G, G_ema = (randomised(VolumetricHeadGenerator(gen_cfg)) for _ in range(2))
    D = randomised(make_discriminator(dataclasses.replace(PRESETS["panohead-tiny"], discriminator=TRI_D), 64))
    rk = panohead_rendering(gen_cfg, **(rendering or {}))
    d_pickled = writer.discriminator(D, d_class)
    d_kwargs = d_pickled.reduce_value[1][0]["state"]["_init_kwargs"]
    d_kwargs.update({"seg_resolution": 128, "seg_channels": 1, **(d_init or {})})
    data = {"G": panohead_generator(writer, G, rk, init or {}), "D": d_pickled,
            "G_ema": panohead_generator(writer, G_ema, rk, init or {}), "augment_pipe": None,
            "training_set_kwargs": EasyDict(path="heads.zip", resolution=64, use_labels=True, xflip=True)}
    written = ({k: v.clone() for k, v in G_ema.state_dict().items()}, {k: v.clone() for k, v in D.state_dict().items()})
    writer.dump(path, data, protocol=4)
    return G_ema, D, *written


@pytest.mark.parametrize("changes", [
    {},  # PanoHead's released layout: decoder 'none', ToRGB raw image, background, D 3
    dict(decoder_activation="sigmoid", raw_rgb="features", background=False, trigrid_depth=2),
    dict(decoder_activation="lrelu", background=False, trigrid_depth=1),
])
def test_weights_config_and_outputs(tmp_path, changes):
    gen_cfg = tiny_panohead(**changes)
    path = tmp_path / "network-snapshot-000120.pkl"
    _, D_written, written_g, written_d = write_panohead(path, gen_cfg)
    net = legacy.load_network(path)
    loaded = net.G_ema.state_dict()
    assert set(loaded) == set(written_g) and any(k.startswith("t_mapping.") for k in loaded)
    for key, tensor in written_g.items():
        assert torch.equal(loaded[key], tensor), key
    for key, tensor in written_d.items():
        assert torch.equal(net.D.state_dict()[key], tensor), key
    released = PRESETS["panohead"].generator  # fields that no network reads keep the preset's values
    assert net.config.generator == (gen_cfg if gen_cfg.background else dataclasses.replace(
        gen_cfg, background_resolution=released.background_resolution,
        background_channel_base=released.background_channel_base))
    assert net.config.discriminator == TRI_D
    assert net.config.loss.camera_offset_reg == 10.0 and net.config.loss.gpc_prob == 0.7
    assert net.config.loss.background_swap_prob == (0.2 if gen_cfg.background else 0.0)
    assert net.metadata["source"] == "panohead-pickle" and net.metadata["kimg"] == 120

    reference = VolumetricHeadGenerator(gen_cfg).eval()
    reference.load_state_dict(written_g)
    z, c = torch.randn(2, gen_cfg.z_dim), cameras(2)
    torch.manual_seed(3)
    expected = reference(z, c, noise_mode="const")
    torch.manual_seed(3)
    got = net.G_ema(z, c, noise_mode="const")
    assert expected["camera_offset"].abs().min() > 1e-3  # self-adaptation moves the cameras
    for key in ("image", "image_raw", "image_depth", "image_mask", "camera_offset"):
        assert torch.equal(got[key], expected[key]), key
    assert torch.equal(net.D(expected, c), D_written(expected, c))


@pytest.mark.parametrize("c_scale", [2.5, 0])
def test_c_scale_reaches_mapping_and_offset_network(tmp_path, c_scale):
    """PanoHead feeds c·c_scale to both the mapping and t_mapping (c_scale 0: the mapping loses its label input).
    Tolerance 5e-6 on outputs of order 1: the folded weights are rounded to float32 (measured error < 1e-6)."""
    path = tmp_path / "panohead.pkl"
    G_written, _, _, _ = write_panohead(path, rendering={"c_scale": c_scale})
    G = legacy.load_network(path, which="G_ema").G_ema
    assert G.config.pose_conditioning == (c_scale != 0)
    z, c = torch.randn(3, 16), cameras(3)
    expected_ws, expected_offset = G_written.mapping(z, c * c_scale), G_written.t_mapping(z, c * c_scale)
    torch.testing.assert_close(G.mapping(z, c), expected_ws, rtol=0, atol=5e-6)
    torch.testing.assert_close(G.camera_offset(z, c), expected_offset, rtol=0, atol=5e-6)
    assert expected_ws.std() > 0.1 and expected_offset.abs().min() > 1e-3


@pytest.mark.parametrize("rendering, init, named", [
    ({"decoder_activation": "sigmoid"}, {}, "decoder_activation = 'sigmoid' with use_background = True"),
    ({"decoder_activation": "softplus"}, {}, "decoder_activation = 'softplus'"),
    ({"c_gen_conditioning_zero": True}, {}, "c_gen_conditioning_zero = True"),
    ({"triplane_depth": 2}, {}, "triplane_depth = 2"),
    ({"triplane_size": 64}, {}, "triplane_size = 64"),
    ({"ray_start": "auto", "ray_end": "auto"}, {}, "ray_start: expected a number, got 'auto'"),
    ({"avg_camera_pivot": [0, 0, -0.06]}, {}, "avg_camera_pivot"),
    ({}, {"architecture": "resnet"}, "architecture = 'resnet'"),
])
def test_unrepresentable_generator_settings_are_refused(tmp_path, rendering, init, named):
    path = tmp_path / "panohead.pkl"
    write_panohead(path, rendering=rendering, init=init)
    with pytest.raises(UserError, match=named.replace("(", r"\(").replace("[", r"\[")):
        legacy.load_network(path, which="G_ema")


@pytest.mark.parametrize("d_class, d_init, named", [
    ("MaskDualDiscriminator", {}, "class = 'MaskDualDiscriminator' cannot be reproduced"),
    ("MaskDualDiscriminatorV2", {"seg_channels": 3}, "seg_channels = 3"),
    ("DualDiscriminator", {}, "class = 'DualDiscriminator' cannot be reproduced"),
])
def test_unrepresentable_discriminators_are_refused(tmp_path, d_class, d_init, named):
    path = tmp_path / "panohead.pkl"
    write_panohead(path, d_class=d_class, d_init=d_init)
    with pytest.raises(UserError, match=named):
        legacy.load_network(path)


def test_mixed_layouts_are_refused(tmp_path):
    path = tmp_path / "eg3d-axes.pkl"  # PanoHead's generator with EG3D's plane axes
    write_panohead(path, plane_axes=EG3DWriter().plane_axes)
    with pytest.raises(UserError, match="differ from PanoHead's planes"):
        legacy.load_network(path)
    path = tmp_path / "eg3d-with-tri-d.pkl"  # EG3D's generator with PanoHead's discriminator
    write_fixture(path, d_class="MaskDualDiscriminatorV2")
    with pytest.raises(UserError, match="class = 'MaskDualDiscriminatorV2' cannot be reproduced"):
        legacy.load_network(path)
