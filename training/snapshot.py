"""Snapshots without pickles: network weights in safetensors, resumable training state loaded with weights_only.

A run directory holds pairs written by rank 0 every ``snap`` ticks, network first, training state second:

- ``network-snapshot-<kimg>.safetensors``: every tensor of each module's ``state_dict`` under ``'<module>.<name>'``
  (e.g. ``'G_ema.synthesis.b4.const'``), and in the safetensors metadata the format tag and version, the module names,
  the run's JSON config and JSON progress metadata (the training loop stores ``kimg`` there). Loading it runs no code.
- ``training-state-<kimg>.pt``: optimiser states, augment p, RNG states, progress; ``torch.save`` of plain containers
  and tensors only, read back with ``torch.load(weights_only=True)``.

Both are written to a hidden temporary file in the same folder and renamed over the final name (``os.replace``), so
a run killed mid-write leaves the previous files intact and never a partial file under a final name. The training
state is written last, so ``find_latest_snapshot`` takes the newest kimg for which both files exist.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from dnnlib import UserError

NETWORK_FORMAT = "headgan.network-snapshot"
STATE_FORMAT = "headgan.training-state"
FORMAT_VERSION = 1  # bump when the layout changes; loaders accept versions 1..FORMAT_VERSION

_NETWORK_NAME = re.compile(r"network-snapshot-(\d+)\.safetensors")
_CONTAINER_TYPES = (dict, OrderedDict, list, tuple, torch.Size)
_LEAF_TYPES = (str, bytes, int, float, bool, type(None), torch.dtype, Tensor, nn.Parameter)


def snapshot_paths(run_dir: str | os.PathLike, kimg: int) -> tuple[Path, Path]:
    """The (network snapshot, training state) paths for ``kimg`` thousand images seen: ``*-000040.*`` for kimg 40."""
    run_dir = Path(run_dir)
    return run_dir / f"network-snapshot-{kimg:06d}.safetensors", run_dir / f"training-state-{kimg:06d}.pt"


def _fsync_path(path: Path) -> None:
    """Flush a file's (or, on POSIX, a folder's) contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file next to ``path``, then rename it over ``path`` in one step."""
    if not path.parent.is_dir():
        raise UserError(f"cannot write '{path}': folder '{path.parent}' does not exist")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"  # hidden, and never matches a final name
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # permissions follow the umask
    mode = tmp.stat().st_mode
    try:
        write(tmp)
        os.chmod(tmp, mode)  # safetensors replaces the file with a private (0600) one; keep the umask's permissions
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        _fsync_path(path.parent)  # make the rename itself durable


def _reject_wrapped(name: str, module: nn.Module) -> None:
    """Snapshots hold the plain module's names: no DDP ``module.`` or torch.compile ``_orig_mod.`` prefixes."""
    if isinstance(module, nn.parallel.DistributedDataParallel) or hasattr(module, "_orig_mod"):
        raise ValueError(f"module '{name}' is wrapped ({type(module).__name__}); save the unwrapped module")


def save_network_snapshot(
    path: str | os.PathLike,
    modules: dict[str, nn.Module],
    config: dict,
    metadata: dict | None = None,
) -> None:
    """Write the modules' weights and the JSON config to a safetensors file, atomically.

    ``modules``: e.g. ``{'G': G, 'G_ema': G_ema, 'D': D}``; names must be non-empty and contain no dot. Every
    ``state_dict`` tensor (parameters and persistent buffers) is stored as a contiguous CPU copy with its dtype, so
    tied or non-contiguous tensors save correctly. ``config``: the run's configuration as a JSON-serialisable dict.
    ``metadata``: JSON-serialisable progress information, e.g. ``{'kimg': 40, 'cur_nimg': 40000}``.
    """
    metadata = dict(metadata or {})
    if "format_version" in metadata:
        raise ValueError("metadata key 'format_version' is reserved; the snapshot writer sets it")
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        if not name or "." in name:
            raise ValueError(f"module name {name!r} must be non-empty and contain no '.'")
        _reject_wrapped(name, module)
        for key, value in module.state_dict().items():
            # A private copy per name: safetensors refuses tensors that share storage (tied weights, views).
            tensors[f"{name}.{key}"] = value.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    header = {
        "format": NETWORK_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "modules": json.dumps(list(modules)),
        "config": json.dumps(config),
        "metadata": json.dumps(metadata),
    }
    _atomic_write(Path(path), lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header))


