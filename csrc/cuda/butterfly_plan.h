// Launch geometry of the butterfly kernels, shared by the launchers (butterfly_kernels.cuh)
// and the CPU simulation test. Plain C++.
//
// A row is one (batch element, stack) vector of n = 2^L values. A thread holds E = 2^LOG_E
// values of each of R rows in registers; the T = n / E threads of a "row group" together
// hold R whole rows. A block has G row groups (same stack, consecutive batch elements), so
// a block tile is RT = G * R rows. Shared memory holds one float copy of the tile (padded
// rows) for global loads/stores and for moving values between threads.
#pragma once
#include <algorithm>
#include <cstdint>

#include "butterfly_cuda.h"

namespace kaleidoscope {
namespace cuda {

// Compile-time configuration of one kernel instantiation.
struct KernelConfig {
  int log_e;        // values per row per thread = 1 << log_e
  int rows;         // R: rows per thread
  int max_threads;  // __launch_bounds__ of the instantiation
};

constexpr int kTargetBlockThreads = 256;

// Padded row length in floats: one float of padding per 32 breaks the bank conflicts of
// the transposes (a thread's 16 consecutive values would otherwise sit in 16 banks' worth
// of one bank pair).
constexpr int64_t padded_row(int64_t n) { return n + (n >> 5); }

// Register budget (ptxas, sm_90): forward E=16, R=2 ~110 registers; backward keeps three
// copies (x, its recomputation y, g) so it uses E=8, R=2 (~128 registers, no spills) and
// E=8, R=1 at n = 8192 (1024 threads per row group).
inline KernelConfig forward_config(int log_n) {
  if (log_n <= 3) return {log_n, 4, 256};
  if (log_n <= 12) return {4, 2, 256};
  return {4, 2, 512};
}

inline KernelConfig backward_config(int log_n) {
  if (log_n <= 2) return {log_n, 2, 256};
  if (log_n <= 12) return {3, 2, 512};
  return {3, 1, 1024};
}

struct Plan {
  KernelConfig cfg;
  int64_t threads_per_group;  // T
  int64_t groups;             // G
  int64_t tile_rows;          // RT
  int64_t tiles;              // ceil(batch / RT), per stack
  int64_t blocks_per_stack;   // P (each block loops over tiles q = qb, qb + P, ...)
  int64_t smem_bytes;
  int64_t block_threads() const { return groups * threads_per_group; }
  int64_t grid() const { return blocks_per_stack; }  // times nstacks
};

inline int64_t twiddle_per_stack(const Shape& s) { return int64_t{s.nbutterflies} * s.log_n * s.n() * 2; }

inline Plan make_plan(const Shape& s, const KernelConfig& cfg, bool backward, const Device& dev) {
  Plan p;
  p.cfg = cfg;
  p.threads_per_group = s.n() >> cfg.log_e;
  p.groups = std::max<int64_t>(1, kTargetBlockThreads / p.threads_per_group);
  p.tile_rows = p.groups * cfg.rows;
  p.tiles = (s.batch + p.tile_rows - 1) / p.tile_rows;
  p.smem_bytes = p.tile_rows * padded_row(s.n()) * 4;
  if (backward) {
    p.smem_bytes += s.n() * 2 * 4;  // twiddle-gradient accumulator of one factor: (n/2, 2, 2) floats
    // Few enough blocks to keep the partial sums (one twiddle-sized slot per block)
    // within a fixed budget; enough to fill the GPU where that budget allows.
    const int64_t want = std::max<int64_t>(1, (int64_t{4} * dev.num_sms + s.nstacks - 1) / s.nstacks);
    const int64_t budget = (int64_t{256} << 20) / 4;  // floats
    const int64_t cap = std::max<int64_t>(1, budget / std::max<int64_t>(1, s.nstacks * twiddle_per_stack(s)));
    p.blocks_per_stack = std::max<int64_t>(1, std::min({p.tiles, want, cap}));
  } else {
    p.blocks_per_stack = std::max<int64_t>(1, std::min<int64_t>(p.tiles, (int64_t{1} << 24) / s.nstacks));
  }
  return p;
}

inline Plan forward_plan(const Shape& s, const Device& dev) { return make_plan(s, forward_config(s.log_n), false, dev); }
inline Plan backward_plan(const Shape& s, const Device& dev) {
  return make_plan(s, backward_config(s.log_n), true, dev);
}

inline const char* unsupported_reason_impl(const Shape& s, const Device& dev) {
  if (s.log_n < 1 || s.log_n > kMaxLogN) return "the CUDA kernels support n = 2 .. 8192";
  if (s.nbutterflies < 1) return "twiddle needs at least one butterfly";
  if (s.nstacks < 1 || s.nstacks > (int64_t{1} << 24)) return "nstacks must be between 1 and 2^24";
  const Plan fwd = forward_plan(s, dev), bwd = backward_plan(s, dev);
  if (fwd.block_threads() > fwd.cfg.max_threads || bwd.block_threads() > bwd.cfg.max_threads) {
    return "internal error: block larger than its kernel's launch bounds";
  }
  const int64_t smem = std::max(fwd.smem_bytes, bwd.smem_bytes);
  if (smem > dev.max_smem_optin) return "this GPU has too little shared memory per block for this n";
  return nullptr;
}

}  // namespace cuda
}  // namespace kaleidoscope
