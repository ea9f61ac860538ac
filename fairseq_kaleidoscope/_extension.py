"""The compiled extension, loaded once: importing ``_C`` registers ``torch.ops.kaleidoscope.*``.

Without a build everything runs on the plain-PyTorch references, after one warning.
"""

from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401

    HAS_EXTENSION = True
except ImportError as exc:  # pragma: no cover - exercised on machines without a build
    HAS_EXTENSION = False
    warnings.warn(
        "fairseq_kaleidoscope: the compiled extension is not available "
        f"({exc}); K-matrix layers fall back to the slower pure-PyTorch reference. "
        "Build it with `make setup` (or `python setup.py build_ext --inplace`).",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered ``op`` (e.g. ``"kaleidoscope::dynconv_step"``) for ``dispatch_key``."""
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key(op, dispatch_key)
