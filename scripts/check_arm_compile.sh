#!/usr/bin/env bash
# Checks the CPU sources for aarch64 (ARM servers): the per-ISA kernel files (torch-free) are
# compiled to objects, the torch glue is checked with -fsyntax-only against this venv's torch
# headers (the same on every architecture), and the NEON kernels are run against the portable
# ones under qemu-aarch64 (tests/arm/check_neon_kernels.cpp).
# Needs Debian's g++-aarch64-linux-gnu and qemu-user: installed with apt-get when missing and
# this runs as root; else the check is skipped - and fails under CI=true, where it must run.
#
# Environment: CROSS_CXX (default aarch64-linux-gnu-g++), QEMU (default qemu-aarch64),
# PY (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

CROSS_CXX=${CROSS_CXX:-aarch64-linux-gnu-g++}
QEMU=${QEMU:-qemu-aarch64}
PY=${PY:-.venv/bin/python}
if ! { command -v "$CROSS_CXX" && command -v "$QEMU"; } >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "[arm] installing Debian's g++-aarch64-linux-gnu and qemu-user"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; } \
    >/dev/null || echo "[arm] apt-get failed"
fi
for tool in "$CROSS_CXX" "$QEMU"; do
  if ! command -v "$tool" >/dev/null; then
    echo "[skip] $tool not found: aarch64 build not checked"
    [[ "${CI:-}" == true ]] && { echo "[FAIL] CI=true: the aarch64 check must run"; exit 1; }
    exit 0
  fi
done

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

# The NEON kernels, run: a static aarch64 binary under user-mode emulation.
if "$CROSS_CXX" -std=c++17 -O2 -static tests/arm/check_neon_kernels.cpp csrc/cpu/kernels_neon.cpp \
  csrc/cpu/kernels_portable.cpp -o "$tmp/check_neon_kernels" && "$QEMU" "$tmp/check_neon_kernels"; then
  :
else
  echo "[FAIL] NEON kernels (tests/arm/check_neon_kernels.cpp)"; status=1
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
