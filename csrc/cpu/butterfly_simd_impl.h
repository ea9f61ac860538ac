// The butterfly kernels, written once over a small SIMD vocabulary and compiled once per
// instruction set: each kernels_<isa>.cpp defines Vec<float> and Vec<double> (lanes W,
// load/store/set1/add/mul/fmadd and permute2, a two-source lane permutation) and then
// includes this file inside its own namespace, so no symbol is shared between ISAs.
// Conventions: fairseq_kaleidoscope/kmatrix/reference.py.
//
// Two forward paths:
// * tiles (batch-vectorised): W rows of one stack are transposed into an n x W buffer, so
//   that coordinate i of all W rows is one vector and every butterfly pair is a vector
//   FMA across rows. All factors of all butterflies run on that buffer (two factors per
//   pass over it, the buffer stays in L1/L2), then the bias is added while transposing back.
// * small (pair-vectorised, batch 1..~W): each row is processed on its own, W pairs of a
//   factor per vector. Strides >= W are contiguous loads; a run of consecutive factors
//   with strides < W (the middle of every B Bᵀ block: ..., 2, 1, 1, 2, ...) is applied
//   to 2W coordinates held in two registers with lane permutations, without going back
//   to memory between factors. Twiddles are de-interleaved in registers.
// The backward reuses the tile layout.
//
// Expects in scope: Problem, Vec<T>, <cstring> and <utility>.

template <typename T>
struct Factor {
  int64_t stride;
  const T* tw;  // this factor's (n/2, 2, 2) twiddles
};

template <typename T>
inline int64_t factor_count(const Problem<T>& P) {
  return P.nbutterflies * P.log_n;
}

template <typename T>
inline const T* stack_twiddle(const Problem<T>& P, int64_t s) {
  return P.twiddle + s * P.nbutterflies * P.log_n * P.n * 2;
}

// The f-th factor applied (butterflies alternate stride order, see reference.py).
template <typename T>
inline Factor<T> factor_at(const Problem<T>& P, const T* tw_stack, int64_t f) {
  const int64_t b = f / P.log_n, j = f % P.log_n;
  const bool increasing = P.increasing != (b % 2 == 1);
  const int64_t k = increasing ? j : P.log_n - 1 - j;
  return {int64_t{1} << k, tw_stack + (b * P.log_n + k) * P.n * 2};
}

// Pair index of coordinate i (whose bit `stride` is 0) in a factor of that stride.
inline int64_t pair_of(int64_t i, int64_t stride) { return ((i >> 1) & ~(stride - 1)) | (i & (stride - 1)); }

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Lane-permutation tables, built once per kernel call.
template <typename T>
struct Tables {
  using V = Vec<T>;
  static constexpr int W = V::W;
  typename V::Idx zip_lo, zip_hi;        // interleave the low / high halves of two vectors
  typename V::Idx tw_ab, tw_cd;          // de-interleave step 1: (a, b) / (c, d) of 2W/4 pairs
  typename V::Idx half_lo, half_hi;      // de-interleave step 2: low / high halves of two vectors
  typename V::Idx fold_lo[8], fold_hi[8];  // reduction tree, one level per group size
  Tables() {
    if constexpr (V::native_shuffles) return;  // the ISA's own shuffles need no tables
    int lo[W], hi[W];
    for (int q = 0; q < W / 2; ++q) {
      lo[2 * q] = q, lo[2 * q + 1] = W + q;
      hi[2 * q] = W / 2 + q, hi[2 * q + 1] = W + W / 2 + q;
    }
    zip_lo = V::make_idx(lo), zip_hi = V::make_idx(hi);
    for (int q = 0; q < W / 2; ++q) {
      const int lane = q < W / 4 ? 4 * q : W + 4 * (q - W / 4);
      lo[q] = lane, lo[W / 2 + q] = lane + 1;
      hi[q] = lane + 2, hi[W / 2 + q] = lane + 3;
    }
    tw_ab = V::make_idx(lo), tw_cd = V::make_idx(hi);
    for (int q = 0; q < W / 2; ++q) {
      lo[q] = q, lo[W / 2 + q] = W + q;
      hi[q] = W / 2 + q, hi[W / 2 + q] = W + W / 2 + q;
    }
    half_lo = V::make_idx(lo), half_hi = V::make_idx(hi);
    // Level with groups of g lanes per target -> g/2: out lane t*(g/2)+h takes lanes
    // t*g+h (lo) and t*g+g/2+h (hi) of the first source, then likewise of the second.
    int level = 0;
    for (int g = W; g > 1; g /= 2, ++level) {
      for (int t = 0; t < W / g; ++t) {
        for (int h = 0; h < g / 2; ++h) {
          lo[t * (g / 2) + h] = t * g + h, hi[t * (g / 2) + h] = t * g + g / 2 + h;
          lo[W / 2 + t * (g / 2) + h] = W + t * g + h, hi[W / 2 + t * (g / 2) + h] = W + t * g + g / 2 + h;
        }
      }
      fold_lo[level] = V::make_idx(lo), fold_hi[level] = V::make_idx(hi);
    }
  }
};

