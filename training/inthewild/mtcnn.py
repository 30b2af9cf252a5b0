"""MTCNN face detector (Zhang et al. 2016): P-Net proposals, R-Net refinement, O-Net boxes + 5 landmarks.

Our own PyTorch implementation of the cascade as ipazc's `mtcnn` 1.0.0 (TensorFlow; the detector that EG3D's
in-the-wild script calls) runs it, so that its numbers carry over (../shared/reference/inthewild.md section 1a).
The MIT-licensed weights are read from the files inside the `mtcnn==1.0.0` wheel (Kaipeng Zhang -> David Sandberg ->
Ivan de Paz Centeno, MIT throughout); that package is never imported, because its `__init__` imports TensorFlow.

Conventions
- Input: one uint8 HWC RGB image. The networks see (pixel - 127.5) / 128.
- Output coordinates are ipazc's, before its integer rounding: x right, y down, in source pixels, with (0, 0) at the
  centre of the top-left pixel (a mirrored photo maps landmark x to W - 1 - x, on average within 0.3 px). Box
  arithmetic follows ipazc too, including its 1-based Matlab heritage (P-Net cell i spans 2i + 1 .. 2i + 12).
- Boxes are clamped to [0, W - 1] x [0, H - 1] like ipazc's default `fit_to_image`; landmarks are not clamped.
- Landmark order: image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth corner.

Two deliberate reproductions of the reference that differ from other MTCNN ports:
- Non-maximum suppression drops a box when ANY higher-scoring box overlaps it above the threshold, including boxes
  that were themselves dropped (ipazc's one-shot matrix rule, not the classic greedy loop).
- The pyramid levels are made with TensorFlow's AREA resize (exact box-filter averaging over fractional pixel
  footprints); the R/O-Net crops with TensorFlow's crop_and_resize (bilinear, box corners mapped through (n-1)/n,
  samples outside the image read 0).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dnnlib import UserError

_INSTALL_HINT = "Run: pip install mtcnn==1.0.0 (MIT-licensed MTCNN weights; TensorFlow is not needed)"


@dataclass(frozen=True)
class Face:
    """One detection. Coordinates in source pixels, x right, y down (module docstring)."""

    box: np.ndarray  # [4] float64 x0, y0, x1, y1
    confidence: float  # O-Net face probability
    landmarks: np.ndarray  # [5, 2] float64 (x, y): image-left eye, image-right eye, nose, mouth image-left, image-right


# ---------------------------------------------------------------------------------------------------------------------
# Weights.


def _weights_dir() -> Path:
    """Folder holding {pnet,rnet,onet}.lz4 inside the installed mtcnn wheel; UserError when it is missing."""
    spec = importlib.util.find_spec("mtcnn")
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise UserError(f"MTCNN weights: the 'mtcnn' package is not installed. {_INSTALL_HINT}")
    folder = Path(list(locations)[0]) / "assets" / "weights"
    if not folder.is_dir():
        raise UserError(f"MTCNN weights: {folder} does not exist (the 'mtcnn' package is not 1.0.0). {_INSTALL_HINT}")
    return folder


def _read_arrays(path: Path) -> list[np.ndarray]:
    """The list of numpy arrays stored in one ipazc weight file (joblib + lz4)."""
    try:
        import joblib
        import lz4  # noqa: F401  (joblib needs it to open .lz4 files; importing here gives a clear message)
    except ImportError as err:
        raise UserError(f"MTCNN weights: cannot read {path}: {err}. {_INSTALL_HINT}") from err
    if not path.is_file():
        raise UserError(f"MTCNN weights: {path} is missing; reinstall the wheel. {_INSTALL_HINT}")
    return [np.asarray(a) for a in joblib.load(path)]


def _assign_weights(net: nn.Module, arrays: list[np.ndarray], source: Path) -> None:
    """Copy Keras-ordered arrays into `net`, whose layers were registered in the same order as the Keras model.

    Keras layouts: conv kernel [kh, kw, in, out] -> torch [out, in, kh, kw]; dense [in, out] -> [out, in];
    PReLU alpha [1, 1, C] or [C] -> [C].
    """
    targets: list[tuple[torch.Tensor, Callable[[np.ndarray], np.ndarray]]] = []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            targets += [(module.weight, lambda a: a.transpose(3, 2, 0, 1)), (module.bias, lambda a: a)]
        elif isinstance(module, nn.Linear):
            targets += [(module.weight, lambda a: a.T), (module.bias, lambda a: a)]
        elif isinstance(module, nn.PReLU):
            targets.append((module.weight, lambda a: a.reshape(-1)))
    if len(targets) != len(arrays):
        raise UserError(f"MTCNN weights: {source} holds {len(arrays)} arrays, expected {len(targets)}. {_INSTALL_HINT}")
    with torch.no_grad():
        for (param, to_torch), array in zip(targets, arrays, strict=True):
            value = torch.from_numpy(np.ascontiguousarray(to_torch(array))).to(param.dtype)
            if value.shape != param.shape:
                raise UserError(
                    f"MTCNN weights: {source} has an array of shape {tuple(array.shape)} where "
                    f"{tuple(param.shape)} (torch layout) was expected. {_INSTALL_HINT}"
                )
            param.copy_(value)


# ---------------------------------------------------------------------------------------------------------------------
# The three networks. Layers are registered in the Keras weight order so that `_assign_weights` can walk them.


def _max_pool_same(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Max pooling with TensorFlow's 'same' padding: ceil(n / stride) outputs, the odd padding pixel at the end."""
    pads = []
    for n in (x.shape[3], x.shape[2]):
        total = max((math.ceil(n / stride) - 1) * stride + size - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), size, stride)


