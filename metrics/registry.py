"""The metric registry: named protocols (sample counts, detector, which reals, which cameras) and one entry point.

Protocol (StyleGAN2-ADA / EG3D / PanoHead, with PanoHead's inconsistencies removed): the reals are the dataset images
(no mirroring, no back-view repetition; a fixed random subset when a metric caps them), generated images use ψ = 1,
z ~ N(0, I) and rendering cameras drawn uniformly from the same dataset labels. The conditioning camera is the
rendering camera, except for ``fid3d50k``, which conditions every sample on one frontal camera (mapping and camera
self-adaptation see the same cameras either way: ``G(z, c, c_render=...)``). ``fid50k_front`` / ``fid50k_back``
restrict reals and cameras to |yaw| ≤ 90° / ≥ 90°, both with the same generator call (PanoHead's back mode switched
self-adaptation off and conditioning to frontal).

For Gaussian heads trained on matted data (masks, constant background, no background generator) the reals are
composited over the model's background colour, as the training loop shows them to the discriminator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from dnnlib import EasyDict, UserError
from metrics import detectors
from metrics.features import Detector, GeneratorSampling, RealData, dataset_features, generator_features
from metrics.frechet import fid_from_features
from metrics.kid import kid_from_features
from metrics.precision_recall import precision_recall
from torch_utils import distributed
from training.cameras import decode_label, lookat_labels
from training.presets import TrainingConfig, render_kwargs


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric: kind ('fid', 'kid', 'pr'), generated samples, real-image cap (None: all), detector, filters."""

    kind: str
    num_gen: int
    max_real: int | None
    detector: str
    description: str
    yaw_range: tuple[float, float] | None = None
    frontal_condition: bool = False


METRICS: dict[str, MetricSpec] = {
    "fid50k_full": MetricSpec("fid", 50_000, None, "inception", "FID, 50k generated vs all reals"),
    "fid10k": MetricSpec("fid", 10_000, 10_000, "inception", "FID, 10k generated vs 10k reals (quick)"),
    "kid50k_full": MetricSpec("kid", 50_000, 1_000_000, "inception", "KID, 50k generated vs up to 1M reals"),
    "pr50k3_full": MetricSpec("pr", 50_000, 200_000, "vgg16", "precision/recall (k=3), 50k vs up to 200k reals"),
    "fid3d50k": MetricSpec("fid", 50_000, None, "inception", "FID with frontal conditioning, dataset render cameras",
                           frontal_condition=True),
    "fid50k_front": MetricSpec("fid", 50_000, None, "inception", "FID on front views (|yaw| <= 90 deg)",
                               yaw_range=(0.0, 90.0)),
    "fid50k_back": MetricSpec("fid", 50_000, None, "inception", "FID on back views (|yaw| >= 90 deg)",
                              yaw_range=(90.0, 180.0)),
}
KID_SUBSETS, KID_SUBSET_SIZE, PR_K = 100, 1000, 3


