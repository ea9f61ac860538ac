"""fairseq-kaleidoscope: K-matrix linear layers and the fairseq architectures using them.

``import fairseq_kaleidoscope`` needs only torch. This directory is also fairseq's
``--user-dir``: when fairseq has been imported (as it is by fairseq-train/-generate
before loading a user dir) the fairseq models are registered too.
"""

from .kmatrix import KaleidoscopeLinear, butterfly_multiply, param_groups

__all__ = ["KaleidoscopeLinear", "butterfly_multiply", "param_groups"]
__version__ = "0.1.0"

import sys

if "fairseq" in sys.modules:  # loaded as fairseq's --user-dir: register the architectures
    from . import models  # noqa: F401
