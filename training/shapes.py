"""Shape export: 3D Gaussian Splatting .ply files, MRC density grids and marching-cubes meshes (.ply / .obj).

All coordinates are in our world frame and units (y up, the face looks toward +z, cameras about 2.7 from the origin;
see ``training.cameras``), never voxel indices.

3DGS .ply (the layout of Kerbl et al.'s ``point_cloud.ply``, read by splat viewers): a binary little-endian vertex
element of float32 properties ``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3``. ``f_dc_c`` is
the degree-0 SH coefficient of colour channel c; ``f_rest`` holds the K higher coefficients channel-major (all of red,
then green, then blue), K = 3 for degree 1; ``opacity`` is a logit, ``scale_*`` are log standard deviations and
``rot_*`` a (w, x, y, z) quaternion; normals are zero. The colour seen along a unit view direction d = (x, y, z) is
0.5 + C0·f_dc − C1·y·f1 + C1·z·f2 − C1·x·f3, the basis of ``training.networks.gaussian_head.sh1_to_rgb``.

MRC (MRC2014, mode 2): a 1024-byte header, then float32 voxels with x varying fastest. The cell is the grid's extent
in world units and the origin the world position of voxel (0, 0, 0), the centre of the first cell.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dnnlib import UserError

SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
OPACITY_EPS = 1e-6  # opacities are clamped to [eps, 1 - eps] before the logit (generated opacities reach 0 and 1)
MRC_HEADER_BYTES = 1024
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4", "short": "<i2", "ushort": "<u2"}


@dataclass(frozen=True)
class SplatCloud:
    """One scene of N Gaussians as stored in a 3DGS .ply: means [N, 3] world; scales [N, 3] linear (> 0); quats
    [N, 4] unit (w, x, y, z); sh [N, 4, 3] degree-1 SH coefficients (coefficient-major, 3DGS basis, colour
    0.5 + C0·sh[0] + ...); opacities [N] in [0, 1]."""

    means: Tensor
    scales: Tensor
    quats: Tensor
    sh: Tensor
    opacities: Tensor


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """View-independent colours [N, 3] in [0, 1] → degree-1 SH coefficients [N, 4, 3] (higher orders zero)."""
    sh = rgb.new_zeros(*rgb.shape[:-1], 4, 3)
    sh[..., 0, :] = (rgb - 0.5) / SH_C0
    return sh


def write_gaussian_ply(path: str | os.PathLike, cloud: SplatCloud) -> None:
    """Write ``cloud`` as a binary 3DGS .ply (layout in the module docstring)."""
    n = cloud.means.shape[0]
    sh = cloud.sh.detach().float().cpu()
    opacity = cloud.opacities.detach().float().cpu().clamp(OPACITY_EPS, 1 - OPACITY_EPS)
    columns = {
        "x y z": cloud.means,
        "nx ny nz": torch.zeros(n, 3),
        "f_dc_0 f_dc_1 f_dc_2": sh[:, 0],
        " ".join(f"f_rest_{i}" for i in range(9)): sh[:, 1:].transpose(1, 2).reshape(n, 9),  # channel-major
        "opacity": torch.logit(opacity)[:, None],
        "scale_0 scale_1 scale_2": torch.log(cloud.scales),
        "rot_0 rot_1 rot_2 rot_3": cloud.quats,
    }
    names = " ".join(columns).split()
    data = torch.cat([c.detach().float().cpu() for c in columns.values()], dim=1).numpy().astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())


def read_gaussian_ply(path: str | os.PathLike) -> SplatCloud:
    """Read a binary little-endian 3DGS .ply (ours or another tool's; SH beyond degree 1 is dropped)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise UserError(f"'{path}': not a PLY file (no 'ply' magic or no end_header)")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise UserError(f"'{path}': expected 'format binary_little_endian 1.0' (3DGS layout)")
    count, fields, seen_vertex = 0, [], False
    for line in lines:
        words = line.split()
        if words[:2] == ["element", "vertex"]:
            count, seen_vertex = int(words[2]), True
        elif words[:1] == ["element"] and seen_vertex:
            break
        elif words[:1] == ["property"] and seen_vertex:
            if words[1] not in _PLY_TYPES:
                raise UserError(f"'{path}': unsupported vertex property type {words[1]!r}")
            fields.append((words[2], _PLY_TYPES[words[1]]))
    table = np.frombuffer(raw, dtype=np.dtype(fields), count=count, offset=end + len(b"end_header\n"))
    names = table.dtype.names
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in required if n not in names]
    if missing:
        raise UserError(f"'{path}': 3DGS vertex properties {missing} are missing")

    def stack(keys: list[str]) -> Tensor:
        return torch.from_numpy(np.stack([table[k].astype(np.float32) for k in keys], axis=-1))

    rest = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k[7:]))
    per_channel = len(rest) // 3
    sh = torch.zeros(count, 4, 3)
    sh[:, 0] = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    if per_channel >= 3:
        for channel in range(3):
            sh[:, 1:, channel] = stack(rest[channel * per_channel:channel * per_channel + 3])
    quats = torch.nn.functional.normalize(stack(["rot_0", "rot_1", "rot_2", "rot_3"]), dim=-1)
    return SplatCloud(means=stack(["x", "y", "z"]), scales=torch.exp(stack(["scale_0", "scale_1", "scale_2"])),
                      quats=quats, sh=sh, opacities=torch.sigmoid(stack(["opacity"])[:, 0]))


def grid_axis(resolution: int, box_size: float) -> np.ndarray:
    """World coordinates [R] of the cell centres of ``extract_density``'s grid: box·((i + ½)/R − ½)."""
    return ((np.arange(resolution) + 0.5) / resolution - 0.5) * box_size


