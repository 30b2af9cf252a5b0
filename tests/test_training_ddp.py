"""Two gloo processes with batch_gpu = batch / 2 reach the parameters of one process with the whole batch.

Oracle: the single-process run of the same config (its batch split into two accumulation chunks of batch_gpu). Each
chunk's data, latents and loss randomness depend only on (seed, cur_nimg, phase, global chunk index), so the two runs
compute the same per-chunk gradients; they differ only in how the two chunk gradients are summed (in place in one
process, all-reduced across two), i.e. by float32 rounding.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_training import run, small

from training import training_loop
from training.presets import TrainingConfig
from training.snapshot import find_latest_snapshot, load_network_snapshot, load_training_state
from training.synthetic import write_synthetic_dataset


def _worker(rank: int, port: int, config_json: str, run_dir: str) -> None:
    """One process of a 2-process torchrun-like launch (the environment torchrun would set)."""
    torch.set_num_threads(1)
    env = {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()})
    training_loop.training_loop(TrainingConfig.from_dict(json.loads(config_json)), run_dir, device_type="cpu")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    info = write_synthetic_dataset(tmp_path / "heads.zip", 16, 32, progress=False)
    config = small("eg3d-tiny", (Path(info["dest"]), Path(info["masks_dest"])), steps=2, batch=4, batch_gpu=2)
    single = run(config, tmp_path / "one")  # step 0 runs all four phases: Gmain, Greg, Dmain, Dreg

    (tmp_path / "two").mkdir()
    context = mp.spawn(_worker, args=(_free_port(), json.dumps(config.to_dict()), str(tmp_path / "two")), nprocs=2,
                       join=False)
    deadline = time.monotonic() + 180  # a mismatched collective would otherwise hang until gloo's timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 180 s")

    (net_one, state_one, _), (net_two, state_two, _) = (find_latest_snapshot(d) for d in (single, tmp_path / "two"))
    one, _, meta_one = load_network_snapshot(net_one)
    two, _, meta_two = load_network_snapshot(net_two)
    assert meta_one["cur_nimg"] == meta_two["cur_nimg"] == 8
    for module in ("G", "G_ema", "D"):
        assert one[module].keys() == two[module].keys()
        for name, value in one[module].items():
            if name.endswith("w_avg"):  # a running mean of each rank's own latents; rank 0's is saved
                continue
            # Rounding differs only in how two chunk gradients are added; Adam divides by sqrt(v) + eps, so where the
            # chunks nearly cancel (|g| << eps = 1e-8) an update can move by lr * (rounding of |g_chunk|) / eps, up to
            # ~1e-3 of lr = 0.002 per step (observed 2.9e-6 after 2 steps): 1e-5 is ~0.5% of one step.
            torch.testing.assert_close(two[module][name], value, rtol=0, atol=1e-5, msg=f"{module}.{name}")

    # Adam's moments (beta1 = 0: exp_avg is the last gradient itself) also check the gradient scale, which the
    # scale-invariant Adam steps would hide: the update uses the mean over the whole batch in both runs.
    opt_one, opt_two = (load_training_state(path)["optimizers"] for path in (state_one, state_two))
    for net in ("G", "D"):
        assert opt_one[net]["names"] == opt_two[net]["names"]
        for index, moments in opt_one[net]["state"]["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                scale = moments[key].abs().max().item()
                torch.testing.assert_close(opt_two[net]["state"]["state"][index][key], moments[key], rtol=1e-5,
                                           atol=1e-5 * scale, msg=f"{net} {opt_one[net]['names'][index]} {key}")
