"""One photo in, one framed crop and its camera label out: load, detect, choose a face, align, warp.

The steps (docs/inthewild.md): the photo is loaded with its EXIF orientation applied; MTCNN finds faces and their five
landmarks; the largest face above confidence 0.9 is kept (EG3D's rule), or the one ``face_index`` names;
``flip_average`` detects on the mirrored photo as well and averages the two landmark sets, which cancels the
detector's left-right bias at twice the cost; ``alignment.align_landmarks`` turns the landmarks into a source→crop
affine and a camera label for the chosen framing, and ``alignment.warp_image`` resamples the photo (and a mask).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageOps

from dnnlib import UserError
from training.inthewild.alignment import MIRROR_ORDER, Alignment, align_landmarks, border_for, warp_image
from training.inthewild.mtcnn import MTCNN, Face

# MTCNN puts (0, 0) at the centre of the top-left pixel; the alignment at its top-left corner (pixel centres at +0.5).
MTCNN_TO_ALIGNMENT = 0.5
MIN_CONFIDENCE = 0.9  # EG3D keeps a face only above this O-Net probability
SIMILAR_SIZE = 0.9  # a second face at least this fraction of the largest one's size makes the choice ambiguous


@dataclass(frozen=True)
class AlignedPhoto:
    """A framed crop of one photo: ``image`` uint8 [R, R, 3], ``mask`` uint8 [R, R] or None, the face it shows, and
    the alignment (source→crop matrix, camera label, angles)."""

    image: np.ndarray
    mask: np.ndarray | None
    face: Face
    alignment: Alignment


def load_photo(data: bytes, where: str, mode: str = "RGB") -> np.ndarray:
    """Encoded image bytes → uint8 [H, W, 3] (mode 'RGB') or [H, W] (mode 'L'), upright by its EXIF orientation."""
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image = PIL.ImageOps.exif_transpose(image)
        return np.asarray(image.convert(mode))
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise UserError(f"{where}: cannot read image ({error})") from None


def face_size(face: Face) -> float:
    """EG3D's size measure of a detection: box width + height."""
    x0, y0, x1, y1 = face.box
    return float((x1 - x0) + (y1 - y0))


def choose_face(faces: list[Face], where: str, face_index: int | None = None) -> Face:
    """The face to align: with ``face_index``, that entry of the faces ordered by size (0 = largest); otherwise the
    largest face above confidence 0.9, which must be clearly (> 10 %) larger than any other such face."""
    by_size = sorted(faces, key=face_size, reverse=True)
    if face_index is not None:
        if face_index >= len(by_size):
            raise UserError(f"{where}: --face-index {face_index}, but {len(by_size)} face(s) were found")
        return by_size[face_index]
    confident = [f for f in by_size if f.confidence > MIN_CONFIDENCE]
    if not confident:
        best = f" (best confidence {max(f.confidence for f in faces):.2f})" if faces else ""
        raise UserError(f"{where}: no face found with confidence > {MIN_CONFIDENCE}{best}")
    if len(confident) > 1 and face_size(confident[1]) >= SIMILAR_SIZE * face_size(confident[0]):
        raise UserError(f"{where}: {len(confident)} faces of similar size; pass --face-index (0 = largest) to choose")
    return confident[0]


def mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks [5, 2] (alignment convention) of the left-right mirrored photo: x → width − x, sides swapped."""
    mirrored = landmarks[list(MIRROR_ORDER)].copy()
    mirrored[:, 0] = width - mirrored[:, 0]
    return mirrored


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def flip_averaged_landmarks(detector: MTCNN, image: np.ndarray, face: Face, where: str) -> np.ndarray:
    """The mean of ``face``'s landmarks and those found on the mirrored photo for the same face (mapped back), in the
    alignment's pixel convention."""
    width = image.shape[1]
    mirrored_faces = detector.detect(np.ascontiguousarray(image[:, ::-1]))
    box = np.array([width - 1 - face.box[2], face.box[1], width - 1 - face.box[0], face.box[3]])  # MTCNN convention
    overlaps = [_box_iou(box, f.box) for f in mirrored_faces]
    if not overlaps or max(overlaps) < 0.5:
        raise UserError(f"{where}: the face was not found again in the mirrored photo; align without flip averaging")
    match = mirrored_faces[int(np.argmax(overlaps))]
    mirrored = mirror_landmarks(match.landmarks + MTCNN_TO_ALIGNMENT, width)
    return 0.5 * (face.landmarks + MTCNN_TO_ALIGNMENT + mirrored)


def align_photo(
    detector: MTCNN,
    image: np.ndarray,
    where: str,
    framing: str = "eg3d",
    resolution: int = 512,
    face_index: int | None = None,
    flip_average: bool = False,
    mask: np.ndarray | None = None,
) -> AlignedPhoto:
    """Detects, chooses and aligns one face of ``image`` (uint8 [H, W, 3]); ``mask`` (uint8 [H, W]) is warped alike.

    ``where`` names the photo in error messages.
    """
    if mask is not None and mask.shape != image.shape[:2]:
        h, w = image.shape[:2]
        raise UserError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, its photo {w}x{h}")
    face = choose_face(detector.detect(image), where, face_index)
    if flip_average:
        landmarks = flip_averaged_landmarks(detector, image, face, where)
    else:
        landmarks = face.landmarks + MTCNN_TO_ALIGNMENT
    alignment = align_landmarks(landmarks, framing, resolution)
    border = border_for(framing)
    crop = warp_image(image, alignment.matrix, resolution, border)
    crop_mask = None if mask is None else warp_image(mask, alignment.matrix, resolution, border)
    return AlignedPhoto(crop, crop_mask, face, alignment)
