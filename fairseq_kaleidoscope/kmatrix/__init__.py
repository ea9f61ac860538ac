"""Kaleidoscope matrices in plain PyTorch plus compiled kernels; no fairseq needed."""

from .layer import KaleidoscopeLinear
from .ops import HAS_EXTENSION, butterfly_multiply, uses_compiled_kernel
from .param_groups import is_kmatrix_parameter, param_groups
from .parameter import TwiddleParameter
from .reference import butterfly_multiply_ref

__all__ = [
    "HAS_EXTENSION",
    "KaleidoscopeLinear",
    "TwiddleParameter",
    "butterfly_multiply",
    "butterfly_multiply_ref",
    "is_kmatrix_parameter",
    "param_groups",
    "uses_compiled_kernel",
]

# Structured transforms: exact constructors and fitting (appended; see constructors.py, fit.py).
from .constructors import (
    bit_reversal_permutation,
    kaleidoscope_bit_reversal,
    kaleidoscope_dft,
    kaleidoscope_hadamard,
    kaleidoscope_identity,
    kaleidoscope_permutation,
)
from .fit import FitResult, fit

__all__ += [
    "FitResult",
    "bit_reversal_permutation",
    "fit",
    "kaleidoscope_bit_reversal",
    "kaleidoscope_dft",
    "kaleidoscope_hadamard",
    "kaleidoscope_identity",
    "kaleidoscope_permutation",
]
