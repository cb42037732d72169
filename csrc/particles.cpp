// Mean-field particle engine (see csrc/particles.h; the math is symkern/meanfield/problem.py).
//
// Design
// ------
// * One call runs `steps` steps of R independent runs. A run's particles are copied once into a
//   structure-of-arrays scratch (D arrays of N, so every inner loop is a unit-stride SIMD loop
//   across particles) and stay there, in cache, for all steps; nothing is allocated per step
//   (all scratch is allocated once per call per thread).
// * Every scheme is one "effective batch" of E inputs x~_e through the same particle loops:
//     vanilla / EA: E = B (EA runs on P theta and pulls the gradient back with P^T),
//     DA: E = B|G| (rho_g x_b, rho^_g y_b),  DA-sample: E = B (rho_{g_b} x_b),
//     FA: E = B|G| inputs rho_g^T x_b, output (1/|G|) sum_g rho^_g Phi(rho_g^T x_b) — by joint
//         equivariance sigma*(x, M_g z) = rho^_g sigma*(rho_g^T x, z) this IS Phi of the N|G|
//         symmetrised particles M_g theta_i, without materialising them (the Python wrapper
//         checks that m_z is the unit's param_action and the reps orthogonal / permutations).
// * Per step: data (Philox in-kernel: x, teacher labels; or user x_data/y_data), pass 1 (pre-
//   activation, activation, sum over particles into Phi (double accumulators), activation
//   derivatives stored per tile of TILE particles), residuals, pass 2 (analytic gradient from
//   the stored derivatives, weight decay, EA pull-back, Philox Langevin noise (projected for
//   EA / project_noise runs), update in place), snapshots.
// * Exact invariance of E^G. For a group of order 2 acting by permutations — the paper's C2
//   swap — and the matrix unit with d = 2 (tested: the paper's 2x2), the DA and FA steps commute
//   with M_g in floating point: a particle with theta = M_g theta bit for bit keeps it (with
//   projected noise, or none).
//   In exact arithmetic E^G is invariant; in floating point it stays so only if the two copies
//   of every orbit round alike, and at small N and the paper's step size E^G is a saddle that
//   amplifies any difference (the float64 torch reference leaves it by 6e-4 over the paper
//   preset's N = 5 run). Two places would round the copies apart: the pre-activation
//   z_k0 x0 + z_k1 x1 (an FMA rounds one product and not the other, and the swap exchanges
//   them: pass1_matrix2_simd<Z, true> rounds both), and the gradient's sum over the 2B inputs
//   (one chain adds the same terms in two orders: the sum of each copy's block is formed on its
//   own and the two added, a + b = b + a; grad_matrix2_blocks). Everything else is elementwise
//   or the same operations on equal numbers. tests/test_particles.py checks it bit for bit on
//   every instruction-set copy, float32 and float64, one thread and a team. Larger groups get
//   the same per-block sums, but a sum of three or more blocks depends on their order, so there
//   E^G is kept only to rounding.
// * Threads: OpenMP over runs. When R < threads and N >= team_min_particles() (2048 by default;
//   SYMKERN_PARTICLES_TEAM_MIN_N=n or =off; at least 256 particles per team thread) the threads
//   split a run's particles (a team)
//   and meet at one barrier per step, where the partial
//   sums over particles are combined in a fixed order (double-buffered, so one barrier suffices;
//   the result does not depend on timing, only — at rounding level — on the team size).
// * Activations. float64: sigmoid by exp_d, tanh by tanh_d (csrc/vmath.h: branch-free, vectorised
//   on AVX-512, ~1-2 ulp, NaN kept); trajectories match the float64 torch reference to ~1e-12.
//   On AVX-512 the matrix unit's pass 1 (d = 2) uses an explicit 8-lane base-2 sigmoid
//   1 / (1 + 2^t) on t = z (-x log2 e) (sigmoid_from_neg_log2e_x8: vreducepd, a degree-11
//   minimax 2^f, vscalefpd, a Newton reciprocal instead of vdivpd). Measured against long double
//   on double t for u in [-708, 708] (4e6 points): <= 1.7e-16 absolute, <= 2.7e-16 relative
//   (sigmoid_f64_base2_*; exp_d's sigmoid: 1.7e-16 / 2.7e-16). The AVX2 copy has its 4-lane
//   form (sigmoid_from_neg_log2e_x4: floor, the same polynomial, 2^floor(t) in the exponent
//   bits, vdivpd), measured the same way (4e5 points): <= 1.7e-16 absolute, <= 2.6e-16 relative;
//   and for float32 sigmoid_from_neg_log2e_x8f (the x16 polynomial, vdivps): measured against
//   double on float t for u in [-87, 87] (4e5 points) <= 8.9e-8 absolute, <= 2.2e-7 relative.
//   float32: branch-free vectorisable approximations (exp by 2^n * degree-7 Taylor on
//   [-ln2/2, ln2/2] with Cody-Waite reduction; tanh by an odd Taylor polynomial for |u| < 0.5 and
//   1 - 2/(e^{2|u|} + 1) above). Measured max error of the float32 result against double libm
//   on 4e6 points of [-87, 87] and 2e6 of [-1, 1] (symkern._C.particle_activation_errors):
//   sigmoid <= 9.0e-8 absolute, <= 1.5e-7 relative; tanh <= 9.2e-8 absolute, <= 1.9e-7 relative
//   (i.e. ~1-3 float32 ulp). Below u = -87 the sigmoid is clamped (absolute error < 2e-38).
// * Random numbers: csrc/philox.h, double-precision Box-Muller with own vectorisable ln/cos/sin
//   for float64 runs. float32 runs draw their normals by a float Box-Muller in the AVX2 copy
//   (noise and data x) and in the AVX-512 one's fast paths (unprojected noise; the matrix unit's
//   data), elsewhere the double ones cast (normal_f_x16, normal4_f_x16 and their 8-lane forms:
//   max |error| 6.0e-7 / 6.1e-7 against the double normals over 4e6, ~1 float ulp of
//   |z| <= 5.9). The Langevin noise is rng.normal4 (four normals per Philox counter: both word
//   pairs, cos and sin), so D = 4 particles draw one counter each per step.
// * AVX-512 float32 fast paths (matrix unit): data + teacher labels in registers
//   (data_matrix_f), pass 1 for d = 2 (pass1_matrix2_simd), and for c = d = 2 (every scheme,
//   projected noise or not) pass 2 + weight decay + EA pull-back + Philox noise (+ projection) +
//   update fused per 16 particles with the gradient in registers (pass2_update_matrix2_f). The
//   16-lane sigmoid (teacher labels) has measured error <= 9.6e-8 absolute, <= 2.7e-7 relative
//   on [-87, 87] (particle_activation_errors reports the worse of it and the scalar one). Pass 1
//   folds log2(e) into -x and evaluates the base-2 form 1 / (1 + 2^t) (sigmoid_from_neg_log2e_x16):
//   measured against double on float t for u in [-87, 87] (4e6 points) <= 8.9e-8 absolute,
//   <= 2.3e-7 relative (sigmoid_base2_*). The rounding of -x log2(e) is input rounding like that
//   of u = z x itself (~1 float ulp of t).
//
// Performance log (float32, matrix unit 2x2, C2, B = 20, R = 1, 200 steps/call at N = 5000, 2000
// at N = 50; µs/step min/median of 5-9 calls; shared 2-core EPYC (Zen 4-class AVX-512), loadavg
// 1.1-3.5 while timing — numbers move ~10% with the other tenant):
//   baseline (this session)           N=5000 vanilla 271/282, DA 404/408; N=50 5.40/5.42, DA 7.8
//   profile (rdtsc, SYMKERN_PARTICLES_PROF): pass 1 (sigmoid) ~60 %, noise ~25 %, gradient ~13 %,
//     data 1 % at N = 5000; at N = 50 data (scalar teacher labels) ~35 %.
//   found: `#if defined(__AVX512F__)` is never true inside `#pragma GCC target` with g++'s C++
//     front end, so the old 16-lane Philox was dead code (now SYMKERN_PARTICLES_AVX512).
//   1. float normals in registers, fused with the update (predicted -60 µs: 6.1 -> ~3 ns per
//      normal): measured 271 -> 197 µs (N = 5000 vanilla).
//   2. 16-lane sigmoid (scalef + rcp14/Newton, no division) in pass 1 and fused pass 2 with the
//      gradient in registers (predicted -40 µs): 197 -> 177.
//   3. vectorised data + teacher labels (predicted N = 50: -1.5 µs): N = 50 5.6 -> 3.0; N = 5000
//      177 -> 169.
//   4. Philox on 8 x 64-bit lanes (1.44 -> 1.25 ns/counter) + degree-5 minimax exp (3 ops fewer
//      per sigmoid; predicted -15 µs): N = 5000 169 -> 130, DA 257 -> 221; N = 50 2.64.
//   5. DA effective inputs unrolled for 2x2 rho: N = 50 DA 4.25 -> 4.13.
//   Team mode (2 threads on one run, SYMKERN_PARTICLES_TEAM_MIN_N=2048), loadavg 1.7: vanilla
//     min 91 but median 575 µs (the other tenant holds the second core; the per-step barrier then
//     waits a time slice), DA 150/151 vs 293/295 single — not a clear win on this shared machine,
//     so it stays off by default.
//   Floors now (N = 5000): 200k sigmoids ~19 zmm ops per 16 and 20k Philox-10 normals ~2 ns each
//     are both throughput-bound; the 60 µs target needs both cores (team mode) on an idle machine.
//   Team mode on by default (next session, background only a nice-19 process, loadavg 1.9):
//     N = 5000 vanilla 72-76 µs/step with 2 threads vs 128-157 with 1 (min/median of 7 calls).
//   Later sessions (team of 2, loadavg ~1.1-1.3 from another tenant; interleaved runs, min/median):
//   6. Langevin noise as rng.normal4, four normals per Philox counter (Philox + Box-Muller were
//      ~40 % of the ops): N = 5000 vanilla 77-80 -> 65-67, DA 138 -> 121.
//   7. base-2 sigmoid in pass 1 (4 ops fewer per 16 sigmoids): interleaved 8 x 3 runs, vanilla
//      N = 5000 median 65.9 -> 61.7 (min 59.6 -> 51.8); one thread, N = 2500, CPU time median
//      62.3 -> 54.6. Without any noise the same step takes ~53 µs (2 threads): noise is ~10 µs.
//      Tried and dropped: vrcp14/vrsqrt14 + Newton for the Box-Muller division and square root
//      (no measurable change, error 6.0e-7 -> 7.2e-7).
//   8. pass 2's gradient register-blocked over four zmm groups of particles (grad_matrix2_block:
//      the per-(e, k) sweeps over a gradient buffer were load-port bound), for float32 (fused)
//      and float64 (pass2_matrix22<Zmm>); vanilla N = 5000, team of 2, interleaved 6 x 7 calls of
//      2000 steps: median 59.1 -> 56.3 µs/step.
//   float64 (the teacher-student experiment's dtype; its N = 5000 cell is ~90 % of the paper
//   preset): the base-2 sigmoid in pass 1 (four ops fewer per 8 sigmoids), the blocked gradient,
//   and the noise drawn straight into parameter rows (noise_rows4; no element-order buffer and
//   transpose): 120 runs (4 schemes x 3 teachers x 10 seeds, projected noise) at N = 5000, two
//   threads, interleaved 3 x 3 calls: 32.4 -> 26.2 ms/step (one thread, vanilla: 356 -> 299 µs).
//   AVX2 copy (2-core Zen 3 EPYC, no AVX-512; the same 120-run float64 grid at N = 5000, min of 3
//   calls of 10 steps, loadavg ~0.9): it was mostly scalar, 165 ms/step (float32 133).
//   a. -fno-trapping-math (setup.py), so GCC if-converts exp_d's NaN-keeping clamps and
//      vectorises every loop calling it: 165 -> 67.5 (float32 133 -> 43.5).
//   b. philox.h without int64 -> double casts (no vcvtqq2pd before AVX-512DQ) and with four
//      scalar outputs instead of an array, so the Philox and Box-Muller loops vectorise: noise
//      ~890k -> ~290k TSC cycles per run-step (rdtsc profile), 67.5 -> 57.8 (float32 28.7).
//   c. explicit 4-lane base-2 sigmoid in pass 1 (pass1_matrix2_simd<Ymm<double>>; 1.63 vs
//      2.45 ns per sigmoid in isolation): 57.8 -> 39.1.
//   d. its 8-lane float32 form (pass1_matrix2_simd<Ymm<float>>): float32 28.7 -> 18.8.
//   e. the noise's Philox in explicit 8-lane intrinsics (philox4_words_x16; 3.8 vs 8.1-9.2 ns
//      per counter standalone): noise ~310k -> ~245k TSC cycles per run-step (float64), float32
//      18.8 -> 16.8; float64 39.1 -> 37.7 (min of 3; the machine's load moves it ~10 %).
//   f. float32 runs draw float normals (normal4_slots_f_x16: the AVX-512 float Box-Muller on 8
//      lanes; 6.1e-7 max vs the double normals over 4e6): noise + update ~17.5k -> ~12k TSC
//      cycles per run-step (120 float32 runs at N = 500, rdtsc profile, 2 x 2 interleaved runs;
//      a step is ~50-60k), i.e. ~10 % of a float32 step. Wall-clock runs were too noisy that day
//      to show it beyond doubt.
//   Tried and dropped: pass 2's register-blocked gradient on 4-lane groups (GB = 2 or 4) instead
//   of the auto-vectorised pass2_matrix: no change (gradient 183-189k TSC cycles per run-step);
//   but see h.
//   g. the data of a step at small N (vanilla, R = 1, N = 50, B = 20, WI teacher of 10 particles;
//      rdtsc profile, 3 interleaved runs each): the teacher labels in SIMD loops over the batch
//      (teacher_labels; they were a scalar loop per sample, 400 scalar sigmoids per step), the
//      data normals' Philox in philox4_words_x16, and float32 runs' data x from the float
//      Box-Muller (scaled_normals_f): data section float32 14.6-15.4k -> 2.1-2.2k TSC cycles per
//      step, float64 12.1-18.2k -> 3.5-4.5k. Wall clock (bench_particles, 3 interleaved rounds,
//      loadavg ~1.1): float32 N = 50 6.5-7.0 -> 4.1-4.4 us/step, 120 float32 runs at N = 500
//      1.78-2.28 -> 1.39-1.90 ms/step; N = 5000 unchanged (the data is < 1 % there).
//   h. pass 2 of the matrix unit (c = d = 2, every scheme): the gradient register-blocked one
//      output at a time (pass2_matrix22_by_output: four vector groups, eight accumulators; the
//      four-row blocks of grad_matrix2_block hold two groups in 16 registers, which helped
//      float32 less and float64 not at all) with the weight decay added before the store (no
//      zeroing, no second sweep of the gradient rows), and noise_rows4's copy of a whole block
//      with a compile-time length (GCC had made it a memcpy, rep movsq, ~5 % of a float32 step
//      in a perf profile). One thread, N = 5000, rdtsc, min of 5-6 interleaved runs: float32
//      pass 2 188k -> 145k TSC cycles per step, step 164 -> 148 us; float64 338k -> 281k,
//      407 -> 377 us. Wall clock (bench_particles, 3 interleaved rounds, loadavg ~1-1.5):
//      vanilla N = 5000 (team of 2) 95-112 -> 78-103 us, DA 162-176 -> 151-161, 120 float32 runs
//      at N = 500 1.40-1.69 -> 1.28-1.37 ms, 120 float64 runs at N = 5000 35.5-40.9 -> 35.5-39.3
//      ms per step (noisy: the other tenant).
//   i. the cost of exact E^G invariance (DA / FA: the pre-activation as two rounded products and
//      an add, the gradient summed per group block), 2-core AVX-512 EPYC, N = 5000, R = 1,
//      2000 steps, min of 5 calls, old and new builds interleaved twice: float32 DA 75.9 / 77.7 ->
//      80.5 / 79.9 us, FA 79.1 / 77.0 -> 80.7 / 80.1; float64 DA 227 / 230 -> 228 / 232, FA
//      230 / 229 -> 230 / 231; the 120-run float64 grid at N = 5000 22.9 / 22.9 -> 23.0 / 23.1 ms
//      per step. Vanilla and EA run the same code as before.
//   j. float32 EA and projected-noise runs (the paper preset: every run projects its noise) through
//      the fused pass 2 (pass2_update_matrix2_f with P: float normals in registers, the projection
//      and EA's pull-back per 16 particles; they took the unfused path with double normals, gbuf
//      and noise-row sweeps). The 120-run float32 grid at N = 5000, two threads, old and new
//      builds interleaved 3 x 3 calls of 200 steps: 8.44-8.71 -> 7.34-7.64 ms per step (a noisier
//      third round 9.79-10.23 -> 7.89-8.71); at N = 500, 0.88-0.92 -> 0.75-0.93. One thread,
//      R = 1, N = 5000, projected noise (noisy, another job on the second core): EA 121-126 ->
//      95-114 us, DA 175-205 -> 162-166, FA 187-196 -> 167-169. The same fusion for float64 was
//      tried and measured no faster (sigmoid-bound: 249 / 452 / 446 / 262 -> 244 / 461 / 440 /
//      258 us for vanilla / DA / FA / EA), so float64 keeps the unfused path.
// * Instruction sets: the kernel body below is compiled three times (AVX-512, AVX2+FMA,
//   baseline x86-64) by including this file into itself under `#pragma GCC target`, and
//   dispatched at run time on the CPU's features — the wheel stays portable (no -march=native).
#ifndef SYMKERN_PARTICLES_BODY

#include "particles.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "isa.h"
#include "philox.h"

