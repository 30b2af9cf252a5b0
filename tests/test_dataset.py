"""ImageFolderDataset on small folders and zips built on the fly, and on the PanoHead test images when present."""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnnlib import UserError
from training.cameras import lookat_labels
from training.dataset import ImageFolderDataset

RES = 8


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _labels_for_yaws(yaws_deg: list[float]) -> np.ndarray:
    """Labels [N, 25] of cameras at the given yaws (equator, looking at the pivot): yaw = h - pi/2."""
    h = torch.tensor(yaws_deg, dtype=torch.float64) * math.pi / 180 + math.pi / 2
    return lookat_labels(h, math.pi / 2, dtype=torch.float64).numpy()


def _write(root: Path, files: dict[str, bytes], as_zip: bool) -> Path:
    """Writes files (relative name -> bytes) into a folder ``root`` or a zip ``root.zip``."""
    if as_zip:
        path = root.with_suffix(".zip")
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return path
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _dataset_files(
    images: list[np.ndarray], labels: np.ndarray | None, as_strings: bool = False, ext: str = ".png"
) -> dict[str, bytes]:
    """EG3D layout: 00000/img%08d.png plus dataset.json."""
    names = [f"00000/img{i:08d}{ext}" for i in range(len(images))]
    files = {}
    for name, img in zip(names, images, strict=True):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG" if ext == ".png" else "JPEG")
        files[name] = buf.getvalue()
    if labels is not None:
        rows = [[f"{x:.6f}" for x in lab] if as_strings else lab.tolist() for lab in labels]
        files["dataset.json"] = json.dumps({"labels": [[n, r] for n, r in zip(names, rows, strict=True)]}).encode()
    return files


