"""In-the-wild alignment speed: MTCNN detection, landmarks → crop + camera label, and the warp, per photo.

The photo (``--photo``, default PanoHead's test photo in ../shared/fixtures when present) is resized so that its long
side is each of ``--sizes``; one JSON line per measurement: {"what", "config", "device", "value", "unit"}.

    python benchmarks/bench_inthewild.py [--photo face.jpg] [--sizes 563 1024 2048] [--threads 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_name, emit, time_ms  # noqa: E402
from training.inthewild.alignment import align_landmarks, border_for, warp_image  # noqa: E402
from training.inthewild.mtcnn import load_mtcnn  # noqa: E402
from training.inthewild.pipeline import MTCNN_TO_ALIGNMENT, choose_face, load_photo  # noqa: E402

DEFAULT_PHOTO = Path(__file__).resolve().parents[2] / "shared/fixtures/panohead_testdata/testdata_img/000134.jpg"


def measure(photo: np.ndarray, size: int, device: str, repeats: int) -> None:
    """Times detection, alignment (fit + label) and the 512² warp of ``photo`` resized to long side ``size``."""
    h, w = photo.shape[:2]
    scale = size / max(h, w)
    image = np.asarray(PIL.Image.fromarray(photo).resize((round(w * scale), round(h * scale)), PIL.Image.LANCZOS))
    detector = load_mtcnn(device)
    name = cpu_name() if device == "cpu" else torch.cuda.get_device_name()
    config = {"photo": f"{image.shape[1]}x{image.shape[0]}", "framing": "eg3d", "resolution": 512}
    with torch.no_grad():
        emit("detect", config, name, time_ms(lambda: detector.detect(image), device, repeats), "ms")
    landmarks = choose_face(detector.detect(image), "benchmark photo").landmarks + MTCNN_TO_ALIGNMENT
    emit("align_landmarks", config, name, time_ms(lambda: align_landmarks(landmarks), "cpu", repeats), "ms")
    matrix = align_landmarks(landmarks).matrix
    warp = time_ms(lambda: warp_image(image, matrix, 512, border_for("eg3d")), "cpu", repeats)
    emit("warp_image", config, name, warp, "ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="A portrait photo with one face.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[563, 1024, 2048], help="Long sides to resize to.")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (CPU).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.photo.is_file():
        parser.error(f"--photo: '{args.photo}' not found")
    photo = load_photo(args.photo.read_bytes(), str(args.photo))
    for threads in args.threads if args.device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for size in args.sizes:
            measure(photo, size, args.device, args.repeats)


if __name__ == "__main__":
    main()
