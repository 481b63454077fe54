// Block-wise 4-bit (NF4/FP4) dequantisation on CPU as an XLA FFI handler.
//
// Why native: XLA's CPU backend lowers the 16-entry table lookup to one scalar gather per
// element, which is slower than bitsandbytes. Here a block's 16 scaled code values fit one
// AVX-512 register, and a lane permute does 16 lookups in one instruction.
//
// Semantics (bit-identical to the XLA path in fourbit.py): per block b the scaled table is
// scaled[k] = table[k] * absmax[b] (one float32 multiply, no FMA: build with
// -ffp-contract=off), and out[i] = scaled[code_i]. Byte j holds element 2j in its high nibble and
// 2j + 1 in its low nibble. The caller's floating-point control word (XLA runs with denormals
// flushed) is copied into the worker threads, so every multiply rounds and flushes alike.
// Blocks are split over a few threads for large outputs (bitsandbytes uses two).

#include <algorithm>
#include <cfenv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Elements per thread. Measured on a shared 2-core EPYC: a second thread cuts a 4096x4096 decode
// (a fresh 64 MiB output, bound by page faults) from about 11 to 7 ms, helps or is neutral from
// 8M elements, and is a wash (won or lost by up to half) at 4M.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 22;
constexpr int64_t kMaxThreads = 8;

struct Job {
  const uint8_t* codes;
  const float* absmax;
  const float* table;
  float* out;
  int64_t block;
};

void DecodeScalar(const Job& job, int64_t b, int64_t j0) {
  float scaled[16];
  for (int k = 0; k < 16; ++k) scaled[k] = job.table[k] * job.absmax[b];
  const uint8_t* c = job.codes + b * (job.block / 2);
  float* o = job.out + b * job.block;
  for (int64_t j = j0; j < job.block / 2; ++j) {
    o[2 * j] = scaled[c[j] >> 4];
    o[2 * j + 1] = scaled[c[j] & 15];
  }
}

#ifdef __AVX512F__
// Blocks [b0, b1): 16 code bytes at a time become 32 floats.
void DecodeRange(const Job& job, int64_t b0, int64_t b1) {
  const __m512 table = _mm512_loadu_ps(job.table);
  // Interleave high nibbles (lanes 0..15 of the first operand) with low nibbles (16..31).
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const int64_t half = job.block / 2;
  const int64_t vec_end = half - half % 16;
  for (int64_t b = b0; b < b1; ++b) {
    const __m512 scaled = _mm512_mul_ps(table, _mm512_set1_ps(job.absmax[b]));
    const uint8_t* c = job.codes + b * half;
    float* o = job.out + b * job.block;
    for (int64_t j = 0; j < vec_end; j += 16) {
      const __m512i bytes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + j)));
      // permutexvar reads only the low 4 bits of an index, so the low nibble needs no mask.
      const __m512i high = _mm512_srli_epi32(bytes, 4);
      const __m512 front =
          _mm512_permutexvar_ps(_mm512_permutex2var_epi32(high, first, bytes), scaled);
      const __m512 back =
          _mm512_permutexvar_ps(_mm512_permutex2var_epi32(high, second, bytes), scaled);
      // Plain stores: non-temporal ones measured twice as slow here (fresh output pages).
      _mm512_storeu_ps(o + 2 * j, front);
      _mm512_storeu_ps(o + 2 * j + 16, back);
    }
    if (vec_end < half) DecodeScalar(job, b, vec_end);
  }
}
#else
void DecodeRange(const Job& job, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) DecodeScalar(job, b, 0);
}
#endif

int64_t UsableCpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int64_t ThreadCount(int64_t requested, int64_t n_elements, int64_t n_blocks) {
  int64_t t = requested > 0 ? requested
                            : std::min({UsableCpus(), kMaxThreads,
                                        std::max<int64_t>(1, n_elements / kMinElementsPerThread)});
  return std::max<int64_t>(1, std::min(t, n_blocks));
}

void RunThreads(const Job& job, int64_t n_blocks, int64_t threads) {
  if (threads == 1) {
    DecodeRange(job, 0, n_blocks);
    return;
  }
  // XLA runs with denormals flushed to zero. A new thread starts from its creator's floating-point
  // environment (C11), but the flush bits are outside the standard one: set them explicitly.
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned int csr = _mm_getcsr();
  auto with_env = [csr](auto fn) {
    _mm_setcsr(csr);
    fn();
  };
#else
  std::fenv_t env;
  std::fegetenv(&env);
  auto with_env = [env](auto fn) {
    std::fesetenv(&env);
    fn();
  };
#endif
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  int64_t t = 1;
  try {
    for (; t < threads; ++t) {
      const int64_t b0 = n_blocks * t / threads, b1 = n_blocks * (t + 1) / threads;
      pool.emplace_back(with_env, [&job, b0, b1] { DecodeRange(job, b0, b1); });
    }
  } catch (const std::system_error&) {
    // No thread to be had (an exception must not cross into XLA): the rest is decoded here.
  }
  DecodeRange(job, 0, n_blocks / threads);
  if (t < threads) DecodeRange(job, n_blocks * t / threads, n_blocks);
  for (auto& th : pool) th.join();
}

ffi::Error Decode(ffi::Buffer<ffi::U8> codes, ffi::Buffer<ffi::F32> absmax,
                  ffi::Buffer<ffi::F32> table, int64_t block, int64_t threads,
                  ffi::ResultBuffer<ffi::F32> out) {
  const int64_t n_bytes = codes.element_count();
  const int64_t n_blocks = absmax.element_count();
  if (block < 2 || block % 2) return ffi::Error::InvalidArgument("block must be even, >= 2");
  if (table.element_count() != 16) return ffi::Error::InvalidArgument("table must hold 16 values");
  if (n_bytes * 2 != n_blocks * block || int64_t(out->element_count()) != n_bytes * 2) {
    return ffi::Error::InvalidArgument("codes, absmax and output must cover whole blocks: " +
                                       std::to_string(n_bytes) + " bytes, " +
                                       std::to_string(n_blocks) + " blocks of " +
                                       std::to_string(block));
  }
  if (n_blocks == 0) return ffi::Error::Success();
  const Job job{codes.typed_data(), absmax.typed_data(), table.typed_data(), out->typed_data(),
                block};
  RunThreads(job, n_blocks, ThreadCount(threads, n_bytes * 2, n_blocks));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PqmFourBitDecode, Decode,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U8>>()  // codes [n/2]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // absmax [n/block]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // table [16]
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("threads")  // 0: by size and CPU count
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [n]
