"""EG3D network pickles: restricted unpickling, settings → TrainingConfig, weights, and the tools on a .pkl (PanoHead's
pickles: test_pickle_import_panohead.py).

No official pickle is available offline, so the tests write their own in EG3D's persistence format: each persistent
module is a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` (meta: type 'class', version 6,
module_src, class_name, state = the module's ``__dict__`` with ``_parameters`` / ``_buffers`` / ``_modules``,
``_init_kwargs`` and numpy-float gains), EG3D's non-persistent classes (OSGDecoder, ImportanceRenderer, RaySampler,
MipRayMarcher2, torch's Sequential/Softplus) are pickled by reference (NEWOBJ + BUILD), tensors by standard pickling.
The network is a small EG3D-layout generator (tri-plane, sigmoid decoder, raw RGB = first 3 features, no background)
and dual discriminator with random weights; the oracle is that same network built from its config with the written
tensors, and, for the label folding, the pose-conditioned network fed what EG3D feeds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gen_samples
import legacy
from dnnlib import EasyDict, UserError
from training.networks.discriminator import HeadDiscriminator
from training.networks.volumetric_head import VolumetricHeadGenerator
from training.pickle_import import read_network_pickle
from training.presets import PRESETS, DiscriminatorConfig, make_discriminator
from training.rendering.trigrid import TriGridDecoder

SR_PREFIX = "training.superresolution."
SAFE_SOURCE = "# module source of an EG3D file (never executed by the importer)\n"
BY_REFERENCE = {  # EG3D's non-persistent classes: module → class names
    "training.triplane": ("OSGDecoder",),
    "training.volumetric_rendering.renderer": ("ImportanceRenderer",),
    "training.volumetric_rendering.ray_sampler": ("RaySampler",),
    "training.volumetric_rendering.ray_marcher": ("MipRayMarcher2",),
}
_ABSENT = object()
# EG3D's renderer.plane_axes (generate_planes): per plane the rows whose dot products with a point give its plane
# coordinates, here xy, xz and zx (NVlabs/eg3d#67).
EG3D_PLANE_AXES = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                [[0, 0, 1], [1, 0, 0], [0, 1, 0]]])


def small_generator_config(up_blocks: int = 1):
    """EG3D FFHQ's generator config at toy sizes (64² output, 32² tri-plane × 8 channels, 16² neural rendering)."""
    base = PRESETS["eg3d-ffhq512"].generator
    render = dataclasses.replace(base.render, depth_resolution=6, depth_resolution_importance=6)
    return dataclasses.replace(base, z_dim=16, w_dim=16, channel_base=256, channel_max=16, trigrid_resolution=32,
                               trigrid_channels=8, decoder_hidden=16, feature_channels=8,
                               neural_rendering_resolution=16, image_resolution=64, sr_up_blocks=up_blocks,
                               sr_channels=(8, 8), render=render)


SMALL_D = DiscriminatorConfig(inputs=("image", "image_raw"), channel_base=256, channel_max=16, num_fp16_res=0,
                              conv_clamp=None, mapping_layers=2)


# ---------------------------------------------------------------------------------------------------------------------
# Test-only writer of EG3D's pickle format


@contextlib.contextmanager
def fake_modules(contents: dict[str, dict[str, object]]):
    """Register throw-away modules so that ``pickle`` can name globals such as torch_utils.persistence.X; restores
    every touched sys.modules entry exactly afterwards."""
    saved = {name: sys.modules.get(name, _ABSENT) for name in contents}
    try:
        for name, attributes in contents.items():
            module = types.ModuleType(name)
            for attr, obj in attributes.items():
                obj.__module__, obj.__qualname__ = name, attr
                setattr(module, attr, obj)
            sys.modules[name] = module
        yield
    finally:
        for name, old in saved.items():
            if old is _ABSENT:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class Reduced:
    """An object that pickles as the given reduce tuple."""

    def __init__(self, *reduce_value: object):
        self.reduce_value = reduce_value

    def __reduce__(self) -> tuple:
        return self.reduce_value


