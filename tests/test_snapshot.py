"""Snapshots: safetensors network files and weights_only training states, round trips, errors and atomic writes.

Oracles: the modules' own ``state_dict`` (exact equality, dtypes included), the safetensors reader used directly,
fresh draws from the RNGs, and the bytes of the previous files after a simulated crash.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from dnnlib import UserError
from training import snapshot
from training.snapshot import (
    capture_rng_state,
    find_latest_snapshot,
    load_network_snapshot,
    load_training_state,
    restore_rng_state,
    save_network_snapshot,
    save_training_state,
    snapshot_paths,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Tied(nn.Module):
    """Parameters that share storage (a tied weight) or are non-contiguous, plus persistent and transient buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(3, 4)
        self.decode = nn.Linear(4, 3)
        self.decode.weight = nn.Parameter(torch.randn(3, 4))
        self.tied = self.encode  # the same module twice: state_dict lists its tensors under both names
        self.transposed = nn.Parameter(torch.randn(5, 2).t())  # [2, 5] view with strides (1, 2)
        self.low_precision = nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
        self.register_buffer("count", torch.tensor([7, -3], dtype=torch.int64))
        self.register_buffer("flags", torch.tensor([True, False]))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def _modules() -> dict[str, nn.Module]:
    return {"G": _Tied(), "G_ema": _Tied(), "D": nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))}


def _assert_state_equal(loaded: dict[str, torch.Tensor], module: nn.Module) -> None:
    expected = module.state_dict()
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


def test_network_round_trip_exact(tmp_path):
    modules = _modules()
    assert not modules["G"].transposed.is_contiguous()
    config = {"family": "gaussian", "generator": {"z_dim": 8, "channels": [1, 2]}, "gamma": 0.5}
    path = tmp_path / "network-snapshot-000040.safetensors"
    save_network_snapshot(path, modules, config, {"kimg": 40, "cur_nimg": 40000})

    state_dicts, loaded_config, metadata = load_network_snapshot(path)
    assert list(state_dicts) == ["G", "G_ema", "D"]
    for name, module in modules.items():
        _assert_state_equal(state_dicts[name], module)
    assert loaded_config == config
    assert metadata == {"kimg": 40, "cur_nimg": 40000, "format_version": snapshot.FORMAT_VERSION}

    # A fresh module of the same layout loads the weights strictly and reproduces the original's output.
    fresh = _Tied()
    fresh.load_state_dict(state_dicts["G"], strict=True)
    x = torch.randn(5, 3)
    assert torch.equal(fresh.decode(fresh.tied(x)), modules["G"].decode(modules["G"].encode(x)))


def test_network_file_is_plain_safetensors(tmp_path):
    """Any safetensors reader sees '<module>.<name>' tensors and our JSON metadata: there is no pickle inside."""
    modules = {"G": nn.Linear(2, 3)}
    path = tmp_path / "net.safetensors"
    save_network_snapshot(path, modules, {"a": [1, 2]}, {"kimg": 0})
    tensors = safetensors.torch.load_file(path)
    assert sorted(tensors) == ["G.bias", "G.weight"]
    assert torch.equal(tensors["G.weight"], modules["G"].weight.detach())
    with safetensors.safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "headgan.network-snapshot"
    assert int(header["format_version"]) == snapshot.FORMAT_VERSION
    assert json.loads(header["config"]) == {"a": [1, 2]}
    assert json.loads(header["metadata"]) == {"kimg": 0}


