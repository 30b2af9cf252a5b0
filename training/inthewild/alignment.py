"""Crops and camera labels of a face from its five landmarks: EG3D's and PanoHead's framings, and the image warp.

Pixel coordinates are continuous: (0, 0) is the top-left corner of the top-left pixel, x right, y down, and pixel
(i, j) (row i, column j) covers [j, j + 1) x [i, i + 1), its centre at (j + 0.5, i + 0.5). A photo of width W spans
[0, W], so mirroring maps x to W - x. Landmarks are [5, 2] (x, y) in this order: image-left eye, image-right eye, nose,
image-left mouth corner, image-right mouth corner (MTCNN's order; image-left is the subject's right). The reference
MTCNN (ipazc, TF) reports pixel indices; the PanoHead calibration below read them as pixel centres (+ 0.5).

Framings (docs/inthewild.md):

- ``eg3d-wild``: EG3D's in-the-wild script. A POS fit (an unconstrained 2x4 affine least-squares map of the 3D template
  to the landmarks) gives a scale ``s_pos`` (px per BFM unit) and the image position ``t`` of the template origin; the
  crop is the axis-aligned square of side ``(7/3) s_pos`` centred on ``t`` (EG3D's 1024 window at rescale 300, centre
  700, resized to 512), with black outside the photo. EG3D's script also has sub-pixel quirks of its own that depend
  on the photo size (a y flip by H - 1, integer window corners); they move its crop by about one source pixel and
  are not reproduced.
- ``eg3d`` (default): the same after levelling the roll like the FFHQ training data: the photo is rotated about
  ``eye_avg + 0.1 e2m`` so that FFHQ's quad axis ``e2e - rot90(e2m)`` (the eyes' line for a symmetric face) is
  horizontal; borders are a reflection of the photo fading into a blurred one.
- ``panohead``: PanoHead's 563-pixel framing resized to the output resolution: the levelled EG3D square scaled by
  ``PANOHEAD_SIDE``, moved up by ``PANOHEAD_SHIFT`` of its side and sideways onto the image of the head's centre
  (which a yawed head moves); blurred borders; PanoHead's look-at-origin label.

The camera comes from ``camera_fit.fit_head_pose`` on the levelled EG3D crop (for ``eg3d-wild``, the unlevelled one).
The 3D template is D3D's 5-point template made left-right symmetric, so that a mirrored photo gives exactly the
mirrored crop and label; at 512 the symmetrisation moves the crop centre by 0.6-0.7 px sideways and changes its side
by up to 1.2 px (0.2 %) at 40 deg of yaw (none when frontal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dnnlib import UserError
from training.inthewild.camera_fit import (
    BFM_TO_WORLD_OFFSET,
    BFM_TO_WORLD_SCALE,
    eg3d_label,
    fit_head_pose,
    look_at_origin_label,
    yaw_pitch_roll_deg,
)

FRAMINGS = ("eg3d", "eg3d-wild", "panohead")

# D3D's 5-point template (load_lm3d: BFM similarity_Lm3D_all.mat, eye centres, nose tip, mouth corners), BFM units,
# y up, the face toward +z; the numbers derive from the research-only BFM09 model (docs/inthewild.md, licences).
D3D_TEMPLATE = np.array(
    [
        [-0.31149, 0.29036, 0.13378],
        [0.30980, 0.28972, 0.13180],
        [0.00325, -0.04618, 0.55244],
        [-0.25217, -0.38134, 0.22406],
        [0.24847, -0.38128, 0.22236],
    ]
)
MIRROR_ORDER = (1, 0, 2, 4, 3)  # landmark order after a left-right flip: eyes swap, mouth corners swap
# The template averaged with its own mirror image (x negated, left and right swapped): exactly symmetric.
TEMPLATE = 0.5 * (D3D_TEMPLATE + D3D_TEMPLATE[list(MIRROR_ORDER)] * np.array([-1.0, 1.0, 1.0]))
EG3D_CROP_SCALE = 7.0 / 3.0  # EG3D crop side per POS scale: 700 px of the image rescaled to 300 px per BFM unit

# PanoHead's crop relative to the levelled EG3D square of side S centred on the template origin (tx, ty): side
# PANOHEAD_SIDE * S; centre y = ty + PANOHEAD_SHIFT * S (y down); centre x = the x of the POS image of EG3D's world
# origin, which lies 0.596 BFM units behind the template origin. PanoHead's label looks at its world origin with the
# principal point at the crop centre, so the crop centre is the image of the head's centre, and under yaw that moves
# sideways relative to the face (by ~20 px of 563 at 12 deg of yaw on PanoHead's test photos); its depth is taken from
# EG3D's world, not fitted. The two constants were calibrated on PanoHead's own 563 px crop samples (crop_samples
# man.jpg, woman.jpg; their ideal crop is the identity) from their reference (TF MTCNN) landmarks + 0.5 px (pixel
# indices to our coordinates): per sample side 1.0782 / 1.0930 and shift -0.0857 / -0.0744 of S; with the means the
# samples keep residuals of 0.7 % in scale and 6.5 / 9.7 px (of 563) in centre (x: -5.8 / +9.3, y: +2.9 / -2.9).
PANOHEAD_SIDE = 1.0856
PANOHEAD_SHIFT = -0.0801
# EG3D's world origin in the template's frame: world = 0.27 BFM + (0, 0.006, 0.161).
WORLD_ORIGIN_IN_TEMPLATE = -np.asarray(BFM_TO_WORLD_OFFSET) / BFM_TO_WORLD_SCALE

BLUR_SIGMA = 0.02  # blurred border: Gaussian sigma in units of the output size (FFHQ blurs by 2 % of its crop)
PASTE_FEATHER = 0.05  # paste_back: width of the crop's soft edge, in units of its side
BLUR_RAMP = 0.1  # blurred border: distance outside the photo, in units of the output size, at which it is fully blurred


@dataclass(frozen=True)
class Alignment:
    """A framed crop of one face: ``matrix`` [2, 3] float64 maps source px to crop px (both x right, y down, continuous
    coordinates); ``landmarks`` [5, 2] are the landmarks in crop px; ``label`` [25] float64 is the crop's camera label
    (training/cameras.py); ``yaw_pitch_roll`` [3] its geometric angles in degrees; ``roll_levelled_deg`` the rotation
    applied to the photo, degrees, counter-clockwise on screen (the face's clockwise tilt; 0 for eg3d-wild)."""

    matrix: np.ndarray
    resolution: int
    framing: str
    landmarks: np.ndarray
    label: np.ndarray
    yaw_pitch_roll: np.ndarray
    roll_levelled_deg: float


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [N, 2] mapped by an affine [2, 3] (or [3, 3] homogeneous) matrix."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse [2, 3] of an invertible affine [2, 3] map (e.g. crop px -> source px, for pasting results back)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise UserError(f"invert_affine: matrix must be [2, 3], got shape {matrix.shape}")
    return np.linalg.inv(_homogeneous(matrix))[:2]


def pos_fit(points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """D3D's POS fit: the [2, 4] affine A minimising |points - A [template; 1]|^2.

    Args:
        points: [N, 2] image positions, px; template: [N, 3] 3D points (N >= 4).
    Returns:
        A [2, 4]: ``A[:, 3]`` is the image position of the template origin and ``pos_scale(A)`` the scale. EG3D fits
        in y-up coordinates (y -> H - 1 - y); each row of A is fitted on its own, so the scale is the same and the
        positions map back to the same image points: fitting y down is equivalent.
    """
    design = np.hstack([template, np.ones((len(template), 1))])
    affine, *_ = np.linalg.lstsq(design, points, rcond=None)
    return affine.T


def pos_scale(affine: np.ndarray) -> float:
    """POS scale (px per template unit) of a [2, 4] POS affine: the mean norm of the rows of its linear part."""
    return 0.5 * float(np.linalg.norm(affine[0, :3]) + np.linalg.norm(affine[1, :3]))


def ffhq_roll(landmarks: np.ndarray) -> tuple[float, np.ndarray]:
    """The in-plane angle of FFHQ's quad and its centre, from five landmarks [5, 2] (px, y down).

    The quad's x axis is ``e2e - rot90(e2m)`` (eye-to-eye vector minus the eye-to-mouth vector turned a quarter),
    its centre ``eye_avg + 0.1 e2m``. Returns (angle in radians of that axis, measured from +x toward +y, i.e.
    clockwise on screen; centre [2]).
    """
    eye_avg = 0.5 * (landmarks[0] + landmarks[1])
    eye_to_eye = landmarks[1] - landmarks[0]
    eye_to_mouth = 0.5 * (landmarks[3] + landmarks[4]) - eye_avg
    axis = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    return math.atan2(axis[1], axis[0]), eye_avg + 0.1 * eye_to_mouth


def rotation_about(angle: float, centre: np.ndarray) -> np.ndarray:
    """[3, 3] homogeneous map rotating points by ``angle`` radians (from +x toward +y) about ``centre`` [2]."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return _homogeneous(np.hstack([rot, (centre - rot @ centre)[:, None]]))


def square_crop(centre: np.ndarray, side: float, resolution: int) -> np.ndarray:
    """[3, 3] homogeneous map of the axis-aligned square of ``side`` px centred at ``centre`` [2] onto
    [0, resolution]^2."""
    k = resolution / side
    return np.array([[k, 0.0, resolution / 2 - k * centre[0]], [0.0, k, resolution / 2 - k * centre[1]], [0, 0, 1.0]])


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise UserError(f"align_landmarks: landmarks must be 5 finite (x, y) pairs, shape [5, 2]; got {points.shape}")
    return points


def align_landmarks(landmarks: np.ndarray, framing: str = "eg3d", resolution: int = 512) -> Alignment:
    """The crop transform and camera label of one face.

    Args:
        landmarks: [5, 2] source px (see the module docstring for order and coordinates).
        framing: one of ``FRAMINGS``.
        resolution: crop size in px.
    """
    points = _check_landmarks(landmarks)
    if framing not in FRAMINGS:
        raise UserError(f"align_landmarks: framing must be one of {', '.join(FRAMINGS)}; got {framing!r}")
    if int(resolution) != resolution or resolution < 1:
        raise UserError(f"align_landmarks: resolution must be a positive integer, got {resolution!r}")
    angle, levelling = 0.0, np.eye(3)
    if framing != "eg3d-wild":
        angle, centre = ffhq_roll(points)
        levelling = rotation_about(-angle, centre)
    affine = pos_fit(apply_affine(levelling, points), TEMPLATE)
    scale, origin = pos_scale(affine), affine[:, 3]
    if not scale > 1e-6:
        raise UserError(f"align_landmarks: landmarks are degenerate (POS scale {scale:.3g}); got {points.tolist()}")
    side = EG3D_CROP_SCALE * scale
    eg3d_crop = square_crop(origin, side, resolution) @ levelling
    rotation, translation = fit_head_pose(apply_affine(eg3d_crop, points) / resolution, TEMPLATE)
    if framing == "panohead":
        centre = np.array([affine[0] @ np.append(WORLD_ORIGIN_IN_TEMPLATE, 1.0), origin[1] + PANOHEAD_SHIFT * side])
        matrix = square_crop(centre, PANOHEAD_SIDE * side, resolution) @ levelling
        label = look_at_origin_label(rotation)
    else:
        matrix = eg3d_crop
        label = eg3d_label(rotation, translation)
    return Alignment(
        matrix=matrix[:2].copy(),
        resolution=int(resolution),
        framing=framing,
        landmarks=apply_affine(matrix, points),
        label=label,
        yaw_pitch_roll=yaw_pitch_roll_deg(label),
        roll_levelled_deg=math.degrees(angle),
    )


def border_for(framing: str) -> str:
    """The border style of a framing: 'black' for eg3d-wild (as EG3D's script), 'blur' otherwise (as FFHQ)."""
    if framing not in FRAMINGS:
        raise UserError(f"framing must be one of {', '.join(FRAMINGS)}; got {framing!r}")
    return "black" if framing == "eg3d-wild" else "blur"


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [1, C, H, W] with reflected edges (radius 3 sigma, capped below the size)."""
    radius = min(int(math.ceil(3.0 * sigma)), min(image.shape[-2:]) - 1)
    if radius < 1:
        return image
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)


def warp_image(image: np.ndarray, matrix: np.ndarray, resolution: int, border: str) -> np.ndarray:
    """Resamples a photo into a crop: crop pixel (i, j) shows the photo at ``matrix^-1 (j + 0.5, i + 0.5)``.

    Args:
        image: uint8 [H, W, C] (RGB, or any channel count) or [H, W] (a mask).
        matrix: [2, 3] source px -> crop px.
        resolution: crop size in px.
        border: 'black' (zeros outside the photo) or 'blur' (the photo reflected at its edges, blending toward a
            Gaussian-blurred copy from 0 at the edge to fully blurred ``BLUR_RAMP * resolution`` crop px away).
    Returns:
        uint8 [resolution, resolution(, C)], the layout of ``image``. Bicubic; when the crop shrinks the photo by a
        factor n >= 2, the photo is first reduced by an n x n box filter (antialiasing).
    """
    if border not in ("black", "blur"):
        raise UserError(f"warp_image: border must be 'black' or 'blur', got {border!r}")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise UserError(f"warp_image: image must be uint8 [H, W] or [H, W, C], got {array.dtype} {array.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = invert_affine(matrix)
    height, width = array.shape[:2]
    source = torch.from_numpy(array.reshape(height, width, -1).astype(np.float32)).permute(2, 0, 1)[None]
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))  # crop px per source px
    factor = max(1, int(1.0 / scale))
    if factor >= 2:
        source = F.avg_pool2d(source, factor, ceil_mode=True, count_include_pad=False)
    centres = np.arange(resolution, dtype=np.float64) + 0.5
    grid_x, grid_y = np.meshgrid(centres, centres)
    src = apply_affine(inverse, np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))  # [R * R, 2] source px
    normalised = 2.0 * src / factor / np.array([source.shape[-1], source.shape[-2]]) - 1.0
    grid = torch.from_numpy(normalised.reshape(1, resolution, resolution, 2)).float()
    padding = "zeros" if border == "black" else "reflection"
    crop = F.grid_sample(source, grid, mode="bicubic", padding_mode=padding, align_corners=False)
    if border == "blur":
        outside = np.hypot(
            np.maximum(np.maximum(-src[:, 0], src[:, 0] - width), 0.0),
            np.maximum(np.maximum(-src[:, 1], src[:, 1] - height), 0.0),
        )  # source px
        weight = np.clip(outside * scale / (BLUR_RAMP * resolution), 0.0, 1.0).reshape(1, 1, resolution, resolution)
        weight = torch.from_numpy(weight).float()
        crop = crop + weight * (_gaussian_blur(crop, BLUR_SIGMA * resolution) - crop)
    result = crop[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return result.reshape(resolution, resolution, *array.shape[2:])


def paste_back(photo: np.ndarray, crop: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """The photo with ``crop`` (e.g. an inversion's reconstruction of it) put back where it was cut from, fading into
    the photo over the outer ``PASTE_FEATHER`` of the crop.

    Args:
        photo: uint8 [H, W, C] source photo.
        crop: uint8 [S, S, C] image of the crop's frame, at any size S.
        matrix: [2, 3] source px -> crop px of the crop at ``resolution`` (``Alignment.matrix``, ``.resolution``).
    Returns:
        uint8 [H, W, C].
    """
    photo, crop = np.asarray(photo), np.asarray(crop)
    if photo.dtype != np.uint8 or crop.dtype != np.uint8 or photo.ndim != 3 or crop.shape[2:] != photo.shape[2:]:
        raise UserError(f"paste_back: photo and crop must be uint8 [H, W, C] alike; got {photo.shape}, {crop.shape}")
    height, width = photo.shape[:2]
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    inside = apply_affine(np.asarray(matrix, dtype=np.float64), np.stack([xs.ravel(), ys.ravel()], axis=1))
    inside = inside / resolution  # [H * W, 2] position in the crop, in units of its side
    grid = torch.from_numpy((2.0 * inside - 1.0).reshape(1, height, width, 2)).float()
    source = torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1)[None]
    warped = F.grid_sample(source, grid, mode="bicubic", padding_mode="border", align_corners=False)[0]
    edge = np.minimum(inside, 1.0 - inside).min(axis=1)  # distance to the crop's nearest edge
    weight = np.clip(edge / PASTE_FEATHER, 0.0, 1.0).reshape(height, width, 1)
    blended = photo + weight * (warped.permute(1, 2, 0).numpy() - photo)
    return blended.round().clip(0, 255).astype(np.uint8)
