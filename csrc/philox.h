// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11 — the generator of Random123, cuRAND and
// Triton) and the symkern number formats built on it. Follows symkern/meanfield/rng.py line by
// line:
//
//   key     = (seed mod 2^32, seed >> 32)
//   counter = (index, step, run_id, stream)                  all uint32
//   uniform u(o) = ((o >> 8) + 0.5) * 2^-24                  exact in float and double, in (0, 1)
//   normal  z = sqrt(-2 ln u(o0)) * cos(2 pi u(o1))           (Box-Muller, |z| <= 5.9)
//   normal4 four per counter: sqrt(-2 ln u(o0)) (cos, sin)(2 pi u(o1)), then the same of (o2, o3)
//   randint (uint64(o0) * n) >> 32                            in [0, n)
//
// Everything here is branch-free and force-inlined so a caller's `#pragma omp simd` loop over
// counters vectorises it (the widening 32x32 -> 64 multiply becomes vpmuludq). ln and cos are
// this file's own double-precision polynomials (no libm call, so they vectorise); measured
// against libm on all 2^24 possible uniforms: |ln error| <= 2 ulp, |cos error| <= 3e-16 absolute
// (sin comes from the same two polynomials), so the normals agree with the torch reference
// (float64 torch.log / cos / sin) to ~1e-15: normal4 measured 3.0e-15 over 4e6
// (tests/test_particles.py::test_cpp_normal4_matches_reference).
// Checked bit-exactly against symkern.meanfield.rng.philox4x32 and the Random123 known answers
// (symkern._C.philox4x32, tests/test_particles.py).
#pragma once

#include <cstdint>

#if defined(__GNUC__)
#define SYMKERN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SYMKERN_ALWAYS_INLINE inline
#endif

