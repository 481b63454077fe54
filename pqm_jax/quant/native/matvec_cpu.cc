// A 4-bit (NF4/FP4) weight matrix times a few rows of activations, decoded on the fly, as an XLA
// FFI handler: nothing dense is ever written to memory.
//
// Why: a greedy decoding step multiplies one to sixteen rows by every decoder weight and by the
// tied output embedding. That is bound by memory traffic, and the 4-bit codes are an eighth of the
// float32 bytes XLA's dense product reads. Each 16-byte load of codes becomes 32 weights in two
// AVX-512 registers (one lane permute per 16 lookups), multiplied straight into accumulators.
//
// Weights use the bitsandbytes block format: codes two a byte, element 2j of the row-major
// flattened tensor in the high nibble of byte j; one float32 absmax per block. Every weight is
// decoded as table[code] * absmax (one float32 multiply, as nf4_cpu.cc), then multiplied and
// added into float32 accumulators with fused multiply-adds. The order of that sum (per lane, per
// 32 elements, then across lanes) differs from XLA's dense dot, so results are close to
// `x @ dequantize(w)`, not bit-equal.
//
// Two layouts (attribute `layout`):
//   0 "in-out": x [R, K] @ W [K, N], W quantised as stored: 32 consecutive outputs share a load;
//   1 "out-in": x [R, K] @ T[N, K].T, T quantised row by row (PyTorch's [out, in] linears and
//     the [vocab, d] embedding): one dot product per output row.
// Blocks must be a power of two >= 32 and the contiguous dimension (N, resp. K) a multiple of 32,
// so no 32-element load straddles a block; blocks may run across rows of the tensor.
//
// Large products are split over the caller and XLA's intra-op thread pool (kernels.h).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 32;  // elements of one 16-byte load of codes
constexpr int kGroup = 8;       // activation rows per pass over the weights (register budget)
// Weight decodes (times row groups) per thread. Measured on a 2-core Xeon (Sapphire Rapids) with
// the other core idle, one thread against two: 0.15M weights (384 x 384) 9 against 9 us at one
// row; 0.6M (1536 x 384) 30 against 20 us, at 8 rows 117 against 74; tiny.en's 51,864 x 384
// logits 1.15 against 0.69 ms, at 8 rows 3.8 against 2.0. With the other core busy (another
// process), the second thread costs 5-10% instead.
constexpr int64_t kMinWeightsPerThread = int64_t{1} << 19;

enum Layout : int64_t { kInOut = 0, kOutIn = 1 };

using Matrix = ffi::Buffer<ffi::F32, 2>;
using MatrixResult = ffi::ResultBuffer<ffi::F32, 2>;

struct Problem {
  const float* x;        // [rows, k] (out-in with AVX-512: pairs de-interleaved, see PackPairs)
  const uint8_t* codes;  // [k * n / 2]
  const float* absmax;   // [k * n / block]
  const float* table;    // [16]
  float* out;            // [rows, n]
  int64_t rows, k, n;
  int shift;             // log2(block)
};

// x [rows, k] -> per 32 elements its 16 even, then its 16 odd ones (the decoded registers' order).
void PackPairs(const float* x, int64_t rows, int64_t k, float* packed) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < k; c += kChunk) {
      const float* s = x + r * k + c;
      float* d = packed + r * k + c;
      for (int j = 0; j < 16; ++j) {
        d[j] = s[2 * j];
        d[16 + j] = s[2 * j + 1];
      }
    }
  }
}

#ifdef __AVX512F__

struct Decoded {
  __m512 even, odd;  // elements 2j and 2j + 1 of 32 consecutive ones
};

// The 32 weights from flat element f on (f a multiple of 32): one multiply scales the table by the
// block's absmax, as the dequantise kernel does; each nibble then picks its scaled value.
inline Decoded Decode(const Problem& p, __m512 table, int64_t f) {
  const __m512 scaled = _mm512_mul_ps(table, _mm512_set1_ps(p.absmax[f >> p.shift]));
  const __m512i bytes =
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.codes + f / 2)));
  // permutexvar reads only the low 4 bits of an index: the low nibble needs no mask.
  return {_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), scaled),
          _mm512_permutexvar_ps(bytes, scaled)};
}

