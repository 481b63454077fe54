// Unmasked softmax attention over long sequences (Whisper's encoder: 1,500 x 1,500 scores per
// head), fused: scores, softmax and the value product for a few query rows at a time, as XLA
// FFI handlers: forward in float32 and bfloat16 (float32 output), backward in float32.
//
// Why: XLA's CPU backend runs the encoder's attention one (batch, head) pair at a time as two
// products with the 1,500 x 1,500 scores written out and read back between them, packing both
// operands for each product; on 2 cores that ran at about half the float32 matmul rate, and in
// bfloat16 slower than in float32. Here six query rows' scores (36 KB) stay in the first-level
// cache from their product to the value product, the keys are laid out once per (batch, head)
// so that each score tile is a plain register-blocked product, and bfloat16 inputs multiply on
// the AMX tile unit (sixteen rows at a time) or, without one, in pairs (`vdpbf16ps`), with
// float32 sums and without being widened first.
//
// Semantics (as `attention._per_head`): out = (exp(s - max s) @ v) / sum exp(s - max s) per row,
// s = q @ k.T in float32 (queries already scaled). In bfloat16 the exponentials are rounded to
// bfloat16 for the value product, their sum is taken in float32. The float32 forward also
// returns lse = max s + log(sum exp(s - max s)) per row, from which the backward recomputes the
// weights (flash-attention's backward: no [Tq, Tk] matrix is kept). Sums run in the kernel's own
// order: results are close to XLA's, not bit-equal.
//
// Inputs are [..., T, 64] with any leading axes folded into groups (a vmapped call passes its
// mapped axis there). Requires AVX-512 (AVX512-BF16 for bfloat16) and a head size of 64;
// `PqmAttentionCaps()` says what this build can do, and callers keep XLA's formulation otherwise.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define PQM_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kHead = 64;       // head size the tiles are written for (4 registers)
constexpr int kRows = 6;            // query rows per tile: 6 x 4 accumulators
constexpr int64_t kTileRowsMax = 16;  // query rows per tile at most (AMX)
constexpr int64_t kChunk = 240;     // query rows per unit of parallel work (a multiple of kRows)
constexpr int64_t kMinWorkPerThread = int64_t{1} << 22;  // multiply-adds before a 2nd thread pays

enum Caps : int32_t { kFloat32 = 1, kBFloat16 = 2, kAmx = 4 };

// True once Linux lets this process use the AMX tile registers (asked once).
bool AmxReady() {
#ifdef PQM_AMX
  static const bool ready = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ready;
#else
  return false;
#endif
}

}  // namespace

extern "C" int32_t PqmAttentionCaps() {
  int32_t caps = 0;
#ifdef __AVX512F__
  caps |= kFloat32;
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  caps |= kBFloat16;
  if (AmxReady()) caps |= kAmx;
#endif
  return caps;
}

namespace {

struct Free {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Scratch = std::unique_ptr<T[], Free>;

// A few hundred KB of per-thread scratch, 64-byte aligned; out of memory aborts (as XLA does).
template <typename T>
Scratch<T> Allocate(int64_t n) {
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(T) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  if (p == nullptr) std::abort();
  return Scratch<T>(static_cast<T*>(p));
}

int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

#ifdef __AVX512F__

// exp(x) for x <= 0 (scores minus their row's maximum): 2^n * p(r), x = n ln 2 + r, |r| <= ln2/2,
// p the degree-6 minimax polynomial of Cephes' expf (about 1 ulp); below -87.3 the result
// underflows to 0 as XLA's (denormals are flushed).
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.33654f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Row r of s[R, tk] (stride ld) becomes exp(s - max); returns the row's sum (and its max in
// `row_max` if given). Columns tk..ld-1 are set to 0 (the padded keys).
inline float SoftmaxRow(float* s, int64_t tk, int64_t ld, float* row_max = nullptr) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= tk; j += 16) m = _mm512_max_ps(m, _mm512_load_ps(s + j));
  const __mmask16 tail = static_cast<__mmask16>((1u << (tk - j)) - 1);
  if (tk > j) m = _mm512_mask_max_ps(m, tail, m, _mm512_maskz_load_ps(tail, s + j));
  const float top = _mm512_reduce_max_ps(m);
  if (row_max != nullptr) *row_max = top;
  const __m512 mx = _mm512_set1_ps(top);
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= tk; j += 16) {
    const __m512 e = Exp(_mm512_sub_ps(_mm512_load_ps(s + j), mx));
    _mm512_store_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (tk > j) {
    const __m512 e = _mm512_maskz_mov_ps(tail, Exp(_mm512_sub_ps(_mm512_load_ps(s + j), mx)));
    _mm512_store_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
    j += 16;
  }
  for (; j < ld; j += 16) _mm512_store_ps(s + j, _mm512_setzero_ps());
  return _mm512_reduce_add_ps(sum);
}

