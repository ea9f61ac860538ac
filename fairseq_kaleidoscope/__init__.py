"""fairseq-kaleidoscope: K-matrix linear layers and the fairseq architectures using them.

``import fairseq_kaleidoscope`` needs only torch. This directory is also fairseq's
``--user-dir``: whenever fairseq is installed, importing the package registers the fairseq
models (and applies the ``compat`` fixes), whether or not fairseq was imported first.
"""

import importlib.util

from .kmatrix import KaleidoscopeLinear, butterfly_multiply, param_groups

__all__ = ["KaleidoscopeLinear", "butterfly_multiply", "param_groups"]
__version__ = "0.1.0"

if importlib.util.find_spec("fairseq") is not None:
    from ._root_logger import root_logger_untouched

    with root_logger_untouched():
        from . import models  # noqa: F401  (registers the architectures)