// Out-in: rows r of x against table rows v..v+V-1; x de-interleaved per 32 (evens, then odds) so
// it meets the decoded registers lane for lane. V * G <= 16 independent sums are in flight (one
// register each: even and odd halves add into the same one), reduced together by Sum16.
template <int G, int V>
void OutInTile(const Problem& p, const float* x, float* out, int64_t v) {
  static_assert(G * V <= 16, "sixteen accumulators at most");
  const __m512 table = _mm512_loadu_ps(p.table);
  __m512 acc[16];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t c = 0; c < p.k; c += kChunk) {
    if constexpr (G >= V) {  // decode the V rows, then stream each activation row past them
      Decoded w[V];
      for (int t = 0; t < V; ++t) w[t] = Decode(p, table, (v + t) * p.k + c);
      for (int r = 0; r < G; ++r) {
        const __m512 xe = _mm512_loadu_ps(x + r * p.k + c);
        const __m512 xo = _mm512_loadu_ps(x + r * p.k + c + 16);
        for (int t = 0; t < V; ++t) {
          acc[t * G + r] = _mm512_fmadd_ps(xe, w[t].even, acc[t * G + r]);
          acc[t * G + r] = _mm512_fmadd_ps(xo, w[t].odd, acc[t * G + r]);
        }
      }
    } else {  // few activation rows stay in registers while many weight rows stream past
      __m512 xe[G], xo[G];
      for (int r = 0; r < G; ++r) {
        xe[r] = _mm512_loadu_ps(x + r * p.k + c);
        xo[r] = _mm512_loadu_ps(x + r * p.k + c + 16);
      }
      for (int t = 0; t < V; ++t) {
        const Decoded w = Decode(p, table, (v + t) * p.k + c);
        for (int r = 0; r < G; ++r) {
          acc[t * G + r] = _mm512_fmadd_ps(xe[r], w.even, acc[t * G + r]);
          acc[t * G + r] = _mm512_fmadd_ps(xo[r], w.odd, acc[t * G + r]);
        }
      }
    }
  }
  float sums[16];
  pqm::Sum16(acc, sums);
  for (int t = 0; t < V; ++t) {
    for (int r = 0; r < G; ++r) out[r * p.n + v + t] = sums[t * G + r];
  }
}

template <int G>
void OutInRange(const Problem& p, const float* x, float* out, int64_t v0, int64_t v1) {
  constexpr int V = 16 / G;
  int64_t v = v0;
  for (; v + V <= v1; v += V) OutInTile<G, V>(p, x, out, v);
  for (; v < v1; ++v) OutInTile<G, 1>(p, x, out, v);
}

// In-out: rows r of x times columns n0..n0+32C-1 of W: each weight row k is C loads of codes,
// each activation x[r, k] one broadcast. Even and odd columns sum apart and interleave on store.
template <int G, int C>
void InOutTile(const Problem& p, const float* x, float* out, int64_t n0) {
  const __m512 table = _mm512_loadu_ps(p.table);
  __m512 even[C][G], odd[C][G];
  for (int c = 0; c < C; ++c) {
    for (int r = 0; r < G; ++r) even[c][r] = odd[c][r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < p.k; ++k) {
    Decoded w[C];
    for (int c = 0; c < C; ++c) w[c] = Decode(p, table, k * p.n + n0 + c * kChunk);
    for (int r = 0; r < G; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * p.k + k]);
      for (int c = 0; c < C; ++c) {
        even[c][r] = _mm512_fmadd_ps(xb, w[c].even, even[c][r]);
        odd[c][r] = _mm512_fmadd_ps(xb, w[c].odd, odd[c][r]);
      }
    }
  }
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int c = 0; c < C; ++c) {
    for (int r = 0; r < G; ++r) {
      float* o = out + r * p.n + n0 + c * kChunk;
      _mm512_storeu_ps(o, _mm512_permutex2var_ps(even[c][r], first, odd[c][r]));
      _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(even[c][r], second, odd[c][r]));
    }
  }
}

// Columns [32 u0, 32 u1).
template <int G>
void InOutRange(const Problem& p, const float* x, float* out, int64_t u0, int64_t u1) {
  constexpr int C = G <= 2 ? 4 : G <= 4 ? 2 : 1;
  int64_t u = u0;
  for (; u + C <= u1; u += C) InOutTile<G, C>(p, x, out, u * kChunk);
  for (; u < u1; ++u) InOutTile<G, 1>(p, x, out, u * kChunk);
}

// Every row of x in groups of at most kGroup; [u0, u1) are output rows (out-in) or 32-column
// chunks (in-out).
void RunRange(const Problem& p, Layout layout, int64_t u0, int64_t u1) {
  for (int64_t r0 = 0; r0 < p.rows; r0 += kGroup) {
    const float* x = p.x + r0 * p.k;
    float* out = p.out + r0 * p.n;
    const int64_t g = std::min<int64_t>(kGroup, p.rows - r0);
    pqm::WithGroup(g, [&](auto group) {
      constexpr int G = decltype(group)::value;
      if (layout == kOutIn) OutInRange<G>(p, x, out, u0, u1);
      else InOutRange<G>(p, x, out, u0, u1);
    });
  }
}

constexpr bool kPacksPairs = true;

#else  // portable loops: any CPU (a plain multiply and add per weight)