// ---- float32 ----------------------------------------------------------------------------------

// Scores of R query rows against key columns j..j+16*NJ: s[r, j..] = sum_d q[r, d] kt[d, j..].
template <int R, int NJ>
inline void ScoreTileF32(const float* q, const float* kt, int64_t ldk, int64_t j, float* s,
                         int64_t lds) {
  __m512 acc[R][NJ];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NJ; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t d = 0; d < kHead; ++d) {
    __m512 kv[NJ];
    for (int t = 0; t < NJ; ++t) kv[t] = _mm512_load_ps(kt + d * ldk + j + 16 * t);
    for (int r = 0; r < R; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * kHead + d]);
      for (int t = 0; t < NJ; ++t) acc[r][t] = _mm512_fmadd_ps(qb, kv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NJ; ++t) _mm512_store_ps(s + r * lds + j + 16 * t, acc[r][t]);
}

// out[r, :] = (p[r, :tk] @ v[:tk, :]) / sums[r].
template <int R>
inline void ValueTileF32(const float* p, int64_t ldp, const float* v, int64_t tk,
                         const float* sums, float* out) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < tk; ++j) {
    __m512 vv[4];
    for (int t = 0; t < 4; ++t) vv[t] = _mm512_loadu_ps(v + j * kHead + 16 * t);
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * ldp + j]);
      for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_fmadd_ps(pb, vv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 den = _mm512_set1_ps(sums[r]);
    for (int t = 0; t < 4; ++t)
      _mm512_storeu_ps(out + r * kHead + 16 * t, _mm512_div_ps(acc[r][t], den));
  }
}

// s[r, :ldk] = rows[r, :] @ kt for R rows of 64 (kt: [64, ldk], ldk a multiple of 16).
template <int R>
void ScoresF32(const float* rows, const float* kt, int64_t ldk, float* s) {
  int64_t j = 0;
  for (; j + 64 <= ldk; j += 64) ScoreTileF32<R, 4>(rows, kt, ldk, j, s, ldk);
  switch ((ldk - j) / 16) {
    case 3: ScoreTileF32<R, 3>(rows, kt, ldk, j, s, ldk); break;
    case 2: ScoreTileF32<R, 2>(rows, kt, ldk, j, s, ldk); break;
    case 1: ScoreTileF32<R, 1>(rows, kt, ldk, j, s, ldk); break;
    default: break;
  }
}

// R query rows through scores, softmax and the value product; lse[r] = max + log(sum) of each
// row's scores (what the backward pass recomputes the weights from).
template <int R>
void RowsF32(const float* q, const float* kt, int64_t ldk, const float* v, int64_t tk, float* s,
             float* out, float* lse) {
  ScoresF32<R>(q, kt, ldk, s);
  float sums[kRows], maxes[kRows];
  for (int r = 0; r < R; ++r) {
    sums[r] = SoftmaxRow(s + r * ldk, tk, ldk, &maxes[r]);
    lse[r] = maxes[r] + std::log(sums[r]);
  }
  ValueTileF32<R>(s, ldk, v, tk, sums, out);
}

// Keys or values of one (batch, head) transposed: dst[c, j] = src[j, c], zero-padded to ldk.
void TransposeF32(const float* src, int64_t tk, int64_t ldk, float* dst) {
  for (int64_t c = 0; c < kHead; ++c) {
    float* row = dst + c * ldk;
    for (int64_t j = 0; j < tk; ++j) row[j] = src[j * kHead + c];
    for (int64_t j = tk; j < ldk; ++j) row[j] = 0.0f;
  }
}

// ---- float32 backward -------------------------------------------------------------------------

