"""Load trained networks: ``load_network`` is the one entry point every tool uses.

It reads our ``network-snapshot-<kimg>.safetensors`` files (``training.snapshot``): the weights of G, G_ema and D and
the run's JSON :class:`training.presets.TrainingConfig`; and EG3D or PanoHead network pickles (``*.pkl``: released
checkpoints and their training snapshots), whose settings ``training.pickle_import`` maps to a TrainingConfig with a
restricted unpickler. The networks are rebuilt from the config and the weights loaded by name, strictly; nothing in
either kind of file is executed. A discriminator saved while it was growing (Gaussian heads) is rebuilt at the
resolution and fade state its weights show.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from dnnlib import EasyDict, UserError
from training.pickle_import import import_eg3d_pickle
from training.presets import TrainingConfig, make_discriminator, make_generator
from training.snapshot import load_network_snapshot

_GENERATORS = ("G", "G_ema")
_BLOCK = re.compile(r"b(\d+)\.")


def latest_network_snapshot(run_dir: str | os.PathLike) -> Path:
    """The network snapshot with the highest kimg in ``run_dir`` (UserError when there is none)."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob("network-snapshot-*.safetensors"))
    if not found:
        raise UserError(f"'{run_dir}' holds no network-snapshot-<kimg>.safetensors file")
    return max(found, key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))


def load_network(path: str | os.PathLike, device: torch.device | str = "cpu",
                 which: str | Sequence[str] | None = None) -> EasyDict:
    """Networks and config of a snapshot file (or of the newest snapshot in a run directory) or an EG3D/PanoHead
    pickle.

    Args:
        path: ``network-snapshot-<kimg>.safetensors``, a run directory, or an EG3D/PanoHead network pickle ``*.pkl``.
        device: where the networks go; they are returned in eval mode with ``requires_grad_(False)``.
        which: module name(s) to build, e.g. 'G_ema' (faster for tools); None builds every module in the file.
    Returns:
        EasyDict with ``G``, ``G_ema``, ``D`` (None for modules not built), ``config`` (TrainingConfig), ``metadata``
        (progress such as kimg; for a pickle also ``source``: 'eg3d-pickle' or 'panohead-pickle') and ``path`` (the
        file read).
    """
    path = Path(path)
    if path.is_dir():
        path = latest_network_snapshot(path)
    if path.suffix == ".pkl":
        state_dicts, config, metadata = import_eg3d_pickle(path)
    else:
        state_dicts, config_dict, metadata = load_network_snapshot(path)
        try:
            config = TrainingConfig.from_dict(config_dict)
        except UserError as error:
            raise UserError(f"network snapshot '{path}': its config does not fit this code: {error}") from None
    names = list(state_dicts) if which is None else [which] if isinstance(which, str) else list(which)
    missing = [n for n in names if n not in state_dicts]
    if missing:
        raise UserError(f"network snapshot '{path}' has no module(s) {missing}; it holds {sorted(state_dicts)}")
    out = EasyDict(G=None, G_ema=None, D=None, config=config, metadata=metadata, path=str(path))
    for name in names:
        if name in _GENERATORS:
            module = make_generator(config, device)
        elif name == "D":
            module = _discriminator_for(config, state_dicts[name], path, device)
        else:
            raise UserError(f"network snapshot '{path}' holds an unknown module '{name}' (expected G, G_ema, D)")
        out[name] = _load_weights(module, state_dicts[name], f"'{path}' [{name}]")
    return out


def _discriminator_for(config: TrainingConfig, state: dict[str, torch.Tensor], path: Path,
                       device: torch.device | str) -> torch.nn.Module:
    """A D whose layout (resolution, fade in progress) matches the saved weights ``state``."""
    resolutions = {int(m.group(1)) for key in state if (m := _BLOCK.match(key))}
    inputs = {int(m.group(1)) for key in state if (m := _BLOCK.match(key)) and ".fromrgb." in key}
    if not resolutions:
        raise UserError(f"network snapshot '{path}': the D weights have no blocks b<resolution>.*")
    fade = min(inputs) if "blend" in state and len(inputs) == 2 else None
    return make_discriminator(config, max(resolutions), fade, device)


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> torch.nn.Module:
    """``module`` with the saved ``state`` (names and shapes checked first), in eval mode without gradients."""
    expected = module.state_dict()
    unexpected = sorted(set(state) - set(expected))
    absent = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or absent or wrong:
        detail = "; ".join(f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}" for label, keys in
                           (("unexpected", unexpected), ("missing", absent), ("shape differs", wrong)) if keys)
        raise UserError(f"network snapshot {where}: the weights do not match the network its config describes "
                        f"({detail})")
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)