def _flatten_like_keras(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, W*H*C]: Keras permutes NHWC to NWHC before flattening for the dense layers."""
    return x.permute(0, 3, 2, 1).flatten(1)


class _PNet(nn.Module):
    """Fully convolutional proposal net: 12x12 windows at stride 2 -> box offsets and face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.act2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.act3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3, H, W] normalised -> (offsets [N, 4, h, w] as dx0, dy0, dx1, dy1; face prob [N, h, w])."""
        x = _max_pool_same(self.act1(self.conv1(x)), 2, 2)
        x = self.act3(self.conv3(self.act2(self.conv2(x))))
        return self.box(x), self.cls(x).softmax(dim=1)[:, 1]


class _RNet(nn.Module):
    """Refinement net on 24x24 crops -> box offsets and face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.act2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.act3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.fc, self.act4 = nn.Linear(576, 128), nn.PReLU(128)
        self.box = nn.Linear(128, 4)
        self.cls = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3, 24, 24] normalised -> (offsets [N, 4], face prob [N])."""
        x = _max_pool_same(self.act1(self.conv1(x)), 3, 2)
        x = F.max_pool2d(self.act2(self.conv2(x)), 3, 2)
        x = self.act4(self.fc(_flatten_like_keras(self.act3(self.conv3(x)))))
        return self.box(x), self.cls(x).softmax(dim=1)[:, 1]


class _ONet(nn.Module):
    """Output net on 48x48 crops -> box offsets, 5 landmarks (crop-relative) and face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.act2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.act3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.act4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.fc, self.act5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.box = nn.Linear(256, 4)
        self.marks = nn.Linear(256, 10)
        self.cls = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, 3, 48, 48] normalised -> (offsets [N, 4], landmarks [N, 10] as x1..x5, y1..y5 in [0, 1] of the
        crop, face prob [N])."""
        x = _max_pool_same(self.act1(self.conv1(x)), 3, 2)
        x = F.max_pool2d(self.act2(self.conv2(x)), 3, 2)
        x = _max_pool_same(self.act3(self.conv3(x)), 2, 2)
        x = self.act5(self.fc(_flatten_like_keras(self.act4(self.conv4(x)))))
        return self.box(x), self.marks(x), self.cls(x).softmax(dim=1)[:, 1]


# ---------------------------------------------------------------------------------------------------------------------
# Box maths. Boxes are float64 [N, 4] x0, y0, x1, y1 in source pixels.


def pyramid_scales(height: int, width: int, min_face_size: int = 20, scale_factor: float = 0.709) -> list[float]:
    """P-Net image scales: (12 / min_face_size) * scale_factor**k for k < round(log(min_side / 12) / log(1 / f) - 1).

    The count ignores the first factor 12 / min_face_size, exactly as ipazc 1.0.0 does.
    """
    count = round(-(math.log(min(height, width) / 12) / math.log(scale_factor) + 1))
    return [12 / min_face_size * scale_factor**k for k in range(max(count, 0))]


def box_overlap(boxes: torch.Tensor, others: torch.Tensor, mode: str) -> torch.Tensor:
    """Pairwise overlap [N, M] of boxes [N, 4] and [M, 4]: intersection over union ('union') or over the smaller
    area ('min'). Areas are (x1 - x0) * (y1 - y0), without the +1 of pixel-count conventions."""
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    lo = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    hi = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=2)
    if mode == "union":
        return inter / (area_a[:, None] + area_b[None, :] - inter)
    if mode == "min":
        return inter / torch.minimum(area_a[:, None], area_b[None, :])
    raise ValueError(f"box_overlap: mode must be 'union' or 'min', got {mode!r}")


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str, chunk: int = 2048) -> torch.Tensor:
    """Indices into `boxes` [N, 4] of the survivors, ranked by descending score [N].

    A box survives when no higher-ranked box, suppressed or not, overlaps it by more than `threshold` (ipazc's rule).
    The ranking is numpy's default argsort, reversed, as in ipazc: equal scores are common (P-Net probabilities
    saturate at 1 - 2**-24) and this breaks such ties the same way. Columns are processed `chunk` at a time so memory
    stays O(N * chunk).
    """
    order = torch.from_numpy(np.argsort(scores.cpu().numpy())[::-1].copy()).to(boxes.device)
    ranked = boxes[order]
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for start in range(0, len(order), chunk):
        stop = min(start + chunk, len(order))
        overlap = box_overlap(ranked[:stop], ranked[start:stop], mode) > threshold  # [stop, stop - start]
        higher = torch.arange(stop, device=boxes.device)[:, None] < torch.arange(start, stop, device=boxes.device)
        keep[start:stop] = ~(overlap & higher).any(dim=0)
    return order[keep]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box [N, 4] to a square of side max(w, h) about the same centre."""
    size = boxes[:, 2:] - boxes[:, :2]
    side = size.max(dim=1, keepdim=True).values
    corner = boxes[:, :2] + (size - side) / 2
    return torch.cat([corner, corner + side], dim=1)


