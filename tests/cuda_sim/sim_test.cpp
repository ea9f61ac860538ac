// Runs the CUDA butterfly kernels (csrc/cuda/butterfly_kernels.cuh: float32, and float16 and
// bfloat16 with emulated half types) on the CPU simulation of tests/cuda_sim/cuda_sim_runtime.h
// and compares them with a naive double-precision implementation of the conventions in
// fairseq_kaleidoscope/kmatrix/reference.py: forward (bias, strided and expanded inputs),
// grad_input and grad_twiddle, for every n the kernels support and every launch configuration.
// Half types: the reference runs on the same rounded inputs, and the outputs must be within one
// ulp of it (float32 arithmetic, one rounding at the store). Exit status 0 iff all cases agree.
// Built and run by scripts/check_cuda_compile.sh.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/cuda/butterfly_kernels.cuh"

using namespace kaleidoscope::cuda;

namespace {

// Element types: rounding from float, and the unit roundoff bound of one output (0: float32).
template <typename D>
struct Elem;
template <>
struct Elem<float> {
  static float to(float f) { return f; }
  static float from(float d) { return d; }
  static constexpr double ulp = 0;
  static constexpr const char* name = "float32";
};
template <>
struct Elem<__half> {
  static __half to(float f) { return __float2half_rn(f); }
  static float from(__half d) { return __half2float(d); }
  static constexpr double ulp = 0x1p-10;  // ulp(x) <= 2^-10 |x| (11 significant bits)
  static constexpr const char* name = "float16";
};
template <>
struct Elem<__nv_bfloat16> {
  static __nv_bfloat16 to(float f) { return __float2bfloat16_rn(f); }
  static float from(__nv_bfloat16 d) { return __bfloat162float(d); }
  static constexpr double ulp = 0x1p-7;  // 8 significant bits
  static constexpr const char* name = "bfloat16";
};

// Round every value to D (the reference then sees exactly what the kernel reads); return D copies.
template <typename D>
std::vector<D> round_to(std::vector<float>& v) {
  std::vector<D> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    out[i] = Elem<D>::to(v[i]);
    v[i] = Elem<D>::from(out[i]);
  }
  return out;
}

struct Case {
  int log_n, nb;
  bool inc;
  int64_t batch, nstacks;
  int layout;  // 0 contiguous, 1 stack dim expanded (stride 0), 2 elements strided (transposed storage)
  bool bias;
};

int factor_k(const Case& c, int b, int j) {
  const bool inc = c.inc != (b % 2 == 1);
  return inc ? j : c.log_n - 1 - j;
}

// Naive forward of one row (double), recording the input of every factor.
std::vector<std::vector<double>> naive_row(const Case& c, const std::vector<float>& tw, int64_t s,
                                          std::vector<double> x) {
  const int n = 1 << c.log_n;
  std::vector<std::vector<double>> acts;
  for (int b = 0; b < c.nb; ++b) {
    for (int j = 0; j < c.log_n; ++j) {
      acts.push_back(x);
      const int k = factor_k(c, b, j), st = 1 << k;
      const float* t = tw.data() + ((s * c.nb + b) * c.log_n + k) * n * 2;
      for (int i = 0; i < n; ++i) {
        if (i & st) continue;
        const int p = ((i >> (k + 1)) << k) | (i & (st - 1));
        const double u = x[i], w = x[i + st];
        x[i] = t[4 * p] * u + t[4 * p + 1] * w;
        x[i + st] = t[4 * p + 2] * u + t[4 * p + 3] * w;
      }
    }
  }
  acts.push_back(x);
  return acts;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double a : v) m = std::max(m, std::abs(a));
  return m;
}