def by_reference(cls: type, state: dict) -> object:
    """An instance of ``cls`` (not constructed) whose pickle is NEWOBJ(cls) + BUILD(state)."""
    obj = object.__new__(cls)
    obj.__dict__.update(state)
    return obj


class EG3DWriter:
    """Emits our modules in EG3D's persistence format (see the module docstring)."""

    def __init__(self, module_src: str = SAFE_SOURCE, numpy_names: str = "2.x",
                 plane_axes: torch.Tensor = EG3D_PLANE_AXES):
        def reconstruct(meta):  # stands for EG3D's function; only its name ends up in the pickle
            raise AssertionError("never called")

        def scalar(dtype, data):  # stands for numpy 1.x's numpy.core.multiarray.scalar
            raise AssertionError("never called")

        self.module_src, self.numpy_names, self.plane_axes = module_src, numpy_names, plane_axes
        self.globals = {"torch_utils.persistence": {"_reconstruct_persistent_obj": reconstruct}}
        self.globals.update({m: {c: type(c, (), {}) for c in names} for m, names in BY_REFERENCE.items()})
        if numpy_names == "1.x":
            self.globals["numpy.core.multiarray"] = {"scalar": scalar}

    def cls(self, qualified: str) -> type:
        module, name = qualified.rsplit(".", 1)
        return self.globals[module][name]

    def number(self, value: float) -> object:
        """A numpy float64 as EG3D's code stores gains (np.sqrt), pickled under the chosen numpy module name."""
        if self.numpy_names == "1.x":
            return Reduced(self.globals["numpy.core.multiarray"]["scalar"], (np.dtype("float64"),
                                                                              np.float64(value).tobytes()))
        return np.float64(value)

    def module_state(self, module: torch.nn.Module, modules: dict | None = None, **attributes: object) -> dict:
        hooks = ("_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks",
                 "_load_state_dict_pre_hooks")
        state = {"training": False, "_parameters": collections.OrderedDict(module._parameters),
                 "_buffers": collections.OrderedDict(module._buffers),
                 "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
                 **{h: collections.OrderedDict() for h in hooks}}
        state["_modules"] = collections.OrderedDict(
            modules if modules is not None else ((k, self.emit(c)) for k, c in module._modules.items()))
        for gain in ("weight_gain", "bias_gain"):
            if isinstance(getattr(module, gain, None), float):
                state[gain] = self.number(getattr(module, gain))
        state.update(attributes)
        return state

    def persistent(self, class_name: str, state: dict) -> Reduced:
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=class_name, state=state)
        return Reduced(self.globals["torch_utils.persistence"]["_reconstruct_persistent_obj"], (meta,))

    def emit(self, module: torch.nn.Module, class_name: str | None = None) -> object:
        if isinstance(module, torch.nn.Sequential | torch.nn.Softplus):  # torch classes, pickled by reference
            return by_reference(type(module), self.module_state(module))
        if isinstance(module, TriGridDecoder):
            return by_reference(self.cls("training.triplane.OSGDecoder"), self.module_state(module, hidden_dim=64))
        return self.persistent(class_name or type(module).__name__, self.module_state(module))

    def generator(self, G: VolumetricHeadGenerator, rendering_kwargs: dict, init_overrides: dict,
                  class_name: str = "TriPlaneGenerator") -> Reduced:
        cfg = G.config
        sr_module = rendering_kwargs["superresolution_module"]
        sr_state = self.module_state(G.superresolution)
        if sr_module.endswith("8X"):  # EG3D's Hybrid8X registers a top-level filter
            sr_state["_buffers"]["resample_filter"] = torch.tensor([[1.0, 3, 3, 1]]).T @ torch.tensor([[1.0, 3, 3, 1]])
        marcher = by_reference(self.cls("training.volumetric_rendering.ray_marcher.MipRayMarcher2"),
                               self.module_state(torch.nn.Module(), {}))
        renderer = by_reference(self.cls("training.volumetric_rendering.renderer.ImportanceRenderer"),
                                self.module_state(torch.nn.Module(), {"ray_marcher": marcher},
                                                  plane_axes=self.plane_axes))
        sampler = by_reference(self.cls("training.volumetric_rendering.ray_sampler.RaySampler"),
                               self.module_state(torch.nn.Module(), {}, ray_origins_h=None))
        modules = {"renderer": renderer, "ray_sampler": sampler, "backbone": self.emit(G.backbone),
                   "superresolution": self.persistent(sr_module.rsplit(".", 1)[1], sr_state),
                   "decoder": self.emit(G.decoder)}
        init_kwargs = EasyDict(
            z_dim=cfg.z_dim, w_dim=cfg.w_dim, mapping_kwargs=EasyDict(num_layers=cfg.mapping_layers),
            channel_base=cfg.channel_base, channel_max=cfg.channel_max, fused_modconv_default="inference_only",
            rendering_kwargs=dict(rendering_kwargs), num_fp16_res=0, sr_num_fp16_res=4 if cfg.sr_fp16 else 0,
            sr_kwargs=EasyDict(channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                               fused_modconv_default="inference_only"),
            conv_clamp=None, c_dim=25, img_resolution=cfg.image_resolution, img_channels=3)
        init_kwargs.update(init_overrides)
        state = self.module_state(G, modules, z_dim=cfg.z_dim, c_dim=25, w_dim=cfg.w_dim,
                                  img_resolution=cfg.image_resolution, img_channels=3,
                                  neural_rendering_resolution=cfg.neural_rendering_resolution,
                                  rendering_kwargs=rendering_kwargs, _last_planes=None, _init_args=(),
                                  _init_kwargs=init_kwargs)
        state["_buffers"]["dataset_label_std"] = torch.rand(25)
        return self.persistent(class_name, state)

    def discriminator(self, D: HeadDiscriminator, class_name: str = "DualDiscriminator") -> Reduced:
        init_kwargs = EasyDict(
            c_dim=25, img_resolution=D.img_resolution, img_channels=3, architecture="resnet",
            channel_base=SMALL_D.channel_base, channel_max=SMALL_D.channel_max, num_fp16_res=0, conv_clamp=None,
            disc_c_noise=0.0, block_kwargs=EasyDict(freeze_layers=0),
            mapping_kwargs=EasyDict(num_layers=SMALL_D.mapping_layers),
            epilogue_kwargs=EasyDict(mbstd_group_size=SMALL_D.mbstd_group))
        modules = {k: self.emit(c) for k, c in D._modules.items()}
        return self.persistent(class_name, self.module_state(D, modules, _init_args=(), _init_kwargs=init_kwargs))

    def dump(self, path: Path, data: dict, protocol: int) -> None:
        with fake_modules(self.globals), open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)


