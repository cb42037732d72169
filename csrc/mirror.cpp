// Fused mirror ops c = Oᵀθ, out = θ + O(b − s·c) over rows of θ. See mirror.h.
//
// Sparse columns, disjoint supports (or c only): ONE pass. A column reads its S entries of θ,
// writes c_j and writes out = θ + (b_j − s·c_j)·O_ij at the same coordinates; no other column
// touches them, and the coordinates outside every support (the rest runs) are copied. How the
// columns are swept depends on their layout (plan_sparse, measured on every call):
//  * streaming (affine pieces, and columns made of long contiguous runs): rows in blocks of
//    kRowBlock; per super-chunk of pieces, each row of the block in turn. The plan is read from
//    memory once per row block instead of once per row — at k = d/2 columns of S = 2, index and
//    value take 3x the bytes of an fp32 θ row — and every θ entry is read once and every out
//    entry written once, nothing staged. Affine pieces with S, p <= 2 (coordinates, rescaling
//    pairs, neuron swaps) run as ONE SIMD loop computing c and out together; other affine pieces
//    as one SIMD pass per entry; contiguous columns (Householder rows) as dot products + axpys.
//  * scattered (some columns gather single entries from anywhere, e.g. a random coordinate
//    subset): row by row, the row first staged by one streaming copy (into out, updated in place
//    after; into a scratch row for c only), so the gathers and scatters hit L2 (d = 1e5 fp32:
//    400 KB of the 1 MB L2 per core here) instead of missing all over memory.
// Overlapping supports need all of c before any update: θ is staged in out, c computed from it,
// then out[index] += coef·value.
//
// Dense Oᵀ (k, d): pass 1 c = Oᵀθ tile by tile, pass 2 out = θ + Σ_j coef_j Oᵀ[j, :] tile by tile
// (θ read again, from L3 for a row block of 8 rows of 1e5 floats; a strided θ is staged in out
// first). Both passes load each Oᵀ tile once for all rows of the block. Inner loops use
// independent lane accumulators so they vectorise without -ffast-math.
//
// The row-block functions are compiled twice (baseline, AVX2+FMA) and picked at run time like the
// other kernels.
#include "mirror.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "orbit.h"  // SYMKERN_TARGET_AVX2 / SYMKERN_INLINE / SYMKERN_RESTRICT,
                    // parallel_row_blocks, use_avx2, advise_huge_pages

#if defined(__GNUC__) && !defined(__clang__)
// Only force-inlined helpers pass vectors around, so GCC's AVX calling-convention note is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// No fused multiply-add contraction in this file: c_j = Σ_t value·θ must round every product
// before the sum, like the torch reference, so that a symmetric point gives c = 0 EXACTLY (a
// neuron swap at θ_p = θ_q: (θ_p/√2) + (−θ_q/√2) = 0, whereas fma(−1/√2, θ_q, θ_p/√2) leaves the
// rounding error of θ_p/√2, ~1e-17). Callers test the constraint Oᵀθ = 0 with ==.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace symkern::mirror {

namespace {

// Pieces in column order (mirror.h): at each column, the smallest interleaving p <= kMaxChains
// with at least kMinAffine whole rounds of affine continuation makes an affine piece; otherwise
// the column joins a scalar piece.
std::vector<Piece> column_pieces(const std::int64_t* index, index_t k, index_t S) {
  auto follows = [&](index_t a, index_t b) {  // column b continues column a
    for (index_t t = 0; t < S; ++t)
      if (index[b * S + t] != index[a * S + t] + 1) return false;
    return true;
  };
  std::vector<Piece> pieces;
  index_t offset = 0;
  for (index_t j = 0; j < k;) {
    index_t n = 0, p = 0;
    for (index_t q = 1; S <= kMaxAffineS && q <= kMaxChains && p == 0; ++q) {
      index_t rounds = 1;
      while (rounds < kColChunk / q && j + (rounds + 1) * q <= k) {
        bool ok = true;
        for (index_t r = 0; r < q && ok; ++r)
          ok = follows(j + (rounds - 1) * q + r, j + rounds * q + r);
        if (!ok) break;
        ++rounds;
      }
      if (rounds >= kMinAffine) {
        n = rounds;
        p = q;
      }
    }
    if (p > 0) {
      pieces.push_back({j, n, p, true, offset});
      offset += n * p * S;
      j += n * p;
    } else if (!pieces.empty() && !pieces.back().affine &&
               pieces.back().j0 + pieces.back().n == j && pieces.back().n < kColChunk) {
      ++pieces.back().n;
      ++j;
    } else {
      pieces.push_back({j, 1, 1, false, 0});
      ++j;
    }
  }
  return pieces;
}

}  // namespace