// In-register W x W transpose: log2(W) rounds of interleaving rows m and m + W/2; each
// round rotates the (row, column) bit string by one, so log2(W) rounds transpose it.
template <typename T>
inline void transpose(typename Vec<T>::V* r, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  if constexpr (V::native_shuffles) {
    V::transpose_square(r);
    return;
  }
  typename V::V t[W];
  for (int round = 1; round < W; round *= 2) {
#pragma GCC unroll 16
    for (int m = 0; m < W / 2; ++m) {
      t[2 * m] = V::permute2(r[m], r[m + W / 2], tb.zip_lo);
      t[2 * m + 1] = V::permute2(r[m], r[m + W / 2], tb.zip_hi);
    }
#pragma GCC unroll 16
    for (int m = 0; m < W; ++m) r[m] = t[m];
  }
}

// A tile holds R*W rows: coordinate i of row r*W + l is buf[(i*R + r)*W + l], so each
// coordinate is R vectors that share every twiddle broadcast.

// Rows [r*W, r*W + W) of the tile: buf[(i*R + r)*W + l] = src[l][i].
template <typename T, int R>
void transpose_in(const T* const* src, T* buf, int64_t n, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  for (int r = 0; r < R; ++r, src += W) {
    if (n < W) {
      for (int64_t i = 0; i < n; ++i)
        for (int l = 0; l < W; ++l) buf[(i * R + r) * W + l] = src[l][i];
      continue;
    }
    for (int64_t c0 = 0; c0 < n; c0 += W) {
      typename V::V x[W];
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) x[l] = V::load(src[l] + c0);
      transpose<T>(x, tb);
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) V::store(buf + ((c0 + l) * R + r) * W, x[l]);
    }
  }
}

// dst[l][i] = buf[(i*R + r)*W + l] + bias[i], for the rows of each r.
template <typename T, int R>
void transpose_out(const T* buf, T* const* dst, const T* bias, int64_t n, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  for (int r = 0; r < R; ++r, dst += W) {
    if (n < W) {
      for (int64_t i = 0; i < n; ++i)
        for (int l = 0; l < W; ++l) dst[l][i] = buf[(i * R + r) * W + l] + (bias != nullptr ? bias[i] : T(0));
      continue;
    }
    for (int64_t c0 = 0; c0 < n; c0 += W) {
      typename V::V x[W];
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) x[l] = V::load(buf + ((c0 + l) * R + r) * W);
      transpose<T>(x, tb);
      if (bias != nullptr) {
        const typename V::V b = V::load(bias + c0);
#pragma GCC unroll 16
        for (int l = 0; l < W; ++l) x[l] = V::add(x[l], b);
      }
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) V::store(dst[l] + c0, x[l]);
    }
  }
}

// The [a, b, c, d] of one pair, broadcast to all lanes.
template <typename T>
struct Twiddle {
  typename Vec<T>::V a, b, c, d;
  explicit Twiddle(const T* t) : a(Vec<T>::set1(t[0])), b(Vec<T>::set1(t[1])), c(Vec<T>::set1(t[2])), d(Vec<T>::set1(t[3])) {}
};

// (x, y) <- (a x + b y, c x + d y) for the R vectors of a pair.
template <typename T, int R>
inline void pair_update(typename Vec<T>::V* x, typename Vec<T>::V* y, const Twiddle<T>& t) {
  using V = Vec<T>;
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const typename V::V nx = V::fmadd(t.b, y[r], V::mul(t.a, x[r]));
    y[r] = V::fmadd(t.d, y[r], V::mul(t.c, x[r]));
    x[r] = nx;
  }
}

template <typename T, int R>
inline void load_coord(const T* buf, int64_t i, typename Vec<T>::V* x) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) x[r] = Vec<T>::load(buf + (i * R + r) * Vec<T>::W);
}

template <typename T, int R>
inline void store_coord(T* buf, int64_t i, const typename Vec<T>::V* x) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) Vec<T>::store(buf + (i * R + r) * Vec<T>::W, x[r]);
}

