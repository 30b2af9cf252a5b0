"""Build and inspect datasets: the synthetic heads, conversion of image folders/zips, summaries.

  python dataset_tool.py synthetic --dest heads.zip --count 1000 --resolution 64 --cameras ffhq --seed 0
  python dataset_tool.py convert --source photos/ --dest photos256.zip --resolution 256 --masks photo_masks/
  python dataset_tool.py info --source heads.zip --masks heads_masks.zip
  python dataset_tool.py align --source photos/ --dest aligned.zip --framing eg3d --resolution 512

Outputs use EG3D's layout (``00000/img00000000.png`` uncompressed PNGs in a zip, ``dataset.json`` =
{"labels": [[name, [25 floats]], ...]}), so EG3D's loader and ``training.dataset.ImageFolderDataset`` read them; masks
go to a second zip of single-channel PNGs with the same names (PanoHead's layout). Problems with the input are reported
as one line naming the file or option, without a traceback, and the exit status is 1.
"""

from __future__ import annotations

import json
import math
import os

import click
import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from dnnlib import UserError
from dnnlib.cli import reports_user_errors
from training import cameras
from training.dataset import LABELS_FILE, FileArchive, match_masks, read_labels
from training.inthewild.alignment import FRAMINGS
from training.inthewild.mtcnn import load_mtcnn
from training.inthewild.pipeline import align_photo, load_photo
from training.synthetic import CAMERA_DISTRIBUTIONS, DatasetWriter, default_masks_path, write_synthetic_dataset

RESIZE_FILTERS = {"lanczos": PIL.Image.LANCZOS, "box": PIL.Image.BOX, "bilinear": PIL.Image.BILINEAR}
MASK_FILTER = PIL.Image.BILINEAR  # masks: antialiased when shrinking, and no ringing (Lanczos overshoots at edges)
_ALPHA_MODES = ("RGBA", "LA", "PA")
_YAW_BINS = 24


@click.group()
def cli() -> None:
    """Build and inspect camera-labelled head datasets (EG3D zip layout, PanoHead-style masks)."""