// s[:tk] = exp(s - lse) in place (the softmax weights), padded columns 0.
inline void WeightsRow(float* s, int64_t tk, int64_t ld, float lse) {
  const __m512 l = _mm512_set1_ps(lse);
  int64_t j = 0;
  for (; j + 16 <= tk; j += 16) {
    _mm512_store_ps(s + j, Exp(_mm512_sub_ps(_mm512_load_ps(s + j), l)));
  }
  if (tk > j) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (tk - j)) - 1);
    _mm512_store_ps(s + j, _mm512_maskz_mov_ps(tail, Exp(_mm512_sub_ps(_mm512_load_ps(s + j), l))));
    j += 16;
  }
  for (; j < ld; j += 16) _mm512_store_ps(s + j, _mm512_setzero_ps());
}

// acc[j, :] += sum_r p[r, j] x[r, :] for j < tk: the R rows of x stay in registers.
template <int R>
void RankUpdateF32(const float* p, int64_t ldp, const float* x, int64_t tk, float* acc) {
  __m512 xr[R][4];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < 4; ++t) xr[r][t] = _mm512_loadu_ps(x + r * kHead + 16 * t);
  for (int64_t j = 0; j < tk; ++j) {
    float* a = acc + j * kHead;
    __m512 sum[4];
    for (int t = 0; t < 4; ++t) sum[t] = _mm512_loadu_ps(a + 16 * t);
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * ldp + j]);
      for (int t = 0; t < 4; ++t) sum[t] = _mm512_fmadd_ps(pb, xr[r][t], sum[t]);
    }
    for (int t = 0; t < 4; ++t) _mm512_storeu_ps(a + 16 * t, sum[t]);
  }
}

// Gradients of R query rows: p = softmax weights (recomputed from lse), dp = dO @ v.T,
// ds = p * (dp - rowsum(dO * O)); dq = ds @ k; dk += ds.T @ q; dv += p.T @ dO.
template <int R>
void GradRowsF32(const float* q, const float* o, const float* dout, const float* lse,
                 const float* kt, const float* vt, const float* k, int64_t tk, int64_t ldk,
                 float* p, float* ds, float* dq, float* dk, float* dv) {
  ScoresF32<R>(q, kt, ldk, p);
  ScoresF32<R>(dout, vt, ldk, ds);
  float ones[kRows];
  for (int r = 0; r < R; ++r) {
    ones[r] = 1.0f;
    WeightsRow(p + r * ldk, tk, ldk, lse[r]);
    __m512 dot = _mm512_setzero_ps();
    for (int t = 0; t < 4; ++t) {
      dot = _mm512_fmadd_ps(_mm512_loadu_ps(dout + r * kHead + 16 * t),
                            _mm512_loadu_ps(o + r * kHead + 16 * t), dot);
    }
    const __m512 delta = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    float* row = ds + r * ldk;
    const float* w = p + r * ldk;
    for (int64_t j = 0; j < ldk; j += 16) {
      const __m512 g = _mm512_sub_ps(_mm512_load_ps(row + j), delta);
      _mm512_store_ps(row + j, _mm512_mul_ps(_mm512_load_ps(w + j), g));
    }
  }
  ValueTileF32<R>(ds, ldk, k, tk, ones, dq);
  RankUpdateF32<R>(p, ldk, dout, tk, dv);
  RankUpdateF32<R>(ds, ldk, q, tk, dk);
}

// ---- bfloat16 ---------------------------------------------------------------------------------

#ifdef __AVX512BF16__

// Scores from bfloat16 pairs: kp[m, j] holds keys (j, 2m) and (j, 2m + 1) in one 32-bit word,
// q32[r, m] the same pair of query r.
template <int R, int NJ>
inline void ScoreTileBF16(const uint32_t* q32, const uint32_t* kp, int64_t ldk, int64_t j,
                          float* s, int64_t lds) {
  __m512 acc[R][NJ];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NJ; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t m = 0; m < kHead / 2; ++m) {
    __m512i kv[NJ];
    for (int t = 0; t < NJ; ++t) kv[t] = _mm512_load_si512(kp + m * ldk + j + 16 * t);
    for (int r = 0; r < R; ++r) {
      const __m512i qb = _mm512_set1_epi32(static_cast<int>(q32[r * (kHead / 2) + m]));
      for (int t = 0; t < NJ; ++t)
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)qb, (__m512bh)kv[t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NJ; ++t) _mm512_store_ps(s + r * lds + j + 16 * t, acc[r][t]);
}

