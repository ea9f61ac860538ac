"""Kaleidoscope matrices in plain PyTorch plus compiled kernels; no fairseq needed."""

from .constructors import (
    bit_reversal_permutation,
    kaleidoscope_bit_reversal,
    kaleidoscope_dft,
    kaleidoscope_hadamard,
    kaleidoscope_identity,
    kaleidoscope_permutation,
)
from .fit import FitResult, fit
from .layer import KaleidoscopeLinear
from .ops import HAS_EXTENSION, butterfly_multiply, uses_compiled_kernel
from .param_groups import is_kmatrix_parameter, param_groups
from .parameter import TwiddleParameter
from .reference import butterfly_multiply_ref

__all__ = [
    "HAS_EXTENSION",
    "FitResult",
    "KaleidoscopeLinear",
    "TwiddleParameter",
    "bit_reversal_permutation",
    "butterfly_multiply",
    "butterfly_multiply_ref",
    "fit",
    "is_kmatrix_parameter",
    "kaleidoscope_bit_reversal",
    "kaleidoscope_dft",
    "kaleidoscope_hadamard",
    "kaleidoscope_identity",
    "kaleidoscope_permutation",
    "param_groups",
    "uses_compiled_kernel",
]
