"""Generate images, depth maps, masks and shapes from a trained head GAN.

  python gen_samples.py --network=runs/00000-gghead-tiny-synthetic-gpus1-batch4 --seeds=0-7 --outdir=out
  python gen_samples.py --network=run/network-snapshot-000020.safetensors --seeds=0,3 --views=360 --depth --mask \\
      --shapes --outdir=out

Per seed, the latent is z = numpy.random.RandomState(seed).randn(z_dim) (EG3D's convention) and the mapping is
conditioned on one camera (``--pose-cond``, frontal by default); the same head is then rendered from every view of
``--views`` (only the rendering camera moves). A volumetric head with camera self-adaptation gets the offset predicted
for each rendering camera (``G.camera_offset``), as ``G(z, c, c_render)`` does. Noise is constant and volume rendering
deterministic, so a seed gives the same result every time on one device.

Outputs in ``--outdir``: ``seed<S>-view<V>.png`` (image), with ``--depth`` ``...-depth.npy`` (float32 depth in world
units, at the rendering resolution) and ``...-depth.png`` (16-bit, depth × 10⁴, 0 = no depth), with ``--mask``
``...-mask.png``; ``grid.png`` (rows = seeds, columns = views); ``cameras.json`` (views and labels). With
``--shapes``: Gaussian heads ``seed<S>.ply`` (3DGS layout, readable by splat viewers); volumetric heads
``seed<S>.mrc`` (density σ over the tri-grid box) and ``seed<S>-mesh.ply`` / ``.obj`` (marching cubes at
``--shape-level``, world units, vertex colours of the raw image). See ``training/shapes.py`` for the formats.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

import legacy
from dnnlib import UserError
from dnnlib.cli import reports_user_errors
from training import shapes
from training.cameras import EG3D_PIVOT, FFHQ_FOCAL, PANOHEAD_PIVOT, fov_to_focal
from training.presets import TrainingConfig, render_kwargs
from training.views import parse_angle_pair, parse_seeds, parse_views, view_labels

DEPTH_PNG_SCALE = 1e4  # 16-bit depth PNG: value = depth in world units × 10⁴ (covers depths up to 6.55)


def default_pivot(config: TrainingConfig) -> tuple[float, float, float]:
    """The point cameras orbit: PanoHead's origin for 360° data (a yaw-range filter is set), else EG3D's FFHQ pivot."""
    return PANOHEAD_PIVOT if config.data.yaw_range is not None else EG3D_PIVOT


def synthesis_kwargs(config: TrainingConfig, cur_nimg: int, resolution: int | None) -> dict:
    """Rendering keyword arguments for the snapshot's schedule stage, without density noise, with ``--resolution``
    (Gaussian: render resolution; volumetric: neural rendering resolution) when given."""
    kwargs = render_kwargs(config, cur_nimg)
    if config.family == "gaussian":
        if resolution is not None:
            kwargs["render_resolution"] = resolution
        return kwargs
    kwargs["render_options"] = dataclasses.replace(config.generator.render, density_noise=0.0, deterministic=True)
    if resolution is not None:
        kwargs["neural_rendering_resolution"] = resolution
    return kwargs


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] (image) → uint8 [H, W, C] (EG3D's x·127.5 + 128 rounding)."""
    return (image * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def render_seed(G: torch.nn.Module, family: str, z: torch.Tensor, c_cond: torch.Tensor, labels: torch.Tensor,
                psi: float, cutoff: int | None, kwargs: dict) -> tuple[torch.Tensor, object, list[dict]]:
    """ws [1, num_ws, w_dim] of latent z [1, z_dim] conditioned on c_cond [1, 25], the generated Gaussians
    (GeneratedHeads; None for volumetric heads) and the output dict of each rendering camera in ``labels`` [V, 25]
    (one generated head, only the camera moves)."""
    ws = G.mapping(z, c_cond, truncation_psi=psi, truncation_cutoff=cutoff)
    outputs = []
    if family == "gaussian":
        heads = G.generate(ws, sample_resolution=kwargs["sample_resolution"], noise_mode="const")
        for label in labels:
            outputs.append(G.render(heads, label[None], render_resolution=kwargs["render_resolution"]))
        return ws, heads, outputs
    for label in labels:
        offset = G.camera_offset(z, label[None], truncation_psi=psi, truncation_cutoff=cutoff)
        outputs.append(G.synthesis(ws, label[None], camera_offset=offset, noise_mode="const", **kwargs))
    return ws, None, outputs


def save_view(out: dict, prefix: Path, depth: bool, mask: bool) -> None:
    """Write the image (and depth / mask on request) of one rendered view under ``prefix``."""
    PIL.Image.fromarray(to_uint8(out["image"][0])).save(f"{prefix}.png")
    if depth:
        values = out["image_depth"][0, 0].float().cpu().numpy()
        np.save(f"{prefix}-depth.npy", values)
        scaled = np.clip(np.rint(values * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
        PIL.Image.fromarray(scaled).save(f"{prefix}-depth.png")
    if mask:
        alpha = (out["image_mask"][0, 0] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        PIL.Image.fromarray(alpha).save(f"{prefix}-mask.png")


@torch.no_grad()
def save_shapes(G: torch.nn.Module, family: str, ws: torch.Tensor, heads: object, prefix: Path, shape_res: int,
                level: float, mesh_formats: tuple[str, ...]) -> None:
    """Gaussian heads: ``<prefix>.ply`` (3DGS). Volumetric: ``<prefix>.mrc`` and the marching-cubes mesh files."""
    if family == "gaussian":
        colors = heads.colors[0]
        sh = colors if colors.ndim == 3 else shapes.rgb_to_sh(colors)
        cloud = shapes.SplatCloud(heads.means[0], heads.scales[0], heads.quats[0], sh, heads.opacities[0])
        shapes.write_gaussian_ply(f"{prefix}.ply", cloud)
        return
    box = G.config.render.box_warp
    density = G.extract_density(ws, shape_res, noise_mode="const")[0].float().cpu().numpy()
    shapes.write_mrc(f"{prefix}.mrc", density, box)
    if not mesh_formats:
        return
    if not density.min() < level < density.max():
        tqdm.write(f"warning: {prefix.name}: no mesh, density spans [{density.min():.4g}, {density.max():.4g}] "
                   f"and --shape-level is {level}")
        return
    vertices, faces = shapes.marching_cubes_mesh(density, level, box)
    colors = shapes.volumetric_vertex_colors(G, ws, vertices)
    writers = {"ply": shapes.write_mesh_ply, "obj": shapes.write_mesh_obj}
    for fmt in mesh_formats:
        writers[fmt](f"{prefix}-mesh.{fmt}", vertices, faces, colors)


def generate(network: str, seeds: str, trunc: float, trunc_cutoff: int | None, outdir: str, pose_cond: str,
             views: str, fov: float | None, focal: float | None, resolution: int | None, depth: bool, mask: bool,
             shapes_flag: bool, shape_res: int, shape_level: float, mesh_format: str, seed: int,
             device: str | None) -> None:
    """Everything ``main`` does; raises UserError for the user's mistakes."""
    seed_list = parse_seeds(seeds)
    view_list = parse_views(views)
    cond_angles = parse_angle_pair(pose_cond, "--pose-cond")
    if fov is not None and focal is not None:
        raise UserError("--fov and --focal exclude each other")
    render_focal = fov_to_focal(fov, "eg3d") if fov is not None else FFHQ_FOCAL if focal is None else focal
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    net = legacy.load_network(network, device=device, which="G_ema")
    G, config = net.G_ema, net.config
    kwargs = synthesis_kwargs(config, int(net.metadata.get("cur_nimg", 0)), resolution)
    pivot = default_pivot(config)
    labels = view_labels(view_list, pivot, focal=render_focal, device=device)
    c_cond = view_labels([cond_angles], pivot, focal=FFHQ_FOCAL, device=device)  # the training cameras' focal
    out_dir = Path(outdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cameras.json").write_text(json.dumps(
        {"network": net.path, "views": view_list, "labels": labels.tolist(), "pose_cond": c_cond[0].tolist()}))
    grid_rows = []
    for s in tqdm(seed_list, desc="seeds", unit="seed"):
        z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).to(device=device, dtype=torch.float32)
        ws, heads, outputs = render_seed(G, config.family, z, c_cond, labels, trunc, trunc_cutoff, kwargs)
        for v, out in enumerate(outputs):
            save_view(out, out_dir / f"seed{s:04d}-view{v:02d}", depth, mask)
        grid_rows.append(torch.cat([out["image"][0] for out in outputs], dim=2))
        if shapes_flag:
            formats = ("ply", "obj") if mesh_format == "both" else (mesh_format,)
            save_shapes(G, config.family, ws, heads, out_dir / f"seed{s:04d}", shape_res,
                        shape_level, formats)
    PIL.Image.fromarray(to_uint8(torch.cat(grid_rows, dim=1))).save(out_dir / "grid.png")


@click.command(context_settings=dict(max_content_width=120))
@click.option("--network", required=True,
              help="Run directory (newest snapshot), network-snapshot-*.safetensors, or an EG3D/PanoHead .pkl.")
@click.option("--seeds", required=True, help="Seeds, e.g. '0-7,12'.")
@click.option("--trunc", default=0.7, show_default=True, type=click.FloatRange(0, 1), help="Truncation psi.")
@click.option("--trunc-cutoff", type=click.IntRange(min=1), help="Truncate only the first N ws.  [default: all]")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Where the files are written.")
@click.option("--pose-cond", default="0,0", show_default=True, metavar="YAW,PITCH",
              help="Conditioning camera of the mapping, degrees.")
@click.option("--views", default="ffhq", show_default=True,
              help="Rendering views: 'front', 'ffhq' (5 yaws), '360', '360/N' or 'yaw:pitch,...' in degrees.")
@click.option("--fov", type=click.FloatRange(0, 180, min_open=True, max_open=True),
              help="Field of view of the rendering cameras in degrees (EG3D's convention: 18.837 ≈ FFHQ).")
@click.option("--focal", type=click.FloatRange(min=0, min_open=True),
              help="Normalised focal length of the rendering cameras.  [default: 4.2647, FFHQ]")
@click.option("--resolution", type=click.IntRange(min=4),
              help="Gaussian: render resolution; volumetric: neural rendering resolution.  [default: the snapshot's]")
@click.option("--depth", is_flag=True, help="Write depth maps (.npy and 16-bit .png).")
@click.option("--mask", is_flag=True, help="Write masks (.png).")
@click.option("--shapes", "shapes_flag", is_flag=True, help="Write shapes (.ply Gaussians; .mrc + mesh).")
@click.option("--shape-res", default=256, show_default=True, type=click.IntRange(min=8),
              help="Volumetric: density grid resolution.")
@click.option("--shape-level", default=10.0, show_default=True, type=float,
              help="Volumetric: density iso-level of the mesh.")
@click.option("--mesh-format", default="ply", show_default=True, type=click.Choice(["ply", "obj", "both"]),
              help="Volumetric: mesh file format.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of torch's RNG.")
@click.option("--device", help="Torch device.  [default: cuda if available, else cpu]")
@reports_user_errors
def main(**options) -> None:
    """Generate images, depth, masks and shapes from a trained head GAN (see the module docstring)."""
    generate(**options)


if __name__ == "__main__":
    main()
