"""Shared test settings and tiny-model builders.

Tiny fairseq models: :func:`tiny_model_args` is the command line of a small model of one of
our architectures (tests import it: ``from conftest import tiny_model_args``) and
:func:`build_tiny_model` builds one with dummy dictionaries.

Tests parametrised over ``isa`` (``avx512``, ``avx2``, ``portable``) skip, visibly, the
instruction sets this CPU lacks ("CPU lacks avx512"). Set ``KALEIDOSCOPE_REQUIRE_ISA`` to a
comma-separated list (e.g. ``avx512,avx2``; ``avx512f`` is accepted for ``avx512``) and those
skips become failures: a CI job that must cover the AVX-512 kernels fails on a machine
without them instead of passing with a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


def tiny_model_args(
    arch: str | None = None,
    *,
    dim: int = 32,
    layers: tuple[int, int] = (1, 2),
    heads: int = 2,
    kernels: tuple[str, str] = ("[3]", "[3,7]"),
) -> list[str]:
    """fairseq options of a tiny model: embeddings ``dim``, FFN ``2 * dim``, (encoder, decoder)
    ``layers``, ``heads`` on both sides; the (encoder, decoder) kernel-size lists ``kernels``
    unless ``arch`` is a transformer. ``--arch arch`` comes first when ``arch`` is given."""
    args = ["--arch", arch] if arch else []
    for side, n in zip(("encoder", "decoder"), layers, strict=True):
        args += [f"--{side}-embed-dim", str(dim), f"--{side}-ffn-embed-dim", str(2 * dim),
                 f"--{side}-layers", str(n), f"--{side}-attention-heads", str(heads)]  # fmt: skip
    if arch is None or "transformer" not in arch:
        args += ["--encoder-kernel-size-list", kernels[0], "--decoder-kernel-size-list", kernels[1]]
    return args


def build_tiny_model(
    arch: str, *extra: str, vocab: int | tuple[int, int] = 30, seed: int | None = None, **size: Any
) -> tuple[Any, Any]:
    """``(model, cfg.model)`` of ``tiny_model_args(arch, **size)`` plus ``extra`` options, with dummy
    dictionaries of ``vocab`` symbols (or (source, target) sizes), after ``torch.manual_seed(seed)``."""
    import torch

    from fairseq_kaleidoscope.models.builder import build_model_from_args

    if seed is not None:
        torch.manual_seed(seed)
    src, tgt = vocab if isinstance(vocab, tuple) else (vocab, vocab)
    return build_model_from_args([*tiny_model_args(arch, **size), *extra], src, tgt)


KNOWN_ISAS = ("avx512", "avx2", "neon", "portable")
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
