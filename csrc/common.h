// symkern C++ core: shared helpers. Knows nothing of torch or Python: kernels take raw pointers,
// int64 extents and int64 element strides, so one wheel serves every torch version.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

#include <limits>

#ifdef SYMKERN_WITH_OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace symkern {

using index_t = std::int64_t;  // every extent, stride and offset: tensors may exceed 2^31 elements

inline bool openmp_enabled() {
#ifdef SYMKERN_WITH_OPENMP
  return true;
#else
  return false;
#endif
}

// Bytes of physical memory (infinity where the platform does not say). Scratch larger than
// this is refused before it is allocated: where memory is overcommitted (Linux
// vm.overcommit_memory = 1) an impossible allocation succeeds and zero-filling it gets the
// process OOM-killed instead of raising std::bad_alloc. Read once per process: sysconf makes a
// sysinfo system call, ~5 % of a one-step particle call at N = 50 (perf, 2026-11-24).
inline double physical_memory_bytes() {
  static const double bytes = [] {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return static_cast<double>(pages) * static_cast<double>(page);
#endif
    return std::numeric_limits<double>::infinity();
  }();
  return bytes;
}

inline int max_threads() {
#ifdef SYMKERN_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The first exception thrown in any thread of a parallel region, to rethrow after the region:
// an exception that escapes an OpenMP region calls std::terminate, which aborts the Python
// process, where after the region the binding turns it into a Python exception (std::bad_alloc
// into MemoryError). Regions whose threads meet at barriers test failed() at a barrier all of
// them reach, so that either every thread goes on or none does.
class FirstException {
 public:
  template <class F>
  void capture(F&& f) noexcept {
    try {
      f();
    } catch (...) {
#ifdef SYMKERN_WITH_OPENMP
#pragma omp critical(symkern_first_exception)
#endif
      if (!first_) first_ = std::current_exception();
      failed_.store(true);
    }
  }
  bool failed() const { return failed_.load(); }
  void rethrow_if_failed() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::exception_ptr first_;
  std::atomic<bool> failed_{false};
};

// Run body(begin, end) over [0, n) split into contiguous chunks, one chunk per thread.
// Chunks (rather than one call per index) let the body keep per-thread scratch and vectorise its
// inner loop. Work smaller than `grain` items stays on the calling thread: spawning a team costs
// microseconds, more than a small kernel.
template <class Body>
inline void parallel_for(index_t n, index_t grain, Body&& body) {
  if (n <= 0) return;
#ifdef SYMKERN_WITH_OPENMP
  const index_t max_chunks = std::max<index_t>(1, n / std::max<index_t>(grain, 1));
  const int threads = static_cast<int>(std::min<index_t>(omp_get_max_threads(), max_chunks));
  if (threads > 1) {
    FirstException errors;  // e.g. the body's scratch allocation failing: rethrown below
#pragma omp parallel num_threads(threads)
    {
      const index_t t = omp_get_thread_num();
      const index_t nt = omp_get_num_threads();
      const index_t begin = n * t / nt;
      const index_t end = n * (t + 1) / nt;
      if (begin < end) errors.capture([&] { body(begin, end); });
    }
    errors.rethrow_if_failed();
    return;
  }
#else
  (void)grain;
#endif
  body(index_t{0}, n);
}

}  // namespace symkern