constexpr bool kPacksPairs = false;

inline float Weight(const Problem& p, int64_t f) {
  const uint8_t byte = p.codes[f / 2];
  return p.table[f % 2 ? byte & 15 : byte >> 4] * p.absmax[f >> p.shift];
}

void RunRange(const Problem& p, Layout layout, int64_t u0, int64_t u1) {
  if (layout == kOutIn) {
    for (int64_t r = 0; r < p.rows; ++r) {
      for (int64_t v = u0; v < u1; ++v) {
        float acc = 0.0f;
        for (int64_t k = 0; k < p.k; ++k) acc += p.x[r * p.k + k] * Weight(p, v * p.k + k);
        p.out[r * p.n + v] = acc;
      }
    }
    return;
  }
  const int64_t n0 = u0 * kChunk, n1 = u1 * kChunk;
  for (int64_t r = 0; r < p.rows; ++r) std::fill(p.out + r * p.n + n0, p.out + r * p.n + n1, 0.0f);
  for (int64_t k = 0; k < p.k; ++k) {
    for (int64_t n = n0; n < n1; ++n) {
      const float w = Weight(p, k * p.n + n);
      for (int64_t r = 0; r < p.rows; ++r) p.out[r * p.n + n] += p.x[r * p.k + k] * w;
    }
  }
}

#endif

// Threads for `weights` weight decodes (each row group passes over the weights once).
int64_t Threads(int64_t requested, int64_t weights, int64_t pool_threads) {
  return pqm::Threads(requested, weights, kMinWeightsPerThread, pool_threads);
}

ffi::Error MatVec(ffi::ThreadPool pool, Matrix x, ffi::Buffer<ffi::U8> codes,
                  ffi::Buffer<ffi::F32> absmax, ffi::Buffer<ffi::F32> table, int64_t block,
                  int64_t layout, int64_t threads, MatrixResult out) {
  const int64_t rows = x.dimensions()[0], k = x.dimensions()[1];
  const int64_t n = out->dimensions()[1];
  if (layout != kInOut && layout != kOutIn) return ffi::Error::InvalidArgument("layout is 0 or 1");
  if (block < kChunk || (block & (block - 1))) {
    return ffi::Error::InvalidArgument("block must be a power of two >= 32");
  }
  if (table.element_count() != 16) return ffi::Error::InvalidArgument("table must hold 16 values");
  if ((layout == kOutIn ? k : n) % kChunk) {
    return ffi::Error::InvalidArgument("the weight's rows must hold a multiple of 32 elements");
  }
  if (out->dimensions()[0] != rows || int64_t(codes.element_count()) * 2 != k * n ||
      int64_t(absmax.element_count()) * block != k * n) {
    return ffi::Error::InvalidArgument(
        "shapes do not match: x [" + std::to_string(rows) + ", " + std::to_string(k) + "], out [" +
        std::to_string(out->dimensions()[0]) + ", " + std::to_string(n) + "], " +
        std::to_string(codes.element_count()) + " code bytes, " +
        std::to_string(absmax.element_count()) + " blocks of " + std::to_string(block));
  }
  if (rows == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(out->typed_data(), out->typed_data() + rows * n, 0.0f);
    return ffi::Error::Success();
  }
  int shift = 0;
  while ((int64_t{1} << shift) < block) ++shift;
  const float* xs = x.typed_data();
  // Reused across calls: the packed activations are at most a few hundred kilobytes.
  thread_local std::vector<float> packed;
  if (kPacksPairs && layout == kOutIn) {
    packed.resize(rows * k);
    PackPairs(xs, rows, k, packed.data());
    xs = packed.data();
  }
  const Problem p{xs, codes.typed_data(), absmax.typed_data(), table.typed_data(),
                  out->typed_data(), rows, k, n, shift};
  const int64_t units = layout == kOutIn ? n : n / kChunk;
  const int64_t passes = (rows + kGroup - 1) / kGroup;
  const int64_t t = std::min(units, Threads(threads, k * n * passes, pool.num_threads()));
  const auto run = [&p, layout](int64_t u0, int64_t u1) {
    RunRange(p, static_cast<Layout>(layout), u0, u1);
  };
  pqm::RunParallel(run, units, std::max<int64_t>(1, t), pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmFourBitMatVec, MatVec,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()  // x [rows, k]
                                  .Arg<ffi::Buffer<ffi::U8>>()  // codes
                                  .Arg<ffi::Buffer<ffi::F32>>()  // absmax
                                  .Arg<ffi::Buffer<ffi::F32>>()  // table [16]
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("layout")  // 0: x @ W[k, n]; 1: x @ T[n, k].T
                                  .Attr<int64_t>("threads")  // 0: by size and pool
                                  .Ret<Matrix>());  // out [rows, n]