template <typename D>
bool run_case(const Case& c, std::mt19937& rng) {
  const int n = 1 << c.log_n;
  const Shape shape{c.batch, c.nstacks, c.log_n, c.nb, c.inc};
  const Device dev{2, 227 * 1024};
  if (const char* why = unsupported_reason_impl(shape, dev)) {
    std::printf("unsupported: %s\n", why);
    return false;
  }
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  // Twiddles: random rotations/reflections, slightly perturbed (values stay O(1)).
  const int64_t twps = twiddle_per_stack(shape);
  std::vector<float> tw(c.nstacks * twps);
  for (int64_t p = 0; p < c.nstacks * twps / 4; ++p) {
    const float th = 3.14159265f * uni(rng), sg = uni(rng) < 0 ? -1.f : 1.f;
    tw[4 * p] = std::cos(th) + 0.1f * uni(rng);
    tw[4 * p + 1] = -sg * std::sin(th) + 0.1f * uni(rng);
    tw[4 * p + 2] = std::sin(th) + 0.1f * uni(rng);
    tw[4 * p + 3] = sg * std::cos(th) + 0.1f * uni(rng);
  }
  // Input storage and strides for the layout.
  Strides st{};
  std::vector<float> in_store;
  if (c.layout == 0) {
    st = {c.nstacks * n, n, 1};
    in_store.resize(c.batch * c.nstacks * n);
  } else if (c.layout == 1) {
    st = {n, 0, 1};
    in_store.resize(c.batch * n);
  } else {  // storage (n, nstacks, batch): element (b, s, i) at i*nstacks*batch + s*batch + b
    st = {1, c.batch, c.nstacks * c.batch};
    in_store.resize(c.batch * c.nstacks * n);
  }
  for (float& v : in_store) v = uni(rng);
  std::vector<float> bias(c.nstacks * n), grad(c.batch * c.nstacks * n);
  for (float& v : bias) v = uni(rng);
  for (float& v : grad) v = uni(rng);

  const std::vector<D> tw_d = round_to<D>(tw), in_d = round_to<D>(in_store), bias_d = round_to<D>(bias),
                       grad_d = round_to<D>(grad);
  std::vector<D> out_d(c.batch * c.nstacks * n, Elem<D>::to(NAN)), grad_in_d(out_d);
  cudaError_t err = detail::forward_typed<D>(shape, in_d.data(), st, tw_d.data(), c.bias ? bias_d.data() : nullptr,
                                             out_d.data(), dev, nullptr);
  const BackwardWorkspace ws = detail::backward_workspace_impl(shape, dev);
  std::vector<float> partial(ws.partial_floats, 0.f), scratch(ws.scratch_floats, NAN);
  if (err == cudaSuccess) {
    err = detail::backward_typed<D>(shape, grad_d.data(), in_d.data(), st, tw_d.data(), grad_in_d.data(),
                                    partial.data(), scratch.data(), dev, nullptr);
  }
  std::vector<float> out(out_d.size()), grad_in(grad_in_d.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = Elem<D>::from(out_d[i]), grad_in[i] = Elem<D>::from(grad_in_d[i]);
  // Half types: each output within one ulp of the reference (ulp(x) <= Elem<D>::ulp * |x|), plus
  // the float32 arithmetic of up to ~80 factors on O(1) values. Rounding after every factor fails.
  bool within_ulp = true;
  const auto check_ulp = [&](double got, double ref, double scale) {
    if (Elem<D>::ulp > 0 && !(std::abs(got - ref) <= Elem<D>::ulp * std::abs(ref) + 2e-5 * (1 + scale))) {
      within_ulp = false;
    }
  };
  if (err != cudaSuccess) {
    std::printf("launch error %d\n", err);
    return false;
  }

  double err_out = 0, err_gin = 0, scale_out = 0, scale_gin = 0;
  std::vector<double> gtw(c.nstacks * twps, 0.0);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (int64_t s = 0; s < c.nstacks; ++s) {
      std::vector<double> x(n);
      for (int i = 0; i < n; ++i) x[i] = in_store[b * st.batch + s * st.stack + i * st.elem];
      const auto acts = naive_row(c, tw, s, x);
      const int64_t r = (b * c.nstacks + s) * n;
      for (int i = 0; i < n; ++i) {
        const double ref = acts.back()[i] + (c.bias ? bias[s * n + i] : 0.0);
        err_out = std::max(err_out, std::abs(out[r + i] - ref));
        scale_out = std::max(scale_out, std::abs(ref));
        check_ulp(out[r + i], ref, max_abs(acts.back()));
      }
      std::vector<double> g(grad.begin() + r, grad.begin() + r + n);
      int f = c.nb * c.log_n - 1;
      for (int bb = c.nb - 1; bb >= 0; --bb) {
        for (int j = c.log_n - 1; j >= 0; --j, --f) {
          const int k = factor_k(c, bb, j), stt = 1 << k;
          const int64_t off = ((s * c.nb + bb) * c.log_n + k) * n * 2;
          const std::vector<double>& a = acts[f];
          for (int i = 0; i < n; ++i) {
            if (i & stt) continue;
            const int p = ((i >> (k + 1)) << k) | (i & (stt - 1));
            const float* t = tw.data() + off + 4 * p;
            const double gi = g[i], gj = g[i + stt];
            gtw[off + 4 * p] += gi * a[i];
            gtw[off + 4 * p + 1] += gi * a[i + stt];
            gtw[off + 4 * p + 2] += gj * a[i];
            gtw[off + 4 * p + 3] += gj * a[i + stt];
            g[i] = t[0] * gi + t[2] * gj;
            g[i + stt] = t[1] * gi + t[3] * gj;
          }
        }
      }
      const double row_scale_gin = max_abs(g);
      for (int i = 0; i < n; ++i) {
        err_gin = std::max(err_gin, std::abs(grad_in[r + i] - g[i]));
        scale_gin = std::max(scale_gin, std::abs(g[i]));
        check_ulp(grad_in[r + i], g[i], row_scale_gin);
      }
    }
  }
  double err_tw = 0;
  for (int64_t idx = 0; idx < c.nstacks * twps; ++idx) {
    double sum = 0;
    for (int64_t q = 0; q < ws.blocks_per_stack; ++q) sum += partial[q * c.nstacks * twps + idx];
    err_tw = std::max(err_tw, std::abs(sum - gtw[idx]));
  }
  const double scale_tw = max_abs(gtw);
  // float32 arithmetic over up to ~80 factors; NaN compares false, so it fails too.
  const double tol = 1e-4;
  // (grad_twiddle stays float32 here: the glue sums the partials and rounds once, on the GPU.)
  const bool outputs_ok =
      Elem<D>::ulp > 0 ? within_ulp : err_out <= tol * (1 + scale_out) && err_gin <= tol * (1 + scale_gin);
  const bool ok = outputs_ok && err_tw <= tol * (1 + scale_tw) * std::sqrt(double(c.batch));
  std::printf("%s %-8s n=%5d nb=%d inc=%d batch=%3lld nstacks=%lld layout=%d bias=%d  P=%lld  err out %.2e "
              "grad_in %.2e "
              "grad_tw %.2e\n",
              ok ? "ok  " : "FAIL", Elem<D>::name, n, c.nb, c.inc, static_cast<long long>(c.batch),
              static_cast<long long>(c.nstacks), c.layout, c.bias, static_cast<long long>(ws.blocks_per_stack),
              err_out, err_gin, err_tw);
  return ok;
}

}  // namespace

