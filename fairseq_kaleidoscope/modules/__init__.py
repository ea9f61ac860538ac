"""fairseq-facing modules: dynamic convolution, LightConv layers, K-matrix layer selection."""

from .dynamic_convolution import DynamicConv, dynamic_conv_reference
from .kmatrix_layers import KMatrixOptions, make_linear, parse_kmatrix_layers

__all__ = ["DynamicConv", "KMatrixOptions", "dynamic_conv_reference", "make_linear", "parse_kmatrix_layers"]
