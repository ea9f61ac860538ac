"""Switch between the lean decoding step and the generic (training-path) step.

The decoder layers and the dynamic convolution take a lean path for single-token decoding
steps in eval mode (see ``LightConvDecoderLayer._decode_step``). It is on by default;
``generic_decoding()`` turns it off, so that tests and benchmarks can compare the two paths
on the same model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_enabled = True


def fast_decoding_enabled() -> bool:
    """Whether decoding steps take the lean path."""
    return _enabled


@contextmanager
def generic_decoding() -> Iterator[None]:
    """Within this block, decoding steps run through the generic (training) code path."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
