"""train.py (dry run, overrides, errors, run directories, synthetic-data cache, resume) and legacy.load_network."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import legacy
import train
from dnnlib import UserError
from training.presets import PRESETS, TrainingConfig, build_discriminator, build_networks
from training.snapshot import save_network_snapshot, save_training_state
from training.synthetic import sample_cameras

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: str):
    return CliRunner().invoke(train.main, list(args))


def _dry_run(tmp_path: Path, *args: str) -> TrainingConfig:
    result = _invoke("--outdir", str(tmp_path), "--dry-run", *args)
    assert result.exit_code == 0, result.output
    return TrainingConfig.from_dict(json.loads(result.stdout))


def _fail(*args: str) -> str:
    result = _invoke(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error: ")
    return result.output


def test_dry_run_prints_the_resolved_config_with_overrides(tmp_path):
    got = _dry_run(tmp_path, "--cfg", "panohead-tiny", "--data", "synthetic", "--gamma", "2", "--gamma-mask", "0.5",
                   "--glr", "0.001", "--dlr", "0.003", "--gpc", "0.8", "--batch", "8", "--kimg", "3", "--tick", "0.5",
                   "--snap", "2", "--trigrid-depth", "2", "--nrr", "24", "--seed", "7", "--mirror", "false",
                   "--metrics", "none", "--set", "loss.background_swap_prob=0.5", "--set", "data.yaw_range=[0, 90]")
    p = PRESETS["panohead-tiny"]
    cache = tmp_path / "datasets" / "synthetic-360-64-1000.zip"
    expected = dataclasses.replace(
        p, seed=7,
        generator=dataclasses.replace(p.generator, trigrid_depth=2),
        loss=dataclasses.replace(p.loss, r1_gamma=2.0, r1_gamma_mask=0.5, gpc_prob=0.8, background_swap_prob=0.5),
        optim=dataclasses.replace(p.optim, g_lr=0.001, d_lr=0.003),
        schedule=dataclasses.replace(p.schedule, batch=8, batch_gpu=4, kimg=3.0, tick_kimg=0.5, snap=2,
                                     neural_rendering_resolution_initial=24, metrics=()),
        data=dataclasses.replace(p.data, path=str(cache), mask_path=str(cache.with_name(cache.stem + "_masks.zip")),
                                 xflip=False, yaw_range=(0.0, 90.0)))
    assert got == expected
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_dry_run_batch_data_and_masks(tmp_path):
    data, masks = tmp_path / "faces.zip", tmp_path / "faces_masks"
    data.write_bytes(b"")
    masks.mkdir()
    got = _dry_run(tmp_path, "--cfg", "gghead-tiny", "--data", str(data), "--mask-data", str(masks), "--batch", "2")
    assert (got.data.path, got.data.mask_path) == (str(data), str(masks))
    assert (got.schedule.batch, got.schedule.batch_gpu) == (2, 2)  # the preset's 4 per process would not fit
    eg3d = _dry_run(tmp_path, "--cfg", "eg3d-tiny", "--data", "synthetic")
    assert eg3d.data.path == str(tmp_path / "datasets" / "synthetic-ffhq-64-1000.zip")


def test_user_errors_are_one_line_without_traceback(tmp_path):
    out = str(tmp_path)
    assert "--trigrid-depth: GaussianHeadConfig: no field 'trigrid_depth'" in _fail(
        "--outdir", out, "--cfg", "gghead-tiny", "--data", "synthetic", "--trigrid-depth", "2")
    assert "--metrics: unknown metric(s) ['fid1']" in _fail(
        "--outdir", out, "--cfg", "eg3d-tiny", "--data", "synthetic", "--metrics", "fid1")
    assert f"--data: '{tmp_path / 'nope.zip'}' does not exist" in _fail(
        "--outdir", out, "--cfg", "eg3d-tiny", "--data", str(tmp_path / "nope.zip"))
    assert "--cfg: required" in _fail("--outdir", out, "--data", "synthetic")
    assert "--data: required" in _fail("--outdir", out, "--cfg", "eg3d-tiny")
    assert "LossConfig: no field 'gama'" in _fail(
        "--outdir", out, "--cfg", "eg3d-tiny", "--data", "synthetic", "--set", "loss.gama=1")
    assert "expected FIELD.PATH=VALUE" in _fail(
        "--outdir", out, "--cfg", "eg3d-tiny", "--data", "synthetic", "--set", "loss.r1_gamma")
    assert "must be a positive multiple of batch_gpu" in _fail(
        "--outdir", out, "--cfg", "eg3d-tiny", "--data", "synthetic", "--batch", "6", "--batch-gpu", "4")
    assert "--cfg and --resume exclude each other" in _fail(
        "--outdir", out, "--cfg", "eg3d-tiny", "--resume", out)


def test_exit_status_of_the_script(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--outdir", str(tmp_path), "--cfg", "eg3d-tiny", "--data",
                           "synthetic", "--metrics", "fid1", "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: --metrics") and "Traceback" not in proc.stderr


def test_next_run_dir(tmp_path):
    assert train.next_run_dir(tmp_path / "new", "eg3d-tiny", "faces", 1, 4).name == "00000-eg3d-tiny-faces-gpus1-batch4"
    for name in ("00000-a", "00007-b-c", "notes", "123-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "00009.txt").write_text("")
    assert train.next_run_dir(tmp_path, "panohead", "ffhq512", 8, 32).name == "00008-panohead-ffhq512-gpus8-batch32"
    assert train.data_name("/data/ffhq512.zip") == "ffhq512" and train.data_name("/data/imgs/") == "imgs"


@pytest.fixture
def fake_loop(monkeypatch):
    """Replaces training.training_loop with a recorder of its calls."""
    calls = []
    module = types.ModuleType("training.training_loop")
    module.training_loop = lambda config, run_dir, resume=None: calls.append((config, run_dir, resume))
    monkeypatch.setitem(sys.modules, "training.training_loop", module)
    return calls


def test_run_creates_run_dirs_and_caches_the_synthetic_dataset(tmp_path, fake_loop):
    args = ("--outdir", str(tmp_path), "--cfg", "eg3d-tiny", "--data", "synthetic", "--synthetic-count", "2")
    assert _invoke(*args).exit_code == 0
    cache = tmp_path / "datasets" / "synthetic-ffhq-64-2.zip"
    masks = tmp_path / "datasets" / "synthetic-ffhq-64-2_masks.zip"
    stamp = cache.stat().st_mtime_ns
    assert masks.is_file()
    assert _invoke(*args, "--kimg", "1").exit_code == 0
    assert cache.stat().st_mtime_ns == stamp  # reused, not rendered again
    names = [Path(run_dir).name for _, run_dir, _ in fake_loop]
    assert names == ["00000-eg3d-tiny-synthetic-gpus1-batch4", "00001-eg3d-tiny-synthetic-gpus1-batch4"]
    config, run_dir, resume = fake_loop[1]
    assert resume is None and config.schedule.kimg == 1.0 and config.data.path == str(cache)
    assert config.data.mask_path == str(masks)
    assert TrainingConfig.from_dict(json.loads((Path(run_dir) / "training_options.json").read_text())) == config


def _save_snapshot(path: Path, config: TrainingConfig, cur_nimg: int = 0) -> dict:
    G, D = build_networks(config, "cpu", cur_nimg)
    G_ema = build_networks(config, "cpu", cur_nimg)[0]
    modules = {"G": G, "G_ema": G_ema, "D": D}
    save_network_snapshot(path, modules, config.to_dict(), {"kimg": cur_nimg // 1000, "cur_nimg": cur_nimg})
    return modules


def test_resume_continues_from_the_snapshot_config(tmp_path, fake_loop):
    run = tmp_path / "00003-eg3d-tiny-faces-gpus1-batch4"
    run.mkdir()
    saved = PRESETS["eg3d-tiny"].replace("seed", 3).replace("data.path", str(tmp_path))
    for kimg in (1, 12):
        _save_snapshot(run / f"network-snapshot-{kimg:06d}.safetensors", saved, kimg * 1000)
        save_training_state(run / f"training-state-{kimg:06d}.pt", {"cur_nimg": kimg * 1000})
    got = _dry_run(tmp_path, "--resume", str(run), "--kimg", "30")
    assert got == saved.replace("schedule.kimg", 30)
    assert _invoke("--outdir", str(tmp_path), "--resume", str(run), "--gamma", "3").exit_code == 0
    config, run_dir, resume = fake_loop[0]
    assert resume == str(run / "network-snapshot-000012.safetensors") and config == saved.replace("loss.r1_gamma", 3)
    assert Path(run_dir).name == "00004-resume-" + tmp_path.name + "-gpus1-batch4"


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_network_restores_weights_and_outputs(tmp_path):
    config = PRESETS["eg3d-tiny"]
    path = tmp_path / "network-snapshot-000004.safetensors"
    modules = _save_snapshot(path, config, 4000)
    net = legacy.load_network(path)
    assert net.config == config and net.metadata["cur_nimg"] == 4000 and net.path == str(path)
    for name in ("G", "G_ema", "D"):
        assert _same_state(net[name], modules[name]) and not net[name].training
        assert not any(p.requires_grad for p in net[name].parameters())
    z, c = torch.randn(2, config.generator.z_dim), sample_cameras("ffhq", 2, 0)
    outputs = []
    for G in (modules["G_ema"].eval(), net.G_ema):  # both in eval mode: fused modulated convolutions
        torch.manual_seed(1)
        with torch.no_grad():
            outputs.append(G(z, c, noise_mode="const")["image"])
    assert torch.equal(*outputs)
    only = legacy.load_network(tmp_path, which="G_ema")  # a run directory: its newest snapshot
    assert only.G is None and only.D is None and _same_state(only.G_ema, modules["G_ema"])


def test_load_network_rebuilds_a_growing_discriminator(tmp_path):
    config = PRESETS["gghead-tiny"]  # 32 -> 64 at 10 kimg, faded in over 2 kimg
    D = build_discriminator(config, 11_000)
    D.set_blend(0.5)
    G = build_networks(config, "cpu")[0]
    path = tmp_path / "network-snapshot-000011.safetensors"
    save_network_snapshot(path, {"G_ema": G, "D": D}, config.to_dict())
    net = legacy.load_network(path)
    assert (net.D.img_resolution, net.D.fade_resolution, float(net.D.blend)) == (64, 32, 0.5)
    assert _same_state(net.D, D) and net.G is None and _same_state(net.G_ema, G)


def test_load_network_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        legacy.load_network(tmp_path / "network-snapshot-000000.safetensors")
    with pytest.raises(UserError, match="holds no network-snapshot"):
        legacy.load_network(tmp_path)
    good = tmp_path / "good.safetensors"
    _save_snapshot(good, PRESETS["eg3d-tiny"])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated"):
        legacy.load_network(truncated)
    G, D = build_networks(PRESETS["eg3d-tiny"], "cpu")
    other = tmp_path / "other.safetensors"
    save_network_snapshot(other, {"G": G, "D": D}, PRESETS["panohead-tiny"].to_dict())
    with pytest.raises(UserError, match=r"other.safetensors' \[G\]: the weights do not match"):
        legacy.load_network(other)
    with pytest.raises(UserError, match=r"has no module\(s\) \['G_ema'\]"):
        legacy.load_network(other, which="G_ema")
    future = tmp_path / "future.safetensors"
    save_network_snapshot(future, {"G": G}, {**PRESETS["eg3d-tiny"].to_dict(), "precision": "bf16"})
    with pytest.raises(UserError, match=r"config does not fit this code: TrainingConfig: unknown keys \['precision'\]"):
        legacy.load_network(future)
