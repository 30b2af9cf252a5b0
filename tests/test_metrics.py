"""Metrics: Fréchet distance, KID, precision/recall against independent computations; detectors (TorchScript path,
offline error); dataset features (preparation, cache); the registry end to end on a tiny snapshot.

Oracles: scipy.linalg.sqrtm and eigenvalues of the non-symmetric product Σ₁Σ₂ (FID), double loops over sample pairs
(KID's unbiased MMD), brute-force sorted distances (k-NN precision/recall), hand compositing of dataset images (real
features), look-at cameras built directly (frontal camera).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from dnnlib import UserError
from metrics import detectors, features, registry
from metrics.frechet import fid_from_features, frechet_distance, mean_cov
from metrics.kid import kid_from_features, unbiased_mmd2
from metrics.precision_recall import coverage, knn_radii, precision_recall
from training import training_loop
from training.cameras import label_yaw_pitch_roll, lookat_labels
from training.dataset import ImageFolderDataset
from training.presets import PRESETS, TrainingConfig, build_networks
from training.snapshot import save_network_snapshot
from training.synthetic import write_synthetic_dataset

RES = 16


@pytest.fixture(autouse=True)
def one_thread_and_cache(tmp_path, monkeypatch):
    """One torch thread (tiny tensors) and a private download/feature cache."""
    monkeypatch.setenv("HEADGAN_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(data: tuple[Path, Path]) -> TrainingConfig:
    """gghead-tiny shrunk to 16² renders without growth, on ``data`` (images zip, masks zip)."""
    base = PRESETS["gghead-tiny"]
    gen = dataclasses.replace(base.generator, z_dim=8, w_dim=8, uv_resolution=8, channel_base=64, channel_max=8,
                              sample_resolution=8, render_resolution=RES)
    disc = dataclasses.replace(base.discriminator, channel_base=64, channel_max=8)
    sched = dataclasses.replace(base.schedule, growth=(), batch=2, batch_gpu=2)
    data_cfg = dataclasses.replace(base.data, path=str(data[0]), mask_path=str(data[1]), resolution=RES, workers=0)
    return dataclasses.replace(base, generator=gen, discriminator=disc, schedule=sched, data=data_cfg)


@pytest.fixture(scope="session")
def heads(tmp_path_factory) -> tuple[Path, Path]:
    """10 synthetic heads with 360° cameras and masks at 16²: (images zip, masks zip)."""
    info = write_synthetic_dataset(tmp_path_factory.mktemp("data") / "heads.zip", 10, RES, cameras="360",
                                   supersample=1, progress=False)
    return Path(info["dest"]), Path(info["masks_dest"])


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory, heads) -> tuple[Path, TrainingConfig]:
    """A freshly initialised tiny Gaussian-head snapshot trained on ``heads`` (file path, config)."""
    config = tiny_config(heads)
    torch.manual_seed(0)
    G, D = build_networks(config, "cpu")
    path = tmp_path_factory.mktemp("run") / "network-snapshot-000000.safetensors"
    save_network_snapshot(path, {"G": G, "G_ema": G, "D": D}, config.to_dict(), {"kimg": 0, "cur_nimg": 0})
    return path, config


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance


def _random_cov(rng: np.random.Generator, samples: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((samples, dim)) * rng.uniform(0.2, 3.0, dim)
    return np.cov(x, rowvar=False, bias=True)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = _random_cov(rng, 50, 8), _random_cov(rng, 40, 8)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_distance_nearly_singular_covariance():
    """Covariances of 6 samples in 16 dimensions (rank 5) plus 1e-9·I: the oracle takes the eigenvalues of the
    non-symmetric product Σ₁Σ₂ directly (they are real and ≥ 0 up to round-off)."""
    rng = np.random.default_rng(2)
    dim = 16
    s1 = _random_cov(rng, 6, dim) + 1e-9 * np.eye(dim)
    s2 = _random_cov(rng, 6, dim) + 1e-9 * np.eye(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    eig = np.linalg.eigvals(s1 @ s2)
    assert np.abs(eig.imag).max() < 1e-8
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum()
    # Eigenvalues near 1e-9·scale carry ~1e-16 absolute error: √ amplifies it to ~1e-8 at most per eigenvalue.
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-6)
    # Identical singular statistics: the distance is 0 (no complex parts, no negative result beyond round-off).
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6


def test_mean_cov_and_fid_from_features():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=gen), torch.randn(25, 5, generator=gen) * 2 + 1
    mu, cov = mean_cov(x)
    np.testing.assert_allclose(mu, x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.double().numpy(), rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    a, b = x.double().numpy(), y.double().numpy()
    sa, sb = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * scipy.linalg.sqrtm(sb @ sa).real)
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# KID and precision/recall


def _loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    def k(a, b):
        return (sum(float(p) * float(q) for p, q in zip(a, b, strict=True)) / len(a) + 1) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_unbiased_mmd_matches_double_loop():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 5, generator=gen), torch.randn(7, 5, generator=gen) * 1.5 + 0.3
    assert unbiased_mmd2(x, y) == pytest.approx(_loop_mmd2(x.double().numpy(), y.double().numpy()), rel=1e-10)


def test_kid_with_one_full_subset_is_the_unbiased_mmd():
    """Subsets of all samples (size = N = M): KID is the loop MMD² whatever order the subsets are drawn in."""
    gen = torch.Generator().manual_seed(5)
    real, fake = torch.randn(10, 4, generator=gen), torch.randn(10, 4, generator=gen) + 0.5
    expected = _loop_mmd2(fake.double().numpy(), real.double().numpy())
    assert kid_from_features(real, fake, num_subsets=3, max_subset_size=100) == pytest.approx(expected, rel=1e-10)
    assert kid_from_features(real, real, num_subsets=1, max_subset_size=100) == pytest.approx(
        _loop_mmd2(real.double().numpy(), real.double().numpy()), rel=1e-9, abs=1e-12)


def _brute_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(points):
        return [sorted(math.dist(p, q) for q in points)[k] for p in points]  # index 0 is the point itself

    def cover(queries, centres, r):
        return sum(any(math.dist(q, c) <= rc for c, rc in zip(centres, r, strict=True)) for q in queries) / len(queries)

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_knn():
    gen = torch.Generator().manual_seed(6)
    real, fake = torch.randn(30, 4, generator=gen), torch.randn(25, 4, generator=gen) * 0.7 + 0.4
    expected = _brute_pr(real.double().numpy(), fake.double().numpy(), 3)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the sets overlap partly: both counts are informative
    blocked = coverage(fake, real, knn_radii(real, 3, block=7), block=4)  # several row blocks
    assert blocked == pytest.approx(expected[0], abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Detectors


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_detector_round_trip(tmp_path):
    module = detectors.StandInDetector(feature_dim=6, seed=1)
    path = tmp_path / "standin.pt"
    torch.jit.script(module).save(str(path))
    loaded = detectors.load_detector("inception", path)
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    torch.testing.assert_close(loaded(images), module(images), rtol=0, atol=0)
    assert loaded.name == "inception-standin"
    folder = tmp_path / "dets"
    folder.mkdir()
    with pytest.raises(UserError, match=r"--detector-path: folder .* holds no 'vgg16.pt'"):
        detectors.load_detector("vgg16", folder)


def test_offline_detector_error_names_url_and_option(tmp_path):
    url = "http://127.0.0.1:9/metrics/inception-2015-12-05.pt"  # port 9 (discard): refused at once, no network
    with pytest.raises(UserError) as error:
        detectors.load_detector("inception", url=url)
    assert url in str(error.value) and "--detector-path" in str(error.value)


# ---------------------------------------------------------------------------------------------------------------------
# Features


class CountingDetector:
    """Raw pixels as features (uint8 → float), counting the images it sees."""

    name = "pixels"

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.count += len(images)
        return images.flatten(1).float()


def test_dataset_features_composite_and_cache_hit(heads, tmp_path):
    background = (0.5, -1.0, 0.25)
    data = features.RealData(str(heads[0]), str(heads[1]), background=background)
    detector = CountingDetector()
    first = features.dataset_features(data, detector, detector.name, torch.device("cpu"), batch=4, workers=0)
    dataset = ImageFolderDataset(heads[0], mask_path=heads[1])
    expected = []
    for i in range(len(dataset)):
        image, _, mask = dataset[i]
        alpha = mask.astype(np.float64) / 255
        mixed = (image / 127.5 - 1) * alpha + np.array(background)[:, None, None] * (1 - alpha)
        expected.append(np.clip(np.floor(mixed * 127.5 + 128), 0, 255).reshape(-1))
    np.testing.assert_array_equal(first.numpy(), np.stack(expected))
    assert detector.count == len(dataset)
    again = features.dataset_features(data, detector, detector.name, torch.device("cpu"), batch=4, workers=0)
    assert detector.count == len(dataset)  # cache hit: the detector saw no image
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert len(list(features.cache_path(data, "pixels").parent.glob("heads-pixels-*.pt"))) == 1
    assert features.cache_path(data, "other") != features.cache_path(data, "pixels")
    assert features.cache_path(dataclasses.replace(data, yaw_range=(0.0, 90.0)), "pixels") != features.cache_path(
        data, "pixels")


def test_frontal_camera_of_orbiting_dataset():
    gen = torch.Generator().manual_seed(7)
    pivot = (0.0, 0.05, 0.2)
    h = math.pi / 2 + torch.randn(20, generator=gen, dtype=torch.float64) * 0.4
    v = math.pi / 2 + torch.randn(20, generator=gen, dtype=torch.float64) * 0.2
    labels = lookat_labels(h, v, radius=2.7, pivot=pivot, dtype=torch.float64)
    expected = lookat_labels(math.pi / 2, math.pi / 2, radius=2.7, pivot=pivot, dtype=torch.float64)[0]
    torch.testing.assert_close(registry.frontal_camera(labels), expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# Registry end to end


class RecordingG(torch.nn.Module):
    """Forwards to G and records the (conditioning, rendering) cameras of every call."""

    def __init__(self, G: torch.nn.Module) -> None:
        super().__init__()
        self.G, self.z_dim, self.calls = G, G.z_dim, []

    def forward(self, z, c, c_render=None, **kwargs):
        self.calls.append((c.clone(), c_render.clone()))
        return self.G(z, c, c_render=c_render, **kwargs)


def _options(snapshot, G, **kwargs) -> registry.MetricOptions:
    det = detectors.StandInDetector()
    return registry.MetricOptions(G=G, config=snapshot[1], detectors={"inception": det, "vgg16": det}, num_gen=6,
                                  batch=4, workers=0, **kwargs)


def test_registry_end_to_end(snapshot, heads, tmp_path):
    import legacy

    G = RecordingG(legacy.load_network(snapshot[0], which="G_ema").G_ema)
    result = registry.calc_metric("fid50k_full", _options(snapshot, G))
    assert result.num_gen == 6 and result.num_real == 10 and result.detector == "standin16-0"
    assert math.isfinite(result.results["fid50k_full"]) and result.results["fid50k_full"] > 0
    labels = torch.from_numpy(np.stack([ImageFolderDataset(heads[0]).get_label(i) for i in range(10)]))
    for c, c_render in G.calls:  # conditioning = rendering camera, each a dataset camera
        torch.testing.assert_close(c, c_render, rtol=0, atol=0)
        assert ((c_render[:, None] - labels[None]).abs().amax(-1) == 0).any(1).all()
    again = registry.calc_metric("fid50k_full", _options(snapshot, G))
    assert again.results == result.results  # seeded latents, cameras and noise

    path = registry.report_metric(result, tmp_path, tmp_path / "network-snapshot-000000.safetensors")
    record = json.loads(path.read_text().splitlines()[0])
    assert path.name == "metric-fid50k_full.jsonl" and record["results"] == result.results
    assert record["snapshot"] == "network-snapshot-000000.safetensors"

    G.calls.clear()
    pr = registry.calc_metric("pr50k3_full", _options(snapshot, G, max_real=8))
    assert set(pr.results) == {"pr50k3_full_precision", "pr50k3_full_recall"} and pr.num_real == 8


def test_fid3d_and_back_views_cameras(snapshot, heads):
    import legacy

    G = RecordingG(legacy.load_network(snapshot[0], which="G_ema").G_ema)
    registry.calc_metric("fid3d50k", _options(snapshot, G))
    labels = torch.from_numpy(np.stack([ImageFolderDataset(heads[0]).get_label(i) for i in range(10)]))
    frontal = registry.frontal_camera(labels)
    assert torch.rad2deg(label_yaw_pitch_roll(frontal.double())[0]).abs() < 1e-6
    for c, c_render in G.calls:  # frontal conditioning, dataset rendering cameras
        torch.testing.assert_close(c, frontal.expand_as(c), rtol=0, atol=0)
        assert ((c_render[:, None] - labels[None]).abs().amax(-1) == 0).any(1).all()
    G.calls.clear()
    back = registry.calc_metric("fid50k_back", _options(snapshot, G))
    yaws = torch.rad2deg(label_yaw_pitch_roll(labels.double())[:, 0]).abs()
    assert back.num_real == int((yaws >= 90).sum()) > 0
    rendered = torch.cat([c_render for _, c_render in G.calls])
    assert (torch.rad2deg(label_yaw_pitch_roll(rendered.double())[:, 0]).abs() >= 90).all()


def test_unknown_metric_names_the_option():
    with pytest.raises(UserError, match=r"schedule\.metrics: unknown metric\(s\) \['fid1'\]"):
        registry.check_metric_names(["fid1"], "schedule.metrics")


def test_training_loop_writes_metric_jsonl(snapshot, tmp_path, monkeypatch):
    """One training step with schedule.metrics: the loop appends the metric to metric-<name>.jsonl and log.txt."""
    monkeypatch.setitem(registry.METRICS, "fid10k", dataclasses.replace(registry.METRICS["fid10k"], num_gen=4))
    monkeypatch.setattr(detectors, "load_detector", lambda *args, **kwargs: detectors.StandInDetector())
    config = snapshot[1]
    config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, kimg=0.002, tick_kimg=0.002,
                                                                      metrics=("fid10k",)))
    training_loop.training_loop(config, str(tmp_path), device_type="cpu")
    lines = (tmp_path / "metric-fid10k.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert len(lines) == 1 and record["snapshot"] == "network-snapshot-000000.safetensors"
    assert record["num_gen"] == 4 and math.isfinite(record["results"]["fid10k"])
    assert "metric fid10k " in (tmp_path / "log.txt").read_text()