#ifdef SYMKERN_MULTI_ISA
// GCC 12's AVX-512 intrinsics fill their pass-through operand from a self-initialised local
// (`__m512i __Y = __Y;`, _mm512_undefined_epi32), which -Wmaybe-uninitialized reports at every
// inlined use (GCC PR 105593, fixed in GCC 13): silenced for the header's own lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

// The standard-unit blocks use GCC vectors of the native width; in the AVX2 / baseline copies
// GCC notes that passing 64-byte vectors changed ABI in GCC 4.6 — they are never passed across
// a function boundary (always inlined).
#pragma GCC diagnostic ignored "-Wpsabi"

#define SYMKERN_PARTICLES_BODY 1
#ifdef SYMKERN_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")
// (GCC's C++ front end does not define __AVX512F__ after `#pragma GCC target`, so the body is
// told which variant it is by SYMKERN_PARTICLES_AVX512.)
#define SYMKERN_PARTICLES_AVX512 1
#define SYMKERN_PARTICLES_VEC_BYTES 64  // native SIMD width of this copy (standard-unit blocks)
namespace symkern::particles::isa_avx512 {
#include "particles.cpp"
}  // namespace symkern::particles::isa_avx512
#undef SYMKERN_PARTICLES_AVX512
#undef SYMKERN_PARTICLES_VEC_BYTES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
#define SYMKERN_PARTICLES_AVX2 1
#define SYMKERN_PARTICLES_VEC_BYTES 32
namespace symkern::particles::isa_avx2 {
#include "particles.cpp"
}  // namespace symkern::particles::isa_avx2
#undef SYMKERN_PARTICLES_AVX2
#undef SYMKERN_PARTICLES_VEC_BYTES
#pragma GCC pop_options
#endif
#define SYMKERN_PARTICLES_VEC_BYTES 16
namespace symkern::particles::isa_base {
#include "particles.cpp"
}  // namespace symkern::particles::isa_base
#undef SYMKERN_PARTICLES_VEC_BYTES
#undef SYMKERN_PARTICLES_BODY

namespace symkern::particles {

static ::symkern::isa::Isa isa() {
  static const auto v = ::symkern::isa::detect("SYMKERN_PARTICLES_ISA");
  return v;
}

std::string isa_name() { return ::symkern::isa::name(isa()); }

#define SYMKERN_DISPATCH(call) SYMKERN_ISA_DISPATCH(isa(), call)

template <class T>
void particle_steps(const Problem<T>& p, const T* theta_in, index_t R, index_t N, T* theta_out,
                    T* snaps, T* losses, std::int64_t step0, std::int64_t steps,
                    std::int64_t snapshot_every, std::int64_t lt_begin, std::int64_t lt_end) {
  SYMKERN_DISPATCH(steps_impl<T>(p, theta_in, R, N, theta_out, snaps, losses, step0, steps,
                                 snapshot_every, lt_begin, lt_end))
}

template <class T>
void particle_forward(const T* x, index_t B, const T* theta, index_t N, int unit_code,
                      int activation_code, index_t c, index_t d, T* phi) {
  SYMKERN_DISPATCH(forward_impl<T>(x, B, theta, N, unit_code, activation_code, c, d, phi))
}

template <class T>
void particle_forward_backward(const T* x, index_t B, const T* theta, index_t N, int unit_code,
                               int activation_code, index_t c, index_t d, const T* g_phi,
                               T* grad_theta, T* grad_x) {
  SYMKERN_DISPATCH(backward_impl<T>(x, B, theta, N, unit_code, activation_code, c, d, g_phi,
                                    grad_theta, grad_x))
}

void normals_batch(std::uint64_t seed, std::uint32_t run_id, std::uint32_t step,
                   std::uint32_t stream, index_t n, double* out) {
  SYMKERN_DISPATCH(normals(philox::Key(seed), step, run_id, stream, 0, n, out))
}

void normals4_batch(std::uint64_t seed, std::uint32_t run_id, std::uint32_t step,
                    std::uint32_t stream, std::uint64_t idx0, index_t n, double* out) {
  SYMKERN_DISPATCH(normals4(philox::Key(seed), step, run_id, stream, idx0, n, out))
}

bool normals4_f32_batch(std::uint64_t seed, std::uint32_t run_id, std::uint32_t step,
                        std::uint32_t stream, std::uint64_t idx0, index_t n, float* out) {
  SYMKERN_DISPATCH(normals4_f(philox::Key(seed), step, run_id, stream, idx0, n, out))
}

void activation_errors(double lo, double hi, index_t n, double out[10]) {
  SYMKERN_DISPATCH(activation_errors_impl(lo, hi, n, out))
}

index_t team_min_particles() {
  // On by default (the threads of a machine are there to be used, and a single run's N = 5000
  // step is one core's worth of sigmoids: measured 72-76 us/step with two threads vs 128-157
  // with one). Its cost: one barrier per step, which waits a time slice whenever another
  // process holds a team thread's core (measured milliseconds per step on this shared 2-core
  // machine with another busy tenant); SYMKERN_PARTICLES_TEAM_MIN_N=off (or OMP_NUM_THREADS=1)
  // turns it off there.
  static const index_t v = [] {
    const char* env = std::getenv("SYMKERN_PARTICLES_TEAM_MIN_N");
    if (env == nullptr || *env == '\0') return index_t{2048};
    const std::string s(env);
    if (s == "off" || s == "0") return std::numeric_limits<index_t>::max();
    // a whole positive number or nothing: atoll read "1e3" as 1 and "abc" as 0 (teams off)
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(env, &end, 10);
    if (end == env || *end != '\0' || errno == ERANGE || n < 0)
      throw std::invalid_argument(
          "the environment variable SYMKERN_PARTICLES_TEAM_MIN_N must be 'off' or a "
          "non-negative integer (particles per run from which a team of threads splits a run), "
          "got '" + s + "'");
    return n > 0 ? static_cast<index_t>(n) : std::numeric_limits<index_t>::max();
  }();
  return v;
}

void philox4x32_batch(const std::uint32_t* ctr, index_t n, std::uint32_t k0, std::uint32_t k1,
                      std::uint32_t* out) {
  for (index_t i = 0; i < n; ++i)
    philox::philox4x32(ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3], k0, k1,
                       out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]);
}

template void particle_steps<float>(const Problem<float>&, const float*, index_t, index_t, float*,
                                    float*, float*, std::int64_t, std::int64_t, std::int64_t,
                                    std::int64_t, std::int64_t);
template void particle_steps<double>(const Problem<double>&, const double*, index_t, index_t,
                                     double*, double*, double*, std::int64_t, std::int64_t,
                                     std::int64_t, std::int64_t, std::int64_t);
template void particle_forward<float>(const float*, index_t, const float*, index_t, int, int,
                                      index_t, index_t, float*);
template void particle_forward<double>(const double*, index_t, const double*, index_t, int, int,
                                       index_t, index_t, double*);
template void particle_forward_backward<float>(const float*, index_t, const float*, index_t, int,
                                               int, index_t, index_t, const float*, float*,
                                               float*);
template void particle_forward_backward<double>(const double*, index_t, const double*, index_t,
                                                int, int, index_t, index_t, const double*,
                                                double*, double*);

}  // namespace symkern::particles

#else  // ============================ kernel body (compiled once per ISA) =====================

using ::symkern::index_t;
using ::symkern::particles::Problem;

#ifdef SYMKERN_PARTICLES_PROF  // section timers (rdtsc), printed per call; never in a release build
inline unsigned long long g_prof[8];
#define SK_PROF(v) const unsigned long long v = __rdtsc();
#define SK_PROF_ADD(k, a, b) g_prof[k] += (b) - (a);
#else
#define SK_PROF(v)
#define SK_PROF_ADD(k, a, b)
#endif

#include "vmath.h"  // exp_d, tanh_d (this ISA's copy)

constexpr index_t TILE = 256;  // particles per tile: scratch rows of TILE stay in L1
// teacher_labels: the batch is padded to a multiple of TL_PAD samples (an AVX2 vector of float,
// an AVX-512 one of double) and processed in blocks of at most TL_MAX samples
constexpr index_t TL_PAD = 8, TL_MAX = 64;

inline index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

// ---- activations ------------------------------------------------------------------------------

SYMKERN_ALWAYS_INLINE float exp_f(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 87.0f ? 87.0f : x;
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22)
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.98412698e-4f;  // 1/7!
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t ni = static_cast<std::int32_t>(n);
  const std::uint32_t bits = static_cast<std::uint32_t>(ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

SYMKERN_ALWAYS_INLINE float sigmoid_t(float u) { return 1.0f / (1.0f + exp_f(-u)); }
SYMKERN_ALWAYS_INLINE double sigmoid_t(double u) { return 1.0 / (1.0 + exp_d(-u)); }

SYMKERN_ALWAYS_INLINE float tanh_t(float u) {
  const float a = u < 0.0f ? -u : u;
  const float u2 = u * u;
  float p = -1.45583438e-3f;  // -929569/638512875
  p = p * u2 + 3.59212803e-3f;  // 21844/6081075
  p = p * u2 - 8.86323552e-3f;  // -1382/155925
  p = p * u2 + 2.18694885e-2f;  // 62/2835
  p = p * u2 - 5.39682540e-2f;  // -17/315
  p = p * u2 + 1.33333333e-1f;  // 2/15
  p = p * u2 - 3.33333333e-1f;  // -1/3
  const float small = u + u * (u2 * p);
  const float e = exp_f(2.0f * (a > 9.0f ? 9.0f : a));
  const float big = 1.0f - 2.0f / (e + 1.0f);
  const float sbig = u < 0.0f ? -big : big;
  return a < 0.5f ? small : sbig;
}
SYMKERN_ALWAYS_INLINE double tanh_t(double u) { return tanh_d(u); }

// Standard-unit activations: value and derivative (derivative from the value where possible).
struct ActTanh {
  template <class T>
  static SYMKERN_ALWAYS_INLINE void eval(T u, T& h, T& hp) {
    h = tanh_t(u);
    hp = T(1) - h * h;
  }
};
struct ActSigmoid {
  template <class T>
  static SYMKERN_ALWAYS_INLINE void eval(T u, T& h, T& hp) {
    h = sigmoid_t(u);
    hp = h * (T(1) - h);
  }
};
struct ActRelu {
  template <class T>
  static SYMKERN_ALWAYS_INLINE void eval(T u, T& h, T& hp) {
    h = u < T(0) ? T(0) : u;  // NaN stays NaN, as torch.relu (u > 0 ? u : 0 would give 0)
    hp = u > T(0) ? T(1) : T(0);
  }
};

template <class F>
inline void with_act(int code, F&& f) {
  if (code == 0) f(ActTanh{});
  else if (code == 1) f(ActSigmoid{});
  else f(ActRelu{});
}

// out[0..1] = max of the absolute and relative error of a sigmoid on L lanes of T (L = 1: a scalar
// one; sigmoid_lanes(v, s) fills s[0..L) from v[0..L)) on n points v of [lo, hi], against the
// sigmoid computed in Ref precision: sigmoid(v) itself, or with base2 the form 1 / (1 + 2^v) of
// the matrix-unit pass 1 (v = t = -u log2 e). out keeps any larger values it holds.
template <class T, class Ref, int L, class F>
inline void sigmoid_errors(double lo, double hi, index_t n, F&& sigmoid_lanes, double* out,
                           bool base2 = false) {
  alignas(64) T u[L], sg[L];
  for (index_t i0 = 0; i0 < n; i0 += L) {
    for (int j = 0; j < L; ++j) {
      const index_t i = std::min<index_t>(i0 + j, n - 1);
      u[j] = static_cast<T>(lo + (hi - lo) * static_cast<double>(i) /
                                     static_cast<double>(n > 1 ? n - 1 : 1));
    }
    sigmoid_lanes(u, sg);
    for (int j = 0; j < L; ++j) {
      const Ref v = static_cast<Ref>(u[j]);
      const Ref s = Ref(1) / (Ref(1) + (base2 ? std::exp2(v) : std::exp(-v)));
      const Ref err = std::abs(static_cast<Ref>(sg[j]) - s);
      out[0] = std::max(out[0], static_cast<double>(err));
      out[1] = std::max(out[1], static_cast<double>(err / s));
    }
  }
}

#if defined(SYMKERN_PARTICLES_AVX512) || defined(SYMKERN_PARTICLES_AVX2)
inline void vector_sigmoid_errors(double lo, double hi, index_t n, double out[10]);
#endif

// out[0..3]: float32 sigmoid / tanh (AVX-512 build: the sigmoid entries are the worse of the
// scalar sigmoid_t and the 16-lane sigmoid of the float32 matrix-unit fast path) against double
// libm; out[4..5]: the float64 sigmoid (exp_d) against long-double libm; out[6..9]: the base-2
// sigmoids 1 / (1 + 2^t) of the matrix-unit pass 1 on t = -u log2(e) for u in [lo, hi], float32
// against double (6..7), float64 against long double (8..9), in the AVX-512 and AVX2 copies; NaN
// in the baseline copy (it has none).
inline void activation_errors_impl(double lo, double hi, index_t n, double out[10]) {
  double e[4] = {0, 0, 0, 0};
  out[4] = out[5] = 0.0;
  for (int k = 6; k < 10; ++k)  // no base-2 sigmoid in this copy
    out[k] = std::numeric_limits<double>::quiet_NaN();
  sigmoid_errors<double, long double, 1>(
      lo, hi, n, [](const double* u, double* s) { s[0] = sigmoid_t(u[0]); }, out + 4);
  for (index_t i = 0; i < n; ++i) {
    const float u = static_cast<float>(lo + (hi - lo) * static_cast<double>(i) /
                                                static_cast<double>(n > 1 ? n - 1 : 1));
    const double ud = u;
    const double s = 1.0 / (1.0 + std::exp(-ud)), t = std::tanh(ud);
    const double fs = sigmoid_t(u), ft = tanh_t(u);
    e[0] = std::max(e[0], std::abs(fs - s));
    e[1] = std::max(e[1], std::abs(fs - s) / std::abs(s));
    e[2] = std::max(e[2], std::abs(ft - t));
    if (t != 0.0) e[3] = std::max(e[3], std::abs(ft - t) / std::abs(t));
  }
  for (int k = 0; k < 4; ++k) out[k] = e[k];
#if defined(SYMKERN_PARTICLES_AVX512) || defined(SYMKERN_PARTICLES_AVX2)
  vector_sigmoid_errors(lo, hi, n, out);
#endif
}

// ---- random numbers -----------------------------------------------------------------------------

#if defined(SYMKERN_PARTICLES_AVX512)
// Philox4x32-10 on 16 counters at once (first two output words), as two independent 8-counter
// states with each counter in the low half of a 64-bit lane: vpmuludq then gives hi (>> 32) and
// lo (the low half, in place) of the 32x32 product in one multiply. The high halves carry garbage
// that never reaches a low half (vpmuludq reads only low halves, shifts take the product's hi,
// XOR is lane-wise), so nothing is masked. Bit-exact with philox.h; measured 1.25 ns/counter vs
// 1.44 (vpmulld lo + blends) and 1.8 (the earlier shift+blend lo).
SYMKERN_ALWAYS_INLINE void philox4_x8(__m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                      std::uint32_t k0, std::uint32_t k1, __m512i o[4]) {
  const __m512i m0 = _mm512_set1_epi64(::symkern::philox::M0);
  const __m512i m1 = _mm512_set1_epi64(::symkern::philox::M1);
  for (int round = 0; round < 10; ++round) {
    const __m512i p0 = _mm512_mul_epu32(m0, c0), p1 = _mm512_mul_epu32(m1, c2);
    c0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1,
                                   _mm512_set1_epi32(static_cast<int>(k0)), 0x96);
    c1 = p1;
    c2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3,
                                   _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    c3 = p0;
    k0 += ::symkern::philox::W0;
    k1 += ::symkern::philox::W1;
  }
  o[0] = c0;
  o[1] = c1;
  o[2] = c2;
  o[3] = c3;
}

// 16 counters (32-bit lanes) -> the first W output words o[0..W) (32-bit lanes); c1..c3 must be
// lane-uniform (broadcasts). Words past W are dead code after inlining.
template <int W>
SYMKERN_ALWAYS_INLINE void philox_x16(__m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                      std::uint32_t k0, std::uint32_t k1, __m512i o[W]) {
  __m512i a[4], b[4];
  philox4_x8(c0, c1, c2, c3, k0, k1, a);                           // even lanes
  philox4_x8(_mm512_srli_epi64(c0, 32), c1, c2, c3, k0, k1, b);    // odd lanes
  for (int j = 0; j < W; ++j) o[j] = _mm512_mask_blend_epi32(0xAAAA, a[j], _mm512_slli_epi64(b[j], 32));
}


