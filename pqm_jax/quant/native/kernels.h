// What the CPU kernels share: splitting work over XLA's intra-op thread pool, and (AVX-512) the
// reduction of sixteen registers to sixteen sums. Included by the kernel sources; `build` hashes
// this header with each of them, so a change here rebuilds every kernel.

#ifndef PQM_JAX_QUANT_NATIVE_KERNELS_H_
#define PQM_JAX_QUANT_NATIVE_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <cfenv>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace pqm {

// Parts per thread: small ones bound the wait for a part whose thread was preempted.
constexpr int64_t kPartsPerThread = 8;
constexpr int64_t kMaxThreads = 8;

// Threads for `work` units of work when one thread should have at least `per_thread` of them.
inline int64_t Threads(int64_t requested, int64_t work, int64_t per_thread, int64_t pool_threads) {
  if (requested > 0) return requested;
  const int64_t by_size = std::max<int64_t>(1, work / per_thread);
  return std::max<int64_t>(1, std::min({by_size, kMaxThreads, std::max<int64_t>(1, pool_threads)}));
}

// Runs `run(u0, u1)` over [0, units) in pieces: the caller and up to `threads - 1` tasks on XLA's
// pool claim pieces from a shared counter. The caller then waits only for pieces already claimed
// (running), so a pool too busy to start a task costs nothing but the caller's time. A task that
// starts after all pieces are gone touches nothing but the counter, which it co-owns (its copy of
// `run` is never called then, so `run` may point into the caller's frame).
template <typename Run>
void RunParallel(const Run& run, int64_t units, int64_t threads, xla::ffi::ThreadPool& pool) {
  const int64_t parts = threads <= 1 ? 1 : std::min(units, threads * kPartsPerThread);
  if (parts <= 1) {
    run(int64_t{0}, units);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto claim = [shared, run, units, parts] {
    for (int64_t i; (i = shared->next.fetch_add(1)) < parts;) {
      run(units * i / parts, units * (i + 1) / parts);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  // XLA runs with denormals flushed to zero; pool threads get the caller's setting for the task.
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned int csr = _mm_getcsr();
  for (int64_t t = 1; t < threads; ++t) {
    pool.Schedule([claim, csr] {
      const unsigned int saved = _mm_getcsr();
      _mm_setcsr(csr);
      claim();
      _mm_setcsr(saved);
    });
  }
#else
  std::fenv_t env;
  std::fegetenv(&env);
  for (int64_t t = 1; t < threads; ++t) {
    pool.Schedule([claim, env] {
      std::fenv_t saved;
      std::fegetenv(&saved);
      std::fesetenv(&env);
      claim();
      std::fesetenv(&saved);
    });
  }
#endif
  claim();
  while (shared->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// Calls f(std::integral_constant<int, G>()) for a group of g in 1..8 activation rows, so that a
// kernel's register tiles are compiled for each group size.
template <typename F>
void WithGroup(int64_t g, F&& f) {
  switch (g) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 6: f(std::integral_constant<int, 6>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    case 8: f(std::integral_constant<int, 8>()); break;
    default: break;
  }
}

#ifdef __AVX512F__

// Sixteen sums at once: s[i] = sum of the lanes of a[i]. Halving all sixteen registers together
// (lane blocks, then lanes) takes 30 shuffles and 15 adds, against about 9 instructions for each
// register reduced on its own.
inline void Sum16(const __m512 (&a)[16], float* s) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i) {  // b[i]: 256-bit halves = 8 partial sums of a[2i], of a[2i + 1]
    const __m512 lo = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 hi = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2));
    b[i] = _mm512_add_ps(lo, hi);
  }
  for (int i = 0; i < 4; ++i) {  // c[i]: 128-bit lanes = 4 partial sums of a[4i .. 4i + 3]
    const __m512 lo = _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 hi = _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1));
    c[i] = _mm512_add_ps(lo, hi);
  }
  for (int i = 0; i < 2; ++i) {  // d[i]: lane l = 2 partial sums of two registers
    const __m512 lo = _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 hi = _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2));
    d[i] = _mm512_add_ps(lo, hi);
  }
  const __m512 lo = _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0));
  const __m512 hi = _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1));
  alignas(64) float sums[16];
  _mm512_store_ps(sums, _mm512_add_ps(lo, hi));
  // Where the shuffles above leave the sum of a[i] (checked against a plain sum in the tests).
  static constexpr int kAt[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
  for (int i = 0; i < 16; ++i) s[i] = sums[kAt[i]];
}

#endif  // __AVX512F__

}  // namespace pqm

#endif  // PQM_JAX_QUANT_NATIVE_KERNELS_H_
