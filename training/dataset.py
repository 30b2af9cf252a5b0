"""Image datasets with camera labels and optional masks, stored in a folder or a .zip (EG3D layout).

Layout: image files anywhere inside the folder/zip (EG3D writes ``00000/img00000000.png``) and, at its root,
``dataset.json`` = ``{"labels": [[relative name, [25 numbers]], ...]}``; numbers may be written as strings (PanoHead).
The 25 numbers are a camera label (see training/cameras.py). Masks come from a second folder/zip of single-channel
images with the same relative names (the extension may differ), or from the alpha channel of RGBA / LA images.

``dataset[i]`` returns numpy arrays: the image as uint8 [C, H, W], the label as float32 [25] (float32 [0] without
labels) and, when masks are configured, the mask as uint8 [1, H, W] (255 = foreground). A DataLoader's default
collation turns them into tensors; images become float NCHW in [-1, 1] and masks N1HW in [0, 1] in the training loop.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dnnlib import UserError
from training.cameras import LABEL_DIM, label_yaw_pitch_roll, mirror_label

LABELS_FILE = "dataset.json"
# Images with |yaw| at or beyond this are back views, repeated `back_repeat` times (PanoHead's rebalancing).
BACK_VIEW_YAW_DEG = 90.0
# Image modes we read, mapped to (colour mode, whether the file carries an alpha channel).
_MODES = {
    "1": ("L", False),
    "L": ("L", False),
    "LA": ("L", True),
    "RGB": ("RGB", False),
    "RGBA": ("RGB", True),
    "CMYK": ("RGB", False),
    "YCbCr": ("RGB", False),
    "P": ("RGB", False),
    "PA": ("RGB", True),
}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in Image.registered_extensions()


class FileArchive:
    """Read-only access to the files of a folder or a .zip by '/'-separated relative name.

    A zip handle is opened lazily and reopened in every process (DataLoader workers, fork or spawn); it is not pickled.
    """

    def __init__(self, path: str | os.PathLike, role: str = "dataset") -> None:
        self.path = str(path)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if os.path.isdir(self.path):
            self.is_zip = False
        elif os.path.isfile(self.path) and zipfile.is_zipfile(self.path):
            self.is_zip = True
        else:
            raise UserError(f"{role} path {self.path!r}: expected a folder or a .zip file")

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def names(self) -> list[str]:
        """All file names, sorted, relative to the root, '/'-separated."""
        if self.is_zip:
            names = self._zipfile().namelist()
            return sorted(n for n in names if not n.endswith("/") and not n.startswith("__MACOSX/"))
        names = []
        for root, _dirs, files in os.walk(self.path):
            rel = os.path.relpath(root, self.path)
            names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
        return sorted(names)

    def where(self, name: str) -> str:
        """Human-readable location of a file, for error messages."""
        return f"{self.path}:{name}" if self.is_zip else os.path.join(self.path, *name.split("/"))

    def read_bytes(self, name: str) -> bytes:
        if self.is_zip:
            return self._zipfile().read(name)
        return Path(self.where(name)).read_bytes()

    def open_image(self, name: str, decode: bool = True) -> Image.Image:
        """Opens an image; ``decode=False`` reads only the header (size and mode). UserError when unreadable."""
        try:
            if decode:
                img = Image.open(io.BytesIO(self.read_bytes(name)))
                img.load()
            else:  # PIL reads only as far as the header
                with self._zipfile().open(name) if self.is_zip else open(self.where(name), "rb") as f:
                    img = Image.open(f)
        except _DECODE_ERRORS as e:
            raise UserError(f"{self.where(name)}: cannot read image ({e})") from e
        return img


def _parse_label(values: object, name: str, where: str) -> np.ndarray:
    """One dataset.json entry's label as float32 [25]; accepts numbers or numeric strings."""
    try:
        label = np.array([float(x) for x in values], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: the label of {name!r} must be {LABEL_DIM} numbers ({e})") from e
    if label.shape != (LABEL_DIM,) or not np.all(np.isfinite(label)):
        raise UserError(f"{where}: the label of {name!r} must be {LABEL_DIM} finite numbers, got {list(values)[:30]}")
    return label.astype(np.float32)


def read_labels(archive: FileArchive, names: Sequence[str]) -> np.ndarray:
    """Labels float32 [len(names), 25] of the given image names from the archive's dataset.json."""
    where = archive.where(LABELS_FILE)
    expected = f'expected {{"labels": [[name, [{LABEL_DIM} numbers]], ...]}}'
    try:
        data = json.loads(archive.read_bytes(LABELS_FILE))
    except (FileNotFoundError, KeyError) as e:
        raise UserError(f"{where} not found; it holds the camera labels (or pass use_labels=False)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: not valid JSON ({e})") from e
    entries = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{where}: {expected}")
    table = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise UserError(f"{where}: {expected}; found the entry {str(entry)[:200]}")
        table[entry[0].replace("\\", "/")] = _parse_label(entry[1], entry[0], where)
    missing = [n for n in names if n not in table]
    if missing:
        raise UserError(f"{where}: no label for image {archive.where(missing[0])} ({len(missing)} images lack labels)")
    return np.stack([table[n] for n in names]) if names else np.zeros([0, LABEL_DIM], np.float32)


def match_masks(masks: FileArchive, names: Sequence[str], images: FileArchive) -> list[str]:
    """Mask file name for each image name, matched by relative path without extension."""
    by_stem: dict[str, str] = {}
    for m in filter(_is_image_name, masks.names()):
        stem = os.path.splitext(m)[0]
        if stem in by_stem:
            raise UserError(f"{masks.where(m)}: two masks for the same image ({by_stem[stem]} and {m})")
        by_stem[stem] = m
    image_stems = {os.path.splitext(n)[0] for n in names}
    orphans = sorted(set(by_stem) - image_stems)
    if orphans:
        raise UserError(
            f"{masks.where(by_stem[orphans[0]])}: mask with no matching image in {images.path} "
            f"({len(orphans)} such masks)"
        )
    missing = [n for n in names if os.path.splitext(n)[0] not in by_stem]
    if missing:
        raise UserError(
            f"{images.where(missing[0])}: no mask with the same name in {masks.path} ({len(missing)} images lack masks)"
        )
    return [by_stem[os.path.splitext(n)[0]] for n in names]


def _mode_of(img: Image.Image, where: str) -> tuple[str, bool]:
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        mode = "PA"
    if mode not in _MODES:
        raise UserError(f"{where}: unsupported image mode {img.mode!r}; expected grayscale, RGB or RGBA")
    return _MODES[mode]


def _check_yaw_range(yaw_range: Sequence[float] | None) -> None:
    if yaw_range is None:
        return
    if len(yaw_range) != 2 or not 0.0 <= yaw_range[0] <= yaw_range[1]:
        raise UserError(f"yaw_range: expected (min, max) degrees of |yaw| with 0 <= min <= max, got {yaw_range}")


def select_items(
    labels: np.ndarray,
    yaw_range: Sequence[float] | None,
    back_repeat: int,
    max_size: int | None,
    random_seed: int,
) -> np.ndarray:
    """Raw indices of the dataset's items (before xflip doubling), int64 [M], in order.

    1. keep images with yaw_range[0] <= |yaw| <= yaw_range[1] (degrees, yaw from the camera label);
    2. at most ``max_size`` of them: a random subset (numpy RandomState(random_seed) shuffle), kept in file order;
    3. back views (|yaw| >= 90 deg) appear ``back_repeat`` times (PanoHead rebalances its few back views so).
    ``max_size`` counts distinct images, so the repetition never changes which images are used.
    """
    idx = np.arange(len(labels), dtype=np.int64)
    abs_yaw = np.zeros(len(labels))
    if yaw_range is not None or back_repeat > 1:
        abs_yaw = np.degrees(label_yaw_pitch_roll(torch.from_numpy(labels).double())[:, 0].abs().numpy())
    if yaw_range is not None:
        idx = idx[(abs_yaw >= yaw_range[0]) & (abs_yaw <= yaw_range[1])]
    if max_size is not None and len(idx) > max_size:
        shuffled = idx.copy()
        np.random.RandomState(random_seed % (1 << 32)).shuffle(shuffled)
        idx = np.sort(shuffled[:max_size])
    repeats = np.where(abs_yaw[idx] >= BACK_VIEW_YAW_DEG, back_repeat, 1)
    return np.repeat(idx, repeats)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images (+ camera labels, + masks) from a folder or a .zip; see the module docstring for layout and outputs.

    Args:
        path: folder or .zip holding the images and, when ``use_labels``, dataset.json.
        use_labels: read camera labels from dataset.json (required by yaw filtering and back-view repetition).
        xflip: double the dataset with left-right mirrored copies; their labels are mirrored too (``mirror_label``).
        max_size: use at most this many distinct images (a deterministic random subset, see ``select_items``).
        mask_path: folder or .zip of single-channel masks named like the images (extension may differ). None: masks
            come from the images' alpha channel when they have one, else there are no masks. With a mask_path, an
            alpha channel in the images is ignored.
        resolution: expected image size; every image must be square in any case.
        yaw_range: (min, max) degrees; keep images whose camera has min <= |yaw| <= max.
        back_repeat: number of times each back view (|yaw| >= 90 deg) appears (PanoHead's released setting: 4).
        random_seed: seed of the ``max_size`` subset.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        use_labels: bool = True,
        xflip: bool = False,
        max_size: int | None = None,
        mask_path: str | os.PathLike | None = None,
        resolution: int | None = None,
        yaw_range: Sequence[float] | None = None,
        back_repeat: int = 1,
        random_seed: int = 0,
    ) -> None:
        _check_yaw_range(yaw_range)
        if back_repeat < 1 or (max_size is not None and max_size < 1):
            raise UserError(f"back_repeat and max_size must be >= 1, got {back_repeat} and {max_size}")
        if not use_labels and (yaw_range is not None or back_repeat > 1):
            raise UserError("yaw_range and back_repeat read the camera labels: they need use_labels=True")
        self._images = FileArchive(path, "dataset")
        self._names = [n for n in self._images.names() if _is_image_name(n)]
        if not self._names:
            raise UserError(f"dataset path {self._images.path!r}: no image files found")
        self._masks = FileArchive(mask_path, "mask_path") if mask_path is not None else None
        self._mask_names = match_masks(self._masks, self._names, self._images) if self._masks is not None else None
        self._scan_headers(resolution)
        self._labels = read_labels(self._images, self._names) if use_labels else None
        dummy = np.zeros([len(self._names), LABEL_DIM], np.float32)
        raw_idx = select_items(self._labels if use_labels else dummy, yaw_range, back_repeat, max_size, random_seed)
        if len(raw_idx) == 0:
            raise UserError(f"{self._images.path}: no images left after filtering with yaw_range={yaw_range}")
        self._raw_idx = np.concatenate([raw_idx, raw_idx]) if xflip else raw_idx
        self._xflip = np.repeat([False, True] if xflip else [False], len(raw_idx))
        self.name = os.path.splitext(os.path.basename(os.path.normpath(self._images.path)))[0]

    def _scan_headers(self, resolution: int | None) -> None:
        """Reads every image header (and mask header) once, so that bad files fail before training starts."""
        first = self._images.open_image(self._names[0], decode=False)
        self._mode, self._has_alpha = _mode_of(first, self._images.where(self._names[0]))
        self._size = first.size[0]
        if first.size[0] != first.size[1]:
            raise UserError(
                f"{self._images.where(self._names[0])}: images must be square, got {first.size[0]}x"
                f"{first.size[1]} (dataset_tool.py convert crops and resizes)"
            )
        if resolution is not None and self._size != resolution:
            raise UserError(
                f"{self._images.path}: images are {self._size}x{self._size}, expected resolution {resolution}"
            )
        for i, name in enumerate(self._names):
            self._check_image(self._images.open_image(name, decode=False), name)
            if self._mask_names is not None:
                self._check_mask(self._masks.open_image(self._mask_names[i], decode=False), self._mask_names[i])

    def _check_image(self, img: Image.Image, name: str) -> None:
        where = self._images.where(name)
        mode, has_alpha = _mode_of(img, where)
        if img.size != (self._size, self._size):
            raise UserError(
                f"{where}: image is {img.size[0]}x{img.size[1]} but {self._images.where(self._names[0])}"
                f" is {self._size}x{self._size}; all images must have the same size"
            )
        if (mode, has_alpha) != (self._mode, self._has_alpha):
            raise UserError(
                f"{where}: mode {img.mode} differs from the first image's; all images need the same "
                f"channels (grayscale, RGB, or RGBA)"
            )

    def _check_mask(self, img: Image.Image, name: str) -> None:
        where = self._masks.where(name)
        if _mode_of(img, where) != ("L", False):
            raise UserError(f"{where}: a mask must be a single-channel (grayscale) image, got mode {img.mode}")
        if img.size != (self._size, self._size):
            raise UserError(f"{where}: mask is {img.size[0]}x{img.size[1]}, its image is {self._size}x{self._size}")

    def __len__(self) -> int:
        return len(self._raw_idx)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, ...]:
        """(image uint8 [C, H, W], label float32 [25] or [0]) plus mask uint8 [1, H, W] when ``has_masks``."""
        raw = int(self._raw_idx[idx])
        image, mask = self._load_image(raw)
        if self._mask_names is not None:
            mask = self._load_mask(raw)
        if self._xflip[idx]:
            image = image[:, :, ::-1]
            mask = None if mask is None else mask[:, :, ::-1]
        image = np.array(image, order="C")  # a writable copy: PIL's arrays are read-only, which torch warns about
        if mask is None:
            return image, self.get_label(idx)
        return image, self.get_label(idx), np.array(mask, order="C")

    def _load_image(self, raw: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Colour channels uint8 [C, H, W] and the alpha channel uint8 [1, H, W] (None without alpha)."""
        name = self._names[raw]
        img = self._images.open_image(name)
        self._check_image(img, name)
        target = {"L": "LA", "RGB": "RGBA"}[self._mode] if self._has_alpha else self._mode
        pixels = np.asarray(img.convert(target)).reshape(self._size, self._size, -1).transpose(2, 0, 1)
        if self._has_alpha:
            return pixels[:-1], pixels[-1:]
        return pixels, None

    def _load_mask(self, raw: int) -> np.ndarray:
        """Mask of raw image ``raw`` from the mask archive, uint8 [1, H, W]."""
        name = self._mask_names[raw]
        img = self._masks.open_image(name)
        self._check_mask(img, name)
        return np.asarray(img.convert("L"))[None]

    def get_label(self, idx: int) -> np.ndarray:
        """Camera label float32 [25] of item ``idx`` (mirrored for the xflip copies); float32 [0] without labels."""
        if self._labels is None:
            return np.zeros([0], np.float32)
        label = self._labels[self._raw_idx[idx]]
        if self._xflip[idx]:
            label = mirror_label(torch.from_numpy(label)).numpy()
        return label.copy()

    @property
    def label_std(self) -> np.ndarray:
        """Per-entry standard deviation float32 [label_dim] of the labels over all items (EG3D keeps it on G)."""
        if self._labels is None:
            return np.zeros([0], np.float32)
        labels = torch.from_numpy(self._labels[self._raw_idx])
        flip = torch.from_numpy(self._xflip)[:, None]
        labels = torch.where(flip, mirror_label(labels), labels)
        return labels.double().std(dim=0, unbiased=False).float().numpy()

    @property
    def resolution(self) -> int:
        return self._size

    @property
    def num_channels(self) -> int:
        return 1 if self._mode == "L" else 3

    @property
    def image_shape(self) -> list[int]:
        """[C, H, W] of the returned images."""
        return [self.num_channels, self._size, self._size]

    @property
    def label_shape(self) -> list[int]:
        return [self.label_dim]

    @property
    def label_dim(self) -> int:
        return 0 if self._labels is None else LABEL_DIM

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    @property
    def has_masks(self) -> bool:
        return self._mask_names is not None or self._has_alpha
