"""The CUDA kernels' logic, run on the CPU: tests/cuda_sim executes csrc/cuda/butterfly_kernels.cuh
(float32, and float16 / bfloat16 through emulated half types with the GPU's round-to-nearest-even
conversions) with emulated blocks, threads, barriers and shared memory and compares forward,
grad_input and grad_twiddle with a naive implementation for every supported n; half outputs must be
within one ulp. Needs only g++ (C++20, with _Float16), so the kernels, their half load/store code
included, are exercised on machines without a GPU; tests/test_cuda.py covers the real thing."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found: CUDA kernel simulation not built"),
]


@pytest.fixture(scope="module")
def sim_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("cuda_sim") / "sim_test"
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", "-DKALEIDOSCOPE_CUDA_SIM", f"-I{ROOT / 'tests' / 'cuda_sim'}"]
    cmd += [str(ROOT / "tests" / "cuda_sim" / "sim_test.cpp"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@pytest.mark.parametrize("mode", ["fibers", "reversed"])
def test_simulated_kernels_match_naive_implementation(sim_binary: Path, mode: str) -> None:
    """Both thread orders: a missing __syncthreads gives wrong results in at least one."""
    run = subprocess.run([str(sim_binary), mode], capture_output=True, text=True, timeout=600)
    failures = [line for line in run.stdout.splitlines() if not line.startswith("ok")]
    assert run.returncode == 0, "\n".join(failures) + run.stderr
    assert "cases passed" in run.stdout
    assert "ok   float16 " in run.stdout and "ok   bfloat16" in run.stdout  # the half types ran
