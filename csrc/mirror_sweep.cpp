// Batched small-model sweeps (csrc/mirror_sweep.h; the math is symkern/mirror/sweeps.py, the
// float64 oracle symkern/backends/reference/mirror_sweeps.py).
//
// Design
// ------
// * One call runs every step of M independent models. The models are tiny (tens to a few
//   thousand parameters), so per-step overhead is everything: OpenMP over models,
//   schedule(dynamic, 1), and each model's whole trajectory runs on one thread with its
//   parameters, data and gradients in a per-thread scratch (a few KiB: stays in L1). The scratch
//   is allocated once per call, before the parallel region (so an allocation failure is a
//   Python MemoryError, never std::terminate); nothing is allocated per step.
// * Data are regenerated in-kernel from the Philox stream exactly as the reference draws them:
//   counter (index, step mod 2^32, model id, stream), normals by Box-Muller in double
//   (csrc/philox.h), then rounded to the working dtype (the reference draws float64 and
//   casts). Inputs x[b, k] at index b d + k of STREAM_DATA; label noise at index b (or i n + j
//   for the factorisation's entrywise noise) of STREAM_NOISE. A model with sigma = 0 skips its
//   noise draw: the reference's sigma * eps is then an exact zero, so the result is the same.
// * Gradients are written by hand (the same formulas as the reference). Every inner loop is a
//   unit-stride `#pragma omp simd` loop: the mlp keeps W1 transposed (d, h) so the forward and
//   the gradient run over the hidden units; the factorisation keeps a transposed copy of W
//   (k, n) for R = (U + C) W^T - A. The factorisation's and the mlp's rows are padded with zeros
//   to whole 64-byte lines (k = 15 -> 16 doubles): the short loops then have no scalar
//   remainder (measured 7.5 -> 4.0 us per model-step for 20 x 15, k = 15), and the pads stay
//   exactly zero (their gradients are zero).
// * Precision: float64 end to end for double; float32 runs accumulate in float (like the
//   torch reference run in float32) except the normals (double, then rounded).
// * tanh (mlp): tanh_d of csrc/vmath.h, a branch-free vectorisable double tanh (the Cephes
//   rational below |x| = 0.625, 1 - 2 / (e^{2|x|} + 1) above). float32 runs evaluate it in
//   double and round. Measured against std::tanh on 4e6 points of [-30, 30] and 2e6 of
//   [-1, 1] (symkern._C.mirror_sweep_tanh_errors, asserted in tests/test_mirror_sweeps.py):
//   double <= 2.3e-16 absolute, <= 4.1e-16 relative (~2 ulp); float result <= 3.0e-8
//   absolute, <= 6.0e-8 relative (the float rounding, 0.5 ulp).
// * Instruction sets: the body below is compiled three times (AVX-512, AVX2+FMA, baseline
//   x86-64) by including this file into itself under `#pragma GCC target` (the scheme of
//   csrc/particles.cpp), and picked at run time from the CPU's features, so the wheel stays
//   portable. The Philox rounds (philox2_lanes) and the Box-Muller polynomials vectorise
//   across 16 counters at a time.
//
// Performance log (float64 unless said, 300 models x 100-200 steps, one thread, CPU time per
// model-step, min of 5 calls; shared 2-core AMD EPYC with AVX-512, loadavg 2.5-7 from other
// tenants, so numbers move ~20%). Cases: rescaling d = 50, batch 8; factorisation 20 x 15,
// k = 15, label noise; mlp h = 16, d = 10, batch 16, tanh, teacher width 4.
//   first version (auto-vectorised philox.h calls, unpadded rows):
//     rescaling 2.8, factorisation 7.5, mlp 3.8 us. The per-counter Philox loop vectorised only
//     in the AVX-512 build (4 lanes); AVX2 and baseline drew normals at ~25-35 ns each.
//   1. rows padded to whole lines (no scalar remainders of the 15-long loops): factorisation
//      7.5 -> 4.0, mlp 3.8 -> 2.6.
//   2. Philox over 16 lanes with the round loop outside (philox2_lanes), 64-bit lane words on
//      AVX-512: 3.1 -> 1.8 ns per counter (Box-Muller another ~2.2 ns): rescaling 2.8 -> 1.9.
//   3. summed index outermost in the small matrix products (no store-to-load chain through the
//      accumulated row): factorisation 4.0 -> 3.1.
//   Now: rescaling 1.9-2.4 (408 normals per step: the RNG is ~all of it), factorisation 3.1-4.0
//   (float32 2.5-2.8), mlp 2.2-2.7 us. AVX2 build: ~9-10 us, the Box-Muller part of philox.h
//   did not vectorise without AVX-512DQ (its int64 -> double casts), nor did anything calling
//   exp_d / tanh_d (their NaN-keeping clamps need -fno-trapping-math to if-convert unmasked).
//   With both fixed (setup.py, philox.h; 2026-11-23, 2-core Zen 3 EPYC, AVX2 only, 2 threads,
//   wall per model-step, bench/results/cpu-epyc-avx2-2core-mirror-sweep-2026-11-23*.json):
//   rescaling 6.0 -> 2.9, mlp 5.6 -> 2.4, factorisation 6.5 -> 3.5 us.
#ifndef SYMKERN_MIRROR_SWEEP_BODY

