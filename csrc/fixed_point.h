// Projection onto a fixed-point subspace given an orthonormal basis: out = (x Q) Qᵀ.
// Torch-free: raw pointers, int64 extents and int64 ELEMENT strides (see buffers.h).
#pragma once

#include "common.h"
#include "orbit.h"  // SYMKERN_TARGET_AVX2 / SYMKERN_INLINE / SYMKERN_RESTRICT

namespace symkern::fixed_point {

// out = (x Q) Qᵀ for x (B, D) with element strides (xs0, xs1) (any, incl. non-unit column
// stride), Q (D, k) with element strides (qs0, qs1), out (B, D) with row stride os0 and unit
// column stride; out may be x itself (in place: a pair of rows is read completely before it is
// written) but must not otherwise overlap x. k == 0 gives zeros. Memory-bound for small k: each
// row of x is read once and each row of out written once; both products run on the row while it
// sits in L1.
template <class T>
void project_lowrank(const T* x, index_t B, index_t D, index_t xs0, index_t xs1, const T* q,
                     index_t k, index_t qs0, index_t qs1, T* out, index_t os0);

extern template void project_lowrank<float>(const float*, index_t, index_t, index_t, index_t,
                                            const float*, index_t, index_t, index_t, float*,
                                            index_t);
extern template void project_lowrank<double>(const double*, index_t, index_t, index_t, index_t,
                                             const double*, index_t, index_t, index_t, double*,
                                             index_t);

}  // namespace symkern::fixed_point
