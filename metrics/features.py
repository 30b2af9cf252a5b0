"""Detector features of dataset images (cached) and of generated images, batched and split across processes.

Work is cut into batches of ``batch`` items; under torchrun, batch i runs on rank i mod world and the features are
gathered in batch order, so the result does not depend on the number of processes. Generated batch i draws its latents
and cameras from a generator seeded by (seed, i), so the same seed gives the same images on any number of processes.

Images reach the detector as uint8 [N, 3, H, W]: dataset images as stored (grayscale repeated to RGB), generated images
quantised from [-1, 1] exactly as they would be saved as PNG. Dataset features are cached under
``dnnlib.get_cache_dir('metrics')`` keyed by a fingerprint of the dataset files (zip member CRCs, or folder file sizes
and times), the options that select and prepare the images, and the detector's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import tqdm

from dnnlib import get_cache_dir
from torch_utils import distributed
from training.dataset import ImageFolderDataset

Detector = Callable[[torch.Tensor], torch.Tensor]  # uint8 [N, 3, H, W] -> float32 [N, D]


@dataclasses.dataclass(frozen=True)
class RealData:
    """Which dataset images are the reals, and how they are prepared for the detector.

    yaw_range: (min, max) |yaw| in degrees of the kept images (None: all). max_items: a fixed random subset of at most
    this many images (None: all). background: RGB in [-1, 1] over which images are composited with their masks (the
    matted images Gaussian heads train on); None, or a dataset without masks, keeps the images as stored.
    """

    path: str
    mask_path: str | None = None
    resolution: int | None = None
    yaw_range: tuple[float, float] | None = None
    max_items: int | None = None
    background: tuple[float, float, float] | None = None

    def open(self) -> ImageFolderDataset:
        """The dataset (labels on, no mirroring, no back-view repetition)."""
        return ImageFolderDataset(self.path, use_labels=True, mask_path=self.mask_path, resolution=self.resolution,
                                  yaw_range=self.yaw_range, max_size=self.max_items)


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 over the names and contents' identity of a zip (member CRC-32s and sizes) or a folder (file sizes and
    modification times): changes when the data does, without reading every image."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                digest.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
    else:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(data: RealData, detector_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the features of ``data`` under ``detector_name`` are cached."""
    key = {**dataclasses.asdict(data), "path": fingerprint(data.path), "detector": detector_name,
           "mask_path": None if data.mask_path is None else fingerprint(data.mask_path)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    root = Path(cache_dir) if cache_dir is not None else get_cache_dir("metrics")
    name = Path(os.path.normpath(data.path)).stem
    return root / f"{name}-{detector_name}-{digest}.pt"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images [N, C, H, W] in [-1, 1] → uint8 RGB [N, 3, H, W], rounded as when saved to PNG."""
    x = (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _my_batches(num_items: int, batch: int) -> Iterator[tuple[int, range]]:
    """(batch index, item range) of the batches this rank computes."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    for i in range(rank, -(-num_items // batch), world):
        yield i, range(i * batch, min((i + 1) * batch, num_items))


def _gather(local: list[torch.Tensor], num_items: int, batch: int, dim: int) -> torch.Tensor:
    """Features of all batches in order, from each rank's list of its batches' features ([≤ batch, dim] each)."""
    world = distributed.get_world_size()
    if world == 1:
        return torch.cat(local) if local else torch.zeros(0, dim)
    device = distributed.device()
    width = torch.tensor([dim], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)  # a rank without batches does not know the feature size
    dim = int(width.item())
    mine = torch.cat(local) if local else torch.zeros(0, dim)
    num_batches = -(-num_items // batch)
    rows = -(-num_batches // world) * batch  # rows every rank sends, zero-padded
    padded = torch.zeros(rows, dim, device=device)
    padded[:len(mine)] = mine.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = []
    for i in range(num_batches):
        start = (i // world) * batch
        out.append(parts[i % world][start:start + min(batch, num_items - i * batch)])
    return torch.cat(out).cpu()


def _broadcast_flag(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if distributed.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=distributed.device())
    dist.broadcast(t, src=0)
    return bool(t.item())


@torch.no_grad()
def dataset_features(data: RealData, detector: Detector, detector_name: str, device: torch.device, batch: int = 64,
                     workers: int = 2, cache_dir: str | os.PathLike | None = None,
                     progress: bool = False) -> torch.Tensor | None:
    """Detector features float32 [N, D] of the real images (rank 0; None on other ranks), from the cache when there.

    Every rank must call it (collective when not cached). The cache is written atomically by rank 0.
    """
    path = cache_path(data, detector_name, cache_dir) if distributed.is_main() else None
    if _broadcast_flag(path is not None and path.is_file()):
        return torch.load(path, weights_only=True)["features"] if distributed.is_main() else None
    dataset = data.open()
    batches = list(_my_batches(len(dataset), batch))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[list(items) for _, items in batches],
                                         num_workers=workers)
    local = []
    for item in tqdm.tqdm(loader, total=len(batches), desc=f"reals {detector_name}", disable=not progress,
                          unit="batch", leave=False):
        images = item[0].to(device)
        if data.background is not None and len(item) > 2:
            alpha = item[2].to(device, torch.float32) / 255
            background = torch.tensor(data.background, device=device).view(1, 3, 1, 1)
            images = to_uint8((images.to(torch.float32) / 127.5 - 1) * alpha + background * (1 - alpha))
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        local.append(detector(images).cpu())
    features = _gather(local, len(dataset), batch, local[0].shape[1] if local else 0)
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            torch.save({"features": features}, tmp)
        os.replace(tmp.name, path)
        return features
    return None


@dataclasses.dataclass
class GeneratorSampling:
    """How generated images are drawn: G (both families' interface) with latents z ~ N(0, I) and rendering cameras
    drawn uniformly from ``labels``; conditioned on those cameras, or on ``condition`` for all samples.

    labels: [L, 25] dataset cameras. condition: [25] fixed conditioning camera (fid3d), or None. render_kwargs: extra
    keyword arguments of ``G(...)`` (rendering resolution). resolution: side of the images the detector gets
    (generated images of another size are resized with antialiasing).
    """

    G: torch.nn.Module
    labels: torch.Tensor
    resolution: int
    condition: torch.Tensor | None = None
    render_kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0

    def images(self, index: int, size: int, device: torch.device) -> torch.Tensor:
        """Batch ``index`` of ``size`` generated images, uint8 [size, 3, R, R]; deterministic in (seed, index)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        z = torch.randn(size, self.G.z_dim, generator=gen).to(device)
        c_render = self.labels[torch.randint(len(self.labels), (size,), generator=gen)].to(device)
        c = c_render if self.condition is None else self.condition.to(device).expand(size, -1)
        noise_seed = int(torch.randint(1 << 62, (), generator=gen))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(noise_seed)  # per-layer noise of the synthesis network
            image = self.G(z, c, c_render=c_render, **self.render_kwargs)["image"]
        if image.shape[-1] != self.resolution:
            image = F.interpolate(image, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                                  align_corners=False)
        return to_uint8(image)


@torch.no_grad()
def generator_features(sampling: GeneratorSampling, num: int, detector: Detector, device: torch.device,
                       batch: int = 16, progress: bool = False) -> torch.Tensor | None:
    """Detector features float32 [num, D] of ``num`` generated images (rank 0; None on other ranks). Collective."""
    local = []
    batches = list(_my_batches(num, batch))
    for index, items in tqdm.tqdm(batches, desc="fakes", disable=not progress, unit="batch", leave=False):
        local.append(detector(sampling.images(index, len(items), device)).cpu())
    features = _gather(local, num, batch, local[0].shape[1] if local else 0)
    return features if distributed.is_main() else None
