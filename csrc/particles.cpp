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
// * Threads: OpenMP over runs. Optionally (SYMKERN_PARTICLES_TEAM_MIN_N=n, off by default — see
//   team_min_particles) for R < threads and N >= n the threads split a run's particles (a team)
//   and meet at one barrier per step, where the partial
//   sums over particles are combined in a fixed order (double-buffered, so one barrier suffices;
//   the result does not depend on timing).
// * Activations. float64: std::exp / std::tanh (trajectories match the float64 torch reference
//   to ~1e-12). float32: branch-free vectorisable approximations (exp by 2^n * degree-7 Taylor on
//   [-ln2/2, ln2/2] with Cody-Waite reduction; tanh by an odd Taylor polynomial for |u| < 0.5 and
//   1 - 2/(e^{2|u|} + 1) above). Measured max error of the float32 result against double libm
//   on 4e6 points of [-87, 87] and 2e6 of [-1, 1] (symkern._C.particle_activation_errors):
//   sigmoid <= 9.0e-8 absolute, <= 1.5e-7 relative; tanh <= 9.2e-8 absolute, <= 1.9e-7 relative
//   (i.e. ~1-3 float32 ulp). Below u = -87 the sigmoid is clamped (absolute error < 2e-38).
// * Random numbers: csrc/philox.h, double-precision Box-Muller with own vectorisable ln/cos.
// * Instruction sets: the kernel body below is compiled three times (AVX-512, AVX2+FMA,
//   baseline x86-64) by including this file into itself under `#pragma GCC target`, and
//   dispatched at run time on the CPU's features — the wheel stays portable (no -march=native).
#ifndef SYMKERN_PARTICLES_BODY

#include "particles.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "philox.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

namespace symkern::particles {
enum class Isa { baseline = 0, avx2 = 1, avx512 = 2 };
}

#define SYMKERN_PARTICLES_BODY 1
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define SYMKERN_PARTICLES_MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")
namespace symkern::particles::isa_avx512 {
#include "particles.cpp"
}  // namespace symkern::particles::isa_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
namespace symkern::particles::isa_avx2 {
#include "particles.cpp"
}  // namespace symkern::particles::isa_avx2
#pragma GCC pop_options
#endif
namespace symkern::particles::isa_base {
#include "particles.cpp"
}  // namespace symkern::particles::isa_base
#undef SYMKERN_PARTICLES_BODY