std::string plan_sparse(const std::int64_t* index, index_t k, index_t S, index_t d,
                        bool need_disjoint, SparseLayout* layout) {
  layout->k = k;
  layout->S = S;
  layout->d = d;
  layout->disjoint = false;
  layout->rest.clear();
  std::vector<unsigned char> seen(need_disjoint ? static_cast<size_t>(d) : 0, 0);
  bool disjoint = true, contiguous = true;
  for (index_t e = 0; e < k * S; ++e) {
    const std::int64_t i = index[e];
    if (i < 0 || i >= d)
      return "entry (" + std::to_string(e / S) + ", " + std::to_string(e % S) + ") = " +
             std::to_string(i) + " is outside [0, d=" + std::to_string(d) + ")";
    if (e % S != 0 && i != index[e - 1] + 1) contiguous = false;
    if (need_disjoint) {
      if (seen[static_cast<size_t>(i)]) disjoint = false;
      seen[static_cast<size_t>(i)] = 1;
    }
  }
  layout->contiguous_entries = contiguous;
  layout->pieces = column_pieces(index, k, S);
  layout->affine_values = 0;
  layout->supers.assign(1, 0);
  index_t entries = 0;
  for (size_t i = 0; i < layout->pieces.size(); ++i) {
    const Piece& p = layout->pieces[i];
    const index_t e = p.n * p.p * S;
    if (p.affine) layout->affine_values += e;
    if (entries > 0 && entries + e > kSuperEntries) {
      layout->supers.push_back(static_cast<index_t>(i));
      entries = 0;
    }
    entries += e;
  }
  layout->supers.push_back(static_cast<index_t>(layout->pieces.size()));
  // Scalar pieces gather from scattered places unless their columns are long contiguous runs.
  layout->scattered = false;
  if (!(contiguous && S >= kMinAffine))
    for (const Piece& p : layout->pieces) layout->scattered = layout->scattered || !p.affine;
  if (need_disjoint) {
    layout->disjoint = disjoint;
    for (index_t i = 0; disjoint && i < d;) {
      if (seen[static_cast<size_t>(i)]) {
        ++i;
        continue;
      }
      const index_t begin = i;
      while (i < d && !seen[static_cast<size_t>(i)]) ++i;
      layout->rest.push_back({begin, i});
    }
  }
  return "";
}

namespace {

constexpr index_t kRowBlock = 8;

template <class T>
SYMKERN_INLINE void copy_strided(const T* src, index_t n, index_t stride, T* dst) {
  if (stride == 1) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  } else {
    for (index_t i = 0; i < n; ++i) dst[i] = src[i * stride];
  }
}

