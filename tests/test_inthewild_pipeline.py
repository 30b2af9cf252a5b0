"""The in-the-wild pipeline (training/inthewild/pipeline.py) and ``dataset_tool.py align``: face choice rules, EXIF
orientation, PanoHead's two labelled photos end to end with our MTCNN — cameras against PanoHead's labels
(3DDFA_V2, an independent estimator), flip consistency, the panohead framing against PanoHead's own crop — and
synthetic heads rendered at known cameras (exact truth)."""

from __future__ import annotations

import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
from dnnlib import UserError
from training import cameras
from training.dataset import ImageFolderDataset
from training.inthewild.mtcnn import Face, load_mtcnn
from training.inthewild.pipeline import align_photo, choose_face, load_photo, mirror_landmarks
from training.synthetic import render_heads, sample_cameras
from training.synthetic_heads import sample_heads

PHOTOS = ("000134.jpg", "000157.jpg")


def _face(size: float, confidence: float = 0.99) -> Face:
    return Face(box=np.array([10.0, 10.0, 10.0 + size / 2, 10.0 + size / 2]), confidence=confidence,
                landmarks=np.zeros((5, 2)))


def test_choose_face_rules():
    small, large, faint = _face(100), _face(200), _face(400, confidence=0.5)
    assert choose_face([small, faint, large], "p.jpg") is large  # largest above 0.9; the faint one is ignored
    assert choose_face([small, faint, large], "p.jpg", face_index=0) is faint  # an explicit choice, by size
    assert choose_face([small, faint, large], "p.jpg", face_index=2) is small
    with pytest.raises(UserError, match=r"p\.jpg: 2 faces of similar size; pass --face-index"):
        choose_face([_face(200), _face(190)], "p.jpg")
    with pytest.raises(UserError, match=r"p\.jpg: no face found with confidence > 0\.9 \(best confidence 0\.50\)"):
        choose_face([faint], "p.jpg")
    with pytest.raises(UserError, match="no face found"):
        choose_face([], "p.jpg")
    with pytest.raises(UserError, match="--face-index 3, but 2 face"):
        choose_face([small, large], "p.jpg", face_index=3)


def test_load_photo_applies_exif_orientation():
    raw = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    image = PIL.Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise to stand upright
    buf = io.BytesIO()
    image.save(buf, format="PNG", exif=exif)
    upright = load_photo(buf.getvalue(), "p.png")
    assert upright.shape == (80, 48, 3)
    np.testing.assert_array_equal(upright, np.rot90(raw, k=-1))
    with pytest.raises(UserError, match="broken.jpg: cannot read image"):
        load_photo(b"not an image", "broken.jpg")


def test_mirror_landmarks_swaps_sides():
    points = np.array([[30.0, 40.0], [70.0, 41.0], [52.0, 60.0], [35.0, 80.0], [66.0, 81.0]])
    mirrored = mirror_landmarks(points, 100)  # continuous pixel coordinates: x -> 100 - x
    np.testing.assert_allclose(mirrored[:, 0], [100 - 70.0, 100 - 30.0, 100 - 52.0, 100 - 66.0, 100 - 35.0])
    np.testing.assert_allclose(mirror_landmarks(mirrored, 100), points)


@pytest.fixture(scope="module")
def detector():
    return load_mtcnn("cpu")


def _photo_and_label(fixtures, name):
    folder = fixtures / "panohead_testdata" / "testdata_img"
    labels = dict(json.loads((folder / "dataset.json").read_text())["labels"])
    image = load_photo((folder / name).read_bytes(), name)
    return image, np.array([float(v) for v in labels[name]])


def _rotation(label: np.ndarray) -> np.ndarray:
    return np.asarray(label, dtype=np.float64)[:16].reshape(4, 4)[:3, :3]


