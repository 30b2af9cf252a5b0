"""Training loop end to end (tiny presets on synthetic heads), exact resume, non-finite steps, schedule maths.

Oracles: closed forms (lazy-regularisation compensation, EMA factor, growth blend), brute-force sequences (image
order), the presets' own discriminator builder (growth replay), an uninterrupted run (resume must be bit-identical on
CPU: torch.equal), and the initial weights (fully skipped steps must leave them untouched).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import legacy
from dnnlib import UserError
from training import schedules, training_loop
from training.dataset import ImageFolderDataset
from training.loss import HeadGANLoss
from training.presets import PRESETS, GrowthStage, TrainingConfig, build_discriminator, build_networks
from training.snapshot import find_latest_snapshot, load_network_snapshot, load_training_state
from training.synthetic import write_synthetic_dataset

# Tiny tensors: on shared cores a second intra-op thread only adds barrier waits (measured up to 100x per conv).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def heads(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """16 synthetic heads with masks at 32² and 64²: {resolution: (images zip, masks zip)}."""
    root = tmp_path_factory.mktemp("heads")
    out = {}
    for resolution in (32, 64):
        info = write_synthetic_dataset(root / f"heads{resolution}.zip", 16, resolution, progress=False)
        out[resolution] = (Path(info["dest"]), Path(info["masks_dest"]))
    return out


def with_data(config: TrainingConfig, data: tuple[Path, Path], resolution: int, **schedule) -> TrainingConfig:
    """``config`` on the synthetic heads, with schedule fields replaced."""
    return dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, **schedule),
                               data=dataclasses.replace(config.data, path=str(data[0]), mask_path=str(data[1]),
                                                        resolution=resolution, workers=0))


def small(name: str, data: tuple[Path, Path], steps: int, batch: int = 2, batch_gpu: int = 2,
          **schedule) -> TrainingConfig:
    """A preset shrunk to 32² images and a few thousand parameters per layer; ``steps`` steps of ``batch``, one tick
    per step, snapshots only at the end; volumetric heads fade the neural resolution 8 → 16 from the 2nd step on."""
    base = PRESETS[name]
    sched = dict(batch=batch, batch_gpu=batch_gpu, kimg=steps * batch / 1000, tick_kimg=batch / 1000, snap=1000,
                 image_snapshot_ticks=1000)
    if base.family == "gaussian":
        gen = dataclasses.replace(base.generator, z_dim=16, w_dim=16, uv_resolution=16, channel_base=128,
                                  channel_max=16, sample_resolution=16, render_resolution=32)
        sched["growth"] = (GrowthStage(0.0, 16, 16), GrowthStage(2 * batch / 1000, 32, 16, fade_kimg=4 * batch / 1000,
                                                                  loss_overrides={"uv_tv_reg": 100.0}))
    else:
        gen = dataclasses.replace(
            base.generator, z_dim=16, w_dim=16, channel_base=128, channel_max=16, trigrid_resolution=16,
            trigrid_channels=4, decoder_hidden=8, feature_channels=8, neural_rendering_resolution=8,
            background_resolution=16, background_channel_base=64, image_resolution=32, sr_channels=(8, 8),
            render=dataclasses.replace(base.generator.render, depth_resolution=6, depth_resolution_importance=6))
        sched.update(neural_rendering_resolution_initial=8, neural_rendering_resolution_final=16,
                     neural_rendering_resolution_start_kimg=batch / 1000, neural_rendering_resolution_fade_kimg=0.01)
    discriminator = dataclasses.replace(base.discriminator, channel_base=128, channel_max=16)
    config = dataclasses.replace(base, generator=gen, discriminator=discriminator)
    return with_data(config, data, 32, **{**sched, **schedule})


def run(config: TrainingConfig, run_dir: Path, resume: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    training_loop.training_loop(config, str(run_dir), resume=resume, device_type="cpu")
    return run_dir


def stats_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def assert_identical(a: object, b: object, where: str = "") -> None:
    """Nested containers equal, tensors bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_latest_snapshot(dir_a: Path, dir_b: Path) -> None:
    """The newest snapshot pairs of two runs hold bit-identical weights and training states."""
    (net_a, state_a, _), (net_b, state_b, _) = find_latest_snapshot(dir_a), find_latest_snapshot(dir_b)
    weights_a, _, meta_a = load_network_snapshot(net_a)
    weights_b, _, meta_b = load_network_snapshot(net_b)
    assert meta_a["cur_nimg"] == meta_b["cur_nimg"]
    assert_identical(weights_a, weights_b, "weights")
    assert_identical(load_training_state(state_a), load_training_state(state_b), "state")