// float32 Box-Muller on 16 lanes (float32 runs only; float64 runs keep the double normals).
// ln u(o0): v = 2(o0 >> 8) + 1 < 2^25 is converted to float (rounded) and the rounding residual
// (-1, 0 or 1) is added back to the reduced mantissa f = m - 1, so ln u keeps full float relative
// accuracy even for u -> 1; ln(1 + f) = 2 atanh(f / (2 + f)) to s^9. cos(2 pi u(o1)): exact
// quadrant reduction as in philox.h, sin to a^9 / cos to a^8 (truncation < 3e-9).
// Measured against the double normal_from_bits: max |error| 5.6e-7 over 1e6 grid points
// (|z| <= 5.9, i.e. ~1 float ulp); 0.74-0.9 ns per normal (Philox 1.5 ns on top). The normal4 form
// (both word pairs, cos and sin): 6.0e-7 over 4e6 against the double one, 1.5 ns per normal with
// its Philox (symkern._C.philox_normals4). Its pieces: radius_f_x16, cos_sin_2pi_f_x16.
//
// rho = sqrt(-2 ln u(o)) on 16 lanes (the Box-Muller radius).
SYMKERN_ALWAYS_INLINE __m512 radius_f_x16(__m512i o0) {
  const __m512i vi = _mm512_add_epi32(_mm512_slli_epi32(_mm512_srli_epi32(o0, 8), 1),
                                      _mm512_set1_epi32(1));
  const __m512 vf = _mm512_cvtepi32_ps(vi);
  const __m512i resid = _mm512_sub_epi32(vi, _mm512_cvtps_epi32(vf));
  const __m512i bits = _mm512_castps_si512(vf);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(bits, _mm512_set1_epi32(0x007FFFFF)), _mm512_set1_epi32(0x3F800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 sc = _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(127), e), 23));  // 2^-e
  __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(resid), sc, f);
  const __m512 s = _mm512_div_ps(f, _mm512_add_ps(f, _mm512_set1_ps(2.0f)));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 p = _mm512_set1_ps(1.0f / 11.0f);
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 9.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 7.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 5.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 3.0f));
  const __m512 s2s = _mm512_add_ps(s, s);
  const __m512 lnm = _mm512_fmadd_ps(s2s, _mm512_mul_ps(s2, p), s2s);
  const __m512 k = _mm512_cvtepi32_ps(_mm512_sub_epi32(e, _mm512_set1_epi32(25)));
  const __m512 lnu = _mm512_fmadd_ps(k, _mm512_set1_ps(0.693145752f),
                                     _mm512_fmadd_ps(k, _mm512_set1_ps(1.42860677e-06f), lnm));
  return _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), lnu));
}

// cos and sin of 2 pi u(o) on 16 lanes, by quadrant as in philox.h.
SYMKERN_ALWAYS_INLINE void cos_sin_2pi_f_x16(__m512i o1, __m512& cos_out, __m512& sin_out) {
  const __m512i vv = _mm512_add_epi32(_mm512_slli_epi32(_mm512_srli_epi32(o1, 8), 1),
                                      _mm512_set1_epi32(1));
  const __m512i q = _mm512_srli_epi32(_mm512_add_epi32(vv, _mm512_set1_epi32(1 << 22)), 23);
  const __m512 fr = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(vv, _mm512_slli_epi32(q, 23))),
                                  _mm512_set1_ps(1.0f / 8388608.0f));
  const __m512 a = _mm512_mul_ps(fr, _mm512_set1_ps(1.57079632679f));
  const __m512 a2 = _mm512_mul_ps(a, a);
  __m512 sp = _mm512_set1_ps(2.75573192e-6f);
  sp = _mm512_fmadd_ps(sp, a2, _mm512_set1_ps(-1.98412698e-4f));
  sp = _mm512_fmadd_ps(sp, a2, _mm512_set1_ps(8.33333333e-3f));
  sp = _mm512_fmadd_ps(sp, a2, _mm512_set1_ps(-1.66666667e-1f));
  const __m512 sn = _mm512_fmadd_ps(a, _mm512_mul_ps(a2, sp), a);
  __m512 cp = _mm512_set1_ps(2.48015873e-5f);
  cp = _mm512_fmadd_ps(cp, a2, _mm512_set1_ps(-1.38888889e-3f));
  cp = _mm512_fmadd_ps(cp, a2, _mm512_set1_ps(4.16666667e-2f));
  cp = _mm512_fmadd_ps(cp, a2, _mm512_set1_ps(-0.5f));
  const __m512 cs = _mm512_fmadd_ps(a2, cp, _mm512_set1_ps(1.0f));
  // quadrant qm: cos = cs, -sn, -cs, sn and sin = sn, cs, -sn, -cs
  const __m512i qm = _mm512_and_si512(q, _mm512_set1_epi32(3));
  const __mmask16 odd = _mm512_test_epi32_mask(qm, _mm512_set1_epi32(1));
  const __mmask16 cneg =
      _mm512_test_epi32_mask(_mm512_add_epi32(qm, _mm512_set1_epi32(1)), _mm512_set1_epi32(2));
  const __mmask16 sneg = _mm512_test_epi32_mask(qm, _mm512_set1_epi32(2));
  const __m512 c = _mm512_mask_blend_ps(odd, cs, sn), sv = _mm512_mask_blend_ps(odd, sn, cs);
  cos_out = _mm512_mask_xor_ps(c, cneg, c, _mm512_set1_ps(-0.0f));
  sin_out = _mm512_mask_xor_ps(sv, sneg, sv, _mm512_set1_ps(-0.0f));
}

// rng.normal on 16 lanes: rho(o0) cos(2 pi u(o1)).
SYMKERN_ALWAYS_INLINE __m512 normal_f_x16(__m512i o0, __m512i o1) {
  __m512 c, sn;
  cos_sin_2pi_f_x16(o1, c, sn);  // the dead sin is dropped after inlining
  return _mm512_mul_ps(radius_f_x16(o0), c);
}

// rng.normal4 on 16 counters: z[s] = slot s of each lane's counter (the format of rng.py).
SYMKERN_ALWAYS_INLINE void normal4_f_x16(const __m512i o[4], __m512 z[4]) {
  const __m512 rho0 = radius_f_x16(o[0]), rho2 = radius_f_x16(o[2]);
  __m512 c1, s1, c3, s3;
  cos_sin_2pi_f_x16(o[1], c1, s1);
  cos_sin_2pi_f_x16(o[3], c3, s3);
  z[0] = _mm512_mul_ps(rho0, c1);
  z[1] = _mm512_mul_ps(rho0, s1);
  z[2] = _mm512_mul_ps(rho2, c3);
  z[3] = _mm512_mul_ps(rho2, s3);
}

// The 16 Philox counters ctr0 + l * stride (l < 16; 32-bit words, wrapping as in rng.py) of one
// (step, run, stream): their output words, or their float32 rng.normal4 slots. Built once
// per call of a noise loop, so the per-block work is one add and the Philox rounds.
struct PhiloxLanes16 {
  __m512i step, run, stream, offset;  // offset[l] = l * stride
  std::uint32_t k0, k1;

  PhiloxLanes16(std::uint32_t k0_, std::uint32_t k1_, std::uint32_t step_, std::uint32_t run_,
                std::uint32_t stream_, std::uint32_t stride)
      : step(_mm512_set1_epi32(static_cast<int>(step_))),
        run(_mm512_set1_epi32(static_cast<int>(run_))),
        stream(_mm512_set1_epi32(static_cast<int>(stream_))),
        offset(_mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(static_cast<int>(stride)))),
        k0(k0_),
        k1(k1_) {}

  template <int W = 4>  // the first W of the four words
  SYMKERN_ALWAYS_INLINE void words(std::uint32_t ctr0, __m512i o[W]) const {
    philox_x16<W>(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(ctr0)), offset), step, run,
                  stream, k0, k1, o);
  }
  SYMKERN_ALWAYS_INLINE void normal4_f(std::uint32_t ctr0, __m512 z[4]) const {
    __m512i o[4];
    words(ctr0, o);
    normal4_f_x16(o, z);
  }
};

// The lane mask of a 16-lane block with `left` elements still to do (all 16 when left >= 16).
SYMKERN_ALWAYS_INLINE __mmask16 tail_mask16(index_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

// float32, no noise projection, D % 4 == 0: z[q][i] += -alpha g[q][i] + ns xi[i, q] with the
// Philox noise generated in registers. xi[i, q] is rng.normal4 element base + i D + q, i.e. slot
// q mod 4 of counter (base + i D + q) / 4 (base % 4 == 0): one counter per particle and 4 planes.
inline void update_with_noise_f(float* th, index_t cap, index_t i_s, const float* gbuf,
                                index_t m, index_t D, std::uint32_t base, std::uint32_t step,
                                std::uint32_t run, std::uint32_t k0, std::uint32_t k1,
                                float alpha, float ns) {
  const index_t D4 = D / 4;
  const PhiloxLanes16 noise(k0, k1, step, run, ::symkern::philox::STREAM_NOISE,
                            static_cast<std::uint32_t>(D4));
  const __m512 va = _mm512_set1_ps(-alpha), vn = _mm512_set1_ps(ns);
  for (index_t i = 0; i < m; i += 16) {
    const __mmask16 mk = tail_mask16(m - i);
    const std::uint32_t ctr_i = base / 4 + static_cast<std::uint32_t>(i * D4);
    for (index_t q4 = 0; q4 < D4; ++q4) {
      __m512 xi[4];
      noise.normal4_f(ctr_i + static_cast<std::uint32_t>(q4), xi);
      for (int j = 0; j < 4; ++j) {
        const index_t q = 4 * q4 + j;
        float* z = th + q * cap + i_s + i;
        const __m512 u = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(mk, gbuf + q * TILE + i),
                                         _mm512_maskz_loadu_ps(mk, z));
        _mm512_mask_storeu_ps(z, mk, _mm512_fmadd_ps(vn, xi[j], u));
      }
    }
  }
}
#endif

// rng.normal4 elements idx0 .. idx0 + n - 1 into out, by blocks of 16 counters: fill(cb, slot)
// writes the four normals of counters cb .. cb + 15 as slot[s][l] = slot s of counter cb + l; they
// are interleaved into element order (4 l + s) and the part of each block inside the range is
// copied out.
template <class T, class Fill>
inline void normal4_blocks(std::uint64_t idx0, index_t n, T* __restrict out, Fill&& fill) {
  const std::uint64_t end = idx0 + static_cast<std::uint64_t>(n);
  for (std::uint64_t cb = idx0 / 4; 4 * cb < end; cb += 16) {
    alignas(64) T slot[4][16];
    fill(cb, slot);
    alignas(64) T z[64];
    for (int l = 0; l < 16; ++l)
      for (int s = 0; s < 4; ++s) z[4 * l + s] = slot[s][l];
    const std::uint64_t e0 = std::max(idx0, 4 * cb), e1 = std::min(end, 4 * cb + 64);
    std::memcpy(out + (e0 - idx0), z + (e0 - 4 * cb), (e1 - e0) * sizeof(T));
  }
}

#if defined(SYMKERN_PARTICLES_AVX2)
// Philox4x32-10 of the 16 counters (ctr0 + l * stride, step, run, stream), l < 16, into w[word][l]:
// two groups of 8 counters in 32-bit lanes, the 32x32 -> 64 products by vpmuludq on the even
// lanes and on the odd lanes shifted down, the halves put back by blends. GCC's own
// vectorisation of philox.h's per-counter loop (or of a lanes-inside round loop) takes
// 8.1-9.2 ns per counter on a Zen 3 EPYC; this one 3.8 ns (standalone, same machine).
inline void philox4_words_x16(std::uint32_t k0, std::uint32_t k1, std::uint32_t step,
                              std::uint32_t run, std::uint32_t stream, std::uint32_t ctr0,
                              std::uint32_t stride, std::uint32_t (&w)[4][16]) {
  namespace px = ::symkern::philox;
  const auto mulhilo = [](__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
    const __m256i even = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  };
  const auto set1 = [](std::uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); };
  const __m256i m0 = set1(px::M0), m1 = set1(px::M1);
  const __m256i lane_offset =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), set1(stride));
  for (int h = 0; h < 2; ++h) {
    __m256i c0 = _mm256_add_epi32(set1(ctr0 + 8u * static_cast<std::uint32_t>(h) * stride),
                                  lane_offset);
    __m256i c1 = set1(step), c2 = set1(run), c3 = set1(stream);
    std::uint32_t key0 = k0, key1 = k1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), set1(key0));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), set1(key1));
      c1 = lo1;
      c3 = lo0;
      key0 += px::W0;
      key1 += px::W1;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(w[0] + 8 * h), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(w[1] + 8 * h), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(w[2] + 8 * h), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(w[3] + 8 * h), c3);
  }
}

// The float32 Box-Muller of radius_f_x16 / cos_sin_2pi_f_x16 (AVX-512, below) on 8 lanes: the
// same operations in the same order, so the same numbers; lane masks become compare vectors and
// blends.
SYMKERN_ALWAYS_INLINE __m256 radius_f_x8(__m256i o0) {
  const auto i32 = [](int v) { return _mm256_set1_epi32(v); };
  const __m256i vi = _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(o0, 8), 1), i32(1));
  const __m256 vf = _mm256_cvtepi32_ps(vi);
  const __m256i resid = _mm256_sub_epi32(vi, _mm256_cvtps_epi32(vf));
  const __m256i bits = _mm256_castps_si256(vf);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), i32(127));
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, i32(0x007FFFFF)), i32(0x3F800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // big lanes are all ones (-1): e + 1
  const __m256 sc = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(i32(127), e), 23));
  __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(resid), sc, f);
  const __m256 s = _mm256_div_ps(f, _mm256_add_ps(f, _mm256_set1_ps(2.0f)));
  const __m256 s2 = _mm256_mul_ps(s, s);
  __m256 p = _mm256_set1_ps(1.0f / 11.0f);
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 9.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 7.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 5.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 3.0f));
  const __m256 s2s = _mm256_add_ps(s, s);
  const __m256 lnm = _mm256_fmadd_ps(s2s, _mm256_mul_ps(s2, p), s2s);
  const __m256 k = _mm256_cvtepi32_ps(_mm256_sub_epi32(e, i32(25)));
  const __m256 lnu = _mm256_fmadd_ps(k, _mm256_set1_ps(0.693145752f),
                                     _mm256_fmadd_ps(k, _mm256_set1_ps(1.42860677e-06f), lnm));
  return _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), lnu));
}

SYMKERN_ALWAYS_INLINE void cos_sin_2pi_f_x8(__m256i o1, __m256& cos_out, __m256& sin_out) {
  const auto i32 = [](int v) { return _mm256_set1_epi32(v); };
  const __m256i vv = _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(o1, 8), 1), i32(1));
  const __m256i q = _mm256_srli_epi32(_mm256_add_epi32(vv, i32(1 << 22)), 23);
  const __m256 fr =
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(vv, _mm256_slli_epi32(q, 23))),
                    _mm256_set1_ps(1.0f / 8388608.0f));
  const __m256 a = _mm256_mul_ps(fr, _mm256_set1_ps(1.57079632679f));
  const __m256 a2 = _mm256_mul_ps(a, a);
  __m256 sp = _mm256_set1_ps(2.75573192e-6f);
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(-1.98412698e-4f));
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(8.33333333e-3f));
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(-1.66666667e-1f));
  const __m256 sn = _mm256_fmadd_ps(a, _mm256_mul_ps(a2, sp), a);
  __m256 cp = _mm256_set1_ps(2.48015873e-5f);
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(-1.38888889e-3f));
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(4.16666667e-2f));
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(-0.5f));
  const __m256 cs = _mm256_fmadd_ps(a2, cp, _mm256_set1_ps(1.0f));
  // quadrant qm: cos = cs, -sn, -cs, sn and sin = sn, cs, -sn, -cs
  const __m256i qm = _mm256_and_si256(q, i32(3));
  const auto lanes_with = [&](__m256i v, int bit) {  // all ones where v & bit
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(v, i32(bit)), i32(bit)));
  };
  const __m256 odd = lanes_with(qm, 1), cneg = lanes_with(_mm256_add_epi32(qm, i32(1)), 2),
               sneg = lanes_with(qm, 2), minus_zero = _mm256_set1_ps(-0.0f);
  const __m256 c = _mm256_blendv_ps(cs, sn, odd), sv = _mm256_blendv_ps(sn, cs, odd);
  cos_out = _mm256_xor_ps(c, _mm256_and_ps(cneg, minus_zero));
  sin_out = _mm256_xor_ps(sv, _mm256_and_ps(sneg, minus_zero));
}
#endif

// The Philox4x32-10 words of the 16 counters (ctr0 + l * stride, step, run, stream), l < 16, into
// w[word][l], in this copy's explicit SIMD (AVX-512: PhiloxLanes16, AVX2: philox4_words_x16) or
// a SIMD loop over the counters (baseline).
inline void philox_words_x16(const ::symkern::philox::Key key, std::uint32_t step,
                             std::uint32_t run, std::uint32_t stream, std::uint32_t ctr0,
                             std::uint32_t stride, std::uint32_t (&w)[4][16]) {
#if defined(SYMKERN_PARTICLES_AVX512)
  __m512i o[4];
  PhiloxLanes16(key.k0, key.k1, step, run, stream, stride).words(ctr0, o);
  for (int j = 0; j < 4; ++j) _mm512_store_si512(reinterpret_cast<__m512i*>(w[j]), o[j]);
#elif defined(SYMKERN_PARTICLES_AVX2)
  philox4_words_x16(key.k0, key.k1, step, run, stream, ctr0, stride, w);
#else
#pragma omp simd
  for (int l = 0; l < 16; ++l)
    ::symkern::philox::philox4x32(ctr0 + static_cast<std::uint32_t>(l) * stride, step, run,
                                  stream, key.k0, key.k1, w[0][l], w[1][l], w[2][l], w[3][l]);
#endif
}

// The four float64 normals (slots 0..3: rho0 cos, rho0 sin, rho2 cos, rho2 sin of rng.normal4)
// of the 16 Philox counters ctr0 + l * stride (l < 16) of (step, run, stream): slot[q][l].
// Box-Muller per word in SIMD loops over the 16 counters (one result per loop body, so they
// vectorise).
inline void normal4_slots_x16(const ::symkern::philox::Key key, std::uint32_t step,
                              std::uint32_t run, std::uint32_t stream, std::uint32_t ctr0,
                              std::uint32_t stride, double (&slot)[4][16]) {
  constexpr int CB = 16;
  alignas(64) std::uint32_t w[4][CB];
  philox_words_x16(key, step, run, stream, ctr0, stride, w);
  for (int pair = 0; pair < 2; ++pair) {
    alignas(64) double rho[CB];
#pragma omp simd
    for (int l = 0; l < CB; ++l)
      rho[l] = __builtin_sqrt(-2.0 * ::symkern::philox::log_uniform(w[2 * pair][l]));
#pragma omp simd
    for (int l = 0; l < CB; ++l) {
      double cv, sv;
      ::symkern::philox::cos_sin_2pi_uniform(w[2 * pair + 1][l], cv, sv);
      slot[2 * pair][l] = rho[l] * cv;
      slot[2 * pair + 1][l] = rho[l] * sv;
    }
  }
}

