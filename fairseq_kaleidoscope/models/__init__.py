"""fairseq architectures (registered on import): kaleidoscope_lightconv*, kaleidoscope_transformer*."""

from .. import compat
from . import kaleidoscope_lightconv, kaleidoscope_transformer

compat.install()

__all__ = ["kaleidoscope_lightconv", "kaleidoscope_transformer"]
