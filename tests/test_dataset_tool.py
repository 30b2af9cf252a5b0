"""dataset_tool.py: the synthetic -> info -> convert round trip through click, label re-keying and crop intrinsics,
resize filters against numpy oracles, alpha masks, ImageFolderDataset reading the outputs, and error messages."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from dataset_tool import cli
from training.dataset import ImageFolderDataset
from training.synthetic import archive_name


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _zip_json(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("dataset.json"))


def _zip_image(path, name) -> np.ndarray:
    with zipfile.ZipFile(path) as z:
        return np.asarray(PIL.Image.open(io.BytesIO(z.read(name))))


def _yaw_deg(label: list[float]) -> float:
    """Yaw of a camera from its label, written out: atan2 of the x and z components of the camera's backward axis."""
    m = np.asarray(label[:16]).reshape(4, 4)
    return float(np.degrees(np.arctan2(-m[0, 2], -m[2, 2])))


def test_synthetic_info_convert_round_trip(tmp_path):
    heads, out = tmp_path / "heads.zip", tmp_path / "small.zip"
    r = _run("synthetic", "--dest", str(heads), "--count", "6", "--resolution", "16", "--cameras", "360",
             "--seed", "3", "--supersample", "1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "wrote 6 heads at 16x16" in r.output and (tmp_path / "heads_masks.zip").is_file()
    labels = _zip_json(heads)["labels"]
    assert [name for name, _ in labels] == [archive_name(i) for i in range(6)]

    r = _run("info", "--source", str(heads), "--masks", str(tmp_path / "heads_masks.zip"))
    assert r.exit_code == 0, r.output
    assert re.search(r"images:\s+6\n", r.output) and re.search(r"resolution:\s+16x16\n", r.output)
    assert re.search(r"masks:\s+6, one per image", r.output) and "focal:       mean 4.2647" in r.output
    assert "look-at:     (+0.0000, +0.0000, +0.0000)" in r.output.replace("-0.0000", "+0.0000")
    assert "radius:      mean 2.7000, min 2.7000, max 2.7000" in r.output
    yaws = np.array([_yaw_deg(lab) for _, lab in labels])
    assert f"yaw:         mean {yaws.mean():+.1f} deg, std {yaws.std():.1f} deg" in r.output
    printed = [int(c) for c in re.findall(r"^\s+\[\s*[-+]\d+,\s*[-+]\d+\)\s+(\d+)", r.output, re.MULTILINE)]
    assert printed == np.histogram(yaws, bins=np.linspace(-180, 180, 25))[0].tolist()

    r = _run("convert", "--source", str(heads), "--dest", str(out), "--resolution", "8",
             "--masks", str(tmp_path / "heads_masks.zip"), "--resize-filter", "box")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _zip_json(out)["labels"] == [[archive_name(i), lab] for i, (_, lab) in enumerate(labels)]  # square: same
    for i in range(6):
        big = _zip_image(heads, archive_name(i)).astype(np.float64)
        box = big.reshape(8, 2, 8, 2, 3).mean((1, 3))  # BOX filter halving = mean of 2x2 blocks
        assert np.abs(_zip_image(out, archive_name(i)) - box).max() <= 1.0  # PIL filters in fixed point: +-1
    ds = ImageFolderDataset(out, mask_path=tmp_path / "small_masks.zip")
    image, label, mask = ds[5]
    assert len(ds) == 6 and image.shape == (3, 8, 8) and mask.shape == (1, 8, 8)
    assert np.array_equal(label, np.float32(labels[5][1]))


def test_synthetic_output_reads_with_image_folder_dataset(tmp_path):
    r = _run("synthetic", "--dest", str(tmp_path / "h.zip"), "--count", "3", "--resolution", "8",
             "--masks-dest", str(tmp_path / "m.zip"))  # fmt: skip
    assert r.exit_code == 0, r.output
    ds = ImageFolderDataset(tmp_path / "h.zip", mask_path=tmp_path / "m.zip")
    labels = _zip_json(tmp_path / "h.zip")["labels"]
    for i in range(3):
        image, label, mask = ds[i]
        assert np.array_equal(image, _zip_image(tmp_path / "h.zip", archive_name(i)).transpose(2, 0, 1))
        assert np.array_equal(mask[0], _zip_image(tmp_path / "m.zip", archive_name(i)))
        assert np.array_equal(label, np.float32(labels[i][1]))


def _bilinear_halve(x: np.ndarray) -> np.ndarray:
    """Antialiased bilinear 2x reduction along both axes: a triangle filter of half-width 2 input pixels, i.e. taps
    (1, 3, 3, 1) / 8 around each output pixel, renormalised where they leave the image."""
    def axis0(a: np.ndarray) -> np.ndarray:
        out = []
        for i in range(a.shape[0] // 2):
            idx = np.arange(2 * i - 1, 2 * i + 3)
            w = np.array([1.0, 3.0, 3.0, 1.0])
            keep = (idx >= 0) & (idx < a.shape[0])
            out.append(np.tensordot(w[keep] / w[keep].sum(), a[idx[keep]], axes=1))
        return np.stack(out)

    return axis0(axis0(x).T).T


def _source_folder(tmp_path):
    """24x16 RGB images (one PNG in a subfolder, one JPEG), labels written as strings, masks as .png/.bmp."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    PIL.Image.fromarray(a).save(src / "sub" / "a.png")
    PIL.Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(src / "b.jpg")
    # Pixel intrinsics f = 40 px, principal point (13, 8) px on the 24x16 image, normalised per axis.
    K = [40 / 24, 0.0, 13 / 24, 0.0, 40 / 16, 0.5, 0.0, 0.0, 1.0]
    c2w = np.eye(4).ravel().tolist()
    labels = [["sub/a.png", [str(x) for x in c2w + K]], ["b.jpg", c2w + K]]
    (src / "dataset.json").write_text(json.dumps({"labels": labels}))
    masks = tmp_path / "masks"
    (masks / "sub").mkdir(parents=True)
    m = (rng.random((16, 24)) > 0.5).astype(np.uint8) * 255
    PIL.Image.fromarray(m).save(masks / "sub" / "a.png")
    PIL.Image.fromarray(m).save(masks / "b.bmp")
    return src, masks, a, m


def test_convert_crops_adjusts_intrinsics_and_resizes(tmp_path):
    """24x16 -> centre 16x16 (left 4) -> 8x8. Intrinsics: f = 40/16, cx = (13 - 4)/16, cy = 8/16 (closed form)."""
    src, masks, a, m = _source_folder(tmp_path)
    out = tmp_path / "out.zip"
    r = _run("convert", "--source", str(src), "--dest", str(out), "--resolution", "8", "--masks", str(masks),
             "--resize-filter", "box")  # fmt: skip
    assert r.exit_code == 0, r.output
    labels = _zip_json(out)["labels"]
    assert [n for n, _ in labels] == [archive_name(0), archive_name(1)]  # sorted source order: b.jpg, sub/a.png
    for _, lab in labels:
        assert np.allclose(lab[16:], [40 / 16, 0, 9 / 16, 0, 40 / 16, 0.5, 0, 0, 1], atol=1e-6)
        assert lab[:16] == np.eye(4).ravel().tolist()
    crop = a[:, 4:20].astype(np.float64)
    assert np.abs(_zip_image(out, archive_name(1)) - crop.reshape(8, 2, 8, 2, 3).mean((1, 3))).max() <= 1.0
    mask = _zip_image(tmp_path / "out_masks.zip", archive_name(1)).astype(np.float64)
    assert np.abs(mask - _bilinear_halve(m[:, 4:20].astype(np.float64))).max() <= 1.0
    lanczos = tmp_path / "lanczos.zip"
    assert _run("convert", "--source", str(src), "--dest", str(lanczos), "--resolution", "8").exit_code == 0
    expected = np.asarray(PIL.Image.fromarray(a[:, 4:20]).resize((8, 8), PIL.Image.LANCZOS))
    assert np.array_equal(_zip_image(lanczos, archive_name(1)), expected)
    assert not (tmp_path / "lanczos_masks.zip").exists()


def test_convert_alpha_channel_becomes_masks(tmp_path):
    src = tmp_path / "rgba"
    src.mkdir()
    rgba = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    PIL.Image.fromarray(rgba, "RGBA").save(src / "x.png")
    label = np.eye(4).ravel().tolist() + [4.26, 0, 0.5, 0, 4.26, 0.5, 0, 0, 1]
    (src / "dataset.json").write_text(json.dumps({"labels": [["x.png", label]]}))
    r = _run("convert", "--source", str(src), "--dest", str(tmp_path / "o.zip"), "--resolution", "8")
    assert r.exit_code == 0, r.output
    assert np.array_equal(_zip_image(tmp_path / "o.zip", archive_name(0)), rgba[..., :3])
    assert np.array_equal(_zip_image(tmp_path / "o_masks.zip", archive_name(0)), rgba[..., 3])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", r"--source path '.*nowhere': expected a folder or a \.zip file"),
        ("no_labels", r"dataset\.json not found; convert needs the camera labels"),
        ("bad_label", r"the label of 'b\.jpg' must be 25"),
        ("orphan_mask", r"extra\.png: mask with no matching image"),
        ("no_images", r"no image files found"),
    ],
)
def test_convert_errors_name_the_problem(tmp_path, case, expected):
    src, masks, _, _ = _source_folder(tmp_path)
    args = ["convert", "--source", str(src), "--dest", str(tmp_path / "o.zip"), "--resolution", "8"]
    if case == "missing":
        args[2] = str(tmp_path / "nowhere")
    elif case == "no_labels":
        (src / "dataset.json").unlink()
    elif case == "bad_label":
        labels = json.loads((src / "dataset.json").read_text())
        labels["labels"][1][1] = labels["labels"][1][1][:24]
        (src / "dataset.json").write_text(json.dumps(labels))
    elif case == "orphan_mask":
        PIL.Image.new("L", (24, 16)).save(masks / "extra.png")
        args += ["--masks", str(masks)]
    elif case == "no_images":
        args[2] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert re.search("Error: .*" + expected, r.output), r.output
    assert not (tmp_path / "o.zip").exists()


def test_option_errors(tmp_path):
    r = CliRunner().invoke(cli, ["synthetic", "--dest", str(tmp_path / "h.zip"), "--resolution", "48"])
    assert r.exit_code == 2 and "power of two" in r.output
    r = CliRunner().invoke(cli, ["synthetic", "--dest", str(tmp_path / "h.tar"), "--count", "1"])
    assert r.exit_code == 1 and "--dest must be a .zip file" in r.output
    r = CliRunner().invoke(cli, ["info", "--source", str(tmp_path / "nothing.zip")])
    assert r.exit_code == 1 and "Error: --source path" in r.output and "Traceback" not in r.output


def test_synthetic_creates_missing_dest_folders(tmp_path):
    dest = tmp_path / "datasets" / "nested" / "heads.zip"  # as in the README's first command on a fresh checkout
    r = _run("synthetic", "--dest", str(dest), "--count", "2", "--resolution", "16")
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(dest) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 2
    assert (dest.parent / "heads_masks.zip").is_file()
    (tmp_path / "file").write_text("")
    r = CliRunner().invoke(cli, ["synthetic", "--dest", str(tmp_path / "file" / "h.zip"), "--count", "1"])
    assert r.exit_code != 0 and "is not a folder" in r.output
