// Portable kernels: the shared algorithms over 4-lane vectors written as plain C++
// arrays (the compiler may use baseline SSE2 for them). Run where the CPU has no AVX2,
// and forced in tests so this path stays correct.
#include <cstring>
#include <utility>

#include "butterfly_kernels.h"

namespace kaleidoscope {
namespace cpu {
namespace portable {
namespace {

template <typename T>
struct Vec {
  static constexpr int W = 4;
  struct V {
    T v[W];
  };
  struct Idx {
    int lane[W];
  };
  static V load(const T* p) {
    V r;
    for (int k = 0; k < W; ++k) r.v[k] = p[k];
    return r;
  }
  static void store(T* p, const V& a) {
    for (int k = 0; k < W; ++k) p[k] = a.v[k];
  }
  static V set1(T x) {
    V r;
    for (int k = 0; k < W; ++k) r.v[k] = x;
    return r;
  }
  static V add(const V& a, const V& b) {
    V r;
    for (int k = 0; k < W; ++k) r.v[k] = a.v[k] + b.v[k];
    return r;
  }
  static V mul(const V& a, const V& b) {
    V r;
    for (int k = 0; k < W; ++k) r.v[k] = a.v[k] * b.v[k];
    return r;
  }
  static V fmadd(const V& a, const V& b, const V& c) {
    V r;
    for (int k = 0; k < W; ++k) r.v[k] = a.v[k] * b.v[k] + c.v[k];
    return r;
  }
  static Idx make_idx(const int* lanes) {
    Idx r;
    for (int k = 0; k < W; ++k) r.lane[k] = lanes[k];
    return r;
  }
  // Lane k of the result is lane idx[k] of the concatenation (a, b).
  static V permute2(const V& a, const V& b, const Idx& idx) {
    V r;
    for (int k = 0; k < W; ++k) r.v[k] = idx.lane[k] < W ? a.v[idx.lane[k]] : b.v[idx.lane[k] - W];
    return r;
  }
  static constexpr bool native_shuffles = false;  // the generic permute2 rounds
  // out[0..4) += lanes lane0 .. lane0 + 3 of a.
  static void add_quarter(T* out, const V& a, int lane0) {
    for (int k = 0; k < 4; ++k) out[k] += a.v[lane0 + k];
  }
};

#include "butterfly_simd_impl.h"

}  // namespace

const Kernels<float> kernels_f32 = make_kernels<float>("portable");
const Kernels<double> kernels_f64 = make_kernels<double>("portable");

}  // namespace portable
}  // namespace cpu
}  // namespace kaleidoscope