# ---------------------------------------------------------------------------------------------------------------------
# Schedule maths


def test_lazy_regularisation_and_phases():
    lr, betas = schedules.lazy_adam_hparams(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17, rel=1e-15) and lr == pytest.approx(0.001882352941, rel=1e-9)
    assert betas == (0.0, pytest.approx(0.99 ** (16 / 17), rel=1e-15))
    assert betas[1] == pytest.approx(0.99059, abs=5e-6)  # the reference's rounded value (eg3d-stylegan2-infra §5)
    assert schedules.lazy_adam_hparams(0.0025, (0.0, 0.99), None) == (0.0025, (0.0, 0.99))
    phases = schedules.plan_phases({"G": 4, "D": 16})
    assert [(p.name, p.network, p.interval) for p in phases] == [
        ("Gmain", "G", 1), ("Greg", "G", 4), ("Dmain", "D", 1), ("Dreg", "D", 16)]
    assert [p.name for p in schedules.plan_phases({"G": None, "D": None})] == ["Gboth", "Dboth"]


def test_ema_beta_and_update():
    config = PRESETS["gghead-ffhq512"]  # batch 32, ema_kimg None (= 10), ramp-up 0.05
    assert schedules.ema_beta(config, 10**7) == pytest.approx(0.5 ** (32 / 10_000), rel=1e-15)
    assert schedules.ema_beta(config, 10_000) == pytest.approx(0.5 ** (32 / 500), rel=1e-15)  # ramp-up: 10000 * 0.05
    assert schedules.ema_beta(config, 0) == 0.0
    G, G_ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    G.register_buffer("w_avg", torch.randn(3))
    G_ema.register_buffer("w_avg", torch.zeros(3))
    expected = G.weight.detach() + 0.3 * (G_ema.weight.detach() - G.weight.detach())
    schedules.update_ema(G_ema, G, 0.3)
    torch.testing.assert_close(G_ema.weight, expected, rtol=0, atol=1e-7)
    assert torch.equal(G_ema.w_avg, G.w_avg)