// One factor from src into dst (may alias) in the tile layout.
template <typename T, int R>
void tile_factor(const T* src, T* dst, int64_t n, Factor<T> fa) {
  using V = Vec<T>;
  const int64_t s = fa.stride;
  for (int64_t base = 0; base < n; base += 2 * s) {
    for (int64_t off = 0; off < s; ++off) {
      const int64_t i = base + off, j = i + s;
      typename V::V x[R], y[R];
      load_coord<T, R>(src, i, x);
      load_coord<T, R>(src, j, y);
      pair_update<T, R>(x, y, Twiddle<T>(fa.tw + 4 * (base / 2 + off)));
      store_coord<T, R>(dst, i, x);
      store_coord<T, R>(dst, j, y);
    }
  }
}

// Two consecutive factors in one pass from src into dst (may alias): coordinates
// {i, i+s1, i+s2, i+s1+s2} are closed under both, so each quad is loaded and stored once.
template <typename T, int R>
void tile_factor_pair(const T* src, T* dst, int64_t n, Factor<T> f1, Factor<T> f2) {
  using V = Vec<T>;
  const int64_t s1 = f1.stride, s2 = f2.stride;
  if (s1 == s2) {  // the same pairs twice (where two butterflies meet)
    for (int64_t base = 0; base < n; base += 2 * s1) {
      for (int64_t off = 0; off < s1; ++off) {
        const int64_t i = base + off, j = i + s1, p = base / 2 + off;
        typename V::V x[R], y[R];
        load_coord<T, R>(src, i, x);
        load_coord<T, R>(src, j, y);
        pair_update<T, R>(x, y, Twiddle<T>(f1.tw + 4 * p));
        pair_update<T, R>(x, y, Twiddle<T>(f2.tw + 4 * p));
        store_coord<T, R>(dst, i, x);
        store_coord<T, R>(dst, j, y);
      }
    }
    return;
  }
  const int64_t lo = s1 < s2 ? s1 : s2, hi = s1 < s2 ? s2 : s1;
  for (int64_t a = 0; a < n; a += 2 * hi) {
    for (int64_t b = 0; b < hi; b += 2 * lo) {
      for (int64_t c = 0; c < lo; ++c) {
        const int64_t i = a + b + c;
        typename V::V x0[R], x1[R], x2[R], x3[R];
        load_coord<T, R>(src, i, x0);
        load_coord<T, R>(src, i + s1, x1);
        load_coord<T, R>(src, i + s2, x2);
        load_coord<T, R>(src, i + s1 + s2, x3);
        pair_update<T, R>(x0, x1, Twiddle<T>(f1.tw + 4 * pair_of(i, s1)));
        pair_update<T, R>(x2, x3, Twiddle<T>(f1.tw + 4 * pair_of(i + s2, s1)));
        pair_update<T, R>(x0, x2, Twiddle<T>(f2.tw + 4 * pair_of(i, s2)));
        pair_update<T, R>(x1, x3, Twiddle<T>(f2.tw + 4 * pair_of(i + s1, s2)));
        store_coord<T, R>(dst, i, x0);
        store_coord<T, R>(dst, i + s1, x1);
        store_coord<T, R>(dst, i + s2, x2);
        store_coord<T, R>(dst, i + s1 + s2, x3);
      }
    }
  }
}

// Factors [f0, f1) in place on a tile buffer, two per pass. (Three per pass, on 8
// coordinates at a time, measured 5-20% slower on Zen 4: the pair version is not
// limited by traffic to the buffer.)
template <typename T, int R>
void tile_factors(const Problem<T>& P, const T* tw_stack, T* buf, int64_t f0, int64_t f1) {
  int64_t f = f0;
  for (; f + 1 < f1; f += 2)
    tile_factor_pair<T, R>(buf, buf, P.n, factor_at(P, tw_stack, f), factor_at(P, tw_stack, f + 1));
  if (f < f1) tile_factor<T, R>(buf, buf, P.n, factor_at(P, tw_stack, f));
}

// Row pointers of the `count` rows from row t0 (missing rows read zeros).
template <typename T>
void tile_rows(const T* base, int64_t stride_b, int64_t t0, int64_t m, const T* zeros, const T** rows, int count) {
  for (int l = 0; l < count; ++l) rows[l] = l < m ? base + (t0 + l) * stride_b : zeros;
}