def rendering_kwargs_for(cfg, sr_module: str = "SuperresolutionHybrid2X", **overrides: object) -> dict:
    """rendering_kwargs the way EG3D's train.py builds them for --cfg=ffhq, with ``cfg``'s sample counts."""
    r = cfg.render
    kwargs = {"image_resolution": cfg.image_resolution, "disparity_space_sampling": False, "clamp_mode": "softplus",
              "superresolution_module": SR_PREFIX + sr_module, "c_gen_conditioning_zero": not cfg.pose_conditioning,
              "gpc_reg_prob": 0.5, "c_scale": 1.0, "superresolution_noise_mode": "none", "density_reg": 0.25,
              "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0, "sr_antialias": True,
              "depth_resolution": r.depth_resolution, "depth_resolution_importance": r.depth_resolution_importance,
              "ray_start": r.ray_start, "ray_end": r.ray_end, "box_warp": 1, "avg_camera_radius": 2.7,
              "avg_camera_pivot": [0, 0, 0.2]}
    kwargs.update(overrides)
    return kwargs


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every parameter and w_avg redrawn from N(0, s²), s = the initial spread (0.5 where the
    initial values are constant, e.g. biases), so that no tensor keeps a trivial value."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and ("w_avg" in name or name in dict(module.named_parameters())):
                spread = tensor.std().item() if tensor.numel() > 1 else 0.0
                tensor.copy_(torch.randn_like(tensor) * (spread if spread > 0 else 0.5))
    return module.eval().requires_grad_(False)


