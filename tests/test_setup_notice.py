"""setup.py says loudly when a CUDA build of torch gets no CUDA kernels (a silent 20-50x slowdown)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """
import runpy, sys, torch
torch.version.cuda = {cuda!r}  # pretend: a CUDA build of torch on a machine without a GPU
torch.cuda.is_available = lambda: False
sys.argv = ["setup.py", "--name"]  # evaluates the extension list, builds nothing
runpy.run_path("setup.py", run_name="__main__")
"""


def run_setup(cuda: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "KALEIDOSCOPE_CUDA": ""}
    return subprocess.run([sys.executable, "-c", SNIPPET.format(cuda=cuda)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip


def test_cuda_torch_without_cuda_kernels_gets_a_loud_notice() -> None:
    run = run_setup("12.4")
    assert run.returncode == 0, run.stderr
    assert "building WITHOUT the CUDA kernels" in run.stderr and "KALEIDOSCOPE_CUDA=1" in run.stderr


def test_cpu_torch_builds_quietly() -> None:
    run = run_setup(None)
    assert run.returncode == 0, run.stderr
    assert "WITHOUT the CUDA kernels" not in run.stderr