def write_mrc(path: str | os.PathLike, volume: np.ndarray, box_size: float) -> None:
    """Write a density grid ``volume`` [X, Y, Z] (index order x, y, z; cubic cells) over a cube of side ``box_size``
    centred at the origin as an MRC2014 float32 map (x fastest on disk)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise UserError(f"write_mrc: expected a [X, Y, Z] volume, got shape {volume.shape}")
    nx, ny, nz = volume.shape
    voxel = box_size / nx
    origin = -box_size / 2 + voxel / 2
    header = bytearray(MRC_HEADER_BYTES)
    struct.pack_into("<10i", header, 0, nx, ny, nz, 2, 0, 0, 0, nx, ny, nz)  # sizes, mode 2, starts, sampling
    struct.pack_into("<6f", header, 40, voxel * nx, voxel * ny, voxel * nz, 90.0, 90.0, 90.0)  # cell, angles
    struct.pack_into("<3i", header, 64, 1, 2, 3)  # columns = x, rows = y, sections = z
    struct.pack_into("<3f", header, 76, float(volume.min()), float(volume.max()), float(volume.mean()))
    struct.pack_into("<2i", header, 88, 1, 0)  # space group 1 (a single volume), no extended header
    struct.pack_into("<i", header, 108, 20140)  # format version
    struct.pack_into("<3f", header, 196, origin, origin, origin)
    header[208:212] = b"MAP "
    header[212:216] = bytes([0x44, 0x44, 0, 0])  # little-endian machine stamp
    struct.pack_into("<f", header, 216, float(volume.std()))
    struct.pack_into("<i", header, 220, 1)
    label = b"gen_samples.py density (world units)"
    header[224:224 + len(label)] = label
    with open(path, "wb") as f:
        f.write(bytes(header))
        f.write(np.ascontiguousarray(volume.transpose(2, 1, 0)).tobytes())


def marching_cubes_mesh(volume: np.ndarray, level: float, box_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a density grid [X, Y, Z] (``extract_density`` layout) at ``level``.

    Returns vertices [V, 3] in world units and triangles [F, 3] (int) oriented with normals pointing out of the dense
    region. Needs scikit-image; UserError when the level lies outside the grid's value range (no surface).
    """
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise UserError("--shapes: meshes need scikit-image (pip install scikit-image)") from None
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < level < hi:
        raise UserError(f"--shape-level {level}: no surface, the density ranges over [{lo:.4g}, {hi:.4g}]")
    voxel = box_size / volume.shape[0]
    # With density growing inward, skimage's 'ascent' winds triangles counter-clockwise seen from outside.
    vertices, faces, _, _ = marching_cubes(np.asarray(volume, dtype=np.float32), level=level,
                                           spacing=(voxel, voxel, voxel), gradient_direction="ascent")
    return vertices + grid_axis(volume.shape[0], box_size)[0], faces.astype(np.int64)


def write_mesh_ply(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
                   colors: np.ndarray | None = None) -> None:
    """Binary PLY mesh: vertices [V, 3] float32, optional colours [V, 3] in [0, 1] (stored as uchar red green blue),
    triangles [F, 3]."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    table = np.empty(len(vertices), dtype=fields)
    for i, axis in enumerate("xyz"):
        table[axis] = vertices[:, i]
    if colors is not None:
        rgb = np.clip(np.rint(np.asarray(colors) * 255), 0, 255).astype(np.uint8)
        for i, channel in enumerate(("red", "green", "blue")):
            table[channel] = rgb[:, i]
    tris = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    tris["n"], tris["v"] = 3, faces
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}"]
    header += [f"property {'float' if dtype == '<f4' else 'uchar'} {name}" for name, dtype in fields]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())
        f.write(tris.tobytes())


def write_mesh_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
                   colors: np.ndarray | None = None) -> None:
    """Wavefront OBJ mesh (1-based faces); colours [V, 3] in [0, 1] as the common 'v x y z r g b' extension."""
    values = vertices if colors is None else np.concatenate([vertices, np.clip(colors, 0, 1)], axis=1)
    with open(path, "w") as f:
        np.savetxt(f, values, fmt="v" + " %.6f" * values.shape[1])
        np.savetxt(f, faces + 1, fmt="f %d %d %d")


@torch.no_grad()
def volumetric_vertex_colors(G: torch.nn.Module, ws: Tensor, vertices: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Colours [V, 3] in [0, 1] of a volumetric head (ws [1, num_ws, w_dim]) at world points ``vertices`` [V, 3].

    The decoder's features at each point go through the same raw-RGB path as a fully opaque pixel of the neural
    rendering (sigmoid features mapped to 2f − 1, then ToRGB from the last w, or the first 3 features): the colour of
    the raw image, before super-resolution.
    """
    cfg = G.config
    parts = []
    for start in range(0, len(vertices), chunk):
        points = torch.as_tensor(vertices[start:start + chunk], dtype=ws.dtype, device=ws.device)[None]
        _, features = G.sample(points, ws, noise_mode="const")  # [1, M, F]
        if cfg.decoder_activation == "sigmoid":
            features = 2 * features - 1
        if cfg.raw_rgb == "torgb":
            image = features.permute(0, 2, 1)[..., None]  # [1, F, M, 1]: ToRGB is a per-pixel 1x1 convolution
            rgb = G.torgb(image, ws[:, -1], fused_modconv=False)[0, :, :, 0].T
        else:
            rgb = features[0, :, :3]
        parts.append(((rgb + 1) / 2).clamp(0, 1).float().cpu().numpy())
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 3), np.float32)