// Vectors per coordinate in the forward tiles: 2 amortises each twiddle broadcast (and
// each pass over the twiddles) over 2W rows. Measured on Zen 4 (AVX-512, batch 512):
// 1 -> 2 is 10-20% faster, 2 -> 4 another 5-10%, but 4 would leave 2 threads one tile
// to share at batch 64, pad small batches to 64 rows and overflow AVX2's 16 registers.
constexpr int kTileVectors = 2;

template <typename T>
size_t tile_scratch(const Problem<T>& P) {
  return static_cast<size_t>(P.n * Vec<T>::W * kTileVectors + 2 * P.n);
}

template <typename T>
void forward_tiles(const Problem<T>& P, int64_t s, int64_t row_begin, int64_t row_end, T* scratch) {
  constexpr int R = kTileVectors, rows = R * Vec<T>::W;
  const int64_t n = P.n;
  const Tables<T> tb;
  T* buf = scratch;
  T* zeros = buf + n * rows;
  T* dummy = zeros + n;
  memset(zeros, 0, sizeof(T) * n);
  const T* tw_stack = stack_twiddle(P, s);
  const T* bias = P.bias != nullptr ? P.bias + s * n : nullptr;
  for (int64_t t0 = row_begin; t0 < row_end; t0 += rows) {
    const int64_t m = min64(rows, row_end - t0);
    const T* src[rows];
    T* dst[rows];
    tile_rows<T>(P.input + s * P.in_stride_s, P.in_stride_b, t0, m, zeros, src, rows);
    for (int l = 0; l < rows; ++l) dst[l] = l < m ? P.output + ((t0 + l) * P.nstacks + s) * n : dummy;
    transpose_in<T, R>(src, buf, n, tb);
    tile_factors<T, R>(P, tw_stack, buf, 0, factor_count(P));
    transpose_out<T, R>(buf, dst, bias, n, tb);
  }
}

// ---------------------------------------------------------------- small batch

// Plain per-row code for rows shorter than two vectors.
template <typename T>
void row_factor_scalar(T* x, int64_t n, Factor<T> fa) {
  const int64_t s = fa.stride;
  for (int64_t base = 0; base < n; base += 2 * s) {
    for (int64_t off = 0; off < s; ++off) {
      const T* t = fa.tw + 4 * (base / 2 + off);
      const T u = x[base + off], v = x[base + off + s];
      x[base + off] = t[0] * u + t[1] * v;
      x[base + off + s] = t[2] * u + t[3] * v;
    }
  }
}

// The [a, b, c, d] twiddles of W consecutive pairs as four vectors.
template <typename T>
inline void load_twiddles(const T* t, const Tables<T>& tb, typename Vec<T>::V& a, typename Vec<T>::V& b,
                          typename Vec<T>::V& c, typename Vec<T>::V& d) {
  using V = Vec<T>;
  constexpr int W = V::W;
  if constexpr (V::native_shuffles) {
    V::deinterleave4(t, a, b, c, d);
    return;
  }
  const typename V::V t0 = V::load(t), t1 = V::load(t + W), t2 = V::load(t + 2 * W), t3 = V::load(t + 3 * W);
  const typename V::V ab01 = V::permute2(t0, t1, tb.tw_ab), cd01 = V::permute2(t0, t1, tb.tw_cd);
  const typename V::V ab23 = V::permute2(t2, t3, tb.tw_ab), cd23 = V::permute2(t2, t3, tb.tw_cd);
  a = V::permute2(ab01, ab23, tb.half_lo);
  b = V::permute2(ab01, ab23, tb.half_hi);
  c = V::permute2(cd01, cd23, tb.half_lo);
  d = V::permute2(cd01, cd23, tb.half_hi);
}

constexpr int kMaxRun = 8;    // factors with stride < W kept in registers at once
constexpr int kRowGroup = 8;  // rows sharing each twiddle load

// Factor with stride >= W on `g` rows: contiguous vectors of W pairs.
template <typename T>
void small_wide_factor(T* const* rows, int g, int64_t n, Factor<T> fa, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t s = fa.stride;
  for (int64_t base = 0; base < n; base += 2 * s) {
    for (int64_t off = 0; off < s; off += W) {
      typename V::V a, b, c, d;
      load_twiddles<T>(fa.tw + 4 * (base / 2 + off), tb, a, b, c, d);
      for (int r = 0; r < g; ++r) {
        T* xi = rows[r] + base + off;
        T* xj = xi + s;
        const typename V::V u = V::load(xi), v = V::load(xj);
        V::store(xi, V::fmadd(b, v, V::mul(a, u)));
        V::store(xj, V::fmadd(d, v, V::mul(c, u)));
      }
    }
  }
}