// Exponentials of a row rounded to bfloat16, two to a 32-bit word: p32[m] = (p[2m], p[2m + 1]).
inline void PackRow(const float* s, int64_t pairs, uint32_t* p32) {
  int64_t m = 0;
  for (; m + 16 <= pairs; m += 16) {
    const __m256bh lo = _mm512_cvtneps_pbh(_mm512_load_ps(s + 2 * m));
    const __m256bh hi = _mm512_cvtneps_pbh(_mm512_load_ps(s + 2 * m + 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p32 + m), (__m256i)lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p32 + m + 8), (__m256i)hi);
  }
  for (; m < pairs; m += 8) {  // s is padded with zeros to a multiple of 16 columns
    const __m256bh lo = _mm512_cvtneps_pbh(_mm512_load_ps(s + 2 * m));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p32 + m), (__m256i)lo);
  }
}

// vp[m, c] holds values (2m, c) and (2m + 1, c); p32[r, m] the pair of weights of row r.
template <int R>
inline void ValueTileBF16(const uint32_t* p32, int64_t ldp, const uint32_t* vp, int64_t pairs,
                          const float* sums, float* out) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t m = 0; m < pairs; ++m) {
    __m512i vv[4];
    for (int t = 0; t < 4; ++t) vv[t] = _mm512_load_si512(vp + m * kHead + 16 * t);
    for (int r = 0; r < R; ++r) {
      const __m512i pb = _mm512_set1_epi32(static_cast<int>(p32[r * ldp + m]));
      for (int t = 0; t < 4; ++t)
        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)pb, (__m512bh)vv[t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 den = _mm512_set1_ps(sums[r]);
    for (int t = 0; t < 4; ++t)
      _mm512_storeu_ps(out + r * kHead + 16 * t, _mm512_div_ps(acc[r][t], den));
  }
}

template <int R>
void RowsBF16(const uint32_t* q32, const uint32_t* kp, int64_t ldk, const uint32_t* vp,
              int64_t tk, float* s, uint32_t* p32, float* out) {
  int64_t j = 0;
  for (; j + 64 <= ldk; j += 64) ScoreTileBF16<R, 4>(q32, kp, ldk, j, s, ldk);
  switch ((ldk - j) / 16) {
    case 3: ScoreTileBF16<R, 3>(q32, kp, ldk, j, s, ldk); break;
    case 2: ScoreTileBF16<R, 2>(q32, kp, ldk, j, s, ldk); break;
    case 1: ScoreTileBF16<R, 1>(q32, kp, ldk, j, s, ldk); break;
    default: break;
  }
  const int64_t pairs = (tk + 1) / 2, ldp = ldk / 2;
  float sums[kRows];
  for (int r = 0; r < R; ++r) {
    sums[r] = SoftmaxRow(s + r * ldk, tk, ldk);
    PackRow(s + r * ldk, ldp, p32 + r * ldp);
  }
  ValueTileBF16<R>(p32, ldp, vp, pairs, sums, out);
}


#ifdef PQM_AMX

// AMX: the products on the tile unit, 16 query rows at a time. Tiles 0-3 hold float32 sums
// (16 x 16), 4 and 5 bfloat16 rows (16 x 32), 6 and 7 bfloat16 pairs (16 x 16 pairs).
constexpr int64_t kTileRows = 16;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loads this kernel's tile configuration for the calling thread and restores the thread's own
// (if it had one, e.g. left by another library's kernel) when it goes out of scope.
class Tiles {
 public:
  Tiles() {
    _tile_storeconfig(&saved_);
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.colsb[t] = 64;
      c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
  }
  ~Tiles() {
    if (saved_.palette != 0) {
      _tile_loadconfig(&saved_);
    } else {
      _tile_release();
    }
  }
  Tiles(const Tiles&) = delete;
  Tiles& operator=(const Tiles&) = delete;

 private:
  TileConfig saved_;
};