// Usage: sim_test [fibers|reversed|threads] [max_log_n]
int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "fibers";
  ks_sim::mode = mode == "threads"    ? ks_sim::Mode::kThreads
                 : mode == "reversed" ? ks_sim::Mode::kFibersReversed
                                      : ks_sim::Mode::kFibers;
  const int max_log_n = argc > 2 ? std::atoi(argv[2]) : kMaxLogN;
  std::printf("simulation mode: %s\n", mode.c_str());
  std::mt19937 rng(1234);
  int failures = 0, count = 0;
  // Every n; the other parameters rotate so that each value meets several n.
  const int64_t batches[] = {1, 3, 37};
  for (int log_n = 1; log_n <= max_log_n; ++log_n) {
    for (int v = 0; v < 4; ++v) {
      const int idx = log_n + v;
      Case c{log_n, 1 + idx % 4, (idx / 2) % 2 == 0, batches[idx % 3], 1 + (v % 3), v % 3, v % 2 == 0};
      if (log_n >= 11) c.batch = std::min<int64_t>(c.batch, 3);  // keep the simulation quick
      if (ks_sim::mode == ks_sim::Mode::kThreads && log_n >= 11 && v >= 2) continue;  // slow mode
      failures += !run_case<float>(c, rng);
      ++count;
      if (v < 2) {  // the half types: the same launch configurations, fewer cases
        failures += !run_case<__half>(c, rng) + !run_case<__nv_bfloat16>(c, rng);
        count += 2;
      }
    }
  }
  // Blocks that loop over several tiles (P < tiles) reuse their shared accumulator, scratch and
  // partial slot: with atomics (several row groups per block) and without (one group).
  if (max_log_n >= 12) {
    const Case extra[] = {{6, 2, false, 1500, 1, 0, true}, {12, 2, false, 21, 1, 1, false}};
    for (const Case& c : extra) {
      failures += !run_case<float>(c, rng);
      ++count;
    }
  }
  std::printf("%d/%d cases passed (%s)\n", count - failures, count, mode.c_str());
  return failures == 0 ? 0 : 1;
}