// A run of factors with strides < W on `g` rows, 2W coordinates (W pairs) at a time held
// in two registers. pos[] tracks which lane holds which coordinate, so each factor needs
// one permutation per operand and the natural order is restored only at the end. CH
// independent chunks are interleaved: a single row is otherwise one long dependency chain.
template <typename T, int CH>
void small_narrow_run(T* const* rows, int g, int64_t n, const Factor<T>* fs, int len, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  typename V::Idx take_i[kMaxRun], take_j[kMaxRun], back_lo, back_hi;
  int pos[2 * W], li[W], lj[W];
  for (int l = 0; l < 2 * W; ++l) pos[l] = l;
  for (int k = 0; k < len; ++k) {
    const int s = static_cast<int>(fs[k].stride);
    int ci[W], cj[W];
    for (int q = 0; q < W; ++q) {
      ci[q] = (q / s) * 2 * s + q % s, cj[q] = ci[q] + s;
      li[q] = pos[ci[q]], lj[q] = pos[cj[q]];
    }
    take_i[k] = V::make_idx(li), take_j[k] = V::make_idx(lj);
    for (int q = 0; q < W; ++q) pos[ci[q]] = q, pos[cj[q]] = W + q;
  }
  for (int q = 0; q < W; ++q) li[q] = pos[q], lj[q] = pos[W + q];
  back_lo = V::make_idx(li), back_hi = V::make_idx(lj);
  typename V::V ta[kMaxRun][CH], tbv[kMaxRun][CH], tc[kMaxRun][CH], td[kMaxRun][CH];
  for (int64_t c0 = 0; c0 < n; c0 += 2 * W * CH) {
    for (int k = 0; k < len; ++k)
      for (int h = 0; h < CH; ++h)
        load_twiddles<T>(fs[k].tw + 4 * (c0 / 2 + h * W), tb, ta[k][h], tbv[k][h], tc[k][h], td[k][h]);
    for (int r = 0; r < g; ++r) {
      T* x = rows[r] + c0;
      typename V::V p[CH], q[CH];
#pragma GCC unroll 4
      for (int h = 0; h < CH; ++h) p[h] = V::load(x + 2 * W * h), q[h] = V::load(x + 2 * W * h + W);
      for (int k = 0; k < len; ++k) {
#pragma GCC unroll 4
        for (int h = 0; h < CH; ++h) {
          const typename V::V u = V::permute2(p[h], q[h], take_i[k]), v = V::permute2(p[h], q[h], take_j[k]);
          p[h] = V::fmadd(tbv[k][h], v, V::mul(ta[k][h], u));
          q[h] = V::fmadd(td[k][h], v, V::mul(tc[k][h], u));
        }
      }
#pragma GCC unroll 4
      for (int h = 0; h < CH; ++h) {
        V::store(x + 2 * W * h, V::permute2(p[h], q[h], back_lo));
        V::store(x + 2 * W * h + W, V::permute2(p[h], q[h], back_hi));
      }
    }
  }
}

template <typename T>
void forward_small(const Problem<T>& P, int64_t s, int64_t row_begin, int64_t row_end) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t n = P.n, F = factor_count(P);
  const T* tw_stack = stack_twiddle(P, s);
  const T* bias = P.bias != nullptr ? P.bias + s * n : nullptr;
  const Tables<T> tb;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowGroup) {
    const int g = static_cast<int>(min64(kRowGroup, row_end - r0));
    T* rows[kRowGroup];
    for (int r = 0; r < g; ++r) {
      rows[r] = P.output + ((r0 + r) * P.nstacks + s) * n;
      memcpy(rows[r], P.input + (r0 + r) * P.in_stride_b + s * P.in_stride_s, sizeof(T) * n);
    }
    if (n < 2 * W) {
      for (int r = 0; r < g; ++r)
        for (int64_t f = 0; f < F; ++f) row_factor_scalar<T>(rows[r], n, factor_at(P, tw_stack, f));
    } else {
      for (int64_t f = 0; f < F;) {
        const Factor<T> fa = factor_at(P, tw_stack, f);
        if (fa.stride >= W) {
          small_wide_factor<T>(rows, g, n, fa, tb);
          ++f;
          continue;
        }
        Factor<T> run[kMaxRun];
        int len = 0;
        for (; f < F && len < kMaxRun; ++f, ++len) {
          run[len] = factor_at(P, tw_stack, f);
          if (run[len].stride >= W) break;
        }
        if (n >= 8 * W) {
          small_narrow_run<T, 4>(rows, g, n, run, len, tb);
        } else if (n >= 4 * W) {
          small_narrow_run<T, 2>(rows, g, n, run, len, tb);
        } else {
          small_narrow_run<T, 1>(rows, g, n, run, len, tb);
        }
      }
    }
    if (bias != nullptr) {
      for (int r = 0; r < g; ++r) {
        if (n >= W) {
          for (int64_t i = 0; i < n; i += W) V::store(rows[r] + i, V::add(V::load(rows[r] + i), V::load(bias + i)));
        } else {
          for (int64_t i = 0; i < n; ++i) rows[r][i] += bias[i];
        }
      }
    }
  }
}

