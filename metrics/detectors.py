"""Feature detectors behind one interface: uint8 images in, one feature vector per image out.

A detector is any callable ``detector(images) -> features`` with a ``name`` attribute (part of the dataset-feature
cache key), where ``images`` is uint8-valued [N, 3, H, W] (RGB, any size: the networks resize internally) and
``features`` is float32 [N, D]. The metrics use two pretrained TorchScript networks published by NVIDIA for
StyleGAN2-ADA: Inception-v3 (2048-d pool features, FID and KID) and VGG16 (4096-d fc features, precision/recall).
They are downloaded once into the dnnlib cache (``dnnlib.open_url``); on an offline machine pass local copies with
``--detector-path`` (a file, or a folder holding the files under their published names). Only TorchScript files are
read (``torch.jit.load``): no pickle, so loading a detector never executes Python code from the file.

``StandInDetector`` is a tiny deterministic network with the same call signature, for tests and smoke runs; scripted
with ``torch.jit.script`` and saved, it also exercises the TorchScript path.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from dnnlib import UserError, open_url

DETECTOR_OPTION = "--detector-path"


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """Where a pretrained detector comes from: download URL and the file name it is published under."""

    url: str
    sha256: str | None = None  # None: the publisher lists no checksum; the download is cached as is

    @property
    def file_name(self) -> str:
        return os.path.basename(self.url)


_CDN = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics"
DETECTORS: dict[str, DetectorSpec] = {
    "inception": DetectorSpec(f"{_CDN}/inception-2015-12-05.pt"),
    "vgg16": DetectorSpec(f"{_CDN}/vgg16.pt"),
}


class TorchScriptDetector:
    """A TorchScript detector called with ``return_features=True`` (the published networks' feature output)."""

    def __init__(self, module: torch.jit.ScriptModule, name: str) -> None:
        self.module, self.name = module.eval(), name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 [N, 3, H, W] on the detector's device → float32 [N, D]."""
        return self.module(images, return_features=True).float()


class StandInDetector(torch.nn.Module):
    """Deterministic stand-in: 4×4 average-pooled colours through a fixed random two-layer network.

    Cheap and smooth in the image, so nearby images get nearby features; not a perceptual metric.
    """

    def __init__(self, feature_dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w1", torch.randn(48, 64, generator=gen) / 48**0.5)
        self.register_buffer("w2", torch.randn(64, feature_dim, generator=gen) / 64**0.5)
        self.name = f"standin{feature_dim}-{seed}"

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        """images: uint8-valued [N, 3, H, W] → float32 [N, feature_dim]."""
        x = F.adaptive_avg_pool2d(images.to(torch.float32) / 127.5 - 1, 4).flatten(1)  # [N, 48]
        return torch.tanh(x @ self.w1) @ self.w2


def detector_source(kind: str, detector_path: str | os.PathLike | None) -> str:
    """The URL or local file of detector ``kind`` ('inception' or 'vgg16').

    ``detector_path``: None (download), a file (used as is), or a folder holding the file under its published name.
    """
    if kind not in DETECTORS:
        raise UserError(f"unknown detector '{kind}'; expected one of {sorted(DETECTORS)}")
    if detector_path is None:
        return DETECTORS[kind].url
    path = Path(detector_path)
    if path.is_dir():
        path = path / DETECTORS[kind].file_name
        if not path.is_file():
            raise UserError(f"{DETECTOR_OPTION}: folder '{detector_path}' holds no '{DETECTORS[kind].file_name}' "
                            f"(download it from {DETECTORS[kind].url})")
    elif not path.is_file():
        raise UserError(f"{DETECTOR_OPTION}: '{detector_path}' is neither a file nor a folder")
    return str(path)


def load_torchscript(source: str, local_option: str, device: torch.device | str = "cpu",
                     sha256: str | None = None) -> torch.jit.ScriptModule:
    """A TorchScript network from a URL (downloaded once into the dnnlib cache) or a local file, on ``device``.

    ``local_option`` names the CLI option for a local copy; it appears in the error raised when the download fails.
    """
    file = open_url(source, sha256=sha256, local_option=local_option)
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the networks ship in
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(file, map_location=device)
    except RuntimeError as error:
        raise UserError(f"{source}: not a TorchScript file ({str(error).splitlines()[0]})") from None


_LOADED: dict[tuple[str, str, str], TorchScriptDetector] = {}


def load_detector(kind: str, detector_path: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu", url: str | None = None) -> TorchScriptDetector:
    """Detector ``kind`` on ``device``, loaded once per process (see ``detector_source`` for ``detector_path``).

    ``url`` replaces the published download address (mirrors, tests). Offline without a local copy: UserError naming
    the URL and ``--detector-path``.
    """
    source = detector_source(kind, detector_path) if url is None else url
    key = (kind, source, str(device))
    if key not in _LOADED:
        spec = DETECTORS[kind]
        sha256 = spec.sha256 if source == spec.url else None
        module = load_torchscript(source, f"{DETECTOR_OPTION} (the file {spec.file_name})", device, sha256)
        name = kind if source == spec.url or Path(source).name == spec.file_name else f"{kind}-{Path(source).stem}"
        _LOADED[key] = TorchScriptDetector(module, name)
    return _LOADED[key]
