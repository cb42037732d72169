// Run-time choice of instruction set for kernels compiled several times.
//
// A kernel file (csrc/particles.cpp, csrc/mirror_sweep.cpp) includes its own body three times,
// inside namespaces isa_avx512 / isa_avx2 / isa_base under `#pragma GCC target`, so the default
// wheel stays portable (no -march=native) while each CPU runs the widest copy it supports.
// This header holds the shared part: detecting the CPU's best ISA (optionally lowered by an
// environment variable, for tests and comparisons) and the dispatch switch.
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define SYMKERN_MULTI_ISA 1
#endif

namespace symkern::isa {

enum class Isa { baseline = 0, avx2 = 1, avx512 = 2 };

// The best ISA this CPU runs; the environment variable `env_var` ("baseline", "avx2",
// "avx512") can lower it, never raise it. Another value throws std::invalid_argument (a callers'
// function-local static then stays uninitialised, so every call reports it).
inline Isa detect(const char* env_var) {
  Isa best = Isa::baseline;
#ifdef SYMKERN_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    best = Isa::avx512;
#endif
  if (const char* env = std::getenv(env_var); env != nullptr && *env != '\0') {
    const std::string s(env);
    Isa want = best;
    if (s == "baseline") {
      want = Isa::baseline;
    } else if (s == "avx2") {
      want = Isa::avx2;
    } else if (s == "avx512") {
      want = Isa::avx512;
    } else {  // a typo would otherwise silently run the best copy (pybind11: ValueError)
      throw std::invalid_argument(std::string("the environment variable ") + env_var +
                                  " must be baseline, avx2 or avx512, got '" + s + "'");
    }
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

inline std::string name(Isa v) {
  switch (v) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace symkern::isa

// `return isa_<chosen>::call;` for the ISA value `which` (namespaces isa_avx512 / isa_avx2 /
// isa_base of the calling kernel file).
#ifdef SYMKERN_MULTI_ISA
#define SYMKERN_ISA_DISPATCH(which, call)   \
  switch (which) {                          \
    case ::symkern::isa::Isa::avx512:       \
      return isa_avx512::call;              \
    case ::symkern::isa::Isa::avx2:         \
      return isa_avx2::call;                \
    default:                                \
      return isa_base::call;                \
  }
#else
#define SYMKERN_ISA_DISPATCH(which, call) return isa_base::call;
#endif
