// out = (x Q) Qᵀ, two rows at a time. See fixed_point.h.
//
// Layout: Qᵀ is copied once per call into a contiguous (k, Dp) buffer (rows zero-padded to a
// multiple of the vector width), so both products run along D with unit stride:
//   pass 1  y[r, c]   = sum_d x[r, d] Qᵀ[c, d]   2 x KC accumulator vectors; each Qᵀ vector load
//                                                 feeds the FMAs of both rows
//   pass 2  out[r, d] = sum_c y[r, c] Qᵀ[c, d]   2 x KC broadcast y in registers
// c runs in chunks of KC <= 6 (a compile-time count, so the accumulators stay in the 16 ymm
// registers). The rows of x (a few hundred bytes to a few KB) stay in L1 between the passes, so x
// is read from memory once and out written once: memory-bound for small k.
// Measured (Zen 4, fp32, D = 100, k = 10, one thread, in cache): AVX2+FMA version 0.79 ns per
// element, baseline SSE2 version 3.6 ns (the multiversioning is worth ~4.5x here).
#include "fixed_point.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// The 32-byte vector helpers are force-inlined, so no vector ever crosses a call boundary and
// GCC's note about the AVX calling convention does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace symkern::fixed_point {

namespace {

// ---- a 32-byte vector of T: GCC/Clang vector extensions, one instruction per op under AVX2,
// two under baseline SSE2; a plain array elsewhere (the compiler may still vectorise it). ----
#if defined(__GNUC__) || defined(__clang__)
typedef float vf32 __attribute__((vector_size(32)));
typedef double vf64 __attribute__((vector_size(32)));
template <class T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = vf32;
};
template <>
struct VecOf<double> {
  using type = vf64;
};
template <class T>
using vec_t = typename VecOf<T>::type;
template <class T>
SYMKERN_INLINE vec_t<T> vsplat(T v) {
  return vec_t<T>{} + v;
}
#else
template <class T>
struct vec_t {
  T v[32 / sizeof(T)];
  T& operator[](int i) { return v[i]; }
  T operator[](int i) const { return v[i]; }
};
template <class T>
SYMKERN_INLINE vec_t<T> operator+(vec_t<T> a, vec_t<T> b) {
  for (int i = 0; i < int(32 / sizeof(T)); ++i) a.v[i] += b.v[i];
  return a;
}
template <class T>
SYMKERN_INLINE vec_t<T> operator*(vec_t<T> a, vec_t<T> b) {
  for (int i = 0; i < int(32 / sizeof(T)); ++i) a.v[i] *= b.v[i];
  return a;
}
template <class T>
SYMKERN_INLINE vec_t<T>& operator+=(vec_t<T>& a, vec_t<T> b) {
  return a = a + b;
}
template <class T>
SYMKERN_INLINE vec_t<T> vsplat(T v) {
  vec_t<T> r;
  for (int i = 0; i < int(32 / sizeof(T)); ++i) r.v[i] = v;
  return r;
}
#endif

template <class T>
constexpr int kLanes = 32 / sizeof(T);

template <class T>
SYMKERN_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class T>
SYMKERN_INLINE void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
template <class T>
SYMKERN_INLINE T hsum(vec_t<T> v) {
  T a[kLanes<T>];
  vstore(a, v);
  for (int h = kLanes<T> / 2; h > 0; h /= 2)  // tree: log2(lanes) dependent adds, not lanes - 1
    for (int l = 0; l < h; ++l) a[l] += a[l + h];
  return a[0];
}
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
// In-register butterfly (3 shuffles + 3 adds for 8 floats) instead of a trip through memory.
template <>
SYMKERN_INLINE float hsum<float>(vf32 v) {
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
  return v[0];
}
template <>
SYMKERN_INLINE double hsum<double>(vf64 v) {
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2);
  return v[0];
}
#endif

// Zero-padded load / partial store of the last, partial vector of a row.
template <class T>
SYMKERN_INLINE vec_t<T> vload_tail(const T* p, index_t n) {
  T tmp[kLanes<T>] = {};
  for (index_t i = 0; i < n; ++i) tmp[i] = p[i];
  return vload(tmp);
}
template <class T>
SYMKERN_INLINE void vstore_tail(T* p, vec_t<T> v, index_t n) {
  T tmp[kLanes<T>];
  vstore(tmp, v);
  for (index_t i = 0; i < n; ++i) p[i] = tmp[i];
}