def write_fixture(path: Path, gen_cfg=None, sr_module: str = "SuperresolutionHybrid2X", protocol: int = 4,
                  writer: EG3DWriter | None = None, rendering: dict | None = None, init_overrides: dict | None = None,
                  g_class: str = "TriPlaneGenerator", d_class: str = "DualDiscriminator", extra: dict | None = None):
    """Write {G, D, G_ema, augment_pipe, training_set_kwargs} to ``path``; returns (G_ema, D, written G_ema tensors,
    written D tensors) — the tensors as copies taken before pickling."""
    gen_cfg = gen_cfg or small_generator_config()
    writer = writer or EG3DWriter()
    G = randomised(VolumetricHeadGenerator(gen_cfg))
    G_ema = randomised(VolumetricHeadGenerator(gen_cfg))
    D = randomised(make_discriminator(dataclasses.replace(PRESETS["eg3d-tiny"], discriminator=SMALL_D), 64))
    rk = rendering_kwargs_for(gen_cfg, sr_module, **(rendering or {}))
    data = {"G": writer.generator(G, rk, init_overrides or {}, g_class), "D": writer.discriminator(D, d_class),
            "G_ema": writer.generator(G_ema, rk, init_overrides or {}, g_class), "augment_pipe": None,
            "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=64, use_labels=True, xflip=True),
            **(extra or {})}
    written_g = {k: v.clone() for k, v in G_ema.state_dict().items()}
    written_d = {k: v.clone() for k, v in D.state_dict().items()}
    writer.dump(path, data, protocol)
    return G_ema, D, written_g, written_d


def cameras(n: int) -> torch.Tensor:
    """[n, 25] labels: cameras at radius 2.7 looking at the origin from slightly different directions."""
    out = []
    for i in range(n):
        yaw = 0.2 * (i - (n - 1) / 2)
        position = torch.tensor([2.7 * np.sin(yaw), 0.1, 2.7 * np.cos(yaw)], dtype=torch.float32)
        forward = -position / position.norm()
        right = torch.linalg.cross(torch.tensor([0.0, -1.0, 0.0]), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
        intrinsics = torch.tensor([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]])
        out.append(torch.cat([pose.flatten(), intrinsics.flatten()]))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("sr_module, up_blocks", [("SuperresolutionHybrid2X", 1), ("SuperresolutionHybrid8XDC", 2),
                                                  ("SuperresolutionHybrid8X", 2)])
def test_weights_config_and_output(tmp_path, sr_module, up_blocks):
    gen_cfg = small_generator_config(up_blocks)
    path = tmp_path / "network-snapshot-000040.pkl"
    _, D_written, written_g, written_d = write_fixture(path, gen_cfg, sr_module)
    net = legacy.load_network(path)
    loaded = net.G_ema.state_dict()
    assert set(loaded) == set(written_g)  # dataset_label_std and Hybrid8X's unused filter are dropped
    for key, tensor in written_g.items():
        assert torch.equal(loaded[key], tensor), key
    for key, tensor in written_d.items():
        assert torch.equal(net.D.state_dict()[key], tensor), key
    assert net.config.generator == gen_cfg
    assert net.config.discriminator == SMALL_D
    assert net.metadata["source"] == "eg3d-pickle" and net.metadata["kimg"] == 40

    reference = VolumetricHeadGenerator(gen_cfg).eval()
    reference.load_state_dict(written_g)
    z, c = torch.randn(2, gen_cfg.z_dim), cameras(2)
    torch.manual_seed(1)
    expected = reference(z, c, noise_mode="const")
    torch.manual_seed(1)
    got = net.G_ema(z, c, noise_mode="const")
    for key in ("image", "image_raw", "image_depth", "image_mask"):
        assert torch.equal(got[key], expected[key]), key
    images = {"image": expected["image"], "image_raw": expected["image_raw"]}
    assert torch.equal(net.D(images, c), D_written(images, c))


