// NEON kernels for aarch64 (4 floats per vector; NEON is part of every aarch64 CPU, so
// there is no run-time check). float64 uses the portable kernels there: two lanes buy
// little over the compiler's own vectorisation of the portable arrays.
#if defined(__aarch64__)
#include <arm_neon.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "butterfly_kernels.h"

namespace kaleidoscope {
namespace cpu {
namespace neon {
namespace {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int W = 4;
  using V = float32x4_t;
  using Idx = uint8x16_t;  // byte indices into the 32 bytes of (a, b)
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V a) { vst1q_f32(p, a); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V fmadd(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static Idx make_idx(const int* lanes) {
    uint8_t bytes[16];
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 4; ++j) bytes[4 * k + j] = static_cast<uint8_t>(4 * lanes[k] + j);
    return vld1q_u8(bytes);
  }
  static V permute2(V a, V b, Idx idx) {  // one table lookup over both registers
    const uint8x16x2_t table = {{vreinterpretq_u8_f32(a), vreinterpretq_u8_f32(b)}};
    return vreinterpretq_f32_u8(vqtbl2q_u8(table, idx));
  }
  static constexpr bool native_shuffles = false;  // permute2 is one instruction here
  static void add_quarter(float* out, V a, int /*lane0: always 0 with 4 lanes*/) {
    vst1q_f32(out, vaddq_f32(vld1q_f32(out), a));
  }
};

#include "butterfly_simd_impl.h"

}  // namespace

const Kernels<float> kernels_f32 = make_kernels<float>("neon");

}  // namespace neon
}  // namespace cpu
}  // namespace kaleidoscope

#endif  // aarch64