def _random_images(n: int, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (RES, RES, channels) if channels > 1 else (RES, RES)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("as_zip", [False, True])
def test_images_and_labels(tmp_path, as_zip):
    images = _random_images(5)
    labels = _labels_for_yaws([0, 20, -40, 100, 170])
    path = _write(tmp_path / "ds", _dataset_files(images, labels, as_strings=as_zip), as_zip)
    ds = ImageFolderDataset(path)
    assert len(ds) == 5 and ds.image_shape == [3, RES, RES] and ds.resolution == RES and ds.num_channels == 3
    assert ds.has_labels and ds.label_dim == 25 and not ds.has_masks
    for i in range(5):
        image, label = ds[i]
        assert image.dtype == np.uint8 and label.dtype == np.float32
        assert image.flags.writeable  # torch.as_tensor warns on read-only arrays (DataLoader collate)
        np.testing.assert_array_equal(image, images[i].transpose(2, 0, 1))
        written = np.round(labels[i], 6) if as_zip else labels[i]  # the zip's labels are strings with 6 decimals
        np.testing.assert_array_equal(label, written.astype(np.float32))
    np.testing.assert_allclose(ds.label_std, labels.astype(np.float32).std(axis=0), atol=1e-6, rtol=0)


def test_grayscale_and_no_labels(tmp_path):
    images = _random_images(3, channels=1)
    ds = ImageFolderDataset(_write(tmp_path / "g", _dataset_files(images, None), True), use_labels=False)
    image, label = ds[2]
    assert ds.num_channels == 1 and ds.label_dim == 0 and label.shape == (0,)
    np.testing.assert_array_equal(image, images[2][None])


def test_masks_from_second_zip_and_xflip(tmp_path):
    """The synthetic writer's layout: heads.zip (RGB + dataset.json) and heads_masks.zip (same names, one channel)."""
    images, masks = _random_images(3), _random_images(3, channels=1, seed=1)
    labels = _labels_for_yaws([10, -30, 60])
    heads = _write(tmp_path / "heads", _dataset_files(images, labels), True)
    mask_files = {f"00000/img{i:08d}.png": _png(m) for i, m in enumerate(masks)}
    heads_masks = _write(tmp_path / "heads_masks", mask_files, True)
    ds = ImageFolderDataset(heads, mask_path=heads_masks, xflip=True)
    assert ds.has_masks and len(ds) == 6
    S = np.diag([-1.0, 1, 1, 1])
    for i in range(3):
        image, label, mask = ds[i]
        np.testing.assert_array_equal(mask, masks[i][None])
        f_image, f_label, f_mask = ds[i + 3]
        np.testing.assert_array_equal(f_image, images[i].transpose(2, 0, 1)[:, :, ::-1])
        np.testing.assert_array_equal(f_mask, masks[i][None, :, ::-1])
        np.testing.assert_allclose(f_label[:16].reshape(4, 4), S @ label[:16].reshape(4, 4) @ S, atol=0, rtol=0)
        np.testing.assert_array_equal(f_label[16:], label[16:])
        np.testing.assert_array_equal(ds.get_label(i + 3), f_label)
    all_labels = np.stack([ds[i][1] for i in range(6)]).astype(np.float64)
    np.testing.assert_allclose(ds.label_std, all_labels.std(axis=0), atol=1e-6, rtol=0)


def test_masks_match_by_name_without_extension(tmp_path):
    images, masks = _random_images(2), _random_images(2, channels=1, seed=2)
    img_dir = _write(tmp_path / "img", _dataset_files(images, _labels_for_yaws([0, 5]), ext=".jpg"), False)
    seg_dir = _write(tmp_path / "seg", {f"00000/img{i:08d}.png": _png(m) for i, m in enumerate(masks)}, False)
    ds = ImageFolderDataset(img_dir, mask_path=seg_dir)
    np.testing.assert_array_equal(ds[1][2], masks[1][None])


def test_mask_from_alpha(tmp_path):
    rgba = _random_images(2, channels=4)
    ds = ImageFolderDataset(_write(tmp_path / "a", _dataset_files(rgba, _labels_for_yaws([0, 1])), True), xflip=True)
    assert ds.has_masks and ds.num_channels == 3
    image, _, mask = ds[1]
    np.testing.assert_array_equal(image, rgba[1][:, :, :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(mask, rgba[1][None, :, :, 3])
    np.testing.assert_array_equal(ds[3][2], rgba[1][None, :, ::-1, 3])


def test_max_size_subset_is_deterministic(tmp_path):
    images = _random_images(12)
    path = _write(tmp_path / "m", _dataset_files(images, _labels_for_yaws(list(range(12)))), True)
    originals = {img.tobytes(): i for i, img in enumerate(images)}

    def picked(seed):
        ds = ImageFolderDataset(path, max_size=4, random_seed=seed, xflip=True)
        assert len(ds) == 8
        return [originals[ds[i][0].transpose(1, 2, 0).tobytes()] for i in range(4)]

    a, b, c = picked(0), picked(0), picked(5)
    assert a == b and len(set(a)) == 4 and a == sorted(a) and a != c
    assert len(ImageFolderDataset(path, max_size=100)) == 12


def test_yaw_filter_and_back_repeat(tmp_path):
    yaws = [0.0, 30.0, -60.0, 100.0, -150.0, 179.0]
    images = _random_images(6)
    path = _write(tmp_path / "y", _dataset_files(images, _labels_for_yaws(yaws)), True)
    originals = {img.tobytes(): i for i, img in enumerate(images)}

    def yaws_of(ds, flipped=False):  # which written images the items are, by their pixels (mirrored copies unflipped)
        items = [ds[i][0][:, :, ::-1] if flipped and i >= len(ds) // 2 else ds[i][0] for i in range(len(ds))]
        return sorted(originals[img.transpose(1, 2, 0).tobytes()] for img in items)

    assert yaws_of(ImageFolderDataset(path, yaw_range=(20, 120))) == [1, 2, 3]
    assert yaws_of(ImageFolderDataset(path, back_repeat=3)) == [0, 1, 2] + [3] * 3 + [4] * 3 + [5] * 3
    both = ImageFolderDataset(path, yaw_range=(0, 120), back_repeat=2, xflip=True)
    assert yaws_of(both, flipped=True) == sorted([0, 1, 2, 3, 3] * 2)
    with pytest.raises(UserError, match="no images left"):
        ImageFolderDataset(path, yaw_range=(70, 90))
    with pytest.raises(UserError, match="yaw_range"):
        ImageFolderDataset(path, yaw_range=(90, 10))
    with pytest.raises(UserError, match="use_labels"):
        ImageFolderDataset(path, use_labels=False, back_repeat=4)


def test_dataloader_workers_and_pickle(tmp_path):
    images, masks = _random_images(6), _random_images(6, channels=1, seed=3)
    path = _write(tmp_path / "w", _dataset_files(images, _labels_for_yaws([0] * 6)), True)
    mpath = _write(tmp_path / "w_masks", {f"00000/img{i:08d}.png": _png(m) for i, m in enumerate(masks)}, True)
    ds = ImageFolderDataset(path, mask_path=mpath)
    ds[0]  # opens the zip handles in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[4][2], masks[4][None])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    image = torch.cat([b[0] for b in batches])
    mask = torch.cat([b[2] for b in batches])
    assert image.shape == (6, 3, RES, RES) and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.numpy(), np.stack(images).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(mask.numpy(), np.stack(masks)[:, None])


def _error(tmp_path, files, match, **kwargs):
    path = _write(tmp_path / "bad", files, True)
    with pytest.raises(UserError, match=match):
        ds = ImageFolderDataset(path, **kwargs)
        ds[len(ds) - 1]


def test_errors_name_the_file(tmp_path):
    images, labels = _random_images(2), _labels_for_yaws([0, 1])
    good = _dataset_files(images, labels)
    no_json = {k: v for k, v in good.items() if k != "dataset.json"}
    _error(tmp_path, no_json, r"bad\.zip:dataset\.json not found")
    short = dict(good, **{"dataset.json": json.dumps({"labels": [[n, [1.0] * 24] for n in no_json]}).encode()})
    _error(tmp_path, short, r"dataset\.json: the label of '00000/img00000000\.png' must be 25")
    words = dict(good, **{"dataset.json": json.dumps({"labels": [[n, ["x"] * 25] for n in no_json]}).encode()})
    _error(tmp_path, words, r"dataset\.json: the label of '00000/img00000000\.png' must be 25")
    _error(tmp_path, dict(good, **{"extra.png": _png(images[0])}), r"no label for image .*bad\.zip:extra\.png")
    mixed = dict(good, **{"00000/img00000001.png": _png(np.zeros((RES * 2, RES * 2, 3), np.uint8))})
    _error(tmp_path, mixed, r"bad\.zip:00000/img00000001\.png: image is 16x16 .* same size")
    _error(tmp_path, dict(good, **{"00000/img00000001.png": b"not a png"}), r"img00000001\.png: cannot read image")
    truncated = dict(good, **{"00000/img00000001.png": good["00000/img00000001.png"][:60]})
    _error(tmp_path, truncated, r"img00000001\.png: cannot read image")
    wide = {"00000/img00000000.png": _png(np.zeros((RES, RES * 2, 3), np.uint8))}
    _error(tmp_path, wide, r"img00000000\.png: images must be square", use_labels=False)
    _error(tmp_path, good, r"bad\.zip: images are 8x8, expected resolution 16", resolution=16)
    rgb = dict(good, **{"00000/img00000001.png": _png(_random_images(1, channels=4)[0])})
    _error(tmp_path, rgb, r"img00000001\.png: mode RGBA differs")
    with pytest.raises(UserError, match="nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_mask_errors_name_the_file(tmp_path):
    path = _write(tmp_path / "img", _dataset_files(_random_images(2), _labels_for_yaws([0, 1])), True)
    mask = _png(np.zeros((RES, RES), np.uint8))
    cases = [
        (
            {"00000/img00000000.png": mask, "00000/img00000001.png": mask, "00000/img00000007.png": mask},
            r"masks\.zip:00000/img00000007\.png: mask with no matching image",
        ),
        ({"00000/img00000000.png": mask}, r"img\.zip:00000/img00000001\.png: no mask"),
        (
            {"00000/img00000000.png": mask, "00000/img00000001.png": _png(np.zeros((RES, RES, 3), np.uint8))},
            r"masks\.zip:00000/img00000001\.png: a mask must be a single-channel",
        ),
    ]
    for k, (files, match) in enumerate(cases):
        (tmp_path / f"m{k}").mkdir()
        mpath = _write(tmp_path / f"m{k}" / "masks", files, True)
        with pytest.raises(UserError, match=match):
            ImageFolderDataset(path, mask_path=mpath)


def test_panohead_fixture(shared_fixtures):
    root = shared_fixtures / "panohead_testdata"
    ds = ImageFolderDataset(root / "testdata_img", mask_path=root / "testdata_seg", xflip=True)
    assert len(ds) == 4 and ds.has_masks and ds.image_shape == [3, 563, 563]
    entries = json.loads((root / "testdata_img" / "dataset.json").read_text())["labels"]
    for i, (name, values) in enumerate(sorted(entries)):
        image, label, mask = ds[i]
        np.testing.assert_allclose(label, np.array([float(x) for x in values]), atol=1e-6, rtol=0)
        expected_mask = np.asarray(Image.open(root / "testdata_seg" / name.replace(".jpg", ".png")))
        np.testing.assert_array_equal(mask[0], expected_mask)
        assert image.shape == (3, 563, 563) and 0 < mask.mean() < 255
        # PanoHead's cameras sit 2.7 from the origin and look at it (reference notes: pivot (0, 0, 0)).
        assert abs(np.linalg.norm(label[[3, 7, 11]]) - 2.7) < 1e-3
        np.testing.assert_array_equal(ds[i + 2][2], mask[:, :, ::-1])