#include "mirror_sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "isa.h"
#include "philox.h"

#define SYMKERN_MIRROR_SWEEP_BODY 1
#ifdef SYMKERN_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")
// (GCC's C++ front end does not define __AVX512F__ after `#pragma GCC target`, so the body is
// told which variant it is by SYMKERN_MIRROR_SWEEP_AVX512.)
#define SYMKERN_MIRROR_SWEEP_AVX512 1
namespace symkern::mirror_sweep::isa_avx512 {
#include "mirror_sweep.cpp"
}  // namespace symkern::mirror_sweep::isa_avx512
#undef SYMKERN_MIRROR_SWEEP_AVX512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
namespace symkern::mirror_sweep::isa_avx2 {
#include "mirror_sweep.cpp"
}  // namespace symkern::mirror_sweep::isa_avx2
#pragma GCC pop_options
#endif
namespace symkern::mirror_sweep::isa_base {
#include "mirror_sweep.cpp"
}  // namespace symkern::mirror_sweep::isa_base
#undef SYMKERN_MIRROR_SWEEP_BODY

namespace symkern::mirror_sweep {

static ::symkern::isa::Isa isa() {
  static const auto v = ::symkern::isa::detect("SYMKERN_MIRROR_SWEEP_ISA");
  return v;
}

std::string isa_name() { return ::symkern::isa::name(isa()); }

#define SYMKERN_MS_DISPATCH(call) SYMKERN_ISA_DISPATCH(isa(), call)

template <class T>
void sweep(const Problem<T>& p, std::int64_t step0, std::int64_t steps, std::int64_t record_every,
           std::int64_t lt_begin, std::int64_t lt_end) {
  if (p.M <= 0) return;
  SYMKERN_MS_DISPATCH(sweep_impl<T>(p, step0, steps, record_every, lt_begin, lt_end))
}

void tanh_errors(double lo, double hi, index_t n, double out[4]) {
  SYMKERN_MS_DISPATCH(tanh_errors_impl(lo, hi, n, out))
}

template void sweep<float>(const Problem<float>&, std::int64_t, std::int64_t, std::int64_t,
                           std::int64_t, std::int64_t);
template void sweep<double>(const Problem<double>&, std::int64_t, std::int64_t, std::int64_t,
                            std::int64_t, std::int64_t);

}  // namespace symkern::mirror_sweep

#else  // SYMKERN_MIRROR_SWEEP_BODY: the kernel body, compiled once per instruction set

namespace px = ::symkern::philox;
using ::symkern::index_t;
using ::symkern::mirror_sweep::Activation;
using ::symkern::mirror_sweep::Model;
using ::symkern::mirror_sweep::Problem;

// Philox4x32-10 of csrc/philox.h (its first two output words) on LANES counters
// (i0 + j, step, run, stream). The round loop is outside and the lanes inside, so each round is
// one straight-line SIMD block: philox.h's per-counter round loop is not unrolled before GCC's
// vectoriser runs, which then gives up on it ("control flow in loop"). The 32-bit words live in
// 64-bit lanes on AVX-512 (vpmullq multiplies 8 lanes with no widening shuffles: measured 1.8
// vs 3.1 ns per counter) and in 32-bit lanes elsewhere (AVX2 has no 64-bit multiply; the
// widening vpmuludq on 32-bit lanes: 4.5 vs 6.1 ns). Values always stay below 2^32.
constexpr int LANES = 16;
#ifdef SYMKERN_MIRROR_SWEEP_AVX512
using PhiloxWord = std::uint64_t;
#else
using PhiloxWord = std::uint32_t;
#endif