def test_image_order_is_an_epoch_permutation_split_over_ranks():
    length, batch = 7, 4
    one = schedules.ImageOrder(length, seed=3, start_nimg=0, batch=batch)
    sequence = [one.index(n) for n in range(3 * length)]
    for epoch in range(3):
        assert sorted(sequence[epoch * length:(epoch + 1) * length]) == list(range(length))
    assert sequence[:length] != sequence[length:2 * length]
    steps = 5
    ranks = [iter(schedules.ImageOrder(length, 3, 0, batch, rank=r, world=2)) for r in range(2)]
    interleaved = [next(ranks[r]) for _ in range(steps) for r in range(2) for _ in range(batch // 2)]
    assert interleaved == sequence[:steps * batch]
    resumed = iter(schedules.ImageOrder(length, 3, start_nimg=8, batch=batch))
    assert [next(resumed) for _ in range(6)] == sequence[8:14]


def test_growth_replay_matches_the_presets_builder(heads):
    config = small("gghead-tiny", heads[32], steps=8)  # growth 16 -> 32 at 4 images, faded in over 8
    D = build_discriminator(config, 0)
    optimizer = torch.optim.Adam(D.parameters())
    D(dict(image=torch.zeros(2, 3, 16, 16)), torch.zeros(2, 25)).sum().backward()
    optimizer.step()
    for cur_nimg in (2, 4, 6, 10, 12, 14):
        if schedules.apply_growth(D, config, cur_nimg):
            old = {id(p) for p in optimizer.state}
            optimizer = schedules.rebuild_optimizer(optimizer, D)
            assert {id(p) for p in optimizer.state} == old & {id(p) for p in D.parameters()}
        reference = build_discriminator(config, cur_nimg)  # what a resumed run builds
        assert {k: v.shape for k, v in D.state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}, cur_nimg
        # the optimiser state is restored by parameter position: the order must agree too
        assert [k for k, _ in D.named_parameters()] == [k for k, _ in reference.named_parameters()], cur_nimg
        blend = min(max((cur_nimg - 4) / 8, 0.0), 1.0)
        assert ("blend" in D.state_dict()) == (0 < blend < 1 or cur_nimg == 4)
        if D.fade_resolution is not None:
            assert float(D.blend) == blend
    assert D.img_resolution == 32 and D.fade_resolution is None


# ---------------------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("preset", ["gghead-tiny", "panohead-tiny", "eg3d-tiny"])
def test_tiny_preset_trains_and_writes_outputs(preset, heads, tmp_path):
    config = with_data(PRESETS[preset], heads[64], 64, kimg=0.008, tick_kimg=0.004, snap=2, image_snapshot_ticks=1)
    run_dir = run(config, tmp_path / preset)
    ticks = [line for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith("tick ")]
    assert len(ticks) == 2 and "sec/kimg" in ticks[0] and "augment" in ticks[0] and "mem" in ticks[0]
    records = stats_records(run_dir)
    assert [r["Progress/kimg"]["mean"] for r in records] == [0.004, 0.008]
    for record in records:
        for name in ("Loss/G/loss", "Loss/D/loss", "Loss/scores/real", "Loss/scores/fake"):
            assert record[name]["num"] > 0 and math.isfinite(record[name]["mean"]), name
    assert Image.open(run_dir / "reals.png").size == (8 * 64, 4 * 64)
    out = 32 if preset == "gghead-tiny" else 64  # the Gaussian preset renders 32² until its growth stage
    for name in ("fakes_init.png", "fakes000000.png"):
        assert Image.open(run_dir / name).size == (8 * out, 4 * out)
    state = load_training_state(find_latest_snapshot(run_dir)[1])
    assert state["progress"]["cur_nimg"] == 8 and state["progress"]["batch_idx"] == 2

    loaded = legacy.load_network(run_dir)
    torch.manual_seed(config.seed)
    G0, D0 = build_networks(config)
    for trained, initial in ((loaded.G, G0), (loaded.D, D0), (loaded.G_ema, G0)):
        params = dict(initial.named_parameters())
        assert all(torch.isfinite(p).all() for p in trained.parameters())
        changed = [not torch.equal(p, params[name]) for name, p in trained.named_parameters()]
        assert sum(changed) > 0.5 * len(changed)  # Adam moves every parameter with a non-zero gradient
    camera = torch.from_numpy(ImageFolderDataset(heads[64][0]).get_label(0))[None]
    with torch.no_grad():
        image = loaded.G_ema(torch.randn(1, loaded.G_ema.z_dim), camera)["image"]
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()  # the config's output resolution


def test_exact_resume_after_a_crash_mid_snapshot(heads, tmp_path, monkeypatch):
    """Volumetric (EG3D-style: Greg density regularisation, lazy R1), 2 chunks per step, ADA moving p, the neural
    resolution fading: 5 steps in one go == 3 steps, a crash while writing the 4th snapshot, resume, 2 steps."""
    config = small("eg3d-tiny", heads[32], steps=5, batch=4, batch_gpu=2, augment="ada", augment_p=0.5,
                   ada_interval=2, ada_kimg=0.02, snap=1)
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, r1_interval=3))
    reference = run(config, tmp_path / "straight")

    real_save, calls = training_loop.save_network_snapshot, []

    def crash_on_fourth(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 4:  # the process dies while writing: only a temporary file is left behind
            (Path(path).parent / f".{Path(path).name}.dead.tmp").write_bytes(b"partial")
            raise RuntimeError("simulated crash")
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(training_loop, "save_network_snapshot", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, kimg=0.016)), tmp_path / "crash")
    monkeypatch.undo()
    assert load_training_state(find_latest_snapshot(tmp_path / "crash")[1])["progress"]["cur_nimg"] == 12

    resumed = run(config, tmp_path / "resumed", resume=str(tmp_path / "crash"))
    assert_same_latest_snapshot(reference, resumed)
    state = load_training_state(find_latest_snapshot(reference)[1])
    assert state["augment_p"] != 0.5 and state["ada"]["calls"] == 1  # p moved; resumed mid-interval
    records = stats_records(reference)
    assert "Loss/G/density_reg" in records[0] and "Loss/G/density_reg" not in records[1]  # Greg every 4 steps
    assert [("Loss/D/reg" in r) for r in records] == [True, False, False, True, False]  # R1 every 3 steps


