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
#include <utility>

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
  // In-lane shuffles instead of the generic permute2 rounds (3x fewer instructions, most
  // of them single-cycle): an 8x8 transpose ...
  static constexpr bool native_shuffles = true;
  static void transpose_square(V* r) {
    const V t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const V t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const V t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const V t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const V s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const V s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const V s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const V s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20), r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20), r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20), r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20), r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
  }
  // ... and the twiddles (a, b, c, d) of 8 pairs de-interleaved: pairs k and k + 4 share a
  // vector, so a 4x4 transpose inside each 128-bit half leaves every result in order.
  static void deinterleave4(const float* t, V& a, V& b, V& c, V& d) {
    const V v0 = _mm256_loadu2_m128(t + 16, t), v1 = _mm256_loadu2_m128(t + 20, t + 4);
    const V v2 = _mm256_loadu2_m128(t + 24, t + 8), v3 = _mm256_loadu2_m128(t + 28, t + 12);
    const V u0 = _mm256_unpacklo_ps(v0, v1), u1 = _mm256_unpackhi_ps(v0, v1);
    const V u2 = _mm256_unpacklo_ps(v2, v3), u3 = _mm256_unpackhi_ps(v2, v3);
    a = _mm256_shuffle_ps(u0, u2, 0x44), b = _mm256_shuffle_ps(u0, u2, 0xEE);
    c = _mm256_shuffle_ps(u1, u3, 0x44), d = _mm256_shuffle_ps(u1, u3, 0xEE);
  }
  // out[k][j] += the sum of v[4k + j]'s lanes: two rounds of horizontal adds, then the
  // 128-bit halves (one per pair).
  static void add_pair_grads(V* v, float* const* out) {
    V h[8], q[4];
    for (int m = 0; m < 8; ++m) h[m] = _mm256_hadd_ps(v[2 * m], v[2 * m + 1]);
    for (int m = 0; m < 4; ++m) q[m] = _mm256_hadd_ps(h[2 * m], h[2 * m + 1]);
    for (int m = 0; m < 2; ++m) {
      const V s = _mm256_add_ps(_mm256_permute2f128_ps(q[2 * m], q[2 * m + 1], 0x20),
                                _mm256_permute2f128_ps(q[2 * m], q[2 * m + 1], 0x31));
      float* lo = out[2 * m];
      float* hi = out[2 * m + 1];
      _mm_storeu_ps(lo, _mm_add_ps(_mm_loadu_ps(lo), _mm256_castps256_ps128(s)));
      _mm_storeu_ps(hi, _mm_add_ps(_mm_loadu_ps(hi), _mm256_extractf128_ps(s, 1)));
    }
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
  static constexpr bool native_shuffles = true;
  static void transpose_square(V* r) {
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20), r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20), r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
  // One pair's (a, b, c, d) is one vector: de-interleaving 4 pairs is a 4x4 transpose.
  static void deinterleave4(const double* t, V& a, V& b, V& c, V& d) {
    V r[4] = {load(t), load(t + 4), load(t + 8), load(t + 12)};
    transpose_square(r);
    a = r[0], b = r[1], c = r[2], d = r[3];
  }
  static void add_pair_grads(V* v, double* const* out) {
    V h[8];
    for (int m = 0; m < 8; ++m) h[m] = _mm256_hadd_pd(v[2 * m], v[2 * m + 1]);
    for (int m = 0; m < 4; ++m) {
      const V s = _mm256_add_pd(_mm256_permute2f128_pd(h[2 * m], h[2 * m + 1], 0x20),
                                _mm256_permute2f128_pd(h[2 * m], h[2 * m + 1], 0x31));
      store(out[m], add(load(out[m]), s));
    }
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