#if defined(SYMKERN_PARTICLES_AVX2)
// normal4_slots_x16 for float32 runs: the same Philox words, the float Box-Muller on 8 lanes.
inline void normal4_slots_f_x16(const ::symkern::philox::Key key, std::uint32_t step,
                                std::uint32_t run, std::uint32_t stream, std::uint32_t ctr0,
                                std::uint32_t stride, float (&slot)[4][16]) {
  alignas(64) std::uint32_t w[4][16];
  philox4_words_x16(key.k0, key.k1, step, run, stream, ctr0, stride, w);
  for (int h = 0; h < 2; ++h) {
    const auto word = [&](int j) {
      return _mm256_load_si256(reinterpret_cast<const __m256i*>(w[j] + 8 * h));
    };
    const __m256 rho0 = radius_f_x8(word(0)), rho2 = radius_f_x8(word(2));
    __m256 c1, s1, c3, s3;
    cos_sin_2pi_f_x8(word(1), c1, s1);
    cos_sin_2pi_f_x8(word(3), c3, s3);
    _mm256_store_ps(slot[0] + 8 * h, _mm256_mul_ps(rho0, c1));
    _mm256_store_ps(slot[1] + 8 * h, _mm256_mul_ps(rho0, s1));
    _mm256_store_ps(slot[2] + 8 * h, _mm256_mul_ps(rho2, c3));
    _mm256_store_ps(slot[3] + 8 * h, _mm256_mul_ps(rho2, s3));
  }
}
#endif

// out[i] = normal keyed by (idx0 + i, step, run, stream): the Philox words of 16 counters at a
// time (philox_words_x16), their double Box-Muller in a SIMD loop; the last block's surplus
// normals are dropped.
inline void normals(const ::symkern::philox::Key key, std::uint32_t step, std::uint32_t run,
                    std::uint32_t stream, std::uint64_t idx0, index_t n, double* __restrict out) {
  alignas(64) std::uint32_t w[4][16];
  for (index_t i0 = 0; i0 < n; i0 += 16) {
    const std::uint32_t ctr0 = static_cast<std::uint32_t>(idx0 + static_cast<std::uint64_t>(i0));
    philox_words_x16(key, step, run, stream, ctr0, 1, w);
    alignas(64) double z[16];
#pragma omp simd
    for (int j = 0; j < 16; ++j) z[j] = ::symkern::philox::normal_from_bits(w[0][j], w[1][j]);
    std::copy(z, z + std::min<index_t>(16, n - i0), out + i0);
  }
}

#if defined(SYMKERN_PARTICLES_AVX2)
// out[i] = scale * rng.normal element i of (step, run, stream), for float32 runs: the Philox
// words of normals(), the float Box-Muller of normal_f_x16 on 8 lanes, so the same numbers as the
// AVX-512 copy's data_matrix_f (matrix unit; its standard unit casts normals()' doubles).
inline void scaled_normals_f(const ::symkern::philox::Key key, std::uint32_t step,
                             std::uint32_t run, std::uint32_t stream, index_t n, float scale,
                             float* __restrict out) {
  alignas(64) std::uint32_t w[4][16];
  const __m256 sc = _mm256_set1_ps(scale);
  for (index_t i0 = 0; i0 < n; i0 += 16) {
    philox4_words_x16(key.k0, key.k1, step, run, stream, static_cast<std::uint32_t>(i0), 1, w);
    alignas(32) float z[16];
    for (int h = 0; h < 2; ++h) {
      const auto word = [&](int j) {
        return _mm256_load_si256(reinterpret_cast<const __m256i*>(w[j] + 8 * h));
      };
      __m256 cv, sv;
      cos_sin_2pi_f_x8(word(1), cv, sv);  // the dead sin is dropped after inlining
      _mm256_store_ps(z + 8 * h, _mm256_mul_ps(sc, _mm256_mul_ps(radius_f_x8(word(0)), cv)));
    }
    std::copy(z, z + std::min<index_t>(16, n - i0), out + i0);
  }
}
#endif

// out[j] = rng.normal4 element idx0 + j of (step, run, stream), float64 Box-Muller.
inline void normals4(const ::symkern::philox::Key key, std::uint32_t step, std::uint32_t run,
                     std::uint32_t stream, std::uint64_t idx0, index_t n, double* __restrict out) {
  normal4_blocks(idx0, n, out, [&](std::uint64_t cb, double (&slot)[4][16]) {
    normal4_slots_x16(key, step, run, stream, static_cast<std::uint32_t>(cb), 1, slot);
  });
}

// The Langevin noise of m particles, D % 4 == 0, as parameter rows: rows[q * TILE + i] =
// rng.normal4 element (i_first + i) D + q = slot q % 4 of counter (i_first + i) D / 4 + q / 4
// (the same numbers as normals4, without its element order and the transpose to rows).
template <class T>
inline void noise_rows4(const ::symkern::philox::Key key, std::uint32_t step, std::uint32_t run,
                        std::uint32_t i_first, index_t m, index_t D, T* __restrict rows) {
  const std::uint32_t D4 = static_cast<std::uint32_t>(D / 4);
#if defined(SYMKERN_PARTICLES_AVX2)
  // float32 runs draw float normals (AVX-512: update_with_noise_f; elsewhere double, cast)
  using Slot = std::conditional_t<std::is_same_v<T, float>, float, double>;
#else
  using Slot = double;
#endif
  for (std::uint32_t q4 = 0; q4 < D4; ++q4)
    for (index_t i = 0; i < m; i += 16) {
      alignas(64) Slot slot[4][16];
      const std::uint32_t ctr0 = (i_first + static_cast<std::uint32_t>(i)) * D4 + q4;
#if defined(SYMKERN_PARTICLES_AVX2)
      if constexpr (std::is_same_v<Slot, float>)
        normal4_slots_f_x16(key, step, run, ::symkern::philox::STREAM_NOISE, ctr0, D4, slot);
      else
#endif
        normal4_slots_x16(key, step, run, ::symkern::philox::STREAM_NOISE, ctr0, D4, slot);
      // a whole block copies with a compile-time length: with m - i, GCC calls memcpy (rep
      // movsq, ~5 % of a float32 N = 5000 step on a Zen 3 EPYC) where T is the slot type
      const index_t len = m - i >= 16 ? 16 : m - i;
      for (int q = 0; q < 4; ++q) {
        T* __restrict o = rows + (4 * q4 + q) * TILE + i;
        if (len == 16) {
          for (int l = 0; l < 16; ++l) o[l] = static_cast<T>(slot[q][l]);
        } else {
          for (index_t l = 0; l < len; ++l) o[l] = static_cast<T>(slot[q][l]);
        }
      }
    }
}

// float32 rng.normal4 elements idx0 .. idx0 + n - 1 of one run, by the float Box-Muller of the
// float32 noise (AVX-512: normal4_f_x16; AVX2: normal4_slots_f_x16), for the philox_normals4
// binding's measurement of it against the double one. False in the baseline copy (no float one).
inline bool normals4_f(const ::symkern::philox::Key key, std::uint32_t step, std::uint32_t run,
                       std::uint32_t stream, std::uint64_t idx0, index_t n, float* out) {
#if defined(SYMKERN_PARTICLES_AVX512)
  const PhiloxLanes16 counters(key.k0, key.k1, step, run, stream, 1);
  normal4_blocks(idx0, n, out, [&](std::uint64_t cb, float (&slot)[4][16]) {
    __m512 zv[4];
    counters.normal4_f(static_cast<std::uint32_t>(cb), zv);
    for (int s = 0; s < 4; ++s) _mm512_store_ps(slot[s], zv[s]);
  });
  return true;
#elif defined(SYMKERN_PARTICLES_AVX2)
  normal4_blocks(idx0, n, out, [&](std::uint64_t cb, float (&slot)[4][16]) {
    normal4_slots_f_x16(key, step, run, stream, static_cast<std::uint32_t>(cb), 1, slot);
  });
  return true;
#else
  (void)key, (void)step, (void)run, (void)stream, (void)idx0, (void)n, (void)out;
  return false;
#endif
}

#if defined(SYMKERN_PARTICLES_AVX512)
// sigmoid(u) = 1 / (1 + e^{nu}) on 16 lanes, from nu = -u: 2^n e^r with n = rint(nu log2 e),
// Cody-Waite r, a degree-5 minimax polynomial of e^r (7.5e-8 relative), vscalefps (no bit tricks), then
// vrcp14ps + one Newton step instead of a division. nu is clamped to <= 87 (sigmoid(-87) ~ 1.6e-38
// -> 0, as the scalar sigmoid_t). See the error statement at the top of the file.
SYMKERN_ALWAYS_INLINE __m512 sigmoid_from_neg_x16(__m512 nu) {
  const __m512 one = _mm512_set1_ps(1.0f);
  nu = _mm512_min_ps(_mm512_set1_ps(87.0f), nu);  // this order keeps NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(nu, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), nu);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(8.297654928827846e-3f);  // degree-5 minimax of e^r, rel 7.5e-8
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.191538288378498e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6667574736419566e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.999889484336493e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(9.999996919876312e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0000000716554314f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(y, n), one);
  const __m512 rc = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(rc, _mm512_fnmadd_ps(d, rc, one), rc);
}

// sigmoid(u) = 1 / (1 + 2^t) on 16 lanes from t = -u log2(e), for callers that fold log2(e) into
// their products (pass 1 of the float32 matrix unit: t = z (-x log2 e)): f = t - floor(t) in
// [0, 1) in one vreduceps, a degree-5 minimax polynomial of 2^f (7.5e-8 relative in exact
// arithmetic, 1.5e-7 in float Horner), vscalefps by floor(t) (its own rounding of t), then
// vrcp14ps + one Newton step. Four ops fewer than sigmoid_from_neg_x16 (no multiply by log2 e,
// no round + two-step Cody-Waite). t is clamped as sigmoid_from_neg_x16 clamps nu = -u <= 87.
// Error against 1 / (1 + 2^t) for float t: see the statement at the top of the file.
SYMKERN_ALWAYS_INLINE __m512 sigmoid_from_neg_log2e_x16(__m512 t) {
  const __m512 one = _mm512_set1_ps(1.0f);
  t = _mm512_min_ps(_mm512_set1_ps(125.51447f), t);  // 87 log2(e) rounded up; keeps NaN
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor t
  __m512 y = _mm512_set1_ps(1.8775765784084797e-3f);  // degree-5 minimax of 2^f on [0, 1]
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(8.989340625703335e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.582631751894951e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4015361070632935e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.931530833244324e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.999999403953552e-1f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(y, t), one);  // scalef: y 2^floor(t)
  const __m512 rc = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(rc, _mm512_fnmadd_ps(d, rc, one), rc);
}

// Data of one step for float32 runs with the matrix unit: x = sigma_pi * normal (float Box-Muller
// in registers) and the teacher labels y_b = sum_m w_m sigmoid(z_m x_b) vectorised over 16 samples
// (same order of the sum over m as teacher_labels).
inline void data_matrix_f(const Problem<float>& p, index_t r, std::uint32_t step, std::uint32_t run,
                          float* x, float* y) {
  const index_t B = p.batch, c = p.c, d = p.d, M = p.M, D = p.D, n = B * d;
  const ::symkern::philox::Key key(p.seed);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const PhiloxLanes16 counters(key.k0, key.k1, step, run, ::symkern::philox::STREAM_DATA, 1);
  const __m512 sp = _mm512_set1_ps(static_cast<float>(p.sigma_pi));
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 mk = tail_mask16(n - i);
    __m512i o[2];
    counters.words<2>(static_cast<std::uint32_t>(i), o);
    _mm512_mask_storeu_ps(x + i, mk, _mm512_mul_ps(sp, normal_f_x16(o[0], o[1])));
  }
  const float* tch = p.teacher + r * M * D;
  const float* tw = p.teacher_w + r * M;
  for (index_t b0 = 0; b0 < B; b0 += 16) {
    const __mmask16 mk = tail_mask16(B - b0);
    const __m512i rows = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(b0)), iota);
    __m512 xs[8];
    const index_t dd = std::min<index_t>(d, 8);
    for (index_t j = 0; j < dd; ++j)
      xs[j] = _mm512_mask_i32gather_ps(
          _mm512_setzero_ps(), mk,
          _mm512_add_epi32(_mm512_mullo_epi32(rows, _mm512_set1_epi32(static_cast<int>(d))),
                           _mm512_set1_epi32(static_cast<int>(j))),
          x, 4);
    for (index_t k = 0; k < c; ++k) {
      __m512 acc = _mm512_setzero_ps();
      for (index_t m = 0; m < M; ++m) {
        const float* z = tch + m * D + k * d;
        __m512 nu = _mm512_mul_ps(_mm512_set1_ps(-z[0]), xs[0]);
        for (index_t j = 1; j < dd; ++j) nu = _mm512_fmadd_ps(_mm512_set1_ps(-z[j]), xs[j], nu);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(tw[m]), sigmoid_from_neg_x16(nu), acc);
      }
      _mm512_mask_i32scatter_ps(
          y, mk,
          _mm512_add_epi32(_mm512_mullo_epi32(rows, _mm512_set1_epi32(static_cast<int>(c))),
                           _mm512_set1_epi32(static_cast<int>(k))),
          acc, 4);
    }
  }
}

// sigmoid(u) = 1 / (1 + 2^t) on 8 float64 lanes from t = -u log2(e), the float64 form of
// sigmoid_from_neg_log2e_x16 (pass 1 of the float64 matrix unit folds log2(e) into its products):
// f = t - floor(t) in [0, 1) in one vreducepd, a degree-11 relative minimax polynomial of 2^f
// (EXP2_D_POLY), vscalefpd by floor(t), then vrcp14pd + two Newton steps (relative error 2^-14 ->
// 2^-28 -> 2^-56, below rounding) instead of vdivpd. Four ops fewer than the exp_d arithmetic
// (no multiply by log2 e, no round + two-step Cody-Waite, no lower clamp: t -> -inf gives
// 2^t = 0 and sigmoid 1). t is clamped to <= 708 log2(e) as exp_d clamps -u <= 708; NaN in,
// NaN out (min returns its second operand when either is NaN). The rounding of t = z (-x log2 e)
// is input rounding like that of u = z x itself (the relative error of 2^t it causes is
// ~|u| 2^-53, the same order as e^u's from u's rounding).
// (EXP2_D_POLY, EXP2_D_CLAMP: csrc/vmath.h, shared with the AVX2 copy's 4-lane form.)

