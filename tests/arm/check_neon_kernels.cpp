// The NEON kernels against the portable ones, for scripts/check_arm_compile.sh: built for
// aarch64 and run under qemu-aarch64 (no ARM machine needed). Every forward path and the
// backward (both checkpoint rules), n = 2 ... 2048, batches that leave remainders, 1-3
// butterflies, both stride orders, bias or not, strided input. Exits non-zero on a mismatch.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/cpu/butterfly_kernels.h"

using kaleidoscope::cpu::Kernels;
using kaleidoscope::cpu::Problem;

// Defined by butterfly_cpu.cpp in the extension (dynconv_step's choice); unused by these kernels.
bool kaleidoscope::cpu::active_isa_uses_avx2() { return false; }

namespace {

struct Result {
  std::vector<float> out, dtw;
};

Result run(const Kernels<float>& K, Problem<float> P, int path) {
  Result r{std::vector<float>(P.batch * P.nstacks * P.n), {}};
  P.output = r.out.data();
  if (path >= 2) {  // backward: every second factor's input kept, or one per segment (3)
    P.checkpoint_every = path == 2 ? 2 : (P.log_n + 1) / 2 * 2;
    r.dtw.assign(P.nstacks * P.nbutterflies * P.log_n * P.n * 2, 0.f);
    std::vector<float> scratch(K.backward_scratch(P));
    for (int64_t s = 0; s < P.nstacks; ++s)
      for (int64_t t = 0; t < P.batch; t += K.backward_rows)
        K.backward_tiles(P, s, t, std::min<int64_t>(P.batch, t + K.backward_rows), scratch.data(),
                         r.dtw.data() + s * P.nbutterflies * P.log_n * P.n * 2);
    return r;
  }
  std::vector<float> scratch(K.tile_scratch(P));
  for (int64_t s = 0; s < P.nstacks; ++s) {
    if (path == 1) {
      K.forward_small(P, s, 0, P.batch);
    } else {
      for (int64_t t = 0; t < P.batch; t += K.tile_rows)
        K.forward_tiles(P, s, t, std::min<int64_t>(P.batch, t + K.tile_rows), scratch.data());
    }
  }
  return r;
}

bool close(const std::vector<float>& a, const std::vector<float>& b, const char* what, const char* path, int64_t n,
           int64_t batch) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  if (worst <= 2e-5 * scale) return true;
  std::printf("[FAIL] %s %s n=%lld batch=%lld: max |neon - portable| = %g (scale %g)\n", what, path,
              static_cast<long long>(n), static_cast<long long>(batch), worst, scale);
  return false;
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  const Kernels<float>& neon = kaleidoscope::cpu::neon::kernels_f32;
  const Kernels<float>& portable = kaleidoscope::cpu::portable::kernels_f32;
  const char* paths[] = {"tiles", "small", "backward", "backward-recomputed"};
  int checked = 0;
  bool ok = true;
  for (int64_t log_n = 1; log_n <= 11; ++log_n) {
    const int64_t n = int64_t{1} << log_n;
    for (int64_t batch : {1, 3, 9, 17, 40}) {
      for (int64_t nbutterflies : {1, 2, 3}) {
        for (bool increasing : {false, true}) {
          const int64_t nstacks = 2, stride_b = nstacks * n + 3;  // rows not back to back
          std::vector<float> x(batch * stride_b), grad(batch * nstacks * n), bias(nstacks * n);
          std::vector<float> tw(nstacks * nbutterflies * log_n * n * 2);
          for (float& v : x) v = normal(rng);
          for (float& v : grad) v = normal(rng);
          for (float& v : bias) v = normal(rng);
          for (float& v : tw) v = normal(rng) * 0.7071f;
          Problem<float> P{};
          P.input = x.data(), P.in_stride_b = stride_b, P.in_stride_s = n;
          P.twiddle = tw.data(), P.bias = increasing ? nullptr : bias.data();
          P.grad = grad.data(), P.grad_stride_b = nstacks * n, P.grad_stride_s = n;
          P.batch = batch, P.nstacks = nstacks, P.n = n, P.log_n = log_n, P.nbutterflies = nbutterflies;
          P.increasing = increasing, P.checkpoint_every = 2;
          for (int path = 0; path < 4; ++path) {
            const Result a = run(neon, P, path), b = run(portable, P, path);
            ok &= close(a.out, b.out, path >= 2 ? "grad input" : "output", paths[path], n, batch);
            if (path >= 2) ok &= close(a.dtw, b.dtw, "grad twiddle", paths[path], n, batch);
            ++checked;
            if (!ok) return 1;
          }
        }
      }
    }
  }
  std::printf("[arm] NEON kernels match the portable ones: %d cases (n = 2 ... 2048)\n", checked);
  return 0;
}
