"""Invert one portrait photo into a trained head GAN: latent optimisation (w or w+) and pivotal tuning (PTI).

  python invert.py --network=RUN --target=photo.png --camera-from=dataset.json --outdir=out --pti-steps=350
  python invert.py --network=RUN --target=images/ --idx=3 --space=wplus --outdir=out      # folder with dataset.json
  python invert.py --network=RUN --target=photo.png --yaw=20 --pitch=5 --optimize-camera --outdir=out
  python invert.py --network=RUN --target=my_portrait.jpg --align --optimize-camera --outdir=out

With ``--align`` the target is any portrait photo: the face is detected, cropped in the model's framing and given
a camera label offline (``training/inthewild``, docs/inthewild.md); aligned.png, aligned_mask.png (with ``--mask``),
alignment.json (label, angles, source→crop matrix) and proj_in_photo.png (the reconstruction pasted back into the
photo) are written to ``--outdir``. Otherwise the target is
centre-cropped to a square and resized to the model's image resolution. Its camera is the 25-float
label of ``dataset.json`` (``{"labels": [[name, [25 numbers]], ...]}``; the entry of the target's file name, or entry
``--idx`` of a folder), or a camera at ``--yaw/--pitch`` degrees on the radius-2.7 sphere around the model's pivot with
the FFHQ focal length; ``--optimize-camera`` refines yaw, pitch and position for users with only a rough pose. An
optional ``--mask`` (grey image, white = person) restricts the losses to the person. Stage 1 and stage 2 are described
in ``training/inversion.py``; LPIPS uses NVIDIA's VGG16 TorchScript (downloaded once; ``--vgg-path`` offline;
``--no-lpips`` inverts by the pixel MSE alone, with no VGG16 at all).

Outputs in ``--outdir``: target.png, proj.png (final reconstruction), proj-w.png (before PTI), projected_w.npz (``w``
[1, num_ws, w_dim], the camera ``c`` [1, 25] and, for self-adapting volumetric heads, ``camera_offset`` [1, 3]),
proj.mp4 (target | reconstruction during the optimisation), orbit.mp4 (the result seen from moving cameras, with the
fixed camera offset of the inversion) and network-snapshot-inverted.safetensors (the tuned generator as G and G_ema,
with the original D: every tool loads it). ``--shapes`` adds the shape (.ply Gaussians, or .mrc + mesh).
Problems are reported in one line without a traceback (exit status 1).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

import gen_samples
import gen_videos
import legacy
from dnnlib import EasyDict, UserError
from dnnlib.cli import reports_user_errors
from training import inversion
from training.cameras import PANOHEAD_PIVOT
from training.dataset import LABEL_DIM
from training.inthewild.alignment import FRAMINGS, paste_back
from training.inthewild.mtcnn import load_mtcnn
from training.inthewild.pipeline import align_photo, load_photo
from training.snapshot import save_network_snapshot
from training.views import view_labels

SNAPSHOT_NAME = "network-snapshot-inverted.safetensors"


def load_image(path: str | Path, size: int, mode: str = "RGB") -> torch.Tensor:
    """Image file (upright by its EXIF orientation) → centre-cropped square resized to ``size``: RGB
    [1, 3, size, size] in [-1, 1], or with mode 'L' a mask [1, 1, size, size] in [0, 1]."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read image ({error})") from None
    image = PIL.Image.fromarray(load_photo(data, str(path), mode))
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    array = np.asarray(image.resize((size, size), PIL.Image.LANCZOS), dtype=np.float32)
    x = torch.from_numpy(array.reshape(size, size, -1)).permute(2, 0, 1)[None]
    return x / 127.5 - 1 if mode == "RGB" else x / 255


def read_camera_table(path: str | Path) -> list[tuple[str, list]]:
    """dataset.json → its (name, label) entries in file order."""
    try:
        entries = json.loads(Path(path).read_text()).get("labels")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise UserError(f"--camera-from: cannot read '{path}' as dataset.json ({error})") from None
    if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 for e in entries):
        raise UserError(f"--camera-from: '{path}': expected {{\"labels\": [[name, [{LABEL_DIM} numbers]], ...]}}")
    return [(str(name).replace("\\", "/"), label) for name, label in entries]


def _label(values: list, name: str, path: str | Path) -> torch.Tensor:
    try:
        label = torch.tensor([float(x) for x in values], dtype=torch.float32)
    except (TypeError, ValueError):
        label = torch.zeros(0)
    if label.shape != (LABEL_DIM,) or not torch.isfinite(label).all():
        raise UserError(f"--camera-from: '{path}': the label of '{name}' must be {LABEL_DIM} finite numbers")
    return label[None]