def test_network_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="contain no '.'"):
        save_network_snapshot(tmp_path / "a.safetensors", {"G.x": nn.Linear(1, 1)}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_network_snapshot(tmp_path / "a.safetensors", {"G": nn.Linear(1, 1)}, {}, {"format_version": 3})
    with pytest.raises(UserError, match="does not exist"):
        save_network_snapshot(tmp_path / "missing" / "a.safetensors", {"G": nn.Linear(1, 1)}, {})
    assert list(tmp_path.iterdir()) == []


def test_network_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="nope.safetensors.*does not exist"):
        load_network_snapshot(missing)

    good = tmp_path / "good.safetensors"
    save_network_snapshot(good, {"G": nn.Linear(16, 16)}, {"x": 1})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated.safetensors.*truncated"):
        load_network_snapshot(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a snapshot at all" * 4)
    with pytest.raises(UserError, match="garbage.safetensors"):
        load_network_snapshot(garbage)

    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="foreign.safetensors.*format tag None"):
        load_network_snapshot(foreign)

    future = tmp_path / "future.safetensors"
    header = {
        "format": "headgan.network-snapshot",
        "format_version": str(snapshot.FORMAT_VERSION + 1),
        "modules": "[]",
        "config": "{}",
        "metadata": "{}",
    }
    safetensors.torch.save_file({}, future, metadata=header)
    with pytest.raises(UserError, match=f"future.safetensors.*version {snapshot.FORMAT_VERSION + 1}"):
        load_network_snapshot(future)


def _adam_state() -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.002, betas=(0.0, 0.99), eps=1e-8)
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    return opt.state_dict()


def test_training_state_round_trip(tmp_path):
    opt_state = _adam_state()
    state = {
        "G_opt": opt_state,
        "augment_p": torch.tensor(0.25),
        "cur_nimg": 12345,
        "tick": 3,
        "done": False,
        "schedule": {"stage": (1, 2), "name": "grow"},
        "shared": [opt_state["state"][0]["exp_avg"]] * 2,
    }
    path = tmp_path / "training-state-000012.pt"
    save_training_state(path, state)
    loaded = load_training_state(path)

    assert loaded["cur_nimg"] == 12345 and loaded["tick"] == 3 and loaded["done"] is False
    assert loaded["schedule"] == {"stage": (1, 2), "name": "grow"}
    assert torch.equal(loaded["augment_p"], torch.tensor(0.25))
    assert loaded["G_opt"]["param_groups"] == opt_state["param_groups"]
    for index, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            assert torch.equal(loaded["G_opt"]["state"][index][key], value), (index, key)
    # The loaded dict drives a real optimiser.
    model = nn.Linear(3, 2)
    torch.optim.Adam(model.parameters(), lr=0.1).load_state_dict(loaded["G_opt"])


def test_training_state_rejects_unloadable_types_before_writing(tmp_path):
    path = tmp_path / "training-state-000000.pt"
    with pytest.raises(TypeError, match=r"state\['rng'\]\[1\] is a ndarray"):
        save_training_state(path, {"rng": [1, np.zeros(3)]})
    with pytest.raises(TypeError, match="float64"):
        save_training_state(path, {"p": np.float64(0.5)})
    assert list(tmp_path.iterdir()) == []


class _Payload:
    """A class a pickle would instantiate when loaded (what weights_only must refuse)."""


