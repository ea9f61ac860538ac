"""scripts/check_cuda_compile.sh (``make check-cuda``) must not pass in CI when it checked nothing."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_cuda_compile.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


def run_with_nothing_to_check(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CUDA_HOME")}
    # No nvcc, no torch wheel, no simulation: every step is skipped.
    env.update(NVCC="/nonexistent/nvcc", KALEIDOSCOPE_TORCH_WHEEL="/nonexistent.whl", SKIP_SIM="1")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_nothing_checked_fails_under_ci() -> None:
    run = run_with_nothing_to_check("true")
    assert run.returncode != 0, run.stdout
    assert "nothing was checked" in run.stdout and "FAILED" in run.stdout


def test_nothing_checked_is_a_visible_skip_outside_ci() -> None:
    run = run_with_nothing_to_check(None)
    assert run.returncode == 0, run.stdout
    assert "[skip] nvcc not found" in run.stdout and "nothing was checked" in run.stdout