// s[16, ldk] = q[16, 64] @ keys; kp as in ScoreTileBF16, ldk a multiple of 64.
void ScoresAmx(const uint16_t* q, const uint32_t* kp, int64_t ldk, float* s) {
  _tile_loadd(4, q, kHead * 2);
  _tile_loadd(5, q + 32, kHead * 2);
  const int64_t kb = ldk * 4, sb = ldk * 4;
  const uint32_t* k1 = kp + 16 * ldk;  // pairs of dimensions 32..63
  for (int64_t j = 0; j < ldk; j += 64) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(6, kp + j, kb);
    _tile_loadd(7, k1 + j, kb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(0, 5, 7);
    _tile_loadd(6, kp + j + 16, kb);
    _tile_loadd(7, k1 + j + 16, kb);
    _tile_dpbf16ps(1, 4, 6);
    _tile_dpbf16ps(1, 5, 7);
    _tile_loadd(6, kp + j + 32, kb);
    _tile_loadd(7, k1 + j + 32, kb);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(2, 5, 7);
    _tile_loadd(6, kp + j + 48, kb);
    _tile_loadd(7, k1 + j + 48, kb);
    _tile_dpbf16ps(3, 4, 6);
    _tile_dpbf16ps(3, 5, 7);
    _tile_stored(0, s + j, sb);
    _tile_stored(1, s + j + 16, sb);
    _tile_stored(2, s + j + 32, sb);
    _tile_stored(3, s + j + 48, sb);
  }
}

// o[16, 64] = p[16, ldk] (bfloat16, row-major) @ values; vp as in ValueTileBF16 with ldk / 2
// pair rows (zero-padded).
void ValuesAmx(const uint16_t* p, const uint32_t* vp, int64_t ldk, float* o) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t vb = kHead * 4;
  for (int64_t c = 0; c < ldk; c += 32) {
    const uint32_t* v = vp + (c / 2) * kHead;
    _tile_loadd(4, p + c, ldk * 2);
    _tile_loadd(6, v, vb);
    _tile_loadd(7, v + 16, vb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(6, v + 32, vb);
    _tile_loadd(7, v + 48, vb);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(3, 4, 7);
  }
  _tile_stored(0, o, kHead * 4);
  _tile_stored(1, o + 16, kHead * 4);
  _tile_stored(2, o + 32, kHead * 4);
  _tile_stored(3, o + 48, kHead * 4);
}

// Query rows [r0, r1) of one (batch, head) through the tile unit; q rows of 64 bfloat16.
void RowsAmx(const uint16_t* q, int64_t rows, const uint32_t* kp, const uint32_t* vp,
             int64_t tk, int64_t ldk, float* s, uint16_t* p, float* out) {
  alignas(64) uint16_t qb[kTileRows * kHead];
  alignas(64) float o[kTileRows * kHead];
  std::memcpy(qb, q, rows * kHead * sizeof(uint16_t));
  std::memset(qb + rows * kHead, 0, (kTileRows - rows) * kHead * sizeof(uint16_t));
  ScoresAmx(qb, kp, ldk, s);
  float sums[kTileRows];
  for (int64_t r = 0; r < rows; ++r) {
    sums[r] = SoftmaxRow(s + r * ldk, tk, ldk);
    PackRow(s + r * ldk, ldk / 2, reinterpret_cast<uint32_t*>(p + r * ldk));
  }
  for (int64_t r = rows; r < kTileRows; ++r) std::memset(p + r * ldk, 0, ldk * sizeof(uint16_t));
  ValuesAmx(p, vp, ldk, o);
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 den = _mm512_set1_ps(sums[r]);
    for (int t = 0; t < 4; ++t) {
      _mm512_storeu_ps(out + r * kHead + 16 * t,
                       _mm512_div_ps(_mm512_load_ps(o + r * kHead + 16 * t), den));
    }
  }
}

#endif  // PQM_AMX

#endif  // __AVX512BF16__

// f(std::integral_constant<int, R>()) for R = rows in 1..kRows (the register tiles' sizes).
template <typename F>
void WithRows(int64_t rows, F&& f) {
  pqm::WithGroup(rows, [&](auto group) {
    if constexpr (decltype(group)::value <= kRows) f(group);
  });
}

#endif  // __AVX512F__

// Any rank >= 3 ([..., T, 64]; lse [..., T]): the leading axes are the groups, so that a vmapped
// call (vmap_method "broadcast_all") is one call over all its elements' groups.
using F32 = ffi::Buffer<ffi::F32>;
using BF16 = ffi::Buffer<ffi::BF16>;
using Out = ffi::ResultBuffer<ffi::F32>;
using Rows = ffi::Buffer<ffi::F32>;  // one float per query row
using RowsOut = ffi::ResultBuffer<ffi::F32>;

struct Dims {
  int64_t groups, tq, tk;
  int64_t chunks() const { return (tq + kChunk - 1) / kChunk; }
};

// A shape [..., t, c] (trailing 2) or [..., t] (trailing 1; c = 1) with its leading axes (at
// least one) folded into groups; groups -1 when the rank is too small.
struct Folded {
  int64_t groups = -1, t = 0, c = 0;
};

