// Raw-pointer interface between the torch glue (butterfly_cpu.cpp) and the kernels, which
// are compiled once per instruction set (kernels_avx512.cpp, kernels_avx2.cpp,
// kernels_neon.cpp, kernels_portable.cpp) and chosen at run time. Nothing here includes torch: the
// per-ISA files must not instantiate any inline function that the rest of the program
// also uses (the linker would keep one copy, possibly the AVX-512 one).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kaleidoscope {
namespace cpu {

// One butterfly multiply. Rows are (batch, stack) pairs; the last dimension of input,
// grad and grad_input is contiguous, the other strides are arbitrary (0 for the expanded
// stacks that KaleidoscopeLinear passes).
template <typename T>
struct Problem {
  const T* input;
  int64_t in_stride_b, in_stride_s;
  const T* twiddle;  // contiguous (nstacks, nbutterflies, log_n, n/2, 2, 2)
  const T* bias;     // contiguous (nstacks, n), or null
  T* output;         // contiguous (batch, nstacks, n): forward output / grad_input
  const T* grad;     // backward only: grad of the output
  int64_t grad_stride_b, grad_stride_s;
  int64_t batch, nstacks, n, log_n, nbutterflies;
  bool increasing;
  // Backward only: factors per recomputed segment, even (2: every second factor's input is kept).
  int64_t checkpoint_every;
};

// Kernels of one instruction set for one dtype. Each call handles rows
// [row_begin, row_end) of stack `stack`; scratch is at least *_scratch(...) elements
// (the small path needs none).
template <typename T>
struct Kernels {
  const char* isa;
  int backward_rows;  // rows per backward tile
  int tile_rows;      // rows per forward tile
  size_t (*tile_scratch)(const Problem<T>&);
  void (*forward_tiles)(const Problem<T>&, int64_t stack, int64_t row_begin, int64_t row_end, T* scratch);
  void (*forward_small)(const Problem<T>&, int64_t stack, int64_t row_begin, int64_t row_end);
  size_t (*backward_scratch)(const Problem<T>&);
  // Adds this rows' twiddle gradient of the stack into dtwiddle (that stack's slice).
  void (*backward_tiles)(const Problem<T>&, int64_t stack, int64_t row_begin, int64_t row_end, T* scratch,
                         T* dtwiddle);
};

// Whether the instruction set in use (the CPU's best, or the one set_cpu_kernel forced) has
// AVX2 and FMA: dynconv_step's choice between its AVX2 and portable code.
bool active_isa_uses_avx2();

namespace portable {
extern const Kernels<float> kernels_f32;
extern const Kernels<double> kernels_f64;
}  // namespace portable
namespace avx2 {
extern const Kernels<float> kernels_f32;
extern const Kernels<double> kernels_f64;
}  // namespace avx2
namespace avx512 {
extern const Kernels<float> kernels_f32;
extern const Kernels<double> kernels_f64;
}  // namespace avx512
namespace neon {  // aarch64 only; float64 runs the portable kernels there
extern const Kernels<float> kernels_f32;
}  // namespace neon

}  // namespace cpu
}  // namespace kaleidoscope
