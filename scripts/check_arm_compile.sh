#!/usr/bin/env bash
# Compile-checks the CPU sources for aarch64 (ARM servers), where only the portable kernels
# run: the per-ISA kernel files (torch-free) are compiled to objects, the torch glue is checked
# with -fsyntax-only against this venv's torch headers (they are the same on every architecture).
# Needs Debian's cross compiler (g++-aarch64-linux-gnu): installed with apt-get when missing and
# this runs as root, else the check is skipped - and fails under CI=true, where it must run.
#
# Environment: CROSS_CXX (default aarch64-linux-gnu-g++), PY (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

CROSS_CXX=${CROSS_CXX:-aarch64-linux-gnu-g++}
PY=${PY:-.venv/bin/python}
if ! command -v "$CROSS_CXX" >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "[arm] installing Debian's g++-aarch64-linux-gnu"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu; } >/dev/null ||
    echo "[arm] apt-get failed"
fi
if ! command -v "$CROSS_CXX" >/dev/null; then
  echo "[skip] $CROSS_CXX not found: aarch64 build not checked"
  [[ "${CI:-}" == true ]] && { echo "[FAIL] CI=true: the aarch64 compile check must run"; exit 1; }
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "[arm] $("$CROSS_CXX" --version | head -1)"
status=0
for src in csrc/cpu/kernels_*.cpp; do
  if "$CROSS_CXX" -std=c++17 -O3 -Wall -Werror -c "$src" -o "$tmp/$(basename "$src" .cpp).o"; then
    echo "[arm] compiled $src"
  else
    echo "[FAIL] $src"; status=1
  fi
done
# The portable kernels must be there; the x86 files must compile to nothing on ARM.
if ! "${CROSS_CXX%g++}nm" -C "$tmp/kernels_portable.o" | grep -q "portable::kernels_f32"; then
  echo "[FAIL] kernels_portable.o lacks the portable kernels"; status=1
fi

read -r torch_inc py_inc < <("$PY" -c "import sysconfig, torch.utils.cpp_extension as c; print(c.include_paths()[0], sysconfig.get_paths()['include'])")
glue=(csrc/*.cpp csrc/cpu/butterfly_cpu.cpp csrc/cpu/dynconv_step_cpu.cpp)
for src in "${glue[@]}"; do
  if "$CROSS_CXX" -std=c++20 -fsyntax-only -fopenmp -Wall -Werror -I"$torch_inc" -I"$torch_inc/torch/csrc/api/include" \
    -I"$py_inc" -DTORCH_EXTENSION_NAME=_C "$src"; then
    echo "[arm] syntax-checked $src"
  else
    echo "[FAIL] $src"; status=1
  fi
done
exit $status
