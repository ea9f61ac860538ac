# Single entry point. Every target runs the idempotent setup first.
PY := .venv/bin/python

.PHONY: setup demo layer-demo test lint bench check-cuda check-arm clean

setup:
	bash scripts/setup.sh

# The main job: quality of small trained dense vs K-matrix models, speed at the paper's size (docs/results.md).
demo: setup
	$(PY) -m fairseq_kaleidoscope demo

# KaleidoscopeLinear vs nn.Linear on a few sizes (parameters, error, forward time).
layer-demo: setup
	$(PY) -m fairseq_kaleidoscope layer-demo

lint: setup
	$(PY) -m ruff check .

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: setup
	$(PY) -m fairseq_kaleidoscope bench-kernels

# Compile-checks the CUDA sources with nvcc (no GPU needed); the CPU simulation of the
# kernels runs in the test suite (tests/test_cuda_sim.py), so it is skipped here.
check-cuda:
	SKIP_SIM=1 bash scripts/check_cuda_compile.sh

# Compile-checks the CPU sources for aarch64 with Debian's cross compiler (installed if missing).
check-arm: setup
	bash scripts/check_arm_compile.sh

clean:
	rm -rf build *.egg-info fairseq_kaleidoscope/*.so
