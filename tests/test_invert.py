"""Inversion (training/inversion.py, invert.py) on tiny untrained models with a stand-in LPIPS network: known ws are
recovered (PSNR bounds, PTI improves, w+ fits at least as well as w), schedules and camera refinement against closed
forms and lookat cameras, the CLI end to end (projected_w.npz re-rendered through the saved snapshot gives proj.png),
and one-line errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import gen_videos
import invert
import legacy
from training import inversion
from training.presets import PRESETS, build_networks
from training.snapshot import save_network_snapshot
from training.views import view_labels

pytest.importorskip("imageio_ffmpeg")

PIVOT = (0.0, 0.0, 0.2)


class StandInLPIPS(torch.nn.Module):
    """Stand-in for NVIDIA's vgg16.pt with its LPIPS call: 4×4-pooled colours of [0, 255] images, unit-normalised."""

    def forward(self, images: torch.Tensor, resize_images: bool = False, return_lpips: bool = True) -> torch.Tensor:
        x = F.avg_pool2d(images / 255.0, 4).flatten(1)
        return x / x.square().sum(dim=1, keepdim=True).sqrt()


@pytest.fixture(scope="module")
def lpips() -> inversion.PerceptualDistance:
    return inversion.PerceptualDistance(StandInLPIPS())


@pytest.fixture(scope="module")
def generators() -> dict:
    """Untrained tiny generators (eval, frozen) with their synthesis keyword arguments."""
    out = {}
    for name in ("gghead-tiny", "panohead-tiny"):
        torch.manual_seed(0)
        config = PRESETS[name]
        G = build_networks(config, "cpu")[0].eval().requires_grad_(False)
        out[name] = (G, gen_videos.inference_render_kwargs(config, 0))
    return out


def _known_target(G, kwargs, c, mix=False):
    """Image of the ws of fixed z (ψ = 0.5 keeps the untrained tiny models' colours mostly inside [-1, 1]); with
    ``mix`` the first half of the layers take one z's w and the rest another's (a w+ target that no single w
    gives). Volumetric heads render with the mean camera offset the inversion assumes."""
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(123))
    ws = G.mapping(z, c.expand(2, -1), truncation_psi=0.5)
    half = G.num_ws // 2
    ws = torch.cat([ws[:1, :half], ws[1 if mix else 0:][:1, half:]], dim=1)
    offset = inversion.latent_statistics(G, c, 500, 0)[2]
    with torch.no_grad():
        return inversion.synthesize(G, ws, c, offset, kwargs)


def _invert(G, kwargs, lpips, space, steps=40, pti_steps=20, mix=False):
    """PSNRs (dB) of the w_avg start, the stage-1 result and the PTI result (None without PTI) against the target."""
    c = view_labels([(0.0, 0.0)], PIVOT)
    target = _known_target(G, kwargs, c, mix)
    options = inversion.InversionOptions(space=space, steps=steps, pti_steps=pti_steps, w_avg_samples=500,
                                         pti_lr=1e-3, record_every=steps)
    result = inversion.project(G, target, c, lpips, options, PIVOT, synthesis_kwargs=kwargs)
    params = {k: v.clone() for k, v in G.state_dict().items()}
    tuned = inversion.pivotal_tuning(G, result, target, lpips, options, synthesis_kwargs=kwargs)
    G.load_state_dict(params)  # the module-scoped generator stays untuned for the next test
    with torch.no_grad():
        w_avg = inversion.latent_statistics(G, c, 500, 0)[0][:, None].expand(-1, G.num_ws, -1)
        start = inversion.synthesize(G, w_avg, c, result.offset, kwargs)
    after = inversion.psnr(tuned[-1], target) if tuned else None
    return inversion.psnr(start, target), inversion.psnr(result.frames[-1], target), after


# Measured (40 w steps + 20 PTI steps, seed 0): gghead-tiny 12.0 → 22.6 → 26.8 dB; panohead-tiny 7.6 → 18.2 → 22.0 dB.
@pytest.mark.parametrize("name, bound", [("gghead-tiny", 18.0), ("panohead-tiny", 15.0)])
def test_known_w_is_recovered_and_pti_improves(generators, lpips, name, bound):
    G, kwargs = generators[name]
    start, before, after = _invert(G, kwargs, lpips, "w")
    assert before > bound and before > start + 5
    assert after > before + 2


