#!/usr/bin/env bash
# Compile-checks the CUDA sources without a GPU, so they cannot rot unnoticed:
#   1. every csrc/cuda/*.cu with the machine's nvcc (compile only, several GPU targets);
#   2. the torch glue (csrc/cuda/*.cpp) with g++ -fsyntax-only against the headers of a CUDA
#      build of torch, unpacked from a wheel (never installed) - skipped if no wheel is found;
#   3. the kernels executed on the CPU under tests/cuda_sim (blocks, threads, __syncthreads and
#      shared memory emulated) against a naive double-precision implementation, for every n.
# Steps whose tool is missing are skipped with a message; any compile error or wrong result
# makes the script exit non-zero, and so does checking nothing at all when CI=true (a CI job
# that silently lost its nvcc must not stay green).
#
# Environment:
#   NVCC                       nvcc to use (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc)
#   CUDA_GENCODE               nvcc target flags (default: sm_80, sm_90 and compute_90 PTX)
#   KALEIDOSCOPE_TORCH_WHEEL   a CUDA torch wheel for step 2 (default: newest torch-*manylinux*.whl
#                              under /opt/pypi-more/files, where this project's dev machines keep one)
#   SKIP_SIM=1                 skip step 3; SIM_SANITIZE=1 runs it under ASan/UBSan
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
checked=()
now() { date +%s; }

# ---- 1. nvcc -c ------------------------------------------------------------------------
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc"; fi
if [[ -n "$NVCC" && ! -x "$NVCC" ]]; then NVCC=$(command -v "$NVCC" || true); fi
if [[ -z "$NVCC" ]]; then
  echo "[skip] nvcc not found (set NVCC or CUDA_HOME): .cu sources not compile-checked"
else
  read -r -a gencode <<<"${CUDA_GENCODE:--gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]}"
  # The toolkit's include dir (nvcc may be a wrapper script elsewhere): ask nvcc itself.
  cuda_inc=$("$NVCC" --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p' | head -1 || true)
  cuda_inc=${cuda_inc%/}
  [[ -f "$cuda_inc/cuda_runtime_api.h" ]] || cuda_inc=${CUDA_HOME:-/usr/local/cuda}/include
  echo "[nvcc] $("$NVCC" --version | tail -1)"
  for cu in csrc/cuda/*.cu; do
    t0=$(now)
    # C++17 is what the sources need, compiled for every target; torch's extension build uses
    # C++20, checked through the front end only (PTX, no ptxas: fast).
    for std in c++17 c++20; do
      if [[ $std == c++17 ]]; then targets=("${gencode[@]}"); else targets=(-gencode arch=compute_90,code=compute_90); fi
      if ! "$NVCC" -std=$std -O3 "${targets[@]}" -Xcompiler -Wall --Werror all-warnings \
        -c "$cu" -o "$tmp/$(basename "$cu" .cu)-$std.o"; then
        echo "[FAIL] nvcc -std=$std $cu"
        status=1
      fi
    done
    echo "[nvcc] $cu: $(($(now) - t0)) s"
  done
  checked+=(nvcc)
fi

# ---- 2. glue against the CUDA torch headers ---------------------------------------------
wheel=${KALEIDOSCOPE_TORCH_WHEEL:-$(ls -1 /opt/pypi-more/files/torch-*manylinux*.whl 2>/dev/null | sort -V | tail -1 || true)}
python=$(command -v python3 || command -v python || true)
if [[ -z "$wheel" || ! -f "$wheel" ]]; then
  echo "[skip] no CUDA torch wheel found (set KALEIDOSCOPE_TORCH_WHEEL): glue not checked"
elif [[ -z "$python" ]] || ! command -v g++ >/dev/null || ! command -v unzip >/dev/null; then
  echo "[skip] python, g++ or unzip missing: glue not checked"
elif [[ -z "${cuda_inc:-}" || ! -f "$cuda_inc/cuda_runtime_api.h" ]]; then
  echo "[skip] CUDA runtime headers not found (they come with nvcc): glue not checked"
else
  t0=$(now)
  unzip -q -o "$wheel" 'torch/include/*' -d "$tmp/wheel"
  inc="$tmp/wheel/torch/include"
  if [[ ! -d "$inc/c10/cuda" ]]; then
    echo "[skip] $(basename "$wheel") has no c10/cuda headers (a CPU build?): glue not checked"
  else
    py_inc=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    for cpp in csrc/cuda/*.cpp; do
      # torch >= 2.13 headers need C++20 (torch's extension build uses it too).
      if ! g++ -std=c++20 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -isystem "$inc" \
        -isystem "$inc/torch/csrc/api/include" -isystem "$cuda_inc" -isystem "$py_inc" "$cpp"; then
        echo "[FAIL] glue $cpp against $(basename "$wheel")"
        status=1
      fi
    done
    echo "[glue] csrc/cuda/*.cpp against $(basename "$wheel"): $(($(now) - t0)) s"
    checked+=(glue)
  fi
fi

# ---- 3. CPU simulation of the kernels ---------------------------------------------------
# Fibers in both thread orders catch missing __syncthreads; real threads (small n: slow mode)
# can catch unsynchronised read-modify-writes. SIM_SANITIZE=1 adds ASan/UBSan.
if [[ "${SKIP_SIM:-0}" == 1 ]]; then
  echo "[skip] SKIP_SIM=1: kernels not simulated"
elif ! command -v g++ >/dev/null; then
  echo "[skip] g++ missing: kernels not simulated"
else
  t0=$(now)
  sanitize=()
  [[ "${SIM_SANITIZE:-0}" == 1 ]] && sanitize=(-fsanitize=address,undefined -g)
  if g++ -std=c++20 -O1 -pthread -Wall -Wextra -Wno-unknown-pragmas "${sanitize[@]}" -DKALEIDOSCOPE_CUDA_SIM \
    -Itests/cuda_sim tests/cuda_sim/sim_test.cpp -o "$tmp/sim_test"; then
    for run in "fibers" "reversed" "threads 7"; do
      # shellcheck disable=SC2086
      if "$tmp/sim_test" $run >"$tmp/sim.log" 2>&1; then
        echo "[sim] $(tail -1 "$tmp/sim.log")"
      else
        grep -v '^ok' "$tmp/sim.log" || true
        echo "[FAIL] simulated kernels ($run) disagree with the naive implementation"
        status=1
      fi
    done
    echo "[sim] $(($(now) - t0)) s"
    checked+=(sim)
  else
    echo "[FAIL] simulation does not compile"
    status=1
  fi
fi

if [[ $status != 0 ]]; then
  echo "CUDA compile check FAILED"
elif [[ ${#checked[@]} == 0 ]]; then
  if [[ "${CI:-}" == true || "${CI:-}" == 1 ]]; then
    echo "CUDA compile check FAILED: every step skipped, nothing was checked (CI=$CI)"
    status=1
  else
    echo "CUDA compile check: every step skipped, nothing was checked"
  fi
else
  echo "CUDA compile check passed (${checked[*]})"
fi
exit $status
