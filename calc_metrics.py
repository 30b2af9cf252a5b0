"""Compute quality metrics (FID, KID, precision/recall, fid3d, front/back FID) for a trained snapshot.

Examples:
    python calc_metrics.py --network runs/00000-gghead-ffhq512 --metrics fid50k_full,kid50k_full
    python calc_metrics.py --network runs/00001-panohead/network-snapshot-004000.safetensors \\
        --metrics fid50k_front,fid50k_back --data panohead.zip --mask-data panohead_masks.zip
    torchrun --nproc_per_node 4 calc_metrics.py --network runs/00000-gghead-ffhq512 --metrics fid50k_full

Each result is printed as one JSON line and appended to ``metric-<name>.jsonl`` next to the snapshot. The reals are
the snapshot's training data unless ``--data`` names another dataset. The Inception and VGG16 detectors are
downloaded once into the cache; offline, pass them with ``--detector-path`` (a file, or a folder holding
inception-2015-12-05.pt / vgg16.pt). ``--num-gen`` / ``--max-real`` override the sample counts for quick estimates
(recorded in the output; the numbers are then not comparable with published ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

import legacy
from dnnlib import UserError
from dnnlib.cli import reports_user_errors
from metrics.registry import METRICS, MetricOptions, calc_metric, check_metric_names, report_metric
from torch_utils import distributed


def parse_device(text: str | None) -> torch.device:
    """'cuda', 'cuda:1', 'cpu' or None (CUDA when available) → torch.device."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got '{text}'") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got '{text}'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA is not available on this machine; use --device cpu")
    return device


def run(options: dict) -> None:
    """Load the snapshot, compute every requested metric, print and record the results (rank 0)."""
    names = [n.strip() for n in options["metrics"].split(",") if n.strip()]
    if not names:
        raise UserError("--metrics: give at least one metric name")
    check_metric_names(names)
    if options["mask_data"] is not None and options["data"] is None:
        raise UserError("--mask-data: only with --data (without --data the snapshot's own masks are used)")
    device = parse_device(options["device"])
    distributed.init(device.type)
    if distributed.get_world_size() > 1:
        device = distributed.device()
    net = legacy.load_network(options["network"], device=device, which="G_ema")
    run_dir = Path(net.path).parent
    for name in names:
        opts = MetricOptions(G=net.G_ema, config=net.config, cur_nimg=int(net.metadata.get("cur_nimg", 0)),
                             data_path=options["data"], mask_path=options["mask_data"], device=device,
                             detector_path=options["detector_path"], num_gen=options["num_gen"],
                             max_real=options["max_real"], batch=options["batch"], workers=options["workers"],
                             seed=options["seed"], progress=distributed.is_main())
        result = calc_metric(name, opts)
        if result is not None:
            report_metric(result, run_dir, net.path)
            print(json.dumps({**result, "snapshot": net.path}), flush=True)


@click.command(context_settings=dict(max_content_width=120))
@click.option("--network", required=True,
              help="Run directory (newest snapshot), network-snapshot-*.safetensors, or an EG3D/PanoHead .pkl.")
@click.option("--metrics", default="fid50k_full", show_default=True,
              help=f"Comma-separated metric names: {', '.join(METRICS)}.")
@click.option("--data", help="Dataset zip or folder of the reals.  [default: the snapshot's training data]")
@click.option("--mask-data", help="Masks zip or folder for --data (same names as the images).")
@click.option("--detector-path", help="Local detector file, or folder with inception-2015-12-05.pt / vgg16.pt.")
@click.option("--device", help="cpu, cuda or cuda:N.  [default: cuda if available, else cpu]")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of latents and cameras.")
@click.option("--num-gen", type=click.IntRange(min=2), help="Override the number of generated images (quick runs).")
@click.option("--max-real", type=click.IntRange(min=2), help="Override the cap on real images (quick runs).")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1), help="Generated images per batch.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="DataLoader workers.")
@reports_user_errors
def main(**options) -> None:
    """Compute metrics for a trained snapshot (see the module docstring)."""
    run(options)


if __name__ == "__main__":
    main()
