// Orbit labels (union-find with sign parity) and the orbit mean (segment mean over coordinate
// orbits). See orbit.h for the contracts.
#include "orbit.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace symkern {

bool use_avx2() {
  static const bool on = [] {
#if SYMKERN_MULTIVERSION
    __builtin_cpu_init();
    const char* off = std::getenv("SYMKERN_NO_AVX2");
    if (off != nullptr && off[0] == '1') return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return on;
}

}  // namespace symkern

namespace symkern::orbit {

// =============================================================================================
// Validation
// =============================================================================================

std::string check_perms(const index_t* perms, index_t G, index_t D, index_t s0, index_t s1) {
  // Range only (memory safety): like the numpy reference, any map of 0..D-1 into itself is
  // accepted, and its orbits are the components of the graph i -- perm[g, i].
  for (index_t g = 0; g < G; ++g) {
    const index_t* row = perms + g * s0;
    for (index_t i = 0; i < D; ++i) {
      const index_t v = row[i * s1];
      if (v < 0 || v >= D)
        return "has entry " + std::to_string(v) + " at [" + std::to_string(g) + ", " +
               std::to_string(i) + "], outside [0, " + std::to_string(D) + ")";
    }
  }
  return "";
}

std::string check_signs(const double* signs, index_t G, index_t D, index_t s0, index_t s1) {
  for (index_t g = 0; g < G; ++g)
    for (index_t i = 0; i < D; ++i) {
      const double v = signs[g * s0 + i * s1];
      if (!(v == 1.0 || v == -1.0))
        return "must contain only +1 and -1, got " + std::to_string(v) + " at [" +
               std::to_string(g) + ", " + std::to_string(i) + "]";
    }
  return "";
}

std::string check_plan(const index_t* orbit_id, index_t D, index_t K, const index_t* order,
                       const index_t* seg_start) {
  for (index_t i = 0; i < D; ++i)
    if (orbit_id[i] < 0 || orbit_id[i] >= K)
      return "orbit_id[" + std::to_string(i) + "] = " + std::to_string(orbit_id[i]) +
             " is outside [0, " + std::to_string(K) + ")";
  if (seg_start[0] != 0 || seg_start[K] != D)
    return "seg_start must start at 0 and end at D = " + std::to_string(D);
  std::vector<unsigned char> seen(static_cast<size_t>(D), 0);
  for (index_t o = 0; o < K; ++o) {
    if (seg_start[o + 1] < seg_start[o]) return "seg_start must be non-decreasing";
    for (index_t p = seg_start[o]; p < seg_start[o + 1]; ++p) {
      const index_t i = order[p];
      if (i < 0 || i >= D || seen[i] || orbit_id[i] != o)
        return "order is not the coordinates grouped by orbit_id (at position " +
               std::to_string(p) + ")";
      seen[i] = 1;
    }
  }
  return "";
}

// =============================================================================================
// orbit_labels: union-find where each node stores its parity (sign bit) relative to its parent.
// =============================================================================================

namespace {

struct SignedDSU {
  std::vector<index_t> parent;
  std::vector<unsigned char> parity;  // 1: sign -1 relative to parent
  std::vector<index_t> size;
  std::vector<unsigned char> odd;  // on roots: the component has a cycle of sign -1

  explicit SignedDSU(index_t n)
      : parent(static_cast<size_t>(n)), parity(static_cast<size_t>(n), 0),
        size(static_cast<size_t>(n), 1), odd(static_cast<size_t>(n), 0) {
    for (index_t i = 0; i < n; ++i) parent[i] = i;
  }

  // Root of i and parity of i relative to it; compresses the path (iteratively: no recursion
  // depth limit).
  index_t find(index_t i, unsigned char& par) {
    index_t r = i;
    unsigned char p = 0;
    while (parent[r] != r) {
      p ^= parity[r];
      r = parent[r];
    }
    // second sweep: point every node on the path at r with its parity relative to r
    unsigned char rem = p;  // parity of the current node relative to r
    index_t cur = i;
    while (parent[cur] != cur) {
      const index_t next = parent[cur];
      const unsigned char pc = parity[cur];
      parent[cur] = r;
      parity[cur] = rem;
      rem ^= pc;
      cur = next;
    }
    par = p;
    return r;
  }

