"""Importing the package registers the fairseq models whatever the import order, and needs no fairseq."""

import logging
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_models_are_registered_when_the_package_is_imported_before_fairseq() -> None:
    pytest.importorskip("fairseq")
    code = (
        "import sys\n"
        "import fairseq_kaleidoscope\n"
        "from fairseq.models import ARCH_MODEL_REGISTRY\n"
        "from fairseq.utils import import_user_module\n"
        "from argparse import Namespace\n"
        "import_user_module(Namespace(user_dir=fairseq_kaleidoscope.__path__[0]))  # as fairseq-train does\n"
        "print(sorted(a for a in ARCH_MODEL_REGISTRY if a.startswith('kaleidoscope_')))\n"
    )
    archs = _run(code)
    for arch in ("kaleidoscope_lightconv", "kaleidoscope_lightconv_iwslt_de_en", "kaleidoscope_transformer"):
        assert f"'{arch}'" in archs


def test_package_imports_without_fairseq() -> None:
    code = (
        "import sys\n"
        "sys.modules['fairseq'] = None  # as if fairseq were not installed\n"
        "import torch, fairseq_kaleidoscope as fk\n"
        "assert 'fairseq_kaleidoscope.models' not in sys.modules\n"
        "layer = fk.KaleidoscopeLinear(8, 8)\n"
        "print(tuple(layer(torch.randn(2, 8)).shape))\n"
    )
    assert _run(code) == "(2, 8)"


def test_importing_the_package_leaves_the_root_logger_alone() -> None:
    """fairseq's import calls logging.basicConfig(level=DEBUG); a plain PyTorch user must not get it."""
    pytest.importorskip("fairseq")
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("KALEIDOSCOPE_DISABLE_FAIRSEQ_PATCHES", None)
    code = (
        "import logging\n"
        "import fairseq_kaleidoscope\n"
        "from fairseq.models import ARCH_MODEL_REGISTRY\n"
        "assert 'kaleidoscope_lightconv' in ARCH_MODEL_REGISTRY\n"
        "print(logging.getLogger().level, len(logging.getLogger().handlers))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(logging.WARNING), "0"]
    assert "DEBUG" not in out.stderr and "INFO" not in out.stderr, out.stderr