SYMKERN_ALWAYS_INLINE void philox2_lanes(std::uint32_t i0, std::uint32_t step, std::uint32_t run,
                                         std::uint32_t stream, std::uint32_t key0,
                                         std::uint32_t key1, std::uint32_t* __restrict o0,
                                         std::uint32_t* __restrict o1) {
  constexpr PhiloxWord LO = 0xFFFFFFFFu;
  alignas(64) PhiloxWord c0[LANES], c1[LANES], c2[LANES], c3[LANES];
#pragma omp simd
  for (int j = 0; j < LANES; ++j) {
    c0[j] = static_cast<std::uint32_t>(i0 + static_cast<std::uint32_t>(j));
    c1[j] = step;
    c2[j] = run;
    c3[j] = stream;
  }
  PhiloxWord k0 = key0, k1 = key1;
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
#pragma omp simd
    for (int j = 0; j < LANES; ++j) {
      const std::uint64_t p0 = static_cast<std::uint64_t>(px::M0) * (c0[j] & LO);
      const std::uint64_t p1 = static_cast<std::uint64_t>(px::M1) * (c2[j] & LO);
      const PhiloxWord n0 = static_cast<PhiloxWord>(p1 >> 32) ^ c1[j] ^ k0;
      const PhiloxWord n2 = static_cast<PhiloxWord>(p0 >> 32) ^ c3[j] ^ k1;
      c1[j] = static_cast<PhiloxWord>(p1 & 0xFFFFFFFFu);
      c3[j] = static_cast<PhiloxWord>(p0 & 0xFFFFFFFFu);
      c0[j] = n0;
      c2[j] = n2;
    }
    k0 = (k0 + px::W0) & LO;
    k1 = (k1 + px::W1) & LO;
  }
#pragma omp simd
  for (int j = 0; j < LANES; ++j) {
    o0[j] = static_cast<std::uint32_t>(c0[j]);
    o1[j] = static_cast<std::uint32_t>(c1[j]);
  }
}

// out[i] = the normal keyed by (i, step, run, stream) (Box-Muller in double), rounded to T.
template <class T>
SYMKERN_ALWAYS_INLINE void draw_normals(const px::Key key, std::uint32_t step, std::uint32_t run,
                                        std::uint32_t stream, index_t n, T* __restrict out) {
  alignas(64) std::uint32_t o0[LANES], o1[LANES];
  alignas(64) T z[LANES];
  for (index_t i0 = 0; i0 < n; i0 += LANES) {
    // the counter's index word is i mod 2^32, as in the reference
    philox2_lanes(static_cast<std::uint32_t>(i0), step, run, stream, key.k0, key.k1, o0, o1);
    const index_t len = n - i0 < LANES ? n - i0 : LANES;
    T* __restrict dst = len == LANES ? out + i0 : z;
#pragma omp simd
    for (int j = 0; j < LANES; ++j) dst[j] = static_cast<T>(px::normal_from_bits(o0[j], o1[j]));
    if (len < LANES)
      for (index_t j = 0; j < len; ++j) out[i0 + j] = z[j];
  }
}

#include "vmath.h"  // exp_d, tanh_d (this ISA's copy)

inline void tanh_errors_impl(double lo, double hi, index_t n, double out[4]) {
  double e[4] = {0.0, 0.0, 0.0, 0.0};
  for (index_t i = 0; i < n; ++i) {
    const double x = n > 1 ? lo + (hi - lo) * static_cast<double>(i) / static_cast<double>(n - 1)
                           : lo;
    const double ref = std::tanh(x);
    const double v = tanh_d(x);
    const double vf = static_cast<double>(static_cast<float>(v));
    const double scale = std::fabs(ref) > 0.0 ? std::fabs(ref) : 1.0;
    e[0] = std::max(e[0], std::fabs(v - ref));
    e[1] = std::max(e[1], std::fabs(v - ref) / scale);
    e[2] = std::max(e[2], std::fabs(vf - ref));
    e[3] = std::max(e[3], std::fabs(vf - ref) / scale);
  }
  for (int j = 0; j < 4; ++j) out[j] = e[j];
}

// Scratch carving, one source of truth for the size (base == nullptr: only count) and the
// pointers. Every buffer starts on a 64-byte boundary and spans whole 64-byte lines.
template <class T>
struct Carve {
  static constexpr index_t VW = 64 / static_cast<index_t>(sizeof(T));  // elements per line
  T* base = nullptr;
  index_t used = 0;
  static index_t pad(index_t n) { return (n + VW - 1) / VW * VW; }
  T* take(index_t n) {
    T* r = base ? base + used : nullptr;
    used += pad(n);
    return r;
  }
};

// What every model's trajectory shares: its id, hyperparameters, the step range.
template <class T>
struct Run {
  index_t mi;
  px::Key key;
  std::uint32_t run;
  T gamma, eta, sigma;
  std::int64_t step0, record_every;
  std::int64_t lt_begin, lt_end;  // the call's steps this chunk runs (mirror_sweep.h)
  T* losses;                      // row mi of (M, S)