SYMKERN_ALWAYS_INLINE __m512d sigmoid_from_neg_log2e_x8(__m512d t) {
  const __m512d one = _mm512_set1_pd(1.0);
  t = _mm512_min_pd(_mm512_set1_pd(EXP2_D_CLAMP), t);  // this order keeps NaN
  const __m512d f = _mm512_reduce_pd(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor t
  __m512d y = _mm512_set1_pd(EXP2_D_POLY[0]);
#pragma GCC unroll 16
  for (int j = 1; j < 12; ++j) y = _mm512_fmadd_pd(y, f, _mm512_set1_pd(EXP2_D_POLY[j]));
  const __m512d den = _mm512_add_pd(_mm512_scalef_pd(y, t), one);  // 1 + 2^t, in [1, 2^1022]
  __m512d rc = _mm512_rcp14_pd(den);
  rc = _mm512_fmadd_pd(rc, _mm512_fnmadd_pd(den, rc, one), rc);
  return _mm512_fmadd_pd(rc, _mm512_fnmadd_pd(den, rc, one), rc);
}

// The explicit-SIMD sigmoids' errors: the 16-lane float32 one (teacher labels) merged into
// activation_errors_impl's out[0..1]; out[6..7] / out[8..9]: the float32 / float64 base-2
// sigmoids of pass 1 on t = -u log2(e) for u in [lo, hi], against double / long double.
// The AVX-512 operations pass1_matrix2_zmm needs, per element type (16 float / 8 double lanes).
template <class T>
struct Zmm;
template <>
struct Zmm<float> {
  using T = float;
  using V = __m512;
  using Mask = __mmask16;
  static constexpr index_t lanes = 16;
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V opaque(V v) { __asm__("" : "+v"(v)); return v; }  // see pass1_matrix2_simd
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  // a + b in the first min(n, lanes) lanes, a in the others
  static V add_first(V a, index_t n, V b) {
    return _mm512_mask_add_ps(a, n >= lanes ? Mask(~0u) : Mask((1u << n) - 1u), a, b);
  }
  static double reduce_add(V v) { return static_cast<double>(_mm512_reduce_add_ps(v)); }
  // pass 1 multiplies -x by input_scale and passes the products to sigmoid_of_scaled
  static constexpr float input_scale = 1.44269504088896341f;  // log2(e): the base-2 sigmoid
  static V sigmoid_of_scaled(V t) { return sigmoid_from_neg_log2e_x16(t); }
};
template <>
struct Zmm<double> {
  using T = double;
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr index_t lanes = 8;
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V zero() { return _mm512_setzero_pd(); }
  static V loadu(const double* p) { return _mm512_loadu_pd(p); }
  static void storeu(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V opaque(V v) { __asm__("" : "+v"(v)); return v; }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static V add_first(V a, index_t n, V b) {
    return _mm512_mask_add_pd(a, n >= lanes ? Mask(~0u) : Mask((1u << n) - 1u), a, b);
  }
  static double reduce_add(V v) { return _mm512_reduce_add_pd(v); }
  static constexpr double input_scale = 1.4426950408889634;  // log2(e): the base-2 sigmoid
  static V sigmoid_of_scaled(V t) { return sigmoid_from_neg_log2e_x8(t); }
};

#endif  // SYMKERN_PARTICLES_AVX512

#if defined(SYMKERN_PARTICLES_AVX2)
// The AVX2 copy's float64 base-2 sigmoid 1 / (1 + 2^t) on 4 lanes, for the matrix unit's pass 1:
// the same polynomial EXP2_D_POLY of f = t - floor(t) as the AVX-512 one, without its vreducepd /
// vscalefpd / vrcp14pd: 2^floor(t) is built in the exponent bits (floor(t) + 1.5 * 2^52 holds it
// in the low mantissa bits), which needs t >= -1022 (a normal 2^floor(t); below, 1 + 2^t = 1
// exactly, so the lower clamp changes nothing), and the reciprocal is a division (AVX2 has no
// float64 reciprocal estimate; measured on a Zen 3 EPYC, the float rcp + three Newton steps was
// slower). NaN in, NaN out (min / max return their second operand when either is NaN). Measured
// against long double on t for u in [-708, 708] and [-800, 800]: particle_activation_errors'
// sigmoid_f64_base2_* (tests/test_particles.py). 1.5x faster per sigmoid than the auto-vectorised
// exp_d sigmoid here (1.63 vs 2.45 ns, 256-particle rows, Zen 3).
SYMKERN_ALWAYS_INLINE __m256d sigmoid_from_neg_log2e_x4(__m256d t) {
  const __m256d one = _mm256_set1_pd(1.0);
  t = _mm256_min_pd(_mm256_set1_pd(EXP2_D_CLAMP), t);  // this order keeps NaN
  t = _mm256_max_pd(_mm256_set1_pd(-1022.0), t);
  const __m256d fl = _mm256_floor_pd(t);
  const __m256d f = _mm256_sub_pd(t, fl);  // exact
  __m256d y = _mm256_set1_pd(EXP2_D_POLY[0]);
#pragma GCC unroll 16
  for (int j = 1; j < 12; ++j) y = _mm256_fmadd_pd(y, f, _mm256_set1_pd(EXP2_D_POLY[j]));
  constexpr double shifter_and_bias = 6755399441055744.0 + 1023.0;  // 1.5 * 2^52 + exponent bias
  const __m256i biased = _mm256_castpd_si256(_mm256_add_pd(fl, _mm256_set1_pd(shifter_and_bias)));
  const __m256d scale = _mm256_castsi256_pd(_mm256_slli_epi64(biased, 52));  // 2^floor(t)
  const __m256d den = _mm256_fmadd_pd(y, scale, one);  // 1 + 2^t, in [1, 2^1022]
  return _mm256_div_pd(one, den);
}

// The float32 form: 1 / (1 + 2^t) on 8 lanes, the polynomial of sigmoid_from_neg_log2e_x16
// (degree-5 minimax of 2^f on [0, 1]) with 2^floor(t) built in the exponent bits (t clamped to
// [-126, 125.51447]: a normal 2^floor(t); below -126, 1 + 2^t = 1 in float) and a division (no
// AVX2 reciprocal estimate accurate enough with one Newton step). NaN in, NaN out. Error against
// 1 / (1 + 2^t) for float t: particle_activation_errors' sigmoid_base2_* (tests/test_particles.py).
SYMKERN_ALWAYS_INLINE __m256 sigmoid_from_neg_log2e_x8f(__m256 t) {
  const __m256 one = _mm256_set1_ps(1.0f);
  t = _mm256_min_ps(_mm256_set1_ps(125.51447f), t);  // 87 log2(e) rounded up; keeps NaN
  t = _mm256_max_ps(_mm256_set1_ps(-126.0f), t);
  const __m256 fl = _mm256_floor_ps(t);
  const __m256 f = _mm256_sub_ps(t, fl);  // exact
  __m256 y = _mm256_set1_ps(1.8775765784084797e-3f);  // degree-5 minimax of 2^f on [0, 1]
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(8.989340625703335e-3f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(5.582631751894951e-2f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.4015361070632935e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(6.931530833244324e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(9.999999403953552e-1f));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(fl), _mm256_set1_epi32(127));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));  // 2^floor(t)
  return _mm256_div_ps(one, _mm256_fmadd_ps(y, scale, one));
}

// The AVX2 operations pass1_matrix2_simd needs, per element type (4 double / 8 float lanes).
template <class T>
struct Ymm;
template <>
struct Ymm<float> {
  using T = float;
  using V = __m256;
  static constexpr index_t lanes = 8;
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V opaque(V v) { __asm__("" : "+x"(v)); return v; }  // see pass1_matrix2_simd
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V add_first(V a, index_t n, V b) {
    if (n >= lanes) return _mm256_add_ps(a, b);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i nv = _mm256_set1_epi32(static_cast<int>(n));
    return _mm256_add_ps(a, _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(nv, lane)), b));
  }
  static double reduce_add(V v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return static_cast<double>(_mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h))));
  }
  static constexpr float input_scale = 1.44269504088896341f;  // log2(e): the base-2 sigmoid
  static V sigmoid_of_scaled(V t) { return sigmoid_from_neg_log2e_x8f(t); }
};
template <>
struct Ymm<double> {
  using T = double;
  using V = __m256d;
  static constexpr index_t lanes = 4;
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V zero() { return _mm256_setzero_pd(); }
  static V loadu(const double* p) { return _mm256_loadu_pd(p); }
  static void storeu(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V opaque(V v) { __asm__("" : "+x"(v)); return v; }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static V add_first(V a, index_t n, V b) {
    if (n >= lanes) return _mm256_add_pd(a, b);
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256d keep = _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lane));
    return _mm256_add_pd(a, _mm256_and_pd(keep, b));
  }
  static double reduce_add(V v) {
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
  static constexpr double input_scale = 1.4426950408889634;  // log2(e): the base-2 sigmoid
  static V sigmoid_of_scaled(V t) { return sigmoid_from_neg_log2e_x4(t); }
};
#endif  // SYMKERN_PARTICLES_AVX2

#if defined(SYMKERN_PARTICLES_AVX512) || defined(SYMKERN_PARTICLES_AVX2)
// activation_errors_impl's out[6..9]: the base-2 sigmoids of pass 1 (traits F for float32, Dbl
// for float64: Zmm<T> or Ymm<T>) on t = -u log2(e) for u in [lo, hi], against double / long
// double.
template <class F, class Dbl>
inline void base2_sigmoid_errors(double lo, double hi, index_t n, double out[10]) {
  const auto f32 = [](const float* v, float* s) { F::storeu(s, F::sigmoid_of_scaled(F::loadu(v))); };
  const auto f64 = [](const double* v, double* s) {
    Dbl::storeu(s, Dbl::sigmoid_of_scaled(Dbl::loadu(v)));
  };
  constexpr double LOG2E = 1.4426950408889634;
  for (int k = 6; k < 10; ++k) out[k] = 0.0;
  sigmoid_errors<float, double, F::lanes>(-hi * LOG2E, -lo * LOG2E, n, f32, out + 6, true);
  sigmoid_errors<double, long double, Dbl::lanes>(-hi * LOG2E, -lo * LOG2E, n, f64, out + 8, true);
}

#if defined(SYMKERN_PARTICLES_AVX512)
// The AVX-512 copy also measures the 16-lane float32 sigmoid of the teacher labels (out[0..1]).
inline void vector_sigmoid_errors(double lo, double hi, index_t n, double out[10]) {
  const auto f32 = [](const float* u, float* s) {
    _mm512_store_ps(s, sigmoid_from_neg_x16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_load_ps(u))));
  };
  sigmoid_errors<float, double, 16>(lo, hi, n, f32, out);
  base2_sigmoid_errors<Zmm<float>, Zmm<double>>(lo, hi, n, out);
}
#else
inline void vector_sigmoid_errors(double lo, double hi, index_t n, double out[10]) {
  base2_sigmoid_errors<Ymm<float>, Ymm<double>>(lo, hi, n, out);
}
#endif

// Pass 1, matrix unit with d = 2: as pass1_matrix, one vector of particles at a time (Z: the
// traits Zmm<T> or Ymm<T>), the explicit base-2 sigmoids above. The sum over particles runs in lane
// accumulators, then one reduction (a different rounding order from the scalar loop, at the
// level of the type's rounding).
// kSymmetric (DA and FA runs): the pre-activation z_k0 x0 + z_k1 x1 as two rounded products and
// one add, never an FMA (Z::opaque keeps GCC from contracting them): the FMA rounds the two
// products differently, and a group element that swaps the two coordinates of x (and the two of
// z_k) swaps their roles — the orbit's copies of a symmetric particle would then round apart.
// See "Exact invariance of E^G" at the top of the file.
template <class Z, bool kSymmetric>
inline void pass1_matrix2_simd(index_t E, index_t c, const typename Z::T* xe,
                               const typename Z::T* thf, index_t cap, index_t i_s, index_t m,
                               typename Z::T* actp, double* phi) {
  using T = typename Z::T;
  constexpr index_t L = Z::lanes;
  for (index_t e = 0; e < E; ++e) {
    const typename Z::V nx0 = Z::set1(-xe[e * 2] * Z::input_scale);
    const typename Z::V nx1 = Z::set1(-xe[e * 2 + 1] * Z::input_scale);
    for (index_t k = 0; k < c; ++k) {
      const T* __restrict z0 = thf + (2 * k) * cap + i_s;
      const T* __restrict z1 = thf + (2 * k + 1) * cap + i_s;
      T* __restrict sp = actp + (e * c + k) * TILE;
      typename Z::V acc = Z::zero();
      for (index_t i = 0; i < m; i += L) {  // rows are cap / TILE long: full loads stay inside
        typename Z::V nu;
        if constexpr (kSymmetric)
          nu = Z::add(Z::opaque(Z::mul(Z::loadu(z0 + i), nx0)),
                      Z::opaque(Z::mul(Z::loadu(z1 + i), nx1)));
        else
          nu = Z::fmadd(Z::loadu(z0 + i), nx0, Z::mul(Z::loadu(z1 + i), nx1));
        const typename Z::V sg = Z::sigmoid_of_scaled(nu);
        acc = Z::add_first(acc, m - i, sg);
        Z::storeu(sp + i, Z::fnmadd(sg, sg, sg));
      }
      phi[e * c + k] += Z::reduce_add(acc);
    }
  }
}

// pass1_matrix2_simd<Z, symmetric> chosen at run time: symmetric for DA and FA runs (their E
// inputs are the orbit's copies of the batch).
template <class Z>
inline void pass1_matrix2_simd(bool symmetric, index_t E, index_t c, const typename Z::T* xe,
                               const typename Z::T* thf, index_t cap, index_t i_s, index_t m,
                               typename Z::T* actp, double* phi) {
  if (symmetric)
    pass1_matrix2_simd<Z, true>(E, c, xe, thf, cap, i_s, m, actp, phi);
  else
    pass1_matrix2_simd<Z, false>(E, c, xe, thf, cap, i_s, m, actp, phi);
}
#endif

#if defined(SYMKERN_PARTICLES_AVX512) || defined(SYMKERN_PARTICLES_AVX2)
// Pass 2's gradient for the matrix unit with d = 2 and C outputs (D = 2C), register-blocked
// (Z: the traits Zmm<T> or Ymm<T>): for GB vector groups of particles (sp = their first stored
// derivative, rows TILE apart) g[b][2k + j] = sum_e s'_{ek} coef[(e C + k) 2 + j],
// coef[(e C + k) 2 + j] = r_ek x_ej. Each (e, k) broadcasts its two coefficients once for the GB
// groups (per group: 2/GB broadcast loads, 1 derivative load, 2 FMAs), where a sweep per (e, k)
// over a gradient buffer loads and stores the gradient rows every time (pass2_matrix): the load
// ports were the limit. GB * D accumulators stay in registers.
template <class Z, int C, int GB>
SYMKERN_ALWAYS_INLINE void grad_matrix2_block(index_t E, const typename Z::T* coef,
                                              const typename Z::T* sp,
                                              typename Z::V g[GB][2 * C]) {
  for (int b = 0; b < GB; ++b)
    for (int q = 0; q < 2 * C; ++q) g[b][q] = Z::zero();
  for (index_t e = 0; e < E; ++e) {
#pragma GCC unroll 4
    for (int k = 0; k < C; ++k) {
      const typename Z::V c0 = Z::set1(coef[0]), c1 = Z::set1(coef[1]);
#pragma GCC unroll 8
      for (int b = 0; b < GB; ++b) {
        const typename Z::V sv = Z::loadu(sp + b * Z::lanes);
        g[b][2 * k] = Z::fmadd(sv, c0, g[b][2 * k]);
        g[b][2 * k + 1] = Z::fmadd(sv, c1, g[b][2 * k + 1]);
      }
      sp += TILE;
      coef += 2;
    }
  }
}

// grad_matrix2_block over E = blocks * Eb inputs, the sum of each block of Eb (one group
// element's copies of the batch under DA / FA) formed on its own, then the blocks' sums added in
// block order. For a group of order 2 the two blocks' sums of a symmetric particle are each
// other's permutation bit for bit, and a + b = b + a: the gradient is symmetric bit for bit (a
// sum over all E in one chain would add the same terms in two different orders).
template <class Z, int C, int GB>
SYMKERN_ALWAYS_INLINE void grad_matrix2_blocks(index_t E, index_t blocks,
                                               const typename Z::T* coef,
                                               const typename Z::T* sp,
                                               typename Z::V g[GB][2 * C]) {
  const index_t Eb = E / blocks;
  grad_matrix2_block<Z, C, GB>(Eb, coef, sp, g);
  for (index_t k = 1; k < blocks; ++k) {
    typename Z::V h[GB][2 * C];
    grad_matrix2_block<Z, C, GB>(Eb, coef + k * Eb * C * 2, sp + k * Eb * C * TILE, h);
    for (int b = 0; b < GB; ++b)
      for (int q = 0; q < 2 * C; ++q) g[b][q] = Z::add(g[b][q], h[b][q]);
  }
}

// coef[(e C + k) 2 + j] = r_ek x_ej for grad_matrix2_block (d = 2).
template <class T>
inline void matrix2_coefficients(index_t E, index_t c, const T* r, const T* xe, T* coef) {
  for (index_t e = 0; e < E; ++e)
    for (index_t k = 0; k < c; ++k) {
      coef[(e * c + k) * 2] = r[e * c + k] * xe[e * 2];
      coef[(e * c + k) * 2 + 1] = r[e * c + k] * xe[e * 2 + 1];
    }
}

// pass2_matrix for d = 2, c = 2 (any scheme): the gradient rows of a tile of m particles into
// gbuf (D = 4 rows of TILE) by grad_matrix2_blocks (the E inputs in `blocks` blocks), GB vector
// groups at a time (GB * lanes divides TILE: the groups past m read and write inside the rows).
template <class Z, int GB>
inline void pass2_matrix22(index_t E, index_t blocks, const typename Z::T* coef, index_t m,
                           const typename Z::T* actp, typename Z::T* gbuf) {
  constexpr index_t L = Z::lanes;
  static_assert(TILE % (GB * L) == 0, "whole groups per tile row");
  for (index_t i = 0; i < m; i += GB * L) {
    typename Z::V g[GB][4];
    grad_matrix2_blocks<Z, 2, GB>(E, blocks, coef, actp + i, g);
    for (int b = 0; b < GB; ++b)
      for (int q = 0; q < 4; ++q) Z::storeu(gbuf + q * TILE + i + b * L, g[b][q]);
  }
}

// The same gradient rows plus the weight decay, gbuf[q][i] = grad + reg * z[q * cap + i] (z: the
// forward particles' rows from the tile's first; the generic loop's fma, so the same numbers),
// one output k at a time (rows 2k and 2k + 1): 2 GB accumulators, so AVX2's 16 registers hold
// GB = 4 groups with the broadcasts. The AVX2 copy's pass 2 for c = d = 2 (performance log h.).
// The E inputs are summed in `blocks` blocks, as grad_matrix2_blocks does.
template <class Z, int GB>
inline void pass2_matrix22_by_output(index_t E, index_t blocks, const typename Z::T* coef,
                                     index_t m, const typename Z::T* actp,
                                     const typename Z::T* z, index_t cap, typename Z::T reg,
                                     typename Z::T* gbuf) {
  constexpr index_t L = Z::lanes;
  static_assert(TILE % (GB * L) == 0, "whole groups per tile row");
  const typename Z::V vreg = Z::set1(reg);
  for (int k = 0; k < 2; ++k)
    for (index_t i = 0; i < m; i += GB * L) {
      typename Z::V g[GB][2];
      const typename Z::T* sp = actp + k * TILE + i;
      const typename Z::T* cf = coef + 2 * k;
      const index_t Eb = E / blocks;
      for (index_t blk = 0; blk < blocks; ++blk) {
        typename Z::V h[GB][2];
        for (int b = 0; b < GB; ++b) h[b][0] = h[b][1] = Z::zero();
        for (index_t e = 0; e < Eb; ++e, sp += 2 * TILE, cf += 4) {
          const typename Z::V c0 = Z::set1(cf[0]), c1 = Z::set1(cf[1]);
#pragma GCC unroll 8
          for (int b = 0; b < GB; ++b) {
            const typename Z::V sv = Z::loadu(sp + b * L);
            h[b][0] = Z::fmadd(sv, c0, h[b][0]);
            h[b][1] = Z::fmadd(sv, c1, h[b][1]);
          }
        }
        for (int b = 0; b < GB; ++b)
          for (int j = 0; j < 2; ++j) g[b][j] = blk == 0 ? h[b][j] : Z::add(g[b][j], h[b][j]);
      }
      for (int b = 0; b < GB; ++b)
        for (int j = 0; j < 2; ++j) {
          const index_t q = 2 * k + j, at = i + b * L;  // z rows are cap >= i_s + TILE long
          Z::storeu(gbuf + q * TILE + at, Z::fmadd(vreg, Z::loadu(z + q * cap + at), g[b][j]));
        }
    }
}
#endif