// ---------------------------------------------------------------- backward

// The twiddle gradients of 4 pairs: out[k][j] += the lane sum of v[4k + j] (the grads of
// a, b, c, d of one pair, summed over the rows in the lanes). Generic: a tree of
// permute-and-add levels, each halving the lanes per sum (16/W vectors remain).
template <typename T>
inline void add_pair_grads(typename Vec<T>::V* v, T* const* out, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  if constexpr (V::native_shuffles) {
    V::add_pair_grads(v, out);
  } else {
    int count = 16, level = 0;
    for (int g = W; g > 1; g /= 2, ++level) {
#pragma GCC unroll 8
      for (int m = 0; m < count / 2; ++m) {
        v[m] = V::add(V::permute2(v[2 * m], v[2 * m + 1], tb.fold_lo[level]),
                      V::permute2(v[2 * m], v[2 * m + 1], tb.fold_hi[level]));
      }
      count /= 2;
    }
    // Sum 4k + j now sits in vector (4k + j) / W, lane (4k + j) % W.
    for (int k = 0; k < 4; ++k) V::add_quarter(out[k], v[4 * k / W], 4 * k % W);
  }
}

// Backward through the pair update (u, v) -> (a u + b v, c u + d v) of the twiddle t, on
// the R vectors of a coordinate pair: (gi, gj), the grads of the outputs, become those of
// the inputs; acc[0..4) gets the per-lane grads of a, b, c, d, summed over the R vectors.
template <typename T, int R>
inline void pair_backward(const typename Vec<T>::V* u, const typename Vec<T>::V* v, typename Vec<T>::V* gi,
                          typename Vec<T>::V* gj, const T* t, typename Vec<T>::V* acc) {
  using V = Vec<T>;
  acc[0] = V::mul(gi[0], u[0]), acc[1] = V::mul(gi[0], v[0]), acc[2] = V::mul(gj[0], u[0]);
  acc[3] = V::mul(gj[0], v[0]);
#pragma GCC unroll 4
  for (int r = 1; r < R; ++r) {
    acc[0] = V::fmadd(gi[r], u[r], acc[0]), acc[1] = V::fmadd(gi[r], v[r], acc[1]);
    acc[2] = V::fmadd(gj[r], u[r], acc[2]), acc[3] = V::fmadd(gj[r], v[r], acc[3]);
  }
  Twiddle<T> transposed(t);  // gradients flow back through (a c; b d)
  std::swap(transposed.b, transposed.c);
  pair_update<T, R>(gi, gj, transposed);
}

// Backward through one factor in the tile layout: x is the factor's input, g holds the
// grad of its output and becomes the grad of its input; twiddle grads go to dtw.
template <typename T, int R>
void tile_factor_backward(const T* x, T* g, T* dtw, int64_t n, Factor<T> fa, const Tables<T>& tb) {
  using V = Vec<T>;
  constexpr int L = R * V::W;  // rows (values per coordinate)
  const int64_t s = fa.stride, npairs = n / 2;
  if (npairs < 4) {
    for (int64_t p = 0; p < npairs; ++p) {
      const int64_t i = (p / s) * 2 * s + p % s, j = i + s;
      const T* t = fa.tw + 4 * p;
      for (int l = 0; l < L; ++l) {
        const T u = x[i * L + l], v = x[j * L + l], gi = g[i * L + l], gj = g[j * L + l];
        dtw[4 * p] += gi * u, dtw[4 * p + 1] += gi * v, dtw[4 * p + 2] += gj * u, dtw[4 * p + 3] += gj * v;
        g[i * L + l] = t[0] * gi + t[2] * gj;
        g[j * L + l] = t[1] * gi + t[3] * gj;
      }
    }
    return;
  }
  for (int64_t p0 = 0; p0 < npairs; p0 += 4) {
    typename V::V acc[16];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const int64_t p = p0 + k, i = (p / s) * 2 * s + p % s, j = i + s;
      typename V::V u[R], v[R], gi[R], gj[R];
      load_coord<T, R>(x, i, u), load_coord<T, R>(x, j, v), load_coord<T, R>(g, i, gi), load_coord<T, R>(g, j, gj);
      pair_backward<T, R>(u, v, gi, gj, fa.tw + 4 * p, acc + 4 * k);
      store_coord<T, R>(g, i, gi), store_coord<T, R>(g, j, gj);
    }
    T* const out[4] = {dtw + 4 * p0, dtw + 4 * p0 + 4, dtw + 4 * p0 + 8, dtw + 4 * p0 + 12};
    add_pair_grads<T>(acc, out, tb);
  }
}