def test_pixel_loss_alone_recovers_the_known_w(generators):
    """--no-lpips: with the perceptual term off the MSE alone still moves w toward the target (measured gghead-tiny
    13.0 -> 23.1 dB after 40 steps, 28.2 after 20 more of PTI)."""
    G, kwargs = generators["gghead-tiny"]
    start, before, _ = _invert(G, kwargs, inversion.pixels_only(), "w", pti_steps=0)
    assert before > start + 5


def test_wplus_fits_at_least_as_well_as_w(generators, lpips):
    G, kwargs = generators["panohead-tiny"]
    psnr_w = _invert(G, kwargs, lpips, "w", steps=100, pti_steps=0, mix=True)[1]
    psnr_wplus = _invert(G, kwargs, lpips, "wplus", steps=100, pti_steps=0, mix=True)[1]
    assert psnr_wplus >= psnr_w  # measured 21.9 vs 20.6 dB on this style-mixed target


def test_locality_regulariser_keeps_nearby_latents(generators, lpips):
    """PTI with the locality term changes the renders of the locality latents less than PTI without it."""
    G, kwargs = generators["panohead-tiny"]
    c = view_labels([(0.0, 0.0)], PIVOT)
    target = _known_target(G, kwargs, c)
    base = dict(steps=10, pti_steps=20, w_avg_samples=200, pti_lr=1e-4, locality_alpha=1.0)
    result = inversion.project(G, target, c, lpips, inversion.InversionOptions(**base), PIVOT, synthesis_kwargs=kwargs)
    params = {k: v.clone() for k, v in G.state_dict().items()}
    drift = []
    for weight in (0.0, 10.0):
        options = inversion.InversionOptions(**base, locality_weight=weight)
        w_r, before = inversion._locality_set(G, result, options, kwargs)
        inversion.pivotal_tuning(G, result, target, lpips, options, synthesis_kwargs=kwargs)
        with torch.no_grad():
            offset = result.offset.expand(len(w_r), -1)
            after = inversion.synthesize(G, w_r, c.expand(len(w_r), -1), offset, kwargs)
        drift.append(float((after - before).square().mean()))
        G.load_state_dict(params)
    assert drift[1] < 0.5 * drift[0], drift  # measured 0.0078 vs 0.41


def test_mask_ignores_the_outside(lpips):
    gen = torch.Generator().manual_seed(1)
    synth, target = torch.rand(2, 1, 3, 16, 16, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    other = torch.where(mask > 0, target, -target)  # differs from target only outside the mask
    losses = [inversion.image_losses(synth, t * mask, lpips.features(t * mask), lpips, mask, 0.1)
              for t in (target, other)]
    assert torch.equal(losses[0], losses[1])


def test_same_seed_same_result(generators, lpips):
    G, kwargs = generators["panohead-tiny"]
    c = view_labels([(0.0, 0.0)], PIVOT)
    target = _known_target(G, kwargs, c)
    options = inversion.InversionOptions(steps=3, w_avg_samples=100, seed=5)
    a, b = (inversion.project(G, target, c, lpips, options, PIVOT, synthesis_kwargs=kwargs).ws for _ in range(2))
    assert torch.equal(a, b)


def test_perceptual_distance_against_direct_features(lpips):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    net = StandInLPIPS()
    expected = (net((a + 1) * 127.5) - net((b + 1) * 127.5)).square().sum(dim=1)
    torch.testing.assert_close(lpips(a, lpips.features(b)), expected, rtol=1e-6, atol=1e-7)
    big = torch.rand(1, 3, 512, 512, generator=gen) * 2 - 1  # area-downsampled to 256² = mean of 2×2 blocks
    torch.testing.assert_close(lpips.features(big), net((F.avg_pool2d(big, 2) + 1) * 127.5), rtol=1e-5, atol=1e-6)


def test_learning_rate_schedule_closed_form():
    f = inversion.learning_rate_factor
    assert f(0.0, 0.05, 0.25) == 0.0
    assert f(0.025, 0.05, 0.25) == pytest.approx(0.5, abs=1e-12)  # half-way up the linear warm-up
    assert f(0.5, 0.05, 0.25) == pytest.approx(1.0, abs=1e-12)
    assert f(0.875, 0.05, 0.25) == pytest.approx(0.5, abs=1e-12)  # cosine half-way down: 0.5 − 0.5·cos(π/2)
    assert f(1.0, 0.05, 0.25) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("correction, view", [((0.1, 0.0), (10 + math.degrees(0.1), 5)),
                                               ((0.0, 0.1), (10, 5 + math.degrees(0.1))),
                                               ((-0.2, -0.05), (10 - math.degrees(0.2), 5 - math.degrees(0.05)))])
def test_camera_refinement_matches_lookat_cameras(correction, view):
    c = view_labels([(10, 5)], PIVOT).double()
    shift = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64)
    refined = inversion.refine_camera(c, torch.tensor([*correction, *shift], dtype=torch.float64), PIVOT)
    expected = view_labels([view], PIVOT).double()  # float32 cameras: 1e-6
    expected[0, [3, 7, 11]] += shift
    torch.testing.assert_close(refined, expected, rtol=0, atol=1e-6)
    correction = torch.tensor([0.05, -0.03, 0.01, 0.02, -0.01], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: inversion.refine_camera(c, x, PIVOT), (correction,))


