"""Shared helpers for the benchmarks: the machine they ran on and careful timing."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}; {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; {gpu}; "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


def timed(fn, sync: bool = False) -> float:
    """Wall time (s) of one call; with ``sync`` the GPU's queued work is inside the interval."""
    if sync:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def best_time(fn, repeat: int = 5, warmup: int = 1, sync: bool = False) -> float:
    """Best of `repeat` wall-clock runs (s): the least disturbed by other load."""
    for _ in range(warmup):
        fn()
    return min(timed(fn, sync) for _ in range(repeat))