def _apply_offsets(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Regress boxes [N, 4] by offsets [N, 4] given in units of the (+1 inclusive) box width and height."""
    size = boxes[:, 2:] - boxes[:, :2] + 1
    return boxes + offsets.double() * size.repeat(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Resampling, matching TensorFlow's kernels.


def _running_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """float64 integral of `x` along `dim` at the pixel edges 0..n (n + 1 samples, starting at 0)."""
    x = x.double()
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x.cumsum(dim)], dim)


def _bin_means(integral: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Means of the signal over `size` equal bins [i * s, (i + 1) * s), s = n / size, along `dim`, given its running
    integral (n + 1 knots). The integral of a piecewise-constant signal is piecewise linear, so fractional bin edges
    interpolate between knots: partly covered pixels count with their covered fraction (TF's AREA rule)."""
    n = integral.shape[dim] - 1
    edges = torch.arange(size + 1, dtype=torch.float64, device=integral.device) * (n / size)
    knot = edges.floor().long().clamp(max=n - 1)
    frac = (edges - knot).view([-1 if d == dim % integral.ndim else 1 for d in range(integral.ndim)])
    low, high = integral.index_select(dim, knot), integral.index_select(dim, knot + 1)
    at_edges = low + frac * (high - low)
    return (at_edges.narrow(dim, 1, size) - at_edges.narrow(dim, 0, size)) * (size / n)


def _area_pyramid(image: torch.Tensor, sizes: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
    """Levels [3, h, w] of `image` [3, H, W] for each (h, w), resized with TF's AREA method (exact fractional box
    filter; torch's 'area' mode differs, its bins are whole pixels). The integral along H is shared by all levels."""
    rows = _running_sum(image, 1)
    for height, width in sizes:
        yield _bin_means(_running_sum(_bin_means(rows, height, 1), 2), width, 2).to(image.dtype)


def _crop_resize(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """TF crop_and_resize of `image` [3, H, W] at boxes [N, 4] (source px) to [N, 3, size, size].

    TF normalises corners by H (W) but maps them back with H - 1 (W - 1), so sample k of a box y0..y1 sits at
    (y0 + k / (size - 1) * (y1 - y0)) * (H - 1) / H; bilinear between pixel centres; samples off the image are 0.
    """
    _, height, width = image.shape
    t = torch.linspace(0, 1, size, dtype=torch.float64, device=image.device)

    def taps(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        pos = (lo[:, None] + t * (hi - lo)[:, None]) * ((n - 1) / n)  # [N, size]
        first = pos.floor()
        frac = (pos - first).to(image.dtype)
        inside = (pos >= 0) & (pos <= n - 1)
        first = first.long()
        return first.clamp(0, n - 1), (first + 1).clamp(0, n - 1), frac, inside

    y0, y1, fy, in_y = taps(boxes[:, 1], boxes[:, 3], height)
    x0, x1, fx, in_x = taps(boxes[:, 0], boxes[:, 2], width)

    def rows(y: torch.Tensor) -> torch.Tensor:  # [3, N, size, size] at rows y, blended across x
        left, right = image[:, y[:, :, None], x0[:, None, :]], image[:, y[:, :, None], x1[:, None, :]]
        return left + (right - left) * fx[:, None, :]

    top, bottom = rows(y0), rows(y1)
    patches = top + (bottom - top) * fy[:, :, None]
    patches = patches * (in_y[:, :, None] & in_x[:, None, :])
    return patches.permute(1, 0, 2, 3)


# ---------------------------------------------------------------------------------------------------------------------
# The cascade.


class MTCNN(nn.Module):
    """MTCNN cascade; `detect` takes one uint8 HWC RGB image. Build with `load_mtcnn` to get the MIT weights.

    `thresholds` are the P/R/O-Net face-probability cut-offs. (0.6, 0.7, 0.7) is the original MTCNN and the mtcnn
    version EG3D used; ipazc 1.0.0 raised its O-Net default to 0.8, which only matters for faces below 0.8.
    """

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), scale_factor: float = 0.709) -> None:
        super().__init__()
        if len(thresholds) != 3 or not all(0 <= t < 1 for t in thresholds):
            raise UserError(f"MTCNN: thresholds must be three probabilities (P, R, O-Net), got {thresholds!r}")
        if min_face_size < 1 or not 0 < scale_factor < 1:
            raise UserError(
                f"MTCNN: need min_face_size >= 1 and 0 < scale_factor < 1, got {min_face_size}, {scale_factor}"
            )
        self.min_face_size, self.thresholds, self.scale_factor = min_face_size, tuple(thresholds), scale_factor
        self.pnet, self.rnet, self.onet = _PNet(), _RNet(), _ONet()

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in `image` (uint8 [H, W, 3] RGB), most confident first; [] when there is none."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise UserError(f"MTCNN.detect: argument 'image' must be a uint8 numpy array [H, W, 3] (RGB), got {got}")
        device = self.pnet.conv1.weight.device
        pixels = torch.tensor(image, device=device).permute(2, 0, 1).float()
        pixels = (pixels - 127.5) / 128  # [3, H, W]
        boxes = self._propose(pixels)
        if len(boxes):
            boxes = self._refine(pixels, boxes)
        if not len(boxes):
            return []
        boxes, scores, marks = self._output(pixels, boxes)
        limit = torch.tensor([image.shape[1] - 1, image.shape[0] - 1], dtype=torch.float64, device=device)
        boxes = torch.minimum(boxes.clamp(min=0), limit.repeat(2))
        rows = zip(boxes.cpu().numpy(), scores.cpu().tolist(), marks.cpu().numpy(), strict=True)
        return [Face(box=b, confidence=s, landmarks=m) for b, s, m in rows]

    def _propose(self, pixels: torch.Tensor) -> torch.Tensor:
        """P-Net over the pyramid -> square candidate boxes [N, 4], source px."""
        height, width = pixels.shape[1:]
        scales = pyramid_scales(height, width, self.min_face_size, self.scale_factor)
        # TF truncates the level size. The level count ignores 12 / min_face_size (as ipazc's does), so with a larger
        # min_face_size the last levels can be smaller than P-Net's 12x12 window: they cannot hold a face; skip them.
        scales = [s for s in scales if min(int(height * s), int(width * s)) >= 12]
        sizes = [(int(height * s), int(width * s)) for s in scales]
        found = []
        for scale, level in zip(scales, _area_pyramid(pixels, sizes), strict=True):
            offsets, prob = self.pnet(level[None])
            ys, xs = torch.nonzero(prob[0] > self.thresholds[0], as_tuple=True)
            # Cell (y, x) sees the 12x12 window whose (1-based) corners are 2x + 1 and 2x + 12.
            cells = torch.stack([xs, ys, xs, ys], dim=1).double() * 2 + torch.tensor([1.0, 1, 12, 12], device=xs.device)
            boxes = (cells + 11 * offsets[0][:, ys, xs].T.double()) / scale
            scores = prob[0][ys, xs]
            found.append(torch.cat([boxes, scores[:, None].double()], dim=1)[nms(boxes, scores, 0.5, "union")])
        found = torch.cat(found) if found else torch.zeros(0, 5, dtype=torch.float64, device=pixels.device)
        return _square(found[nms(found[:, :4], found[:, 4], 0.7, "union"), :4])

    def _refine(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """R-Net on 24x24 crops -> regressed, filtered, squared boxes [M, 4]."""
        offsets, scores = self.rnet(_crop_resize(pixels, boxes, 24))
        passed = scores > self.thresholds[1]
        boxes, scores = _apply_offsets(boxes[passed], offsets[passed]), scores[passed]
        return _square(boxes[nms(boxes, scores, 0.7, "union")])

    def _output(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """O-Net on 48x48 crops -> (boxes [K, 4], scores [K], landmarks [K, 5, 2]) sorted by score."""
        offsets, marks, scores = self.onet(_crop_resize(pixels, boxes, 48))
        passed = scores > self.thresholds[2]
        boxes, offsets, marks, scores = boxes[passed], offsets[passed], marks[passed].double(), scores[passed]
        # Landmarks are fractions of the crop's (+1 inclusive) size from its corner minus one (the Matlab offset).
        size = boxes[:, 2:] - boxes[:, :2] + 1
        marks = marks.view(-1, 2, 5).transpose(1, 2) * size[:, None] + boxes[:, None, :2] - 1
        boxes = _apply_offsets(boxes, offsets)
        keep = nms(boxes, scores, 0.7, "min")
        return boxes[keep], scores[keep], marks[keep]


def load_mtcnn(device: torch.device | str = "cpu") -> MTCNN:
    """MTCNN with the MIT weights from the installed mtcnn 1.0.0 wheel, in eval mode on `device`."""
    folder = _weights_dir()
    model = MTCNN()
    for net, name in ((model.pnet, "pnet"), (model.rnet, "rnet"), (model.onet, "onet")):
        path = folder / f"{name}.lz4"
        _assign_weights(net, _read_arrays(path), path)
    return model.eval().requires_grad_(False).to(device)