def test_psnr_closed_form():
    a = torch.zeros(1, 3, 4, 4)
    assert inversion.psnr(a, a + 0.25) == pytest.approx(10 * math.log10(4 / 0.0625), abs=1e-12)
    assert inversion.psnr(a, a + 5) == pytest.approx(10 * math.log10(4 / 1), abs=1e-12)  # clamped to [-1, 1]


# ---------------------------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory) -> dict:
    """A tiny panohead snapshot, a scripted stand-in vgg16.pt, a target photo (non-square) with dataset.json."""
    root = tmp_path_factory.mktemp("invert")
    torch.manual_seed(0)
    config = PRESETS["panohead-tiny"]
    G, D = build_networks(config, "cpu")
    network = root / "network-snapshot-000000.safetensors"
    save_network_snapshot(network, {"G": G, "G_ema": G, "D": D}, config.to_dict(), {"kimg": 0, "cur_nimg": 0})
    vgg = root / "vgg16.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated, but vgg16.pt ships in it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(StandInLPIPS()).save(str(vgg))
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos / "face.png")
    label = view_labels([(10.0, 0.0)], PIVOT)[0].tolist()
    (photos / "dataset.json").write_text(json.dumps({"labels": [["face.png", label]]}))
    return dict(root=root, network=network, vgg=vgg, photos=photos, label=label)


def _run(*args: str):
    return CliRunner().invoke(invert.main, list(args))