// Backward through two consecutive factors f1, f2 in one pass, from x, the input of f1:
// per quad {i, i+s1, i+s2, i+s1+s2} the input of f2 is recomputed in registers, so only
// every second factor's input is kept and each quad of g is loaded and stored once.
// f1 and f2 must have different strides (where two butterflies meet they do not).
template <typename T, int R>
void tile_factor_pair_backward(const T* x, T* g, T* dtw1, T* dtw2, int64_t n, Factor<T> f1, Factor<T> f2,
                               const Tables<T>& tb) {
  using V = Vec<T>;
  const int64_t s1 = f1.stride, s2 = f2.stride;
  const int64_t lo = s1 < s2 ? s1 : s2, hi = s1 < s2 ? s2 : s1;
  for (int64_t a = 0; a < n; a += 2 * hi) {
    for (int64_t b = 0; b < hi; b += 2 * lo) {
      for (int64_t c = 0; c < lo; ++c) {
        const int64_t i0 = a + b + c, i1 = i0 + s1, i2 = i0 + s2, i3 = i1 + s2;
        const int64_t p10 = pair_of(i0, s1), p11 = pair_of(i2, s1), p20 = pair_of(i0, s2), p21 = pair_of(i1, s2);
        typename V::V x0[R], x1[R], x2[R], x3[R], y0[R], y1[R], y2[R], y3[R];
        load_coord<T, R>(x, i0, x0), load_coord<T, R>(x, i1, x1), load_coord<T, R>(x, i2, x2);
        load_coord<T, R>(x, i3, x3);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) y0[r] = x0[r], y1[r] = x1[r], y2[r] = x2[r], y3[r] = x3[r];
        pair_update<T, R>(y0, y1, Twiddle<T>(f1.tw + 4 * p10));
        pair_update<T, R>(y2, y3, Twiddle<T>(f1.tw + 4 * p11));
        typename V::V g0[R], g1[R], g2[R], g3[R];
        load_coord<T, R>(g, i0, g0), load_coord<T, R>(g, i1, g1), load_coord<T, R>(g, i2, g2);
        load_coord<T, R>(g, i3, g3);
        typename V::V acc[16];
        pair_backward<T, R>(y0, y2, g0, g2, f2.tw + 4 * p20, acc);
        pair_backward<T, R>(y1, y3, g1, g3, f2.tw + 4 * p21, acc + 4);
        pair_backward<T, R>(x0, x1, g0, g1, f1.tw + 4 * p10, acc + 8);
        pair_backward<T, R>(x2, x3, g2, g3, f1.tw + 4 * p11, acc + 12);
        store_coord<T, R>(g, i0, g0), store_coord<T, R>(g, i1, g1), store_coord<T, R>(g, i2, g2);
        store_coord<T, R>(g, i3, g3);
        T* const out[4] = {dtw2 + 4 * p20, dtw2 + 4 * p21, dtw1 + 4 * p10, dtw1 + 4 * p11};
        add_pair_grads<T>(acc, out, tb);
      }
    }
  }
}

// Vectors per coordinate in the backward tiles: the twiddle broadcasts and the lane sums of
// the twiddle gradient are shared by 2W rows. Measured on AMD EPYC Zen 3 (AVX2, n = 512 and
// 1024): 1 -> 2 is 14-20% faster, 4 no faster than 2 (16 registers).
constexpr int kBackwardVectors = 2;

// checkpoint_every (K) is even: inside a segment the input of every second factor is kept.
template <typename T>
inline int64_t checkpoints(const Problem<T>& P) {
  return (factor_count(P) + P.checkpoint_every - 1) / P.checkpoint_every;
}

template <typename T>
size_t backward_scratch(const Problem<T>& P) {
  const int64_t tile = P.n * Vec<T>::W * kBackwardVectors;
  // checkpoints, the rest of a segment's kept inputs, one intermediate, the gradient
  return static_cast<size_t>((checkpoints(P) + P.checkpoint_every / 2 + 1) * tile + 2 * P.n);
}

