// AVX2 + FMA kernels (8 floats / 4 doubles per vector). Compiled for that target by the
// pragma below, whatever the global flags; only called where the CPU reports AVX2 and FMA.
#if defined(__x86_64__) || defined(__i386__)  // nothing to build elsewhere
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>

#include <cstring>

#include "butterfly_kernels.h"

namespace kaleidoscope {
namespace cpu {
namespace avx2 {
namespace {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int W = 8;
  using V = __m256;
  // permute2 = one lane permutation of each source, then a blend on the source bit.
  struct Idx {
    __m256i perm;
    __m256 from_b;
  };
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static Idx make_idx(const int* lanes) {
    alignas(32) int perm[8];
    alignas(32) int mask[8];
    for (int k = 0; k < 8; ++k) perm[k] = lanes[k] & 7, mask[k] = lanes[k] >= 8 ? -1 : 0;
    return {_mm256_load_si256(reinterpret_cast<const __m256i*>(perm)),
            _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(mask)))};
  }
  static V permute2(V a, V b, const Idx& idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(a, idx.perm), _mm256_permutevar8x32_ps(b, idx.perm),
                            idx.from_b);
  }
};

template <>
struct Vec<double> {
  static constexpr int W = 4;
  using V = __m256d;
  struct Idx {
    __m256i perm;  // as 32-bit lanes: double k -> floats 2k, 2k+1
    __m256d from_b;
  };
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V a) { _mm256_storeu_pd(p, a); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static Idx make_idx(const int* lanes) {
    alignas(32) int perm[8];
    alignas(32) long long mask[4];
    for (int k = 0; k < 4; ++k) {
      perm[2 * k] = 2 * (lanes[k] & 3), perm[2 * k + 1] = 2 * (lanes[k] & 3) + 1;
      mask[k] = lanes[k] >= 4 ? -1 : 0;
    }
    return {_mm256_load_si256(reinterpret_cast<const __m256i*>(perm)),
            _mm256_castsi256_pd(_mm256_load_si256(reinterpret_cast<const __m256i*>(mask)))};
  }
  static V permute2(V a, V b, const Idx& idx) {
    const __m256d pa = _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(a), idx.perm));
    const __m256d pb = _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(b), idx.perm));
    return _mm256_blendv_pd(pa, pb, idx.from_b);
  }
};

#include "butterfly_simd_impl.h"

}  // namespace

const Kernels<float> kernels_f32 = make_kernels<float>("avx2");
const Kernels<double> kernels_f64 = make_kernels<double>("avx2");

}  // namespace avx2
}  // namespace cpu
}  // namespace kaleidoscope

#if defined(__clang__)
#pragma clang attribute pop
#endif

#endif  // x86
