"""Synthetic heads: procedural 3D heads rendered from EG3D-convention cameras into a labelled dataset.

This is the project's embedded default dataset (tests, README quick-start). Geometry lives in
``training/synthetic_heads.py``: a head is a union of convex solids (ellipsoid ∩ half-space). A ray meets each solid in
one interval that has a closed form, so rendering is exact ray casting, batched over heads, solids and pixels in torch;
the first entry point along the ray is the visible surface, which makes every view of a head consistent with every
other one.

Conventions: labels are the 25-float EG3D format (OpenCV cam2world, intrinsics normalised by the image size); pixel
(i, j) is sampled through its centre, at normalised image coordinates ((i + 0.5) / W, (j + 0.5) / H); images are float
NCHW in [-1, 1] on a constant white background; masks N1HW in [0, 1]; depth N1HW is the distance from the camera centre
along the ray (world units), +inf where the ray misses the head. Shading is view-independent (albedo times fixed world
lights), so a surface point has the same colour in every view.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from dnnlib import UserError
from training import cameras as cams
from training.synthetic_heads import HeadParams, Primitives, head_primitives, sample_heads

CAMERA_DISTRIBUTIONS = ("ffhq", "360")
BACKGROUND = 1.0  # white, in [-1, 1] image units
_RAY_BUDGET = 1 << 18  # rays per chunk of heads: big enough that per-op overheads vanish, temporaries ~10 MB
_LIGHTS = (((0.45, 0.55, 0.70), 0.62), ((-0.6, 0.3, -0.75), 0.22))  # (direction toward the light, strength), world
_AMBIENT = 0.38
_SKY = 0.12  # extra light on surfaces facing up (hemisphere lighting)
_STRAND_FREQS = ((48.0, 0.6), (19.0, 0.4))  # hair strands: (angular frequency around the local y axis, weight)
_PUPIL = 0.03
_H_STD, _V_STD = 0.3, 0.155  # camera spread (radians) of the 'ffhq' distribution, EG3D-like
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: the same seed gives a byte-identical archive


def pixel_rays(labels: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Camera rays through the pixel centres of ``resolution``² images.

    Args:
        labels: [N, 25] EG3D labels (OpenCV cam2world, normalised intrinsics).
    Returns:
        origins [N, 3] camera centres and directions [N, H, W, 3] (row = image y, pointing down), unit, world frame.
    """
    cam2world, K = cams.decode_label(labels.to(torch.float64))
    coords = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    pix = torch.stack([x, y, torch.ones_like(x)], -1).reshape(1, -1, 3)
    cam_dirs = pix @ torch.linalg.inv(K).transpose(-1, -2)  # [N, R, 3] camera frame, z = 1
    dirs = F.normalize(cam_dirs @ cam2world[:, :3, :3].transpose(-1, -2), dim=-1)
    return cam2world[:, :3, 3].to(labels.dtype), dirs.reshape(-1, resolution, resolution, 3).to(labels.dtype)


def _world_to_unit(prims: Primitives) -> Tensor:
    """[N, K, 3, 3] A = diag(1 / radii) rotation^T, mapping world offsets from a solid's centre into its unit sphere."""
    return prims.rotation.transpose(-1, -2) / prims.radii[..., :, None]


def _tile_size(resolution: int) -> int:
    """Side of the square pixel tiles used for culling: the largest divisor of ``resolution`` up to 8."""
    return max(t for t in range(1, 9) if resolution % t == 0)


def _cull(prims: Primitives, origins: Tensor, tiles: Tensor) -> Tensor:
    """[P, 3] (head, solid, tile) triples whose solid may be hit by a ray of the tile; tiles [N, T, S, 3] unit dirs.

    Conservative: a solid lies inside the sphere around its centre of radius max(radii), and a tile's rays inside the
    cone around their mean direction; pairs are dropped only when sphere and cone are disjoint (with a margin).
    """
    axis = F.normalize(tiles.mean(2), dim=-1).to(torch.float64)  # [N, T, 3]
    half = torch.acos((tiles.to(torch.float64) * axis[:, :, None]).sum(-1).amin(-1).clamp(-1.0, 1.0))  # [N, T]
    v = prims.center - origins.to(torch.float64)[:, None]  # [N, K, 3]
    dist, rho = v.norm(dim=-1), prims.radii.amax(-1)
    alpha = torch.asin((rho / dist).clamp(max=1.0))  # angular radius of the bounding sphere
    angle = torch.acos(torch.einsum("nkc,ntc->nkt", v / dist[..., None], axis).clamp(-1.0, 1.0))
    keep = (angle <= half[:, None] + alpha[..., None] + 1e-4) | (dist <= rho)[..., None]
    return (keep & prims.enabled[..., None]).nonzero()


