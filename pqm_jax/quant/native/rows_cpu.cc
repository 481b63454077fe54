// A few rows of activations times float32 matrices, as an XLA FFI handler: a decoding step's
// logits against the tied embedding and its attention over cached keys and values.
//
// Why: a greedy step multiplies 1-16 rows by the 51,864 x d embedding and, per (row, head), one
// query by 1,500 cached keys and values. That is bound by reading the matrices once. XLA's CPU
// dot packs (copies) the matrix first, so it moves them about twice: on 2 cores 22 GB/s for
// tiny.en's cross-attention at batch 8 against 36 GB/s for a plain sum over the same arrays.
// Here every matrix element is loaded once and multiplied straight into float32 accumulators.
//
// Batched: out[g] = x[g] @ W[g] over g < G, with W shared by every g when its leading dimension
// is 1. Two layouts (attribute `layout`):
//   0 "in-out": x [G, R, K] @ W [K, N] (attention weights times values): a row of W is N / 16
//     registers, each x[r, k] one broadcast; N a multiple of 16.
//   1 "out-in": x [G, R, K] @ T[N, K].T (queries times keys, rows times the embedding): one dot
//     product per row of T, sixteen reduced together (Sum16); K a multiple of 16.
// Sums run in float32 in their own order (lanes, then across lanes; in-out in a few interleaved
// partial sums), so results are close to XLA's dot, not bit-equal.

#include <algorithm>
#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kGroup = 8;          // activation rows per pass over a matrix (register budget)
constexpr int64_t kOutInUnit = 16;  // matrix rows per unit of parallel work (out-in)
constexpr int64_t kInOutUnit = 64;  // output columns per unit of parallel work (in-out)
// Multiply-adds per thread before a second thread pays (a thread start costs a few us).
constexpr int64_t kMinWorkPerThread = int64_t{1} << 18;

enum Layout : int64_t { kInOut = 0, kOutIn = 1 };

using Batch = ffi::Buffer<ffi::F32, 3>;

struct Problem {
  const float* x;  // [G, R, K]
  const float* w;  // [G or 1, N, K] (out-in) or [G or 1, K, N] (in-out)
  float* out;      // [G, R, N]
  int64_t rows, k, n;
  int64_t w_stride;  // elements between the matrices of consecutive g (0: shared)
};

#ifdef __AVX512F__

// Rows x[0..G) against matrix rows v..v+V-1: V * G <= 16 sums in flight, one register each.
// Each load prefetches the same place two tiles on (the logits of 8 rows against tiny.en's
// float32 embedding: 5.5-6.0 against 4.3-4.6 ms on 2 AMD EPYC cores).
template <int G, int V>
void OutInTile(const Problem& p, const float* x, const float* w, float* out, int64_t v) {
  static_assert(G * V <= 16, "sixteen accumulators at most");
  __m512 acc[16];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t c = 0; c < p.k; c += 16) {
    if constexpr (G >= V) {  // load the V matrix rows, then stream each activation row past
      __m512 wr[V];
      for (int t = 0; t < V; ++t) {
        const float* at = w + (v + t) * p.k + c;
        _mm_prefetch(reinterpret_cast<const char*>(at + 2 * V * p.k), _MM_HINT_T0);
        wr[t] = _mm512_loadu_ps(at);
      }
      for (int r = 0; r < G; ++r) {
        const __m512 xr = _mm512_loadu_ps(x + r * p.k + c);
        for (int t = 0; t < V; ++t) acc[t * G + r] = _mm512_fmadd_ps(xr, wr[t], acc[t * G + r]);
      }
    } else {  // the few activation rows stay in registers while the matrix rows stream past
      __m512 xr[G];
      for (int r = 0; r < G; ++r) xr[r] = _mm512_loadu_ps(x + r * p.k + c);
      for (int t = 0; t < V; ++t) {
        const float* at = w + (v + t) * p.k + c;
        _mm_prefetch(reinterpret_cast<const char*>(at + 2 * V * p.k), _MM_HINT_T0);
        const __m512 wt = _mm512_loadu_ps(at);
        for (int r = 0; r < G; ++r) acc[t * G + r] = _mm512_fmadd_ps(xr[r], wt, acc[t * G + r]);
      }
    }
  }
  float sums[16];
  pqm::Sum16(acc, sums);
  for (int t = 0; t < V; ++t) {
    for (int r = 0; r < G; ++r) out[r * p.n + v + t] = sums[t * G + r];
  }
}

// Prefetch distance of OutInTile64 in floats: 32 key rows (8 KB) ahead. Without the software
// prefetch the scores ran at 21-27 GB/s, with it at 32-34 GB/s, as fast as the value product's
// reads (4 layers of tiny.en's cross-attention at batch 8 on 2 AMD EPYC cores: 3.2-3.8 against
// 2.05-2.29 ms). Prefetches never fault, so reading past a matrix's end is harmless.
constexpr int64_t kAhead = 32 * 64;