  // parameter array i to start from: the call's input, or the chunk before's output
  const T* input(const Problem<T>& p, int i) const {
    return lt_begin > 0 ? p.params_out[i] : p.params_in[i];
  }

  SYMKERN_ALWAYS_INLINE std::uint32_t counter(std::int64_t lt) const {
    return static_cast<std::uint32_t>(static_cast<std::uint64_t>(step0 + lt));
  }
  SYMKERN_ALWAYS_INLINE void record(std::int64_t lt, T loss) const {
    if ((lt + 1) % record_every == 0) losses[(lt + 1) / record_every - 1] = loss;
  }
};

// --- rescaling ---------------------------------------------------------------------------------
// theta = u * w; batch B: l = mean_b (x_b . (theta - beta) - sigma eps_b)^2,
// g = (2/B) sum_b x_b r_b; B = 0: l = |theta - beta|^2 + sigma^2, g = 2 (theta - beta).
// u <- u - eta (g w + 2 gamma u), w <- w - eta (g u + 2 gamma w).
// (Unpadded: the work is the B d normals; the loops over d are short next to them.)
template <class T>
struct RescalingBufs {
  T *u, *w, *delta, *g, *x, *eps, *r;
  RescalingBufs(const Problem<T>& p, Carve<T>& c) {
    const index_t d = p.d, B = p.batch;
    u = c.take(d);
    w = c.take(d);
    delta = c.take(d);
    g = c.take(d);
    x = c.take(B * d);
    eps = c.take(B);
    r = c.take(B);
  }
};

template <class T>
void train_rescaling(const Problem<T>& p, const Run<T>& run, T* ws) {
  Carve<T> c{ws};
  const RescalingBufs<T> bf(p, c);
  const index_t d = p.d, B = p.batch, mi = run.mi;
  T* __restrict u = bf.u;
  T* __restrict w = bf.w;
  T* __restrict delta = bf.delta;
  T* __restrict g = bf.g;
  T* __restrict x = bf.x;
  T* __restrict eps = bf.eps;
  T* __restrict r = bf.r;
  std::memcpy(u, run.input(p, 0) + mi * d, sizeof(T) * d);
  std::memcpy(w, run.input(p, 1) + mi * d, sizeof(T) * d);
  const T* __restrict beta = p.target[0] + mi * d;
  const T eta = run.eta, two_gamma = T(2) * run.gamma, sigma = run.sigma;
  for (std::int64_t lt = run.lt_begin; lt < run.lt_end; ++lt) {
#pragma omp simd
    for (index_t k = 0; k < d; ++k) delta[k] = u[k] * w[k] - beta[k];
    T loss = T(0);
    if (B == 0) {
#pragma omp simd reduction(+ : loss)
      for (index_t k = 0; k < d; ++k) {
        loss += delta[k] * delta[k];
        g[k] = T(2) * delta[k];
      }
      loss += sigma * sigma;
    } else {
      const std::uint32_t t = run.counter(lt);
      draw_normals(run.key, t, run.run, px::STREAM_DATA, B * d, x);
      if (sigma != T(0)) draw_normals(run.key, t, run.run, px::STREAM_NOISE, B, eps);
      for (index_t b = 0; b < B; ++b) {
        const T* __restrict xb = x + b * d;
        T acc = T(0);
#pragma omp simd reduction(+ : acc)
        for (index_t k = 0; k < d; ++k) acc += xb[k] * delta[k];
        r[b] = sigma != T(0) ? acc - sigma * eps[b] : acc;
        loss += r[b] * r[b];
      }
      loss /= static_cast<T>(B);
#pragma omp simd
      for (index_t k = 0; k < d; ++k) g[k] = T(0);
      for (index_t b = 0; b < B; ++b) {
        const T* __restrict xb = x + b * d;
        const T rb = r[b];
#pragma omp simd
        for (index_t k = 0; k < d; ++k) g[k] += xb[k] * rb;
      }
      const T scale = T(2) / static_cast<T>(B);
#pragma omp simd
      for (index_t k = 0; k < d; ++k) g[k] *= scale;
    }
    run.record(lt, loss);
#pragma omp simd
    for (index_t k = 0; k < d; ++k) {
      const T uk = u[k], wk = w[k];
      u[k] = uk - eta * (g[k] * wk + two_gamma * uk);
      w[k] = wk - eta * (g[k] * uk + two_gamma * wk);
    }
  }
  std::memcpy(p.params_out[0] + mi * d, u, sizeof(T) * d);
  std::memcpy(p.params_out[1] + mi * d, w, sizeof(T) * d);
}