// v with its lanes [0, skip) set to +0 by a lane select (bitwise AND with a compare mask), not a
// multiply by 0: an inf or NaN on those lanes must vanish, not turn into a NaN product.
#if defined(__GNUC__) || defined(__clang__)
typedef std::int32_t vi32 __attribute__((vector_size(32)));
typedef std::int64_t vi64 __attribute__((vector_size(32)));
SYMKERN_INLINE vf32 vzero_head(vf32 v, index_t skip) {
  const vi32 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  vi32 bits;
  std::memcpy(&bits, &v, sizeof(v));
  bits &= lane >= (vi32{} + static_cast<std::int32_t>(skip));
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
SYMKERN_INLINE vf64 vzero_head(vf64 v, index_t skip) {
  const vi64 lane = {0, 1, 2, 3};
  vi64 bits;
  std::memcpy(&bits, &v, sizeof(v));
  bits &= lane >= (vi64{} + static_cast<std::int64_t>(skip));
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
#else
template <class T>
SYMKERN_INLINE vec_t<T> vzero_head(vec_t<T> v, index_t skip) {
  for (index_t i = 0; i < skip; ++i) v.v[i] = T(0);
  return v;
}
#endif

// y[r][c] = sum_d x[r][d] qt[c*Dp + d] for c < KC, for R rows at once (each Qᵀ vector loaded once
// feeds R FMAs). qt rows are zero-padded to Dp (a multiple of the vector width), so the partial
// last vector needs no scalar loop.
template <class T, int KC, int R>
SYMKERN_INLINE void pass1(const T* const* x, const T* SYMKERN_RESTRICT qt,
                          const T* SYMKERN_RESTRICT qtail, index_t D, index_t Dp, T* const* y) {
  constexpr int V = kLanes<T>;
  vec_t<T> acc[R][KC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < KC; ++c) acc[r][c] = vsplat<T>(0);
  const index_t full = D - D % V;
  for (index_t d = 0; d < full; d += V) {
    vec_t<T> xv[R];
    for (int r = 0; r < R; ++r) xv[r] = vload(x[r] + d);
    for (int c = 0; c < KC; ++c) {
      const vec_t<T> qv = vload(qt + c * Dp + d);
      for (int r = 0; r < R; ++r) acc[r][c] += xv[r] * qv;
    }
  }
  if (full < D) {
    // Partial last vector. D >= V: load the last V elements of x (overlapping the previous
    // vector) against qtail -- no store-forwarding stall from assembling a padded copy -- with
    // the lanes already counted selected to 0 in x itself: qtail's 0 there would make an inf of
    // x a NaN product (0 * inf), a term the formula does not have. D < V: zero-padded copy.
    vec_t<T> xv[R];
    const bool overlap = D >= V;
    for (int r = 0; r < R; ++r)
      xv[r] = overlap ? vzero_head(vload(x[r] + D - V), V - (D - full))
                      : vload_tail(x[r] + full, D - full);
    for (int c = 0; c < KC; ++c) {
      const vec_t<T> qv = overlap ? vload(qtail + c * V) : vload(qt + c * Dp + full);
      for (int r = 0; r < R; ++r) acc[r][c] += xv[r] * qv;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < KC; ++c) y[r][c] = hsum<T>(acc[r][c]);
}

// o[r][d] (= or +=) sum_{c < KC} y[r][c] qt[c*Dp + d] for the full vectors of d, R rows at once.
template <class T, int KC, int R>
SYMKERN_INLINE void pass2(T* const* y, const T* SYMKERN_RESTRICT qt, index_t D, index_t Dp,
                          T* const* o, bool first) {
  constexpr int V = kLanes<T>;
  vec_t<T> yb[R][KC];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < KC; ++c) yb[r][c] = vsplat<T>(y[r][c]);
  const index_t full = D - D % V;
  for (index_t d = 0; d < full; d += V) {
    vec_t<T> a[R];
    for (int r = 0; r < R; ++r) a[r] = first ? vsplat<T>(0) : vload(o[r] + d);
    for (int c = 0; c < KC; ++c) {
      const vec_t<T> qv = vload(qt + c * Dp + d);
      for (int r = 0; r < R; ++r) a[r] += yb[r][c] * qv;
    }
    for (int r = 0; r < R; ++r) vstore(o[r] + d, a[r]);
  }
}  // the partial last vector of out is written by block(), for all c at once

constexpr index_t kChunk = 6;  // 2 rows x 6 accumulators + 2 x vectors + 1 Qᵀ vector <= 16 ymm

template <class T, int R>
SYMKERN_INLINE void pass1_any(const T* const* x, const T* qt, const T* qtail, index_t D,
                              index_t Dp, T* const* y, index_t kc) {
  switch (kc) {
    case 1: pass1<T, 1, R>(x, qt, qtail, D, Dp, y); break;
    case 2: pass1<T, 2, R>(x, qt, qtail, D, Dp, y); break;
    case 3: pass1<T, 3, R>(x, qt, qtail, D, Dp, y); break;
    case 4: pass1<T, 4, R>(x, qt, qtail, D, Dp, y); break;
    case 5: pass1<T, 5, R>(x, qt, qtail, D, Dp, y); break;
    default: pass1<T, 6, R>(x, qt, qtail, D, Dp, y); break;
  }
}

template <class T, int R>
SYMKERN_INLINE void pass2_any(T* const* y, const T* qt, index_t D, index_t Dp, T* const* o,
                              bool first, index_t kc) {
  switch (kc) {
    case 1: pass2<T, 1, R>(y, qt, D, Dp, o, first); break;
    case 2: pass2<T, 2, R>(y, qt, D, Dp, o, first); break;
    case 3: pass2<T, 3, R>(y, qt, D, Dp, o, first); break;
    case 4: pass2<T, 4, R>(y, qt, D, Dp, o, first); break;
    case 5: pass2<T, 5, R>(y, qt, D, Dp, o, first); break;
    default: pass2<T, 6, R>(y, qt, D, Dp, o, first); break;
  }
}

// Chunks of c as even as possible (10 -> 5 + 5, not 6 + 4).
SYMKERN_INLINE index_t chunk_width(index_t k) {
  const index_t n = (k + kChunk - 1) / kChunk;
  return (k + n - 1) / n;
}

// R rows (1 or 2): both passes over all chunks of c, then the partial last vector of out.
template <class T, int R>
SYMKERN_INLINE void block(const T* const* xr, const T* qt, const T* qtail, index_t k, index_t D,
                          index_t Dp, T* const* o, T* const* y) {
  const index_t w = chunk_width(k);
  for (index_t c0 = 0; c0 < k; c0 += w) {
    T* yc[R];
    for (int r = 0; r < R; ++r) yc[r] = y[r] + c0;
    pass1_any<T, R>(xr, qt + c0 * Dp, qtail + c0 * kLanes<T>, D, Dp, yc, std::min(w, k - c0));
  }
  for (index_t c0 = 0; c0 < k; c0 += w) {
    T* yc[R];
    for (int r = 0; r < R; ++r) yc[r] = y[r] + c0;
    pass2_any<T, R>(yc, qt + c0 * Dp, D, Dp, o, c0 == 0, std::min(w, k - c0));
  }
  const index_t full = D - D % kLanes<T>;
  if (full < D) {
    for (int r = 0; r < R; ++r) {
      vec_t<T> a = vsplat<T>(0);
      for (index_t c = 0; c < k; ++c) a += vsplat<T>(y[r][c]) * vload(qt + c * Dp + full);
      vstore_tail(o[r] + full, a, D - full);
    }
  }
}

// Rows [begin, end) of one thread, two at a time. y: 2k scratch; xbuf: 2D scratch (strided x).
template <class T>
SYMKERN_INLINE void rows_impl(const T* x, index_t xs0, index_t xs1, const T* qt, const T* qtail,
                              index_t k,
                              index_t D, index_t Dp, T* out, index_t os0, index_t begin,
                              index_t end, T* y, T* xbuf) {
  auto row = [&](index_t b, int slot) -> const T* {
    const T* xr = x + b * xs0;
    if (xs1 == 1) return xr;
    T* buf = xbuf + slot * D;
    for (index_t i = 0; i < D; ++i) buf[i] = xr[i * xs1];
    return buf;
  };
  index_t b = begin;
  for (; b + 2 <= end; b += 2) {
    const T* xr[2] = {row(b, 0), row(b + 1, 1)};
    T* o[2] = {out + b * os0, out + (b + 1) * os0};
    T* yy[2] = {y, y + k};
    block<T, 2>(xr, qt, qtail, k, D, Dp, o, yy);
  }
  if (b < end) {
    const T* xr[1] = {row(b, 0)};
    T* o[1] = {out + b * os0};
    T* yy[1] = {y};
    block<T, 1>(xr, qt, qtail, k, D, Dp, o, yy);
  }
}

// Two compiled copies of the row loop: baseline and AVX2+FMA (see orbit.h).
template <class T>
void rows_base(const T* x, index_t xs0, index_t xs1, const T* qt, const T* qtail, index_t k,
               index_t D, index_t Dp, T* out, index_t os0, index_t begin, index_t end, T* y,
               T* xbuf) {
  rows_impl<T>(x, xs0, xs1, qt, qtail, k, D, Dp, out, os0, begin, end, y, xbuf);
}
template <class T>
SYMKERN_TARGET_AVX2 void rows_avx2(const T* x, index_t xs0, index_t xs1, const T* qt,
                                   const T* qtail, index_t k, index_t D, index_t Dp, T* out,
                                   index_t os0, index_t begin, index_t end, T* y, T* xbuf) {
  rows_impl<T>(x, xs0, xs1, qt, qtail, k, D, Dp, out, os0, begin, end, y, xbuf);
}

}  // namespace

template <class T>
void project_lowrank(const T* x, index_t B, index_t D, index_t xs0, index_t xs1, const T* q,
                     index_t k, index_t qs0, index_t qs1, T* out, index_t os0) {
  if (B <= 0 || D <= 0) return;
  advise_huge_pages(out, ((B - 1) * os0 + D) * index_t(sizeof(T)));
  if (k <= 0) {
    parallel_for(B, std::max<index_t>(1, (index_t{1} << 16) / D), [&](index_t b0, index_t b1) {
      for (index_t b = b0; b < b1; ++b) std::fill(out + b * os0, out + b * os0 + D, T(0));
    });
    return;
  }
  // Qᵀ, contiguous (k, Dp), rows zero-padded to Dp = D rounded up to the vector width.
  const index_t Dp = (D + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
  std::vector<T> qt(static_cast<size_t>(k * Dp), T(0));
  for (index_t d = 0; d < D; ++d)
    for (index_t c = 0; c < k; ++c) qt[c * Dp + d] = q[d * qs0 + c * qs1];
  // qtail[c, l] = Qᵀ[c, D - V + l] on the lanes of the last partial vector, 0 on lanes that
  // the previous full vector already covered (for the overlapping tail load in pass 1).
  constexpr index_t V = kLanes<T>;
  std::vector<T> qtail(static_cast<size_t>(k * V), T(0));
  const index_t rem = D % V;
  if (rem != 0 && D >= V)
    for (index_t c = 0; c < k; ++c)
      for (index_t l = V - rem; l < V; ++l) qtail[c * V + l] = qt[c * Dp + D - V + l];
  const T* qtp = qt.data();
  const T* qtailp = qtail.data();
  const bool avx2 = use_avx2();
  // Blocks of ~256K FMAs (an even number of rows) handed out dynamically; ~64K FMAs before a
  // second thread is worth waking.
  const index_t fmas_per_row = std::max<index_t>(1, 2 * D * k);
  const index_t block = std::max<index_t>(2, ((index_t{1} << 18) / fmas_per_row + 1) / 2 * 2);
  const index_t grain = std::max<index_t>(1, (index_t{1} << 16) / fmas_per_row);
  parallel_row_blocks(B, block, grain, [&] {
    return [&, y = std::vector<T>(static_cast<size_t>(2 * k)),
            xbuf = std::vector<T>(xs1 != 1 ? static_cast<size_t>(2 * D) : 0)](index_t begin,
                                                                             index_t end) mutable {
      (avx2 ? rows_avx2<T> : rows_base<T>)(x, xs0, xs1, qtp, qtailp, k, D, Dp, out, os0, begin,
                                           end, y.data(), xbuf.data());
    };
  });
}

template void project_lowrank<float>(const float*, index_t, index_t, index_t, index_t,
                                     const float*, index_t, index_t, index_t, float*, index_t);
template void project_lowrank<double>(const double*, index_t, index_t, index_t, index_t,
                                      const double*, index_t, index_t, index_t, double*, index_t);

}  // namespace symkern::fixed_point