@pytest.mark.parametrize("protocol, numpy_names", [(2, "1.x"), (2, "2.x"), (4, "1.x"), (4, "2.x")])
def test_protocols_and_numpy_module_names(tmp_path, protocol, numpy_names):
    path = tmp_path / "eg3d.pkl"
    _, _, written_g, _ = write_fixture(path, protocol=protocol, writer=EG3DWriter(numpy_names=numpy_names))
    raw = path.read_bytes()
    assert raw[1] == protocol
    assert (b"numpy.core.multiarray" in raw) == (numpy_names == "1.x")
    for name in (b"torch_utils.persistence", b"_reconstruct_persistent_obj", b"training.triplane", b"OSGDecoder",
                 b"torch.nn.modules.activation", b"dnnlib.util", b"EasyDict"):
        assert name in raw, name
    data = read_network_pickle(path)
    fc0 = data["G_ema"].children()["backbone"].children()["mapping"].children()["fc0"]
    assert fc0.state["weight_gain"] == np.float64(0.01 / np.sqrt(16 + 16))  # z + embedding features
    assert data["training_set_kwargs"]["resolution"] == 64 and data["augment_pipe"] is None
    state = legacy.load_network(path, which="G_ema").G_ema.state_dict()
    assert all(torch.equal(state[k], v) for k, v in written_g.items())


def test_module_source_is_never_executed(tmp_path):
    flag = tmp_path / "executed.txt"
    source = f"open({str(flag)!r}, 'w').write('ran')\nraise RuntimeError('module source executed')\n"
    path = tmp_path / "eg3d.pkl"
    write_fixture(path, writer=EG3DWriter(module_src=source))
    watched = ["torch_utils.persistence", "training.triplane", "training.volumetric_rendering",
               "training.volumetric_rendering.renderer", "training.superresolution", "training.dual_discriminator"]
    assert not any(name in sys.modules for name in watched)
    net = legacy.load_network(path)
    assert net.G_ema is not None and net.D is not None
    assert not flag.exists()
    assert not any(name in sys.modules for name in watched)
    assert not any(name.startswith("_imported_module_") for name in sys.modules)
    digest = read_network_pickle(path)["G"].source_sha256
    assert digest == hashlib.sha256(source.encode()).hexdigest()


@pytest.mark.parametrize("payload, named", [
    (lambda flag: Reduced(os.system, (f"touch {flag}",)), "system"),
    (lambda flag: Reduced(eval, (f"open({str(flag)!r}, 'w')",)), "builtins.eval"),
])
def test_foreign_globals_are_refused(tmp_path, payload, named):
    flag = tmp_path / "ran.txt"
    path = tmp_path / "evil.pkl"
    write_fixture(path, extra={"augment_pipe": payload(flag)})
    with pytest.raises(UserError, match=named) as error:
        legacy.load_network(path)
    assert str(path) in str(error.value)
    assert not flag.exists()


def test_gghead_pickles_are_recognised(tmp_path):
    path = tmp_path / "gghead.pkl"
    model_class = type("GGHeadModel", (), {})
    modules = {"gghead": {}, "gghead.models": {}, "gghead.models.gghead_model": {"GGHeadModel": model_class}}
    with fake_modules(modules), open(path, "wb") as f:
        pickle.dump({"G_ema": by_reference(model_class, {})}, f, protocol=4)
    with pytest.raises(UserError, match="GGHead checkpoints are not supported"):
        legacy.load_network(path)