// --- factorization -----------------------------------------------------------------------------
// Ue = U + C; R = Ue W^T - A - sigma Xi_t; l = |R|_F^2;
// U <- U - eta (2 R W + 2 gamma U), W <- W - eta (2 R^T Ue + 2 gamma W).
// Rows are padded to whole 64-byte lines (kp = pad(k), np = pad(n)) with zeros, so every inner
// loop runs over whole vectors with no scalar remainder; the pads stay exactly zero (the
// gradient of a zero column of U, W, A, C is zero).
template <class T>
struct FactorizationBufs {
  index_t kp, np;
  T *U, *Ue, *gU, *Cp, *W, *gW, *WT, *R, *Ap, *xi;
  FactorizationBufs(const Problem<T>& p, Carve<T>& c) {
    const index_t m = p.m, n = p.n, k = p.k;
    kp = Carve<T>::pad(k);
    np = Carve<T>::pad(n);
    U = c.take(m * kp);
    Ue = c.take(m * kp);
    gU = c.take(m * kp);
    Cp = c.take(m * kp);
    W = c.take(n * kp);
    gW = c.take(n * kp);
    WT = c.take(k * np);
    R = c.take(m * np);
    Ap = c.take(m * np);
    xi = c.take(m * n);
  }
};

// dst (rows, ld) <- src (rows, cols) with zero pads.
template <class T>
SYMKERN_ALWAYS_INLINE void load_padded(const T* __restrict src, index_t rows, index_t cols,
                                       T* __restrict dst, index_t ld) {
  for (index_t i = 0; i < rows; ++i) {
    std::memcpy(dst + i * ld, src + i * cols, sizeof(T) * cols);
    for (index_t j = cols; j < ld; ++j) dst[i * ld + j] = T(0);
  }
}

template <class T>
SYMKERN_ALWAYS_INLINE void store_unpadded(const T* __restrict src, index_t ld, index_t rows,
                                          index_t cols, T* __restrict dst) {
  for (index_t i = 0; i < rows; ++i) std::memcpy(dst + i * cols, src + i * ld, sizeof(T) * cols);
}