def test_exact_resume_mid_fade_of_a_growing_discriminator(heads, tmp_path):
    """Gaussian heads growing 16² -> 32² after 2 steps, faded in over 4: 7 steps == 3 (mid-fade) + resume + 4."""
    config = small("gghead-tiny", heads[32], steps=7)
    reference = run(config, tmp_path / "straight")
    first = run(dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, kimg=0.006)),
                tmp_path / "first")
    network, _, _ = find_latest_snapshot(first)
    weights, _, _ = load_network_snapshot(network)
    assert float(weights["D"]["blend"]) == (6 - 4) / 8  # D saved mid-fade
    resumed = run(config, tmp_path / "resumed", resume=str(network))
    assert_same_latest_snapshot(reference, resumed)
    weights, _, _ = load_network_snapshot(find_latest_snapshot(reference)[0])
    assert "blend" not in weights["D"] and weights["D"]["b32.fromrgb.weight"].shape[1] == 3  # fade ended at 12
    records = stats_records(reference)
    assert ["Loss/G/uv_tv" in r for r in records] == [False, False] + [True] * 5  # stage-2 loss override


def test_nonfinite_gradients_are_skipped_counted_and_stop_the_run(heads, tmp_path, monkeypatch):
    real = HeadGANLoss.accumulate_gradients
    poisoned: set[str] = set()

    def poison(self, phase, *args, gain, **kwargs):
        real(self, phase, *args, gain=math.nan if phase[0] in poisoned else gain, **kwargs)

    monkeypatch.setattr(HeadGANLoss, "accumulate_gradients", poison)
    steps = training_loop.MAX_NONFINITE_STREAK - 1
    config = small("eg3d-tiny", heads[32], steps=steps)
    poisoned.update("GD")
    run_dir = run(config, tmp_path / "skipped")
    torch.manual_seed(config.seed)
    G0, D0 = build_networks(config)
    loaded = legacy.load_network(run_dir)
    for trained, initial in ((loaded.G, G0), (loaded.G_ema, G0), (loaded.D, D0)):
        assert_identical(dict(trained.named_parameters()), dict(initial.named_parameters()))
    progress = load_training_state(find_latest_snapshot(run_dir)[1])["progress"]
    runs = {"Gmain": steps, "Greg": len(range(0, steps, 4)), "Dmain": steps, "Dreg": len(range(0, steps, 16))}
    assert progress["nonfinite_total"] == sum(runs.values())
    records = stats_records(run_dir)
    for name, count in runs.items():  # every run of every phase was reported as non-finite (value 1)
        reported = [r[f"Loss/nonfinite_grads/{name}"] for r in records if f"Loss/nonfinite_grads/{name}" in r]
        assert sum(r["num"] for r in reported) == count and all(r["mean"] == 1.0 for r in reported)

    poisoned.clear()
    poisoned.add("D")
    longer = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, kimg=1.0))
    with pytest.raises(UserError, match=f"{training_loop.MAX_NONFINITE_STREAK} consecutive Dmain steps"):
        run(longer, tmp_path / "diverged")
    log = (tmp_path / "diverged" / "log.txt").read_text()
    assert log.count("\ntick ") == training_loop.MAX_NONFINITE_STREAK - 1 and "\nstopped: training diverged" in log
