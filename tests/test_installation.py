"""The installation CI relies on: fairseq importable, every compiled op present with its CPU kernel.

Without these, a missing fairseq would turn the fairseq test files into skips and a broken build
would turn the kernel tests into skips, and CI would stay green.
"""

import torch

COMPILED_OPS = ("butterfly_multiply", "butterfly_multiply_backward", "kmatrix_linear", "dynconv_step")


def test_fairseq_imports() -> None:
    import fairseq

    import fairseq_kaleidoscope.models  # noqa: F401  (registers the architectures)

    assert fairseq.__version__


def test_every_compiled_op_has_its_cpu_kernel() -> None:
    from fairseq_kaleidoscope.kmatrix.ops import HAS_EXTENSION

    assert HAS_EXTENSION, "the compiled extension fairseq_kaleidoscope._C is not built"
    for op in COMPILED_OPS:
        name = f"kaleidoscope::{op}"
        # "computed": a CompositeExplicitAutograd kernel (kmatrix_linear) counts as the CPU one.
        assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(name, "CPU"), f"{name} has no CPU kernel"