// Attention scores (K = 64, one or two queries per head): the G rows' 4 G registers stay
// loaded for the whole range, and each matrix row is read front to back, one after another, so
// the reads stream (reading 16 rows a chunk at a time, as OutInTile does, strides by 256 bytes
// and ran at two thirds of the values' bandwidth). Each sum is formed in the same order as in
// OutInTile, so the results are the same bits.
template <int G, int V>
void OutInTile64(const Problem& p, const __m512 (&xr)[G][4], const float* w, float* out,
                 int64_t v) {
  static_assert(G * V <= 16, "sixteen accumulators at most");
  __m512 acc[16];
  for (int t = 0; t < V; ++t) {
    const float* row = w + (v + t) * 64;
    for (int l = 0; l < 4; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(row + kAhead + 16 * l), _MM_HINT_T0);
    }
    const __m512 w0 = _mm512_loadu_ps(row), w1 = _mm512_loadu_ps(row + 16);
    const __m512 w2 = _mm512_loadu_ps(row + 32), w3 = _mm512_loadu_ps(row + 48);
    for (int r = 0; r < G; ++r) {
      __m512 a = _mm512_mul_ps(xr[r][0], w0);
      a = _mm512_fmadd_ps(xr[r][1], w1, a);
      a = _mm512_fmadd_ps(xr[r][2], w2, a);
      acc[t * G + r] = _mm512_fmadd_ps(xr[r][3], w3, a);
    }
  }
  for (int i = G * V; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  float sums[16];
  pqm::Sum16(acc, sums);
  for (int t = 0; t < V; ++t) {
    for (int r = 0; r < G; ++r) out[r * p.n + v + t] = sums[t * G + r];
  }
}

template <int G>
void OutInRange(const Problem& p, const float* x, const float* w, float* out, int64_t v0,
                int64_t v1) {
  constexpr int V = 16 / G;
  int64_t v = v0;
  if constexpr (G <= 2) {
    if (p.k == 64) {
      __m512 xr[G][4];
      for (int r = 0; r < G; ++r) {
        for (int c = 0; c < 4; ++c) xr[r][c] = _mm512_loadu_ps(x + r * 64 + 16 * c);
      }
      for (; v + V <= v1; v += V) OutInTile64<G, V>(p, xr, w, out, v);
      for (; v < v1; ++v) OutInTile64<G, 1>(p, xr, w, out, v);
      return;
    }
  }
  for (; v + V <= v1; v += V) OutInTile<G, V>(p, x, w, out, v);
  for (; v < v1; ++v) OutInTile<G, 1>(p, x, w, out, v);
}

// Rows x[0..G) times columns n0..n0+16C-1 of W. Each column's sum is split over P interleaved
// partial sums (k mod P), so that 16 multiply-adds are in flight even for one row.
template <int G, int C>
void InOutTile(const Problem& p, const float* x, const float* w, float* out, int64_t n0) {
  constexpr int P = std::max(1, 16 / (G * C));
  __m512 acc[P][C][G];
  for (auto& a : acc) {
    for (auto& b : a) {
      for (auto& c : b) c = _mm512_setzero_ps();
    }
  }
  int64_t k = 0;
  for (; k + P <= p.k; k += P) {
    for (int q = 0; q < P; ++q) {
      __m512 wr[C];
      for (int c = 0; c < C; ++c) wr[c] = _mm512_loadu_ps(w + (k + q) * p.n + n0 + 16 * c);
      for (int r = 0; r < G; ++r) {
        const __m512 xb = _mm512_set1_ps(x[r * p.k + k + q]);
        for (int c = 0; c < C; ++c) acc[q][c][r] = _mm512_fmadd_ps(xb, wr[c], acc[q][c][r]);
      }
    }
  }
  for (; k < p.k; ++k) {
    for (int c = 0; c < C; ++c) {
      const __m512 wr = _mm512_loadu_ps(w + k * p.n + n0 + 16 * c);
      for (int r = 0; r < G; ++r) {
        acc[0][c][r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * p.k + k]), wr, acc[0][c][r]);
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    for (int r = 0; r < G; ++r) {
      __m512 s = acc[0][c][r];
      for (int q = 1; q < P; ++q) s = _mm512_add_ps(s, acc[q][c][r]);
      _mm512_storeu_ps(out + r * p.n + n0 + 16 * c, s);
    }
  }
}

// Columns [16 u0, 16 u1).
template <int G>
void InOutRange(const Problem& p, const float* x, const float* w, float* out, int64_t u0,
                int64_t u1) {
  constexpr int C = G <= 2 ? 4 : G <= 4 ? 2 : 1;
  int64_t u = u0;
  for (; u + C <= u1; u += C) InOutTile<G, C>(p, x, w, out, u * 16);
  for (; u < u1; ++u) InOutTile<G, 1>(p, x, w, out, u * 16);
}