def _geodesic_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(_rotation(a).T @ _rotation(b)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


@pytest.mark.parametrize("framing", ["eg3d", "eg3d-wild", "panohead"])
def test_fixture_cameras_match_panohead_labels(shared_fixtures, detector, framing):
    """Rotation within 10 deg of PanoHead's 3DDFA_V2 labels (the issue's bound; the reference measured 2.6-7 deg with
    another MTCNN implementation), and a mirrored photo gives the mirrored camera within the reference's
    flip-consistency maximum (5.4 deg per angle)."""
    for name in PHOTOS:
        image, label = _photo_and_label(shared_fixtures, name)
        aligned = align_photo(detector, image, name, framing, 128)
        assert aligned.image.shape == (128, 128, 3)
        assert _geodesic_deg(aligned.alignment.label, label) < 10.0, name
        flipped = align_photo(detector, np.ascontiguousarray(image[:, ::-1]), name, framing, 128)
        expected = cameras.mirror_label(torch.from_numpy(aligned.alignment.label))
        angles = np.degrees(cameras.label_yaw_pitch_roll(torch.stack([expected, torch.from_numpy(
            flipped.alignment.label)])).numpy())
        assert np.abs(angles[0] - angles[1]).max() < 5.4, (name, angles)


def test_flip_averaging_makes_mirrored_photos_exactly_consistent(shared_fixtures, detector):
    """With --flip-average both a photo and its mirror average the same two landmark sets, so the mirrored photo's
    label is mirror_label of the photo's (here within 1e-5) and its crop is the mirrored crop."""
    image, _ = _photo_and_label(shared_fixtures, PHOTOS[1])
    aligned = align_photo(detector, image, "p", "eg3d", 64, flip_average=True)
    flipped = align_photo(detector, np.ascontiguousarray(image[:, ::-1]), "p", "eg3d", 64, flip_average=True)
    expected = cameras.mirror_label(torch.from_numpy(aligned.alignment.label)).numpy()
    np.testing.assert_allclose(flipped.alignment.label, expected, atol=1e-5)
    difference = np.abs(flipped.image.astype(int) - aligned.image[:, ::-1].astype(int))
    assert np.median(difference) <= 1 and difference.mean() < 2


def test_fixture_panohead_framing_is_near_identity(shared_fixtures, detector):
    """The photos are PanoHead crops (563 px), so PanoHead's framing of them should be the identity: the crop centre
    within 8 px at 512 and its scale within 4 % (the reference's tolerances)."""
    for name in PHOTOS:
        image, _ = _photo_and_label(shared_fixtures, name)
        matrix = align_photo(detector, image, name, "panohead", 563).alignment.matrix
        scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
        centre = np.linalg.solve(matrix[:, :2], np.array([281.5, 281.5]) - matrix[:, 2])  # crop centre in the photo
        assert abs(scale - 1) < 0.04, (name, scale)
        assert np.linalg.norm(centre - 281.5) * 512 / 563 < 8.0, (name, centre)


def test_dataset_tool_align(shared_fixtures, tmp_path):
    """A folder with the two photos, a blank one and a two-face one: two crops with labels near PanoHead's, masks
    cropped alike, the other two skipped with their reasons in the report."""
    folder = shared_fixtures / "panohead_testdata"
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir(), masks.mkdir()
    images = [load_photo((folder / "testdata_img" / n).read_bytes(), n) for n in PHOTOS]
    for name, image in zip(PHOTOS, images, strict=True):
        PIL.Image.fromarray(image).save(photos / name)
        mask = np.asarray(PIL.Image.open(folder / "testdata_seg" / name.replace(".jpg", ".png")).convert("L"))
        PIL.Image.fromarray(mask).save(masks / name.replace(".jpg", ".png"))
    PIL.Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(photos / "blank.png")
    PIL.Image.fromarray(np.full((200, 300), 0, np.uint8)).save(masks / "blank.png")
    PIL.Image.fromarray(np.concatenate([images[0], images[0][:, ::-1]], axis=1)).save(photos / "two.png")
    PIL.Image.fromarray(np.full((563, 1126), 0, np.uint8)).save(masks / "two.png")
    result = CliRunner().invoke(dataset_tool.cli, ["align", "--source", str(photos), "--dest", str(tmp_path / "a.zip"),
                                                   "--resolution", "64", "--masks", str(masks), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "aligned 2 of 4 photos" in result.output
    report = json.loads((tmp_path / "a_report.json").read_text())
    reasons = {e["source"]: e["skipped"] for e in report["skipped"]}
    assert "no face found" in reasons["blank.png"] and "similar size" in reasons["two.png"]
    assert [e["source"] for e in report["aligned"]] == list(PHOTOS)
    dataset = ImageFolderDataset(str(tmp_path / "a.zip"), mask_path=str(tmp_path / "a_masks.zip"), use_labels=True)
    assert len(dataset) == 2 and dataset.image_shape == [3, 64, 64]
    for i, name in enumerate(PHOTOS):
        _, label = _photo_and_label(shared_fixtures, name)
        assert _geodesic_deg(dataset.get_label(i), label) < 10.0
        image, _, mask = dataset[i]
        assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
        assert mask[0, 24:40, 24:40].min() > 200 and mask[0, -1].mean() < mask[0, 24:40, 24:40].mean()  # face = person


def test_dataset_tool_align_without_faces_fails(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    PIL.Image.fromarray(np.full((120, 90, 3), 200, np.uint8)).save(photos / "wall.png")
    result = CliRunner().invoke(dataset_tool.cli, ["align", "--source", str(photos), "--dest", str(tmp_path / "a.zip"),
                                                   "--device", "cpu"])
    assert result.exit_code == 1 and "none of the 1 photos could be aligned" in result.output
    assert "wall.png: no face found" in result.output and not (tmp_path / "a.zip").exists()


def test_synthetic_heads_at_known_cameras(detector):
    """End to end against exact truth: 48 synthetic heads rendered at 128 px by FFHQ-like cameras (yaw std 17 deg);
    MTCNN, the crop and the camera fit must return their cameras. Measured: 36 of 48 detected above 0.9, rotation
    error 6.9 deg mean (17.2 max), yaw / pitch / roll mean error 3.5 / 4.7 / 1.7 deg; the reference's estimate for
    5-point pose with identity variation is 4.3-4.6 deg per angle (these heads differ from the template's face)."""
    labels = sample_cameras("ffhq", 48, seed=0)
    images, _, _ = render_heads(sample_heads(48, seed=0), labels, 128)
    images = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    errors = []
    for image, label in zip(images, labels.double().numpy(), strict=True):
        try:
            estimate = align_photo(detector, np.ascontiguousarray(image), "render", "eg3d-wild", 128).alignment.label
        except UserError:
            continue
        truth_angles = np.degrees(cameras.label_yaw_pitch_roll(torch.from_numpy(label)).numpy())
        estimate_angles = np.degrees(cameras.label_yaw_pitch_roll(torch.from_numpy(estimate)).numpy())
        errors.append([_geodesic_deg(estimate, label), *np.abs(estimate_angles - truth_angles)])
    errors = np.array(errors)
    assert len(errors) >= 30
    assert errors[:, 0].mean() < 9.0 and errors[:, 1].mean() < 5.0 and errors[:, 2].mean() < 6.5