  void unite(index_t a, index_t b, unsigned char s) {
    unsigned char pa, pb;
    index_t ra = find(a, pa), rb = find(b, pb);
    if (ra == rb) {
      if ((pa ^ pb) != s) odd[ra] = 1;
      return;
    }
    if (size[ra] < size[rb]) std::swap(ra, rb);
    parent[rb] = ra;
    parity[rb] = static_cast<unsigned char>(pa ^ pb ^ s);
    size[ra] += size[rb];
    odd[ra] = static_cast<unsigned char>(odd[ra] | odd[rb]);
  }
};

}  // namespace

void orbit_labels(const index_t* perms, index_t G, index_t D, index_t p0, index_t p1,
                  const double* signs, index_t s0, index_t s1, index_t* labels, double* rel_sign) {
  SignedDSU dsu(D);
  for (index_t g = 0; g < G; ++g)
    for (index_t i = 0; i < D; ++i) {
      const index_t j = perms[g * p0 + i * p1];
      const unsigned char s = (signs != nullptr && signs[g * s0 + i * s1] < 0) ? 1 : 0;
      if (j != i || s) dsu.unite(i, j, s);
    }
  // Ascending sweep: the first coordinate met in a component is its smallest member.
  std::vector<index_t> first(static_cast<size_t>(D), -1);
  std::vector<unsigned char> first_par(static_cast<size_t>(D), 0);
  for (index_t i = 0; i < D; ++i) {
    unsigned char p;
    const index_t r = dsu.find(i, p);
    if (first[r] < 0) {
      first[r] = i;
      first_par[r] = p;
    }
    labels[i] = first[r];
    rel_sign[i] = dsu.odd[r] ? 0.0 : ((p ^ first_par[r]) ? -1.0 : 1.0);
  }
}

// =============================================================================================
// orbit_mean
// =============================================================================================

namespace {

enum RunKind : int { kInc = 0, kConst = 1, kScalar = 2 };

// [start, start + len): kInc: orbit_id = base + t; kConst: orbit_id = base; kScalar: anything.
struct Run {
  index_t start, len, base;
  int kind;
};

constexpr index_t kMinRun = 8;          // shorter runs are merged into scalar runs
constexpr index_t kMaskedMaxOrbits = 8;  // Masked variant up to this many orbits

// Orbit sums: a running float32 total of n terms carries a rounding error growing like n·eps
// relative to the total (cyclic(4e6), x ~ 100: the mean was off by 0.17). So no T accumulator ever
// takes more than kSumBlock terms: orbit sums are doubles (Acc), and the vectorised reductions
// (dot, Masked) keep T partial sums per lane only within blocks of kSumBlock terms per lane, adding
// the block totals in double. The error is then bounded by ~kSumBlock·eps whatever the orbit size,
// for an O(1 / kSumBlock) share of extra work. Exception, for speed: Runs adds increasing runs into
// a T accumulator (one term per orbit and run; a double one costs ~1.5x in cache on the S_n-on-
// blocks plans) when no orbit is covered by more than kSumBlock of them (MeanCtx::inc_wide).
using Acc = double;
constexpr index_t kSumBlock = 256;

// Cut the coordinate axis into constant / increasing runs (greedy, longest first). O(D).
std::vector<Run> make_runs(const index_t* id, index_t D, index_t& vector_coords) {
  std::vector<Run> runs;
  vector_coords = 0;
  index_t i = 0;
  while (i < D) {
    index_t lc = 1, li = 1;
    while (i + lc < D && id[i + lc] == id[i]) ++lc;
    while (i + li < D && id[i + li] == id[i] + li) ++li;
    const index_t len = std::max(lc, li);
    if (len >= kMinRun) {
      runs.push_back({i, len, id[i], lc >= li ? kConst : kInc});
      vector_coords += len;
    } else if (!runs.empty() && runs.back().kind == kScalar) {
      runs.back().len += len;
    } else {
      runs.push_back({i, len, 0, kScalar});
    }
    i += len;
  }
  return runs;
}

template <class T>
struct MeanCtx {
  index_t D, K;
  const index_t* id;
  const T* coef;
  const T* c2;  // coef[j] * inv_size[id[j]]
  const Run* runs;
  index_t nruns;
  const index_t* order;
  const index_t* seg;
  const T* coef_sorted;  // coef[order[p]]
  const T* c2_sorted;    // c2[order[p]]
  const void* small_id;  // Masked: orbit_id as int32 (float) / int64 (double)
  bool inc_wide;         // Runs: increasing runs add into the Acc sums (an orbit meets > kSumBlock)
  bool any_wide;         // Runs: some run adds into the Acc sums (inc_wide, const or scalar runs)
};

// ---- vectorisable building blocks (restrict pointers; independent lanes, no reassociation) ----

template <class A, class T>
SYMKERN_INLINE void fma_into(A* SYMKERN_RESTRICT acc, const T* SYMKERN_RESTRICT c,
                             const T* SYMKERN_RESTRICT x, index_t n) {
  for (index_t t = 0; t < n; ++t) acc[t] += static_cast<A>(c[t] * x[t]);
}

// sum_t c[t] x[t]: L lanes of T partial sums, restarted every kSumBlock terms per lane, block
// totals added in double (see kSumBlock).
template <class T>
SYMKERN_INLINE Acc dot(const T* SYMKERN_RESTRICT c, const T* SYMKERN_RESTRICT x, index_t n) {
  constexpr int L = 64 / sizeof(T);  // lanes of independent partial sums
  const index_t full = n - n % L;
  Acc s = 0;
  for (index_t t0 = 0; t0 < full; t0 += L * kSumBlock) {
    const index_t t1 = std::min<index_t>(full, t0 + L * kSumBlock);
    T part[L] = {};
    for (index_t t = t0; t < t1; t += L)
      for (int l = 0; l < L; ++l) part[l] += c[t + l] * x[t + l];
    for (int h = L / 2; h > 0; h /= 2)  // tree fold: vector adds, no serial chain over the lanes
      for (int l = 0; l < h; ++l) part[l] += part[l + h];
    s += part[0];
  }
  for (index_t t = full; t < n; ++t) s += c[t] * x[t];
  return s;
}

template <class T>
SYMKERN_INLINE void mul_into(T* SYMKERN_RESTRICT o, const T* SYMKERN_RESTRICT c,
                             const T* SYMKERN_RESTRICT a, index_t n) {
  for (index_t t = 0; t < n; ++t) o[t] = c[t] * a[t];
}

template <class T>
SYMKERN_INLINE void scale_into(T* SYMKERN_RESTRICT o, const T* SYMKERN_RESTRICT c, T v,
                               index_t n) {
  for (index_t t = 0; t < n; ++t) o[t] = c[t] * v;
}

// ---- one row, three ways ----

template <class T>
SYMKERN_INLINE void row_scatter(const MeanCtx<T>& c, const T* SYMKERN_RESTRICT x,
                                T* SYMKERN_RESTRICT o, Acc* SYMKERN_RESTRICT acc) {
  std::fill(acc, acc + c.K, Acc(0));
  for (index_t i = 0; i < c.D; ++i) acc[c.id[i]] += c.coef[i] * x[i];
  for (index_t j = 0; j < c.D; ++j) o[j] = c.c2[j] * static_cast<T>(acc[c.id[j]]);
}

template <class T>
SYMKERN_INLINE void row_sorted(const MeanCtx<T>& c, const T* SYMKERN_RESTRICT x,
                               T* SYMKERN_RESTRICT o) {
  for (index_t k = 0; k < c.K; ++k) {
    const index_t s = c.seg[k], e = c.seg[k + 1];
    Acc a0 = 0, a1 = 0, a2 = 0, a3 = 0;  // gather-bound: double adds cost nothing here
    index_t p = s;
    for (; p + 4 <= e; p += 4) {
      a0 += c.coef_sorted[p] * x[c.order[p]];
      a1 += c.coef_sorted[p + 1] * x[c.order[p + 1]];
      a2 += c.coef_sorted[p + 2] * x[c.order[p + 2]];
      a3 += c.coef_sorted[p + 3] * x[c.order[p + 3]];
    }
    for (; p < e; ++p) a0 += c.coef_sorted[p] * x[c.order[p]];
    const T sum = static_cast<T>((a0 + a1) + (a2 + a3));
    for (p = s; p < e; ++p) o[c.order[p]] = c.c2_sorted[p] * sum;
  }
}

#if defined(__GNUC__) || defined(__clang__)
#define SYMKERN_HAVE_MASKED 1
// 32-byte vectors (GCC/Clang extensions) for the Masked variant: float lanes with int32 orbit ids,
// double lanes with int64 ids, so a lane-wise compare gives a lane mask of the same width.
typedef float mf32 __attribute__((vector_size(32)));
typedef std::int32_t mi32 __attribute__((vector_size(32)));
typedef double mf64 __attribute__((vector_size(32)));
typedef std::int64_t mi64 __attribute__((vector_size(32)));
template <class T>
struct MaskVec;
template <>
struct MaskVec<float> {
  using F = mf32;
  using I = mi32;
  using Id = std::int32_t;
};
template <>
struct MaskVec<double> {
  using F = mf64;
  using I = mi64;
  using Id = std::int64_t;
};

// Few orbits (KO <= kMaskedMaxOrbits, zero orbits included), interleaved anyhow: one pass keeps
// KO vector accumulators and adds each lane into its own orbit's accumulator through a lane mask
// (bitwise AND, not a multiply by 0/1, so a NaN or Inf stays inside its orbit as the reference
// formula has it); the second pass selects each lane's orbit sum with KO - 1 blends.
template <class T, int KO>
SYMKERN_INLINE void row_masked(const MeanCtx<T>& c, const T* SYMKERN_RESTRICT x,
                               T* SYMKERN_RESTRICT o) {
  using F = typename MaskVec<T>::F;
  using I = typename MaskVec<T>::I;
  using Id = typename MaskVec<T>::Id;
  constexpr int V = 32 / sizeof(T);
  const Id* ids = static_cast<const Id*>(c.small_id);
  const index_t D = c.D, full = D - D % V;
  I ov[KO];
  for (int k = 0; k < KO; ++k) ov[k] = I{} + Id(k);
  Acc sums[KO] = {};
  for (index_t d0 = 0; d0 < full; d0 += V * kSumBlock) {  // T lanes per block, totals in double
    const index_t d1 = std::min<index_t>(full, d0 + V * kSumBlock);
    F acc[KO];
    for (int k = 0; k < KO; ++k) acc[k] = F{} + T(0);
    for (index_t d = d0; d < d1; d += V) {
      F xv, cv;
      I iv;
      std::memcpy(&xv, x + d, sizeof(F));
      std::memcpy(&cv, c.coef + d, sizeof(F));
      std::memcpy(&iv, ids + d, sizeof(I));
      const F prod = cv * xv;
      I cx;
      std::memcpy(&cx, &prod, sizeof(I));
      for (int k = 0; k < KO; ++k) {
        const I sel = cx & (iv == ov[k]);
        F add;
        std::memcpy(&add, &sel, sizeof(F));
        acc[k] += add;
      }
    }
    for (int k = 0; k < KO; ++k) {
      T a[V];
      std::memcpy(a, &acc[k], sizeof(F));
      for (int h = V / 2; h > 0; h /= 2)
        for (int l = 0; l < h; ++l) a[l] += a[l + h];
      sums[k] += a[0];
    }
  }
  for (index_t j = full; j < D; ++j) sums[ids[j]] += c.coef[j] * x[j];
  F sv[KO];
  for (int k = 0; k < KO; ++k) sv[k] = F{} + static_cast<T>(sums[k]);
  for (index_t d = 0; d < full; d += V) {
    I iv;
    F cv;
    std::memcpy(&iv, ids + d, sizeof(I));
    std::memcpy(&cv, c.c2 + d, sizeof(F));
    F r = sv[0];
    for (int k = 1; k < KO; ++k) r = (iv == ov[k]) ? sv[k] : r;
    r = cv * r;
    std::memcpy(o + d, &r, sizeof(F));
  }
  for (index_t j = full; j < D; ++j) o[j] = c.c2[j] * sums[ids[j]];
}

template <class T>
SYMKERN_INLINE void row_masked_any(const MeanCtx<T>& c, const T* x, T* o) {
  switch (c.K) {
    case 1: row_masked<T, 1>(c, x, o); break;
    case 2: row_masked<T, 2>(c, x, o); break;
    case 3: row_masked<T, 3>(c, x, o); break;
    case 4: row_masked<T, 4>(c, x, o); break;
    case 5: row_masked<T, 5>(c, x, o); break;
    case 6: row_masked<T, 6>(c, x, o); break;
    case 7: row_masked<T, 7>(c, x, o); break;
    default: row_masked<T, 8>(c, x, o); break;
  }
}
#else
#define SYMKERN_HAVE_MASKED 0
#endif

// acc (T) takes the increasing runs unless c.inc_wide; wide (Acc) the rest; their sum lands in acc
// before the output sweep.
template <class T>
SYMKERN_INLINE void row_runs(const MeanCtx<T>& c, const T* SYMKERN_RESTRICT x,
                             T* SYMKERN_RESTRICT o, T* SYMKERN_RESTRICT acc,
                             Acc* SYMKERN_RESTRICT wide) {
  std::fill(acc, acc + c.K, T(0));
  if (c.any_wide) std::fill(wide, wide + c.K, Acc(0));
  for (index_t r = 0; r < c.nruns; ++r) {
    const Run& run = c.runs[r];
    const index_t s = run.start;
    if (run.kind == kInc) {
      if (c.inc_wide)
        fma_into(wide + run.base, c.coef + s, x + s, run.len);
      else
        fma_into(acc + run.base, c.coef + s, x + s, run.len);
    } else if (run.kind == kConst) {
      wide[run.base] += dot(c.coef + s, x + s, run.len);
    } else {
      for (index_t i = s; i < s + run.len; ++i) wide[c.id[i]] += c.coef[i] * x[i];
    }
  }
  if (c.any_wide)
    for (index_t k = 0; k < c.K; ++k) acc[k] = static_cast<T>(acc[k] + wide[k]);
  for (index_t r = 0; r < c.nruns; ++r) {
    const Run& run = c.runs[r];
    const index_t s = run.start;
    if (run.kind == kInc) {
      mul_into(o + s, c.c2 + s, acc + run.base, run.len);
    } else if (run.kind == kConst) {
      scale_into(o + s, c.c2 + s, acc[run.base], run.len);
    } else {
      for (index_t j = s; j < s + run.len; ++j) o[j] = c.c2[j] * acc[c.id[j]];
    }
  }
}

// Whether the memory spans of x (B, D; strides xs0, xs1, either sign) and out (B, D; row stride
// os0, unit column stride) intersect.
template <class T>
bool ranges_overlap(const T* x, index_t B, index_t D, index_t xs0, index_t xs1, const T* out,
                    index_t os0) {
  const auto span = [](const T* p, index_t B, index_t D, index_t s0, index_t s1) {
    const index_t lo = std::min<index_t>(0, (B - 1) * s0) + std::min<index_t>(0, (D - 1) * s1);
    const index_t hi = std::max<index_t>(0, (B - 1) * s0) + std::max<index_t>(0, (D - 1) * s1);
    return std::pair<std::uintptr_t, std::uintptr_t>{
        reinterpret_cast<std::uintptr_t>(p + lo), reinterpret_cast<std::uintptr_t>(p + hi + 1)};
  };
  const auto [x0, x1] = span(x, B, D, xs0, xs1);
  const auto [o0, o1] = span(out, B, D, os0, 1);
  return x0 < o1 && o0 < x1;
}

// Rows [begin, end) of one thread. `xbuf` (D) receives each row first when copy_rows: x's columns
// are not unit-stride, or out is x (in place).
template <class T, int V>
SYMKERN_INLINE void rows_impl(const MeanCtx<T>& c, const T* x, index_t xs0, index_t xs1, T* out,
                              index_t os0, index_t begin, index_t end, Acc* wide, T* acc, T* xbuf,
                              bool copy_rows) {
  for (index_t b = begin; b < end; ++b) {
    const T* xr = x + b * xs0;
    if (copy_rows) {
      for (index_t i = 0; i < c.D; ++i) xbuf[i] = xr[i * xs1];
      xr = xbuf;
    }
    T* o = out + b * os0;
    if constexpr (V == static_cast<int>(MeanVariant::Scatter)) row_scatter(c, xr, o, wide);
    if constexpr (V == static_cast<int>(MeanVariant::Sorted)) row_sorted(c, xr, o);
    if constexpr (V == static_cast<int>(MeanVariant::Runs)) row_runs(c, xr, o, acc, wide);
#if SYMKERN_HAVE_MASKED
    if constexpr (V == static_cast<int>(MeanVariant::Masked)) row_masked_any(c, xr, o);
#endif
  }
}

// Two compiled copies of each row loop: baseline and AVX2+FMA (see orbit.h).
template <class T, int V>
void rows_base(const MeanCtx<T>& c, const T* x, index_t xs0, index_t xs1, T* out, index_t os0,
               index_t begin, index_t end, Acc* wide, T* acc, T* xbuf, bool copy_rows) {
  rows_impl<T, V>(c, x, xs0, xs1, out, os0, begin, end, wide, acc, xbuf, copy_rows);
}
template <class T, int V>
SYMKERN_TARGET_AVX2 void rows_avx2(const MeanCtx<T>& c, const T* x, index_t xs0, index_t xs1,
                                   T* out, index_t os0, index_t begin, index_t end, Acc* wide,
                                   T* acc, T* xbuf, bool copy_rows) {
  rows_impl<T, V>(c, x, xs0, xs1, out, os0, begin, end, wide, acc, xbuf, copy_rows);
}

template <class T>
using RowsFn = void (*)(const MeanCtx<T>&, const T*, index_t, index_t, T*, index_t, index_t,
                        index_t, Acc*, T*, T*, bool);

template <class T>
RowsFn<T> rows_fn(MeanVariant v) {
  constexpr int S = static_cast<int>(MeanVariant::Scatter);
  constexpr int O = static_cast<int>(MeanVariant::Sorted);
  constexpr int R = static_cast<int>(MeanVariant::Runs);
  constexpr int M = static_cast<int>(MeanVariant::Masked);
  if (use_avx2())
    return v == MeanVariant::Scatter  ? rows_avx2<T, S>
           : v == MeanVariant::Sorted ? rows_avx2<T, O>
           : v == MeanVariant::Masked ? rows_avx2<T, M>
                                      : rows_avx2<T, R>;
  return v == MeanVariant::Scatter  ? rows_base<T, S>
         : v == MeanVariant::Sorted ? rows_base<T, O>
         : v == MeanVariant::Masked ? rows_base<T, M>
                                    : rows_base<T, R>;
}

}  // namespace

template <class T>
MeanVariant orbit_mean(const T* x, index_t B, index_t D, index_t xs0, index_t xs1,
                       const index_t* orbit_id, const T* coef, const T* inv_size, index_t K,
                       const index_t* order, const index_t* seg_start, T* out, index_t os0,
                       MeanVariant variant) {
  if (B <= 0 || D <= 0) return variant;
  advise_huge_pages(out, ((B - 1) * os0 + D) * index_t(sizeof(T)));

  // Per-call plan preprocessing: O(D + K), negligible against B·D.
  std::vector<T> c2(static_cast<size_t>(D));
  for (index_t j = 0; j < D; ++j) c2[j] = coef[j] * inv_size[orbit_id[j]];
  index_t vector_coords = 0;
  std::vector<Run> runs = make_runs(orbit_id, D, vector_coords);
  index_t vector_runs = 0;
  for (const Run& r : runs) vector_runs += r.kind != kScalar;
  // Runs: how many increasing runs cover each orbit (each adds one term to its T accumulator)
  bool inc_wide = false, any_wide = false;
  {
    std::vector<index_t> inc_terms(static_cast<size_t>(K), 0);
    for (const Run& r : runs) {
      if (r.kind != kInc) {
        any_wide = true;
        continue;
      }
      for (index_t t = 0; t < r.len; ++t) inc_wide |= ++inc_terms[r.base + t] > kSumBlock;
    }
    any_wide |= inc_wide;
  }

  if (variant == MeanVariant::Masked && (K > kMaskedMaxOrbits || !SYMKERN_HAVE_MASKED))
    variant = MeanVariant::Auto;
  if (variant == MeanVariant::Auto) {
    // Measured (in-cache ns per element, fp32, one Zen 4 core, /tmp microbenchmarks):
    //   runs   ~0.15-0.2 with long runs (S_n on blocks: 0.17; K = 1: 0.15; K = D: 0.19), 0.38 on
    //          T(2) of Alt(100) (const runs of 99), 0.65 on T(2) of S_30 (runs of 30)
    //   masked 0.19-0.48 for K <= 8 whatever the interleaving (T(2) Alt(100) 0.33, T(2) S_30 0.19,
    //          random K = 2 0.20)
    //   scatter / sorted ~0.9-1.5 on randomly interleaved orbits with K > 8.
    const bool long_runs = 2 * vector_coords >= D && vector_coords >= 128 * vector_runs;
    if (long_runs)
      variant = MeanVariant::Runs;
    else if (K <= kMaskedMaxOrbits && SYMKERN_HAVE_MASKED)
      variant = MeanVariant::Masked;
    else if (2 * vector_coords >= D)
      variant = MeanVariant::Runs;
    else if (K * 8 >= D)
      variant = MeanVariant::Scatter;
    else
      variant = MeanVariant::Sorted;
  }

  std::vector<std::int32_t> id32;
  std::vector<std::int64_t> id64;
  const void* small_id = nullptr;
  if (variant == MeanVariant::Masked) {
    if (sizeof(T) == 4) {
      id32.assign(orbit_id, orbit_id + D);
      small_id = id32.data();
    } else {
      id64.assign(orbit_id, orbit_id + D);
      small_id = id64.data();
    }
  }

  std::vector<T> coef_sorted, c2_sorted;
  if (variant == MeanVariant::Sorted) {
    coef_sorted.resize(static_cast<size_t>(D));
    c2_sorted.resize(static_cast<size_t>(D));
    for (index_t p = 0; p < D; ++p) {
      coef_sorted[p] = coef[order[p]];
      c2_sorted[p] = c2[order[p]];
    }
  }

  MeanCtx<T> ctx{D,
                 K,
                 orbit_id,
                 coef,
                 c2.data(),
                 runs.data(),
                 static_cast<index_t>(runs.size()),
                 order,
                 seg_start,
                 coef_sorted.data(),
                 c2_sorted.data(),
                 small_id,
                 inc_wide,
                 any_wide};
  const RowsFn<T> fn = rows_fn<T>(variant);
  // In place (out is x, e.g. project_fixed(x, rep, out=x)): the row sweeps take x and out as
  // restrict pointers and write a row's outputs while other coordinates of it may not have been
  // read yet (Sorted), so each row is first copied to the thread's buffer, as for a strided x.
  // Callers guarantee out is x itself or disjoint from it (symkern.ops checks).
  const bool in_place = ranges_overlap(x, B, D, xs0, xs1, out, os0);
  const bool strided = xs1 != 1 || in_place;
  // Blocks of ~64K elements handed out dynamically; ~16K elements before a second thread is
  // worth waking.
  const index_t block = std::max<index_t>(1, (index_t{1} << 16) / D);
  const index_t grain = std::max<index_t>(1, (index_t{1} << 14) / D);
  parallel_row_blocks(B, block, grain, [&] {
    // per-thread scratch, allocated once per thread
    return [&, wide = std::vector<Acc>(static_cast<size_t>(K)),
            acc = std::vector<T>(static_cast<size_t>(K)),
            xbuf = std::vector<T>(strided ? static_cast<size_t>(D) : 0)](index_t begin,
                                                                        index_t end) mutable {
      fn(ctx, x, xs0, xs1, out, os0, begin, end, wide.data(), acc.data(), xbuf.data(), strided);
    };
  });
  return variant;
}

template MeanVariant orbit_mean<float>(const float*, index_t, index_t, index_t, index_t,
                                       const index_t*, const float*, const float*, index_t,
                                       const index_t*, const index_t*, float*, index_t,
                                       MeanVariant);
template MeanVariant orbit_mean<double>(const double*, index_t, index_t, index_t, index_t,
                                        const index_t*, const double*, const double*, index_t,
                                        const index_t*, const index_t*, double*, index_t,
                                        MeanVariant);

}  // namespace symkern::orbit