// Dot product with L independent partial sums: the compiler turns the lane loop into vector FMAs
// without reassociating anything itself (no -ffast-math needed).
template <class T>
SYMKERN_INLINE T dot(const T* SYMKERN_RESTRICT a, const T* SYMKERN_RESTRICT b, index_t n) {
  // four 32-byte vectors of partial sums: enough independent FMA chains to hide their latency
  constexpr int L = 128 / static_cast<int>(sizeof(T));
  T acc[L] = {};
  index_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += a[i + l] * b[i + l];
  T s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

template <class T>
SYMKERN_INLINE void axpy(T* SYMKERN_RESTRICT y, T a, const T* SYMKERN_RESTRICT x, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <class T>
struct SparseArgs {
  const T* theta;
  index_t ts0, ts1;
  const std::int64_t* index;
  const T* value;
  const T* vt;  // affine pieces' values re-laid [r][t][u] (Piece::vt_offset)
  const SparseLayout* layout;
  const T* shift;
  T scale;
  T* out;
  T* c;
};

// Loop bodies below index several row pointers that never alias (out never shares memory with θ,
// c or the plan: the bindings check it), more than GCC's runtime alias versioning handles.
#if defined(__clang__)
#define SYMKERN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define SYMKERN_IVDEP _Pragma("GCC ivdep")
#else
#define SYMKERN_IVDEP
#endif

// An affine piece on row m with S entries per column and P chains known at compile time (1 or 2
// each: coordinates, rescaling pairs, neuron swaps): ONE SIMD loop along the chains computes c,
// stores it and writes out, reading each θ entry once.
template <class T, int S, int P>
SYMKERN_INLINE void affine_row_fused(const SparseArgs<T>& a, const Piece& pc, index_t m,
                                     const T* th) {
  const SparseLayout& L = *a.layout;
  const index_t n = pc.n;
  T* o = a.out != nullptr ? a.out + m * L.d : nullptr;
  T* cm = a.c + m * L.k + pc.j0;
  const T* b = a.shift != nullptr ? a.shift + m * L.k + pc.j0 : nullptr;
  const T* x[P][S];
  T* y[P][S];
  const T* v[P][S];
  for (int r = 0; r < P; ++r)
    for (int t = 0; t < S; ++t) {
      const std::int64_t ix = a.index[(pc.j0 + r) * S + t];
      x[r][t] = th + ix;
      y[r][t] = o != nullptr ? o + ix : nullptr;
      v[r][t] = a.vt + pc.vt_offset + (r * S + t) * n;
    }
  const T scale = a.scale;
  if (o == nullptr) {
    SYMKERN_IVDEP
    for (index_t u = 0; u < n; ++u)
      for (int r = 0; r < P; ++r) {
        T cj = 0;
        for (int t = 0; t < S; ++t) cj += v[r][t][u] * x[r][t][u];
        cm[u * P + r] = cj;
      }
    return;
  }
  auto sweep = [&](auto has_shift) {  // the shift test hoisted out of the SIMD loop
    SYMKERN_IVDEP
    for (index_t u = 0; u < n; ++u)
      for (int r = 0; r < P; ++r) {
        T cj = 0;
        for (int t = 0; t < S; ++t) cj += v[r][t][u] * x[r][t][u];
        cm[u * P + r] = cj;
        T cf = -scale * cj;
        if constexpr (decltype(has_shift)::value) cf += b[u * P + r];
        for (int t = 0; t < S; ++t) y[r][t][u] = x[r][t][u] + cf * v[r][t][u];
      }
  };
  if (b != nullptr)
    sweep(std::true_type{});
  else
    sweep(std::false_type{});
}

// Any other affine piece on row m (unit-stride θ): per chain, one SIMD pass per entry t for c,
// then one per t for out. acc, coef: kColChunk scratch.
template <class T, int SC>
SYMKERN_INLINE void affine_row(const SparseArgs<T>& a, const Piece& pc, index_t m, const T* th,
                               T* acc, T* coef) {
  const SparseLayout& L = *a.layout;
  const index_t S = SC > 0 ? SC : L.S, k = L.k, n = pc.n, p = pc.p;
  T* o = a.out != nullptr ? a.out + m * L.d : nullptr;
  T* cm = a.c + m * k;
  const T* b = a.shift != nullptr ? a.shift + m * k : nullptr;
  for (index_t r = 0; r < p; ++r) {
    const index_t jr = pc.j0 + r;
    const std::int64_t* ix = a.index + jr * S;
    const T* vr = a.vt + pc.vt_offset + r * S * n;
    std::fill(acc, acc + n, T(0));
    for (index_t t = 0; t < S; ++t) {
      const T* SYMKERN_RESTRICT x = th + ix[t];
      const T* SYMKERN_RESTRICT v = vr + t * n;
      T* SYMKERN_RESTRICT cc = acc;
      for (index_t u = 0; u < n; ++u) cc[u] += v[u] * x[u];
    }
    for (index_t u = 0; u < n; ++u) cm[jr + u * p] = acc[u];
    if (o == nullptr) continue;
    for (index_t u = 0; u < n; ++u)
      coef[u] = (b != nullptr ? b[jr + u * p] : T(0)) - a.scale * acc[u];
    for (index_t t = 0; t < S; ++t) {  // y may be x itself (a staged row)
      const T* x = th + ix[t];
      const T* v = vr + t * n;
      T* y = o + ix[t];
      SYMKERN_IVDEP
      for (index_t u = 0; u < n; ++u) y[u] = x[u] + coef[u] * v[u];
    }
  }
}

// A scalar piece on row m: columns one by one; contiguous entries (Householder rows, unit-stride
// θ) as a dot product and an axpy, anything else as a gather / scatter.
template <class T, int SC>
SYMKERN_INLINE void scalar_row(const SparseArgs<T>& a, const Piece& pc, index_t m, const T* th,
                               index_t ts1) {
  const SparseLayout& L = *a.layout;
  const index_t S = SC > 0 ? SC : L.S, k = L.k;
  T* o = a.out != nullptr ? a.out + m * L.d : nullptr;
  T* cm = a.c + m * k;
  const T* b = a.shift != nullptr ? a.shift + m * k : nullptr;
  const bool contiguous = L.contiguous_entries && ts1 == 1;
  for (index_t j = pc.j0; j < pc.j0 + pc.n; ++j) {
    const std::int64_t* ix = a.index + j * S;
    const T* v = a.value + j * S;
    T cj = 0;
    if (contiguous) {
      cj = dot(th + ix[0], v, S);
    } else {
      for (index_t t = 0; t < S; ++t) cj += v[t] * th[ix[t] * ts1];
    }
    cm[j] = cj;
    if (o == nullptr) continue;
    const T cf = (b != nullptr ? b[j] : T(0)) - a.scale * cj;
    if (contiguous) {  // y may be x itself (a staged row)
      const T* x = th + ix[0];
      T* y = o + ix[0];
      SYMKERN_IVDEP
      for (index_t t = 0; t < S; ++t) y[t] = x[t] + cf * v[t];
    } else {
      for (index_t t = 0; t < S; ++t) o[ix[t]] = th[ix[t] * ts1] + cf * v[t];
    }
  }
}

// One piece on row m, reading θ's row from th (element stride ts1). scratch: 2 * kColChunk.
template <class T, int SC>
SYMKERN_INLINE void piece_row(const SparseArgs<T>& a, const Piece& pc, index_t m, const T* th,
                              index_t ts1, T* scratch) {
  if (pc.affine && ts1 == 1) {
    if constexpr (SC == 1 || SC == 2) {
      if (pc.p == 1) return affine_row_fused<T, SC, 1>(a, pc, m, th);
      if (pc.p == 2) return affine_row_fused<T, SC, 2>(a, pc, m, th);
    }
    return affine_row<T, SC>(a, pc, m, th, scratch, scratch + kColChunk);
  }
  if (pc.affine) {  // a strided θ: the same columns through the scalar loop
    for (index_t r = 0; r < pc.p; ++r)
      for (index_t u = 0; u < pc.n; ++u)
        scalar_row<T, SC>(a, Piece{pc.j0 + u * pc.p + r, 1, 1, false, 0}, m, th, ts1);
    return;
  }
  scalar_row<T, SC>(a, pc, m, th, ts1);
}

// Rows [m0, m1) (at most kRowBlock) of the sparse op. SC > 0 fixes S at compile time (1:
// coordinates / rescaling pairs, 2: neuron swaps) so per-entry loops unroll; SC = 0 reads it.
// scratch: 2 * kColChunk, plus d for c-only calls on a scattered layout.
template <class T, int SC>
SYMKERN_INLINE void sparse_block_impl(const SparseArgs<T>& a, index_t m0, index_t m1, T* scratch) {
  const SparseLayout& L = *a.layout;
  const index_t S = SC > 0 ? SC : L.S, k = L.k, d = L.d;
  if ((a.out == nullptr || L.disjoint) && !L.scattered) {
    // Streaming: per super-chunk, every row of the block, reading θ and writing out once.
    for (size_t sc = 0; sc + 1 < L.supers.size(); ++sc)
      for (index_t m = m0; m < m1; ++m)
        for (index_t i = L.supers[sc]; i < L.supers[sc + 1]; ++i)
          piece_row<T, SC>(a, L.pieces[static_cast<size_t>(i)], m, a.theta + m * a.ts0, a.ts1,
                           scratch);
    if (a.out != nullptr)
      for (index_t m = m0; m < m1; ++m)
        for (const Run& r : L.rest)
          copy_strided(a.theta + m * a.ts0 + r.begin * a.ts1, r.end - r.begin, a.ts1,
                       a.out + m * d + r.begin);
    return;
  }
  if (a.out == nullptr || L.disjoint) {
    // Scattered entries: row by row, each row first staged with one streaming copy (into out,
    // then updated in place; for c only, into the scratch row), so the gathers and scatters hit
    // one row in L2 instead of missing all over memory.
    for (index_t m = m0; m < m1; ++m) {
      T* row = a.out != nullptr ? a.out + m * d : scratch + 2 * kColChunk;
      copy_strided(a.theta + m * a.ts0, d, a.ts1, row);
      for (const Piece& pc : L.pieces) piece_row<T, SC>(a, pc, m, row, 1, scratch);
    }
    return;
  }
  // Overlapping supports: stage θ in out, all of c from it, then the scatter-adds.
  for (index_t m = m0; m < m1; ++m) {
    copy_strided(a.theta + m * a.ts0, d, a.ts1, a.out + m * d);
    const T* o = a.out + m * d;
    T* cm = a.c + m * k;
    for (index_t j = 0; j < k; ++j) {
      const std::int64_t* ix = a.index + j * S;
      const T* v = a.value + j * S;
      T cj = 0;
      for (index_t t = 0; t < S; ++t) cj += v[t] * o[ix[t]];
      cm[j] = cj;
    }
  }
  for (index_t m = m0; m < m1; ++m) {
    T* o = a.out + m * d;
    const T* cm = a.c + m * k;
    const T* b = a.shift != nullptr ? a.shift + m * k : nullptr;
    for (index_t j = 0; j < k; ++j) {
      const std::int64_t* ix = a.index + j * S;
      const T* v = a.value + j * S;
      const T cf = (b != nullptr ? b[j] : T(0)) - a.scale * cm[j];
      for (index_t t = 0; t < S; ++t) o[ix[t]] += cf * v[t];
    }
  }
}

template <class T, int SC>
void sparse_block_base(const SparseArgs<T>& a, index_t m0, index_t m1, T* scratch) {
  sparse_block_impl<T, SC>(a, m0, m1, scratch);
}
template <class T, int SC>
SYMKERN_TARGET_AVX2 void sparse_block_avx2(const SparseArgs<T>& a, index_t m0, index_t m1,
                                           T* scratch) {
  sparse_block_impl<T, SC>(a, m0, m1, scratch);
}

// Tile of the dense path: 8 KB of each row (fp32: 2048, fp64: 1024 entries); the k rows of the Oᵀ
// tile are loaded once per tile and serve every row of the block.
template <class T>
constexpr index_t kDenseTile = 8192 / sizeof(T);

template <class T>
struct DenseArgs {
  const T* theta;
  index_t ts0, ts1, d;
  const T* ot;
  index_t k;
  const T* shift;
  T scale;
  T* out;
  T* c;
};

// Rows [m0, m1) (at most kRowBlock) of the dense op. coef: kRowBlock * k scratch; buf: kRowBlock
// * d scratch for c-only calls on a strided θ (otherwise rows are read in place or staged in out).
template <class T>
SYMKERN_INLINE void dense_block_impl(const DenseArgs<T>& a, index_t m0, index_t m1, T* coef,
                                     T* buf) {
  constexpr index_t tile = kDenseTile<T>;
  const index_t R = m1 - m0, d = a.d, k = a.k;
  const T* th[kRowBlock];
  for (index_t r = 0; r < R; ++r) {  // a strided θ row is staged (in out, or in buf for c only)
    const T* src = a.theta + (m0 + r) * a.ts0;
    if (a.ts1 == 1) {
      th[r] = src;
    } else if (a.out != nullptr) {
      copy_strided(src, d, a.ts1, a.out + (m0 + r) * d);
      th[r] = a.out + (m0 + r) * d;
    } else {
      copy_strided(src, d, a.ts1, buf + r * d);
      th[r] = buf + r * d;
    }
  }
  T* c = a.c + m0 * k;
  std::fill(c, c + R * k, T(0));
  for (index_t i0 = 0; i0 < d; i0 += tile) {
    const index_t n = std::min(tile, d - i0);
    for (index_t j = 0; j < k; ++j) {
      const T* q = a.ot + j * d + i0;
      for (index_t r = 0; r < R; ++r) c[r * k + j] += dot(th[r] + i0, q, n);
    }
  }
  if (a.out == nullptr) return;
  for (index_t r = 0; r < R; ++r)
    for (index_t j = 0; j < k; ++j)
      coef[r * k + j] =
          (a.shift != nullptr ? a.shift[(m0 + r) * k + j] : T(0)) - a.scale * c[r * k + j];
  for (index_t i0 = 0; i0 < d; i0 += tile) {
    const index_t n = std::min(tile, d - i0);
    for (index_t r = 0; r < R; ++r) {
      T* o = a.out + (m0 + r) * d + i0;
      if (th[r] + i0 != o) std::memcpy(o, th[r] + i0, static_cast<size_t>(n) * sizeof(T));
    }
    for (index_t j = 0; j < k; ++j) {
      const T* q = a.ot + j * d + i0;
      for (index_t r = 0; r < R; ++r) axpy(a.out + (m0 + r) * d + i0, coef[r * k + j], q, n);
    }
  }
}

template <class T>
void dense_block_base(const DenseArgs<T>& a, index_t m0, index_t m1, T* coef, T* buf) {
  dense_block_impl<T>(a, m0, m1, coef, buf);
}
template <class T>
SYMKERN_TARGET_AVX2 void dense_block_avx2(const DenseArgs<T>& a, index_t m0, index_t m1, T* coef,
                                          T* buf) {
  dense_block_impl<T>(a, m0, m1, coef, buf);
}

// Fresh outputs (torch.empty) are first touched here: ask for huge pages before that (see
// advise_huge_pages; page faults otherwise cost more than the kernel on large outputs).
template <class T>
void advise_outputs(T* out, T* c, index_t M, index_t d, index_t k) {
  if (out != nullptr) advise_huge_pages(out, M * d * index_t(sizeof(T)));
  advise_huge_pages(c, M * k * index_t(sizeof(T)));
}

// Rows [0, M) in dynamically scheduled blocks (a multiple of kRowBlock rows, ~64K entries of work
// or more), each cut into kRowBlock-row pieces for `piece(m0, m1)`; under ~32K entries of work per
// thread the call stays on one thread.
template <class MakePiece>
void run_row_blocks(index_t M, index_t work_per_row, MakePiece&& make_piece) {
  const index_t w = std::max<index_t>(1, work_per_row);
  const index_t rows = std::max<index_t>(1, (index_t{1} << 16) / w);
  const index_t block = (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
  const index_t grain = std::max<index_t>(1, (index_t{1} << 15) / w);
  parallel_row_blocks(M, block, grain, [&] {
    return [piece = make_piece()](index_t begin, index_t end) mutable {
      for (index_t m0 = begin; m0 < end; m0 += kRowBlock)
        piece(m0, std::min(end, m0 + kRowBlock));
    };
  });
}

template <class T, int SC>
auto pick_sparse_block(bool avx2) {
  return avx2 ? sparse_block_avx2<T, SC> : sparse_block_base<T, SC>;
}

}  // namespace

template <class T>
void mirror_sparse(const T* theta, index_t M, index_t ts0, index_t ts1, const std::int64_t* index,
                   const T* value, const SparseLayout& layout, const T* shift, T scale, T* out,
                   T* c) {
  if (M <= 0) return;
  advise_outputs(out, c, M, layout.d, layout.k);
  const index_t S = layout.S;
  // Affine pieces read their values along a chain: re-lay them [r][t][u] once per call (k·S work,
  // like the index validation) so that every row's SIMD loops read them unit-stride.
  std::vector<T> vt(static_cast<size_t>(layout.affine_values));
  for (const Piece& pc : layout.pieces) {
    if (!pc.affine) continue;
    for (index_t r = 0; r < pc.p; ++r)
      for (index_t t = 0; t < S; ++t)
        for (index_t u = 0; u < pc.n; ++u)
          vt[static_cast<size_t>(pc.vt_offset + (r * S + t) * pc.n + u)] =
              value[(pc.j0 + u * pc.p + r) * S + t];
  }
  const SparseArgs<T> a{theta, ts0, ts1, index, value, vt.data(), &layout, shift, scale, out, c};
  const bool avx2 = use_avx2();
  auto block = S == 1 ? pick_sparse_block<T, 1>(avx2)
                      : S == 2 ? pick_sparse_block<T, 2>(avx2) : pick_sparse_block<T, 0>(avx2);
  run_row_blocks(M, (out != nullptr ? layout.d : 0) + layout.k * S, [&] {
    const index_t row = out == nullptr && layout.scattered ? layout.d : 0;
    return [&, scratch = std::vector<T>(static_cast<size_t>(2 * kColChunk + row))](
               index_t m0, index_t m1) mutable { block(a, m0, m1, scratch.data()); };
  });
}

template <class T>
void mirror_dense(const T* theta, index_t M, index_t d, index_t ts0, index_t ts1, const T* ot,
                  index_t k, const T* shift, T scale, T* out, T* c) {
  if (M <= 0) return;
  advise_outputs(out, c, M, d, k);
  const DenseArgs<T> a{theta, ts0, ts1, d, ot, k, shift, scale, out, c};
  const bool avx2 = use_avx2();
  const bool need_buf = out == nullptr && ts1 != 1;
  run_row_blocks(M, 2 * d * std::max<index_t>(1, k), [&] {
    return [&, coef = std::vector<T>(static_cast<size_t>(kRowBlock * k)),
            buf = std::vector<T>(need_buf ? static_cast<size_t>(kRowBlock * d) : 0)](
               index_t m0, index_t m1) mutable {
      (avx2 ? dense_block_avx2<T> : dense_block_base<T>)(a, m0, m1, coef.data(), buf.data());
    };
  });
}

template void mirror_sparse<float>(const float*, index_t, index_t, index_t, const std::int64_t*,
                                   const float*, const SparseLayout&, const float*, float, float*,
                                   float*);
template void mirror_sparse<double>(const double*, index_t, index_t, index_t, const std::int64_t*,
                                    const double*, const SparseLayout&, const double*, double,
                                    double*, double*);
template void mirror_dense<float>(const float*, index_t, index_t, index_t, index_t, const float*,
                                  index_t, const float*, float, float*, float*);
template void mirror_dense<double>(const double*, index_t, index_t, index_t, index_t,
                                   const double*, index_t, const double*, double, double*,
                                   double*);

}  // namespace symkern::mirror