def resolve_target(target: str, idx: int | None, camera_from: str | None, yaw: float | None, pitch: float | None,
                   pivot: tuple[float, float, float]) -> tuple[Path, torch.Tensor]:
    """(image file, camera label [1, 25]) from the options (see the module docstring)."""
    path = Path(target)
    if path.is_dir():
        camera_from = camera_from or str(path / "dataset.json")
        if idx is None:
            raise UserError(f"--target '{target}' is a folder: pass --idx to pick an entry of its dataset.json")
    elif not path.is_file():
        raise UserError(f"--target: '{target}' is neither an image file nor a folder")
    if (yaw is None) != (pitch is None):
        raise UserError("--yaw and --pitch go together")
    if yaw is not None:
        if camera_from is not None and not path.is_dir():
            raise UserError("--camera-from and --yaw/--pitch exclude each other")
        if path.is_dir():
            raise UserError("--yaw/--pitch: a folder target takes its cameras from dataset.json")
        return path, view_labels([(yaw, pitch)], pivot)
    if camera_from is None:
        raise UserError(f"no camera for '{target}': pass --camera-from dataset.json or --yaw and --pitch")
    table = read_camera_table(camera_from)
    if path.is_dir():
        if not 0 <= idx < len(table):
            raise UserError(f"--idx {idx}: '{camera_from}' has {len(table)} entries")
        name, values = table[idx]
        return path / name, _label(values, name, camera_from)
    matches = [(n, v) for n, v in table if n == path.name or n.endswith("/" + path.name)]
    if len(matches) != 1:
        raise UserError(f"--camera-from: '{camera_from}' has {len(matches)} entries named '{path.name}' (expected 1)")
    return path, _label(matches[0][1], matches[0][0], camera_from)


@dataclasses.dataclass(frozen=True)
class AlignOptions:
    """``--align``: framing ('auto' = the model's: panohead for 360° runs, else eg3d), face choice, crop size."""

    framing: str = "auto"
    face_index: int | None = None
    flip_average: bool = False


def _read_bytes(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"{option}: cannot read '{path}' ({error})") from None


def align_target(target: str, mask: str | None, options: AlignOptions, pivot: tuple[float, float, float],
                 resolution: int, outdir: Path, device: torch.device | str) -> tuple[Path, torch.Tensor, Path | None]:
    """Aligns a portrait photo; writes aligned.png (+ aligned_mask.png) and alignment.json to ``outdir``.

    Returns (crop file, its camera label [1, 25], cropped mask file or None).
    """
    path = Path(target)
    if not path.is_file():
        raise UserError(f"--target: '{target}' is not an image file (--align takes one photo)")
    framing = options.framing
    if framing == "auto":
        framing = "panohead" if tuple(pivot) == tuple(PANOHEAD_PIVOT) else "eg3d"
    image = load_photo(_read_bytes(path, "--target"), str(path))
    mask_image = None if mask is None else load_photo(_read_bytes(Path(mask), "--mask"), mask, "L")
    aligned = align_photo(load_mtcnn(device), image, str(path), framing, resolution, options.face_index,
                          options.flip_average, mask_image)  # fmt: skip
    outdir.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(aligned.image).save(outdir / "aligned.png")
    mask_path = None
    if aligned.mask is not None:
        mask_path = outdir / "aligned_mask.png"
        PIL.Image.fromarray(aligned.mask).save(mask_path)
    a = aligned.alignment
    record = dict(source=str(path), framing=framing, resolution=resolution, label=a.label.tolist(),
                  yaw_pitch_roll_deg=a.yaw_pitch_roll.tolist(), roll_levelled_deg=a.roll_levelled_deg,
                  source_to_crop=a.matrix.tolist(), landmarks_crop=a.landmarks.tolist(),
                  confidence=aligned.face.confidence)  # fmt: skip
    (outdir / "alignment.json").write_text(json.dumps(record, indent=1))
    return outdir / "aligned.png", torch.tensor(a.label, dtype=torch.float32)[None], mask_path


def paste_into_photo(photo: str, outdir: Path) -> None:
    """proj_in_photo.png: the final reconstruction (proj.png) put back into the photo that ``--align`` cropped."""
    record = json.loads((outdir / "alignment.json").read_text())
    image = load_photo(_read_bytes(Path(photo), "--target"), photo)
    reconstruction = np.asarray(PIL.Image.open(outdir / "proj.png").convert("RGB"))
    pasted = paste_back(image, reconstruction, np.array(record["source_to_crop"]), record["resolution"])
    PIL.Image.fromarray(pasted).save(outdir / "proj_in_photo.png")


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return gen_samples.to_uint8(image[0])