def check_metric_names(names: list[str] | tuple[str, ...], option: str = "--metrics") -> None:
    """UserError naming ``option`` when a name is not in the registry."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"{option}: unknown metric(s) {unknown}; known metrics: {', '.join(METRICS)}")


@dataclasses.dataclass
class MetricOptions:
    """Everything a metric needs besides its name.

    G: the generator (G_ema), on ``device``. config / cur_nimg: the run's config and progress (rendering resolution
    of the schedule, background colour). data_path / mask_path: the reals (None: the run's ``config.data``).
    detector_path: local detector file or folder (``--detector-path``); detectors: detector objects by kind
    ('inception', 'vgg16') that replace the published ones (tests). num_gen / max_real: override the metric's
    sample counts (quick estimates; the record says so). batch / real_batch: generated / real images per batch.
    """

    G: torch.nn.Module
    config: TrainingConfig
    cur_nimg: int = 0
    data_path: str | None = None
    mask_path: str | None = None
    device: torch.device = torch.device("cpu")
    detector_path: str | None = None
    detectors: dict[str, Detector] | None = None
    num_gen: int | None = None
    max_real: int | None = None
    batch: int = 16
    real_batch: int = 64
    workers: int = 2
    seed: int = 0
    cache_dir: str | None = None
    progress: bool = False


def frontal_camera(labels: torch.Tensor) -> torch.Tensor:
    """A frontal camera [25] matching dataset cameras labels [L, 25]: it looks along -z at the point closest (least
    squares) to all optical axes, from their mean distance to it, with their median focal length."""
    c2w, K = decode_label(labels.double())
    origins, axes = c2w[:, :3, 3], c2w[:, :3, 2]
    projector = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # [L, 3, 3]
    pivot = torch.linalg.pinv(projector.sum(0)) @ (projector @ origins[:, :, None]).sum(0)[:, 0]
    radius = (origins - pivot).norm(dim=1).mean()
    camera = lookat_labels(math.pi / 2, math.pi / 2, radius=float(radius), pivot=tuple(pivot.tolist()),
                           focal=float(K[:, 0, 0].median()), dtype=torch.float64)
    return camera[0].to(labels.dtype)


def _real_data(spec: MetricSpec, opts: MetricOptions) -> RealData:
    config = opts.config
    path = opts.data_path or config.data.path
    if path is None:
        raise UserError("--data: the snapshot's config names no dataset; pass the dataset to evaluate against")
    mask_path = opts.mask_path if opts.data_path else config.data.mask_path
    matted = config.family == "gaussian" and not config.generator.background_generator
    max_real = spec.max_real if opts.max_real is None else opts.max_real
    return RealData(str(path), None if mask_path is None else str(mask_path), yaw_range=spec.yaw_range,
                    max_items=max_real, background=tuple(config.generator.background) if matted else None)


def load_detectors(names: list[str] | tuple[str, ...], device: torch.device,
                   detector_path: str | None = None) -> None:
    """Load (download once) the detectors that metrics ``names`` use, so that a missing or unreachable detector
    fails before a long run rather than at its first snapshot."""
    check_metric_names(names)
    for kind in sorted({METRICS[name].detector for name in names}):
        detectors.load_detector(kind, detector_path, device)


def _detector(kind: str, opts: MetricOptions) -> tuple[Detector, str]:
    if opts.detectors is not None and kind in opts.detectors:
        found = opts.detectors[kind]
        return found, getattr(found, "name", kind)
    found = detectors.load_detector(kind, opts.detector_path, opts.device)
    return found, found.name


def _sampling(spec: MetricSpec, opts: MetricOptions, real: RealData) -> GeneratorSampling:
    dataset = real.open()
    labels = torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))]))
    kwargs = render_kwargs(opts.config, opts.cur_nimg)
    kwargs.pop("render_options", None)  # training-time density noise
    if opts.config.family == "gaussian":
        kwargs["render_resolution"] = dataset.resolution
    condition = frontal_camera(labels) if spec.frontal_condition else None
    return GeneratorSampling(opts.G, labels, dataset.resolution, condition, kwargs, opts.seed)


def calc_metric(name: str, opts: MetricOptions) -> EasyDict | None:
    """Compute metric ``name``; every rank calls it. Rank 0 gets EasyDict(metric, results {key: value}, num_gen,
    num_real, total_time, total_time_str); other ranks get None."""
    check_metric_names([name])
    spec, start = METRICS[name], time.time()
    real = _real_data(spec, opts)
    detector, detector_name = _detector(spec.detector, opts)
    reals = dataset_features(real, detector, detector_name, opts.device, opts.real_batch, opts.workers,
                             opts.cache_dir, opts.progress)
    num_gen = spec.num_gen if opts.num_gen is None else opts.num_gen
    fakes = generator_features(_sampling(spec, opts, real), num_gen, detector, opts.device, opts.batch,
                               opts.progress)
    if not distributed.is_main():
        return None
    if spec.kind == "fid":
        results = {name: fid_from_features(reals, fakes)}
    elif spec.kind == "kid":
        results = {name: kid_from_features(reals, fakes, KID_SUBSETS, KID_SUBSET_SIZE, opts.seed)}
    else:
        precision, recall = precision_recall(reals.to(opts.device), fakes.to(opts.device), PR_K)  # O(N·M·D)
        results = {f"{name}_precision": precision, f"{name}_recall": recall}
    total = time.time() - start
    return EasyDict(metric=name, results=results, num_gen=num_gen, num_real=len(reals), detector=detector_name,
                    total_time=total, total_time_str=f"{total // 3600:.0f}h {total % 3600 // 60:02.0f}m "
                                                     f"{total % 60:02.0f}s")


def report_metric(result: EasyDict, run_dir: str | os.PathLike, snapshot: str | os.PathLike | None) -> Path:
    """Append ``result`` as one JSON line to ``run_dir/metric-<name>.jsonl`` (with the snapshot path relative to
    ``run_dir`` and a timestamp) and return the file's path."""
    run_dir = Path(run_dir)
    if snapshot is not None:
        snapshot = os.path.relpath(snapshot, run_dir)
    record = {**result, "snapshot": snapshot, "timestamp": time.time()}
    path = run_dir / f"metric-{result.metric}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path