def _entry(A: Tensor, o: Tensor, nrm: Tensor, p0: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Entry distance of rays into solids (+inf for a miss) and whether the entry lies on the clipping plane.

    A [P, 1, 3, 3] world-to-unit maps, o [P, 1, 3] ray origins in the unit frames, nrm [P, 1, 3] plane normals,
    p0 [P, 1] plane value at the origin (normal . origin - offset), d [P, S, 3] unit world directions. Returns [P, S].
    """
    dc = [d[..., i] for i in range(3)]
    # Directions in each solid's unit-sphere frame, written out so that every ray's result is independent of the batch.
    du = [A[..., j, 0] * dc[0] + A[..., j, 1] * dc[1] + A[..., j, 2] * dc[2] for j in range(3)]
    a = du[0] * du[0] + du[1] * du[1] + du[2] * du[2]
    tc = -(o[..., 0] * du[0] + o[..., 1] * du[1] + o[..., 2] * du[2]) / a  # closest approach to the centre
    # |o + t du|^2 = |l|^2 + a (t - tc)^2 with l the closest point: cancellation-free for small, distant solids.
    l2 = (o[..., 0] + tc * du[0]) ** 2 + (o[..., 1] + tc * du[1]) ** 2 + (o[..., 2] + tc * du[2]) ** 2
    half = torch.sqrt((1.0 - l2) / a)  # NaN where the ray misses the ellipsoid
    t0, t1 = tc - half, tc + half
    q = nrm[..., 0] * dc[0] + nrm[..., 1] * dc[1] + nrm[..., 2] * dc[2]
    tp = -p0 / q  # where the ray crosses the plane; for q = 0 it is +-inf, which the two cases below handle
    entry = torch.maximum(t0, torch.where(q < 0, tp, -math.inf))
    exit_ = torch.minimum(t1, torch.where(q >= 0, tp, math.inf))
    hit = (entry <= exit_) & (entry > 0)
    return torch.where(hit, entry, math.inf), entry > t0


def trace_rays(prims: Primitives, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First intersection of rays with the union of each head's solids (closed form per solid).

    Args:
        prims: solids of N heads (float64 geometry; tracing runs in ``dirs.dtype``).
        origins: [N, 3] ray origins (camera centres), world frame, outside every solid.
        dirs: [N, H, W, 3] unit ray directions, world frame.
    Returns:
        depth [N, H, W] distance to the first hit (+inf for a miss), index [N, H, W] of the hit solid (0 for a miss),
        on_plane [N, H, W] bool, True where the hit lies on the solid's clipping plane rather than its ellipsoid.
    """
    N, H, W, _ = dirs.shape
    t = _tile_size(H) if H == W else 1
    tiles = dirs.reshape(N, H // t, t, W // t, t, 3).transpose(2, 3).reshape(N, -1, t * t, 3)  # [N, T, S, 3]
    n, k, tile = _cull(prims, origins, tiles).unbind(-1)
    A64 = _world_to_unit(prims)[n, k]  # [P, 3, 3]
    o = (A64 @ (origins.to(torch.float64)[n] - prims.center[n, k])[..., None])[..., 0]
    p0 = (prims.plane_normal[n, k] * origins.to(torch.float64)[n]).sum(-1) - prims.plane_offset[n, k]
    dt = dirs.dtype
    entry, on_plane = _entry(A64.to(dt)[:, None], o.to(dt)[:, None], prims.plane_normal[n, k].to(dt)[:, None],
                             p0.to(dt)[:, None], tiles[n, tile])  # fmt: skip
    rows = (n * tiles.shape[1] + tile)[:, None].expand_as(entry)
    depth = torch.full((N * tiles.shape[1], t * t), math.inf, dtype=dt).scatter_reduce(0, rows, entry, "amin")
    # Among solids entered at the nearest distance keep the highest code 2 k + on_plane (ties have measure zero).
    won = (entry == depth.gather(0, rows)) & torch.isfinite(entry)
    code = torch.where(won, 2 * k[:, None] + on_plane, -1)
    code = torch.full(depth.shape, -1, dtype=torch.int64).scatter_reduce(0, rows, code, "amax")

    def untile(x: Tensor) -> Tensor:
        return x.reshape(N, H // t, W // t, t, t).transpose(2, 3).reshape(N, H, W)

    return untile(depth), untile(code.clamp_min(0) // 2), untile((code >= 0) & (code % 2 == 1))


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """Per-ray values of per-solid features: x [N, K, C], index [N, R] -> [N, R, C]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def shade(prims: Primitives, origins: Tensor, dirs: Tensor, depth: Tensor, index: Tensor, on_plane: Tensor) -> Tensor:
    """Colours [N, R, 3] in [0, 1] of the hits of ``trace_rays``; rays flattened to [N, R]; misses get BACKGROUND."""
    dt = dirs.dtype
    hit = torch.isfinite(depth)
    x = origins[:, None] + torch.where(hit, depth, 0.0)[..., None] * dirs  # [N, R, 3] world
    A = _gather(_world_to_unit(prims).flatten(2).to(dt), index).unflatten(-1, (3, 3))  # [N, R, 3, 3]
    local = (A @ (x - _gather(prims.center.to(dt), index))[..., None])[..., 0]  # [N, R, 3] unit-sphere frame
    normal = F.normalize((A.transpose(-1, -2) @ local[..., None])[..., 0], dim=-1)
    normal = torch.where(on_plane[..., None], _gather(prims.plane_normal.to(dt), index), normal)
    albedo = _gather(prims.albedo.to(dt), index)
    cos_z = local[..., 2] / local.norm(dim=-1).clamp_min(1e-12)
    iris = cos_z > _gather(prims.spot_cos.to(dt)[..., None], index)[..., 0]
    albedo = torch.where(iris[..., None], _gather(prims.spot_color.to(dt), index), albedo)
    pupil = cos_z > _gather(prims.pupil_cos.to(dt)[..., None], index)[..., 0]
    albedo = torch.where(pupil[..., None], torch.full_like(albedo, _PUPIL), albedo)
    around = torch.atan2(local[..., 0], local[..., 2])
    strands = sum(w * torch.sin(f * around) for f, w in _STRAND_FREQS)
    albedo = albedo * (1.0 + _gather(prims.stripes.to(dt)[..., None], index)[..., 0] * strands)[..., None]
    light = _AMBIENT + _SKY * (0.5 + 0.5 * normal[..., 1])
    for direction, strength in _LIGHTS:
        light = light + strength * (normal @ F.normalize(torch.tensor(direction, dtype=dt), dim=0)).clamp_min(0.0)
    rgb = (albedo * light[..., None]).clamp(0.0, 1.0)
    return torch.where(hit[..., None], rgb, (BACKGROUND + 1.0) / 2.0)


def _slice(prims: Primitives, start: int, stop: int) -> Primitives:
    return Primitives(**{k: v[start:stop] for k, v in vars(prims).items()})


def render_heads(params: HeadParams, labels: Tensor, resolution: int) -> tuple[Tensor, Tensor, Tensor]:
    """Renders head n of ``params`` from camera ``labels[n]``, sampling every pixel through its centre.

    Args:
        params: N heads (``sample_heads``).
        labels: [N, 25] EG3D camera labels.
        resolution: image side in pixels.
    Returns:
        images [N, 3, H, W] in [-1, 1], masks [N, 1, H, W] in {0, 1} (1 = head), depth [N, 1, H, W] (distance from the
        camera centre along the pixel's ray, +inf off the head), float32.
    """
    if labels.shape != (len(params), cams.LABEL_DIM):
        raise UserError(f"render_heads: labels must have shape [{len(params)}, 25], got {list(labels.shape)}")
    prims = head_primitives(params)
    labels = labels.to(torch.float32)
    chunk = max(1, _RAY_BUDGET // (resolution * resolution))
    rgbs, depths = [], []
    for start in range(0, len(params), chunk):
        part = _slice(prims, start, start + chunk)
        origins, dirs = pixel_rays(labels[start : start + chunk], resolution)
        depth, index, on_plane = trace_rays(part, origins, dirs)
        depth, index, on_plane = depth.flatten(1), index.flatten(1), on_plane.flatten(1)
        rgbs.append(shade(part, origins, dirs.flatten(1, 2), depth, index, on_plane))
        depths.append(depth)
    rgb = torch.cat(rgbs).reshape(-1, resolution, resolution, 3).permute(0, 3, 1, 2)
    depth = torch.cat(depths).reshape(-1, 1, resolution, resolution)
    return rgb * 2.0 - 1.0, torch.isfinite(depth).to(torch.float32), depth


def sample_cameras(distribution: str, count: int, seed: int, start: int = 0) -> Tensor:
    """[count, 25] float32 labels of the cameras of heads ``start ..``; label i depends only on (seed, i).

    'ffhq': h ~ N(pi/2, 0.3^2), v ~ N(pi/2, 0.155^2) around the frontal view (EG3D's gaussian sampler with the
    defaults of ``cameras.sample_gaussian``), looking at EG3D's pivot (0, 0, 0.2); '360': h uniform over the full
    circle, v as for 'ffhq', looking at the origin (PanoHead). Radius 2.7 around the pivot, focal 4.2647.
    """
    if distribution not in CAMERA_DISTRIBUTIONS:
        raise UserError(f"--cameras must be one of {', '.join(CAMERA_DISTRIBUTIONS)}, got '{distribution}'")
    draws = np.zeros((count, 3))
    for row, i in enumerate(range(start, start + count)):
        rng = np.random.default_rng([seed, i, 1])
        draws[row] = [rng.standard_normal(), rng.standard_normal(), rng.random()]
    draws = torch.from_numpy(draws)
    v = math.pi / 2 + _V_STD * draws[:, 1]
    if distribution == "ffhq":
        h, pivot = math.pi / 2 + _H_STD * draws[:, 0], cams.EG3D_PIVOT
    else:
        h, pivot = 2 * math.pi * draws[:, 2], cams.PANOHEAD_PIVOT
    return cams.lookat_labels(h, v, pivot=pivot, dtype=torch.float64).to(torch.float32)


def archive_name(index: int) -> str:
    """EG3D's archive layout: image 12345 is ``00012/img00012345.png``."""
    return f"{index:08d}"[:5] + f"/img{index:08d}.png"


def default_masks_path(dest: str | os.PathLike) -> Path:
    """``heads.zip`` -> ``heads_masks.zip``: where masks go when no masks destination is given."""
    dest = Path(dest)
    return dest.with_name(dest.stem + "_masks" + dest.suffix)


class DatasetWriter:
    """Writes an EG3D-layout dataset zip (and optionally a masks zip with the same names), atomically.

    Images are numbered in the order added (``archive_name``), stored as uncompressed PNGs in an uncompressed zip with
    fixed timestamps (identical inputs give identical bytes); ``dataset.json`` = {"labels": [[name, [25 floats]]]}.
    Both zips are written under temporary names and renamed when the ``with`` block ends without an exception.
    """

    def __init__(self, dest: str | os.PathLike, masks_dest: str | os.PathLike | None) -> None:
        self.dest, self.masks_dest = Path(dest), None if masks_dest is None else Path(masks_dest)
        for option, path in (("--dest", self.dest), ("--masks-dest", self.masks_dest)):
            if path is not None and path.suffix.lower() != ".zip":
                raise UserError(f"{option} must be a .zip file, got '{path}'")
            if path is not None and path.parent.exists() and not path.parent.is_dir():
                raise UserError(f"{option}: '{path.parent}' exists and is not a folder")
        if self.masks_dest is not None and self.dest.resolve() == self.masks_dest.resolve():
            raise UserError(f"--masks-dest must differ from --dest ('{self.dest}')")
        self._labels: list = []

    def _tmp(self, path: Path) -> Path:
        return path.with_name(path.name + ".tmp")

    def __enter__(self) -> DatasetWriter:
        for path in (self.dest, self.masks_dest):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no datasets/ folder yet
        self._zip = zipfile.ZipFile(self._tmp(self.dest), "w")
        self._masks = None if self.masks_dest is None else zipfile.ZipFile(self._tmp(self.masks_dest), "w")
        return self

    @staticmethod
    def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        zf.writestr(info, data)

    @staticmethod
    def _png(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        PIL.Image.fromarray(array).save(buf, format="PNG", compress_level=0)
        return buf.getvalue()

    def add(self, image: np.ndarray, label: list[float], mask: np.ndarray | None = None) -> str:
        """Adds uint8 image [H, W, 3], its 25-float label and (with a masks zip) uint8 mask [H, W]; returns its name."""
        name = archive_name(len(self._labels))
        self._write(self._zip, name, self._png(image))
        if self._masks is not None:
            assert mask is not None, "a masks zip needs a mask for every image"
            self._write(self._masks, name, self._png(mask))
        self._labels.append([name, [float(x) for x in label]])
        return name

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self._write(self._zip, "dataset.json", json.dumps({"labels": self._labels}).encode())
        self._zip.close()
        if self._masks is not None:
            self._masks.close()
        for path in (self.dest, self.masks_dest):
            if path is not None and exc_type is None:
                os.replace(self._tmp(path), path)
            elif path is not None:
                self._tmp(path).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._labels)


def _render_batch(params: HeadParams, labels: Tensor, resolution: int, supersample: int) -> tuple[Tensor, Tensor]:
    """uint8 images [N, H, W, 3] and masks [N, H, W], box-filtered over supersample² samples per pixel."""
    images, masks, _ = render_heads(params, labels, resolution * supersample)
    images, masks = F.avg_pool2d(images, supersample), F.avg_pool2d(masks, supersample)
    images = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return images, (masks[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8)


def write_synthetic_dataset(
    dest: str | os.PathLike,
    count: int,
    resolution: int,
    cameras: str = "ffhq",
    seed: int = 0,
    masks_dest: str | os.PathLike | None = None,
    supersample: int = 2,
    progress: bool = True,
) -> dict:
    """Renders ``count`` heads into an EG3D-layout zip plus a zip of single-channel masks with the same names.

    ``dest`` gets ``00000/img00000000.png ...`` and ``dataset.json`` (see ``DatasetWriter``); ``masks_dest`` (default:
    ``<dest stem>_masks.zip``) the masks (255 = head). Each pixel averages supersample² ray samples. Head i and its
    camera depend only on (seed, i). Runs with one torch thread (restored afterwards). Returns a summary dict.
    """
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if resolution < 4 or resolution & (resolution - 1):
        raise UserError(f"--resolution must be a power of two >= 4, got {resolution}")
    if supersample < 1:
        raise UserError(f"--supersample must be at least 1, got {supersample}")
    sample_cameras(cameras, 0, seed)  # validates the distribution's name before any work
    masks_dest = default_masks_path(dest) if masks_dest is None else masks_dest
    batch, t_start, threads = max(1, 4096 // resolution), time.perf_counter(), torch.get_num_threads()
    # One intra-op thread: the tensors here are ~1M elements, too small to gain from threads, and on shared cores
    # (CI, parallel jobs) every op's thread barrier waits for descheduled threads: 2 threads measured 2-4x slower.
    torch.set_num_threads(1)
    try:
        with DatasetWriter(dest, masks_dest) as writer, tqdm(total=count, unit="img", disable=not progress) as bar:
            for start in range(0, count, batch):
                n = min(batch, count - start)
                labels = sample_cameras(cameras, n, seed, start)
                images, masks = _render_batch(sample_heads(n, seed, start), labels, resolution, supersample)
                for k in range(n):
                    writer.add(images[k].numpy(), labels[k].tolist(), masks[k].numpy())
                bar.update(n)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t_start
    return {"dest": str(dest), "masks_dest": str(masks_dest), "count": count, "resolution": resolution,
            "cameras": cameras, "seed": seed, "supersample": supersample, "seconds": round(seconds, 3),
            "heads_per_second": round(count / seconds, 2)}  # fmt: skip