// Matrix g: every row of x in groups of at most kGroup; [u0, u1) are matrix rows (out-in) or
// 16-column chunks (in-out).
void RunOne(const Problem& p, Layout layout, int64_t g, int64_t u0, int64_t u1) {
  const float* w = p.w + g * p.w_stride;
  for (int64_t r0 = 0; r0 < p.rows; r0 += kGroup) {
    const float* x = p.x + (g * p.rows + r0) * p.k;
    float* out = p.out + (g * p.rows + r0) * p.n;
    const int64_t size = std::min<int64_t>(kGroup, p.rows - r0);
    pqm::WithGroup(size, [&](auto group) {
      constexpr int G = decltype(group)::value;
      if (layout == kOutIn) OutInRange<G>(p, x, w, out, u0, u1);
      else InOutRange<G>(p, x, w, out, u0, u1);
    });
  }
}

#else  // portable loops: any CPU

void RunOne(const Problem& p, Layout layout, int64_t g, int64_t u0, int64_t u1) {
  const float* w = p.w + g * p.w_stride;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + (g * p.rows + r) * p.k;
    float* out = p.out + (g * p.rows + r) * p.n;
    if (layout == kOutIn) {
      for (int64_t v = u0; v < u1; ++v) {
        float acc = 0.0f;
        for (int64_t k = 0; k < p.k; ++k) acc += x[k] * w[v * p.k + k];
        out[v] = acc;
      }
      continue;
    }
    const int64_t n0 = u0 * 16, n1 = std::min(u1 * 16, p.n);
    std::fill(out + n0, out + n1, 0.0f);
    for (int64_t k = 0; k < p.k; ++k) {
      for (int64_t n = n0; n < n1; ++n) out[n] += x[k] * w[k * p.n + n];
    }
  }
}

#endif

ffi::Error Rows(ffi::ThreadPool pool, Batch x, Batch w, int64_t layout, int64_t threads,
                ffi::ResultBuffer<ffi::F32, 3> out) {
  const auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  const int64_t groups = xd[0], rows = xd[1], k = xd[2];
  if (layout != kInOut && layout != kOutIn) return ffi::Error::InvalidArgument("layout is 0 or 1");
  const int64_t n = layout == kOutIn ? wd[1] : wd[2];
  const int64_t wk = layout == kOutIn ? wd[2] : wd[1];
  if ((wd[0] != 1 && wd[0] != groups) || wk != k || od[0] != groups || od[1] != rows ||
      od[2] != n) {
    return ffi::Error::InvalidArgument(
        "shapes do not match: x [" + std::to_string(groups) + ", " + std::to_string(rows) + ", " +
        std::to_string(k) + "], matrices [" + std::to_string(wd[0]) + ", " +
        std::to_string(wd[1]) + ", " + std::to_string(wd[2]) + "], layout " +
        std::to_string(layout));
  }
  if ((layout == kOutIn ? k : n) % 16) {
    return ffi::Error::InvalidArgument("the matrices' rows must hold a multiple of 16 elements");
  }
  if (groups == 0 || rows == 0 || n == 0) return ffi::Error::Success();
  const Problem p{x.typed_data(), w.typed_data(), out->typed_data(), rows, k, n,
                  wd[0] == 1 ? 0 : k * n};
  const int64_t per = layout == kOutIn ? (n + kOutInUnit - 1) / kOutInUnit : n / kInOutUnit +
                                                                                 (n % kInOutUnit != 0);
  const auto run = [&p, layout, per](int64_t u0, int64_t u1) {
    // Units are (g, chunk) pairs, g-major; a range may span several matrices.
    for (int64_t u = u0; u < u1;) {
      const int64_t g = u / per, first = u % per;
      const int64_t last = std::min(per, first + (u1 - u));
      if (layout == kOutIn) {
        RunOne(p, kOutIn, g, first * kOutInUnit, std::min(p.n, last * kOutInUnit));
      } else {
        RunOne(p, kInOut, g, first * (kInOutUnit / 16), std::min(p.n / 16, last * (kInOutUnit / 16)));
      }
      u += last - first;
    }
  };
  const int64_t units = groups * per;
  const int64_t t = std::min(units, pqm::Threads(threads, groups * rows * k * n, kMinWorkPerThread,
                                                 pool.num_threads()));
  pqm::RunParallel(run, units, std::max<int64_t>(1, t), pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmFewRows, Rows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Batch>()  // x [G, R, K]
                                  .Arg<Batch>()  // matrices [G or 1, N, K] / [G or 1, K, N]
                                  .Attr<int64_t>("layout")   // 0: x @ W[k, n]; 1: x @ T[n, k].T
                                  .Attr<int64_t>("threads")  // 0: by size and pool
                                  .Ret<Batch>());            // out [G, R, N]
