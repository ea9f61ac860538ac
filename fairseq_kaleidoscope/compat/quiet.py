"""Silence the deprecation warnings that fairseq 0.12's own use of hydra 1.3 raises on every config build.

They concern fairseq's code, not the user's, and repeat on every model build; we filter them
around the calls into fairseq that trigger them (and in the pytest configuration), nothing else.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

# Regexes matched against the start of the warning message (``re.match``, so ``(?s).*`` skips
# the leading newline some of them have).
HYDRA_DEPRECATIONS = (
    r"hydra\.experimental\.\w+\(\) is no longer experimental",
    r"(?s).*The version_base parameter is not specified",
    r"(?s).*is validated against ConfigStore schema with the same name",
    r"(?s).*The strict flag in the compose API is deprecated",
    r"In 'config'. Usage of deprecated keyword in package header",
)


@contextlib.contextmanager
def hydra_deprecations_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in HYDRA_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message)
        yield