def _check_version(path: Path, kind: str, found: str, version: Any) -> int:
    """The file's format version as an int, or a UserError if it is not ours or too new."""
    expected = NETWORK_FORMAT if kind == "network" else STATE_FORMAT
    if found != expected:
        raise UserError(
            f"'{path}' is not a {kind} snapshot of this project (format tag {found!r}, expected {expected!r})"
        )
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise UserError(f"'{path}': format version {version!r} is not an integer") from None
    if not 1 <= version <= FORMAT_VERSION:
        raise UserError(
            f"'{path}' has format version {version}; this code reads versions 1 to {FORMAT_VERSION} "
            f"(a newer release of the code wrote it?)"
        )
    return version


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The metadata and tensors of a safetensors file, with UserErrors naming the file."""
    if not path.is_file():
        raise UserError(f"network snapshot '{path}' does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except safetensors.SafetensorError as e:
        raise UserError(f"network snapshot '{path}' is truncated or not a safetensors file: {e}") from None
    return header, tensors


def load_network_snapshot(path: str | os.PathLike) -> tuple[dict[str, dict[str, Tensor]], dict, dict]:
    """Read a file written by ``save_network_snapshot``; no code is executed.

    Returns ``(state_dicts, config, metadata)``: ``state_dicts[module][name]`` CPU tensors ready for
    ``load_state_dict``, the JSON config, and the progress metadata plus ``'format_version'``.
    """
    path = Path(path)
    header, tensors = _read_safetensors(path)
    version = _check_version(path, "network", header.get("format"), header.get("format_version"))
    try:
        names = json.loads(header["modules"])
        config = json.loads(header["config"])
        metadata = json.loads(header["metadata"])
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f"network snapshot '{path}' has a missing or unreadable metadata entry: {e!r}") from None
    state_dicts: dict[str, dict[str, Tensor]] = {name: {} for name in names}
    for key, tensor in tensors.items():
        module, _, rest = key.partition(".")
        if module not in state_dicts or not rest:
            raise UserError(f"network snapshot '{path}': tensor '{key}' belongs to none of the modules {names}")
        state_dicts[module][rest] = tensor
    return state_dicts, config, {**metadata, "format_version": version}


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError unless ``obj`` holds only what ``torch.load(weights_only=True)`` accepts."""
    if type(obj) in _LEAF_TYPES:
        return
    if type(obj) not in _CONTAINER_TYPES:
        raise TypeError(
            f"training state: {where} is a {type(obj).__qualname__}; only tensors, numbers, strings, "
            f"None and dict/list/tuple containers can be loaded back with weights_only=True"
        )
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
    else:
        for index, value in enumerate(obj):
            _check_plain(value, f"{where}[{index}]")


def save_training_state(path: str | os.PathLike, state: dict) -> None:
    """Write the resumable training state (optimiser ``state_dict``s, augment p, RNG states, progress) atomically.

    ``state`` may hold only tensors, numbers, strings, None and dict/list/tuple containers (checked up front, TypeError
    naming the entry otherwise), so that ``load_training_state`` can read it with ``weights_only=True``.
    """
    _check_plain(state, "state")
    payload = {"format": STATE_FORMAT, "format_version": FORMAT_VERSION, "state": state}
    _atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a file written by ``save_training_state`` with ``weights_only=True``; tensors are mapped to the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training state '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"training state '{path}' holds objects that weights_only loading refuses: {e}") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"training state '{path}' is truncated or not a torch.save file: {e}") from None
    if not isinstance(payload, dict):
        raise UserError(f"training state '{path}' holds a {type(payload).__name__}, expected a dict")
    _check_version(path, "training-state", payload.get("format"), payload.get("format_version"))
    if not isinstance(payload.get("state"), dict):
        raise UserError(f"training state '{path}' has no 'state' dict")
    return payload["state"]


def capture_rng_state() -> dict:
    """The RNG states of python ``random``, numpy's global generator, torch CPU and the current CUDA device (if any).

    The result holds only plain types and tensors, so it can go into ``save_training_state``.
    """
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore states captured by ``capture_rng_state``.

    The CUDA state is restored onto the current device when CUDA is available; a CPU process skips it.
    """
    try:
        version, internal, gauss_next = state["python"]
        numpy_state = state["numpy"]
        key = numpy_state["key"].numpy().astype(np.uint32)
        random.setstate((version, tuple(internal), gauss_next))
        np.random.set_state(
            ("MT19937", key, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
        )
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"training state: RNG state is incomplete or malformed ({e!r})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def find_latest_snapshot(run_dir: str | os.PathLike) -> tuple[Path, Path, int]:
    """``(network path, training-state path, kimg)`` of the newest complete snapshot pair in ``run_dir``.

    A network snapshot without its training state (a run stopped between the two writes) is skipped; temporary files
    are ignored. Raises UserError when the folder does not exist or holds no complete pair.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' does not exist")
    found = sorted(
        ((int(m.group(1)), m.group(1)) for p in run_dir.iterdir() if (m := _NETWORK_NAME.fullmatch(p.name))),
        reverse=True,
    )
    for kimg, digits in found:
        network, state = run_dir / f"network-snapshot-{digits}.safetensors", run_dir / f"training-state-{digits}.pt"
        if network.is_file() and state.is_file():
            return network, state, kimg
    raise UserError(
        f"run directory '{run_dir}' holds no complete snapshot (network-snapshot-<kimg>.safetensors together with "
        f"training-state-<kimg>.pt)"
    )
