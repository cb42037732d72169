// Mean-field particle engine: multi-step particle SGD / Langevin kernel and a fused particle
// forward/backward. Torch-free: raw C-contiguous buffers and int64 extents (csrc/common.h).
// The math is symkern/meanfield/problem.py; see csrc/particles.cpp for the design.
#pragma once

#include <cstdint>
#include <string>

#include "common.h"

namespace symkern::particles {

// Everything but the particles; all arrays C-contiguous, T = float or double.
template <class T>
struct Problem {
  int unit_code = 0;        // 0 matrix unit, 1 standard unit
  int activation_code = 0;  // standard unit: 0 tanh, 1 sigmoid, 2 relu
  index_t c = 0, d = 0, D = 0;
  index_t batch = 0;
  index_t G = 1;  // group order
  index_t M = 0;  // teacher particles (padded)
  double sigma_pi = 1.0;
  std::uint64_t seed = 0;
  const std::int64_t* run_ids = nullptr;  // (R,)
  const T* alpha = nullptr;               // (R,)
  const T* tau = nullptr;                 // (R,)
  const T* beta = nullptr;                // (R,)
  const std::int32_t* scheme = nullptr;   // (R,) codes 0..4
  const std::int32_t* project_noise = nullptr;  // (R,) 0/1
  const T* teacher = nullptr;    // (R, M, D)
  const T* teacher_w = nullptr;  // (R, M)
  const T* rho_x = nullptr;      // (G, d, d)
  const T* rho_y = nullptr;      // (G, c, c)
  const T* proj = nullptr;       // (D, D)
  const T* x_data = nullptr;     // (steps, R, B, d) or null
  const T* y_data = nullptr;     // (steps, R, B, c) or null
};

// theta_in (R, N, D) -> theta_out (R, N, D), snaps (R, S, N, D), losses (R, S),
// S = steps / snapshot_every. theta_in may alias theta_out. One call may run a chunk of the steps:
// the call's steps lt_begin <= lt < lt_end (absolute step step0 + lt); a chunk with lt_begin > 0
// continues from theta_out, which the chunk before it wrote. The chunks of [0, steps) in order
// give exactly the numbers of one call of all steps (the random streams are keyed by the
// absolute step; the particles round-trip through theta_out unchanged).
template <class T>
void particle_steps(const Problem<T>& p, const T* theta_in, index_t R, index_t N, T* theta_out,
                    T* snaps, T* losses, std::int64_t step0, std::int64_t steps,
                    std::int64_t snapshot_every, std::int64_t lt_begin, std::int64_t lt_end);

// Fused particle model: phi (B, c) = (1/N) sum_i sigma*(x_b, theta_i).
template <class T>
void particle_forward(const T* x, index_t B, const T* theta, index_t N, int unit_code,
                      int activation_code, index_t c, index_t d, T* phi);

// Backward of particle_forward: given g_phi (B, c), grad_theta (N, D) and grad_x (B, d)
// (either output may be null to skip it).
template <class T>
void particle_forward_backward(const T* x, index_t B, const T* theta, index_t N, int unit_code,
                               int activation_code, index_t c, index_t d, const T* g_phi,
                               T* grad_theta, T* grad_x);

// Smallest N at which threads split one run's particles (used when R < threads): 2048, or
// SYMKERN_PARTICLES_TEAM_MIN_N (a positive int, or "off" / "0": never). Read once per process.
index_t team_min_particles();

// Which instruction-set variant the kernels dispatch to ("avx512", "avx2" or "baseline");
// SYMKERN_PARTICLES_ISA=avx512|avx2|baseline overrides (down only).
std::string isa_name();

// Philox4x32-10 on n counters (for tests): out (n, 4).
void philox4x32_batch(const std::uint32_t* ctr, index_t n, std::uint32_t k0, std::uint32_t k1,
                      std::uint32_t* out);
// Standard normals of rng.normal for one run: out[i] keyed by (i, step, run_id, stream).
void normals_batch(std::uint64_t seed, std::uint32_t run_id, std::uint32_t step,
                   std::uint32_t stream, index_t n, double* out);
// Standard normals of rng.normal4 for one run: out[j] = element idx0 + j of
// (step, run_id, stream) (float64 Box-Muller).
void normals4_batch(std::uint64_t seed, std::uint32_t run_id, std::uint32_t step,
                    std::uint32_t stream, std::uint64_t idx0, index_t n, double* out);
// The same by the float32 Box-Muller of the fused float32 noise; false (out untouched) where the
// dispatched ISA copy has none (only AVX-512 draws float normals).
bool normals4_f32_batch(std::uint64_t seed, std::uint32_t run_id, std::uint32_t step,
                        std::uint32_t stream, std::uint64_t idx0, index_t n, float* out);

// Max error of the float32 fast activations against double libm and of the float64 sigmoid
// against long-double libm on a dense grid (for tests and the stated error bounds): returns
// {sigmoid abs, sigmoid rel, tanh abs, tanh rel, float64 sigmoid abs, float64 sigmoid rel,
// base-2 float32 sigmoid abs, rel, base-2 float64 sigmoid abs, rel} (the base-2 entries are the
// matrix-unit pass 1's 1 / (1 + 2^t) on t = -u log2 e; NaN in the copies without it: only AVX-512).
void activation_errors(double lo, double hi, index_t n, double out[10]);

}  // namespace symkern::particles
