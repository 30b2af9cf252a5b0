"""What every benchmark script shares: timing, the one-JSON-line output format and the CPU's description."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch


def time_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls after one warm-up call (CUDA-synchronised)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def emit(what: str, config: dict, device: str, value: float, unit: str) -> None:
    """Print one measurement as a JSON line: {"what", "config", "device", "value", "unit"}."""
    record = {"what": what, "config": config, "device": device, "value": round(value, 3), "unit": unit}
    print(json.dumps(record), flush=True)


def cpu_name() -> str:
    """The CPU and torch's thread count, e.g. 'cpu: x86_64, 2 threads'."""
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def emit_peak_memory(config: dict, device: str, device_name: str) -> None:
    """Emit the peak GPU memory since the last reset (CUDA) or the process's peak resident set so far (CPU), in MiB."""
    if device == "cuda":
        emit("peak_gpu_memory", config, device_name, torch.cuda.max_memory_allocated() / 2**20, "MiB")
    else:
        emit("peak_rss_so_far", config, device_name, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB")
