// Python bindings of the particle engine (csrc/particles.*), called from bindings.cpp's module.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "buffers.h"
#include "chunks.h"
#include "common.h"
#include "particles.h"

namespace symkern {

namespace particles_bind {

namespace py = pybind11;
namespace sb = symkern::buffers;

using sb::cview;

inline bool is_dtype(const py::array& a, py::dtype dt) { return a.dtype().is(dt); }

inline index_t unit_D(int unit_code, index_t c, index_t d) {
  if (unit_code == 0) return c * d;
  if (unit_code == 1) return c + d + 1;
  sb::fail("unit_code", "must be 0 (matrix unit) or 1 (standard unit)");
}

// The checked inputs of the fused model Phi = (1/N) sum_i sigma*(x, theta_i) and its backward.
template <class T>
struct ForwardViews {
  sb::View<T> x, theta;
  index_t B, N, D;
};

template <class T>
ForwardViews<T> forward_views(const py::array& x, const py::array& theta, int unit_code,
                              int activation_code, index_t c, index_t d) {
  if (activation_code < 0 || activation_code > 2) sb::fail("activation_code", "must be 0, 1 or 2");
  const index_t D = unit_D(unit_code, c, d);
  ForwardViews<T> v{cview<T>(x, "x", 2, {-1, d}), cview<T>(theta, "theta", 2, {-1, D}), 0, 0, D};
  v.B = v.x.shape[0];
  v.N = v.theta.shape[0];
  if (v.N < 1) sb::fail("theta", "must hold at least one particle");
  return v;
}

template <class T>
void steps_typed(const py::array& theta, int unit_code, int activation_code, index_t c,
                 index_t d, index_t batch, double sigma_pi, std::uint64_t seed,
                 const py::array& run_ids, const py::array& alpha, const py::array& tau,
                 const py::array& beta, const py::array& scheme, const py::array& project_noise,
                 const py::array& teacher, const py::array& teacher_w, const py::array& rho_x,
                 const py::array& rho_y, const py::object& x_data, const py::object& y_data,
                 const py::array& proj, std::int64_t step0, std::int64_t steps,
                 std::int64_t snapshot_every, py::array& theta_out, py::array& snaps,
                 py::array& losses, std::int64_t chunk_steps) {
  if (c < 1 || d < 1) sb::fail("c/d", "must be >= 1");
  if (activation_code < 0 || activation_code > 2)
    sb::fail("activation_code", "must be 0 (tanh), 1 (sigmoid) or 2 (relu)");
  const index_t D = unit_D(unit_code, c, d);
  if (batch < 1) sb::fail("batch", "must be >= 1");
  if (steps < 0) sb::fail("steps", "must be >= 0");
  if (step0 < 0) sb::fail("step0", "must be >= 0");
  if (snapshot_every < 1) sb::fail("snapshot_every", "must be >= 1");
  const auto th = cview<T>(theta, "theta", 3, {-1, -1, D});
  const index_t R = th.shape[0], N = th.shape[1];
  if (R < 1 || N < 1) sb::fail("theta", "must have R >= 1 runs and N >= 1 particles");
  // the op's own message: symkern.particle_steps leaves this check to the kernel (registered
  // with checks_finite=("theta",)), which saves a tensor reduction per call in Python
  if (!sb::all_finite(th.data, R * N * D))
    throw py::value_error("theta contains NaN or inf; particle training would only propagate it");
  const index_t S = steps / snapshot_every;
  const auto rid = cview<std::int64_t>(run_ids, "run_ids", 1, {R});
  const auto al = cview<T>(alpha, "alpha", 1, {R});
  const auto ta = cview<T>(tau, "tau", 1, {R});
  const auto be = cview<T>(beta, "beta", 1, {R});
  const auto sc = cview<std::int32_t>(scheme, "scheme", 1, {R});
  const auto pn = cview<std::int32_t>(project_noise, "project_noise", 1, {R});
  const auto tc = cview<T>(teacher, "teacher", 3, {R, -1, D});
  const index_t M = tc.shape[1];
  const auto tw = cview<T>(teacher_w, "teacher_w", 2, {R, M});
  const auto rx = cview<T>(rho_x, "rho_x", 3, {-1, d, d});
  const index_t G = rx.shape[0];
  if (G < 1) sb::fail("rho_x", "must hold at least one group element");
  const auto ry = cview<T>(rho_y, "rho_y", 3, {G, c, c});
  const auto pj = cview<T>(proj, "proj", 2, {D, D});
  const auto to = cview<T>(theta_out, "theta_out", 3, {R, N, D}, true);
  const auto sn = cview<T>(snaps, "snapshots", 4, {R, S, N, D}, true);
  const auto lo = cview<T>(losses, "losses", 2, {R, S}, true);
  if (G > (index_t{1} << 31)) sb::fail("rho_x", "group too large");
  for (index_t r = 0; r < R; ++r) {
    if (sc.data[r] < 0 || sc.data[r] > 4) sb::fail("scheme", "codes must be in 0..4");
    if (rid.data[r] < 0) sb::fail("run_ids", "must be non-negative");
  }
  particles::Problem<T> p;
  p.unit_code = unit_code;
  p.activation_code = activation_code;
  p.c = c;
  p.d = d;
  p.D = D;
  p.batch = batch;
  p.G = G;
  p.M = M;
  p.sigma_pi = sigma_pi;
  p.seed = seed;
  p.run_ids = rid.data;
  p.alpha = al.data;
  p.tau = ta.data;
  p.beta = be.data;
  p.scheme = sc.data;
  p.project_noise = pn.data;
  p.teacher = tc.data;
  p.teacher_w = tw.data;
  p.rho_x = rx.data;
  p.rho_y = ry.data;
  p.proj = pj.data;
  if (x_data.is_none() != y_data.is_none()) sb::fail("x_data", "and y_data must be given together");
  if (!x_data.is_none()) {
    const auto xd = cview<T>(x_data.cast<py::array>(), "x_data", 4, {steps, R, batch, d});
    const auto yd = cview<T>(y_data.cast<py::array>(), "y_data", 4, {steps, R, batch, c});
    p.x_data = xd.data;
    p.y_data = yd.data;
  }
  // chunks of ~0.2 s between checks for Ctrl-C (csrc/chunks.h); they change no number
  const double work_per_step = static_cast<double>(R) * static_cast<double>(N) *
                               static_cast<double>(batch) * static_cast<double>(D);
  try {
    chunks::run_in_chunks(steps, chunks::first_chunk(work_per_step), chunk_steps,
                          [&](std::int64_t lt_begin, std::int64_t lt_end) {
                            particles::particle_steps<T>(p, th.data, R, N, to.data, sn.data,
                                                         lo.data, step0, steps, snapshot_every,
                                                         lt_begin, lt_end);
                          });
  } catch (const std::bad_alloc&) {  // the kernel's scratch (~N x batch x |G| activations)
    const std::string msg = "particle_steps: the kernel's scratch for N = " + std::to_string(N) +
                            " particles and batch = " + std::to_string(batch) + " (x |G| = " +
                            std::to_string(G) + " for DA / FA) does not fit in memory";
    PyErr_SetString(PyExc_MemoryError, msg.c_str());
    throw py::error_already_set();
  }
}

}  // namespace particles_bind

// Registers the particle-engine functions on symkern._C. Each validates its buffers and
// releases the GIL around the kernel, like every binding in bindings.cpp.
inline void bind_particles(pybind11::module_& m) {
  namespace py = pybind11;
  namespace sb = symkern::buffers;
  namespace pb = particles_bind;

  m.def(
      "particle_steps",
      [](const py::array& theta, int unit_code, int activation_code, index_t c, index_t d,
         index_t batch, double sigma_pi, std::uint64_t seed, const py::array& run_ids,
         const py::array& alpha, const py::array& tau, const py::array& beta,
         const py::array& scheme, const py::array& project_noise, const py::array& teacher,
         const py::array& teacher_w, const py::array& rho_x, const py::array& rho_y,
         const py::array& proj, const py::object& x_data, const py::object& y_data,
         std::int64_t step0, std::int64_t steps, std::int64_t snapshot_every,
         py::array& theta_out, py::array& snapshots, py::array& losses,
         std::int64_t chunk_steps) {
        if (pb::is_dtype(theta, py::dtype::of<float>()))
          return pb::steps_typed<float>(theta, unit_code, activation_code, c, d, batch, sigma_pi,
                                        seed, run_ids, alpha, tau, beta, scheme, project_noise,
                                        teacher, teacher_w, rho_x, rho_y, x_data, y_data, proj,
                                        step0, steps, snapshot_every, theta_out, snapshots,
                                        losses, chunk_steps);
        if (pb::is_dtype(theta, py::dtype::of<double>()))
          return pb::steps_typed<double>(theta, unit_code, activation_code, c, d, batch,
                                         sigma_pi, seed, run_ids, alpha, tau, beta, scheme,
                                         project_noise, teacher, teacher_w, rho_x, rho_y, x_data,
                                         y_data, proj, step0, steps, snapshot_every, theta_out,
                                         snapshots, losses, chunk_steps);
        sb::fail("theta", "must have dtype float32 or float64, got " +
                              std::string(py::str(theta.dtype())));
      },
      py::arg("theta"), py::arg("unit_code"), py::arg("activation_code"), py::arg("c"),
      py::arg("d"), py::arg("batch"), py::arg("sigma_pi"), py::arg("seed"), py::arg("run_ids"),
      py::arg("alpha"), py::arg("tau"), py::arg("beta"), py::arg("scheme"),
      py::arg("project_noise"), py::arg("teacher"), py::arg("teacher_w"), py::arg("rho_x"),
      py::arg("rho_y"), py::arg("proj"), py::arg("x_data"), py::arg("y_data"), py::arg("step0"),
      py::arg("steps"), py::arg("snapshot_every"), py::arg("theta_out"), py::arg("snapshots"),
      py::arg("losses"), py::arg("chunk_steps") = 0,
      "Multi-step particle SGD / Langevin (symkern/meanfield/problem.py). All arrays C-contiguous;\n"
      "floats of theta's dtype (float32/float64); run_ids int64, scheme and project_noise int32.\n"
      "theta (R, N, D) -> fills theta_out (R, N, D), snapshots (R, S, N, D), losses (R, S),\n"
      "S = steps // snapshot_every. The steps run in chunks of ~0.2 s between checks for\n"
      "Ctrl-C (KeyboardInterrupt); chunk_steps > 0 fixes the chunk size (the numbers do not\n"
      "depend on it).");

  m.def(
      "particle_forward",
      [](const py::array& x, const py::array& theta, int unit_code, int activation_code,
         index_t c, index_t d) -> py::array {
        auto run = [&](auto tag) -> py::array {
          using T = decltype(tag);
          const auto v = pb::forward_views<T>(x, theta, unit_code, activation_code, c, d);
          const auto& xv = v.x;
          const auto& tv = v.theta;
          const index_t B = v.B, N = v.N;
          py::array_t<T> out({B, c});
          T* op = out.mutable_data();
          {
            py::gil_scoped_release nogil;
            particles::particle_forward<T>(xv.data, B, tv.data, N, unit_code, activation_code, c,
                                           d, op);
          }
          return out;
        };
        if (pb::is_dtype(x, py::dtype::of<float>())) return run(float{});
        if (pb::is_dtype(x, py::dtype::of<double>())) return run(double{});
        sb::fail("x", "must have dtype float32 or float64, got " + std::string(py::str(x.dtype())));
      },
      py::arg("x"), py::arg("theta"), py::arg("unit_code"), py::arg("activation_code"),
      py::arg("c"), py::arg("d"),
      "Fused particle model Phi (B, c) = (1/N) sum_i sigma*(x_b, theta_i); x (B, d), theta (N, D),\n"
      "C-contiguous float32/float64. No B x N buffer is kept.");

  m.def(
      "particle_forward_backward",
      [](const py::array& x, const py::array& theta, int unit_code, int activation_code,
         index_t c, index_t d, const py::array& g_phi, bool need_theta,
         bool need_x) -> py::tuple {
        auto run = [&](auto tag) -> py::tuple {
          using T = decltype(tag);
          const auto v = pb::forward_views<T>(x, theta, unit_code, activation_code, c, d);
          const auto& xv = v.x;
          const auto& tv = v.theta;
          const index_t B = v.B, N = v.N, D = v.D;
          const auto gv = pb::cview<T>(g_phi, "g_phi", 2, {B, c});
          py::object gt = py::none(), gx = py::none();
          T* gtp = nullptr;
          T* gxp = nullptr;
          if (need_theta) {
            py::array_t<T> a({N, D});
            gtp = a.mutable_data();
            gt = a;
          }
          if (need_x) {
            py::array_t<T> a({B, d});
            gxp = a.mutable_data();
            gx = a;
          }
          {
            py::gil_scoped_release nogil;
            particles::particle_forward_backward<T>(xv.data, B, tv.data, N, unit_code,
                                                    activation_code, c, d, gv.data, gtp, gxp);
          }
          return py::make_tuple(gt, gx);
        };
        if (pb::is_dtype(x, py::dtype::of<float>())) return run(float{});
        if (pb::is_dtype(x, py::dtype::of<double>())) return run(double{});
        sb::fail("x", "must have dtype float32 or float64, got " + std::string(py::str(x.dtype())));
      },
      py::arg("x"), py::arg("theta"), py::arg("unit_code"), py::arg("activation_code"),
      py::arg("c"), py::arg("d"), py::arg("g_phi"), py::arg("need_theta") = true,
      py::arg("need_x") = true,
      "Backward of particle_forward: given g_phi = dL/dPhi (B, c) returns (grad_theta (N, D) or\n"
      "None, grad_x (B, d) or None). Recomputes activations per particle tile (no B x N buffer).");

  m.def(
      "philox4x32",
      [](const py::array& counters, std::uint32_t k0, std::uint32_t k1) {
        const auto cv = pb::cview<std::uint32_t>(counters, "counters", 2, {-1, 4});
        const index_t n = cv.shape[0];
        py::array_t<std::uint32_t> out({n, index_t{4}});
        std::uint32_t* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          particles::philox4x32_batch(cv.data, n, k0, k1, op);
        }
        return out;
      },
      py::arg("counters"), py::arg("k0"), py::arg("k1"),
      "Philox4x32-10: counters uint32 (n, 4) -> uint32 (n, 4) (csrc/philox.h).");