namespace symkern::particles {

static Isa detect_isa() {
  Isa best = Isa::baseline;
#ifdef SYMKERN_PARTICLES_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    best = Isa::avx512;
#endif
  if (const char* env = std::getenv("SYMKERN_PARTICLES_ISA")) {
    const std::string s(env);
    Isa want = best;
    if (s == "baseline") want = Isa::baseline;
    if (s == "avx2") want = Isa::avx2;
    if (s == "avx512") want = Isa::avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

static Isa isa() {
  static const Isa v = detect_isa();
  return v;
}

std::string isa_name() {
  switch (isa()) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

#ifdef SYMKERN_PARTICLES_MULTI_ISA
#define SYMKERN_DISPATCH(call)                              \
  switch (isa()) {                                          \
    case Isa::avx512:                                       \
      return isa_avx512::call;                              \
    case Isa::avx2:                                         \
      return isa_avx2::call;                                \
    default:                                                \
      return isa_base::call;                                \
  }
#else
#define SYMKERN_DISPATCH(call) return isa_base::call;
#endif

template <class T>
void particle_steps(const Problem<T>& p, const T* theta_in, index_t R, index_t N, T* theta_out,
                    T* snaps, T* losses, std::int64_t step0, std::int64_t steps,
                    std::int64_t snapshot_every) {
  SYMKERN_DISPATCH(steps_impl<T>(p, theta_in, R, N, theta_out, snaps, losses, step0, steps,
                                 snapshot_every))
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

void activation_errors(double lo, double hi, index_t n, double out[4]) {
  SYMKERN_DISPATCH(activation_errors_impl(lo, hi, n, out))
}

void philox4x32_batch(const std::uint32_t* ctr, index_t n, std::uint32_t k0, std::uint32_t k1,
                      std::uint32_t* out) {
  for (index_t i = 0; i < n; ++i)
    philox::philox4x32(ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3], k0, k1,
                       out + 4 * i);
}

template void particle_steps<float>(const Problem<float>&, const float*, index_t, index_t, float*,
                                    float*, float*, std::int64_t, std::int64_t, std::int64_t);
template void particle_steps<double>(const Problem<double>&, const double*, index_t, index_t,
                                     double*, double*, double*, std::int64_t, std::int64_t,
                                     std::int64_t);
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

constexpr index_t TILE = 256;  // particles per tile: scratch rows of TILE stay in L1

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
SYMKERN_ALWAYS_INLINE double sigmoid_t(double u) { return 1.0 / (1.0 + std::exp(-u)); }

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
SYMKERN_ALWAYS_INLINE double tanh_t(double u) { return std::tanh(u); }

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
    h = u > T(0) ? u : T(0);
    hp = u > T(0) ? T(1) : T(0);
  }
};

template <class F>
inline void with_act(int code, F&& f) {
  if (code == 0) f(ActTanh{});
  else if (code == 1) f(ActSigmoid{});
  else f(ActRelu{});
}

template <class T>
inline T act_value(int code, T u) {
  T h, hp;
  if (code == 0) ActTanh::eval(u, h, hp);
  else if (code == 1) ActSigmoid::eval(u, h, hp);
  else ActRelu::eval(u, h, hp);
  return h;
}

inline void activation_errors_impl(double lo, double hi, index_t n, double out[4]) {
  double e[4] = {0, 0, 0, 0};
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
}

// ---- random numbers -----------------------------------------------------------------------------

#if defined(__AVX512F__)
// Philox4x32-10 on 16 counters at once (first two output words). GCC vectorises the scalar
// version with 64-bit vpmullq and lane shuffles; this uses vpmuludq on even / odd lanes and a
// three-way XOR per word (vpternlogd): ~2x faster.
SYMKERN_ALWAYS_INLINE void philox2_x16(__m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                       std::uint32_t k0, std::uint32_t k1, __m512i& o0,
                                       __m512i& o1) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(::symkern::philox::M0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(::symkern::philox::M1));
  for (int round = 0; round < 10; ++round) {
    const __m512i ke = _mm512_set1_epi32(static_cast<int>(k0));
    const __m512i ko = _mm512_set1_epi32(static_cast<int>(k1));
    const __m512i pe0 = _mm512_mul_epu32(m0, c0);
    const __m512i po0 = _mm512_mul_epu32(m0, _mm512_srli_epi64(c0, 32));
    const __m512i pe1 = _mm512_mul_epu32(m1, c2);
    const __m512i po1 = _mm512_mul_epu32(m1, _mm512_srli_epi64(c2, 32));
    const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe0, 32), po0);
    const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, pe0, _mm512_slli_epi64(po0, 32));
    const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe1, 32), po1);
    const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, pe1, _mm512_slli_epi64(po1, 32));
    c0 = _mm512_ternarylogic_epi32(hi1, c1, ke, 0x96);
    c1 = lo1;
    c2 = _mm512_ternarylogic_epi32(hi0, c3, ko, 0x96);
    c3 = lo0;
    k0 += ::symkern::philox::W0;
    k1 += ::symkern::philox::W1;
  }
  o0 = c0;
  o1 = c1;
}
#endif

