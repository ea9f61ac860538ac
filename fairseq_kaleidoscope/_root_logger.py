"""Importing fairseq must not reconfigure the importer's logging.

One of fairseq's task modules calls ``logging.basicConfig(level=DEBUG)`` when it is
imported, which turns on every library's debug output in a script that only wanted
``KaleidoscopeLinear``. fairseq's own commands configure logging before they import
fairseq, so for them this changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def root_logger_untouched() -> Iterator[None]:
    """Within the block ``logging.basicConfig`` is a no-op and warnings still reach stderr; the root
    logger's level and handlers are as before afterwards."""
    root = logging.getLogger()
    if root.handlers:  # already configured: basicConfig does nothing anyway
        yield
        return
    level = root.level
    handler = logging.StreamHandler(sys.stderr)  # basicConfig skips a root logger that has a handler
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