#if defined(SYMKERN_PARTICLES_AVX512)
// y = A x (transpose: A^T x) for one vector block of D rows, A (D x D, row-major): each output
// sums A's nonzero entries of its row in column order from zero, as apply_dxd does, so the fused
// pass 2 gets the same numbers as the unfused one (and rows of A that are equal give equal
// outputs bit for bit: the projected noise of a particle in E^G stays in E^G exactly).
template <class Z, int D>
SYMKERN_ALWAYS_INLINE void apply_dxd_vec(const typename Z::T* A, bool transpose,
                                         const typename Z::V x[D], typename Z::V y[D]) {
  for (int q = 0; q < D; ++q) {
    typename Z::V acc = Z::zero();
    for (int pp = 0; pp < D; ++pp) {
      const typename Z::T a = transpose ? A[pp * D + q] : A[q * D + pp];
      if (a != typename Z::T(0)) acc = Z::fmadd(Z::set1(a), x[pp], acc);
    }
    y[q] = acc;
  }
}

// The gradient g of D rows (decay added) and the noise xi of one vector block: with P (not
// nullptr) xi <- P xi, and with ea also g <- P^T g (EA's pull-back).
template <class Z, int D>
SYMKERN_ALWAYS_INLINE void project_block(const typename Z::T* P, bool ea, typename Z::V g[D],
                                         typename Z::V xi[D]) {
  if (P == nullptr) return;
  typename Z::V t[D];
  if (ea) {
    apply_dxd_vec<Z, D>(P, true, g, t);
    for (int q = 0; q < D; ++q) g[q] = t[q];
  }
  apply_dxd_vec<Z, D>(P, false, xi, t);
  for (int q = 0; q < D; ++q) xi[q] = t[q];
}

// Pass 2 + weight decay + pull-back + noise + update fused, matrix unit d = 2 with C outputs
// (D = 2C), float32: per 16 particles the D gradient rows stay in registers
// (grad_matrix2_blocks, 16 / D groups of 16 at a time); coef from matrix2_coefficients. The decay
// acts on the forward particles thf (theta; EA: P theta). P (D x D) projects the noise
// (project_noise and EA; nullptr: no projection) and with ea pulls the gradient back (P^T g), in
// apply_dxd's order: the numbers of the unfused path, which EA and projected noise took before
// (20-28 us more per float32 run-step at N = 5000: the double normals, gbuf and the noise rows'
// passes over memory).
template <int C>
inline void pass2_update_matrix2_f(float* th, const float* thf, index_t cap, index_t i_s,
                                   index_t m, index_t E, index_t blocks, const float* coef,
                                   const float* actp, float reg, const float* P, bool ea,
                                   std::uint32_t base, std::uint32_t step, std::uint32_t run,
                                   std::uint32_t k0, std::uint32_t k1, float alpha, float ns) {
  constexpr int D = 2 * C, D4 = D / 4, GB = 16 / D > 0 ? 16 / D : 1;
  static_assert(D % 4 == 0, "one noise counter per 4 parameter planes");
  const PhiloxLanes16 noise(k0, k1, step, run, ::symkern::philox::STREAM_NOISE, D4);
  const __m512 va = _mm512_set1_ps(-alpha), vn = _mm512_set1_ps(ns), vreg = _mm512_set1_ps(reg);
  for (index_t i0 = 0; i0 < m; i0 += 16 * GB) {
    __m512 gb[GB][D];
    grad_matrix2_blocks<Zmm<float>, C, GB>(E, blocks, coef, actp + i0, gb);
    for (int b = 0; b < GB; ++b) {
      const index_t i = i0 + 16 * b;
      if (i >= m) break;
      const __mmask16 mk = tail_mask16(m - i);
      // noise: rng.normal4 element base + i D + q = slot q mod 4 of counter (base + i D + q) / 4
      const std::uint32_t ctr_i = base / 4 + static_cast<std::uint32_t>(i * D4);
      __m512 xi[D], g[D];
      for (int q4 = 0; q4 < D4; ++q4)
        noise.normal4_f(ctr_i + static_cast<std::uint32_t>(q4), xi + 4 * q4);
      for (int q = 0; q < D; ++q)  // rows are cap >= i_s + TILE long: whole blocks load
        g[q] = _mm512_fmadd_ps(vreg, _mm512_loadu_ps(thf + q * cap + i_s + i), gb[b][q]);
      project_block<Zmm<float>, D>(P, ea, g, xi);
      for (int q = 0; q < D; ++q) {
        float* z = th + q * cap + i_s + i;
        const __m512 u = _mm512_fmadd_ps(va, g[q], _mm512_loadu_ps(z));
        _mm512_mask_storeu_ps(z, mk, _mm512_fmadd_ps(vn, xi[q], u));
      }
    }
  }
}
#endif

// ---- the multi-step kernel --------------------------------------------------------------------

template <class T>
struct Ctx {
  const Problem<T>* p;
  const T* theta_in;
  index_t R, N;
  T* theta_out;
  T* snaps;
  T* losses;
  std::int64_t step0, every, S;
  std::int64_t lt_begin, lt_end;  // the call's steps this chunk runs (see particles.h)
  index_t Emax;  // effective inputs per step, max over runs
  index_t nA;    // stored derivative arrays per effective input
};

// Bytes of one Work for n_particles (the sizes of its constructor, counted in double so a huge
// batch or group cannot overflow the count).
template <class T>
double work_bytes(const Ctx<T>& cx, index_t n_particles) {
  const Problem<T>& p = *cx.p;
  const double D = p.D, B = p.batch, c = p.c, d = p.d, E = cx.Emax, M = std::max<index_t>(p.M, 1);
  const double cap = round_up(std::max<index_t>(n_particles, 1), TILE), tile = TILE;
  const double Bpad = round_up(p.batch, TL_PAD);
  const double n_t = 2 * D * cap + E * cx.nA * cap + 2 * tile + 4 * D * tile + B * (d + c) +
                     Bpad * (d + c) + M * c * TL_MAX + E * (d + 2 * c + c * d);
  const double n_double = D * tile + E * c + std::max(B * d, 1.0) + c;
  return sizeof(T) * n_t + sizeof(double) * n_double + sizeof(std::int32_t) * B;
}

template <class T>
struct Work {
  index_t cap = 0;
  std::vector<T> th, tht, act, u, tmp, gbuf, g2, nzT, xip, x, y, xe, ye, r, coef, xt, ts, yt;
  std::vector<double> nz, phi, xd, dy;
  std::vector<std::int32_t> gsel;

  Work(const Ctx<T>& cx, index_t n_particles) {
    const Problem<T>& p = *cx.p;
    const index_t D = p.D, B = p.batch;
    cap = round_up(std::max<index_t>(n_particles, 1), TILE);
    th.assign(D * cap, T(0));
    tht.assign(D * cap, T(0));
    act.assign((cap / TILE) * cx.Emax * cx.nA * TILE, T(0));
    u.assign(TILE, T(0));
    tmp.assign(TILE, T(0));
    gbuf.assign(D * TILE, T(0));
    g2.assign(D * TILE, T(0));
    nzT.assign(D * TILE, T(0));
    xip.assign(D * TILE, T(0));
    nz.assign(D * TILE, 0.0);
    x.assign(B * p.d, T(0));
    y.assign(B * p.c, T(0));
    xt.assign(round_up(B, TL_PAD) * p.d, T(0));
    ts.assign(std::max<index_t>(p.M, 1) * p.c * TL_MAX, T(0));
    yt.assign(round_up(B, TL_PAD) * p.c, T(0));
    xe.assign(cx.Emax * p.d, T(0));
    ye.assign(cx.Emax * p.c, T(0));
    r.assign(cx.Emax * p.c, T(0));
    coef.assign(cx.Emax * p.c * p.d, T(0));
    phi.assign(cx.Emax * p.c, 0.0);
    xd.assign(std::max<index_t>(B * p.d, 1), 0.0);
    gsel.assign(B, 0);
    dy.assign(p.c, 0.0);
  }
};

struct Team {
  int tid = 0, nt = 1;
  double* partial = nullptr;  // [2][nt][stride]
  index_t stride = 0;
};

// Teacher label y_b = sum_m w_m sigma*(x_b, teacher_m), in T like the reference, vectorised over
// the batch: x [B][d] is transposed into xt [d][Bp] (Bp = B rounded up to TL_PAD, zero-padded).
// Per block of L <= TL_MAX samples, the pre-activations of all M teacher particles go into
// s [M A][L] (A = c for the matrix unit, 1 for the standard one), one SIMD loop applies the
// activation to all of them, and the labels accumulate in yt [c][Bp] (the sum over m, and each
// pre-activation's sum over j, in the scalar order) before being transposed back into y [B][c].
// Why this shape (AVX2, float32, N = 50, B = 20, 10 teacher particles, rdtsc profile): a scalar
// loop per sample took ~10k cycles per step (400 scalar sigmoids); SIMD loops over the batch per
// (m, k), ~3k (loop overhead, short dependency chains); this form, ~1.5k.
template <class T>
inline void teacher_labels(const Problem<T>& p, index_t r, const T* x, T* y, T* __restrict xt,
                           T* __restrict s, T* __restrict yt) {
  const index_t B = p.batch, Bp = round_up(B, TL_PAD), c = p.c, d = p.d, D = p.D, M = p.M;
  const bool matrix = p.unit_code == 0;
  const index_t A = matrix ? c : 1;
  const T* tch = p.teacher + r * M * D;
  const T* tw = p.teacher_w + r * M;
  for (index_t j = 0; j < d; ++j) {
    for (index_t b = 0; b < B; ++b) xt[j * Bp + b] = x[b * d + j];
    for (index_t b = B; b < Bp; ++b) xt[j * Bp + b] = T(0);
  }
  std::fill(yt, yt + c * Bp, T(0));
  for (index_t b0 = 0; b0 < Bp; b0 += TL_MAX) {
    const index_t L = std::min(TL_MAX, Bp - b0);
    for (index_t m = 0; m < M; ++m) {
      const T* z = tch + m * D;
      for (index_t k = 0; k < A; ++k) {
        // matrix: u = z_k . x; standard: u = bias + w . x, with z = (a, w, bias)
        const T u0 = matrix ? T(0) : z[c + d];
        const T* w = matrix ? z + k * d : z + c;
        T* __restrict u = s + (m * A + k) * L;
        const T w0 = w[0];
        const T* __restrict x0 = xt + b0;
#pragma omp simd
        for (index_t l = 0; l < L; ++l) u[l] = u0 + w0 * x0[l];
        for (index_t j = 1; j < d; ++j) {
          const T wj = w[j];
          const T* __restrict xj = xt + j * Bp + b0;
#pragma omp simd
          for (index_t l = 0; l < L; ++l) u[l] += wj * xj[l];
        }
      }
    }
    const index_t ns = M * A * L;
    if (matrix) {
#pragma omp simd
      for (index_t i = 0; i < ns; ++i) s[i] = sigmoid_t(s[i]);
    } else {
      with_act(p.activation_code, [&](auto act) {
#pragma omp simd
        for (index_t i = 0; i < ns; ++i) {
          T h, hp;
          decltype(act)::eval(s[i], h, hp);
          s[i] = h;
        }
      });
    }
    for (index_t m = 0; m < M; ++m) {
      const T* z = tch + m * D;
      const T wm = tw[m];
      for (index_t k = 0; k < c; ++k) {
        T* __restrict yk = yt + k * Bp + b0;
        if (matrix) {
          const T* __restrict sk = s + (m * c + k) * L;
#pragma omp simd
          for (index_t l = 0; l < L; ++l) yk[l] += wm * sk[l];
        } else {
          const T ak = z[k];
          const T* __restrict sm = s + m * L;
#pragma omp simd
          for (index_t l = 0; l < L; ++l) yk[l] += wm * (ak * sm[l]);
        }
      }
    }
  }
  for (index_t b = 0; b < B; ++b)
    for (index_t k = 0; k < c; ++k) y[b * c + k] = yt[k * Bp + b];
}

// ---- standard unit: register-blocked products ----------------------------------------------
// Its three products per tile are small GEMMs: pre-activations U = X W^T + b (E x m, inner d),
// weight gradients G_W = T^T X (m x d, inner E) and, in the backward, input gradients
// G_X = T W (E x d, inner m), with T the residual-weighted activation derivatives. As streams
// over particle rows they do one FMA per three memory operations (u[i] += x_j w_j[i]: load,
// load, store). Here a block of up to 8 inputs (or columns) times one native vector of particles
// stays in registers over the inner dimension: one vector load per 8 FMAs, whose scalar operand
// is a broadcast (embedded in the FMA on AVX-512). GCC vectors of this copy's native width.

template <class T>
struct NativeVec {
  typedef T type __attribute__((vector_size(SYMKERN_PARTICLES_VEC_BYTES)));
  static constexpr index_t lanes = SYMKERN_PARTICLES_VEC_BYTES / sizeof(T);
};
template <class T>
using vec_t = typename NativeVec<T>::type;

template <class T>
SYMKERN_ALWAYS_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
SYMKERN_ALWAYS_INLINE void vstore(T* p, vec_t<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// f(block, s) for consecutive blocks [s, s + block) covering [0, n): blocks of MaxB, then one each
// of the halves for the remainder (block is a compile-time constant: register arrays stay
// registers).
template <int MaxB, class F>
SYMKERN_ALWAYS_INLINE void in_blocks(index_t n, F&& f) {
  index_t s = 0;
  for (; s + MaxB <= n; s += MaxB) f(std::integral_constant<int, MaxB>{}, s);
  if constexpr (MaxB > 1) {
    if (s < n) in_blocks<MaxB / 2>(n - s, [&](auto blk, index_t s2) { f(blk, s + s2); });
  }
}

// Pass 1 on one tile, standard unit: Phi accumulators and stored (h, h') per input. thf: forward
// particles (SoA rows a_0..a_{c-1}, w_0..w_{d-1}, b; leading dimension cap), offset i_s, m
// particles. Full vector loads and stores past m stay inside rows of cap (or TILE) entries; those
// lanes are never read back.
template <class T, class Act>
inline void pass1_standard(const Problem<T>& p, index_t E, const T* xe, const T* thf, index_t cap,
                           index_t i_s, index_t m, T* actp, double* phi) {
  using V = vec_t<T>;
  constexpr index_t W = NativeVec<T>::lanes;
  const index_t c = p.c, d = p.d;
  const T* wrow = thf + c * cap + i_s;
  const T* bias = thf + (c + d) * cap + i_s;
  for (index_t i = 0; i < m; i += W) {
    const V b = vload(bias + i);
    in_blocks<8>(E, [&](auto blk, index_t e0) {
      constexpr int EB = decltype(blk)::value;
      const T* x = xe + e0 * d;
      V acc[EB];
      for (int e = 0; e < EB; ++e) acc[e] = b;
      for (index_t j = 0; j < d; ++j) {
        const V wv = vload(wrow + j * cap + i);
        for (int e = 0; e < EB; ++e) acc[e] += wv * x[e * d + j];
      }
      for (int e = 0; e < EB; ++e) vstore(actp + (2 * (e0 + e)) * TILE + i, acc[e]);
    });
  }
  for (index_t e = 0; e < E; ++e) {
    T* __restrict h = actp + (2 * e) * TILE;  // holds u on entry
    T* __restrict hp = actp + (2 * e + 1) * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) Act::eval(h[i], h[i], hp[i]);
    for (index_t k = 0; k < c; ++k) {
      const T* __restrict a = thf + k * cap + i_s;
      T s = T(0);
#pragma omp simd reduction(+ : s)
      for (index_t i = 0; i < m; ++i) s += a[i] * h[i];
      phi[e * c + k] += static_cast<double>(s);
    }
  }
}

template <class T>
inline void pass1_matrix(const Problem<T>& p, index_t E, const T* xe, const T* thf, index_t cap,
                         index_t i_s, index_t m, T* actp, T* __restrict u, double* phi) {
  const index_t c = p.c, d = p.d;
  if (d == 2) {  // the paper's unit (c = d = 2): pre-activation in registers
    for (index_t e = 0; e < E; ++e) {
      const T x0 = xe[e * 2], x1 = xe[e * 2 + 1];
      for (index_t k = 0; k < c; ++k) {
        const T* __restrict z0 = thf + (2 * k) * cap + i_s;
        const T* __restrict z1 = thf + (2 * k + 1) * cap + i_s;
        T* __restrict sp = actp + (e * c + k) * TILE;
        T s = T(0);
#pragma omp simd reduction(+ : s)
        for (index_t i = 0; i < m; ++i) {
          const T sg = sigmoid_t(z0[i] * x0 + z1[i] * x1);
          s += sg;
          sp[i] = sg - sg * sg;
        }
        phi[e * c + k] += static_cast<double>(s);
      }
    }
    return;
  }
  for (index_t e = 0; e < E; ++e) {
    const T* xr = xe + e * d;
    for (index_t k = 0; k < c; ++k) {
      {
        const T x0 = xr[0];
        const T* __restrict z = thf + (k * d) * cap + i_s;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) u[i] = z[i] * x0;
      }
      for (index_t j = 1; j < d; ++j) {
        const T xj = xr[j];
        const T* __restrict z = thf + (k * d + j) * cap + i_s;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) u[i] += z[i] * xj;
      }
      T* __restrict sp = actp + (e * c + k) * TILE;
      T s = T(0);
#pragma omp simd reduction(+ : s)
      for (index_t i = 0; i < m; ++i) {
        const T sg = sigmoid_t(u[i]);
        s += sg;
        sp[i] = sg - sg * sg;
      }
      phi[e * c + k] += static_cast<double>(s);
    }
  }
}