template <typename Dimensions>
Folded Fold(const Dimensions& d, int trailing) {
  const int64_t n = static_cast<int64_t>(d.size());
  if (n < trailing + 1) return {};
  Folded f{1, d[n - trailing], trailing == 2 ? d[n - 1] : 1};
  for (int64_t i = 0; i < n - trailing; ++i) f.groups *= d[i];
  return f;
}

std::string Describe(const Folded& f) {
  return "[" + std::to_string(f.groups) + " groups, " + std::to_string(f.t) + ", " +
         std::to_string(f.c) + "]";
}

template <typename In>
ffi::Error Check(const In& q, const In& k, const In& v, Out& out, Dims* dims) {
  const Folded fq = Fold(q.dimensions(), 2), fk = Fold(k.dimensions(), 2);
  const Folded fv = Fold(v.dimensions(), 2), fo = Fold(out->dimensions(), 2);
  const bool ok = fq.groups >= 0 && fq.c == kHead && fk.c == kHead && fv.c == kHead &&
                  fk.groups == fq.groups && fv.groups == fq.groups && fv.t == fk.t &&
                  fo.groups == fq.groups && fo.t == fq.t && fo.c == kHead;
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "attention takes q [..., Tq, 64], k and v [..., Tk, 64]; got q " + Describe(fq) +
        ", k " + Describe(fk) + ", v " + Describe(fv));
  }
  *dims = Dims{fq.groups, fq.t, fk.t};
  return ffi::Error::Success();
}

int64_t ThreadsFor(const Dims& d, int64_t threads, const ffi::ThreadPool& pool) {
  const int64_t work = d.groups * d.tq * d.tk * kHead * 2;
  const int64_t t = pqm::Threads(threads, work, kMinWorkPerThread, pool.num_threads());
  return std::max<int64_t>(1, std::min(t, d.groups * d.chunks()));
}

ffi::Error AttentionF32(ffi::ThreadPool pool, F32 q, F32 k, F32 v, int64_t threads, Out out,
                        RowsOut lse) {
#ifdef __AVX512F__
  Dims d;
  if (auto e = Check(q, k, v, out, &d); e.failure()) return e;
  if (d.groups == 0 || d.tq == 0) return ffi::Error::Success();
  if (d.tk == 0) return ffi::Error::InvalidArgument("attention over no keys");
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  float* op = out->typed_data();
  const Folded fl = Fold(lse->dimensions(), 1);
  if (fl.groups != d.groups || fl.t != d.tq) {
    return ffi::Error::InvalidArgument("attention: lse must be [..., Tq] as q's rows");
  }
  float* lp = lse->typed_data();
  const int64_t ldk = RoundUp(d.tk, 16), chunks = d.chunks();
  const auto run = [&](int64_t u0, int64_t u1) {
    Scratch<float> kt = Allocate<float>(kHead * ldk), s = Allocate<float>(kRows * ldk);
    int64_t loaded = -1;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u / chunks, r0 = (u % chunks) * kChunk, r1 = std::min(d.tq, r0 + kChunk);
      if (g != loaded) {
        TransposeF32(kp + g * d.tk * kHead, d.tk, ldk, kt.get());
        loaded = g;
      }
      const float* vg = vp + g * d.tk * kHead;
      for (int64_t r = r0; r < r1; r += kRows) {
        const int64_t n = std::min<int64_t>(kRows, r1 - r);
        const int64_t row = g * d.tq + r;
        WithRows(n, [&](auto rows) {
          RowsF32<decltype(rows)::value>(qp + row * kHead, kt.get(), ldk, vg, d.tk, s.get(),
                                         op + row * kHead, lp + row);
        });
      }
    }
  };
  pqm::RunParallel(run, d.groups * chunks, ThreadsFor(d, threads, pool), pool);
  return ffi::Error::Success();
#else
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "this build has no AVX-512 (see PqmAttentionCaps)");
#endif
}

