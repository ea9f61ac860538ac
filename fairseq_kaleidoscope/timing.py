"""Timing helpers shared by the demo and the benchmarks: medians after warm-up."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], warmup: int = 3, repeat: int = 15, min_time: float = 0.0) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs.

    With ``min_time`` > 0, each timed sample loops ``fn`` enough times to last at least
    that long (for sub-microsecond calls) and reports the per-call time.
    """
    for _ in range(warmup):
        fn()
    inner = 1
    if min_time > 0:
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        inner = max(1, int(min_time / once))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """One line naming the CPU, torch version and intra-op thread count in use."""
    return f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def interleaved_medians(
    calls: dict[str, Callable[[], object]], min_time: float, max_rounds: int = 200, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each of ``calls``, measured side by side.

    The implementations take turns, in a new random order every round, so that neither load
    from other processes nor what ran just before (caches) favours one of them. At least 5
    rounds, then rounds until ``min_time`` seconds per implementation or ``max_rounds``.
    """
    import random

    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls.items())
    rng = random.Random(0)
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start < min_time * len(calls) and rounds < max_rounds):
        rng.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {k: statistics.median(v) for k, v in samples.items()}