  m.def(
      "philox_normals",
      [](std::uint64_t seed, std::uint32_t run_id, std::uint32_t step, std::uint32_t stream,
         index_t n) {
        if (n < 0) sb::fail("n", "must be >= 0");
        py::array_t<double> out(n);
        double* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          particles::normals_batch(seed, run_id, step, stream, n, op);
        }
        return out;
      },
      py::arg("seed"), py::arg("run_id"), py::arg("step"), py::arg("stream"), py::arg("n"),
      "The normals of symkern.meanfield.rng.normal for one run (float64, (n,)), as the kernels "
      "draw them.");

  m.def(
      "philox_normals4",
      [](std::uint64_t seed, std::uint32_t run_id, std::uint32_t step, std::uint32_t stream,
         index_t n, std::uint64_t idx0, bool float32) -> py::object {
        if (n < 0) sb::fail("n", "must be >= 0");
        if (float32) {
          py::array_t<float> out(n);
          float* op = out.mutable_data();
          bool have;
          {
            py::gil_scoped_release nogil;
            have = particles::normals4_f32_batch(seed, run_id, step, stream, idx0, n, op);
          }
          if (!have) return py::none();
          return std::move(out);
        }
        py::array_t<double> out(n);
        double* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          particles::normals4_batch(seed, run_id, step, stream, idx0, n, op);
        }
        return std::move(out);
      },
      py::arg("seed"), py::arg("run_id"), py::arg("step"), py::arg("stream"), py::arg("n"),
      py::arg("idx0") = 0, py::arg("float32") = false,
      "Elements idx0 .. idx0 + n - 1 of symkern.meanfield.rng.normal4 for one run, as the kernels\n"
      "draw them: float64 Box-Muller, or with float32=True the float32 one of the fused float32\n"
      "noise (None where the dispatched instruction set has none: only AVX-512).");

  m.def(
      "particle_activation_errors",
      [](double lo, double hi, index_t n) {
        double e[10];
        {
          py::gil_scoped_release nogil;
          particles::activation_errors(lo, hi, n, e);
        }
        py::dict out;
        out["sigmoid_abs"] = e[0];
        out["sigmoid_rel"] = e[1];
        out["tanh_abs"] = e[2];
        out["tanh_rel"] = e[3];
        out["sigmoid_f64_abs"] = e[4];
        out["sigmoid_f64_rel"] = e[5];
        out["sigmoid_base2_abs"] = e[6];
        out["sigmoid_base2_rel"] = e[7];
        out["sigmoid_f64_base2_abs"] = e[8];
        out["sigmoid_f64_base2_rel"] = e[9];
        return out;
      },
      py::arg("lo") = -30.0, py::arg("hi") = 30.0, py::arg("n") = 2000001,
      "Max error on n points of [lo, hi] of the float32 fast sigmoid / tanh against double libm "
      "(sigmoid_*, tanh_*), of the float64 sigmoid against long-double libm (sigmoid_f64_*), and\n"
      "of the base-2 sigmoids 1 / (1 + 2^t) of the matrix unit's pass 1 on t in\n"
      "[-hi log2 e, -lo log2 e]: float32 against double (sigmoid_base2_*), float64 against long\n"
      "double (sigmoid_f64_base2_*); NaN where the dispatched copy has none (baseline).");

  m.def("particle_team_min_n",
        []() {
          const index_t v = particles::team_min_particles();
          return v == std::numeric_limits<index_t>::max() ? index_t{-1} : v;
        },
        "Smallest N at which threads split one run's particles when R < threads (-1 if never).");
  m.def("particle_isa", &particles::isa_name,
        "Instruction-set variant the particle kernels run (avx512, avx2 or baseline).");
}

}  // namespace symkern