ffi::Error AttentionBF16(ffi::ThreadPool pool, BF16 q, BF16 k, BF16 v, int64_t threads,
                         int64_t tiles, Out out) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  Dims d;
  if (auto e = Check(q, k, v, out, &d); e.failure()) return e;
  if (d.groups == 0 || d.tq == 0) return ffi::Error::Success();
  if (d.tk == 0) return ffi::Error::InvalidArgument("attention over no keys");
  const auto* qp = reinterpret_cast<const uint16_t*>(q.untyped_data());
  const auto* kp = reinterpret_cast<const uint16_t*>(k.untyped_data());
  const auto* vp = reinterpret_cast<const uint16_t*>(v.untyped_data());
  float* op = out->typed_data();
  // The tile unit takes keys in blocks of 64 and values in blocks of 32 pairs; vdpbf16ps in 16s.
  const bool amx = tiles != 0 && AmxReady();
  const int64_t ldk = RoundUp(d.tk, amx ? 64 : 16), chunks = d.chunks();
  const int64_t pairs = amx ? ldk / 2 : (d.tk + 1) / 2;  // value pair rows, zero-padded
  const auto run = [&](int64_t u0, int64_t u1) {
    Scratch<uint32_t> kpk = Allocate<uint32_t>(kHead / 2 * ldk);
    Scratch<uint32_t> vpk = Allocate<uint32_t>(pairs * kHead);
    Scratch<float> s = Allocate<float>(kTileRowsMax * ldk);
    Scratch<uint32_t> p32 = Allocate<uint32_t>(kTileRowsMax * ldk / 2);
#ifdef PQM_AMX
    std::optional<Tiles> tiles_in_use;
    if (amx) tiles_in_use.emplace();
#endif
    int64_t loaded = -1;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u / chunks, r0 = (u % chunks) * kChunk, r1 = std::min(d.tq, r0 + kChunk);
      if (g != loaded) {  // keys and values of this (batch, head) in pairs, zero-padded
        const uint16_t* kg = kp + g * d.tk * kHead;
        const uint16_t* vg = vp + g * d.tk * kHead;
        for (int64_t m = 0; m < kHead / 2; ++m) {
          uint32_t* row = kpk.get() + m * ldk;
          for (int64_t j = 0; j < d.tk; ++j) {
            row[j] = kg[j * kHead + 2 * m] | (uint32_t{kg[j * kHead + 2 * m + 1]} << 16);
          }
          for (int64_t j = d.tk; j < ldk; ++j) row[j] = 0;
        }
        for (int64_t m = 0; m < pairs; ++m) {
          const uint16_t* a = vg + 2 * m * kHead;
          uint32_t* row = vpk.get() + m * kHead;
          if (2 * m + 1 < d.tk) {
            for (int64_t c = 0; c < kHead; ++c) row[c] = a[c] | (uint32_t{a[kHead + c]} << 16);
          } else if (2 * m < d.tk) {
            for (int64_t c = 0; c < kHead; ++c) row[c] = a[c];
          } else {
            for (int64_t c = 0; c < kHead; ++c) row[c] = 0;
          }
        }
        loaded = g;
      }
#ifdef PQM_AMX
      if (amx) {
        for (int64_t r = r0; r < r1; r += kTileRows) {
          const int64_t n = std::min<int64_t>(kTileRows, r1 - r), at = (g * d.tq + r) * kHead;
          RowsAmx(qp + at, n, kpk.get(), vpk.get(), d.tk, ldk, s.get(),
                  reinterpret_cast<uint16_t*>(p32.get()), op + at);
        }
        continue;
      }
#endif
      for (int64_t r = r0; r < r1; r += kRows) {
        const int64_t n = std::min<int64_t>(kRows, r1 - r);
        const int64_t at = (g * d.tq + r) * kHead;
        const auto* q32 = reinterpret_cast<const uint32_t*>(qp + at);
        WithRows(n, [&](auto rows) {
          RowsBF16<decltype(rows)::value>(q32, kpk.get(), ldk, vpk.get(), d.tk, s.get(),
                                          p32.get(), op + at);
        });
      }
    }
  };
  pqm::RunParallel(run, d.groups * chunks, ThreadsFor(d, threads, pool), pool);
  return ffi::Error::Success();
#else
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "this build has no AVX512-BF16 (see PqmAttentionCaps)");
#endif
}