// out[i] = normal keyed by (idx0 + i, step, run, stream).
inline void normals(const ::symkern::philox::Key key, std::uint32_t step, std::uint32_t run,
                    std::uint32_t stream, std::uint64_t idx0, index_t n, double* __restrict out) {
  const std::uint32_t k0 = key.k0, k1 = key.k1;
  index_t i0 = 0;
#if defined(__AVX512F__)
  {
    alignas(64) std::uint32_t a0[16], a1[16];
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i vs = _mm512_set1_epi32(static_cast<int>(step));
    const __m512i vr = _mm512_set1_epi32(static_cast<int>(run));
    const __m512i vq = _mm512_set1_epi32(static_cast<int>(stream));
    for (; i0 + 16 <= n; i0 += 16) {
      const __m512i c0 = _mm512_add_epi32(
          _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(idx0 + i0))), iota);
      __m512i o0, o1;
      philox2_x16(c0, vs, vr, vq, k0, k1, o0, o1);
      _mm512_store_si512(reinterpret_cast<__m512i*>(a0), o0);
      _mm512_store_si512(reinterpret_cast<__m512i*>(a1), o1);
      double* __restrict o = out + i0;
#pragma omp simd
      for (int j = 0; j < 16; ++j) o[j] = ::symkern::philox::normal_from_bits(a0[j], a1[j]);
    }
  }
#endif
#pragma omp simd
  for (index_t i = i0; i < n; ++i) {
    std::uint32_t o0, o1;
    ::symkern::philox::philox2(static_cast<std::uint32_t>(idx0 + static_cast<std::uint64_t>(i)),
                               step, run, stream, k0, k1, o0, o1);
    out[i] = ::symkern::philox::normal_from_bits(o0, o1);
  }
}

// ---- the multi-step kernel --------------------------------------------------------------------

template <class T>
struct Ctx {
  const Problem<T>* p;
  const T* theta_in;
  index_t R, N;
  T* theta_out;
  T* snaps;
  T* losses;
  std::int64_t step0, steps, every, S;
  index_t Emax;  // effective inputs per step, max over runs
  index_t nA;    // stored derivative arrays per effective input
};

template <class T>
struct Work {
  index_t cap = 0;
  std::vector<T> th, tht, act, u, tmp, gbuf, g2, nzT, xip, x, y, xe, ye, r;
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
    xe.assign(cx.Emax * p.d, T(0));
    ye.assign(cx.Emax * p.c, T(0));
    r.assign(cx.Emax * p.c, T(0));
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

// Teacher label y_b = sum_m w_m sigma*(x_b, teacher_m), in T like the reference.
template <class T>
inline void teacher_labels(const Problem<T>& p, index_t r, const T* x, T* y) {
  const index_t B = p.batch, c = p.c, d = p.d, D = p.D, M = p.M;
  const T* tch = p.teacher + r * M * D;
  const T* tw = p.teacher_w + r * M;
  for (index_t b = 0; b < B; ++b) {
    const T* xb = x + b * d;
    for (index_t k = 0; k < c; ++k) y[b * c + k] = T(0);
    for (index_t m = 0; m < M; ++m) {
      const T* z = tch + m * D;
      if (p.unit_code == 0) {
        for (index_t k = 0; k < c; ++k) {
          T u = T(0);
          for (index_t j = 0; j < d; ++j) u += z[k * d + j] * xb[j];
          y[b * c + k] += tw[m] * sigmoid_t(u);
        }
      } else {
        T u = z[c + d];
        for (index_t j = 0; j < d; ++j) u += z[c + j] * xb[j];
        const T h = act_value(p.activation_code, u);
        for (index_t k = 0; k < c; ++k) y[b * c + k] += tw[m] * (z[k] * h);
      }
    }
  }
}

// Pass 1 on one tile: Phi accumulators and stored derivatives. thf: forward particles (SoA,
// leading dimension cap), offset i_s, m particles.
template <class T, class Act>
inline void pass1_standard(const Problem<T>& p, index_t E, const T* xe, const T* thf, index_t cap,
                           index_t i_s, index_t m, T* actp, T* __restrict u, double* phi) {
  const index_t c = p.c, d = p.d;
  const T* __restrict bias = thf + (c + d) * cap + i_s;
  for (index_t e = 0; e < E; ++e) {
    const T* xr = xe + e * d;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) u[i] = bias[i];
    for (index_t j = 0; j < d; ++j) {
      const T xj = xr[j];
      const T* __restrict w = thf + (c + j) * cap + i_s;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) u[i] += xj * w[i];
    }
    T* __restrict h = actp + (2 * e) * TILE;
    T* __restrict hp = actp + (2 * e + 1) * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) Act::eval(u[i], h[i], hp[i]);
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