// Pass 2 on one tile: gbuf[q][i] = data gradient wrt the forward particles (r already carries
// the loss weights and 1/N).
template <class T>
inline void pass2_matrix(const Problem<T>& p, index_t E, const T* xe, const T* r, index_t m,
                         const T* actp, T* __restrict tmp, T* __restrict gbuf) {
  const index_t c = p.c, d = p.d, D = p.D;
  for (index_t q = 0; q < D; ++q) {
    T* __restrict g = gbuf + q * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) g[i] = T(0);
  }
  if (d == 2) {
    for (index_t k = 0; k < c; ++k) {
      T* __restrict g0 = gbuf + (2 * k) * TILE;
      T* __restrict g1 = gbuf + (2 * k + 1) * TILE;
      index_t e = 0;
      for (; e + 2 <= E; e += 2) {  // two inputs per sweep: fewer loads/stores of g
        const T ra = r[e * c + k], rb = r[(e + 1) * c + k];
        const T xa0 = xe[e * 2] * ra, xa1 = xe[e * 2 + 1] * ra;
        const T xb0 = xe[e * 2 + 2] * rb, xb1 = xe[e * 2 + 3] * rb;
        const T* __restrict sa = actp + (e * c + k) * TILE;
        const T* __restrict sb = actp + ((e + 1) * c + k) * TILE;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) {
          g0[i] += sa[i] * xa0 + sb[i] * xb0;
          g1[i] += sa[i] * xa1 + sb[i] * xb1;
        }
      }
      for (; e < E; ++e) {
        const T ra = r[e * c + k];
        const T xa0 = xe[e * 2] * ra, xa1 = xe[e * 2 + 1] * ra;
        const T* __restrict sa = actp + (e * c + k) * TILE;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) {
          g0[i] += sa[i] * xa0;
          g1[i] += sa[i] * xa1;
        }
      }
    }
    return;
  }
  for (index_t e = 0; e < E; ++e) {
    for (index_t k = 0; k < c; ++k) {
      const T rk = r[e * c + k];
      const T* __restrict sp = actp + (e * c + k) * TILE;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) tmp[i] = rk * sp[i];
      for (index_t j = 0; j < d; ++j) {
        const T xj = xe[e * d + j];
        T* __restrict g = gbuf + (k * d + j) * TILE;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) g[i] += tmp[i] * xj;
      }
    }
  }
}

// Standard unit, after pass 1 on a tile: overwrite each h'_e row with the backpropagated weight
// t_e[i] = h'(u_ei) sum_k r_ek a_k[i] (r carries the loss weights and 1/N), and zero it past m up
// to the vector width, so the particle reductions of backward_impl can run on whole vectors.
template <class T>
inline void standard_backprop_weights(const Problem<T>& p, index_t E, const T* r, const T* thf,
                                      index_t cap, index_t i_s, index_t m, T* actp) {
  const index_t c = p.c;
  const index_t mv = round_up(m, NativeVec<T>::lanes);
  for (index_t e = 0; e < E; ++e) {
    T* __restrict t = actp + (2 * e + 1) * TILE;
    T acc[TILE];
    const T r0 = r[e * c];
    const T* __restrict a0 = thf + i_s;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) acc[i] = r0 * a0[i];
    for (index_t k = 1; k < c; ++k) {
      const T rk = r[e * c + k];
      const T* __restrict a = thf + k * cap + i_s;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) acc[i] += rk * a[i];
    }
#pragma omp simd
    for (index_t i = 0; i < m; ++i) t[i] *= acc[i];
    for (index_t i = m; i < mv; ++i) t[i] = T(0);
  }
}

// Pass 2 on one tile, standard unit (after standard_backprop_weights): gbuf rows a_k, w_j, b of
// the data gradient. G_W in register blocks of 8 columns per particle vector (inner loop over
// the E inputs).
template <class T>
inline void pass2_standard(const Problem<T>& p, index_t E, const T* xe, const T* r, index_t m,
                           const T* actp, T* __restrict gbuf) {
  using V = vec_t<T>;
  constexpr index_t W = NativeVec<T>::lanes;
  const index_t c = p.c, d = p.d;
  for (index_t k = 0; k < c; ++k) {  // dPhi/da_k = h
    T* __restrict ga = gbuf + k * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) ga[i] = T(0);
    for (index_t e = 0; e < E; ++e) {
      const T rk = r[e * c + k];
      const T* __restrict h = actp + (2 * e) * TILE;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) ga[i] += rk * h[i];
    }
  }
  T* __restrict gb = gbuf + (c + d) * TILE;  // dPhi/db = t
#pragma omp simd
  for (index_t i = 0; i < m; ++i) gb[i] = T(0);
  for (index_t e = 0; e < E; ++e) {
    const T* __restrict t = actp + (2 * e + 1) * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) gb[i] += t[i];
  }
  T* gw = gbuf + c * TILE;  // dPhi/dw_j = t x_j
  for (index_t i = 0; i < m; i += W) {
    in_blocks<8>(d, [&](auto blk, index_t j0) {
      constexpr int JB = decltype(blk)::value;
      V acc[JB];
      for (int j = 0; j < JB; ++j) acc[j] = V{};
      for (index_t e = 0; e < E; ++e) {
        const V tv = vload(actp + (2 * e + 1) * TILE + i);
        const T* x = xe + e * d + j0;
        for (int j = 0; j < JB; ++j) acc[j] += tv * x[j];
      }
      for (int j = 0; j < JB; ++j) vstore(gw + (j0 + j) * TILE + i, acc[j]);
    });
  }
}

// Backward of the fused forward, standard unit: gx[b][j] += sum_{i < m} t_b[i] w_j[i] for the nb
// inputs of a chunk (t past m is zero: standard_backprop_weights), in 4 x 4 blocks of (input,
// column) vector accumulators over the particles, reduced across lanes once per block.
template <class T>
inline void input_grad_standard(index_t nb, index_t c, index_t d, const T* thc, index_t m,
                                const T* actp, double* gx) {
  using V = vec_t<T>;
  constexpr index_t W = NativeVec<T>::lanes;
  const index_t mv = round_up(m, W);
  const T* wrow = thc + c * TILE;
  in_blocks<4>(nb, [&](auto bblk, index_t b0) {
    constexpr int BB = decltype(bblk)::value;
    in_blocks<4>(d, [&](auto jblk, index_t j0) {
      constexpr int JB = decltype(jblk)::value;
      V acc[BB][JB];
      for (int b = 0; b < BB; ++b)
        for (int j = 0; j < JB; ++j) acc[b][j] = V{};
      for (index_t i = 0; i < mv; i += W) {
        V wv[JB];
        for (int j = 0; j < JB; ++j) wv[j] = vload(wrow + (j0 + j) * TILE + i);
        for (int b = 0; b < BB; ++b) {
          const V tv = vload(actp + (2 * (b0 + b) + 1) * TILE + i);
          for (int j = 0; j < JB; ++j) acc[b][j] += tv * wv[j];
        }
      }
      for (int b = 0; b < BB; ++b)
        for (int j = 0; j < JB; ++j) {
          T s = T(0);
          for (index_t l = 0; l < W; ++l) s += acc[b][j][l];
          gx[(b0 + b) * d + j0 + j] += static_cast<double>(s);
        }
    });
  });
}

// y[q][i] = sum_p A[q][p] x[p][i]  (A row-major D x D; transpose = use A[p][q])
template <class T>
inline void apply_dxd(const T* A, bool transpose, index_t D, const T* x, index_t ldx, T* y,
                      index_t ldy, index_t m) {
  for (index_t q = 0; q < D; ++q) {
    T* __restrict yq = y + q * ldy;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) yq[i] = T(0);
    for (index_t pp = 0; pp < D; ++pp) {
      const T a = transpose ? A[pp * D + q] : A[q * D + pp];
      if (a == T(0)) continue;
      const T* __restrict xp = x + pp * ldx;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) yq[i] += a * xp[i];
    }
  }
}

template <class T>
void run_range(const Ctx<T>& cx, Work<T>& w, index_t r, index_t i0, index_t i1, Team* team) {
  namespace px = ::symkern::philox;
  const Problem<T>& p = *cx.p;
  const index_t n = i1 - i0, D = p.D, c = p.c, d = p.d, B = p.batch, G = p.G, N = cx.N;
  const index_t cap = w.cap;
  const int sch = p.scheme[r];
  const bool ea = sch == 4, fa = sch == 3;
  const bool projn = ea || p.project_noise[r] != 0;
  // DA and FA: E = G blocks of B inputs, one per group element (g-major); their matrix-unit
  // passes keep a group of order 2's orbit copies bitwise alike ("Exact invariance of E^G")
  const bool orbit_blocks = sch == 1 || sch == 3;
  const index_t E = orbit_blocks ? G * B : B;
  const index_t blocks = orbit_blocks ? G : 1;
  const T alpha = p.alpha[r], tau = p.tau[r];
  const T ns = std::sqrt(T(2) * p.beta[r] * alpha / static_cast<T>(N));
  const T reg = T(2) * tau / static_cast<T>(N);
  const px::Key key(p.seed);
  const std::uint32_t runid = static_cast<std::uint32_t>(p.run_ids[r]);
  T* th = w.th.data();
  T* tht = w.tht.data();
  const T* thf = ea ? tht : th;
  const index_t ntiles = (n + TILE - 1) / TILE;
  const index_t act_tile = cx.Emax * cx.nA * TILE;
  const T* P = p.proj;

  const T* theta_from = cx.lt_begin > 0 ? cx.theta_out : cx.theta_in;  // a later chunk continues
  for (index_t i = 0; i < n; ++i)
    for (index_t q = 0; q < D; ++q) th[q * cap + i] = theta_from[((r * N) + i0 + i) * D + q];

  for (std::int64_t lt = cx.lt_begin; lt < cx.lt_end; ++lt) {
    const std::int64_t t = cx.step0 + lt;
    const std::uint32_t ut = static_cast<std::uint32_t>(t);
    // ---- data
    SK_PROF(pt0)
    T* x = w.x.data();
    T* y = w.y.data();
    if (p.x_data) {
      const T* xs = p.x_data + ((lt * cx.R + r) * B) * d;
      const T* ys = p.y_data + ((lt * cx.R + r) * B) * c;
      std::copy(xs, xs + B * d, x);
      std::copy(ys, ys + B * c, y);
    } else {
#if defined(SYMKERN_PARTICLES_AVX512)
      if constexpr (std::is_same_v<T, float>) {
        if (p.unit_code == 0 && d <= 8) {
          data_matrix_f(p, r, ut, runid, x, y);
          goto have_data;
        }
      }
#endif
#if defined(SYMKERN_PARTICLES_AVX2)
      if constexpr (std::is_same_v<T, float>) {
        scaled_normals_f(key, ut, runid, px::STREAM_DATA, B * d, static_cast<float>(p.sigma_pi),
                         x);
      } else
#endif
      {
        normals(key, ut, runid, px::STREAM_DATA, 0, B * d, w.xd.data());
        for (index_t k = 0; k < B * d; ++k) x[k] = static_cast<T>(p.sigma_pi * w.xd[k]);
      }
      teacher_labels(p, r, x, y, w.xt.data(), w.ts.data(), w.yt.data());
    }
#if defined(SYMKERN_PARTICLES_AVX512)
  have_data: __attribute__((unused));  // the goto is in the float32 instantiation only
#endif
    // ---- effective inputs
    T* xe = w.xe.data();
    T* ye = w.ye.data();
    if (sch == 0 || sch == 4) {
      std::copy(x, x + B * d, xe);
      std::copy(y, y + B * c, ye);
    } else if (sch == 1 && d == 2 && c == 2) {  // DA, paper unit: 2x2 rho, unrolled
      for (index_t g = 0; g < G; ++g) {
        const T* rx = p.rho_x + g * 4;
        const T* ry = p.rho_y + g * 4;
        T* xo = xe + g * B * 2;
        T* yo = ye + g * B * 2;
        for (index_t b = 0; b < B; ++b) {
          const T x0 = x[2 * b], x1 = x[2 * b + 1], y0 = y[2 * b], y1 = y[2 * b + 1];
          xo[2 * b] = rx[0] * x0 + rx[1] * x1;
          xo[2 * b + 1] = rx[2] * x0 + rx[3] * x1;
          yo[2 * b] = ry[0] * y0 + ry[1] * y1;
          yo[2 * b + 1] = ry[2] * y0 + ry[3] * y1;
        }
      }
    } else {
      for (index_t e = 0; e < E; ++e) {
        index_t g, b;
        if (sch == 2) {
          b = e;
          std::uint32_t o0, o1;
          px::philox2(static_cast<std::uint32_t>(b), ut, runid, px::STREAM_AUGMENT, key.k0,
                      key.k1, o0, o1);
          g = px::randint(o0, static_cast<std::uint32_t>(G));
        } else {
          g = e / B;
          b = e % B;
        }
        const T* rx = p.rho_x + g * d * d;
        const T* ry = p.rho_y + g * c * c;
        for (index_t a = 0; a < d; ++a) {
          T s = T(0);
          for (index_t j = 0; j < d; ++j) s += (fa ? rx[j * d + a] : rx[a * d + j]) * x[b * d + j];
          xe[e * d + a] = s;
        }
        if (!fa)
          for (index_t a = 0; a < c; ++a) {
            T s = T(0);
            for (index_t j = 0; j < c; ++j) s += ry[a * c + j] * y[b * c + j];
            ye[e * c + a] = s;
          }
      }
    }
    SK_PROF(pt1)
    SK_PROF_ADD(0, pt0, pt1)
    // ---- EA: forward particles P theta
    if (ea) apply_dxd(P, false, D, th, cap, tht, cap, n);
    // ---- pass 1
    double* phi = w.phi.data();
    std::fill(phi, phi + E * c, 0.0);
    for (index_t tb = 0; tb < ntiles; ++tb) {
      const index_t i_s = tb * TILE, m = std::min(TILE, n - i_s);
      T* actp = w.act.data() + tb * act_tile;
      if (p.unit_code == 0) {
#if defined(SYMKERN_PARTICLES_AVX512)
        if (d == 2) {
          pass1_matrix2_simd<Zmm<T>>(orbit_blocks, E, c, xe, thf, cap, i_s, m, actp, phi);
          continue;
        }
#elif defined(SYMKERN_PARTICLES_AVX2)
        if (d == 2) {
          pass1_matrix2_simd<Ymm<T>>(orbit_blocks, E, c, xe, thf, cap, i_s, m, actp, phi);
          continue;
        }
#endif
        pass1_matrix(p, E, xe, thf, cap, i_s, m, actp, w.u.data(), phi);
      } else {
        with_act(p.activation_code, [&](auto act) {
          pass1_standard<T, decltype(act)>(p, E, xe, thf, cap, i_s, m, actp, phi);
        });
      }
    }
    SK_PROF(pt2)
    SK_PROF_ADD(1, pt1, pt2)
    if (team) {
      double* mine = team->partial + ((lt & 1) * team->nt + team->tid) * team->stride;
      std::copy(phi, phi + E * c, mine);
#pragma omp barrier
      const double* base = team->partial + (lt & 1) * team->nt * team->stride;
      for (index_t k = 0; k < E * c; ++k) {
        double s = 0.0;
        for (int q = 0; q < team->nt; ++q) s += base[q * team->stride + k];
        phi[k] = s;
      }
    }
    // ---- loss and residuals (r carries 1/N)
    const double invN = 1.0 / static_cast<double>(N);
    T* rr = w.r.data();
    double loss = 0.0;
    if (!fa) {
      const double wt = 1.0 / static_cast<double>(E);
      for (index_t k = 0; k < E * c; ++k) {
        const double diff = phi[k] * invN - static_cast<double>(ye[k]);
        loss += diff * diff;
        rr[k] = static_cast<T>(2.0 * wt * diff * invN);
      }
      loss *= wt;
    } else {
      for (index_t b = 0; b < B; ++b) {
        double* dyp = w.dy.data();
        for (index_t k = 0; k < c; ++k) {
          double yh = 0.0;
          for (index_t g = 0; g < G; ++g)
            for (index_t l = 0; l < c; ++l)
              yh += static_cast<double>(p.rho_y[(g * c + k) * c + l]) * phi[(g * B + b) * c + l];
          yh = yh * invN / static_cast<double>(G);
          const double diff = yh - static_cast<double>(y[b * c + k]);
          loss += diff * diff;
          dyp[k] = 2.0 * diff / static_cast<double>(B);
        }
        for (index_t g = 0; g < G; ++g)
          for (index_t l = 0; l < c; ++l) {
            double s = 0.0;
            for (index_t k = 0; k < c; ++k)
              s += static_cast<double>(p.rho_y[(g * c + k) * c + l]) * dyp[k];
            rr[(g * B + b) * c + l] = static_cast<T>(s * invN / static_cast<double>(G));
          }
      }
      loss /= static_cast<double>(B);
    }
    // ---- pass 2: gradient, weight decay, pull-back, noise, update
    SK_PROF(pt3)
    SK_PROF_ADD(2, pt2, pt3)
    [[maybe_unused]] const bool matrix22 = p.unit_code == 0 && d == 2 && c == 2;
#if defined(SYMKERN_PARTICLES_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      if (matrix22) {
        float* coef = w.coef.data();
        matrix2_coefficients(E, c, rr, xe, coef);
        for (index_t tb = 0; tb < ntiles; ++tb) {
          const index_t i_s = tb * TILE, m = std::min(TILE, n - i_s);
          pass2_update_matrix2_f<2>(th, thf, cap, i_s, m, E, blocks, coef,
                                    w.act.data() + tb * act_tile, reg, projn ? P : nullptr, ea,
                                    static_cast<std::uint32_t>((i0 + i_s) * D), ut, runid,
                                    key.k0, key.k1, alpha, ns);
        }
        goto after_pass2;
      }
    }
