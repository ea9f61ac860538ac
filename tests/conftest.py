"""Shared test settings.

Tests parametrised over ``isa`` (``avx512``, ``avx2``, ``portable``) skip, visibly, the
instruction sets this CPU lacks ("CPU lacks avx512"). Set ``KALEIDOSCOPE_REQUIRE_ISA`` to a
comma-separated list (e.g. ``avx512,avx2``; ``avx512f`` is accepted for ``avx512``) and those
skips become failures: a CI job that must cover the AVX-512 kernels fails on a machine
without them instead of passing with a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

KNOWN_ISAS = ("avx512", "avx2", "portable")
_ALIASES = {"avx512f": "avx512"}


def required_isas() -> set[str]:
    names = {s.strip().lower() for s in os.environ.get("KALEIDOSCOPE_REQUIRE_ISA", "").split(",") if s.strip()}
    names = {_ALIASES.get(n, n) for n in names}
    unknown = names - set(KNOWN_ISAS)
    if unknown:
        raise pytest.UsageError(f"KALEIDOSCOPE_REQUIRE_ISA: unknown {sorted(unknown)}; use {', '.join(KNOWN_ISAS)}")
    return names


def pytest_report_header(config: pytest.Config) -> str:
    required = required_isas()
    return f"KALEIDOSCOPE_REQUIRE_ISA: {','.join(sorted(required)) or '(none: missing ISAs are skipped)'}"


@pytest.fixture
def require_isa() -> Callable[[str], None]:
    """``require_isa(isa)``: skip (or fail, if KALEIDOSCOPE_REQUIRE_ISA names it) when the CPU lacks ``isa``."""

    def check(isa: str) -> None:
        from fairseq_kaleidoscope.kmatrix.cpu_kernel import supported_isas

        supported = supported_isas()
        if isa in supported:
            return
        why = f"CPU lacks {isa} (it supports {', '.join(supported)})"
        if isa in required_isas():
            pytest.fail(f"{why}, but KALEIDOSCOPE_REQUIRE_ISA requires it")
        pytest.skip(why)

    return check


@pytest.fixture(autouse=True)
def _skip_tests_of_isas_the_cpu_lacks(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("isa") in KNOWN_ISAS:
        request.getfixturevalue("require_isa")(callspec.params["isa"])