namespace symkern::philox {

constexpr std::uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
constexpr std::uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;

constexpr int STREAM_DATA = 0;
constexpr int STREAM_NOISE = 1;
constexpr int STREAM_AUGMENT = 2;
constexpr int STREAM_INIT = 3;
constexpr int STREAM_TEST = 4;

// Full Philox4x32-10: counter (c0..c3), key (k0, k1) -> (o0, o1, o2, o3). Four scalar outputs,
// not an array: a caller's SIMD loop can then write each word straight into its own lane array
// (GCC does not vectorise a per-lane local array written by index and read back: "not suitable
// for scatter store", so the AVX2 copies stayed scalar).
SYMKERN_ALWAYS_INLINE void philox4x32(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                      std::uint32_t c3, std::uint32_t k0, std::uint32_t k1,
                                      std::uint32_t& o0, std::uint32_t& o1, std::uint32_t& o2,
                                      std::uint32_t& o3) {
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(M0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(M1) * c2;
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += W0;
    k1 += W1;
  }
  o0 = c0;
  o1 = c1;
  o2 = c2;
  o3 = c3;
}

// Only the first two output words (all that symkern uses); the compiler drops the dead half of
// the last round.
SYMKERN_ALWAYS_INLINE void philox2(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                   std::uint32_t c3, std::uint32_t k0, std::uint32_t k1,
                                   std::uint32_t& o0, std::uint32_t& o1) {
  std::uint32_t o2, o3;
  philox4x32(c0, c1, c2, c3, k0, k1, o0, o1, o2, o3);
}

SYMKERN_ALWAYS_INLINE std::uint32_t randint(std::uint32_t o0, std::uint32_t n) {
  return static_cast<std::uint32_t>((static_cast<std::uint64_t>(o0) * n) >> 32);
}

// The integer n (0 <= n < 2^52) as a double, exactly: 2^52 + n has n as its mantissa. Integer
// bit operations and one subtraction, where a cast of an int64 would need AVX-512DQ's vcvtqq2pd
// (without it GCC leaves the loop scalar); int32 casts (vcvtdq2pd) vectorise everywhere.
SYMKERN_ALWAYS_INLINE double small_uint_to_double(std::uint64_t n) {
  return __builtin_bit_cast(double, n | 0x4330000000000000ull) - 4503599627370496.0;
}

// ln(u(o)) for u(o) = ((o >> 8) + 0.5) 2^-24 = v 2^-25 with v = 2 (o >> 8) + 1 an odd integer.
// v = m 2^e, m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.1716,
// series to s^21 (truncation < 3e-17 relative). ln u = ln m + (e - 25) ln 2 with ln 2 split in two.
// All integers here are exact in int32 / double, so every ISA copy gives the same bits.
SYMKERN_ALWAYS_INLINE double log_uniform(std::uint32_t o) {
  const double v = static_cast<double>(static_cast<std::int32_t>((o >> 8) * 2u + 1u));  // < 2^25
  const std::uint64_t bits = __builtin_bit_cast(std::uint64_t, v);
  double biased_e = small_uint_to_double(bits >> 52);  // e + 1023 (v > 0: no sign bit)
  const std::uint64_t mbits = (bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
  double m = __builtin_bit_cast(double, mbits);
  const bool big = m > 1.4142135623730951;
  m = big ? 0.5 * m : m;
  biased_e = big ? biased_e + 1.0 : biased_e;
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double p = 1.0 / 21.0;
  p = p * s2 + 1.0 / 19.0;
  p = p * s2 + 1.0 / 17.0;
  p = p * s2 + 1.0 / 15.0;
  p = p * s2 + 1.0 / 13.0;
  p = p * s2 + 1.0 / 11.0;
  p = p * s2 + 1.0 / 9.0;
  p = p * s2 + 1.0 / 7.0;
  p = p * s2 + 1.0 / 5.0;
  p = p * s2 + 1.0 / 3.0;
  const double lnm = 2.0 * s + 2.0 * s * (s2 * p);
  const double k = biased_e - (1023.0 + 25.0);  // e - 25
  constexpr double LN2_HI = 6.93147180369123816490e-01;  // 0x3FE62E42FEE00000
  constexpr double LN2_LO = 1.90821492927058770002e-10;
  return k * LN2_HI + (k * LN2_LO + lnm);
}

// cos and sin of 2 pi u(o): w = 4u exact, q = rint(w), f = w - q in [-1/2, 1/2] exact,
// a = f pi/2 in [-pi/4, pi/4]; cos / sin (q pi/2 + a) by quadrant. Taylor series of sin to a^15
// and cos to a^16 (truncation < 5e-17).
SYMKERN_ALWAYS_INLINE void cos_sin_2pi_uniform(std::uint32_t o, double& cos_out, double& sin_out) {
  // int32 throughout (k < 2^24, v < 2^25), so the cast to double vectorises without AVX-512DQ
  const std::int32_t k = static_cast<std::int32_t>(o >> 8);
  // 4u = (2k + 1) 2^-23: quadrant = nearest integer = (2k + 1 + 2^22) >> 23
  const std::int32_t v = 2 * k + 1;
  const std::int32_t q = (v + (std::int32_t{1} << 22)) >> 23;
  const double f = static_cast<double>(v - (q << 23)) * (1.0 / 8388608.0);  // exact
  const double a = f * 1.57079632679489661923;
  const double a2 = a * a;
  double sp = -7.6471637318198164759e-13;  // -1/15!
  sp = sp * a2 + 1.6059043836821614599e-10;  // 1/13!
  sp = sp * a2 - 2.5052108385441718775e-8;   // -1/11!
  sp = sp * a2 + 2.7557319223985890653e-6;   // 1/9!
  sp = sp * a2 - 1.9841269841269841270e-4;   // -1/7!
  sp = sp * a2 + 8.3333333333333333333e-3;   // 1/5!
  sp = sp * a2 - 1.6666666666666666667e-1;   // -1/3!
  const double sn = a + a * (a2 * sp);
  double cp = 4.7794773323873852974e-14;     // 1/16!
  cp = cp * a2 - 1.1470745597729724714e-11;  // -1/14!
  cp = cp * a2 + 2.0876756987868098979e-9;   // 1/12!
  cp = cp * a2 - 2.7557319223985890653e-7;   // -1/10!
  cp = cp * a2 + 2.4801587301587301587e-5;   // 1/8!
  cp = cp * a2 - 1.3888888888888888889e-3;   // -1/6!
  cp = cp * a2 + 4.1666666666666666667e-2;   // 1/4!
  cp = cp * a2 - 0.5;
  const double cs = 1.0 + a2 * cp;
  // quadrant qm: cos = cs, -sn, -cs, sn and sin = sn, cs, -sn, -cs
  const std::int32_t qm = q & 3;
  const double cval = (qm & 1) ? sn : cs, sval = (qm & 1) ? cs : sn;
  cos_out = ((qm == 1) | (qm == 2)) ? -cval : cval;
  sin_out = (qm >= 2) ? -sval : sval;
}

SYMKERN_ALWAYS_INLINE double cos_2pi_uniform(std::uint32_t o) {
  double c, s;
  cos_sin_2pi_uniform(o, c, s);  // the dead sin is dropped after inlining
  return c;
}

// rng.normal: one normal from the first two words of a counter.
SYMKERN_ALWAYS_INLINE double normal_from_bits(std::uint32_t o0, std::uint32_t o1) {
  return __builtin_sqrt(-2.0 * log_uniform(o0)) * cos_2pi_uniform(o1);
}

// Philox key of a seed.
struct Key {
  std::uint32_t k0, k1;
  explicit Key(std::uint64_t seed)
      : k0(static_cast<std::uint32_t>(seed)), k1(static_cast<std::uint32_t>(seed >> 32)) {}
};

}  // namespace symkern::philox