template <class T>
void train_factorization(const Problem<T>& p, const Run<T>& run, T* ws) {
  Carve<T> c{ws};
  const FactorizationBufs<T> bf(p, c);
  const index_t m = p.m, n = p.n, k = p.k, mi = run.mi, kp = bf.kp, np = bf.np;
  T* __restrict U = bf.U;
  T* __restrict gU = bf.gU;
  T* __restrict W = bf.W;
  T* __restrict gW = bf.gW;
  T* __restrict WT = bf.WT;
  T* __restrict R = bf.R;
  T* __restrict Ap = bf.Ap;
  T* __restrict xi = bf.xi;
  load_padded(run.input(p, 0) + mi * m * k, m, k, U, kp);
  load_padded(run.input(p, 1) + mi * n * k, n, k, W, kp);
  load_padded(p.target[0] + mi * m * n, m, n, Ap, np);
  for (index_t i = 0; i < k * np; ++i) WT[i] = T(0);
  const bool has_offset = p.offset != nullptr;
  if (has_offset) load_padded(p.offset + mi * m * k, m, k, bf.Cp, kp);
  T* __restrict Cp = bf.Cp;
  // without an offset Ue is U itself
  T* __restrict Ue = has_offset ? bf.Ue : bf.U;
  const T eta = run.eta, two_gamma = T(2) * run.gamma, sigma = run.sigma;
  for (std::int64_t lt = run.lt_begin; lt < run.lt_end; ++lt) {
    if (has_offset) {
#pragma omp simd
      for (index_t i = 0; i < m * kp; ++i) Ue[i] = U[i] + Cp[i];
    }
    for (index_t j = 0; j < n; ++j)
      for (index_t l = 0; l < k; ++l) WT[l * np + j] = W[j * kp + l];
    // R = Ue W^T - A. The sum over l is the outer loop, so consecutive row updates touch
    // different rows of R (no store-to-load dependency chain between them).
#pragma omp simd
    for (index_t i = 0; i < m * np; ++i) R[i] = -Ap[i];
    for (index_t l = 0; l < k; ++l) {
      const T* __restrict WTl = WT + l * np;
      for (index_t i = 0; i < m; ++i) {
        const T cil = Ue[i * kp + l];
        T* __restrict Ri = R + i * np;
#pragma omp simd
        for (index_t j = 0; j < np; ++j) Ri[j] += cil * WTl[j];
      }
    }
    if (sigma != T(0)) {
      draw_normals(run.key, run.counter(lt), run.run, px::STREAM_NOISE, m * n, xi);
      for (index_t i = 0; i < m; ++i) {
        T* __restrict Ri = R + i * np;
        const T* __restrict xii = xi + i * n;
#pragma omp simd
        for (index_t j = 0; j < n; ++j) Ri[j] -= sigma * xii[j];
      }
    }
    T loss = T(0);
#pragma omp simd reduction(+ : loss)
    for (index_t i = 0; i < m * np; ++i) loss += R[i] * R[i];
    run.record(lt, loss);
    // gU = R W (row i = sum_j R[i, j] W[j, :]); gW = R^T Ue (row j = sum_i R[i, j] Ue[i, :]).
    // Each in its own loop nest with the summed index outside, for the same reason as R.
#pragma omp simd
    for (index_t i = 0; i < m * kp; ++i) gU[i] = T(0);
#pragma omp simd
    for (index_t i = 0; i < n * kp; ++i) gW[i] = T(0);
    for (index_t j = 0; j < n; ++j) {
      const T* __restrict Wj = W + j * kp;
      for (index_t i = 0; i < m; ++i) {
        const T rij = R[i * np + j];
        T* __restrict gUi = gU + i * kp;
#pragma omp simd
        for (index_t l = 0; l < kp; ++l) gUi[l] += rij * Wj[l];
      }
    }
    for (index_t i = 0; i < m; ++i) {
      const T* __restrict Uei = Ue + i * kp;
      for (index_t j = 0; j < n; ++j) {
        const T rij = R[i * np + j];
        T* __restrict gWj = gW + j * kp;
#pragma omp simd
        for (index_t l = 0; l < kp; ++l) gWj[l] += rij * Uei[l];
      }
    }
#pragma omp simd
    for (index_t i = 0; i < m * kp; ++i) U[i] -= eta * (T(2) * gU[i] + two_gamma * U[i]);
#pragma omp simd
    for (index_t i = 0; i < n * kp; ++i) W[i] -= eta * (T(2) * gW[i] + two_gamma * W[i]);
  }
  store_unpadded(U, kp, m, k, p.params_out[0] + mi * m * k);
  store_unpadded(W, kp, n, k, p.params_out[1] + mi * n * k);
}

// --- mlp ---------------------------------------------------------------------------------------
// f(x) = sum_i a_i phi(W1_i . x + b1_i); y = f_teacher(x) + sigma eps; r = f - y;
// l = mean_b r_b^2; with gf = (2/B) r, gz = gf a phi'(z):
// W1 <- W1 - eta (gz^T x + 2 gamma W1), b1 <- b1 - eta (sum_b gz + 2 gamma b1),
// a <- a - eta (phi(z)^T gf + 2 gamma a).
// W1 is kept transposed (d, hp) so the forward and the gradient run over the hidden units;
// hidden widths are padded to whole lines (hp, htp) with zero weights, biases and output
// weights: a padded unit has phi(0) = 0 and a zero gradient, so it stays zero.
template <class T>
struct MlpBufs {
  index_t hp, htp;
  T *W1T, *gW1T, *tW1T, *b1, *a, *gb1, *ga, *tb1, *ta, *x, *eps, *y, *gf, *Z, *DS, *Zt;
  MlpBufs(const Problem<T>& p, Carve<T>& c) {
    const index_t d = p.d, B = p.batch;
    hp = Carve<T>::pad(p.h);
    htp = Carve<T>::pad(p.ht);
    W1T = c.take(d * hp);
    gW1T = c.take(d * hp);
    tW1T = c.take(d * htp);
    b1 = c.take(hp);
    a = c.take(hp);
    gb1 = c.take(hp);
    ga = c.take(hp);
    tb1 = c.take(htp);
    ta = c.take(htp);
    x = c.take(B * d);
    eps = c.take(B);
    y = c.take(B);
    gf = c.take(B);
    Z = c.take(B * hp);   // phi(z) after activate()
    DS = c.take(B * hp);  // phi'(z), then gz
    Zt = c.take(B * htp);
  }
};