template <class T>
inline void pass2_standard(const Problem<T>& p, index_t E, const T* xe, const T* r,
                           const T* thf, index_t cap, index_t i_s, index_t m, const T* actp,
                           T* __restrict tmp, T* __restrict gbuf) {
  const index_t c = p.c, d = p.d, D = p.D;
  for (index_t q = 0; q < D; ++q) {
    T* __restrict g = gbuf + q * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) g[i] = T(0);
  }
  T* __restrict gb = gbuf + (c + d) * TILE;
  for (index_t e = 0; e < E; ++e) {
    const T* __restrict h = actp + (2 * e) * TILE;
    const T* __restrict hp = actp + (2 * e + 1) * TILE;
#pragma omp simd
    for (index_t i = 0; i < m; ++i) tmp[i] = T(0);
    for (index_t k = 0; k < c; ++k) {
      const T rk = r[e * c + k];
      const T* __restrict a = thf + k * cap + i_s;
      T* __restrict ga = gbuf + k * TILE;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) {
        tmp[i] += rk * a[i];
        ga[i] += rk * h[i];
      }
    }
#pragma omp simd
    for (index_t i = 0; i < m; ++i) {
      tmp[i] *= hp[i];
      gb[i] += tmp[i];
    }
    for (index_t j = 0; j < d; ++j) {
      const T xj = xe[e * d + j];
      T* __restrict g = gbuf + (c + j) * TILE;
#pragma omp simd
      for (index_t i = 0; i < m; ++i) g[i] += tmp[i] * xj;
    }
  }
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
  const index_t E = (sch == 1 || sch == 3) ? G * B : B;
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

  for (index_t i = 0; i < n; ++i)
    for (index_t q = 0; q < D; ++q) th[q * cap + i] = cx.theta_in[((r * N) + i0 + i) * D + q];

  for (std::int64_t lt = 0; lt < cx.steps; ++lt) {
    const std::int64_t t = cx.step0 + lt;
    const std::uint32_t ut = static_cast<std::uint32_t>(t);
    // ---- data
    T* x = w.x.data();
    T* y = w.y.data();
    if (p.x_data) {
      const T* xs = p.x_data + ((lt * cx.R + r) * B) * d;
      const T* ys = p.y_data + ((lt * cx.R + r) * B) * c;
      std::copy(xs, xs + B * d, x);
      std::copy(ys, ys + B * c, y);
    } else {
      normals(key, ut, runid, px::STREAM_DATA, 0, B * d, w.xd.data());
      for (index_t k = 0; k < B * d; ++k) x[k] = static_cast<T>(p.sigma_pi * w.xd[k]);
      teacher_labels(p, r, x, y);
    }
    // ---- effective inputs
    T* xe = w.xe.data();
    T* ye = w.ye.data();
    if (sch == 0 || sch == 4) {
      std::copy(x, x + B * d, xe);
      std::copy(y, y + B * c, ye);
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
    // ---- EA: forward particles P theta
    if (ea) apply_dxd(P, false, D, th, cap, tht, cap, n);
    // ---- pass 1
    double* phi = w.phi.data();
    std::fill(phi, phi + E * c, 0.0);
    for (index_t tb = 0; tb < ntiles; ++tb) {
      const index_t i_s = tb * TILE, m = std::min(TILE, n - i_s);
      T* actp = w.act.data() + tb * act_tile;
      if (p.unit_code == 0) {
        pass1_matrix(p, E, xe, thf, cap, i_s, m, actp, w.u.data(), phi);
      } else {
        with_act(p.activation_code, [&](auto act) {
          pass1_standard<T, decltype(act)>(p, E, xe, thf, cap, i_s, m, actp, w.u.data(), phi);
        });
      }
    }
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
    for (index_t tb = 0; tb < ntiles; ++tb) {
      const index_t i_s = tb * TILE, m = std::min(TILE, n - i_s);
      const T* actp = w.act.data() + tb * act_tile;
      T* gbuf = w.gbuf.data();
      if (p.unit_code == 0)
        pass2_matrix(p, E, xe, rr, m, actp, w.tmp.data(), gbuf);
      else
        pass2_standard(p, E, xe, rr, thf, cap, i_s, m, actp, w.tmp.data(), gbuf);
      for (index_t q = 0; q < D; ++q) {
        T* __restrict g = gbuf + q * TILE;
        const T* __restrict z = thf + q * cap + i_s;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) g[i] += reg * z[i];
      }
      if (ea) {
        apply_dxd(P, true, D, gbuf, TILE, w.g2.data(), TILE, m);
        gbuf = w.g2.data();
      }
      // noise: xi[i, q] keyed by index (i0 + i_s + i) * D + q
      double* nz = w.nz.data();
      normals(key, ut, runid, px::STREAM_NOISE, static_cast<std::uint64_t>((i0 + i_s) * D), m * D,
              nz);
      T* nzT = w.nzT.data();
      for (index_t q = 0; q < D; ++q) {
        T* __restrict o = nzT + q * TILE;
#pragma omp simd
        for (index_t i = 0; i < m; ++i) o[i] = static_cast<T>(nz[i * D + q]);
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
    // ---- snapshot
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

inline index_t team_min_particles() {
  static const index_t v = [] {
    const char* env = std::getenv("SYMKERN_PARTICLES_TEAM_MIN_N");
    // Off by default: on this shared 2-core machine a per-step OpenMP barrier costs milliseconds
    // whenever another process holds the other core (measured 6 ms/step vs 0.46 ms single-
    // threaded at N = 5000). SYMKERN_PARTICLES_TEAM_MIN_N=2048 turns it on for idle machines.
    return env ? static_cast<index_t>(std::atoll(env)) : (index_t{1} << 62);
  }();
  return v;
}

template <class T>
void steps_impl(const Problem<T>& p, const T* theta_in, index_t R, index_t N, T* theta_out,
                T* snaps, T* losses, std::int64_t step0, std::int64_t steps,
                std::int64_t snapshot_every) {
  Ctx<T> cx;
  cx.p = &p;
  cx.theta_in = theta_in;
  cx.R = R;
  cx.N = N;
  cx.theta_out = theta_out;
  cx.snaps = snaps;
  cx.losses = losses;
  cx.step0 = step0;
  cx.steps = steps;
  cx.every = snapshot_every;
  cx.S = steps / snapshot_every;
  bool wide = false;
  for (index_t r = 0; r < R; ++r) wide = wide || p.scheme[r] == 1 || p.scheme[r] == 3;
  cx.Emax = wide ? p.G * p.batch : p.batch;
  cx.nA = p.unit_code == 0 ? p.c : 2;
  if (R <= 0 || N <= 0) return;

  const int nthr = ::symkern::max_threads();
  if (nthr > 1 && R < nthr && N >= team_min_particles()) {
    // a team of threads per run, runs one after the other
    const int nt = static_cast<int>(std::min<index_t>(nthr, N / 256));
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
      Work<T> w(cx, b1 - b0);
      Team team;
      team.tid = tid;
      team.nt = ntr;
      team.partial = partial.data();
      team.stride = cx.Emax * p.c;
      for (index_t r = 0; r < R; ++r) {
        run_range(cx, w, r, b0, b1, &team);
#ifdef SYMKERN_WITH_OPENMP
#pragma omp barrier
#endif
      }
    }
    return;
  }
  const int nt = static_cast<int>(std::min<index_t>(nthr, R));
#ifdef SYMKERN_WITH_OPENMP
#pragma omp parallel num_threads(nt)
#endif
  {
    Work<T> w(cx, N);
#ifdef SYMKERN_WITH_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t r = 0; r < R; ++r) run_range(cx, w, r, 0, N, nullptr);
  }
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
      pass1_standard<T, decltype(a)>(pp, B, x, thc, TILE, 0, m, actp, u, phi);
    });
  (void)c;
  (void)d;
}