def write_videos(G: torch.nn.Module, target: torch.Tensor, frames: list[torch.Tensor], result: inversion.Projection,
                 kwargs: dict, pivot: tuple[float, float, float], outdir: Path, fps: float, orbit_frames: int) -> None:
    """proj.mp4 (target | reconstruction per recorded step) and orbit.mp4 of the result."""
    def progress():
        for frame in frames:
            pair = torch.cat([target, F.interpolate(frame, size=target.shape[-2:], mode="bilinear")], dim=3)
            yield _to_uint8(F.pad(pair, (0, pair.shape[-1] % 2, 0, pair.shape[-2] % 2)))

    def orbit():
        for c in gen_videos.camera_path("orbit", orbit_frames, pivot, target.device):
            with torch.no_grad():
                image = inversion.synthesize(G, result.ws, c[None], result.offset, kwargs)
            yield _to_uint8(F.pad(image, (0, image.shape[-1] % 2, 0, image.shape[-2] % 2)))

    gen_videos.write_video(progress(), outdir / "proj.mp4", fps)
    gen_videos.write_video(orbit(), outdir / "orbit.mp4", fps)


def save_outputs(net: EasyDict, G: torch.nn.Module, result: inversion.Projection, images: dict[str, torch.Tensor],
                 options: inversion.InversionOptions, outdir: Path) -> None:
    """target.png, proj-w.png, proj.png (``images``: 'target', 'before' and 'final' PTI, each [1, 3, H, W] in
    [-1, 1]), projected_w.npz and the tuned snapshot (G and G_ema = the tuned generator, D unchanged)."""
    for name, key in (("target", "target"), ("proj-w", "before"), ("proj", "final")):
        PIL.Image.fromarray(_to_uint8(images[key])).save(outdir / f"{name}.png")
    arrays = {"w": result.ws.cpu().numpy(), "c": result.c.cpu().numpy()}
    if result.offset is not None:
        arrays["camera_offset"] = result.offset.cpu().numpy()
    np.savez(outdir / "projected_w.npz", **arrays)
    modules = {"G": G, "G_ema": G} if net.D is None else {"G": G, "G_ema": G, "D": net.D}
    metadata = {k: v for k, v in net.metadata.items() if k != "format_version"}  # the writer sets it
    metadata.update(inversion=dict(dataclasses.asdict(options), source=str(net.path)))
    save_network_snapshot(outdir / SNAPSHOT_NAME, modules, net.config.to_dict(), metadata)


def _cur_nimg(net) -> int:
    return int(net.metadata.get("cur_nimg", 1000 * net.metadata.get("kimg", 0)))


def _output_size(G: torch.nn.Module, family: str, kwargs: dict) -> int:
    return kwargs["render_resolution"] if family == "gaussian" else G.img_resolution


def invert(network: str, target: str, outdir: str, options: inversion.InversionOptions,
           lpips: inversion.PerceptualDistance, idx: int | None = None, camera_from: str | None = None,
           yaw: float | None = None, pitch: float | None = None, mask: str | None = None,
           shapes: bool = False, fps: float = 30.0, orbit_frames: int = 60,
           device: torch.device | str = "cpu", align: AlignOptions | None = None) -> dict[str, float]:
    """Run both stages and write the outputs (module docstring); returns the PSNRs (dB) before and after PTI.

    With ``align`` the target photo is aligned first and its estimated camera is used (no camera options allowed).
    """
    net = legacy.load_network(network, device)
    G = net.G_ema
    family = net.config.family
    kwargs = gen_videos.inference_render_kwargs(net.config, _cur_nimg(net))
    pivot = gen_samples.default_pivot(net.config)
    size = _output_size(G, family, kwargs)
    out = Path(outdir)
    if align is not None:
        if idx is not None or camera_from is not None or yaw is not None or pitch is not None:
            raise UserError("--align estimates the camera: drop --idx, --camera-from, --yaw and --pitch")
        image_path, c, mask = align_target(target, mask, align, pivot, max(512, size), out, device)
    else:
        image_path, c = resolve_target(target, idx, camera_from, yaw, pitch, pivot)
    target_image = load_image(image_path, size).to(device)
    mask_image = None if mask is None else load_image(mask, size, "L").to(device)
    c = c.to(device)
    out.mkdir(parents=True, exist_ok=True)
    result = inversion.project(G, target_image, c, lpips, options, pivot, mask_image, kwargs)
    before = result.frames[-1]
    tuned = inversion.pivotal_tuning(G, result, target_image, lpips, options, mask_image, kwargs)
    after = tuned[-1] if tuned else before
    save_outputs(net, G, result, dict(target=target_image, before=before, final=after), options, out)
    write_videos(G, target_image, result.frames + tuned, result, kwargs, pivot, out, fps, orbit_frames)
    if align is not None:
        paste_into_photo(target, out)
    if shapes:
        heads = G.generate(result.ws, sample_resolution=kwargs["sample_resolution"], noise_mode="const") \
            if family == "gaussian" else None
        gen_samples.save_shapes(G, family, result.ws, heads, out / "shape", 128, 10.0, ("ply",))
    return {"psnr_w": inversion.psnr(before, target_image), "psnr_pti": inversion.psnr(after, target_image)}