def test_training_state_load_is_weights_only_and_errors_name_the_file(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "headgan.training-state", "format_version": 1, "state": {"x": _Payload()}}, evil)
    with pytest.raises(UserError, match="evil.pt.*weights_only"):
        load_training_state(evil)

    with pytest.raises(UserError, match="absent.pt.*does not exist"):
        load_training_state(tmp_path / "absent.pt")

    good = tmp_path / "good.pt"
    save_training_state(good, {"x": torch.randn(100)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match="truncated.pt.*truncated"):
        load_training_state(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(UserError, match="foreign.pt.*not a training-state"):
        load_training_state(foreign)

    future = tmp_path / "future.pt"
    torch.save({"format": "headgan.training-state", "format_version": snapshot.FORMAT_VERSION + 1, "state": {}}, future)
    with pytest.raises(UserError, match="future.pt.*format version"):
        load_training_state(future)


def _draws() -> tuple:
    return random.random(), np.random.standard_normal(3).tolist(), torch.randn(3).tolist(), torch.rand(2).tolist()


def test_rng_state_survives_a_save_load_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's legacy generator
    state = capture_rng_state()
    expected = _draws()

    path = tmp_path / "training-state-000001.pt"
    save_training_state(path, {"rng": state})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    restore_rng_state(load_training_state(path)["rng"])
    assert _draws() == expected


def test_restore_rng_state_rejects_incomplete_state():
    state = capture_rng_state()
    del state["numpy"]
    with pytest.raises(UserError, match="RNG state"):
        restore_rng_state(state)


def _const(value: float) -> nn.Module:
    module = nn.Linear(2, 2)
    with torch.no_grad():
        module.weight.fill_(value)
        module.bias.fill_(value)
    return module


def _save_pair(run_dir: Path, kimg: int) -> tuple[Path, Path]:
    network, state = snapshot_paths(run_dir, kimg)
    save_network_snapshot(network, {"G": _const(kimg)}, {"seed": 0}, {"kimg": kimg})
    save_training_state(state, {"cur_nimg": kimg * 1000})
    return network, state


def test_find_latest_snapshot_picks_newest_complete_pair(tmp_path):
    assert snapshot_paths(tmp_path, 40) == (
        tmp_path / "network-snapshot-000040.safetensors",
        tmp_path / "training-state-000040.pt",
    )
    _save_pair(tmp_path, 0)
    _save_pair(tmp_path, 999999)
    newest = _save_pair(tmp_path, 1000000)  # 7 digits: sorts before '999999' as text, after it as a number
    orphan, _ = snapshot_paths(tmp_path, 2000000)  # network written, run stopped before the training state
    save_network_snapshot(orphan, {"G": _const(0)}, {})
    (tmp_path / ".network-snapshot-3000000.safetensors.0a1b2c3d.tmp").write_bytes(b"partial")

    network, state, kimg = find_latest_snapshot(tmp_path)
    assert (network, state, kimg) == (*newest, 1000000)
    assert load_network_snapshot(network)[2]["kimg"] == 1000000
    assert load_training_state(state) == {"cur_nimg": 1000000000}


def test_find_latest_snapshot_errors(tmp_path):
    with pytest.raises(UserError, match="no complete snapshot"):
        find_latest_snapshot(tmp_path)
    with pytest.raises(UserError, match="missing.*does not exist"):
        find_latest_snapshot(tmp_path / "missing")


def _fail(*_args, **_kwargs):
    raise OSError("simulated crash")


def _half_writer(tensors, filename, metadata=None):
    """A safetensors writer that dies half way through, leaving a partial file behind."""
    Path(filename).write_bytes(safetensors.torch.save(tensors, metadata=metadata)[:100])
    raise OSError("simulated crash")


@pytest.mark.parametrize("crash", ["replace", "writer"])
def test_crash_mid_snapshot_keeps_previous_files(tmp_path, monkeypatch, crash):
    network, state = _save_pair(tmp_path, 40)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    if crash == "replace":
        monkeypatch.setattr(os, "replace", _fail)
    else:
        monkeypatch.setattr(safetensors.torch, "save_file", _half_writer)
        monkeypatch.setattr(torch, "save", _fail)
    with pytest.raises(OSError, match="simulated crash"):
        save_network_snapshot(network, {"G": _const(-1.0)}, {"seed": 1}, {"kimg": 40})
    with pytest.raises(OSError, match="simulated crash"):
        save_training_state(state, {"cur_nimg": -1})
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, old bytes untouched
    state_dicts, config, metadata = load_network_snapshot(network)
    assert torch.equal(state_dicts["G"]["weight"], torch.full((2, 2), 40.0)) and config == {"seed": 0}
    assert load_training_state(state) == {"cur_nimg": 40000}


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from training import snapshot
    os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)  # killed after writing, before the rename
    linear = torch.nn.Linear(2, 2)
    snapshot.save_network_snapshot(sys.argv[1], {"G": linear}, {"seed": 1}, {"kimg": 40})
    """
)


def test_killed_process_leaves_previous_snapshot_loadable(tmp_path):
    network, state = _save_pair(tmp_path, 40)
    before = network.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(network)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    assert network.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".network-snapshot-000040.safetensors.")
    assert find_latest_snapshot(tmp_path) == (network, state, 40)
    assert torch.equal(load_network_snapshot(network)[0]["G"]["bias"], torch.full((2,), 40.0))


def test_snapshot_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "network-snapshot-000000.safetensors"
        save_network_snapshot(path, {"m": torch.nn.Linear(2, 2)}, {"x": 1})
        save_training_state(tmp_path / "training-state-000000.pt", {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the group and others, as any other output file
    assert stat.S_IMODE((tmp_path / "training-state-000000.pt").stat().st_mode) == 0o644
