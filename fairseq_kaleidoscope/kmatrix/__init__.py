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