#endif
#if defined(SYMKERN_PARTICLES_AVX512) || defined(SYMKERN_PARTICLES_AVX2)
    if (matrix22) matrix2_coefficients(E, c, rr, xe, w.coef.data());
#endif
    for (index_t tb = 0; tb < ntiles; ++tb) {
      SK_PROF(pq0)
      const index_t i_s = tb * TILE, m = std::min(TILE, n - i_s);
      T* actp = w.act.data() + tb * act_tile;
      T* gbuf = w.gbuf.data();
      bool decay_added = false;  // the gradient rows already hold reg * z
      if (p.unit_code == 0) {
#if defined(SYMKERN_PARTICLES_AVX512)
        if (matrix22)
          pass2_matrix22<Zmm<T>, 4>(E, blocks, w.coef.data(), m, actp, gbuf);
        else
#elif defined(SYMKERN_PARTICLES_AVX2)
        if (matrix22) {
          pass2_matrix22_by_output<Ymm<T>, 4>(E, blocks, w.coef.data(), m, actp, thf + i_s, cap,
                                              reg, gbuf);
          decay_added = true;
        } else
#endif
        {
          // one block of inputs at a time (as grad_matrix2_blocks), the later ones through g2
          // (free until EA's pull-back, and EA has one block)
          const index_t Eb = E / blocks;
          pass2_matrix(p, Eb, xe, rr, m, actp, w.tmp.data(), gbuf);
          for (index_t k = 1; k < blocks; ++k) {
            T* part = w.g2.data();
            pass2_matrix(p, Eb, xe + k * Eb * d, rr + k * Eb * c, m, actp + k * Eb * c * TILE,
                         w.tmp.data(), part);
            for (index_t q = 0; q < D; ++q) {
              T* __restrict g = gbuf + q * TILE;
              const T* __restrict h = part + q * TILE;
#pragma omp simd
              for (index_t i = 0; i < m; ++i) g[i] += h[i];
            }
          }
        }
      } else {
        standard_backprop_weights(p, E, rr, thf, cap, i_s, m, actp);
        pass2_standard(p, E, xe, rr, m, actp, gbuf);
      }
      for (index_t q = 0; q < D && !decay_added; ++q) {
        T* __restrict g = gbuf + q * TILE;
        const T* __restrict z = thf + q * cap + i_s;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) g[i] += reg * z[i];
      }
      if (ea) {
        apply_dxd(P, true, D, gbuf, TILE, w.g2.data(), TILE, m);
        gbuf = w.g2.data();
      }
      // noise: xi[i, q] = rng.normal4 element (i0 + i_s + i) * D + q
      SK_PROF(pq1)
      SK_PROF_ADD(3, pq0, pq1)
#if defined(SYMKERN_PARTICLES_AVX512)
      if constexpr (std::is_same_v<T, float>) {
        if (!projn && D % 4 == 0) {
          update_with_noise_f(th, cap, i_s, gbuf, m, D,
                              static_cast<std::uint32_t>((i0 + i_s) * D), ut, runid, key.k0,
                              key.k1, alpha, ns);
          SK_PROF(pq2)
          SK_PROF_ADD(4, pq1, pq2)
          continue;
        }
      }
#endif
      T* nzT = w.nzT.data();
      if (D % 4 == 0) {
        noise_rows4(key, ut, runid, static_cast<std::uint32_t>(i0 + i_s), m, D, nzT);
      } else {
        double* nz = w.nz.data();
        normals4(key, ut, runid, px::STREAM_NOISE, static_cast<std::uint64_t>((i0 + i_s) * D),
                 m * D, nz);
        for (index_t q = 0; q < D; ++q) {
          T* __restrict o = nzT + q * TILE;
#pragma omp simd
          for (index_t i = 0; i < m; ++i) o[i] = static_cast<T>(nz[i * D + q]);
        }
      }
      const T* xi = nzT;
      if (projn) {
        apply_dxd(P, false, D, nzT, TILE, w.xip.data(), TILE, m);
        xi = w.xip.data();
      }
      for (index_t q = 0; q < D; ++q) {
        T* __restrict z = th + q * cap + i_s;
        const T* __restrict g = gbuf + q * TILE;
        const T* __restrict xq = xi + q * TILE;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) z[i] = z[i] - alpha * g[i] + ns * xq[i];
      }
    }
#if defined(SYMKERN_PARTICLES_AVX512)
  after_pass2: __attribute__((unused));  // the goto is in the float32 instantiation only
#endif
    // ---- snapshot
    SK_PROF(pt4)
    SK_PROF_ADD(5, pt3, pt4)
    if ((lt + 1) % cx.every == 0) {
      const index_t s = (lt + 1) / cx.every - 1;
      if (s < cx.S) {
        T* out = cx.snaps + ((r * cx.S + s) * N + i0) * D;
        for (index_t i = 0; i < n; ++i)
          for (index_t q = 0; q < D; ++q) out[i * D + q] = th[q * cap + i];
        if (!team || team->tid == 0) cx.losses[r * cx.S + s] = static_cast<T>(loss);
      }
    }
  }
  T* out = cx.theta_out + (r * N + i0) * D;
  for (index_t i = 0; i < n; ++i)
    for (index_t q = 0; q < D; ++q) out[i * D + q] = th[q * cap + i];
}

template <class T>
void steps_impl(const Problem<T>& p, const T* theta_in, index_t R, index_t N, T* theta_out,
                T* snaps, T* losses, std::int64_t step0, std::int64_t steps,
                std::int64_t snapshot_every, std::int64_t lt_begin, std::int64_t lt_end) {
  Ctx<T> cx;
  cx.p = &p;
  cx.theta_in = theta_in;
  cx.R = R;
  cx.N = N;
  cx.theta_out = theta_out;
  cx.snaps = snaps;
  cx.losses = losses;
  cx.step0 = step0;
  cx.every = snapshot_every;
  cx.S = steps / snapshot_every;
  cx.lt_begin = lt_begin;
  cx.lt_end = lt_end;
  bool wide = false;
  for (index_t r = 0; r < R; ++r) wide = wide || p.scheme[r] == 1 || p.scheme[r] == 3;
  cx.Emax = wide ? p.G * p.batch : p.batch;
  cx.nA = p.unit_code == 0 ? p.c : 2;
  if (R <= 0 || N <= 0) return;

  const int nthr = ::symkern::max_threads();
  // a thread's scratch is allocated in the parallel region (its size follows the thread's share
  // of particles); a failed allocation is rethrown after it, never std::terminate
  ::symkern::FirstException errors;
  // a team splits one run's particles, at least 256 per thread: below 512 particles there is no
  // team whatever SYMKERN_PARTICLES_TEAM_MIN_N says (a team of 0 wrote into an empty buffer)
  const int team_size = (nthr > 1 && R < nthr && N >= ::symkern::particles::team_min_particles())
                            ? static_cast<int>(std::min<index_t>(nthr, N / 256))
                            : 0;
  // the whole scratch of the call, refused up front when the machine cannot hold it (see
  // physical_memory_bytes): std::bad_alloc, which the binding reports as a MemoryError
  const double scratch =
      team_size >= 2
          ? team_size * (work_bytes(cx, N / team_size + 1) + 2.0 * cx.Emax * p.c * sizeof(double))
          : std::min<index_t>(nthr, R) * work_bytes(cx, N);
  if (scratch > ::symkern::physical_memory_bytes()) throw std::bad_alloc();
  if (team_size >= 2) {
    // a team of threads per run, runs one after the other
    const int nt = team_size;
    std::vector<double> partial(2 * static_cast<std::size_t>(nt) * cx.Emax * p.c, 0.0);
#ifdef SYMKERN_WITH_OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#ifdef SYMKERN_WITH_OPENMP
      const int tid = omp_get_thread_num(), ntr = omp_get_num_threads();
#else
      const int tid = 0, ntr = 1;
#endif
      const index_t b0 = N * tid / ntr, b1 = N * (tid + 1) / ntr;
      std::unique_ptr<Work<T>> w;  // scratch; its allocation may fail (a huge batch or group)
      errors.capture([&] { w = std::make_unique<Work<T>>(cx, b1 - b0); });
#ifdef SYMKERN_WITH_OPENMP
#pragma omp barrier
#endif
      if (!errors.failed()) {  // the same answer in every thread: all run, or none
        Team team;
        team.tid = tid;
        team.nt = ntr;
        team.partial = partial.data();
        team.stride = cx.Emax * p.c;
        for (index_t r = 0; r < R; ++r) {
          run_range(cx, *w, r, b0, b1, &team);
#ifdef SYMKERN_WITH_OPENMP
#pragma omp barrier
#endif
        }
      }
    }
    errors.rethrow_if_failed();
    return;
  }
  const int nt = static_cast<int>(std::min<index_t>(nthr, R));
#ifdef SYMKERN_WITH_OPENMP
#pragma omp parallel num_threads(nt)
#endif
  {
    std::unique_ptr<Work<T>> w;
    errors.capture([&] { w = std::make_unique<Work<T>>(cx, N); });
#ifdef SYMKERN_WITH_OPENMP
#pragma omp barrier
#endif
    if (!errors.failed()) {  // every thread or none meets the worksharing loop
#ifdef SYMKERN_WITH_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
      for (index_t r = 0; r < R; ++r) run_range(cx, *w, r, 0, N, nullptr);
    }
  }
  errors.rethrow_if_failed();
#ifdef SYMKERN_PARTICLES_PROF
  {
    const double per = 1.0 / static_cast<double>((lt_end - lt_begin) * R);
    std::fprintf(stderr, "prof kcyc/step: data %.1f pass1 %.1f resid %.1f grad %.1f upd+noise %.1f pass2tot %.1f\n",
                 g_prof[0] * per / 1e3, g_prof[1] * per / 1e3, g_prof[2] * per / 1e3,
                 g_prof[3] * per / 1e3, g_prof[4] * per / 1e3, g_prof[5] * per / 1e3);
    for (auto& v : g_prof) v = 0;
  }
#endif
}

// ---- fused forward / backward -------------------------------------------------------------------

// Activation values of all B inputs on one tile of particles (SoA thc, leading dim TILE).
template <class T>
void forward_tile(const T* x, index_t B, const T* thc, index_t m, int unit_code, int act,
                  index_t c, index_t d, T* actp, T* u, double* phi, const Problem<T>& pp) {
  if (unit_code == 0)
    pass1_matrix(pp, B, x, thc, TILE, 0, m, actp, u, phi);
  else
    with_act(act, [&](auto a) {
      pass1_standard<T, decltype(a)>(pp, B, x, thc, TILE, 0, m, actp, phi);
    });
  (void)c;
  (void)d;
}

// thc[q][i] = theta[i_s + i][q] for i < m, zero from m to the end of the row (the vector blocks
// read whole vectors: no stale particle of an earlier tile may reach a reduction, not even as
// inf * 0).
template <class T>
void load_tile(const T* theta, index_t D, index_t i_s, index_t m, T* thc) {
  for (index_t i = 0; i < m; ++i)
    for (index_t q = 0; q < D; ++q) thc[q * TILE + i] = theta[(i_s + i) * D + q];
  for (index_t q = 0; q < D; ++q) std::fill(thc + q * TILE + m, thc + (q + 1) * TILE, T(0));
}

template <class T>
Problem<T> unit_problem(int unit_code, int act, index_t c, index_t d) {
  Problem<T> pp;
  pp.unit_code = unit_code;
  pp.activation_code = act;
  pp.c = c;
  pp.d = d;
  pp.D = unit_code == 0 ? c * d : c + d + 1;
  return pp;
}

template <class T>
void forward_impl(const T* x, index_t B, const T* theta, index_t N, int unit_code, int act,
                  index_t c, index_t d, T* phi_out) {
  const Problem<T> pp = unit_problem<T>(unit_code, act, c, d);
  const index_t D = pp.D, nA = unit_code == 0 ? c : 2;
  const index_t ntiles = (N + TILE - 1) / TILE;
  // batch rows split across threads (each thread: all particles for its rows); each tile of
  // particles is transposed once per thread and used by all its chunks of 64 rows
  const index_t grain = std::max<index_t>(1, 4096 / std::max<index_t>(N, 1));
  ::symkern::parallel_for(B, grain, [&](index_t b0, index_t b1) {
    const index_t Bl = b1 - b0;
    const index_t Bc = std::min<index_t>(Bl, 64);
    std::vector<T> thc(D * TILE), actb(Bc * nA * TILE), u(TILE);
    std::vector<double> phi(Bl * c, 0.0);
    for (index_t tb = 0; tb < ntiles; ++tb) {
      const index_t i_s = tb * TILE, m = std::min(TILE, N - i_s);
      load_tile(theta, D, i_s, m, thc.data());
      for (index_t bb = b0; bb < b1; bb += Bc)
        forward_tile(x + bb * d, std::min(Bc, b1 - bb), thc.data(), m, unit_code, act, c, d,
                     actb.data(), u.data(), phi.data() + (bb - b0) * c, pp);
    }
    for (index_t k = 0; k < Bl * c; ++k)
      phi_out[b0 * c + k] = static_cast<T>(phi[k] / static_cast<double>(N));
  });
}

template <class T>
void backward_impl(const T* x, index_t B, const T* theta, index_t N, int unit_code, int act,
                   index_t c, index_t d, const T* g_phi, T* grad_theta, T* grad_x) {
  const Problem<T> pp = unit_problem<T>(unit_code, act, c, d);
  const index_t D = pp.D, nA = unit_code == 0 ? c : 2;
  const index_t ntiles = (N + TILE - 1) / TILE;
  const int nthr = ::symkern::max_threads();
  std::vector<double> gx_part(static_cast<std::size_t>(nthr) * B * d, 0.0);
  std::vector<T> r(B * c);
  for (index_t k = 0; k < B * c; ++k) r[k] = static_cast<T>(g_phi[k] / static_cast<T>(N));
  const index_t Bc = std::min<index_t>(B, 64);
  ::symkern::parallel_for(ntiles, 1, [&](index_t t0, index_t t1) {
#ifdef SYMKERN_WITH_OPENMP
    const int tid = omp_in_parallel() ? omp_get_thread_num() : 0;
#else
    const int tid = 0;
#endif
    double* gx = gx_part.data() + static_cast<std::size_t>(tid) * B * d;
    std::vector<T> thc(D * TILE), actv(Bc * nA * TILE), u(TILE), tmp(TILE), gbuf(D * TILE),
        gacc(D * TILE);
    std::vector<double> phi(Bc * c);
    for (index_t tb = t0; tb < t1; ++tb) {
      const index_t i_s = tb * TILE, m = std::min(TILE, N - i_s);
      load_tile(theta, D, i_s, m, thc.data());
      std::fill(gacc.begin(), gacc.end(), T(0));
      for (index_t bb = 0; bb < B; bb += Bc) {
        const index_t nb = std::min(Bc, B - bb);
        forward_tile(x + bb * d, nb, thc.data(), m, unit_code, act, c, d, actv.data(), u.data(),
                     phi.data(), pp);
        const T* rb = r.data() + bb * c;
        if (unit_code != 0) standard_backprop_weights(pp, nb, rb, thc.data(), TILE, 0, m, actv.data());
        if (grad_theta) {
          if (unit_code == 0)
            pass2_matrix(pp, nb, x + bb * d, rb, m, actv.data(), tmp.data(), gbuf.data());
          else
            pass2_standard(pp, nb, x + bb * d, rb, m, actv.data(), gbuf.data());
          for (index_t q = 0; q < D * TILE; ++q) gacc[q] += gbuf[q];
        }
        if (grad_x) {
          // dPhi_bk/dx_bj = (1/N) sum_i J; r carries 1/N
          if (unit_code == 0) {
            for (index_t b = 0; b < nb; ++b) {
              const index_t gb = bb + b;
              for (index_t k = 0; k < c; ++k) {
                const T rk = r[gb * c + k];
                const T* sp = actv.data() + (b * c + k) * TILE;
                for (index_t j = 0; j < d; ++j) {
                  const T* z = thc.data() + (k * d + j) * TILE;
                  T s = T(0);
#pragma omp simd reduction(+ : s)
                  for (index_t i = 0; i < m; ++i) s += sp[i] * z[i];
                  gx[gb * d + j] += static_cast<double>(rk * s);
                }
              }
            }
          } else {
            input_grad_standard(nb, c, d, thc.data(), m, actv.data(), gx + bb * d);
          }
        }
      }
      if (grad_theta)
        for (index_t i = 0; i < m; ++i)
          for (index_t q = 0; q < D; ++q) grad_theta[(i_s + i) * D + q] = gacc[q * TILE + i];
    }
  });
  if (grad_x) {
    for (index_t k = 0; k < B * d; ++k) {
      double s = 0.0;
      for (int q = 0; q < nthr; ++q) s += gx_part[static_cast<std::size_t>(q) * B * d + k];
      grad_x[k] = static_cast<T>(s);
    }
  }
}

#endif  // SYMKERN_PARTICLES_BODY
