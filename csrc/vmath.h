// Branch-free float64 exp and tanh that `#pragma omp simd` loops vectorise (std::exp / std::tanh
// are scalar libm calls). Shared by the particle and mirror-sweep kernels.
//
// No include guard on purpose: a kernel file includes this inside each of its per-ISA namespaces
// (isa_avx512 / isa_avx2 / isa_base, compiled under different `#pragma GCC target`s), so every
// copy is compiled for its instruction set. Needs <cmath>, <cstdint> and SYMKERN_ALWAYS_INLINE
// (philox.h) before it.
//
// * exp_d: 2^n e^r, n = rint(x log2 e) by the 1.5 * 2^52 shifter (n also read from its low
//   mantissa bits), r = x - n ln 2 with fdlibm's two-part ln 2 (n * LN2_HI exact for |n| < 2^11),
//   e^r by its degree-13 Taylor polynomial (|r| <= ln2/2: truncation <= 5e-18 relative), 2^n by
//   bit construction. x is clamped to [-708, 708] (inside the normal range); NaN in, NaN out
//   (tests/test_particles.py::test_model_output_propagates_nan). Measured against long-double
//   libm: <= 2.8e-16 relative on [-708, 708], <= 1.7e-16 absolute in its sigmoid anywhere
//   (symkern._C.particle_activation_errors, tests/test_particles.py).
// * tanh_d: |x| < 0.625 the Cephes rational x + x^3 P(x^2) / Q(x^2), else 1 - 2 / (e^{2|x|} + 1),
//   sign restored by copysign; NaN in, NaN out. Measured against std::tanh on 4e6 points of
//   [-30, 30] and 2e6 of [-1, 1]: <= 2.3e-16 absolute, <= 4.1e-16 relative (~2 ulp)
//   (symkern._C.mirror_sweep_tanh_errors, tests/test_mirror_sweeps.py).
// GCC vectorises their loops on AVX-512 and AVX2. On AVX2 that needs -fno-trapping-math
// (setup.py): the NaN-keeping clamps are selects whose arms compute, which GCC if-converts only
// when it may evaluate both arms unmasked (AVX-512 masks the lanes instead); without it every
// AVX2 loop calling exp_d stayed scalar (float64 paper grid 165 -> 67.5 ms per step, Zen 3).

// exp_d's constants, shared with the explicit-SIMD float64 sigmoid of csrc/particles.cpp.
constexpr double EXP_D_CLAMP = 708.0;
constexpr double EXP_D_LOG2E = 1.4426950408889634;
constexpr double EXP_D_LN2_HI = 6.93147180369123816490e-01;  // fdlibm: n * LN2_HI exact, |n| < 2^11
constexpr double EXP_D_LN2_LO = 1.90821492927058770002e-10;
// e^r ~ 1 + r + sum_{j=2}^{11} EXP_D_POLY[11 - j] r^j on |r| <= 1.0001 ln2/2: relative minimax
// (Lawson-weighted least squares in 60-digit mpmath, 400 Chebyshev nodes), max relative error
// 3.6e-18 in exact arithmetic — below rounding; two FMAs fewer than the degree-13 Taylor series.
constexpr double EXP_D_POLY[10] = {
    2.5000063549257597e-08, 2.763024893189953e-07, 2.7557586370338387e-06,
    2.4801493097261263e-05, 0.00019841269506578428, 0.0013888888943631803,
    0.008333333333494465,   0.04166666666653015,   0.16666666666666413,
    0.5000000000000011};

// The explicit-SIMD float64 base-2 sigmoids 1 / (1 + 2^t) of the matrix unit's pass 1
// (csrc/particles.cpp: AVX-512 sigmoid_from_neg_log2e_x8, AVX2 sigmoid_from_neg_log2e_x4).
// 2^f ~ sum_j EXP2_D_POLY[11 - j] f^j on [0, 1]: Lawson-weighted least squares in 60-digit
// mpmath (400 Chebyshev nodes), 3.1e-18 relative in exact arithmetic, 1.2e-16 in double Horner.
constexpr double EXP2_D_POLY[12] = {
    6.272433586794457e-10,  6.554457646603398e-09, 1.0254457263684661e-07,
    1.3208193511305703e-06, 1.5253190247524716e-05, 0.00015403511446561284,
    0.0013333558661573286,  0.009618129098792677,  0.055504108665711135,
    0.2402265069590547,     0.6931471805599463,    1.0};
constexpr double EXP2_D_CLAMP = 1021.44;  // 708 log2(e) = 1021.435 rounded up; 1 + 2^t stays finite

SYMKERN_ALWAYS_INLINE double exp_d(double x) {
  x = x < -EXP_D_CLAMP ? -EXP_D_CLAMP : x;  // this form keeps NaN (max/min would clamp it)
  x = x > EXP_D_CLAMP ? EXP_D_CLAMP : x;
  constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * EXP_D_LOG2E + shifter;
  const double n = t - shifter;
  const double r = (x - n * EXP_D_LN2_HI) - n * EXP_D_LN2_LO;
  double p = EXP_D_POLY[0];
#pragma GCC unroll 16
  for (int j = 1; j < 10; ++j) p = p * r + EXP_D_POLY[j];
  p = p * r + 1.0;
  p = p * r + 1.0;
  // n as an integer from t's low mantissa bits (bit casts, not memcpy: they vectorise)
  const std::int64_t ni = __builtin_bit_cast(std::int64_t, t) - 0x4338000000000000LL;
  const std::uint64_t bits = static_cast<std::uint64_t>(ni + 1023) << 52;
  return p * __builtin_bit_cast(double, bits);
}

SYMKERN_ALWAYS_INLINE double tanh_d(double x) {
  const double ax = std::fabs(x);
  // beyond |x| = 22, tanh is 1 to double precision
  const double e = exp_d(2.0 * (ax > 22.0 ? 22.0 : ax));
  const double big = 1.0 - 2.0 / (e + 1.0);
  const double z = ax * ax;
  const double pn = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z -
                    1.61468768441708447952e3;
  const double qd = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z +
                    4.84406305325125486048e3;
  const double small = ax + ax * z * (pn / qd);
  return std::copysign(ax < 0.625 ? small : big, x);
}
