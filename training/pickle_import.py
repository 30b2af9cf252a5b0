"""Import EG3D network pickles (``ffhq512-128.pkl``, ``network-snapshot-<kimg>.pkl``) without running code from them.

An EG3D pickle is a dict ``{G, D, G_ema, augment_pipe, training_set_kwargs, ...}`` in which every network module of
EG3D's ``persistent_class`` kind is stored as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``;
``meta`` carries the Python source of the module that defined the class (``module_src``), the class name and the
instance ``__dict__`` (``state``: ``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, plain attributes).
Loading it the official way executes that source. Here a restricted unpickler resolves only an allow-list of
globals and never imports or executes anything from the file:

- tensors: ``torch._utils`` rebuild functions, storages through ``torch.load(..., weights_only=True)``;
- containers and scalars: ``collections.OrderedDict``, ``builtins.set``, ``dnnlib.util.EasyDict`` (→ ``dict``),
  ``numpy.dtype`` and the numpy scalar constructor (numpy 1.x and 2.x module names, object dtypes refused),
  ``_codecs.encode`` for latin-1 bytes (protocol 2);
- ``_reconstruct_persistent_obj`` → a :class:`PickledModule` holding the class name, the state and the sha256 of
  ``module_src`` (the source string is only hashed);
- classes pickled by reference under ``training.*`` and ``torch.nn.modules.*`` (EG3D's decoder, renderer, ray
  sampler and marcher, ``Sequential``, ``Softplus``) → a :class:`PickledModule` that records the constructor-free
  state (NEWOBJ + BUILD). Any other global raises a UserError naming the file and the global.

:func:`import_eg3d_pickle` then maps EG3D's TriPlaneGenerator and DualDiscriminator onto the ``eg3d-ffhq512`` preset
(tri-plane with EG3D's plane axes, sigmoid decoder, raw RGB = first 3 features, dual D), and PanoHead's (same
persistence format; its generator has ``torgb``, ``bcg_synthesis``, ``t_mapping``) TriPlaneGenerator and
MaskDualDiscriminatorV2 onto the ``panohead`` preset (tri-grid of ``triplane_depth`` cells with PanoHead's planes xy,
xz, yz, decoder activation, ToRGB raw image, background, camera self-adaptation, tri D). Every field the pickle
determines is set (sizes the classes fix in code are read from the tensor shapes), the renderer's ``plane_axes`` are
checked, and state dicts come back with our parameter names (EG3D's and PanoHead's, see ``training.networks``).
Settings our networks cannot reproduce raise a UserError naming the field and its value; among them PanoHead's
sigmoid decoder with a background (PanoHead shifts the composite by ``W − 1``), its zeroed generator conditioning
(it renders from zeroed cameras) and its V1 discriminator (separate mask branch). By design our ``image_mask`` is the
accumulated weight W itself where PanoHead returns ``1.002·W − 0.001``. GGHead pickles are recognised and refused.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import math
import numbers
import operator
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dnnlib import UserError
from training.cameras import DEFAULT_RADIUS, EG3D_PIVOT, PANOHEAD_PIVOT
from training.presets import DiscriminatorConfig, TrainingConfig, get_preset
from training.rendering.trigrid import DECODER_ACTIVATIONS

try:
    from numpy._core.multiarray import scalar as _numpy_scalar_constructor  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar_constructor

PERSISTENCE_VERSION = 6  # the only meta version EG3D's torch_utils.persistence writes
MODULE_NAMES = ("G", "D", "G_ema")
_BY_REFERENCE_PREFIXES = ("training.", "torch.nn.modules.")
_MAPPING_LR = 0.01  # learning-rate multiplier of the StyleGAN2 mapping layers (EG3D's and ours)
# renderer.plane_axes: EG3D projects onto the first 2 rows of each plane (xy, xz, zx); PanoHead onto all 3 (xy, xz, yz
# with the remaining axis as the tri-grid depth).
_PLANE_AXES = {False: (((1, 0, 0), (0, 1, 0)), ((1, 0, 0), (0, 0, 1)), ((0, 0, 1), (1, 0, 0))),
               True: (((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((1, 0, 0), (0, 0, 1), (0, 1, 0)),
                      ((0, 1, 0), (0, 0, 1), (1, 0, 0)))}
_PANOHEAD_CHILDREN = ("bcg_synthesis", "t_mapping", "torgb")
_SNAPSHOT_NAME = re.compile(r"network-snapshot-(\d+)\.pkl$")


class PickledModule:
    """A module read from a pickle without constructing it: ``class_name`` (EG3D's bare class name for persistent
    classes, ``module.Class`` for classes pickled by reference), ``state`` (its ``__dict__``) and ``source_sha256``
    (of the embedded module source; None for classes pickled by reference)."""

    def __init__(self, class_name: str, state: dict, source_sha256: str | None = None):
        self.class_name, self.state, self.source_sha256 = class_name, state, source_sha256

    @property
    def init_kwargs(self) -> dict:
        """The constructor keyword arguments EG3D recorded (``_init_kwargs``; empty when absent)."""
        return dict(self.state.get("_init_kwargs") or {})

    def children(self) -> dict[str, PickledModule | None]:
        """The child modules by attribute name (``_modules``)."""
        return dict(self.state.get("_modules") or {})

    def state_dict(self, prefix: str = "") -> collections.OrderedDict[str, torch.Tensor]:
        """Tensors in ``nn.Module.state_dict()`` order: own parameters, persistent buffers, then each child's."""
        out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        non_persistent = set(self.state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is None or (group == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise UserError(f"pickled module {self.class_name}: {group}['{name}'] is a "
                                    f"{type(value).__name__}, expected a tensor")
                out[prefix + name] = value.detach()
        for name, child in self.children().items():
            if child is None:
                continue
            if not isinstance(child, PickledModule):
                raise UserError(f"pickled module {self.class_name}: child '{name}' is a {type(child).__name__}, "
                                f"expected a module")
            out.update(child.state_dict(f"{prefix}{name}."))
        return out


class _ByReference(PickledModule):
    """Base of the stand-ins for classes pickled by reference; ``qualified_name`` is set per generated subclass."""

    qualified_name = ""

    def __new__(cls, *args: object) -> _ByReference:  # NEWOBJ: cls.__new__(cls, *args); no constructor runs
        obj = object.__new__(cls)
        PickledModule.__init__(obj, cls.qualified_name, {})
        return obj

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise UserError(f"pickled {self.class_name}: expected a state dict, got {type(state).__name__}")
        self.state = state


def _reconstruct_persistent(meta: object) -> PickledModule:
    """Stand-in for EG3D's ``_reconstruct_persistent_obj``: keeps the state, hashes the source, executes nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or meta.get("version") != PERSISTENCE_VERSION:
        summary = {k: meta[k] for k in ("type", "version") if k in meta} if isinstance(meta, dict) else meta
        raise UserError(f"persistent object: expected meta type 'class', version {PERSISTENCE_VERSION}, got {summary}")
    source, class_name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(source, str) or not isinstance(class_name, str) or not isinstance(state, dict):
        raise UserError(f"persistent object {class_name!r}: module_src, class_name and state must be str, str, dict")
    return PickledModule(class_name, state, hashlib.sha256(source.encode("utf-8")).hexdigest())


def _storage_from_bytes(data: object) -> object:
    """A tensor storage serialised by ``torch.save`` inside the pickle, read with the weights-only loader."""
    if not isinstance(data, bytes):
        raise UserError(f"tensor storage: expected bytes, got {type(data).__name__}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar(dtype: np.dtype, *args: object) -> object:
    """numpy's scalar constructor for plain (non-object) dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UserError(f"numpy scalar: only plain numeric dtypes are accepted, got {dtype!r}")
    return _numpy_scalar_constructor(dtype, *args)


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``; nothing else is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UserError(f"_codecs.encode: only latin-1 text is accepted, got encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # pickles written with numpy 1.x (EG3D's environment)
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 module names
    ("_codecs", "encode"): _latin1_bytes,
    ("dnnlib.util", "EasyDict"): dict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED` globals and by-reference module classes (module docstring)."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file)
        self._path = path
        self._stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.split(".")[0] == "gghead" or "GGHead" in name:
            raise UserError(f"'{self._path}' is a GGHead pickle ({module}.{name}); GGHead checkpoints are not "
                            f"supported yet")
        if module.startswith(_BY_REFERENCE_PREFIXES) and name.isidentifier():
            qualified = f"{module}.{name}"
            if qualified not in self._stand_ins:
                self._stand_ins[qualified] = type(name, (_ByReference,), {"qualified_name": qualified})
            return self._stand_ins[qualified]
        raise UserError(f"'{self._path}' refers to the global '{module}.{name}', which an EG3D/PanoHead network "
                        f"pickle does not contain; refusing to load it (nothing from the file is executed)")


def read_network_pickle(path: str | Path) -> dict:
    """The top-level dict of a network pickle, modules as :class:`PickledModule`; UserError for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, path).load()
    except OSError as error:
        raise UserError(f"cannot read network pickle '{path}': {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError) as error:
        raise UserError(f"'{path}' is not a readable network pickle: {type(error).__name__}: {error}") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), PickledModule) for k in MODULE_NAMES):
        raise UserError(f"'{path}': expected a dict with network modules {list(MODULE_NAMES)}, got "
                        f"{type(data).__name__}{' with keys ' + str(sorted(data)) if isinstance(data, dict) else ''}")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Typed access to pickled settings


_REQUIRED = object()  # default marking a setting EG3D's code reads without a fallback


def _get(kwargs: dict, key: str, default: object, where: str) -> object:
    return kwargs.get(key, default) if default is not _REQUIRED else _required(kwargs, key, where)


def _required(kwargs: dict, key: str, where: str) -> object:
    if key not in kwargs:
        raise UserError(f"{where}: the setting '{key}' is missing")
    return kwargs[key]


def _int(kwargs: dict, key: str, where: str, default: object = _REQUIRED) -> int:
    value = _get(kwargs, key, default, where)
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise UserError(f"{where}.{key}: expected an integer, got {value!r}") from None


def _float(kwargs: dict, key: str, where: str, default: object = _REQUIRED) -> float:
    value = _get(kwargs, key, default, where)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}")
    return float(value)


def _bool(kwargs: dict, key: str, where: str, default: object = _REQUIRED) -> bool:
    value = _get(kwargs, key, default, where)
    if not isinstance(value, bool | np.bool_):
        raise UserError(f"{where}.{key}: expected True or False, got {value!r}")
    return bool(value)


def _expect(value: object, allowed: tuple, field: str) -> None:
    """UserError unless ``value`` is one of ``allowed`` (what this code can reproduce)."""
    if not any(type(value) is type(a) and value == a for a in allowed):
        raise UserError(f"{field} = {value!r} cannot be reproduced by this code (supported: "
                        f"{', '.join(repr(a) for a in allowed)})")


def _known_keys(kwargs: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UserError(f"{where}: unsupported setting(s) {unknown} (this importer knows {sorted(known)})")


# ---------------------------------------------------------------------------------------------------------------------
# EG3D settings → TrainingConfig

# superresolution_module → (our sr_up_blocks, state-dict keys of EG3D's module that our SuperResolution lacks).
# SuperresolutionHybrid8X registers a top-level [1, 3, 3, 1] filter that its forward never reads; otherwise it is the
# 8XDC layout with other channel counts (read from the weights). HybridDeepfp32 resizes differently: not supported.
SR_MODULES = {
    "training.superresolution.SuperresolutionHybrid8XDC": (2, ()),
    "training.superresolution.SuperresolutionHybrid8X": (2, ("superresolution.resample_filter",)),
    "training.superresolution.SuperresolutionHybrid4X": (1, ()),
    "training.superresolution.SuperresolutionHybrid2X": (1, ()),
}
_RENDER_KEYS = {
    "image_resolution", "disparity_space_sampling", "clamp_mode", "superresolution_module", "c_gen_conditioning_zero",
    "gpc_reg_prob", "c_scale", "superresolution_noise_mode", "density_reg", "density_reg_p_dist", "reg_type",
    "decoder_lr_mul", "sr_antialias", "depth_resolution", "depth_resolution_importance", "ray_start", "ray_end",
    "box_warp", "white_back", "density_noise", "avg_camera_radius", "avg_camera_pivot", "depth_resolution_default",
    "depth_resolution_importance_default"}
_G_KEYS = {"z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "mapping_kwargs", "rendering_kwargs",
           "sr_kwargs", "sr_num_fp16_res", "channel_base", "channel_max", "num_fp16_res", "conv_clamp",
           "fused_modconv_default", "architecture"}
_PANOHEAD_RENDER_KEYS = {"decoder_activation", "use_torgb_raw", "triplane_size", "triplane_depth", "trans_reg",
                         "use_background"}
_D_KEYS = {"c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max", "num_fp16_res",
           "conv_clamp", "cmap_dim", "disc_c_noise", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"}


@dataclasses.dataclass(frozen=True)
class _Conditioning:
    """How EG3D's mapping saw the camera label: zeroed (``c_gen_conditioning_zero`` or c_scale 0) or scaled."""

    zero: bool
    scale: float


def _render_settings(rk: dict, img_resolution: int, where: str,
                     panohead: bool) -> tuple[dict, dict, dict, _Conditioning, str]:
    """rendering_kwargs → (RenderOptions fields, generator fields, loss fields, conditioning, SR module name)."""
    _known_keys(rk, _RENDER_KEYS | (_PANOHEAD_RENDER_KEYS if panohead else set()), where)
    _expect(_int(rk, "image_resolution", where, img_resolution), (img_resolution,), f"{where}.image_resolution")
    _expect(_bool(rk, "disparity_space_sampling", where), (False,), f"{where}.disparity_space_sampling")
    _expect(rk.get("clamp_mode", "softplus"), ("softplus",), f"{where}.clamp_mode")
    _expect(rk.get("reg_type", "l1"), ("l1",), f"{where}.reg_type")
    _expect(_float(rk, "avg_camera_radius", where, DEFAULT_RADIUS), (DEFAULT_RADIUS,), f"{where}.avg_camera_radius")
    # PanoHead's --cfg=ffhq stores EG3D's pivot, which only the visualiser reads; its scripts orbit (0, 0, 0).
    pivots = [list(EG3D_PIVOT), list(PANOHEAD_PIVOT)] if panohead else [list(EG3D_PIVOT)]
    pivot = rk.get("avg_camera_pivot", list(EG3D_PIVOT))
    if not isinstance(pivot, list | tuple) or [float(v) for v in pivot] not in pivots:
        raise UserError(f"{where}.avg_camera_pivot = {pivot!r} cannot be reproduced by this code (the tools orbit "
                        f"{'PanoHead' if panohead else 'EG3D'}'s pivot; accepted: {pivots})")
    module = rk.get("superresolution_module")
    if module not in SR_MODULES:
        raise UserError(f"{where}.superresolution_module = {module!r} is not supported (supported: "
                        f"{sorted(SR_MODULES)})")
    # EG3D's visualiser multiplies depth_resolution in place and keeps the trained values under *_default.
    depth = _int(rk, "depth_resolution_default", where, _int(rk, "depth_resolution", where))
    importance = _int(rk, "depth_resolution_importance_default", where, _int(rk, "depth_resolution_importance", where))
    render = dict(ray_start=_float(rk, "ray_start", where), ray_end=_float(rk, "ray_end", where),
                  depth_resolution=depth, depth_resolution_importance=importance,
                  box_warp=_float(rk, "box_warp", where), white_background=_bool(rk, "white_back", where, False),
                  density_noise=_float(rk, "density_noise", where, 0.0))
    generator = dict(decoder_lr_multiplier=_float(rk, "decoder_lr_mul", where, 1.0),
                     sr_antialias=_bool(rk, "sr_antialias", where), sr_up_blocks=SR_MODULES[module][0],
                     sr_noise_mode=_required(rk, "superresolution_noise_mode", where))
    gpc = rk.get("gpc_reg_prob")
    loss = dict(density_reg=_float(rk, "density_reg", where, 0.0),
                density_reg_p_dist=_float(rk, "density_reg_p_dist", where, 0.004),
                gpc_prob=0.0 if gpc is None else _float(rk, "gpc_reg_prob", where))
    scale = _float(rk, "c_scale", where, 0.0)  # EG3D multiplies by rendering_kwargs.get('c_scale', 0)
    conditioning = _Conditioning(zero=_bool(rk, "c_gen_conditioning_zero", where) or scale == 0, scale=scale)
    generator["pose_conditioning"] = not conditioning.zero
    return render, generator, loss, conditioning, module


def _shape_settings(weights: dict[str, torch.Tensor], where: str) -> dict:
    """Sizes EG3D's TriPlaneGenerator fixes in code (tri-plane 256² × 32, decoder 64, SR channels), read from the
    weights so that the tensors decide, not an assumption about the code that wrote them."""
    names = ("decoder.net.0.weight", "decoder.net.2.weight", "superresolution.block0.conv1.weight",
             "superresolution.block1.conv1.weight")
    missing = [n for n in names if n not in weights]
    if missing:
        raise UserError(f"{where}: the weights lack {missing}; not an EG3D TriPlaneGenerator layout")
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"backbone\.synthesis\.b(\d+)\.", k))}
    if not blocks:
        raise UserError(f"{where}: the weights have no backbone.synthesis.b<resolution> blocks")
    hidden, channels = weights["decoder.net.0.weight"].shape
    return dict(trigrid_resolution=max(blocks), trigrid_channels=channels, decoder_hidden=hidden,
                feature_channels=weights["decoder.net.2.weight"].shape[0] - 1,
                sr_channels=(weights["superresolution.block0.conv1.weight"].shape[0],
                             weights["superresolution.block1.conv1.weight"].shape[0]))


def _panohead_settings(rk: dict, weights: dict[str, torch.Tensor], shapes: dict, channel_base: int,
                       where: str) -> tuple[dict, dict]:
    """PanoHead's additions to rendering_kwargs, checked against the tensors → (generator fields, loss fields)."""
    if _bool(rk, "c_gen_conditioning_zero", where):
        raise UserError(f"{where}.c_gen_conditioning_zero = True cannot be reproduced by this code (PanoHead then "
                        f"renders from zeroed camera labels plus the self-adaptation offset)")
    activation, background = _required(rk, "decoder_activation", where), _bool(rk, "use_background", where, False)
    _expect(activation, DECODER_ACTIVATIONS, f"{where}.decoder_activation")
    if background and activation == "sigmoid":
        raise UserError(f"{where}.decoder_activation = 'sigmoid' with use_background = True cannot be reproduced by "
                        f"this code (PanoHead composites 2F − 1 over the background, this code Σw(2f − 1))")
    _expect(_int(rk, "triplane_size", where), (shapes["trigrid_resolution"],), f"{where}.triplane_size")
    depth = _int(rk, "triplane_depth", where)
    grid = weights[f"backbone.synthesis.b{shapes['trigrid_resolution']}.torgb.weight"].shape[0]
    if depth < 1 or grid != 3 * shapes["trigrid_channels"] * depth:
        raise UserError(f"{where}.triplane_depth = {depth} does not fit the backbone's {grid} output channels "
                        f"(3 planes × {shapes['trigrid_channels']} features × depth)")
    generator = dict(trigrid_depth=depth, trigrid_axes="panohead", decoder_activation=activation, background=background,
                     raw_rgb="torgb" if _bool(rk, "use_torgb_raw", where, False) else "features",
                     camera_adaptation=True)
    if background:  # PanoHead's background network: half the backbone's channel base, at the SR input resolution
        blocks = [int(m.group(1)) for k in weights if (m := re.match(r"bcg_synthesis\.b(\d+)\.", k))]
        if not blocks:
            raise UserError(f"{where}.use_background = True but the weights have no bcg_synthesis.b<res> blocks")
        generator.update(background_resolution=max(blocks), background_channel_base=channel_base // 2)
    loss = dict(camera_offset_reg=_float(rk, "trans_reg", where))
    if not background:
        loss["background_swap_prob"] = 0.0
    return generator, loss


def _generator_settings(G: PickledModule, weights: dict[str, torch.Tensor], where: str,
                        panohead: bool) -> tuple[dict, dict, dict, _Conditioning, str]:
    """TriPlaneGenerator init_kwargs and attributes → (generator fields, render fields, loss fields, conditioning,
    SR module)."""
    kw = G.init_kwargs
    _known_keys(kw, _G_KEYS, f"{where} init_kwargs")
    if G.state.get("_init_args"):
        raise UserError(f"{where}: positional constructor arguments are not supported (EG3D passes keywords)")
    _expect(_int(kw, "c_dim", where), (25,), f"{where}.c_dim")
    _expect(_int(kw, "img_channels", where), (3,), f"{where}.img_channels")
    _expect(_int(kw, "num_fp16_res", where, 4), (0,), f"{where}.num_fp16_res")  # EG3D's default is 4
    _expect(kw.get("conv_clamp", 256), (None,), f"{where}.conv_clamp")
    _expect(kw.get("fused_modconv_default", True), (True, False, "inference_only"), f"{where}.fused_modconv_default")
    _expect(kw.get("architecture", "skip"), ("skip",), f"{where}.architecture")
    mapping = dict(kw.get("mapping_kwargs") or {})
    _known_keys(mapping, {"num_layers"}, f"{where}.mapping_kwargs")
    sr_kwargs = dict(kw.get("sr_kwargs") or {})
    _known_keys(sr_kwargs, {"channel_base", "channel_max", "fused_modconv_default"}, f"{where}.sr_kwargs")
    rk = G.state.get("rendering_kwargs")
    if not isinstance(rk, dict):
        raise UserError(f"{where}: the attribute rendering_kwargs is missing or not a dict")
    image_resolution = _int(kw, "img_resolution", where)
    render, generator, loss, conditioning, module = _render_settings(rk, image_resolution, f"{where}.rendering_kwargs",
                                                                     panohead)
    nrr = _int(G.state, "neural_rendering_resolution", where)
    shapes, channel_base = _shape_settings(weights, where), _int(kw, "channel_base", where, 32768)
    generator.update(shapes, z_dim=_int(kw, "z_dim", where), w_dim=_int(kw, "w_dim", where),
                     mapping_layers=_int(mapping, "num_layers", where, 8), image_resolution=image_resolution,
                     channel_base=channel_base, channel_max=_int(kw, "channel_max", where, 512),
                     sr_fp16=_int(kw, "sr_num_fp16_res", where, 0) > 0, neural_rendering_resolution=nrr)
    if panohead:  # t_mapping is built with the mapping's kwargs, hence its depth
        more_generator, more_loss = _panohead_settings(rk, weights, shapes, channel_base, f"{where}.rendering_kwargs")
        generator.update(more_generator, camera_mapping_layers=generator["mapping_layers"])
        loss.update(more_loss)
    return generator, render, loss, conditioning, module


def _discriminator_settings(D: PickledModule, where: str, panohead: bool) -> dict:
    """EG3D's DualDiscriminator or PanoHead's MaskDualDiscriminatorV2 init_kwargs → DiscriminatorConfig fields.

    PanoHead's V1 (MaskDualDiscriminator) is refused: it reads the mask through a separate branch summed in at 4²,
    where V2 and our tri HeadDiscriminator stack image, raw image and 2·mask − 1 as one 7-channel input."""
    _expect(D.class_name, ("MaskDualDiscriminatorV2",) if panohead else ("DualDiscriminator",), f"{where} class")
    kw = D.init_kwargs
    _known_keys(kw, _D_KEYS | ({"seg_resolution", "seg_channels"} if panohead else set()), f"{where} init_kwargs")
    _expect(_int(kw, "img_channels", where, 3), (3,), f"{where}.img_channels")
    if panohead:  # V2 never reads seg_resolution
        _expect(_int(kw, "seg_channels", where), (1,), f"{where}.seg_channels")
    _expect(kw.get("cmap_dim"), (None,), f"{where}.cmap_dim")
    blocks, mapping, epilogue = (dict(kw.get(k) or {}) for k in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"))
    _known_keys(blocks, {"freeze_layers"}, f"{where}.block_kwargs")
    _expect(_int(blocks, "freeze_layers", where, 0), (0,), f"{where}.block_kwargs.freeze_layers")
    _known_keys(mapping, {"num_layers"}, f"{where}.mapping_kwargs")
    _known_keys(epilogue, {"mbstd_group_size", "mbstd_num_channels"}, f"{where}.epilogue_kwargs")
    _expect(_int(epilogue, "mbstd_num_channels", where, 1), (1,), f"{where}.epilogue_kwargs.mbstd_num_channels")
    c_dim = _int(kw, "c_dim", where)
    _expect(c_dim, (25, 0), f"{where}.c_dim")
    clamp = kw.get("conv_clamp", 256)
    inputs = ("image", "image_raw", "image_mask") if panohead else ("image", "image_raw")
    return dict(inputs=inputs, architecture=kw.get("architecture", "resnet"),
                channel_base=_int(kw, "channel_base", where, 32768), channel_max=_int(kw, "channel_max", where, 512),
                num_fp16_res=_int(kw, "num_fp16_res", where, 4),
                conv_clamp=None if clamp is None else _float(kw, "conv_clamp", where),
                mbstd_group=_int(epilogue, "mbstd_group_size", where, 4),
                mapping_layers=_int(mapping, "num_layers", where, 8), pose_conditioning=c_dim == 25,
                c_noise=_float(kw, "disc_c_noise", where, 0.0), filter_mode="antialiased")


def _is_panohead(G: PickledModule, where: str) -> bool:
    """True for PanoHead's TriPlaneGenerator (it has torgb / bcg_synthesis / t_mapping or tri-grid settings), False
    for EG3D's; UserError for any other class or for plane axes other than that code's."""
    _expect(G.class_name, ("TriPlaneGenerator",), f"{where} class")
    rk = G.state.get("rendering_kwargs")
    panohead = bool(set(_PANOHEAD_CHILDREN) & set(G.children()) or
                    {"triplane_depth", "triplane_size"} & set(rk if isinstance(rk, dict) else ()))
    renderer = G.children().get("renderer")
    axes = renderer.state.get("plane_axes") if isinstance(renderer, PickledModule) else None
    if not isinstance(axes, torch.Tensor) or axes.shape != (3, 3, 3):
        raise UserError(f"{where}: renderer.plane_axes is missing or not a [3, 3, 3] tensor")
    # A point projects onto plane k at coordinates (p·row0, p·row1[, p·row2]) of plane_axes[k]. Our 'eg3d' mode reads
    # the world axes (x, y), (x, z), (z, x), EG3D's planes (NVlabs/eg3d#67); 'panohead' (x, y, z), (x, z, y), (y, z, x).
    expected = torch.tensor(_PLANE_AXES[panohead], dtype=axes.dtype)
    if not torch.equal(axes[:, :expected.shape[1]], expected):
        kind = "PanoHead's planes (xy, xz, yz)" if panohead else "EG3D's planes (xy, xz, zx)"
        raise UserError(f"{where}: renderer.plane_axes = {axes.tolist()} differ from {kind}, which is all this code "
                        f"reproduces")
    return panohead


def network_config(G: PickledModule, D: PickledModule | None,
                   where: str) -> tuple[TrainingConfig, _Conditioning, tuple[str, ...], bool]:
    """The TrainingConfig of an EG3D or PanoHead generator (and discriminator, if given), the way its networks saw
    camera labels, the state-dict keys of the pickled generator that ours lacks, and whether it is PanoHead's."""
    panohead = _is_panohead(G, f"{where} [G]")
    preset = get_preset("panohead" if panohead else "eg3d-ffhq512")
    generator, render, loss, conditioning, module = _generator_settings(G, G.state_dict(), f"{where} [G]", panohead)
    try:
        render_options = dataclasses.replace(preset.generator.render, **render)
        gen = dataclasses.replace(preset.generator, **generator, render=render_options)
        disc = preset.discriminator if D is None else \
            DiscriminatorConfig(**_discriminator_settings(D, f"{where} [D]", panohead))
        # A finished network renders at one resolution: the schedule holds it constant for every tool.
        schedule = dataclasses.replace(preset.schedule, neural_rendering_resolution_final=None,
                                       neural_rendering_resolution_initial=gen.neural_rendering_resolution)
        config = dataclasses.replace(preset, generator=gen, discriminator=disc,
                                     loss=dataclasses.replace(preset.loss, **loss), schedule=schedule,
                                     data=dataclasses.replace(preset.data, resolution=gen.image_resolution))
    except UserError as error:
        raise UserError(f"{where}: its settings do not fit this code: {error}") from None
    return config, conditioning, SR_MODULES[module][1], panohead


# ---------------------------------------------------------------------------------------------------------------------
# Weights


def _fold_zero_label(weights: dict[str, torch.Tensor]) -> None:
    """Rewrite a mapping that was always fed a zero label as one without a label input (our pose_conditioning=False).

    EG3D still concatenates the embedding of the zero label, normalize_2nd_moment(embed.bias), to the normalised z, a
    constant; fc0 applied to [ẑ, e] with gain lr/√(z+e) equals fc0' applied to ẑ with gain lr/√z when
    W' = W[:, :z]·√(z/(z+e)) and b' = b + (W[:, z:]·e)·(lr/√(z+e))/lr. Computed in float64 (float32 rounding only).
    """
    weights.pop("backbone.mapping.embed.weight")
    embedding = weights.pop("backbone.mapping.embed.bias").double()  # embed(0) = bias (bias gain 1)
    embedding = embedding * (embedding.square().mean() + 1e-8).rsqrt()
    weight, bias = weights["backbone.mapping.fc0.weight"].double(), weights["backbone.mapping.fc0.bias"].double()
    z_dim = weight.shape[1] - embedding.shape[0]
    gain = _MAPPING_LR / math.sqrt(weight.shape[1])
    weights["backbone.mapping.fc0.weight"] = (weight[:, :z_dim] * (gain * math.sqrt(z_dim) / _MAPPING_LR)).float()
    weights["backbone.mapping.fc0.bias"] = (bias + weight[:, z_dim:] @ embedding * (gain / _MAPPING_LR)).float()


def generator_weights(G: PickledModule, conditioning: _Conditioning,
                      unused: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict of our generator for an EG3D or PanoHead TriPlaneGenerator (names are theirs; notes inline)."""
    weights = dict(G.state_dict())
    # The training loop registers dataset_label_std (the dataset's label std) on G; no forward pass reads it.
    weights.pop("dataset_label_std", None)
    for key in unused:
        weights.pop(key, None)
    if "backbone.mapping.embed.weight" in weights:
        if conditioning.zero:
            _fold_zero_label(weights)
        elif conditioning.scale != 1:  # embed(c·s) = embed with weight·s applied to c
            weights["backbone.mapping.embed.weight"] = weights["backbone.mapping.embed.weight"] * conditioning.scale
    if "t_mapping.embed.weight" in weights:  # PanoHead's offset network sees the rendering camera · c_scale
        weights["t_mapping.embed.weight"] = weights["t_mapping.embed.weight"] * conditioning.scale
    return weights


def import_eg3d_pickle(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], TrainingConfig, dict]:
    """Read an EG3D or PanoHead network pickle without executing anything from it.

    Returns ``(state_dicts, config, metadata)`` like ``training.snapshot.load_network_snapshot``: state dicts of the
    modules present among G, G_ema, D (our names; CPU tensors), the TrainingConfig that rebuilds them (from G_ema's
    settings, else G's; D's from D), and ``{'source': 'eg3d-pickle' or 'panohead-pickle', 'source_sha256': {module:
    sha256 of its module_src}}`` plus ``kimg`` and ``cur_nimg`` when the file name is ``network-snapshot-<kimg>.pkl``.
    """
    path = Path(path)
    data = read_network_pickle(path)
    modules = {name: data[name] for name in MODULE_NAMES if data.get(name) is not None}
    for name, module in modules.items():
        if not isinstance(module, PickledModule):
            raise UserError(f"'{path}' [{name}]: expected a pickled network module, got {type(module).__name__}")
    generators = [n for n in ("G_ema", "G") if n in modules]
    if not generators:
        raise UserError(f"'{path}' holds no generator (G or G_ema); found {sorted(modules)}")
    config, conditioning, unused, panohead = network_config(modules[generators[0]], modules.get("D"), f"'{path}'")
    state_dicts = {}
    for name, module in modules.items():
        if name == "D":
            state_dicts[name] = dict(module.state_dict())
        else:
            if _is_panohead(module, f"'{path}' [{name}]") != panohead:
                raise UserError(f"'{path}': {name} and {generators[0]} are not both EG3D or both PanoHead generators")
            state_dicts[name] = generator_weights(module, conditioning, unused)
    metadata: dict = {"source": "panohead-pickle" if panohead else "eg3d-pickle",
                      "source_sha256": {name: module.source_sha256 for name, module in modules.items()}}
    if match := _SNAPSHOT_NAME.search(path.name):
        metadata.update(kimg=int(match.group(1)), cur_nimg=int(match.group(1)) * 1000)
    return state_dicts, config, metadata