// Per tile: the forward runs again (the op saves only the input), keeping the input of
// every checkpoint_every-th factor; then segments are walked backwards, each segment's
// inputs of every second factor recomputed from its checkpoint (nothing to recompute
// when K is 2), and the factors are differentiated two at a time.
template <typename T>
void backward_tiles(const Problem<T>& P, int64_t s, int64_t row_begin, int64_t row_end, T* scratch, T* dtw_stack) {
  constexpr int R = kBackwardVectors, rows = R * Vec<T>::W;
  const int64_t n = P.n, F = factor_count(P), K = P.checkpoint_every, tile = n * rows;
  const int64_t ncp = checkpoints(P);
  const Tables<T> tb;
  T* ckpt = scratch;
  T* seg = ckpt + ncp * tile;  // K/2 - 1 tiles
  T* mid = seg + (K / 2 - 1) * tile;
  T* gbuf = mid + tile;
  T* zeros = gbuf + tile;
  T* dummy = zeros + n;
  memset(zeros, 0, sizeof(T) * n);
  const T* tw_stack = stack_twiddle(P, s);
  const auto at = [&](int64_t f) { return factor_at(P, tw_stack, f); };
  const auto dtw_of = [&](const Factor<T>& fa) { return dtw_stack + (fa.tw - tw_stack); };
  const T* acts[64];
  for (int64_t t0 = row_begin; t0 < row_end; t0 += rows) {
    const int64_t m = min64(rows, row_end - t0);
    const T* src[rows];
    T* dst[rows];
    tile_rows<T>(P.input + s * P.in_stride_s, P.in_stride_b, t0, m, zeros, src, rows);
    transpose_in<T, R>(src, ckpt, n, tb);
    for (int64_t c = 1; c < ncp; ++c) {
      if (K == 2) {
        tile_factor_pair<T, R>(ckpt + (c - 1) * tile, ckpt + c * tile, n, at(2 * c - 2), at(2 * c - 1));
      } else {
        memcpy(ckpt + c * tile, ckpt + (c - 1) * tile, sizeof(T) * tile);
        tile_factors<T, R>(P, tw_stack, ckpt + c * tile, (c - 1) * K, c * K);
      }
    }
    tile_rows<T>(P.grad + s * P.grad_stride_s, P.grad_stride_b, t0, m, zeros, src, rows);
    transpose_in<T, R>(src, gbuf, n, tb);
    for (int64_t c = ncp - 1; c >= 0; --c) {
      const int64_t f0 = c * K, f1 = min64(F, f0 + K), nacts = (f1 - f0 + 1) / 2;
      acts[0] = ckpt + c * tile;
      for (int64_t k = 1; k < nacts; ++k) {
        T* a = seg + (k - 1) * tile;
        tile_factor_pair<T, R>(acts[k - 1], a, n, at(f0 + 2 * k - 2), at(f0 + 2 * k - 1));
        acts[k] = a;
      }
      for (int64_t k = nacts - 1; k >= 0; --k) {
        const int64_t f = f0 + 2 * k;
        const Factor<T> fa = at(f);
        if (f + 1 == f1) {
          tile_factor_backward<T, R>(acts[k], gbuf, dtw_of(fa), n, fa, tb);
          continue;
        }
        const Factor<T> fb = at(f + 1);
        if (fa.stride != fb.stride) {
          tile_factor_pair_backward<T, R>(acts[k], gbuf, dtw_of(fa), dtw_of(fb), n, fa, fb, tb);
        } else {  // the same pairs twice: through the intermediate
          tile_factor<T, R>(acts[k], mid, n, fa);
          tile_factor_backward<T, R>(mid, gbuf, dtw_of(fb), n, fb, tb);
          tile_factor_backward<T, R>(acts[k], gbuf, dtw_of(fa), n, fa, tb);
        }
      }
    }
    for (int l = 0; l < rows; ++l) dst[l] = l < m ? P.output + ((t0 + l) * P.nstacks + s) * n : dummy;
    transpose_out<T, R>(gbuf, dst, nullptr, n, tb);
  }
}

template <typename T>
constexpr Kernels<T> make_kernels(const char* isa) {
  return {isa,
          Vec<T>::W * kBackwardVectors,
          Vec<T>::W * kTileVectors,
          &tile_scratch<T>,
          &forward_tiles<T>,
          &forward_small<T>,
          &backward_scratch<T>,
          &backward_tiles<T>};
}