def _power_of_two(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 4 or value & (value - 1):
        raise click.BadParameter(f"must be a power of two >= 4, got {value}")
    return value


@cli.command()
@click.option("--dest", required=True, type=click.Path(dir_okay=False), help="Output .zip (images + dataset.json).")
@click.option("--count", default=1000, show_default=True, type=click.IntRange(min=1), help="Number of heads.")
@click.option("--resolution", default=64, show_default=True, type=int, callback=_power_of_two, help="Image size.")
@click.option("--cameras", "camera_dist", default="ffhq", show_default=True, type=click.Choice(CAMERA_DISTRIBUTIONS),
              help="ffhq: around the frontal view (EG3D-like); 360: all around (PanoHead-like).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--masks-dest", type=click.Path(dir_okay=False), help="Masks .zip  [default: <dest>_masks.zip]")
@click.option("--supersample", default=2, show_default=True, type=click.IntRange(min=1), help="Samples² per pixel.")
@reports_user_errors
def synthetic(dest: str, count: int, resolution: int, camera_dist: str, seed: int, masks_dest: str | None,
              supersample: int) -> None:  # fmt: skip
    """Render the procedural synthetic heads dataset (images, camera labels, masks)."""
    summary = write_synthetic_dataset(dest, count, resolution, camera_dist, seed, masks_dest, supersample)
    click.echo(f"wrote {summary['count']} heads at {resolution}x{resolution} to {summary['dest']}, "
               f"masks to {summary['masks_dest']}")  # fmt: skip
    click.echo(f"cameras {camera_dist}, seed {seed}, supersample {supersample}: {summary['seconds']:.1f} s, "
               f"{summary['heads_per_second']:.1f} heads/s")  # fmt: skip


def _image_names(archive: FileArchive) -> list[str]:
    """Image files of an archive, sorted, '/'-separated relative names."""
    names = [n for n in archive.names() if os.path.splitext(n)[1].lower() in PIL.Image.registered_extensions()]
    if not names:
        raise UserError(f"{archive.path}: no image files found")
    return names


def _centre_square(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the largest centred square of a width x height image."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def crop_label(label: np.ndarray, width: int, height: int, box: tuple[int, int, int]) -> np.ndarray:
    """The 25-float label of a square crop ``box`` = (left, top, side) of a width x height image.

    Normalised intrinsics are in units of the image size, so a crop changes them: in pixels the principal point moves
    by (-left, -top), then everything is normalised by the side. Resizing afterwards leaves them unchanged.
    """
    c2w, K = cameras.decode_label(torch.from_numpy(label).double())
    K_px = cameras.normalized_to_pixel_intrinsics(K, width, height)
    K_px[0, 2] -= box[0]
    K_px[1, 2] -= box[1]
    return cameras.encode_label(c2w, cameras.pixel_to_normalized_intrinsics(K_px, box[2], box[2])).numpy()


def _has_alpha(img: PIL.Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def _convert_one(img: PIL.Image.Image, mask: PIL.Image.Image | None, resolution: int, resample: int,
                 where: str) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Centre-crops and resizes one image (to RGB uint8 [H, W, 3]) and its mask (uint8 [H, W]) to ``resolution``."""
    left, top, side = _centre_square(*img.size)
    box = (left, top, left + side, top + side)
    out = img.convert("RGBA" if _has_alpha(img) else "RGB").crop(box).resize((resolution,) * 2, resample)
    if mask is None and out.mode == "RGBA":
        mask = out.getchannel("A")
    elif mask is not None:
        if mask.mode not in ("1", "L"):
            raise UserError(f"{where}: a mask must be a single-channel image, got mode {mask.mode}")
        if mask.size != img.size:
            raise UserError(f"{where}: mask is {mask.size[0]}x{mask.size[1]}, its image {img.size[0]}x{img.size[1]}")
        mask = mask.convert("L").crop(box).resize((resolution,) * 2, MASK_FILTER)
    return np.asarray(out.convert("RGB")), None if mask is None else np.asarray(mask)


def _alpha_masks(source: FileArchive, names: list[str]) -> bool:
    """Whether every image carries an alpha channel (then it becomes the masks); a mix of both is an error."""
    alpha = [_has_alpha(source.open_image(n, decode=False)) for n in names]
    if any(alpha) and not all(alpha):
        first = names[alpha.index(not alpha[0])]
        raise UserError(f"{source.where(first)}: some images have an alpha channel and some do not; "
                        "use --masks, or give all or none of them alpha")  # fmt: skip
    return all(alpha)


@cli.command()
@click.option("--source", required=True, type=click.Path(), help="Folder or .zip of images with dataset.json.")
@click.option("--dest", required=True, type=click.Path(dir_okay=False), help="Output .zip.")
@click.option("--resolution", required=True, type=int, callback=_power_of_two, help="Output size (centre-crop).")
@click.option("--masks", "masks_src", type=click.Path(), help="Folder or .zip of masks named like the images.")
@click.option("--masks-dest", type=click.Path(dir_okay=False), help="Masks .zip  [default: <dest>_masks.zip]")
@click.option("--resize-filter", default="lanczos", show_default=True, type=click.Choice(list(RESIZE_FILTERS)))
@reports_user_errors
def convert(source: str, dest: str, resolution: int, masks_src: str | None, masks_dest: str | None,
            resize_filter: str) -> None:  # fmt: skip
    """Convert images + dataset.json (+ masks) into a square dataset zip, re-keying the labels to the new names.

    Images are centre-cropped to a square (labels' intrinsics adjusted) and resized. Masks come from --masks (matched
    by relative path without extension) or, when every image has one, from the alpha channel.
    """
    src = FileArchive(source, "--source")
    names = _image_names(src)
    if LABELS_FILE not in src.names():
        raise UserError(f"--source: {src.where(LABELS_FILE)} not found; convert needs the camera labels")
    labels = read_labels(src, names)
    masks = FileArchive(masks_src, "--masks") if masks_src is not None else None
    mask_names = match_masks(masks, names, src) if masks is not None else None
    with_masks = masks is not None or _alpha_masks(src, names)
    masks_dest = (masks_dest or default_masks_path(dest)) if with_masks else None
    with DatasetWriter(dest, masks_dest) as writer:
        for i, name in enumerate(tqdm(names, unit="img", desc="convert")):
            img = src.open_image(name)
            mask = masks.open_image(mask_names[i]) if masks is not None else None
            image, mask = _convert_one(img, mask, resolution, RESIZE_FILTERS[resize_filter], src.where(name))
            writer.add(image, crop_label(labels[i], *img.size, _centre_square(*img.size)).tolist(), mask)
    click.echo(f"wrote {len(names)} images at {resolution}x{resolution} to {dest}"
               + (f", masks to {masks_dest}" if masks_dest else ""))  # fmt: skip


def look_at_point(cam2world: np.ndarray) -> np.ndarray:
    """[3] world point nearest (least squares) to the optical axes of float [N, 4, 4] cam2world matrices.

    Minimises sum_i |(I - f_i f_i^T)(p - o_i)|^2 over p (o_i centres, f_i forward axes); with parallel axes the
    minimum-norm solution.
    """
    o, f = cam2world[:, :3, 3], cam2world[:, :3, 2] / np.linalg.norm(cam2world[:, :3, 2], axis=-1, keepdims=True)
    P = np.eye(3) - f[:, :, None] * f[:, None, :]  # [N, 3, 3] projections orthogonal to each axis
    return np.linalg.lstsq(P.sum(0), (P @ o[:, :, None]).sum(0)[:, 0], rcond=1e-9)[0]


def label_statistics(labels: np.ndarray) -> dict:
    """Summary of float [N, 25] labels: focal, look-at point and camera distance to it, yaw/pitch (degrees) with a
    yaw histogram."""
    t = torch.from_numpy(labels).double()
    c2w, K = cameras.decode_label(t)
    angles = torch.rad2deg(cameras.label_yaw_pitch_roll(t)).numpy()
    pivot = look_at_point(c2w.numpy())
    radius = np.linalg.norm(c2w[:, :3, 3].numpy() - pivot, axis=-1)
    edges = np.linspace(-180.0, 180.0, _YAW_BINS + 1)
    return {
        "focal": (float(K[:, 0, 0].mean()), float(K[:, 0, 0].std(unbiased=False))),
        "pivot": tuple(float(x) for x in pivot),
        "radius": (float(radius.mean()), float(radius.min()), float(radius.max())),
        "yaw": (float(angles[:, 0].mean()), float(angles[:, 0].std())),
        "pitch": (float(angles[:, 1].mean()), float(angles[:, 1].std())),
        "yaw_histogram": (edges, np.histogram(angles[:, 0], bins=edges)[0]),
    }


def _print_labels(stats: dict) -> None:
    click.echo(f"focal:       mean {stats['focal'][0]:.4f}, std {stats['focal'][1]:.4f}")
    click.echo("look-at:     ({:+.4f}, {:+.4f}, {:+.4f}) (point nearest to all optical axes)".format(*stats["pivot"]))
    click.echo("radius:      mean {:.4f}, min {:.4f}, max {:.4f} (camera distance to it)".format(*stats["radius"]))
    click.echo(f"yaw:         mean {stats['yaw'][0]:+.1f} deg, std {stats['yaw'][1]:.1f} deg (0 = frontal)")
    click.echo(f"pitch:       mean {stats['pitch'][0]:+.1f} deg, std {stats['pitch'][1]:.1f} deg (> 0 = from above)")
    edges, counts = stats["yaw_histogram"]
    scale = 40 / max(1, counts.max())
    click.echo("yaw histogram (deg):")
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        click.echo(f"  [{lo:+5.0f}, {hi:+5.0f}) {c:7d} {'#' * math.ceil(c * scale)}")


@cli.command()
@click.option("--source", required=True, type=click.Path(), help="Dataset folder or .zip.")
@click.option("--masks", "masks_src", type=click.Path(), help="Folder or .zip of masks named like the images.")
@reports_user_errors
def info(source: str, masks_src: str | None) -> None:
    """Print counts, image sizes and modes, camera-label statistics and a yaw histogram."""
    src = FileArchive(source, "--source")
    names = _image_names(src)
    headers = [src.open_image(n, decode=False) for n in tqdm(names, unit="img", desc="headers", leave=False)]
    sizes = sorted({f"{h.size[0]}x{h.size[1]}" for h in headers})
    modes = sorted({h.mode for h in headers})
    click.echo(f"source:      {source} ({'zip' if src.is_zip else 'folder'})")
    click.echo(f"images:      {len(names)}")
    click.echo(f"resolution:  {', '.join(sizes)}" + ("" if len(sizes) == 1 else "  (mixed sizes!)"))
    channels = sorted({PIL.Image.getmodebands(m) for m in modes})
    click.echo(f"modes:       {', '.join(modes)} (channels: {', '.join(map(str, channels))})")
    if masks_src is not None:
        masks = FileArchive(masks_src, "--masks")
        mask_headers = [masks.open_image(m, decode=False) for m in match_masks(masks, names, src)]
        mask_modes = sorted({h.mode for h in mask_headers})
        click.echo(f"masks:       {len(mask_headers)}, one per image, modes {', '.join(mask_modes)}")
    if LABELS_FILE not in src.names():
        click.echo(f"labels:      none ({LABELS_FILE} not found)")
        return
    labels = read_labels(src, names)
    click.echo(f"labels:      {len(labels)}")
    _print_labels(label_statistics(labels))


def default_report_path(dest: str | os.PathLike) -> str:
    """``aligned.zip`` -> ``aligned_report.json``."""
    root, _ = os.path.splitext(str(dest))
    return root + "_report.json"


def _report_entry(name: str, archive_name: str, aligned) -> dict:
    a = aligned.alignment
    return {"source": name, "image": archive_name, "confidence": round(aligned.face.confidence, 4),
            "yaw_pitch_roll_deg": [round(float(v), 3) for v in a.yaw_pitch_roll],
            "roll_levelled_deg": round(a.roll_levelled_deg, 3), "source_to_crop": a.matrix.tolist()}


@cli.command()
@click.option("--source", required=True, type=click.Path(), help="Folder or .zip of photos (any sizes).")
@click.option("--dest", required=True, type=click.Path(dir_okay=False), help="Output .zip (crops + dataset.json).")
@click.option("--framing", default="eg3d", show_default=True, type=click.Choice(FRAMINGS),
              help="eg3d: EG3D's FFHQ framing, roll-levelled; eg3d-wild: EG3D's in-the-wild script (no levelling, "
                   "black borders); panohead: PanoHead's framing and look-at-origin camera.")  # fmt: skip
@click.option("--resolution", default=512, show_default=True, type=int, callback=_power_of_two, help="Crop size.")
@click.option("--masks", "masks_src", type=click.Path(), help="Folder or .zip of masks named like the photos.")
@click.option("--masks-dest", type=click.Path(dir_okay=False), help="Masks .zip  [default: <dest>_masks.zip]")
@click.option("--flip-average", is_flag=True, help="Average landmarks with those of the mirrored photo (2x time).")
@click.option("--report", type=click.Path(dir_okay=False), help="Per-photo JSON report  [default: <dest>_report.json]")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True,
              help="Torch device of the face detector.")  # fmt: skip
@reports_user_errors
def align(source: str, dest: str, framing: str, resolution: int, masks_src: str | None, masks_dest: str | None,
          flip_average: bool, report: str | None, device: str) -> None:  # fmt: skip
    """Turn photos into a camera-labelled training dataset: detect the face, crop and label it (docs/inthewild.md).

    Photos without a usable face (none found, several of similar size, unreadable) are skipped; the report lists
    each photo with its crop name, angles and source->crop matrix, or the reason it was skipped.
    """
    src = FileArchive(source, "--source")
    names = _image_names(src)
    masks = FileArchive(masks_src, "--masks") if masks_src is not None else None
    mask_names = match_masks(masks, names, src) if masks is not None else None
    masks_dest = (masks_dest or default_masks_path(dest)) if masks is not None else None
    detector = load_mtcnn(device)
    entries, skipped = [], []
    with DatasetWriter(dest, masks_dest) as writer:
        for i, name in enumerate(tqdm(names, unit="img", desc="align")):
            where = src.where(name)
            try:
                image = load_photo(src.read_bytes(name), where)
                mask = None
                if masks is not None:
                    mask = load_photo(masks.read_bytes(mask_names[i]), masks.where(mask_names[i]), "L")
                aligned = align_photo(detector, image, where, framing, resolution, flip_average=flip_average,
                                      mask=mask)  # fmt: skip
            except UserError as error:
                skipped.append({"source": name, "skipped": str(error)})
                continue
            archive_name = writer.add(aligned.image, aligned.alignment.label.tolist(), aligned.mask)
            entries.append(_report_entry(name, archive_name, aligned))
        report = report or default_report_path(dest)
        with open(report, "w") as f:
            json.dump({"framing": framing, "resolution": resolution, "aligned": entries, "skipped": skipped}, f,
                      indent=1)  # fmt: skip
        if not entries:
            raise UserError(f"--source: none of the {len(names)} photos could be aligned (see {report}); "
                            f"first: {skipped[0]['skipped']}")  # fmt: skip
    click.echo(f"aligned {len(entries)} of {len(names)} photos to {dest}" + (f", masks to {masks_dest}" if masks_dest
               else "") + f"; report {report}")  # fmt: skip
    for entry in skipped:
        click.echo(f"skipped {entry['source']}: {entry['skipped']}")


if __name__ == "__main__":
    cli()