// Z[b, :] = b1 + x_b W1^T over a (d, hh) transposed weight: unit stride over the hidden units;
// the sum over inputs is the outer loop, so consecutive row updates touch different rows of Z.
template <class T>
SYMKERN_ALWAYS_INLINE void preactivations(const T* __restrict x, index_t B, index_t d,
                                          const T* __restrict WT, const T* __restrict bias,
                                          index_t hh, T* __restrict Z) {
  for (index_t b = 0; b < B; ++b) {
    T* __restrict Zb = Z + b * hh;
#pragma omp simd
    for (index_t i = 0; i < hh; ++i) Zb[i] = bias[i];
  }
  for (index_t kk = 0; kk < d; ++kk) {
    const T* __restrict Wk = WT + kk * hh;
    for (index_t b = 0; b < B; ++b) {
      const T c = x[b * d + kk];
      T* __restrict Zb = Z + b * hh;
#pragma omp simd
      for (index_t i = 0; i < hh; ++i) Zb[i] += c * Wk[i];
    }
  }
}

// Z <- phi(Z); with_derivative: dphi <- phi'(Z) (tanh: 1 - phi^2; relu: [Z > 0]).
template <class T, bool with_derivative>
SYMKERN_ALWAYS_INLINE void activate(Activation act, index_t len, T* __restrict Z,
                                    T* __restrict dphi) {
  if (act == Activation::tanh) {
#pragma omp simd
    for (index_t i = 0; i < len; ++i) {
      const T s = static_cast<T>(tanh_d(static_cast<double>(Z[i])));
      Z[i] = s;
      if constexpr (with_derivative) dphi[i] = T(1) - s * s;
    }
  } else {
#pragma omp simd
    for (index_t i = 0; i < len; ++i) {
      const T z = Z[i];
      Z[i] = z < T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu
      if constexpr (with_derivative) dphi[i] = z > T(0) ? T(1) : T(0);
    }
  }
}

// dst (cols, ld) <- src (rows, cols)^T with zero pads in each row of dst.
template <class T>
SYMKERN_ALWAYS_INLINE void load_transposed(const T* __restrict src, index_t rows, index_t cols,
                                           T* __restrict dst, index_t ld) {
  for (index_t i = 0; i < cols * ld; ++i) dst[i] = T(0);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) dst[c * ld + r] = src[r * cols + c];
}

template <class T>
void train_mlp(const Problem<T>& p, const Run<T>& run, T* ws) {
  Carve<T> c{ws};
  const MlpBufs<T> bf(p, c);
  const index_t d = p.d, h = p.h, ht = p.ht, B = p.batch, mi = run.mi;
  const index_t hp = bf.hp, htp = bf.htp;
  T* __restrict W1T = bf.W1T;
  T* __restrict gW1T = bf.gW1T;
  T* __restrict b1 = bf.b1;
  T* __restrict a = bf.a;
  T* __restrict gb1 = bf.gb1;
  T* __restrict ga = bf.ga;
  T* __restrict x = bf.x;
  T* __restrict eps = bf.eps;
  T* __restrict y = bf.y;
  T* __restrict gf = bf.gf;
  T* __restrict Z = bf.Z;
  T* __restrict DS = bf.DS;
  T* __restrict Zt = bf.Zt;
  const T* __restrict tW1T = bf.tW1T;
  const T* __restrict tb1 = bf.tb1;
  const T* __restrict ta = bf.ta;
  load_transposed(run.input(p, 0) + mi * h * d, h, d, W1T, hp);
  load_padded(run.input(p, 1) + mi * h, 1, h, b1, hp);
  load_padded(run.input(p, 2) + mi * h, 1, h, a, hp);
  load_transposed(p.target[0] + mi * ht * d, ht, d, bf.tW1T, htp);
  load_padded(p.target[1] + mi * ht, 1, ht, bf.tb1, htp);
  load_padded(p.target[2] + mi * ht, 1, ht, bf.ta, htp);
  const Activation act = p.activation;
  const T eta = run.eta, two_gamma = T(2) * run.gamma, sigma = run.sigma;
  const T two_over_B = T(2) / static_cast<T>(B);
  for (std::int64_t lt = run.lt_begin; lt < run.lt_end; ++lt) {
    const std::uint32_t t = run.counter(lt);
    draw_normals(run.key, t, run.run, px::STREAM_DATA, B * d, x);
    if (sigma != T(0)) draw_normals(run.key, t, run.run, px::STREAM_NOISE, B, eps);
    // teacher labels
    preactivations(x, B, d, tW1T, tb1, htp, Zt);
    activate<T, false>(act, B * htp, Zt, nullptr);
    for (index_t b = 0; b < B; ++b) {
      const T* __restrict sb = Zt + b * htp;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (index_t j = 0; j < htp; ++j) acc += ta[j] * sb[j];
      y[b] = sigma != T(0) ? acc + sigma * eps[b] : acc;
    }
    // student forward, residuals
    preactivations(x, B, d, W1T, b1, hp, Z);
    activate<T, true>(act, B * hp, Z, DS);
    T loss = T(0);
    for (index_t b = 0; b < B; ++b) {
      const T* __restrict sb = Z + b * hp;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (index_t i = 0; i < hp; ++i) acc += a[i] * sb[i];
      const T rb = acc - y[b];
      loss += rb * rb;
      gf[b] = two_over_B * rb;
    }
    run.record(lt, loss / static_cast<T>(B));
    // backward: gz = gf a phi'(z) (in DS), then the gradients
#pragma omp simd
    for (index_t i = 0; i < hp; ++i) {
      gb1[i] = T(0);
      ga[i] = T(0);
    }
#pragma omp simd
    for (index_t i = 0; i < d * hp; ++i) gW1T[i] = T(0);
    for (index_t b = 0; b < B; ++b) {
      T* __restrict gzb = DS + b * hp;
      const T* __restrict sb = Z + b * hp;
      const T gfb = gf[b];
#pragma omp simd
      for (index_t i = 0; i < hp; ++i) {
        gzb[i] = gfb * a[i] * gzb[i];
        gb1[i] += gzb[i];
        ga[i] += sb[i] * gfb;
      }
      const T* __restrict xb = x + b * d;
      for (index_t kk = 0; kk < d; ++kk) {
        const T xk = xb[kk];
        T* __restrict gk = gW1T + kk * hp;
#pragma omp simd
        for (index_t i = 0; i < hp; ++i) gk[i] += xk * gzb[i];
      }
    }
#pragma omp simd
    for (index_t i = 0; i < d * hp; ++i) W1T[i] -= eta * (gW1T[i] + two_gamma * W1T[i]);
#pragma omp simd
    for (index_t i = 0; i < hp; ++i) {
      b1[i] -= eta * (gb1[i] + two_gamma * b1[i]);
      a[i] -= eta * (ga[i] + two_gamma * a[i]);
    }
  }
  T* __restrict W1out = p.params_out[0] + mi * h * d;
  for (index_t i = 0; i < h; ++i)
    for (index_t kk = 0; kk < d; ++kk) W1out[i * d + kk] = W1T[kk * hp + i];
  std::memcpy(p.params_out[1] + mi * h, b1, sizeof(T) * h);
  std::memcpy(p.params_out[2] + mi * h, a, sizeof(T) * h);
}

