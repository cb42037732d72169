// Batched small-model training sweeps (registry op `mirror_sweep`): all `steps` (S)GD steps of
// M independent small models in one call. Torch-free: raw C-contiguous buffers, int64 extents
// (csrc/common.h). The math is symkern/mirror/sweeps.py, the float64 oracle
// symkern/backends/reference/mirror_sweeps.py; see csrc/mirror_sweep.cpp for the design.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace symkern::mirror_sweep {

enum class Model : int { rescaling = 0, factorization = 1, mlp = 2 };
enum class Activation : int { tanh = 0, relu = 1 };

// One call's problem. Every array is C-contiguous, T = float or double, leading dimension M.
template <class T>
struct Problem {
  Model model = Model::rescaling;
  Activation activation = Activation::tanh;  // mlp only
  index_t M = 0;
  index_t d = 0;                // rescaling: dim of theta; mlp: input dim
  index_t m = 0, n = 0, k = 0;  // factorization: U (m, k), W (n, k), A (m, n)
  index_t h = 0, ht = 0;        // mlp: student / teacher hidden width
  index_t batch = 0;  // samples per step; 0 = population loss (rescaling) / full matrix (fact.)
  std::uint64_t seed = 0;
  const std::int64_t* model_ids = nullptr;  // (M,) Philox run ids, in [0, 2^32)
  const T* gamma = nullptr;                 // (M,) weight decay
  const T* eta = nullptr;                   // (M,) step size
  const T* noise = nullptr;                 // (M,) label-noise std
  // rescaling {beta (M, d)}; factorization {A (M, m, n)}; mlp teacher {W1 (M, ht, d),
  // b1 (M, ht), a (M, ht)}
  const T* target[3] = {nullptr, nullptr, nullptr};
  const T* offset = nullptr;  // factorization symmetry breaker C (M, m, k), or null
  // rescaling {u, w (M, d)}; factorization {U (M, m, k), W (M, n, k)}; mlp {W1 (M, h, d),
  // b1 (M, h), a (M, h)}. params_out may alias params_in (a model's row is read before written).
  const T* params_in[3] = {nullptr, nullptr, nullptr};
  T* params_out[3] = {nullptr, nullptr, nullptr};
  T* losses = nullptr;  // (M, steps / record_every)
};

// Steps t = step0 .. step0 + steps - 1 of every model; losses[m, j] = the data loss of step
// step0 + (j + 1) record_every - 1 before its update. One call may run a chunk of them: the
// steps step0 + lt for lt_begin <= lt < lt_end; a chunk with lt_begin > 0 continues from
// params_out, which the chunk before it wrote. The chunks of [0, steps) in order give exactly the
// numbers of one call of all steps (csrc/chunks.h).
template <class T>
void sweep(const Problem<T>& p, std::int64_t step0, std::int64_t steps, std::int64_t record_every,
           std::int64_t lt_begin, std::int64_t lt_end);

// Instruction-set variant the kernel dispatches to ("avx512", "avx2" or "baseline");
// SYMKERN_MIRROR_SWEEP_ISA=avx2|baseline forces a lower one.
std::string isa_name();

// Max error of the kernel's vectorisable tanh against std::tanh (double) on n points of
// [lo, hi]: {double abs, double rel, float abs, float rel} (float: the value rounded to float
// as the float32 kernel uses it, against the double std::tanh).
void tanh_errors(double lo, double hi, index_t n, double out[4]);

}  // namespace symkern::mirror_sweep
