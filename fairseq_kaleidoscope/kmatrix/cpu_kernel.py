"""Which compiled CPU kernel runs the butterfly multiply: inspect it, or force one.

By default the instruction set is the best the CPU supports (AVX-512, else AVX2+FMA on
x86-64; NEON on aarch64, float32; else portable C++) and the code path is chosen per call (batch-vectorised tiles, with
the pair-vectorised small-batch path for batches and remainders of a few rows). Tests
and benchmarks force each in turn; the setting is process-wide.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .ops import HAS_EXTENSION

ISAS = ("avx512", "avx2", "neon", "portable")
PATHS = ("tiles", "small")


def _require_extension() -> None:
    if not HAS_EXTENSION:
        raise RuntimeError("fairseq_kaleidoscope: the compiled extension is not built; no CPU kernel to select")


def supported_isas() -> list[str]:
    """Instruction sets this CPU can run, best first (``portable`` is always there)."""
    _require_extension()
    return torch.ops.kaleidoscope.get_cpu_kernel()[2].split(",")


def get_cpu_kernel() -> tuple[str, str]:
    """``(isa, path)``: the instruction set in use and the path setting (``auto`` if not forced)."""
    _require_extension()
    isa, path, _ = torch.ops.kaleidoscope.get_cpu_kernel()
    return isa, path


def set_cpu_kernel(isa: str = "auto", path: str = "auto") -> None:
    """Force an instruction set (``auto``, ``avx512``, ``avx2``, ``neon``, ``portable``) and a forward
    path (``auto``, ``tiles``, ``small``). Raises if the CPU lacks the instruction set."""
    _require_extension()
    torch.ops.kaleidoscope.set_cpu_kernel(isa, path)


@contextlib.contextmanager
def forced_cpu_kernel(isa: str = "auto", path: str = "auto") -> Iterator[None]:
    """Run the block with the given kernel, then restore the previous setting."""
    _require_extension()
    previous_isa, previous_path, supported = torch.ops.kaleidoscope.get_cpu_kernel()
    set_cpu_kernel(isa, path)
    try:
        yield
    finally:
        # The isa in use is reported, not the setting: the CPU's best one means "auto" (same kernels).
        set_cpu_kernel("auto" if previous_isa == supported.split(",")[0] else previous_isa, previous_path)