def test_cli_end_to_end(cli_setup, tmp_path):
    s = cli_setup
    result = _run("--network", str(s["network"]), "--target", str(s["photos"] / "face.png"), "--camera-from",
                  str(s["photos"] / "dataset.json"), "--outdir", str(tmp_path), "--steps", "4", "--pti-steps", "3",
                  "--optimize-camera", "--locality", "1", "--vgg-path", str(s["vgg"]), "--orbit-frames", "2")
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output
    for name in ("target.png", "proj.png", "proj-w.png", "proj.mp4", "orbit.mp4", invert.SNAPSHOT_NAME):
        assert (tmp_path / name).is_file(), name
    assert np.asarray(Image.open(tmp_path / "target.png")).shape == (64, 64, 3)
    saved = np.load(tmp_path / "projected_w.npz")
    net = legacy.load_network(tmp_path / invert.SNAPSHOT_NAME)
    G = net.G_ema
    assert saved["w"].shape == (1, G.num_ws, G.w_dim) and saved["camera_offset"].shape == (1, 3)
    assert not np.allclose(saved["c"][0], s["label"])  # the camera was refined
    with torch.no_grad():
        image = inversion.synthesize(G, torch.from_numpy(saved["w"]), torch.from_numpy(saved["c"]),
                                     torch.from_numpy(saved["camera_offset"]),
                                     gen_videos.inference_render_kwargs(net.config, 0))
    rerender = (image[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(rerender - np.asarray(Image.open(tmp_path / "proj.png")).astype(int)).max() <= 1  # rounding


def test_cli_panohead_photos(cli_setup, shared_fixtures, tmp_path):
    """PanoHead's test photos (folder + dataset.json + --idx, and file + --camera-from, with their masks)."""
    s, data = cli_setup, shared_fixtures / "panohead_testdata"
    common = ("--network", str(s["network"]), "--steps", "2", "--pti-steps", "1", "--orbit-frames", "1",
              "--vgg-path", str(s["vgg"]))
    first = _run(*common, "--target", str(data / "testdata_img"), "--idx", "1", "--mask",
                 str(data / "testdata_seg" / "000157.png"), "--outdir", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    second = _run(*common, "--target", str(data / "testdata_img" / "000134.jpg"), "--camera-from",
                  str(data / "testdata_img" / "dataset.json"), "--outdir", str(tmp_path / "b"))
    assert second.exit_code == 0, second.output
    labels = json.loads((data / "testdata_img" / "dataset.json").read_text())["labels"]
    saved = np.load(tmp_path / "b" / "projected_w.npz")["c"][0]
    expected = next(np.array(v, dtype=np.float32) for n, v in labels if n == "000134.jpg")
    np.testing.assert_array_equal(saved, expected)  # without --optimize-camera the dataset camera is used as is


def test_load_image_stands_the_photo_upright(tmp_path):
    """A target stored sideways with EXIF orientation 6 is turned 90 deg clockwise before the centre crop."""
    raw = np.random.default_rng(1).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "sideways.png", exif=exif)
    upright = np.rot90(raw, k=-1)[2:10]  # 12 x 8 after turning; the centred 8 x 8 square
    loaded = invert.load_image(tmp_path / "sideways.png", 8)
    np.testing.assert_allclose(((loaded[0].permute(1, 2, 0) + 1) * 127.5).numpy(), upright, atol=1e-3)


def test_cli_align_photo(cli_setup, shared_fixtures, tmp_path):
    """--align: the photo is cropped and labelled offline, the estimate is the camera used (no --optimize-camera),
    and it is within 10 deg of PanoHead's label for the photo."""
    s, data = cli_setup, shared_fixtures / "panohead_testdata"
    result = _run("--network", str(s["network"]), "--target", str(data / "testdata_img" / "000157.jpg"), "--align",
                  "--mask", str(data / "testdata_seg" / "000157.png"), "--outdir", str(tmp_path), "--steps", "2",
                  "--pti-steps", "1", "--orbit-frames", "1", "--vgg-path", str(s["vgg"]))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "alignment.json").read_text())
    assert record["framing"] == "panohead"  # panohead-tiny trains on 360-degree cameras
    assert np.asarray(Image.open(tmp_path / "aligned.png")).shape == (512, 512, 3)
    assert np.asarray(Image.open(tmp_path / "aligned_mask.png")).shape == (512, 512)
    photo = np.asarray(Image.open(data / "testdata_img" / "000157.jpg").convert("RGB")).astype(int)
    pasted = np.asarray(Image.open(tmp_path / "proj_in_photo.png")).astype(int)
    assert pasted.shape == photo.shape and np.abs(pasted - photo)[200:360, 200:360].mean() > 20  # the face replaced
    saved = np.load(tmp_path / "projected_w.npz")["c"][0]
    np.testing.assert_array_equal(saved, np.float32(record["label"]))
    labels = dict(json.loads((data / "testdata_img" / "dataset.json").read_text())["labels"])
    expected = np.array([float(v) for v in labels["000157.jpg"]]).reshape(-1)[:16].reshape(4, 4)[:3, :3]
    got = saved[:16].reshape(4, 4)[:3, :3].astype(np.float64)
    assert np.degrees(np.arccos(np.clip((np.trace(expected.T @ got) - 1) / 2, -1, 1))) < 10.0


@pytest.mark.parametrize("extra, message", [
    (("--align", "--yaw", "1", "--pitch", "2"), "--align estimates the camera"),
    (("--no-lpips", "--yaw", "1", "--pitch", "2"), "--no-lpips and --vgg-path exclude each other"),
    (("--framing", "eg3d"), "need --align"),
])
def test_cli_align_option_errors(cli_setup, tmp_path, extra, message):
    s = cli_setup
    result = _run("--network", str(s["network"]), "--target", str(s["photos"] / "face.png"), "--outdir",
                  str(tmp_path), "--steps", "1", "--vgg-path", str(s["vgg"]), *extra)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("extra, message", [
    ((), "no camera"),
    (("--yaw", "10"), "--yaw and --pitch go together"),
    (("--camera-from", "missing.json"), "--camera-from"),
    (("--yaw", "1", "--pitch", "2", "--vgg-path", "nowhere.pt"), "--vgg-path"),
])
def test_cli_errors(cli_setup, tmp_path, extra, message):
    s = cli_setup
    result = _run("--network", str(s["network"]), "--target", str(s["photos"] / "face.png"), "--outdir",
                  str(tmp_path), "--steps", "1", "--vgg-path", str(s["vgg"]), *extra)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_folder_target_errors(cli_setup, tmp_path):
    s = cli_setup
    base = ("--network", str(s["network"]), "--target", str(s["photos"]), "--outdir", str(tmp_path),
            "--vgg-path", str(s["vgg"]))
    assert "--idx" in _run(*base).output
    assert "--idx 3" in _run(*base, "--idx", "3").output
    assert "neither an image file" in _run(*base[:2], "--target", str(tmp_path / "x.png"), *base[4:]).output
