// Fused mirror ops for an orthonormal O ∈ R^{d×k} (symkern/mirror/core.py), batched over rows
// θ_m ∈ R^d (many models at once):
//
//   c = Oᵀθ                    (M, k)
//   out = θ + O(b − s·c)       (M, d)   s = 2: reflection R_O θ, s = 1: projection (I − OOᵀ)θ;
//                                        b (M, k) is an optional shift (null = 0), used by the
//                                        backward pass (the map (θ, b) ↦ (out, c) is symmetric)
//
// without any d×d matrix. Torch-free: raw pointers, int64 extents and int64 ELEMENT strides.
//
// Sparse columns: column j of O has S stored entries value[j, t] at coordinate index[j, t]
// (index, value: (k, S) row-major). Dense: Oᵀ as a row-major (k, d) matrix (small k).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace symkern::mirror {

// Sparse columns are processed in pieces. An `affine` piece is p interleaved chains of n columns
// each — columns j0 + u·p + r (u < n, r < p) — where every column continues the one p before it:
// index[j + p, t] = index[j, t] + 1 for all t. For each chain and each t its entries are then one
// unit-stride stretch of θ, and the kernel runs SIMD loops along it. Rescaling pairs stored as
// (u_i, w_i) columns are p = 2 chains, coordinate blocks and swaps of contiguous neuron blocks
// p = 1. Other columns form `scalar` pieces of consecutive columns [j0, j0 + n) (p = 1).
constexpr index_t kColChunk = 512;  // columns per piece at most (a piece's scratch: 2 x 512)
constexpr index_t kMinAffine = 8;   // shorter chains go through the scalar loop
constexpr index_t kMaxChains = 4;   // interleaving p tried: 1..4
constexpr index_t kMaxAffineS = 8;  // affine pieces only for S <= 8 (their values are re-laid)

struct Piece {
  index_t j0, n, p;
  bool affine;
  index_t vt_offset;  // affine: start of its re-laid values ([r][t][u]) in the kernel's scratch
};

// Pieces are grouped into super-chunks of at most kSuperEntries entries: a super-chunk's plan stays
// in L2 while every row of a row block sweeps it (each row then streams one long stretch of θ).
constexpr index_t kSuperEntries = 8192;

// A run [begin, end) of coordinates.
struct Run {
  index_t begin, end;
};

// What the kernels need to know about a (k, S) index table; measured on every call by
// plan_sparse, never taken from the caller.
struct SparseLayout {
  index_t k = 0, S = 0, d = 0;
  bool disjoint = false;            // no coordinate appears twice (only measured on request)
  bool contiguous_entries = false;  // index[j, t] = index[j, 0] + t for all j, t (Householder)
  std::vector<Piece> pieces;        // the columns, in order
  std::vector<index_t> supers;      // super-chunk boundaries into pieces (front 0, back size)
  index_t affine_values = 0;        // entries of all affine pieces (their re-laid value scratch)
  bool scattered = false;           // some scalar piece gathers single entries: go row by row
  std::vector<Run> rest;            // disjoint: maximal runs of coordinates outside every support
};

// Validates index (every entry in [0, d)) and measures its layout. need_disjoint: also measure
// disjointness and the rest runs (a d-byte bitmap; only calls that write out need them). Returns
// "" or a message naming the first bad entry.
std::string plan_sparse(const std::int64_t* index, index_t k, index_t S, index_t d,
                        bool need_disjoint, SparseLayout* layout);

// Sparse columns: column j has value[j, t] at coordinate index[j, t] (index, value: (k, S)
// row-major, the layout from plan_sparse). theta (M, d) with element strides (ts0, ts1), any
// (stride 0 included); c (M, k) and out (M, d) C-contiguous outputs; out == nullptr computes c
// only. shift: (M, k) C-contiguous or nullptr.
//   disjoint (or c only): ONE pass — every column reads its S entries of θ, writes c_j and
//             out = θ + (b_j − s·c_j)·value at the same entries; the rest runs are copied. Every
//             θ entry is read once and every out entry written once.
//   otherwise: θ is staged in out, all of c is computed, then out[index] += coef_j·value.
template <class T>
void mirror_sparse(const T* theta, index_t M, index_t ts0, index_t ts1, const std::int64_t* index,
                   const T* value, const SparseLayout& layout, const T* shift, T scale, T* out,
                   T* c);

// Dense Oᵀ (k, d) row-major. Same contract as mirror_sparse. Two passes over each row (c needs the
// whole row before any output), d-tiled so a tile of the row serves all k dot products from L1.
template <class T>
void mirror_dense(const T* theta, index_t M, index_t d, index_t ts0, index_t ts1, const T* ot,
                  index_t k, const T* shift, T scale, T* out, T* c);

extern template void mirror_sparse<float>(const float*, index_t, index_t, index_t,
                                          const std::int64_t*, const float*, const SparseLayout&,
                                          const float*, float, float*, float*);
extern template void mirror_sparse<double>(const double*, index_t, index_t, index_t,
                                           const std::int64_t*, const double*, const SparseLayout&,
                                           const double*, double, double*, double*);
extern template void mirror_dense<float>(const float*, index_t, index_t, index_t, index_t,
                                         const float*, index_t, const float*, float, float*,
                                         float*);
extern template void mirror_dense<double>(const double*, index_t, index_t, index_t, index_t,
                                          const double*, index_t, const double*, double, double*,
                                          double*);

}  // namespace symkern::mirror