template <class T>
void load_tile(const T* theta, index_t D, index_t i_s, index_t m, T* thc) {
  for (index_t i = 0; i < m; ++i)
    for (index_t q = 0; q < D; ++q) thc[q * TILE + i] = theta[(i_s + i) * D + q];
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
  // batch rows split across threads (each thread: all particles for its rows)
  const index_t grain = std::max<index_t>(1, 4096 / std::max<index_t>(N, 1));
  ::symkern::parallel_for(B, grain, [&](index_t b0, index_t b1) {
    const index_t Bl = b1 - b0;
    const index_t Bc = std::min<index_t>(Bl, 64);
    std::vector<T> thc(D * TILE), actb(Bc * nA * TILE), u(TILE);
    std::vector<double> phi(Bc * c);
    for (index_t bb = b0; bb < b1; bb += Bc) {
      const index_t nb = std::min(Bc, b1 - bb);
      std::fill(phi.begin(), phi.end(), 0.0);
      for (index_t tb = 0; tb < ntiles; ++tb) {
        const index_t i_s = tb * TILE, m = std::min(TILE, N - i_s);
        load_tile(theta, D, i_s, m, thc.data());
        forward_tile(x + bb * d, nb, thc.data(), m, unit_code, act, c, d, actb.data(), u.data(),
                     phi.data(), pp);
      }
      for (index_t k = 0; k < nb * c; ++k)
        phi_out[bb * c + k] = static_cast<T>(phi[k] / static_cast<double>(N));
    }
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
        if (grad_theta) {
          if (unit_code == 0)
            pass2_matrix(pp, nb, x + bb * d, r.data() + bb * c, m, actv.data(), tmp.data(),
                         gbuf.data());
          else
            pass2_standard(pp, nb, x + bb * d, r.data() + bb * c, thc.data(), TILE, 0, m,
                           actv.data(), tmp.data(), gbuf.data());
          for (index_t q = 0; q < D * TILE; ++q) gacc[q] += gbuf[q];
        }
        if (grad_x) {
          // dPhi_bk/dx_bj = (1/N) sum_i J; r carries 1/N
          for (index_t b = 0; b < nb; ++b) {
            const index_t gb = bb + b;
            if (unit_code == 0) {
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
            } else {
              const T* hp = actv.data() + (2 * b + 1) * TILE;
#pragma omp simd
              for (index_t i = 0; i < m; ++i) tmp[i] = T(0);
              for (index_t k = 0; k < c; ++k) {
                const T rk = r[gb * c + k];
                const T* a = thc.data() + k * TILE;
#pragma omp simd
                for (index_t i = 0; i < m; ++i) tmp[i] += rk * a[i];
              }
              for (index_t j = 0; j < d; ++j) {
                const T* wj = thc.data() + (c + j) * TILE;
                T s = T(0);
#pragma omp simd reduction(+ : s)
                for (index_t i = 0; i < m; ++i) s += tmp[i] * hp[i] * wj[i];
                gx[gb * d + j] += static_cast<double>(s);
              }
            }
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
