"""Timing helpers shared by the demo and the benchmarks: medians after warm-up."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line of /proc/cpuinfo (None off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform.processor())."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# The instruction-set extensions the kernels (and torch's own CPU kernels) choose between.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16")


def cpu_isa_flags() -> list[str]:
    """The SIMD extensions of :data:`SIMD_FLAGS` this CPU reports, in that order (empty if unknown)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in SIMD_FLAGS if f in flags]


def machine_description() -> str:
    """One line naming the CPU, its SIMD flags, the K-matrix kernels' ISA, torch and the thread count."""
    parts = [cpu_name(), f"ISA {'+'.join(cpu_isa_flags()) or 'unknown'}"]
    try:
        from .kmatrix.cpu_kernel import get_cpu_kernel

        parts.append(f"kernels {get_cpu_kernel()[0]}")
    except RuntimeError:  # the compiled extension is not built
        parts.append("kernels: not built")
    parts += [f"torch {torch.__version__}", f"{torch.get_num_threads()} thread(s)"]
    return ", ".join(parts)


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