ffi::Error AttentionGradF32(ffi::ThreadPool pool, F32 q, F32 k, F32 v, F32 o,
                            Rows lse, F32 dout, int64_t threads, Out dq,
                            Out dk, Out dv) {
#ifdef __AVX512F__
  Dims d;
  if (auto e = Check(q, k, v, dq, &d); e.failure()) return e;
  const Folded fo = Fold(o.dimensions(), 2), fd = Fold(dout.dimensions(), 2);
  const Folded fl = Fold(lse.dimensions(), 1), fk = Fold(dk->dimensions(), 2);
  const Folded fv = Fold(dv->dimensions(), 2);
  const auto same = [&](const Folded& f, int64_t t, int64_t c) {
    return f.groups == d.groups && f.t == t && f.c == c;
  };
  const bool ok = same(fo, d.tq, kHead) && same(fd, d.tq, kHead) && same(fl, d.tq, 1) &&
                  same(fk, d.tk, kHead) && same(fv, d.tk, kHead);
  if (!ok) return ffi::Error::InvalidArgument("attention gradient: shapes do not match q, k, v");
  if (d.groups == 0) return ffi::Error::Success();
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *opp = o.typed_data(), *lp = lse.typed_data(), *gp = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  const int64_t ldk = RoundUp(std::max<int64_t>(d.tk, 1), 16);
  // One (batch, head) per unit: its key and value gradients sum over all its query rows.
  const auto run = [&](int64_t g0, int64_t g1) {
    Scratch<float> kt = Allocate<float>(kHead * ldk), vt = Allocate<float>(kHead * ldk);
    Scratch<float> p = Allocate<float>(kRows * ldk), ds = Allocate<float>(kRows * ldk);
    for (int64_t g = g0; g < g1; ++g) {
      const float* kg = kp + g * d.tk * kHead;
      float* dkg = dkp + g * d.tk * kHead;
      float* dvg = dvp + g * d.tk * kHead;
      std::fill(dkg, dkg + d.tk * kHead, 0.0f);
      std::fill(dvg, dvg + d.tk * kHead, 0.0f);
      if (d.tk == 0) continue;
      TransposeF32(kg, d.tk, ldk, kt.get());
      TransposeF32(vp + g * d.tk * kHead, d.tk, ldk, vt.get());
      for (int64_t r = 0; r < d.tq; r += kRows) {
        const int64_t n = std::min<int64_t>(kRows, d.tq - r), row = g * d.tq + r;
        const int64_t at = row * kHead;
        WithRows(n, [&](auto rows) {
          GradRowsF32<decltype(rows)::value>(qp + at, opp + at, gp + at, lp + row, kt.get(),
                                             vt.get(), kg, d.tk, ldk, p.get(), ds.get(),
                                             dqp + at, dkg, dvg);
        });
      }
    }
  };
  const int64_t work = d.groups * d.tq * d.tk * kHead * 5;
  const int64_t t = pqm::Threads(threads, work, kMinWorkPerThread, pool.num_threads());
  pqm::RunParallel(run, d.groups, std::max<int64_t>(1, std::min(t, d.groups)), pool);
  return ffi::Error::Success();
#else
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    "this build has no AVX-512 (see PqmAttentionCaps)");
#endif
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmAttentionGradF32, AttentionGradF32,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()                       // q [G, Tq, 64], scaled
                                  .Arg<F32>()                       // k [G, Tk, 64]
                                  .Arg<F32>()                       // v [G, Tk, 64]
                                  .Arg<F32>()                       // o [G, Tq, 64]
                                  .Arg<Rows>()                      // lse [G, Tq]
                                  .Arg<F32>()                       // dO [G, Tq, 64]
                                  .Attr<int64_t>("threads")         // 0: by size and pool
                                  .Ret<F32>()                       // dq [G, Tq, 64]
                                  .Ret<F32>()                       // dk [G, Tk, 64]
                                  .Ret<F32>());                     // dv [G, Tk, 64]

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmAttentionF32, AttentionF32,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // q [G, Tq, 64], scaled
                                  .Arg<F32>()  // k [G, Tk, 64]
                                  .Arg<F32>()  // v [G, Tk, 64]
                                  .Attr<int64_t>("threads")         // 0: by size and pool
                                  .Ret<F32>()    // out [G, Tq, 64]
                                  .Ret<Rows>());  // lse [G, Tq]

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmAttentionBF16, AttentionBF16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<BF16>()  // q [G, Tq, 64], scaled
                                  .Arg<BF16>()  // k [G, Tk, 64]
                                  .Arg<BF16>()  // v [G, Tk, 64]
                                  .Attr<int64_t>("threads")          // 0: by size and pool
                                  .Attr<int64_t>("tiles")  // 0: no AMX (tests the vdpbf16ps path)
                                  .Ret<F32>());  // out [G, Tq, 64]
