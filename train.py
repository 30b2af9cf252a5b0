"""Train a 3D-aware head GAN: a preset (``--cfg``), a dataset (``--data``), a few overrides.

  python train.py --outdir=runs --cfg=gghead-tiny --data=synthetic --kimg=20
  python train.py --outdir=runs --cfg=panohead --data=ffhq512.zip --mask-data=ffhq512_masks.zip --batch=32
  torchrun --nproc_per_node=8 train.py --outdir=runs --cfg=eg3d-ffhq512 --data=ffhq512.zip
  python train.py --outdir=runs --resume=runs/00003-gghead-tiny-synthetic-gpus1-batch4 --kimg=40

Each run writes to ``<outdir>/<index>-<cfg>-<data>-gpus<G>-batch<B>`` (the next free five-digit index).
``--data=synthetic`` renders the built-in synthetic-heads dataset at the preset's resolution once and caches it as
``<outdir>/datasets/synthetic-<cameras>-<resolution>-<count>.zip`` (+ ``_masks.zip``); later runs reuse it.
``--resume`` takes a run directory (its newest snapshot) or a ``network-snapshot-*.safetensors`` file; the run
continues from the snapshot's configuration, with the options given here applied on top. ``--dry-run`` prints the
resolved configuration as JSON and exits. Problems are reported in one line without a traceback (exit status 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import click

from dnnlib import UserError
from dnnlib.cli import reports_user_errors
from metrics.registry import METRICS, load_detectors
from torch_utils import distributed
from training.presets import PRESETS, TrainingConfig, get_preset
from training.snapshot import find_latest_snapshot, load_network_snapshot

KNOWN_METRICS: tuple[str, ...] = tuple(METRICS)  # metrics.registry
SYNTHETIC = "synthetic"
_RUN_DIR = re.compile(r"(\d{5})-")

# CLI option -> dotted TrainingConfig field it sets (None values are left alone).
# --batch and --batch-gpu are applied together by ``apply_overrides``.
OVERRIDES = {
    "kimg": "schedule.kimg",
    "tick": "schedule.tick_kimg",
    "snap": "schedule.snap",
    "image_snap": "schedule.image_snapshot_ticks",
    "ema_kimg": "schedule.ema_kimg",
    "aug": "schedule.augment",
    "target": "schedule.ada_target",
    "gamma": "loss.r1_gamma",
    "gamma_mask": "loss.r1_gamma_mask",
    "gpc": "loss.gpc_prob",
    "blur_fade_kimg": "loss.blur_fade_kimg",
    "density_reg": "loss.density_reg",
    "glr": "optim.g_lr",
    "dlr": "optim.d_lr",
    "mirror": "data.xflip",
    "workers": "data.workers",
    "seed": "seed",
    "template": "generator.template",
    "template_transform": "generator.template_transform",
    "trigrid_depth": "generator.trigrid_depth",
    "trigrid_res": "generator.trigrid_resolution",
    "nrr": "schedule.neural_rendering_resolution_initial",
    "nrr_final": "schedule.neural_rendering_resolution_final",
}


def parse_metrics(text: str) -> tuple[str, ...]:
    """'none' -> (); 'a,b' -> ('a', 'b') after checking each name against KNOWN_METRICS."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in KNOWN_METRICS]
    if unknown:
        known = ", ".join(KNOWN_METRICS) or "none are available in this version yet"
        raise UserError(f"--metrics: unknown metric(s) {unknown}; known metrics: {known}; use --metrics=none")
    return names


def parse_set(item: str) -> tuple[str, object]:
    """'loss.r1_gamma=2' -> ('loss.r1_gamma', 2): a dotted field path and a JSON value (bare words are strings)."""
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise UserError(f"--set {item!r}: expected FIELD.PATH=VALUE, e.g. --set loss.r1_gamma=2")
    try:
        return path.strip(), json.loads(text)
    except json.JSONDecodeError:
        return path.strip(), text