// --- driver ------------------------------------------------------------------------------------

template <class T>
index_t scratch_elems(const Problem<T>& p) {
  Carve<T> c;
  switch (p.model) {
    case Model::rescaling:
      RescalingBufs<T>{p, c};
      break;
    case Model::factorization:
      FactorizationBufs<T>{p, c};
      break;
    case Model::mlp:
      MlpBufs<T>{p, c};
      break;
  }
  return c.used;
}

template <class T>
void sweep_impl(const Problem<T>& p, std::int64_t step0, std::int64_t steps,
                std::int64_t record_every, std::int64_t lt_begin, std::int64_t lt_end) {
  const int threads = static_cast<int>(std::min<index_t>(::symkern::max_threads(), p.M));
  // One 64-byte-aligned slice per thread, plus one spare line between slices so no two threads
  // write the same cache line. Allocated here, outside the parallel region: a failure is a
  // std::bad_alloc the binding turns into MemoryError, never std::terminate.
  const index_t slice = scratch_elems(p) + Carve<T>::VW;
  std::vector<T> scratch(static_cast<std::size_t>(slice * threads + Carve<T>::VW));
  const auto addr = reinterpret_cast<std::uintptr_t>(scratch.data());
  T* const base = scratch.data() + ((64 - addr % 64) % 64) / sizeof(T);
  const px::Key key(p.seed);
  const index_t S = steps / record_every;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#ifdef SYMKERN_WITH_OPENMP
    T* ws = base + slice * omp_get_thread_num();
#else
    T* ws = base;
#endif
#pragma omp for schedule(dynamic, 1)
    for (index_t mi = 0; mi < p.M; ++mi) {
      const Run<T> run{mi,       key,      static_cast<std::uint32_t>(p.model_ids[mi]),
                       p.gamma[mi], p.eta[mi], p.noise[mi], step0, record_every, lt_begin, lt_end,
                       p.losses + mi * S};
      switch (p.model) {
        case Model::rescaling:
          train_rescaling(p, run, ws);
          break;
        case Model::factorization:
          train_factorization(p, run, ws);
          break;
        case Model::mlp:
          train_mlp(p, run, ws);
          break;
      }
    }
  }
}

#endif  // SYMKERN_MIRROR_SWEEP_BODY