def test_rendering_settings_reach_the_config(tmp_path):
    path = tmp_path / "eg3d.pkl"
    rendering = {"depth_resolution": 7, "depth_resolution_importance": 5, "ray_start": 2.0, "ray_end": 3.5,
                 "box_warp": 1.2, "density_reg": 0.5, "gpc_reg_prob": 0.7, "decoder_lr_mul": 2.0,
                 "superresolution_noise_mode": "random", "sr_antialias": False}
    write_fixture(path, rendering=rendering)
    config = legacy.load_network(path, which="G_ema").config
    g = config.generator
    assert (g.render.depth_resolution, g.render.depth_resolution_importance) == (7, 5)
    assert (g.render.ray_start, g.render.ray_end, g.render.box_warp) == (2.0, 3.5, 1.2)
    assert (g.decoder_lr_multiplier, g.sr_noise_mode, g.sr_antialias) == (2.0, "random", False)
    assert (config.loss.density_reg, config.loss.gpc_prob) == (0.5, 0.7)
    assert config.schedule.neural_rendering_resolution_initial == g.neural_rendering_resolution == 16
    assert config.schedule.neural_rendering_resolution_final is None
    assert g.pose_conditioning and g.trigrid_axes == "eg3d" and g.render.triplane_crop is None


@pytest.mark.parametrize("rendering, expect_scale", [({"c_gen_conditioning_zero": True}, 0.0), ({"c_scale": 2.5}, 2.5)])
def test_label_conditioning_is_reproduced(tmp_path, rendering, expect_scale):
    """EG3D's mapping sees c·c_scale, or zeros when c_gen_conditioning_zero: the imported mapping must agree with the
    pose-conditioned network that was written, fed exactly that. Tolerance 5e-6 on outputs of order 1: the folded
    first layer is computed in float64 and rounded to float32 (measured error ≈ 5e-7)."""
    path = tmp_path / "eg3d.pkl"
    G_written, _, _, _ = write_fixture(path, rendering=rendering)
    G = legacy.load_network(path, which="G_ema").G_ema
    assert G.config.pose_conditioning == (expect_scale != 0)
    z, c = torch.randn(3, 16), cameras(3)
    expected = G_written.mapping(z, c * expect_scale)
    torch.testing.assert_close(G.mapping(z, c), expected, rtol=0, atol=5e-6)
    assert expected.std() > 0.1  # the comparison is not between near-zero vectors


@pytest.mark.parametrize("rendering, init, named", [
    ({"superresolution_module": "training.superresolution.SuperresolutionHybridDeepfp32"}, {}, "Deepfp32"),
    ({}, {"c_dim": 24}, "c_dim = 24"),
    ({"avg_camera_pivot": [0, 0, -0.06]}, {}, "avg_camera_pivot"),
    ({"clamp_mode": "mipnerf"}, {}, "clamp_mode = 'mipnerf'"),
    ({"ray_start": "auto"}, {}, "ray_start: expected a number, got 'auto'"),
    ({"novel_option": 1}, {}, "novel_option"),
    ({}, {"num_fp16_res": 4}, "num_fp16_res = 4"),
])
def test_unrepresentable_settings_are_refused(tmp_path, rendering, init, named):
    path = tmp_path / "eg3d.pkl"
    write_fixture(path, rendering=rendering, init_overrides=init)
    with pytest.raises(UserError, match=named.replace("(", r"\(").replace("[", r"\[")):
        legacy.load_network(path)


def test_other_plane_axes_are_refused(tmp_path):
    path = tmp_path / "fixed-axes.pkl"  # the third plane as yz instead of EG3D's zx (PanoHead's correction)
    axes = EG3D_PLANE_AXES.clone()
    axes[2] = torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    write_fixture(path, writer=EG3DWriter(plane_axes=axes))
    with pytest.raises(UserError, match="plane_axes"):
        legacy.load_network(path)


def test_gen_samples_runs_on_a_pickle(tmp_path):
    path = tmp_path / "ffhq-tiny.pkl"
    write_fixture(path)
    outdir = tmp_path / "out"
    result = CliRunner().invoke(gen_samples.main, ["--network", str(path), "--seeds", "0", "--views", "0:0",
                                                   "--outdir", str(outdir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    images = sorted(outdir.rglob("*.png"))
    assert images, list(outdir.rglob("*"))