@click.command(context_settings=dict(max_content_width=120))
@click.option("--network", required=True,
              help="Run directory (newest snapshot), network-snapshot-*.safetensors, or an EG3D/PanoHead .pkl.")
@click.option("--target", required=True, help="Image file, or a folder holding images and dataset.json (with --idx).")
@click.option("--idx", type=click.IntRange(min=0), help="Entry of the folder's dataset.json to invert.")
@click.option("--camera-from", help="dataset.json holding the target's camera label.")
@click.option("--yaw", type=float, help="Camera yaw in degrees (0 = frontal), instead of --camera-from.")
@click.option("--pitch", type=float, help="Camera pitch in degrees (> 0 = above), with --yaw.")
@click.option("--mask", help="Grey mask image of the target (white = person).")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Where the files are written.")
@click.option("--space", default="w", show_default=True, type=click.Choice(["w", "wplus"]), help="Latent space.")
@click.option("--steps", default=500, show_default=True, type=click.IntRange(min=1), help="Stage-1 steps.")
@click.option("--pti-steps", default=350, show_default=True, type=click.IntRange(min=0), help="PTI steps (0: none).")
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Stage-1 peak learning rate.")
@click.option("--pti-lr", default=3e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="PTI learning rate.")
@click.option("--lambda-mse", default=0.1, show_default=True, type=click.FloatRange(min=0), help="Weight of MSE.")
@click.option("--locality", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of PTI's locality regulariser (0: off).")
@click.option("--align", is_flag=True, help="Detect, crop and label the face of a portrait photo first (offline).")
@click.option("--framing", default="auto", show_default=True, type=click.Choice(("auto",) + FRAMINGS),
              help="--align framing; auto: panohead for 360-degree runs, else eg3d.")
@click.option("--face-index", type=click.IntRange(min=0), help="--align: face to use, by size (0 = largest).")
@click.option("--flip-average", is_flag=True, help="--align: average landmarks with the mirrored photo's.")
@click.option("--optimize-camera", is_flag=True, help="Refine yaw, pitch and camera position.")
@click.option("--vgg-path", help="Local copy of NVIDIA's vgg16.pt (offline use).  [default: download]")
@click.option("--no-lpips", is_flag=True, help="Pixel MSE only, no VGG16 (offline without vgg16.pt; less detail).")
@click.option("--shapes", is_flag=True, help="Also write the shape (.ply Gaussians, or .mrc + mesh).")
@click.option("--orbit-frames", default=60, show_default=True, type=click.IntRange(min=1), help="Orbit video length.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True,
              help="Torch device.")
@reports_user_errors
def main(**o) -> None:
    """Invert one image into a trained head GAN (w / w+ optimisation, then pivotal tuning); see the module docstring.

    \b
    python invert.py --network=RUN --target=photo.png --camera-from=dataset.json --outdir=out
    python invert.py --network=RUN --target=images/ --idx=3 --space=wplus --outdir=out
    """
    torch.manual_seed(o["seed"])
    options = inversion.InversionOptions(
        space=o["space"], steps=o["steps"], lr=o["lr"], lambda_mse=o["lambda_mse"],
        optimize_camera=o["optimize_camera"], pti_steps=o["pti_steps"], pti_lr=o["pti_lr"],
        locality_weight=o["locality"], seed=o["seed"])
    if o["no_lpips"] and o["vgg_path"] is not None:
        raise UserError("--no-lpips and --vgg-path exclude each other")
    lpips = inversion.pixels_only() if o["no_lpips"] else inversion.load_vgg16(o["vgg_path"], o["device"])
    align = AlignOptions(o["framing"], o["face_index"], o["flip_average"]) if o["align"] else None
    if not o["align"] and (o["framing"] != "auto" or o["face_index"] is not None or o["flip_average"]):
        raise UserError("--framing, --face-index and --flip-average need --align")
    psnrs = invert(o["network"], o["target"], o["outdir"], options, lpips, o["idx"], o["camera_from"], o["yaw"],
                   o["pitch"], o["mask"], o["shapes"], orbit_frames=o["orbit_frames"], device=o["device"],
                   align=align)
    click.echo(f"PSNR {psnrs['psnr_w']:.2f} dB after the {o['space']} optimisation, "
               f"{psnrs['psnr_pti']:.2f} dB after PTI; wrote {o['outdir']}")


if __name__ == "__main__":
    main()
