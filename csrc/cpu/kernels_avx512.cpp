// AVX-512F kernels (16 floats / 8 doubles per vector). Compiled for that target by the
// pragma below, whatever the global flags; only called where the CPU reports AVX-512F.
#if defined(__x86_64__) || defined(__i386__)  // nothing to build elsewhere
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx2,fma")
#endif
#include <immintrin.h>

#include <cstring>
#include <utility>

#include "butterfly_kernels.h"

namespace kaleidoscope {
namespace cpu {
namespace avx512 {
namespace {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int W = 16;
  using V = __m512;
  using Idx = __m512i;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static Idx make_idx(const int* lanes) { return _mm512_loadu_si512(lanes); }
  static V permute2(V a, V b, Idx idx) { return _mm512_permutex2var_ps(a, idx, b); }
  static constexpr bool native_shuffles = false;  // permute2 is one instruction here
  // out[0..4) += lanes lane0 .. lane0 + 3 of a (lane0 a multiple of 4).
  // (The maskz forms: GCC 12's unmasked extracts warn about their undefined source.)
  static void add_quarter(float* out, V a, int lane0) {
    __m128 q;
    switch (lane0) {
      case 0: q = _mm512_maskz_extractf32x4_ps(0xF, a, 0); break;
      case 4: q = _mm512_maskz_extractf32x4_ps(0xF, a, 1); break;
      case 8: q = _mm512_maskz_extractf32x4_ps(0xF, a, 2); break;
      default: q = _mm512_maskz_extractf32x4_ps(0xF, a, 3); break;
    }
    _mm_storeu_ps(out, _mm_add_ps(_mm_loadu_ps(out), q));
  }
};

template <>
struct Vec<double> {
  static constexpr int W = 8;
  using V = __m512d;
  using Idx = __m512i;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V a) { _mm512_storeu_pd(p, a); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static Idx make_idx(const int* lanes) {
    long long wide[8];
    for (int k = 0; k < 8; ++k) wide[k] = lanes[k];
    return _mm512_loadu_si512(wide);
  }
  static V permute2(V a, V b, Idx idx) { return _mm512_permutex2var_pd(a, idx, b); }
  static constexpr bool native_shuffles = false;
  static void add_quarter(double* out, V a, int lane0) {
    const __m256d q = lane0 == 0 ? _mm512_maskz_extractf64x4_pd(0xF, a, 0) : _mm512_maskz_extractf64x4_pd(0xF, a, 1);
    _mm256_storeu_pd(out, _mm256_add_pd(_mm256_loadu_pd(out), q));
  }
};

#include "butterfly_simd_impl.h"

}  // namespace

const Kernels<float> kernels_f32 = make_kernels<float>("avx512");
const Kernels<double> kernels_f64 = make_kernels<double>("avx512");

}  // namespace avx512
}  // namespace cpu
}  // namespace kaleidoscope

#if defined(__clang__)
#pragma clang attribute pop
#endif

#endif  // x86