def apply_overrides(config: TrainingConfig, options: dict, sets: tuple[str, ...]) -> TrainingConfig:
    """``config`` with the CLI overrides (--batch/--batch-gpu, the ``OVERRIDES`` options that were given, then
    ``--set`` items) applied. --batch alone keeps the preset's batch_gpu unless a process would get fewer images."""
    batch, batch_gpu = options.get("batch"), options.get("batch_gpu")
    if batch is not None or batch_gpu is not None:
        s = config.schedule
        batch = s.batch if batch is None else batch
        if batch_gpu is None:
            batch_gpu = max(min(s.batch_gpu, batch // distributed.get_world_size()), 1)
        config = config.replace("schedule", dataclasses.replace(s, batch=batch, batch_gpu=batch_gpu))
    for option, path in OVERRIDES.items():
        value = options.get(option)
        if value is None:
            continue
        try:
            config = config.replace(path, value)
        except UserError as error:
            raise UserError(f"--{option.replace('_', '-')}: {error}") from None
    for item in sets:
        config = config.replace(*parse_set(item))
    return config


def data_name(path: str) -> str:
    """Short dataset name for the run directory: the file or folder name without extension."""
    return SYNTHETIC if path == SYNTHETIC else Path(path.rstrip("/\\")).stem


def next_run_dir(outdir: str | os.PathLike, cfg: str, data: str, gpus: int, batch: int) -> Path:
    """``<outdir>/<index>-<cfg>-<data>-gpus<gpus>-batch<batch>`` with index one above the highest in ``outdir``."""
    outdir = Path(outdir)
    taken = [int(m.group(1)) for p in (outdir.iterdir() if outdir.is_dir() else []) if (m := _RUN_DIR.match(p.name))]
    index = max(taken, default=-1) + 1
    return outdir / f"{index:05d}-{cfg}-{data}-gpus{gpus}-batch{batch}"


def synthetic_paths(outdir: str | os.PathLike, cameras: str, resolution: int, count: int) -> tuple[Path, Path]:
    """Cache location of the synthetic dataset (images zip, masks zip) for these settings."""
    images = Path(outdir) / "datasets" / f"synthetic-{cameras}-{resolution}-{count}.zip"
    return images, images.with_name(images.stem + "_masks.zip")


def resolve_data(config: TrainingConfig, data: str | None, mask_data: str | None, outdir: str, cameras: str,
                 count: int) -> tuple[TrainingConfig, tuple[Path, Path] | None]:
    """Set ``data.path`` / ``data.mask_path`` from the options; returns the config and, for --data=synthetic, the
    (images, masks) paths the dataset must be written to when absent."""
    if data is not None:
        config = config.replace("data.path", data)
        config = config.replace("data.mask_path", mask_data)
    elif mask_data is not None:
        config = config.replace("data.mask_path", mask_data)
    if config.data.path is None:
        raise UserError("--data: required (a dataset zip or folder, or 'synthetic')")
    to_build = None
    if config.data.path == SYNTHETIC:
        to_build = synthetic_paths(outdir, cameras, config.data.resolution, count)
        config = config.replace("data.path", str(to_build[0]))
        if config.data.mask_path is None:
            config = config.replace("data.mask_path", str(to_build[1]))
    for option, path in (("--data", config.data.path), ("--mask-data", config.data.mask_path)):
        if path is not None and to_build is None and not os.path.exists(path):
            raise UserError(f"{option}: '{path}' does not exist")
    return config, to_build


def base_config(cfg: str | None, resume: str | None) -> tuple[TrainingConfig, str | None]:
    """The preset, or with --resume the snapshot's own config; also the network snapshot to resume from."""
    if resume is None:
        if cfg is None:
            raise UserError(f"--cfg: required (one of {sorted(PRESETS)}) unless --resume is given")
        return get_preset(cfg), None
    if cfg is not None:
        raise UserError("--cfg and --resume exclude each other: a resumed run keeps its snapshot's configuration "
                        "(change single fields with the override options or --set)")
    path = Path(resume)
    if path.is_dir():
        path = find_latest_snapshot(path)[0]
    _, config_dict, _ = load_network_snapshot(path)
    try:
        return TrainingConfig.from_dict(config_dict), str(path)
    except UserError as error:
        raise UserError(f"--resume '{path}': its config does not fit this code: {error}") from None


def _cameras_for(cfg: str | None, config: TrainingConfig) -> str:
    """Synthetic camera distribution: all around for PanoHead-style presets, frontal (FFHQ-like) otherwise."""
    return "360" if (cfg or "").startswith("panohead") or config.data.back_repeat > 1 else "ffhq"


def _build_synthetic(paths: tuple[Path, Path], config: TrainingConfig, cameras: str, count: int) -> None:
    """Render the synthetic dataset into ``paths`` unless both files exist (rank 0 only; the others wait)."""
    from training.synthetic import write_synthetic_dataset

    if distributed.is_main() and not all(p.is_file() for p in paths):
        print(f"Rendering the synthetic dataset ({count} heads, {config.data.resolution}px, cameras '{cameras}') "
              f"to {paths[0]} ...", file=sys.stderr)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_dataset(paths[0], count, config.data.resolution, cameras, seed=0, masks_dest=paths[1])
    distributed.barrier()


def _check_batch(config: TrainingConfig) -> None:
    world, s = distributed.get_world_size(), config.schedule
    if s.batch % (world * s.batch_gpu):
        raise UserError(f"--batch ({s.batch}) must be a multiple of the number of processes ({world}) times "
                        f"--batch-gpu ({s.batch_gpu}); e.g. --batch-gpu={max(s.batch // world, 1)} or "
                        f"--batch={world * s.batch_gpu}")


def run(options: dict) -> None:
    """Everything ``main`` does, raising UserError for the user's mistakes."""
    distributed.init()
    config, resume = base_config(options["cfg"], options["resume"])
    if options["metrics"] is not None:
        config = config.replace("schedule.metrics", list(parse_metrics(options["metrics"])))
    config = apply_overrides(config, options, options["sets"])
    cameras = options["synthetic_cameras"]
    cameras = _cameras_for(options["cfg"], config) if cameras == "auto" else cameras
    config, to_build = resolve_data(config, options["data"], options["mask_data"], options["outdir"], cameras,
                                    options["synthetic_count"])
    _check_batch(config)
    if options["dry_run"]:
        distributed.print0(config.to_json())
        return
    load_detectors(config.schedule.metrics, distributed.device())  # offline without --metrics=none: fail here
    if to_build is not None:
        _build_synthetic(to_build, config, cameras, options["synthetic_count"])
    name = SYNTHETIC if to_build is not None else data_name(config.data.path)
    run_dir = next_run_dir(options["outdir"], options["cfg"] or "resume", name, distributed.get_world_size(),
                           config.schedule.batch)
    distributed.barrier()  # every rank has picked the same name before rank 0 creates it
    if distributed.is_main():
        run_dir.mkdir(parents=True)
        (run_dir / "training_options.json").write_text(config.to_json() + "\n")
        print(f"Run directory: {run_dir}", file=sys.stderr)
    distributed.barrier()
    from training.training_loop import training_loop

    training_loop(config, str(run_dir), resume=resume)


@click.command(context_settings=dict(max_content_width=120))
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="Where run directories are made.")
@click.option("--cfg", type=click.Choice(sorted(PRESETS)), help="Preset (required unless --resume).")
@click.option("--data", help="Dataset zip or folder, or 'synthetic'.  [default: with --resume, the run's]")
@click.option("--mask-data", help="Masks zip or folder (same names as the images).")
@click.option("--resume", help="Run directory or network-snapshot-*.safetensors to continue from.")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size.  [default: preset]")
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Batch per process and accumulation round.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), help="Training length in thousands of images.")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), help="kimg per progress line.")
@click.option("--snap", type=click.IntRange(min=1), help="Ticks per network snapshot.")
@click.option("--image-snap", type=click.IntRange(min=1), help="Ticks per fakes grid.")
@click.option("--metrics", help="Comma-separated metrics per snapshot, or 'none'.  [default: preset]")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed.  [default: preset (0)]")
@click.option("--gamma", type=click.FloatRange(min=0), help="R1 weight of the image (and raw image) group.")
@click.option("--gamma-mask", type=click.FloatRange(min=0), help="R1 weight of the mask group.")
@click.option("--glr", type=click.FloatRange(min=0, min_open=True), help="G learning rate.")
@click.option("--dlr", type=click.FloatRange(min=0, min_open=True), help="D learning rate.")
@click.option("--gpc", type=click.FloatRange(0, 1), help="Final generator-pose-conditioning swap probability.")
@click.option("--blur-fade-kimg", type=click.FloatRange(min=0), help="kimg over which the D-input blur fades.")
@click.option("--density-reg", type=click.FloatRange(min=0), help="Density regularisation weight (volumetric).")
@click.option("--ema-kimg", type=click.FloatRange(min=0, min_open=True), help="G_ema half-life in kimg.")
@click.option("--aug", type=click.Choice(["noaug", "ada", "fixed"]), help="Augmentation mode.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="ADA target.")
@click.option("--mirror", type=bool, help="xflip the dataset (labels mirrored).")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--template", help="Gaussian heads: 'procedural' or an .obj template with UVs.")
@click.option("--template-transform", help="Gaussian heads: named transform of the OBJ template (flame_to_eg3d).")
@click.option("--trigrid-depth", type=click.IntRange(min=1), help="Volumetric heads: tri-grid depth D (1: tri-plane).")
@click.option("--trigrid-res", type=click.IntRange(min=4), help="Volumetric heads: tri-grid resolution.")
@click.option("--nrr", type=click.IntRange(min=1), help="Volumetric heads: initial neural rendering resolution.")
@click.option("--nrr-final", type=click.IntRange(min=1), help="Volumetric heads: final neural rendering resolution.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Set any config field, e.g. --set loss.uv_tv_reg=50 (JSON value; repeatable).")
@click.option("--synthetic-count", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Heads in the synthetic dataset.")
@click.option("--synthetic-cameras", default="auto", show_default=True, type=click.Choice(["auto", "ffhq", "360"]),
              help="Synthetic camera distribution (auto: 360 for PanoHead presets, else ffhq).")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration as JSON and exit.")
@reports_user_errors
def main(**options) -> None:
    """Train a Gaussian or volumetric head GAN (see the module docstring and docs/training.md)."""
    run(options)


if __name__ == "__main__":
    main()
